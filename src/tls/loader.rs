//! How mod_ssl gets our keys: for a `pkcs11:` SSLCertificateKeyFile, mod_ssl
//! asks OpenSSL for an ENGINE named "pkcs11" (2.4.63 and later, and 2.4.62
//! with SSLCryptoDevice) or opens the URI with OSSL_STORE (2.4.62). We
//! register both: an ENGINE with id "pkcs11" whose only function is loading
//! private keys, and a legacy OSSL_STORE loader for the "pkcs11" scheme.
//! Both shadow whatever else would answer to those names (libp11's engine
//! on disk, pkcs11-provider's store), and both return an EVP_PKEY of our
//! provider.
//!
//! The URI is resolved by a callback that the Apache layer installs for the
//! current configuration (it knows the vhost being loaded, for messages).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::ffi::guard;
use crate::ffi::ossl::{self, ENGINE, EVP_PKEY, OSSL_STORE_INFO, OSSL_STORE_LOADER, OSSL_STORE_LOADER_CTX, UI_METHOD};
use crate::pkcs11::token::KeyRef;
use crate::tls::provider;

/// Resolves a key URI to a token key, logging the reason when it cannot.
pub type Resolver = dyn Fn(&str) -> Option<Arc<KeyRef>> + Send + Sync;

static RESOLVER: RwLock<Option<Box<Resolver>>> = RwLock::new(None);

pub fn set_resolver(r: Option<Box<Resolver>>) {
    *RESOLVER.write() = r;
}

fn load(uri: &str) -> *mut EVP_PKEY {
    let key = match RESOLVER.read().as_ref() {
        Some(resolve) => resolve(uri),
        None => {
            log::error!("HSM00520: key {}: mod_hsm_ssl is not configured in this process", crate::pkcs11::uri::redacted(uri));
            None
        }
    };
    let Some(key) = key else { return ptr::null_mut() };
    let shown = key.uri_text.clone();
    match provider::evp_pkey_for(key) {
        Ok(p) => p.cast(),
        Err(e) => {
            log::error!("HSM00521: key {shown}: {e}");
            ptr::null_mut()
        }
    }
}

unsafe extern "C" fn engine_load_privkey(_e: *mut ENGINE, id: *const c_char, _ui: *mut UI_METHOD, _cb: *mut c_void) -> *mut EVP_PKEY {
    guard("engine load_privkey", ptr::null_mut(), || {
        if id.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: OpenSSL passes the NUL-terminated key id mod_ssl gave it.
        let uri = unsafe { CStr::from_ptr(id) }.to_string_lossy().into_owned();
        load(&uri)
    })
}

/// Our per-open state of the STORE loader.
struct StoreCtx {
    uri: String,
    done: bool,
    failed: bool,
}

unsafe extern "C" fn store_open(
    _l: *const OSSL_STORE_LOADER,
    uri: *const c_char,
    _ui: *const UI_METHOD,
    _d: *mut c_void,
) -> *mut OSSL_STORE_LOADER_CTX {
    guard("store open", ptr::null_mut(), || {
        if uri.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: OpenSSL passes the NUL-terminated URI.
        let uri = unsafe { CStr::from_ptr(uri) }.to_string_lossy().into_owned();
        Box::into_raw(Box::new(StoreCtx { uri, done: false, failed: false })).cast()
    })
}

unsafe fn sctx<'a>(c: *mut OSSL_STORE_LOADER_CTX) -> Option<&'a mut StoreCtx> {
    // SAFETY: OpenSSL passes back what store_open returned.
    unsafe { (c as *mut StoreCtx).as_mut() }
}

