//! Everything that touches Apache: the module struct, directives, hooks,
//! and logging into error_log.

pub mod config;
mod conftree;
mod hooks;
pub mod log;
mod messages;
pub mod module;
mod status;
mod supervise;
mod upgrade;
