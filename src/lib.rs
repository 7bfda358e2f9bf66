//! mod_hsm_ssl: Apache httpd serves TLS with private keys that stay in a
//! PKCS#11 token (see ARCHITECTURE.md).
//!
//! `unsafe` lives only at the FFI edges (httpd, OpenSSL, PKCS#11, libc),
//! every block with a `// SAFETY:` comment: the compiler holds the first
//! rule for unsafe functions, clippy (run by scripts/test.sh) the second.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod directives;
mod ffi;
mod httpd;
pub mod keyservice;
pub mod keytool;
pub mod pkcs11;
pub mod tls;