unsafe extern "C" fn store_load(c: *mut OSSL_STORE_LOADER_CTX, _ui: *const UI_METHOD, _d: *mut c_void) -> *mut OSSL_STORE_INFO {
    guard("store load", ptr::null_mut(), || {
        // SAFETY: see sctx().
        let Some(c) = (unsafe { sctx(c) }) else { return ptr::null_mut() };
        if c.done {
            return ptr::null_mut();
        }
        c.done = true;
        let pkey = load(&c.uri);
        if pkey.is_null() {
            c.failed = true;
            return ptr::null_mut();
        }
        // SAFETY: the info takes ownership of pkey.
        let info = unsafe { ossl::OSSL_STORE_INFO_new_PKEY(pkey) };
        if info.is_null() {
            // SAFETY: still ours if the info could not be made.
            unsafe { openssl_sys::EVP_PKEY_free(pkey.cast()) };
            c.failed = true;
        }
        info
    })
}

unsafe extern "C" fn store_eof(c: *mut OSSL_STORE_LOADER_CTX) -> c_int {
    // SAFETY: see sctx().
    guard("store eof", 1, || unsafe { sctx(c) }.map_or(1, |c| c.done as c_int))
}

unsafe extern "C" fn store_error(c: *mut OSSL_STORE_LOADER_CTX) -> c_int {
    // SAFETY: see sctx().
    guard("store error", 1, || unsafe { sctx(c) }.map_or(1, |c| c.failed as c_int))
}

unsafe extern "C" fn store_close(c: *mut OSSL_STORE_LOADER_CTX) -> c_int {
    guard("store close", 0, || {
        if !c.is_null() {
            // SAFETY: c came from Box::into_raw in store_open.
            drop(unsafe { Box::from_raw(c as *mut StoreCtx) });
        }
        1
    })
}

/// Registers the ENGINE and the STORE loader, once per process (the
/// module's code stays mapped for the process's life).
pub fn ensure_registered() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(register).clone()
}

fn register() -> Result<(), String> {
    provider::ensure_loaded()?;
    // SAFETY: standard ENGINE / OSSL_STORE registration with 'static
    // strings and functions; the structural reference from ENGINE_new is
    // released after ENGINE_add took its own.
    unsafe {
        let e = ossl::ENGINE_new();
        if e.is_null() {
            return Err("OpenSSL could not allocate an ENGINE".into());
        }
        let ok = ossl::ENGINE_set_id(e, c"pkcs11".as_ptr()) == 1
            && ossl::ENGINE_set_name(e, c"mod_hsm_ssl key loader (PKCS#11 keys through the hsm_ssl provider)".as_ptr()) == 1
            && ossl::ENGINE_set_load_privkey_function(e, Some(engine_load_privkey)) == 1;
        let added = ok && ossl::ENGINE_add(e) == 1;
        ossl::ENGINE_free(e);
        if !added {
            openssl_sys::ERR_clear_error();
            return Err("an OpenSSL ENGINE named 'pkcs11' is already loaded in this process \
                 (an engines section in openssl.cnf?); remove it so that mod_hsm_ssl can load the keys"
                .into());
        }
        let l = ossl::OSSL_STORE_LOADER_new(ptr::null_mut(), c"pkcs11".as_ptr());
        if l.is_null() {
            return Err("OpenSSL could not allocate an OSSL_STORE loader".into());
        }
        let ok = ossl::OSSL_STORE_LOADER_set_open(l, Some(store_open)) == 1
            && ossl::OSSL_STORE_LOADER_set_load(l, Some(store_load)) == 1
            && ossl::OSSL_STORE_LOADER_set_eof(l, Some(store_eof)) == 1
            && ossl::OSSL_STORE_LOADER_set_error(l, Some(store_error)) == 1
            && ossl::OSSL_STORE_LOADER_set_close(l, Some(store_close)) == 1
            && ossl::OSSL_STORE_register_loader(l) == 1;
        if !ok {
            ossl::OSSL_STORE_LOADER_free(l);
            openssl_sys::ERR_clear_error();
            return Err("an OSSL_STORE loader for the pkcs11 scheme is already registered in this process".into());
        }
    }
    Ok(())
}
