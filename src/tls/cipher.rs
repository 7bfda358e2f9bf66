//! ASYM_CIPHER for RSA HSM keys: the premaster-secret decrypt of TLS 1.2 RSA
//! key exchange (RSA_PKCS1_WITH_TLS_PADDING) and plain PKCS#1 v1.5 decrypt.
//!
//! TLS padding follows RFC 5246 §7.4.7.1: whatever goes wrong with the
//! ciphertext (bad padding, wrong length, wrong version) yields a random
//! premaster secret, never an error the client could tell apart
//! (Bleichenbacher / ROBOT). Only a token that cannot be reached fails the
//! handshake.

use std::ffi::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::Arc;

use cryptoki::error::{Error as CkError, RvError};

use crate::dispatch;
use crate::ffi::ossl::{self, OSSL_PARAM};
use crate::ffi::{guard, DISPATCH_END};
use crate::pkcs11::runtime;
use crate::pkcs11::token::{KeyRef, Mech, OpError};
use crate::tls::key::{keydata, Kind, Public};
use crate::tls::params::{self, def, end, ParamList};

const PAD_PKCS1: c_int = 1;
const PAD_TLS: c_int = 7; // RSA_PKCS1_WITH_TLS_PADDING
const PREMASTER: usize = 48;

struct CipherCtx {
    key: Option<(Arc<KeyRef>, Public)>,
    pad: c_int,
    client_version: c_uint,
    alt_version: c_uint,
}

/// Errors that mean "the token is not usable", as opposed to "this
/// ciphertext is bad".
fn is_infrastructure(e: &OpError) -> bool {
    match e {
        OpError::Busy(_) | OpError::Timeout(_) | OpError::Setup(_) | OpError::Denied(_) => true,
        // The same list that makes the runtime re-initialize, plus a token
        // that cannot do the mechanism at all: none depends on the
        // ciphertext. Anything else is treated as a bad ciphertext.
        OpError::Token(CkError::Pkcs11(RvError::MechanismInvalid, _)) => true,
        OpError::Token(_) => e.needs_reinit(),
    }
}

impl CipherCtx {
    fn decrypt(&self, input: &[u8]) -> Option<Vec<u8>> {
        let (key, _) = self.key.as_ref()?;
        let decrypt = |data: &[u8]| runtime::with_hsm(&key.binding, |hsm| hsm.decrypt(key, Mech::RsaPkcs, data.to_vec()));
        if self.pad != PAD_TLS {
            return match decrypt(input) {
                Ok(v) => Some(v),
                Err(e) => {
                    log::error!("RSA decrypt with {} failed: {e}", key.uri_text);
                    None
                }
            };
        }
        // Random premaster first, so both paths below do the same work.
        let mut random = [0u8; PREMASTER];
        // SAFETY: random is a valid 48-byte buffer.
        if unsafe { openssl_sys::RAND_priv_bytes(random.as_mut_ptr(), PREMASTER as c_int) } != 1 {
            return None;
        }
        let decrypted = match decrypt(input) {
            Ok(v) => v,
            Err(e) if is_infrastructure(&e) => {
                log::error!("TLS handshake refused: premaster decrypt with {} failed: {e}", key.uri_text);
                return None;
            }
            Err(_) => Vec::new(),
        };
        let (cv0, cv1) = ((self.client_version >> 8) as u8, self.client_version as u8);
        let (av0, av1) = ((self.alt_version >> 8) as u8, self.alt_version as u8);
        let mut out = random;
        if decrypted.len() == PREMASTER {
            let v = (decrypted[0], decrypted[1]);
            let good_cv = ((v.0 ^ cv0) | (v.1 ^ cv1)) == 0;
            let good_alt = self.alt_version != 0 && ((v.0 ^ av0) | (v.1 ^ av1)) == 0;
            let mask = 0u8.wrapping_sub((good_cv | good_alt) as u8);
            for (o, d) in out.iter_mut().zip(decrypted.iter()) {
                *o = (d & mask) | (*o & !mask);
            }
        }
        Some(out.to_vec())
    }
}

unsafe fn ctx<'a>(p: *mut c_void) -> Option<&'a mut CipherCtx> {
    // SAFETY: OpenSSL passes back the context our newctx returned.
    unsafe { (p as *mut CipherCtx).as_mut() }
}

unsafe extern "C" fn newctx(_provctx: *mut c_void) -> *mut c_void {
    guard("asym_cipher newctx", ptr::null_mut(), || {
        Box::into_raw(Box::new(CipherCtx { key: None, pad: PAD_PKCS1, client_version: 0, alt_version: 0 })).cast()
    })
}

unsafe extern "C" fn freectx(c: *mut c_void) {
    guard("asym_cipher freectx", (), || {
        if !c.is_null() {
            // SAFETY: c came from Box::into_raw in newctx/dupctx.
            drop(unsafe { Box::from_raw(c as *mut CipherCtx) });
        }
    })
}

unsafe extern "C" fn dupctx(c: *mut c_void) -> *mut c_void {
    guard("asym_cipher dupctx", ptr::null_mut(), || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return ptr::null_mut() };
        let d = CipherCtx { key: c.key.clone(), pad: c.pad, client_version: c.client_version, alt_version: c.alt_version };
        Box::into_raw(Box::new(d)).cast()
    })
}

