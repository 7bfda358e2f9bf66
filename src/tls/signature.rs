//! SIGNATURE operations for HSM keys: RSA (PKCS#1 v1.5 and PSS) and ECDSA.
//! The message is hashed here; the token gets the digest (RSA PKCS#1: the
//! DigestInfo) through CKM_RSA_PKCS, CKM_RSA_PKCS_PSS or CKM_ECDSA. Every
//! signature the token returns is verified (`sigcheck.rs`) before OpenSSL
//! gets it: one that does not verify is never sent.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::Arc;

use crate::dispatch;
use crate::ffi::ossl::{self, OSSL_PARAM};
use crate::ffi::{guard, DISPATCH_END};
use crate::keyservice::{self, proto};
use crate::pkcs11::token::KeyRef;
use crate::tls::digest::{Digest, Hasher};
use crate::tls::key::{keydata, Kind, Public};
use crate::tls::params::{self, def, end, ParamList};
use crate::tls::sigcheck::{Scheme, SigCheck};

const PAD_PKCS1: c_int = 1; // RSA_PKCS1_PADDING
const PAD_PSS: c_int = 6; // RSA_PKCS1_PSS_PADDING

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SaltLen {
    Digest,
    Max,
    Len(usize),
}

/// The token key a context signs with: the token object, its public half
/// and the check of its signatures.
#[derive(Clone)]
struct SigKey {
    token: Arc<KeyRef>,
    public: Public,
    check: Arc<SigCheck>,
}

struct SigCtx {
    kind: Kind,
    key: Option<SigKey>,
    digest: Option<Digest>,
    hasher: Option<Hasher>,
    pad: c_int,
    salt: SaltLen,
    mgf1: Option<Digest>,
}

impl SigCtx {
    fn new(kind: Kind) -> SigCtx {
        SigCtx { kind, key: None, digest: None, hasher: None, pad: PAD_PKCS1, salt: SaltLen::Digest, mgf1: None }
    }

