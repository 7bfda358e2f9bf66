//! The provider's STORE for the `pkcs11` scheme: how mod_ssl gets our keys
//! through `OSSL_STORE_open(uri)`. mod_ssl takes that way when no ENGINE
//! named "pkcs11" answers (always with OpenSSL 4.0, which has no ENGINE;
//! with 3.x when no such engine is installed, see `loader.rs`).
//!
//! A store context serves one URI and yields one object: the token key,
//! as a reference that only this provider's KEYMGMT `load` understands
//! (OpenSSL hands a reference to the KEYMGMT of the store's own provider),
//! so the EVP_PKEY mod_ssl gets is ours, like the ENGINE's. Asked for
//! anything but a private key (a certificate by URI), it yields nothing.
//! The passphrase callback is not used: the PIN comes from `HSMSSLPin`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

use crate::dispatch;
use crate::ffi::guard;
use crate::ffi::ossl::{self, OSSL_DISPATCH, OSSL_PARAM};
use crate::ffi::DISPATCH_END;
use crate::tls::key;
use crate::tls::params::{def, end, ParamList};

struct StoreCtx {
    uri: String,
    /// The object was handed out (or could not be): nothing more to load.
    done: bool,
    /// What the caller expects (`OSSL_STORE_expect`); 0 is anything.
    expect: c_int,
}

unsafe fn ctx<'a>(c: *mut c_void) -> Option<&'a mut StoreCtx> {
    // SAFETY: OpenSSL passes back the pointer `open` returned.
    unsafe { (c as *mut StoreCtx).as_mut() }
}

unsafe extern "C" fn open(_provctx: *mut c_void, uri: *const c_char) -> *mut c_void {
    guard("store open", ptr::null_mut(), || {
        if uri.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: OpenSSL passes the NUL-terminated URI it was given.
        let uri = unsafe { CStr::from_ptr(uri) }.to_string_lossy().into_owned();
        if !uri.starts_with("pkcs11:") {
            return ptr::null_mut();
        }
        Box::into_raw(Box::new(StoreCtx { uri, done: false, expect: 0 })).cast()
    })
}

static SETTABLE: ParamList<3> = ParamList([
    def(ossl::OSSL_STORE_PARAM_EXPECT, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_STORE_PARAM_PROPERTIES, ossl::OSSL_PARAM_UTF8_STRING),
    end(),
]);

unsafe extern "C" fn settable_ctx_params(_provctx: *mut c_void) -> *const OSSL_PARAM {
    SETTABLE.as_ptr()
}

/// Takes `expect`; other parameters (a property query) change nothing here.
/// It must exist: OpenSSL calls it without checking whenever a caller
/// passes parameters or properties.
unsafe extern "C" fn set_ctx_params(c: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("store set_ctx_params", 0, || {
        // SAFETY: the pointer `open` returned.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        // SAFETY: OpenSSL's valid END-terminated array (or null).
        if let Some(p) = unsafe { crate::tls::params::locate_const(params, ossl::OSSL_STORE_PARAM_EXPECT) } {
            let mut v: c_int = 0;
            // SAFETY: p points into the caller's array.
            if unsafe { ossl::OSSL_PARAM_get_int(p, &mut v) } != 1 {
                return 0;
            }
            c.expect = v;
        }
        1
    })
}

unsafe extern "C" fn load(
    c: *mut c_void,
    object_cb: ossl::OSSL_CALLBACK,
    object_cbarg: *mut c_void,
    _pw_cb: ossl::OSSL_PASSPHRASE_CALLBACK,
    _pw_cbarg: *mut c_void,
) -> c_int {
    guard("store load", 0, || {
        // SAFETY: the pointer `open` returned.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        let Some(cb) = object_cb else { return 0 };
        c.done = true;
        let shown = crate::pkcs11::uri::redacted(&c.uri);
        if c.expect != 0 && c.expect != ossl::OSSL_STORE_INFO_PKEY as c_int {
            log::error!(
                "HSM00522: {shown}: only private keys can be loaded by pkcs11: URI (asked for object type {}); \
                 give SSLCertificateFile a certificate file",
                c.expect
            );
            return 0;
        }
        let Some(token_key) = super::loader::resolve(&c.uri) else { return 0 };
        let (name, n) = match super::provider::park(token_key) {
            Ok(p) => p,
            Err(e) => {
                super::loader::report_unusable(&shown, &e);
                return 0;
            }
        };
        log::debug!("HSM00523: key {shown}: handed to OpenSSL through the hsm_ssl provider's store (OSSL_STORE)");
        let mut object_type: c_int = ossl::OSSL_OBJECT_PKEY as c_int;
        let mut reference = key::reference(n);
        // SAFETY: the constructors only record the pointers, which stay
        // valid across the callback below (locals and a 'static name).
        let params = unsafe {
            [
                ossl::OSSL_PARAM_construct_int(ossl::OSSL_OBJECT_PARAM_TYPE.as_ptr().cast(), &mut object_type),
                ossl::OSSL_PARAM_construct_utf8_string(ossl::OSSL_OBJECT_PARAM_DATA_TYPE.as_ptr().cast(), name.as_ptr() as *mut c_char, 0),
                ossl::OSSL_PARAM_construct_octet_string(
                    ossl::OSSL_OBJECT_PARAM_REFERENCE.as_ptr().cast(),
                    reference.as_mut_ptr().cast(),
                    reference.len(),
                ),
                ossl::OSSL_PARAM_construct_end(),
            ]
        };
        // SAFETY: OpenSSL's callback with its own argument; `params` and
        // what it points to live across the call (OpenSSL loads the
        // reference within it).
        let rc = unsafe { cb(params.as_ptr(), object_cbarg) };
        // Taken by our KEYMGMT's load if OpenSSL got that far; if not,
        // nothing must stay parked.
        key::discard(n);
        rc
    })
}

unsafe extern "C" fn eof(c: *mut c_void) -> c_int {
    guard("store eof", 1, || {
        // SAFETY: the pointer `open` returned.
        unsafe { ctx(c) }.map_or(true, |c| c.done) as c_int
    })
}

unsafe extern "C" fn close(c: *mut c_void) -> c_int {
    guard("store close", 0, || {
        if !c.is_null() {
            // SAFETY: c came from Box::into_raw in `open`; OpenSSL closes once.
            drop(unsafe { Box::from_raw(c as *mut StoreCtx) });
        }
        1
    })
}

pub static STORE: [OSSL_DISPATCH; 7] = [
    dispatch!(ossl::OSSL_FUNC_STORE_OPEN, open, ossl::OSSL_FUNC_store_open_fn),
    dispatch!(ossl::OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, settable_ctx_params, ossl::OSSL_FUNC_store_settable_ctx_params_fn),
    dispatch!(ossl::OSSL_FUNC_STORE_SET_CTX_PARAMS, set_ctx_params, ossl::OSSL_FUNC_store_set_ctx_params_fn),
    dispatch!(ossl::OSSL_FUNC_STORE_LOAD, load, ossl::OSSL_FUNC_store_load_fn),
    dispatch!(ossl::OSSL_FUNC_STORE_EOF, eof, ossl::OSSL_FUNC_store_eof_fn),
    dispatch!(ossl::OSSL_FUNC_STORE_CLOSE, close, ossl::OSSL_FUNC_store_close_fn),
    DISPATCH_END,
];