fn apply(c: &mut CipherCtx, params: *const OSSL_PARAM) -> bool {
    if params.is_null() {
        return true;
    }
    // SAFETY (block): params is OpenSSL's valid END-terminated array.
    unsafe {
        if let Some(p) = params::locate_const(params, ossl::OSSL_ASYM_CIPHER_PARAM_PAD_MODE) {
            let mode = match params::get_utf8(p) {
                Some(s) if s == "pkcs1" => PAD_PKCS1,
                Some(_) => return false,
                None => match params::get_int(p) {
                    Some(m) => m,
                    None => return false,
                },
            };
            if mode != PAD_PKCS1 && mode != PAD_TLS {
                log::debug!("RSA padding mode {mode} is not offered for HSM keys");
                return false;
            }
            c.pad = mode;
        }
        if let Some(p) = params::locate_const(params, ossl::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION) {
            match params::get_uint(p) {
                Some(v) => c.client_version = v,
                None => return false,
            }
        }
        if let Some(p) = params::locate_const(params, ossl::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION) {
            match params::get_uint(p) {
                Some(v) => c.alt_version = v,
                None => return false,
            }
        }
    }
    true
}

unsafe extern "C" fn decrypt_init(c: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("decrypt_init", 0, || {
        // SAFETY: see ctx(); provkey is keydata of our KEYMGMT.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        let Some(k) = (unsafe { keydata(provkey) }) else { return 0 };
        match (&k.hsm, &k.public, k.kind) {
            (Some(h), Some(p), Kind::Rsa) => c.key = Some((h.clone(), p.clone())),
            _ => return 0,
        }
        c.pad = PAD_PKCS1;
        c.client_version = 0;
        c.alt_version = 0;
        apply(c, params) as c_int
    })
}

unsafe extern "C" fn decrypt(c: *mut c_void, out: *mut u8, outlen: *mut usize, outsize: usize, input: *const u8, inlen: usize) -> c_int {
    guard("decrypt", 0, || {
        // SAFETY: see ctx(); input valid for inlen bytes; out for outsize.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        if outlen.is_null() {
            return 0;
        }
        let max = match &c.key {
            Some((_, p)) => p.max_sig_size(),
            None => return 0,
        };
        if out.is_null() {
            // SAFETY: outlen is non-null (checked above) and writable.
            unsafe { *outlen = if c.pad == PAD_TLS { PREMASTER } else { max } };
            return 1;
        }
        if c.pad == PAD_TLS && (outsize < PREMASTER || c.client_version == 0) {
            return 0;
        }
        // SAFETY: OpenSSL passes input valid for inlen bytes.
        let data = if input.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(input, inlen) } };
        let Some(plain) = c.decrypt(data) else { return 0 };
        if plain.len() > outsize {
            return 0;
        }
        // SAFETY: out has outsize >= plain.len() bytes; outlen is valid.
        unsafe {
            ptr::copy_nonoverlapping(plain.as_ptr(), out, plain.len());
            *outlen = plain.len();
        }
        1
    })
}

unsafe extern "C" fn set_ctx_params(c: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("asym_cipher set_ctx_params", 0, || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        apply(c, params) as c_int
    })
}

static SETTABLE: ParamList<4> = ParamList([
    def(ossl::OSSL_ASYM_CIPHER_PARAM_PAD_MODE, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    def(ossl::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION, ossl::OSSL_PARAM_UNSIGNED_INTEGER),
    end(),
]);

unsafe extern "C" fn settable(_c: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
    SETTABLE.as_ptr()
}

unsafe extern "C" fn get_ctx_params(c: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
    guard("asym_cipher get_ctx_params", 0, || {
        // SAFETY: see ctx(); params valid.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        unsafe { params::set_int(params, ossl::OSSL_ASYM_CIPHER_PARAM_PAD_MODE, c.pad) as c_int }
    })
}

static GETTABLE: ParamList<2> = ParamList([def(ossl::OSSL_ASYM_CIPHER_PARAM_PAD_MODE, ossl::OSSL_PARAM_INTEGER), end()]);

unsafe extern "C" fn gettable(_c: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
    GETTABLE.as_ptr()
}

type NewCtx = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type FreeCtx = unsafe extern "C" fn(*mut c_void);
type DupCtx = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type Init = unsafe extern "C" fn(*mut c_void, *mut c_void, *const OSSL_PARAM) -> c_int;
type Dec = unsafe extern "C" fn(*mut c_void, *mut u8, *mut usize, usize, *const u8, usize) -> c_int;
type SetP = unsafe extern "C" fn(*mut c_void, *const OSSL_PARAM) -> c_int;
type GetP = unsafe extern "C" fn(*mut c_void, *mut OSSL_PARAM) -> c_int;
type Table = unsafe extern "C" fn(*mut c_void, *mut c_void) -> *const OSSL_PARAM;

pub static RSA_ASYM_CIPHER: [ossl::OSSL_DISPATCH; 10] = [
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_NEWCTX, newctx, NewCtx),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_FREECTX, freectx, FreeCtx),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_DUPCTX, dupctx, DupCtx),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT, decrypt_init, Init),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_DECRYPT, decrypt, Dec),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS, set_ctx_params, SetP),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS, settable, Table),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS, get_ctx_params, GetP),
    dispatch!(ossl::OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS, gettable, Table),
    DISPATCH_END,
];