    fn max_size(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.public.max_sig_size())
    }

    /// Signs a digest in the token and verifies the result; logs why if
    /// it cannot, or if the token's signature does not verify (it is then
    /// not sent, and the handshake fails: no retry, the token is faulty).
    fn sign_digest(&self, digest: &[u8]) -> Option<Vec<u8>> {
        let k = self.key.as_ref()?;
        let (sig, scheme, tbs) = match self.token_sign(k, digest) {
            Ok(r) => r,
            Err(e) => {
                log::error!("HSM00530: TLS handshake refused: signing with {} in the token failed: {e}", k.token.uri_text);
                return None;
            }
        };
        match k.check.verifies(scheme, &tbs, &sig) {
            Ok(true) => Some(sig),
            Ok(false) => {
                log::error!(
                    "HSM00531: TLS handshake refused: the token returned a signature made with {} that does not verify against \
                     the key's public half ({scheme}); it was not sent, since a faulty RSA signature can reveal the \
                     private key to whoever receives it; the HSM may be failing: check its health and logs",
                    k.token.uri_text
                );
                None
            }
            Err(e) => {
                log::error!(
                    "HSM00532: TLS handshake refused: the signature the token made with {} could not be checked ({e}); it was not sent",
                    k.token.uri_text
                );
                None
            }
        }
    }

    /// The token's signature of `digest`, with what it must verify as: the
    /// scheme and the data the verifier gets (the digest, or for PKCS#1
    /// without a digest the data padded).
    fn token_sign(&self, k: &SigKey, digest: &[u8]) -> Result<(Vec<u8>, Scheme, Vec<u8>), String> {
        let (key, public) = (&k.token, &k.public);
        let md = self.digest;
        (|| -> Result<(Vec<u8>, Scheme, Vec<u8>), String> {
            let sign = |scheme: proto::Scheme, data: &[u8]| keyservice::sign(key, scheme, data).map_err(|e| e.to_string());
            match (self.kind, public) {
                (Kind::Rsa, Public::Rsa { .. }) if self.pad == PAD_PSS => {
                    let md = md.ok_or("RSA-PSS without a digest")?;
                    let bits = public.bits() as usize;
                    let em_len = (bits - 1).div_ceil(8);
                    let s_len = match self.salt {
                        SaltLen::Digest => md.size(),
                        SaltLen::Max => em_len.checked_sub(md.size() + 2).ok_or("key too small for PSS")?,
                        SaltLen::Len(n) => n,
                    };
                    let mgf = self.mgf1.unwrap_or(md);
                    let salt = u32::try_from(s_len).map_err(|_| "PSS salt too long")?;
                    let scheme = proto::Scheme::Pss { digest: md, mgf1: mgf, salt };
                    Ok((sign(scheme, digest)?, Scheme::Pss { md, mgf1: mgf, salt: s_len }, digest.to_vec()))
                }
                (Kind::Rsa, Public::Rsa { .. }) => {
                    // The DigestInfo is built where the token is called.
                    let sig = sign(proto::Scheme::Pkcs1(md), digest)?;
                    // With a digest OpenSSL rebuilds the DigestInfo itself.
                    Ok((sig, Scheme::Pkcs1(md), digest.to_vec()))
                }
                (Kind::Ec, Public::Ec { curve, .. }) => {
                    let rs = sign(proto::Scheme::Ecdsa, digest)?;
                    let der = ecdsa_der(&rs, curve.field_bytes).ok_or_else(|| {
                        format!(
                            "the token returned an ECDSA signature of {} bytes; P-{} needs {} (r || s)",
                            rs.len(),
                            curve.bits,
                            2 * curve.field_bytes
                        )
                    })?;
                    Ok((der, Scheme::Ecdsa, digest.to_vec()))
                }
                _ => Err("key type mismatch".into()),
            }
        })()
    }

    fn apply_params(&mut self, params: *const OSSL_PARAM) -> bool {
        if params.is_null() {
            return true;
        }
        // SAFETY: params is OpenSSL's valid END-terminated array (checked non-null above).
        unsafe {
            if let Some(p) = params::locate_const(params, ossl::OSSL_SIGNATURE_PARAM_DIGEST) {
                match params::get_utf8(p).and_then(|n| Digest::by_name(&n)) {
                    Some(d) => {
                        self.digest = Some(d);
                        self.hasher = None;
                    }
                    None => return false,
                }
            }
            if let Some(p) = params::locate_const(params, ossl::OSSL_SIGNATURE_PARAM_PAD_MODE) {
                let mode = match params::get_utf8(p) {
                    Some(s) => match s.as_str() {
                        "pkcs1" => PAD_PKCS1,
                        "pss" => PAD_PSS,
                        _ => return false,
                    },
                    None => match params::get_int(p) {
                        Some(m) => m,
                        None => return false,
                    },
                };
                if self.kind != Kind::Rsa || (mode != PAD_PKCS1 && mode != PAD_PSS) {
                    return false;
                }
                self.pad = mode;
            }
            if let Some(p) = params::locate_const(params, ossl::OSSL_SIGNATURE_PARAM_PSS_SALTLEN) {
                self.salt = match params::get_utf8(p) {
                    Some(s) => match s.as_str() {
                        "digest" => SaltLen::Digest,
                        "max" | "auto" => SaltLen::Max,
                        n => match n.parse::<usize>() {
                            Ok(n) => SaltLen::Len(n),
                            Err(_) => return false,
                        },
                    },
                    None => match params::get_int(p) {
                        Some(-1) => SaltLen::Digest,
                        Some(-2) | Some(-3) => SaltLen::Max,
                        Some(n) if n >= 0 => SaltLen::Len(n as usize),
                        _ => return false,
                    },
                };
            }
            if let Some(p) = params::locate_const(params, ossl::OSSL_SIGNATURE_PARAM_MGF1_DIGEST) {
                match params::get_utf8(p).and_then(|n| Digest::by_name(&n)) {
                    Some(d) => self.mgf1 = Some(d),
                    None => return false,
                }
            }
        }
        true
    }
}

