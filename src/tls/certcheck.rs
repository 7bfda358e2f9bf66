//! Does a token key belong to a certificate? Compares the token's public
//! key with the certificate's and names both by SHA-256 fingerprint of the
//! SubjectPublicKeyInfo (what `openssl pkey -pubin -outform DER | sha256sum`
//! prints), so an operator can tell which key is where.

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

use openssl_sys as sys;

use crate::ffi::ossl;
use crate::pkcs11::token::PublicKey;
use crate::tls::digest::{Digest, Hasher};
use crate::tls::key::Public;

/// Owned EVP_PKEY, freed on drop.
pub(crate) struct Pkey(*mut sys::EVP_PKEY);

// SAFETY: an EVP_PKEY is reference-counted and, once built, only read
// (OpenSSL 3 allows any number of threads to use one key at the same time,
// each with its own EVP_PKEY_CTX); the one reference owned here is freed
// once, on drop.
unsafe impl Send for Pkey {}
// SAFETY: see Send.
unsafe impl Sync for Pkey {}

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { sys::EVP_PKEY_free(self.0) }
    }
}

impl Pkey {
    /// The EVP_PKEY, owned by `self`.
    pub(crate) fn as_ptr(&self) -> *mut sys::EVP_PKEY {
        self.0
    }

    fn fingerprint(&self) -> String {
        // SAFETY: two-pass i2d into a buffer of the size OpenSSL reports.
        let der = unsafe {
            let n = sys::i2d_PUBKEY(self.0, ptr::null_mut());
            if n <= 0 {
                return "(unencodable)".into();
            }
            let mut buf = vec![0u8; n as usize];
            let mut p = buf.as_mut_ptr();
            sys::i2d_PUBKEY(self.0, &mut p);
            buf
        };
        let d = Hasher::oneshot(Digest::Sha256, &der).unwrap_or_default();
        format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

fn cert_key(path: &str) -> Result<Pkey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read certificate {path}: {e}"))?;
    // SAFETY: a read-only memory BIO over `pem`, freed here; the X509 is
    // freed after taking its own reference to the public key.
    unsafe {
        let bio = sys::BIO_new_mem_buf(pem.as_ptr().cast(), pem.len() as c_int);
        if bio.is_null() {
            return Err("out of memory".into());
        }
        let x = sys::PEM_read_bio_X509(bio, ptr::null_mut(), None, ptr::null_mut());
        sys::BIO_free_all(bio);
        sys::ERR_clear_error();
        if x.is_null() {
            return Err(format!("{path} holds no PEM certificate"));
        }
        let k = sys::X509_get_pubkey(x);
        sys::X509_free(x);
        if k.is_null() {
            return Err(format!("the certificate in {path} has a public key OpenSSL cannot read"));
        }
        Ok(Pkey(k))
    }
}

/// The token key's public half as an ordinary (default provider) key.
pub(crate) fn token_key(public: &Public) -> Result<Pkey, String> {
    // SAFETY: builder, parameter array and context are created and freed
    // here; the cast is between two declarations of the same C struct.
    unsafe {
        let bld = ossl::OSSL_PARAM_BLD_new();
        let mut bns = Vec::new();
        let (name, ok): (&CStr, bool) = match public {
            Public::Rsa { n, e } => (
                c"RSA",
                [(ossl::OSSL_PKEY_PARAM_RSA_N, n), (ossl::OSSL_PKEY_PARAM_RSA_E, e)].iter().all(|(k, v)| {
                    let bn = sys::BN_bin2bn(v.as_ptr(), v.len() as c_int, ptr::null_mut());
                    bns.push(bn);
                    !bn.is_null() && ossl::OSSL_PARAM_BLD_push_BN(bld, k.as_ptr() as *const c_char, bn.cast()) == 1
                }),
            ),
            Public::Ec { curve, point } => (
                c"EC",
                ossl::OSSL_PARAM_BLD_push_utf8_string(bld, ossl::OSSL_PKEY_PARAM_GROUP_NAME.as_ptr() as *const c_char, curve.group.as_ptr(), 0) == 1
                    && ossl::OSSL_PARAM_BLD_push_octet_string(
                        bld,
                        ossl::OSSL_PKEY_PARAM_PUB_KEY.as_ptr() as *const c_char,
                        point.as_ptr().cast(),
                        point.len(),
                    ) == 1,
            ),
        };
        let params = if ok { ossl::OSSL_PARAM_BLD_to_param(bld) } else { ptr::null_mut() };
        ossl::OSSL_PARAM_BLD_free(bld);
        for bn in bns {
            sys::BN_free(bn);
        }
        if params.is_null() {
            return Err("cannot express the token's public key for OpenSSL".into());
        }
        let ctx = sys::EVP_PKEY_CTX_new_from_name(ptr::null_mut(), name.as_ptr(), c"provider=default".as_ptr());
        let mut pk: *mut sys::EVP_PKEY = ptr::null_mut();
        let ok = !ctx.is_null()
            && sys::EVP_PKEY_fromdata_init(ctx) == 1
            && sys::EVP_PKEY_fromdata(
                ctx,
                &mut pk,
                (ossl::OSSL_KEYMGMT_SELECT_ALL_PARAMETERS | ossl::OSSL_KEYMGMT_SELECT_PUBLIC_KEY) as c_int,
                params.cast(),
            ) == 1;
        sys::EVP_PKEY_CTX_free(ctx);
        ossl::OSSL_PARAM_free(params);
        sys::ERR_clear_error();
        if !ok || pk.is_null() {
            return Err("OpenSSL rejected the token's public key".into());
        }
        Ok(Pkey(pk))
    }
}

/// SHA-256 fingerprint of the token key's SubjectPublicKeyInfo.
pub fn token_fingerprint(public: &PublicKey) -> Result<String, String> {
    Ok(token_key(&Public::from_token(public)?)?.fingerprint())
}

/// Why a certificate and a token key do not go together.
#[derive(Debug, PartialEq, Eq)]
pub enum CertCheckError {
    /// The certificate carries another public key (both named by
    /// fingerprint).
    Mismatch { cert: String, cert_key: String, token_key: String },
    /// The certificate or the token's public key could not be read.
    Unreadable(String),
}

impl std::fmt::Display for CertCheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertCheckError::Mismatch { cert, cert_key, token_key } => write!(
                f,
                "the certificate {cert} does not belong to this key: certificate public key {cert_key}, token key {token_key}; \
                 use the certificate issued for the token key (or the key the certificate was issued for)"
            ),
            CertCheckError::Unreadable(t) => f.write_str(t),
        }
    }
}

impl std::error::Error for CertCheckError {}

/// Ok when the certificate in `cert_path` carries the token key `public`:
/// the one check of a key against its certificate, for startup, configtest
/// and the key tool.
pub fn check(cert_path: &str, public: &PublicKey) -> Result<(), CertCheckError> {
    let cert = cert_key(cert_path).map_err(CertCheckError::Unreadable)?;
    let token = Public::from_token(public).and_then(|p| token_key(&p)).map_err(CertCheckError::Unreadable)?;
    // SAFETY: two valid keys.
    if unsafe { sys::EVP_PKEY_eq(cert.0, token.0) } == 1 {
        return Ok(());
    }
    // SAFETY: clear whatever EVP_PKEY_eq left on the error queue.
    unsafe { sys::ERR_clear_error() };
    Err(CertCheckError::Mismatch { cert: cert_path.to_string(), cert_key: cert.fingerprint(), token_key: token.fingerprint() })
}
