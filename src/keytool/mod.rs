//! hsm-ssl-keytool: generate, import and certify web-server keys that
//! never leave the token. The binary (src/bin/hsm-ssl-keytool.rs) is a thin
//! shell around this module.

pub mod cli;
pub mod commands;
pub mod delete;
pub mod import;
pub mod inspect;
pub mod manpage;
pub mod messages;
pub mod policy;
pub mod tool;
pub mod x509;