/// r || s (each `n` bytes) to a DER ECDSA-Sig-Value.
pub(crate) fn ecdsa_der(rs: &[u8], n: usize) -> Option<Vec<u8>> {
    if rs.len() != 2 * n {
        return None;
    }
    fn int(v: &[u8], out: &mut Vec<u8>) {
        let first = v.iter().position(|&b| b != 0).unwrap_or(v.len() - 1);
        let v = &v[first..];
        let pad = v[0] & 0x80 != 0;
        out.push(0x02);
        out.push((v.len() + pad as usize) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(2 * n + 8);
    int(&rs[..n], &mut body);
    int(&rs[n..], &mut body);
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Some(out)
}

unsafe fn ctx<'a>(p: *mut c_void) -> Option<&'a mut SigCtx> {
    // SAFETY: OpenSSL passes back the context our newctx returned.
    unsafe { (p as *mut SigCtx).as_mut() }
}

unsafe extern "C" fn rsa_newctx(_provctx: *mut c_void, _propq: *const c_char) -> *mut c_void {
    guard("signature newctx", ptr::null_mut(), || Box::into_raw(Box::new(SigCtx::new(Kind::Rsa))).cast())
}

unsafe extern "C" fn ec_newctx(_provctx: *mut c_void, _propq: *const c_char) -> *mut c_void {
    guard("signature newctx", ptr::null_mut(), || Box::into_raw(Box::new(SigCtx::new(Kind::Ec))).cast())
}

unsafe extern "C" fn freectx(c: *mut c_void) {
    guard("signature freectx", (), || {
        if !c.is_null() {
            // SAFETY: c came from Box::into_raw in newctx/dupctx.
            drop(unsafe { Box::from_raw(c as *mut SigCtx) });
        }
    })
}

unsafe extern "C" fn dupctx(c: *mut c_void) -> *mut c_void {
    guard("signature dupctx", ptr::null_mut(), || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return ptr::null_mut() };
        let hasher = match &c.hasher {
            Some(h) => match h.try_clone() {
                Some(h) => Some(h),
                None => return ptr::null_mut(),
            },
            None => None,
        };
        let d = SigCtx { kind: c.kind, key: c.key.clone(), digest: c.digest, hasher, pad: c.pad, salt: c.salt, mgf1: c.mgf1 };
        Box::into_raw(Box::new(d)).cast()
    })
}

fn init(c: &mut SigCtx, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    // SAFETY: provkey is keydata of our KEYMGMT (same provider).
    let Some(k) = (unsafe { keydata(provkey) }) else { return 0 };
    match (&k.hsm, &k.public, &k.check) {
        (Some(h), Some(p), Some(check)) if k.kind == c.kind => c.key = Some(SigKey { token: h.clone(), public: p.clone(), check: check.clone() }),
        _ => {
            log::debug!("HSM00533: signature init with a key that is not in the token");
            return 0;
        }
    }
    c.pad = PAD_PKCS1;
    c.salt = SaltLen::Digest;
    c.mgf1 = None;
    c.apply_params(params) as c_int
}

unsafe extern "C" fn sign_init(c: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("sign_init", 0, || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        c.digest = None;
        c.hasher = None;
        init(c, provkey, params)
    })
}

/// Writes `sig` to OpenSSL's buffer, or the size when the buffer is null.
unsafe fn emit(c: &SigCtx, out: *mut u8, outlen: *mut usize, outsize: usize, sig: impl FnOnce() -> Option<Vec<u8>>) -> c_int {
    if outlen.is_null() {
        return 0;
    }
    if out.is_null() {
        // SAFETY: outlen is a valid pointer from OpenSSL.
        unsafe { *outlen = c.max_size() };
        return 1;
    }
    let Some(sig) = sig() else { return 0 };
    if sig.len() > outsize {
        return 0;
    }
    // SAFETY: out has outsize >= sig.len() bytes; outlen is valid.
    unsafe {
        ptr::copy_nonoverlapping(sig.as_ptr(), out, sig.len());
        *outlen = sig.len();
    }
    1
}

unsafe extern "C" fn sign(c: *mut c_void, sig: *mut u8, siglen: *mut usize, sigsize: usize, tbs: *const u8, tbslen: usize) -> c_int {
    guard("sign", 0, || {
        // SAFETY: see ctx(); tbs is valid for tbslen bytes (OpenSSL).
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        // SAFETY: tbs is valid for tbslen bytes (OpenSSL's contract).
        let data = if tbs.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(tbs, tbslen) } };
        // SAFETY: sig/siglen are OpenSSL's output buffer and length for sigsize bytes.
        unsafe { emit(c, sig, siglen, sigsize, || c.sign_digest(data)) }
    })
}

