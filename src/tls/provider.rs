//! The `hsm_ssl` OpenSSL provider: registration into the default library
//! context (once per process) and the making of EVP_PKEYs for token keys.
//!
//! Its KEYMGMT answers to "RSA" and "EC" (so that libssl treats the keys as
//! ordinary RSA / EC server keys) with the property `provider=hsm_ssl`; its
//! operations have names only our KEYMGMT asks for (see `key.rs`), so an HSM
//! key never meets another provider's code and no other key meets ours.
//! Provider names sort after "default", so unqualified fetches of "RSA" or
//! "EC" by other code keep getting the default provider.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::{Arc, OnceLock};

use crate::dispatch;
use crate::ffi::ossl::{self, OSSL_ALGORITHM, OSSL_CORE_HANDLE, OSSL_DISPATCH, OSSL_PARAM};
use crate::ffi::DISPATCH_END;
use crate::pkcs11::token::KeyRef;
use crate::tls::key::{self, Kind, Public};
use crate::tls::params::{self as prm, def, end, ParamList};
use crate::tls::sigcheck::SigCheck;

pub const PROVIDER_NAME: &CStr = c"hsm_ssl";
const PROPS: &CStr = c"provider=hsm_ssl";

struct Algs<const N: usize>([OSSL_ALGORITHM; N]);
// SAFETY: read-only tables of pointers to 'static data.
unsafe impl<const N: usize> Sync for Algs<N> {}

const fn alg(names: &'static CStr, imp: &'static [OSSL_DISPATCH], descr: &'static CStr) -> OSSL_ALGORITHM {
    OSSL_ALGORITHM {
        algorithm_names: names.as_ptr(),
        property_definition: PROPS.as_ptr(),
        implementation: imp.as_ptr(),
        algorithm_description: descr.as_ptr(),
    }
}

const ALG_END: OSSL_ALGORITHM = OSSL_ALGORITHM {
    algorithm_names: ptr::null(),
    property_definition: ptr::null(),
    implementation: ptr::null(),
    algorithm_description: ptr::null(),
};

static KEYMGMT: Algs<3> = Algs([
    alg(c"RSA:rsaEncryption:1.2.840.113549.1.1.1", &key::RSA_KEYMGMT, c"RSA key in a PKCS#11 token"),
    alg(c"EC:id-ecPublicKey:1.2.840.10045.2.1", &key::EC_KEYMGMT, c"EC key in a PKCS#11 token"),
    ALG_END,
]);
static SIGNATURE: Algs<3> = Algs([
    alg(key::RSA_SIG_NAME, &super::signature::RSA_SIGNATURE, c"RSA signature in a PKCS#11 token"),
    alg(key::ECDSA_NAME, &super::signature::ECDSA_SIGNATURE, c"ECDSA in a PKCS#11 token"),
    ALG_END,
]);
static ASYM_CIPHER: Algs<2> = Algs([alg(key::RSA_ENC_NAME, &super::cipher::RSA_ASYM_CIPHER, c"RSA decrypt in a PKCS#11 token"), ALG_END]);
/// The store for `pkcs11:` URIs: OSSL_STORE_open on a key URI (what mod_ssl
/// does when no ENGINE answers) gets our key.
static STORE: Algs<2> = Algs([alg(c"pkcs11", &super::store::STORE, c"mod_hsm_ssl's keys by pkcs11: URI"), ALG_END]);

unsafe extern "C" fn query_operation(_provctx: *mut c_void, op: c_int, no_store: *mut c_int) -> *const OSSL_ALGORITHM {
    if !no_store.is_null() {
        // SAFETY: OpenSSL passes a valid out-pointer.
        unsafe { *no_store = 0 };
    }
    match op as u32 {
        ossl::OSSL_OP_KEYMGMT => KEYMGMT.0.as_ptr(),
        ossl::OSSL_OP_SIGNATURE => SIGNATURE.0.as_ptr(),
        ossl::OSSL_OP_ASYM_CIPHER => ASYM_CIPHER.0.as_ptr(),
        ossl::OSSL_OP_STORE => STORE.0.as_ptr(),
        _ => ptr::null(),
    }
}

