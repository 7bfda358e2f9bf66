//! How mod_ssl gets our keys. For a `pkcs11:` SSLCertificateKeyFile, mod_ssl
//! (2.4.63 and later) first asks OpenSSL for an ENGINE named "pkcs11", and
//! only if there is none opens the URI with OSSL_STORE (2.4.62 does the
//! latter unless SSLCryptoDevice is set).
//!
//! The way we answer is the provider's STORE for the `pkcs11` scheme
//! (`store.rs`): no ENGINE and no deprecated API, the only way with OpenSSL
//! 4.0. With OpenSSL 3.x, though, `ENGINE_by_id("pkcs11")` loads
//! `pkcs11.so` from OpenSSL's engines directory when it is there (libp11's
//! engine, `libengine-pkcs11-openssl` / `openssl-pkcs11`), and mod_ssl then
//! uses that engine with no fallback: libp11 would load the key itself, or
//! fail the start. Only in that case do we register an ENGINE of our own
//! named "pkcs11" (found before anything on disk), whose one function
//! returns the same key the store would. Built against OpenSSL 4.0 the
//! module has no ENGINE code at all.
//!
//! Either way the key is an EVP_PKEY of our provider, and mod_ssl's
//! `init_server` hook checks that every `pkcs11:` key of a vhost is one
//! (`hooks.rs`): never another engine's or provider's key.
//!
//! The URI is resolved by a callback that the Apache layer installs for the
//! current configuration (it knows the vhost being loaded, for messages).

use std::sync::Arc;

use parking_lot::RwLock;

use crate::pkcs11::token::KeyRef;
use crate::tls::provider;

/// Resolves a key URI to a token key, logging the reason when it cannot.
pub type Resolver = dyn Fn(&str) -> Option<Arc<KeyRef>> + Send + Sync;

static RESOLVER: RwLock<Option<Box<Resolver>>> = RwLock::new(None);

pub fn set_resolver(r: Option<Box<Resolver>>) {
    *RESOLVER.write() = r;
}

/// The token key for `uri` in the current configuration, if it has one.
pub fn resolve(uri: &str) -> Option<Arc<KeyRef>> {
    match RESOLVER.read().as_ref() {
        Some(resolve) => resolve(uri),
        None => {
            log::error!("HSM00520: key {}: mod_hsm_ssl is not configured in this process", crate::pkcs11::uri::redacted(uri));
            None
        }
    }
}

/// Logs why a key the configuration found cannot be handed to OpenSSL.
pub fn report_unusable(shown: &str, e: &str) {
    log::error!("HSM00521: key {shown}: {e}");
}

/// Readies the loading of keys for a configuration pass: the provider (and
/// its store) in OpenSSL's default library context, and, where an engine
/// on disk would otherwise take the keys, our ENGINE. Checked at every
/// pass, since an engine package may be installed while httpd runs.
pub fn prepare() -> Result<(), String> {
    provider::ensure_loaded()?;
    #[cfg(ossl_engine)]
    if engine::needed() {
        engine::ensure_registered()?;
        return Ok(());
    }
    match provider::pkcs11_store_provider() {
        Some(p) if p == provider::PROVIDER_NAME.to_string_lossy() => Ok(()),
        Some(p) => Err(format!(
            "the OpenSSL provider '{p}' answers for pkcs11: URIs in this process (loaded by openssl.cnf?), \
             so mod_ssl would get its keys instead of mod_hsm_ssl's; remove it from httpd's OpenSSL configuration"
        )),
        None => Err("OpenSSL finds no store for pkcs11: URIs although the hsm_ssl provider is loaded".into()),
    }
}

/// The ENGINE shim, for OpenSSL 3.x only.
#[cfg(ossl_engine)]
mod engine {
    use std::ffi::{c_char, c_void, CStr};
    use std::path::PathBuf;
    use std::ptr;
    use std::sync::OnceLock;

    use crate::ffi::guard;
    use crate::ffi::ossl::{self, ENGINE, EVP_PKEY, UI_METHOD};
    use crate::tls::provider;