unsafe extern "C" fn digest_sign_init(c: *mut c_void, mdname: *const c_char, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("digest_sign_init", 0, || {
        // SAFETY: see ctx(); mdname is null or NUL-terminated.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        // SAFETY: mdname is null or a NUL-terminated string (OpenSSL).
        let name = if mdname.is_null() { "SHA256".to_string() } else { unsafe { CStr::from_ptr(mdname) }.to_string_lossy().into_owned() };
        let Some(d) = Digest::by_name(&name) else {
            log::error!("HSM00534: TLS handshake refused: digest {name} is not supported with HSM keys");
            return 0;
        };
        c.digest = Some(d);
        c.hasher = None;
        init(c, provkey, params)
    })
}

unsafe extern "C" fn digest_sign_update(c: *mut c_void, data: *const u8, len: usize) -> c_int {
    guard("digest_sign_update", 0, || {
        // SAFETY: see ctx(); data valid for len bytes.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        let Some(d) = c.digest else { return 0 };
        if c.hasher.is_none() {
            c.hasher = Hasher::new(d);
        }
        // SAFETY: OpenSSL passes data valid for len bytes.
        let slice = if data.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(data, len) } };
        c.hasher.as_mut().is_some_and(|h| h.update(slice)) as c_int
    })
}

unsafe extern "C" fn digest_sign_final(c: *mut c_void, sig: *mut u8, siglen: *mut usize, sigsize: usize) -> c_int {
    guard("digest_sign_final", 0, || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        if sig.is_null() {
            // SAFETY: sig is null here; siglen is OpenSSL's valid out pointer.
            return unsafe { emit(c, sig, siglen, sigsize, || None) };
        }
        let digest = match c.hasher.take() {
            Some(mut h) => h.finish(),
            None => c.digest.and_then(|d| Hasher::oneshot(d, &[])),
        };
        let Some(digest) = digest else { return 0 };
        // SAFETY: sig/siglen/sigsize are OpenSSL's output buffer contract.
        unsafe { emit(c, sig, siglen, sigsize, || c.sign_digest(&digest)) }
    })
}

unsafe extern "C" fn digest_sign(c: *mut c_void, sig: *mut u8, siglen: *mut usize, sigsize: usize, tbs: *const u8, tbslen: usize) -> c_int {
    guard("digest_sign", 0, || {
        // SAFETY: see ctx(); tbs valid for tbslen bytes.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        if sig.is_null() {
            // SAFETY: sig is null here; siglen is OpenSSL's valid out pointer.
            return unsafe { emit(c, sig, siglen, sigsize, || None) };
        }
        let Some(d) = c.digest else { return 0 };
        // SAFETY: OpenSSL passes tbs valid for tbslen bytes.
        let data = if tbs.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(tbs, tbslen) } };
        let Some(digest) = Hasher::oneshot(d, data) else { return 0 };
        // SAFETY: sig/siglen/sigsize are OpenSSL's output buffer contract.
        unsafe { emit(c, sig, siglen, sigsize, || c.sign_digest(&digest)) }
    })
}

unsafe extern "C" fn set_ctx_params(c: *mut c_void, params: *const OSSL_PARAM) -> c_int {
    guard("signature set_ctx_params", 0, || {
        // SAFETY: see ctx().
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        c.apply_params(params) as c_int
    })
}

static SETTABLE: ParamList<6> = ParamList([
    def(ossl::OSSL_SIGNATURE_PARAM_DIGEST, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_SIGNATURE_PARAM_PAD_MODE, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_SIGNATURE_PARAM_PSS_SALTLEN, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_SIGNATURE_PARAM_MGF1_DIGEST, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_SIGNATURE_PARAM_PROPERTIES, ossl::OSSL_PARAM_UTF8_STRING),
    end(),
]);

unsafe extern "C" fn settable_ctx_params(_c: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
    SETTABLE.as_ptr()
}