unsafe extern "C" fn teardown(_provctx: *mut c_void) {}

static PROV_GETTABLE: ParamList<4> = ParamList([
    def(ossl::OSSL_PROV_PARAM_NAME, ossl::OSSL_PARAM_UTF8_PTR),
    def(ossl::OSSL_PROV_PARAM_VERSION, ossl::OSSL_PARAM_UTF8_PTR),
    def(ossl::OSSL_PROV_PARAM_STATUS, ossl::OSSL_PARAM_INTEGER),
    end(),
]);

unsafe extern "C" fn gettable_params(_provctx: *mut c_void) -> *const OSSL_PARAM {
    PROV_GETTABLE.as_ptr()
}

unsafe extern "C" fn get_params(_provctx: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
    crate::ffi::guard("provider get_params", 0, || {
        // SAFETY: params is OpenSSL's valid END-terminated array.
        unsafe {
            (prm::set_utf8(params, ossl::OSSL_PROV_PARAM_NAME, c"mod_hsm_ssl PKCS#11 keys")
                && prm::set_utf8(params, ossl::OSSL_PROV_PARAM_VERSION, VERSION)
                && prm::set_int(params, ossl::OSSL_PROV_PARAM_STATUS, 1)) as c_int
        }
    })
}

const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(v) => v,
    Err(_) => c"0",
};

static PROVIDER_DISPATCH: [OSSL_DISPATCH; 5] = [
    dispatch!(ossl::OSSL_FUNC_PROVIDER_QUERY_OPERATION, query_operation, ossl::OSSL_FUNC_provider_query_operation_fn),
    dispatch!(ossl::OSSL_FUNC_PROVIDER_TEARDOWN, teardown, ossl::OSSL_FUNC_provider_teardown_fn),
    dispatch!(ossl::OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, gettable_params, ossl::OSSL_FUNC_provider_gettable_params_fn),
    dispatch!(ossl::OSSL_FUNC_PROVIDER_GET_PARAMS, get_params, ossl::OSSL_FUNC_provider_get_params_fn),
    DISPATCH_END,
];

/// A non-null provider context; the provider keeps no state of its own.
static PROVCTX: u8 = 0;

unsafe extern "C" fn provider_init(
    _handle: *const OSSL_CORE_HANDLE,
    _in: *const OSSL_DISPATCH,
    out: *mut *const OSSL_DISPATCH,
    provctx: *mut *mut c_void,
) -> c_int {
    // SAFETY: OpenSSL passes valid out-pointers.
    unsafe {
        *out = PROVIDER_DISPATCH.as_ptr();
        *provctx = &PROVCTX as *const u8 as *mut c_void;
    }
    1
}

/// Registers and loads the provider once per process. The module's code
/// stays mapped for the life of the process (see `httpd::module::pin_self`),
/// so the registration never dangles across a restart.
pub fn ensure_loaded() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: plain OpenSSL calls on the default library context with
            // 'static NUL-terminated names and a 'static init function.
            unsafe {
                // Activate the default provider first: explicitly loading a
                // provider before any fetch would turn off OpenSSL's
                // automatic fallback to "default".
                openssl_sys::EVP_MD_free(openssl_sys::EVP_MD_fetch(ptr::null_mut(), c"SHA256".as_ptr(), ptr::null()));
                if ossl::OSSL_PROVIDER_add_builtin(ptr::null_mut(), PROVIDER_NAME.as_ptr(), Some(provider_init)) != 1 {
                    return Err("OpenSSL refused to register the hsm_ssl provider".into());
                }
                if ossl::OSSL_PROVIDER_load(ptr::null_mut(), PROVIDER_NAME.as_ptr()).is_null() {
                    return Err("OpenSSL could not load the hsm_ssl provider".into());
                }
            }
            Ok(())
        })
        .clone()
}

