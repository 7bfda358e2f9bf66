//! The token half of a key's startup check: find the key a URI names, read
//! its public half and attributes, and learn what the token can do with
//! it. Runs where the token is opened: in the key service for httpd's
//! start and reload, in the process itself for configtest and with
//! `HSMSSLKeyService Off`. What the configuration then decides about the
//! key (its certificate, whether it may leave the token) is the caller's.

use super::token::{Binding, KeyRef, OpError};
use super::uri::{redacted, KeyUri, UriError};
use super::{policy, runtime};
use std::sync::Arc;

/// A configured key found on the token, with what will not work with it.
pub struct Found {
    pub key: Arc<KeyRef>,
    /// TLS modes the token cannot serve with this key.
    pub warnings: Vec<String>,
}

/// Why a key could not be found and checked.
#[derive(Debug)]
pub enum LookupError {
    /// The text is not a key URI this module accepts.
    Uri(UriError),
    /// The token refused the PIN: not tried again.
    Denied(String),
    /// Anything else: malformed URI, library, token, key, a step that
    /// did not return within HSMSSLOperationTimeout.
    Failed(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::Uri(e) => write!(f, "malformed key URI: {e}"),
            LookupError::Denied(t) | LookupError::Failed(t) => f.write_str(t),
        }
    }
}

impl std::error::Error for LookupError {}

/// Finds `uri_text` on the token, each PKCS#11 step bounded by
/// HSMSSLOperationTimeout: URI, library, token, the one login, the key and
/// its public half, the mechanisms TLS needs, and how RSA key exchange
/// decrypts with it.
pub fn find_key(binding: &Arc<Binding>, uri_text: &str) -> Result<Found, LookupError> {
    let failed = LookupError::Failed;
    let uri = KeyUri::parse(uri_text).map_err(LookupError::Uri)?;
    let limit = binding.op_timeout;
    // Tried `policy::FIND_KEY_ATTEMPTS` times; a refused PIN never again.
    let mut attempt = 0;
    let (hsm, key) = loop {
        attempt += 1;
        let b = binding.clone();
        let hsm = runtime::bounded(limit, "loading and initializing the PKCS#11 library", move || runtime::hsm_for(&b))
            .map_err(failed)?
            .map_err(|e| failed(e.to_string()))?;
        let (h, t, u) = (hsm.clone(), uri_text.to_string(), uri.clone());
        match runtime::bounded(limit, "logging in and finding the key", move || h.resolve(&t, &u)).map_err(failed)? {
            Ok(k) => break (hsm, Arc::new(k)),
            Err(OpError::Denied(t)) => return Err(LookupError::Denied(t)),
            Err(e) if attempt < policy::FIND_KEY_ATTEMPTS => {
                log::debug!("HSM00482: finding {} (attempt {attempt}): {e}; trying again", redacted(uri_text));
                drop(hsm);
                runtime::shutdown();
                std::thread::sleep(policy::find_key_pause(attempt));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    let (h, k) = (hsm.clone(), key.clone());
    let warnings = runtime::bounded(limit, "listing the token's mechanisms", move || h.check_mechanisms(&k)).map_err(failed)?.map_err(failed)?;
    let (h, k) = (hsm, key.clone());
    runtime::bounded(limit, "choosing how RSA key exchange decrypts", move || h.choose_premaster_mech(&k)).map_err(failed)?.map_err(failed)?;
    Ok(Found { key, warnings })
}