/// DER AlgorithmIdentifier of the signature this context makes, for
/// `OSSL_SIGNATURE_PARAM_ALGORITHM_ID` (ASN1_item_sign_ctx, i.e. X509_sign
/// and X509_REQ_sign, asks provider keys for it). RSA PKCS#1 v1.5:
/// shaNWithRSAEncryption with NULL parameters; ECDSA: ecdsa-with-SHAn
/// without parameters (RFC 4055, RFC 5758). None for RSA-PSS (certificates
/// are signed with PKCS#1 v1.5 only) and without a digest.
fn algorithm_id(kind: Kind, pad: c_int, digest: Option<Digest>) -> Option<&'static [u8]> {
    const RSA: [&[u8]; 5] = [
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00],
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e, 0x05, 0x00],
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00],
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00],
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00],
    ];
    const ECDSA: [&[u8]; 5] = [
        &[0x30, 0x09, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
        &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01],
        &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let i = match digest? {
        Digest::Sha1 => 0,
        Digest::Sha224 => 1,
        Digest::Sha256 => 2,
        Digest::Sha384 => 3,
        Digest::Sha512 => 4,
    };
    match kind {
        Kind::Rsa if pad == PAD_PKCS1 => Some(RSA[i]),
        Kind::Rsa => None,
        Kind::Ec => Some(ECDSA[i]),
    }
}

unsafe extern "C" fn get_ctx_params(c: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
    guard("signature get_ctx_params", 0, || {
        // SAFETY: see ctx(); params is OpenSSL's valid array.
        let Some(c) = (unsafe { ctx(c) }) else { return 0 };
        // SAFETY: params is OpenSSL's valid END-terminated array.
        unsafe {
            let name = match c.digest {
                Some(Digest::Sha1) => c"SHA1",
                Some(Digest::Sha224) => c"SHA2-224",
                Some(Digest::Sha256) => c"SHA2-256",
                Some(Digest::Sha384) => c"SHA2-384",
                Some(Digest::Sha512) => c"SHA2-512",
                None => c"",
            };
            // Without an AlgorithmIdentifier (RSA-PSS, no digest) the answer
            // is empty (return_size 0), which ASN1_item_sign_ctx reports as
            // "digest and key type not supported"; left unmodified, it would
            // try to parse its uninitialised buffer.
            let aid = algorithm_id(c.kind, c.pad, c.digest).unwrap_or(&[]);
            (params::set_utf8(params, ossl::OSSL_SIGNATURE_PARAM_DIGEST, name)
                && params::set_int(params, ossl::OSSL_SIGNATURE_PARAM_PAD_MODE, c.pad)
                && params::set_octets(params, ossl::OSSL_SIGNATURE_PARAM_ALGORITHM_ID, aid)) as c_int
        }
    })
}

static GETTABLE: ParamList<4> = ParamList([
    def(ossl::OSSL_SIGNATURE_PARAM_DIGEST, ossl::OSSL_PARAM_UTF8_STRING),
    def(ossl::OSSL_SIGNATURE_PARAM_PAD_MODE, ossl::OSSL_PARAM_INTEGER),
    def(ossl::OSSL_SIGNATURE_PARAM_ALGORITHM_ID, ossl::OSSL_PARAM_OCTET_STRING),
    end(),
]);

unsafe extern "C" fn gettable_ctx_params(_c: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
    GETTABLE.as_ptr()
}

macro_rules! signature_table {
    ($newctx:expr) => {
        [
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_NEWCTX, $newctx, ossl::OSSL_FUNC_signature_newctx_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_FREECTX, freectx, ossl::OSSL_FUNC_signature_freectx_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_DUPCTX, dupctx, ossl::OSSL_FUNC_signature_dupctx_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_SIGN_INIT, sign_init, ossl::OSSL_FUNC_signature_sign_init_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_SIGN, sign, ossl::OSSL_FUNC_signature_sign_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, digest_sign_init, ossl::OSSL_FUNC_signature_digest_sign_init_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, digest_sign_update, ossl::OSSL_FUNC_signature_digest_sign_update_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, digest_sign_final, ossl::OSSL_FUNC_signature_digest_sign_final_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_DIGEST_SIGN, digest_sign, ossl::OSSL_FUNC_signature_digest_sign_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, set_ctx_params, ossl::OSSL_FUNC_signature_set_ctx_params_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, settable_ctx_params, ossl::OSSL_FUNC_signature_settable_ctx_params_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, get_ctx_params, ossl::OSSL_FUNC_signature_get_ctx_params_fn),
            dispatch!(ossl::OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, gettable_ctx_params, ossl::OSSL_FUNC_signature_gettable_ctx_params_fn),
            DISPATCH_END,
        ]
    };
}