/// Parks `key`, with the signature check built for it, for our KEYMGMT to
/// take (by import or by load): its KEYMGMT name and the parking number.
pub fn park(key: Arc<KeyRef>) -> Result<(&'static CStr, usize), String> {
    let public = Public::from_token(&key.public)?;
    let kind = match public {
        Public::Rsa { .. } => Kind::Rsa,
        Public::Ec { .. } => Kind::Ec,
    };
    let name: &CStr = if kind == Kind::Rsa { c"RSA" } else { c"EC" };
    // Built here, once per key, and shared by every signature made with it.
    let check = Arc::new(SigCheck::new(&public).map_err(|e| format!("cannot prepare the signature check: {e}"))?);
    Ok((name, key::park(key, check)))
}

/// An EVP_PKEY whose private operations go to `key` in the token. The
/// caller owns the returned reference.
pub fn evp_pkey_for(key: Arc<KeyRef>) -> Result<*mut openssl_sys::EVP_PKEY, String> {
    ensure_loaded()?;
    let (name, mut handle) = park(key)?;
    let mut params = key::handle_param(&mut handle);
    // SAFETY: standard EVP_PKEY_fromdata sequence; the context is freed
    // here; params lives across the call (it points at `handle`); the cast
    // is between two declarations of the same C struct.
    unsafe {
        let ctx = openssl_sys::EVP_PKEY_CTX_new_from_name(ptr::null_mut(), name.as_ptr(), PROPS.as_ptr());
        if ctx.is_null() {
            key::discard(handle);
            return Err("the hsm_ssl provider is not available in OpenSSL".into());
        }
        let mut pkey: *mut openssl_sys::EVP_PKEY = ptr::null_mut();
        let ok = openssl_sys::EVP_PKEY_fromdata_init(ctx) == 1
            && openssl_sys::EVP_PKEY_fromdata(
                ctx,
                &mut pkey,
                (ossl::OSSL_KEYMGMT_SELECT_ALL_PARAMETERS | ossl::OSSL_KEYMGMT_SELECT_PUBLIC_KEY | ossl::OSSL_KEYMGMT_SELECT_PRIVATE_KEY) as c_int,
                params.as_mut_ptr().cast(),
            ) == 1;
        openssl_sys::EVP_PKEY_CTX_free(ctx);
        if !ok || pkey.is_null() {
            key::discard(handle);
            return Err("OpenSSL could not make a key object for the token key".into());
        }
        Ok(pkey)
    }
}

/// The provider OSSL_STORE_open uses for `pkcs11:` URIs in the default
/// library context (None if none offers that scheme). mod_ssl opens key
/// URIs there with no property query, so when another provider (say
/// pkcs11-provider from openssl.cnf) also offers the scheme, OpenSSL picks
/// whichever it met first.
pub fn pkcs11_store_provider() -> Option<String> {
    // SAFETY: fetch by a 'static name in the default library context; the
    // provider name is copied before the loader is freed.
    unsafe {
        ossl::ERR_set_mark();
        let l = ossl::OSSL_STORE_LOADER_fetch(ptr::null_mut(), c"pkcs11".as_ptr(), ptr::null());
        ossl::ERR_pop_to_mark();
        if l.is_null() {
            return None;
        }
        let p = ossl::OSSL_STORE_LOADER_get0_provider(l);
        let name = if p.is_null() { None } else { Some(CStr::from_ptr(ossl::OSSL_PROVIDER_get0_name(p)).to_string_lossy().into_owned()) };
        ossl::OSSL_STORE_LOADER_free(l);
        name
    }
}

/// The key URI of an EVP_PKEY made by [`evp_pkey_for`]; None for any other
/// key (a file key, or a key from another engine or provider).
///
/// # Safety
/// `pkey` is null or a valid EVP_PKEY.
pub unsafe fn hsm_uri_of(pkey: *mut openssl_sys::EVP_PKEY) -> Option<String> {
    if pkey.is_null() {
        return None;
    }
    let mut buf = [0 as c_char; 1024];
    let mut len = 0usize;
    // SAFETY: buf is writable for its length; pkey valid per contract.
    unsafe {
        ossl::ERR_set_mark();
        let ok =
            ossl::EVP_PKEY_get_utf8_string_param(pkey.cast(), key::URI_PARAM.as_ptr() as *const c_char, buf.as_mut_ptr(), buf.len(), &mut len) == 1;
        ossl::ERR_pop_to_mark();
        ok.then(|| CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
    }
}
