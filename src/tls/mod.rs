//! HSM-backed keys as OpenSSL sees them: a small OpenSSL 3 provider whose
//! keys keep only their public half in memory and send every private-key
//! operation to the token, and the loaders through which mod_ssl obtains
//! those keys. No Apache types here.

pub mod certcheck;
pub mod cipher;
pub mod digest;
pub mod key;
pub mod loader;
pub mod params;
pub mod provider;
pub mod sigcheck;
pub mod signature;
pub mod store;