pub static RSA_SIGNATURE: [ossl::OSSL_DISPATCH; 14] = signature_table!(rsa_newctx);
pub static ECDSA_SIGNATURE: [ossl::OSSL_DISPATCH; 14] = signature_table!(ec_newctx);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_encodes_with_sign_padding_and_minimal_ints() {
        let mut rs = vec![0u8; 64];
        rs[0] = 0x80; // r high bit: needs a 00 pad
        rs[63] = 0x05; // s = 5
        let der = ecdsa_der(&rs, 32).unwrap();
        assert_eq!(&der[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(der[4], 0x00);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x05]);
        assert!(ecdsa_der(&rs, 31).is_none());
    }

    const DIGESTS: [Digest; 5] = [Digest::Sha1, Digest::Sha224, Digest::Sha256, Digest::Sha384, Digest::Sha512];

    /// What OpenSSL's default provider answers for OSSL_SIGNATURE_PARAM_ALGORITHM_ID
    /// after EVP_DigestSignInit with `md` and an ordinary (file) key.
    fn default_provider_aid(key: &openssl::pkey::PKeyRef<openssl::pkey::Private>, md: openssl::hash::MessageDigest) -> Vec<u8> {
        let mut buf = [0u8; 128];
        // SAFETY: a fresh EVP_MD_CTX freed here; pctx belongs to it; the
        // param array points at `buf`, which outlives the call; the OSSL_PARAM
        // cast is between two declarations of the same C struct. A `&PKeyRef`
        // is the EVP_PKEY pointer itself (foreign-types' `as_ptr` is this cast;
        // the trait is not reachable without that crate as a dependency).
        unsafe {
            let pkey = key as *const openssl::pkey::PKeyRef<openssl::pkey::Private> as *mut openssl_sys::EVP_PKEY;
            let mctx = openssl_sys::EVP_MD_CTX_new();
            assert!(!mctx.is_null());
            let mut pctx = ptr::null_mut();
            assert_eq!(openssl_sys::EVP_DigestSignInit(mctx, &mut pctx, md.as_ptr(), ptr::null_mut(), pkey), 1);
            let mut params = [
                ossl::OSSL_PARAM_construct_octet_string(ossl::OSSL_SIGNATURE_PARAM_ALGORITHM_ID.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()),
                ossl::OSSL_PARAM_construct_end(),
            ];
            let ok = openssl_sys::EVP_PKEY_CTX_get_params(pctx, params.as_mut_ptr().cast());
            let n = params[0].return_size;
            openssl_sys::EVP_MD_CTX_free(mctx);
            assert_eq!(ok, 1);
            buf[..n].to_vec()
        }
    }

    fn md_of(d: Digest) -> openssl::hash::MessageDigest {
        use openssl::hash::MessageDigest as M;
        match d {
            Digest::Sha1 => M::sha1(),
            Digest::Sha224 => M::sha224(),
            Digest::Sha256 => M::sha256(),
            Digest::Sha384 => M::sha384(),
            Digest::Sha512 => M::sha512(),
        }
    }

    #[test]
    fn algorithm_ids_match_openssls_default_provider() {
        let rsa = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(1024).unwrap()).unwrap();
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let ec = openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
        for d in DIGESTS {
            let want = default_provider_aid(&rsa, md_of(d));
            assert_eq!(algorithm_id(Kind::Rsa, PAD_PKCS1, Some(d)), Some(&want[..]), "RSA {d:?}");
            let want = default_provider_aid(&ec, md_of(d));
            assert_eq!(algorithm_id(Kind::Ec, PAD_PKCS1, Some(d)), Some(&want[..]), "ECDSA {d:?}");
        }
        assert_eq!(algorithm_id(Kind::Rsa, PAD_PSS, Some(Digest::Sha256)), None);
        assert_eq!(algorithm_id(Kind::Rsa, PAD_PKCS1, None), None);
        assert_eq!(algorithm_id(Kind::Ec, PAD_PKCS1, None), None);
    }

    #[test]
    fn algorithm_ids_are_the_expected_der() {
        // `openssl asn1parse -inform DER` of these shows SEQUENCE { OBJECT
        // sha256WithRSAEncryption, NULL } and SEQUENCE { OBJECT ecdsa-with-SHA384 }.
        assert_eq!(
            algorithm_id(Kind::Rsa, PAD_PKCS1, Some(Digest::Sha256)).unwrap(),
            b"\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b\x05\x00"
        );
        assert_eq!(algorithm_id(Kind::Ec, PAD_PKCS1, Some(Digest::Sha384)).unwrap(), b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x03");
        for d in DIGESTS {
            let (rsa_name, ec_name) = match d {
                Digest::Sha1 => ("sha1WithRSAEncryption", "ecdsa-with-SHA1"),
                Digest::Sha224 => ("sha224WithRSAEncryption", "ecdsa-with-SHA224"),
                Digest::Sha256 => ("sha256WithRSAEncryption", "ecdsa-with-SHA256"),
                Digest::Sha384 => ("sha384WithRSAEncryption", "ecdsa-with-SHA384"),
                Digest::Sha512 => ("sha512WithRSAEncryption", "ecdsa-with-SHA512"),
            };
            // SEQUENCE { OBJECT IDENTIFIER <oid> [, NULL] }
            let der = |name: &str, null: bool| {
                let oid = openssl::asn1::Asn1Object::from_str(name).unwrap();
                let oid = oid.as_slice();
                let mut body = vec![0x06, oid.len() as u8];
                body.extend_from_slice(oid);
                if null {
                    body.extend_from_slice(&[0x05, 0x00]);
                }
                let mut out = vec![0x30, body.len() as u8];
                out.extend(body);
                out
            };
            assert_eq!(algorithm_id(Kind::Rsa, PAD_PKCS1, Some(d)).unwrap(), der(rsa_name, true), "{d:?}");
            assert_eq!(algorithm_id(Kind::Ec, PAD_PKCS1, Some(d)).unwrap(), der(ec_name, false), "{d:?}");
        }
    }

    /// get_ctx_params as OpenSSL calls it: the AID for PKCS#1 and ECDSA, an
    /// empty answer for PSS, and the list names the parameter.
    #[test]
    fn get_ctx_params_answers_the_algorithm_id() {
        let ask = |c: &mut SigCtx| -> (c_int, Vec<u8>) {
            let mut buf = [0u8; 128];
            // SAFETY: the array points at `buf`, which outlives the call;
            // `c` is a live SigCtx as get_ctx_params expects.
            unsafe {
                let mut params = [
                    ossl::OSSL_PARAM_construct_octet_string(
                        ossl::OSSL_SIGNATURE_PARAM_ALGORITHM_ID.as_ptr().cast(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ),
                    ossl::OSSL_PARAM_construct_end(),
                ];
                let ok = get_ctx_params((c as *mut SigCtx).cast(), params.as_mut_ptr());
                let n = params[0].return_size;
                (ok, buf[..n.min(buf.len())].to_vec())
            }
        };
        let mut c = SigCtx::new(Kind::Rsa);
        c.digest = Some(Digest::Sha256);
        assert_eq!(ask(&mut c), (1, algorithm_id(Kind::Rsa, PAD_PKCS1, Some(Digest::Sha256)).unwrap().to_vec()));
        c.pad = PAD_PSS;
        assert_eq!(ask(&mut c), (1, vec![]));
        let mut c = SigCtx::new(Kind::Ec);
        c.digest = Some(Digest::Sha512);
        assert_eq!(ask(&mut c), (1, algorithm_id(Kind::Ec, PAD_PKCS1, Some(Digest::Sha512)).unwrap().to_vec()));
        // SAFETY: the static list is END-terminated; locate only reads it,
        // and the entry found is read in place.
        let listed = unsafe { params::locate(GETTABLE.as_ptr() as *mut OSSL_PARAM, ossl::OSSL_SIGNATURE_PARAM_ALGORITHM_ID).map(|p| (*p).data_type) };
        assert_eq!(listed, Some(ossl::OSSL_PARAM_OCTET_STRING));
    }
}