    /// OpenSSL's engines directory, as `ENGINE_by_id` searches it:
    /// `$OPENSSL_ENGINES`, else the one OpenSSL was built with.
    fn engines_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("OPENSSL_ENGINES") {
            return Some(PathBuf::from(d));
        }
        // SAFETY: OpenSSL_version returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(ossl::OpenSSL_version(ossl::OPENSSL_ENGINES_DIR as i32)) }.to_string_lossy().into_owned();
        // `ENGINESDIR: "/usr/lib/x86_64-linux-gnu/engines-3"`
        let dir = s.split('"').nth(1)?;
        Some(PathBuf::from(dir))
    }

    /// Whether `ENGINE_by_id("pkcs11")` would find an engine other than
    /// ours: one on disk (with the names OpenSSL's dynamic loader tries),
    /// or one loaded already (refused by `ensure_registered`).
    pub fn needed() -> bool {
        if REGISTERED.get().is_some() {
            return true;
        }
        let on_disk = engines_dir().is_some_and(|d| ["pkcs11.so", "libpkcs11.so"].iter().any(|f| d.join(f).exists()));
        on_disk || loaded()
    }

    /// Whether an engine with id "pkcs11" is in OpenSSL's list (loaded by
    /// openssl.cnf, say). Walks the list: `ENGINE_by_id` would load one
    /// from disk.
    fn loaded() -> bool {
        let mut found = false;
        // SAFETY: the list walk OpenSSL documents: ENGINE_get_next releases
        // the reference it is given and returns the next one (or null).
        unsafe {
            let mut e = ossl::ENGINE_get_first();
            while !e.is_null() {
                let id = ossl::ENGINE_get_id(e);
                found |= !id.is_null() && CStr::from_ptr(id) == c"pkcs11";
                e = ossl::ENGINE_get_next(e);
            }
        }
        found
    }

    unsafe extern "C" fn load_privkey(_e: *mut ENGINE, id: *const c_char, _ui: *mut UI_METHOD, _cb: *mut c_void) -> *mut EVP_PKEY {
        guard("engine load_privkey", ptr::null_mut(), || {
            if id.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: OpenSSL passes the NUL-terminated key id mod_ssl gave it.
            let uri = unsafe { CStr::from_ptr(id) }.to_string_lossy().into_owned();
            let Some(key) = super::resolve(&uri) else { return ptr::null_mut() };
            let shown = key.uri_text.clone();
            match provider::evp_pkey_for(key) {
                Ok(p) => {
                    log::debug!(
                        "HSM00524: key {shown}: handed to OpenSSL through mod_hsm_ssl's ENGINE 'pkcs11' (an engine of that name is installed)"
                    );
                    p.cast()
                }
                Err(e) => {
                    super::report_unusable(&shown, &e);
                    ptr::null_mut()
                }
            }
        })
    }

    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

    /// Registers the ENGINE, once per process (the module's code stays
    /// mapped for the process's life, so the pointer stays valid).
    pub fn ensure_registered() -> Result<(), String> {
        REGISTERED.get_or_init(register).clone()
    }

    fn register() -> Result<(), String> {
        // SAFETY: standard ENGINE registration with 'static strings and
        // functions; the structural reference from ENGINE_new is released
        // after ENGINE_add took its own.
        unsafe {
            let e = ossl::ENGINE_new();
            if e.is_null() {
                return Err("OpenSSL could not allocate an ENGINE".into());
            }
            let ok = ossl::ENGINE_set_id(e, c"pkcs11".as_ptr()) == 1
                && ossl::ENGINE_set_name(e, c"mod_hsm_ssl key loader (PKCS#11 keys through the hsm_ssl provider)".as_ptr()) == 1
                && ossl::ENGINE_set_load_privkey_function(e, Some(load_privkey)) == 1;
            let added = ok && ossl::ENGINE_add(e) == 1;
            ossl::ENGINE_free(e);
            if !added {
                openssl_sys::ERR_clear_error();
                return Err("an OpenSSL ENGINE named 'pkcs11' is already loaded in this process \
                     (an engines section in openssl.cnf?); remove it so that mod_hsm_ssl can load the keys"
                    .into());
            }
        }
        Ok(())
    }
}
