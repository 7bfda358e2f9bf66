//! Everything that touches the token. No Apache and no OpenSSL types here,
//! so this layer is testable on its own.

pub mod direct;
pub mod executor;
pub mod latch;
pub mod pin;
pub mod runtime;
pub mod secret;
pub mod token;
pub mod uri;
