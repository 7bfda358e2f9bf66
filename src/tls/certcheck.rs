//! Does a token key belong to a certificate? Compares the token's public
//! key with the certificate's and names both by SHA-256 fingerprint of the
//! SubjectPublicKeyInfo (what `openssl pkey -pubin -outform DER | sha256sum`
//! prints), so an operator can tell which key is where.

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

use foreign_types::ForeignType;
use openssl::pkey::{HasPublic, PKey, PKeyRef};
use openssl::x509::X509;
use openssl_sys as sys;

use crate::ffi::ossl;
use crate::pkcs11::token::PublicKey;
use crate::tls::key::Public;

/// SHA-256 fingerprint of a key's SubjectPublicKeyInfo.
fn fingerprint<T: HasPublic>(key: &PKeyRef<T>) -> String {
    match key.public_key_to_der() {
        Ok(der) => format!("sha256:{}", openssl::sha::sha256(&der).iter().map(|b| format!("{b:02x}")).collect::<String>()),
        Err(_) => "(unencodable)".into(),
    }
}

fn cert_key(path: &str) -> Result<PKey<openssl::pkey::Public>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read certificate {path}: {e}"))?;
    let x = X509::from_pem(&pem).map_err(|_| format!("{path} holds no PEM certificate"))?;
    x.public_key().map_err(|_| format!("the certificate in {path} has a public key OpenSSL cannot read"))
}

/// The token key's public half as an ordinary (default provider) key.
/// Built with OSSL_PARAMs and "provider=default", which the `openssl`
/// crate cannot express: with no property query OpenSSL could pick this
/// module's own RSA or EC key management for it.
pub(crate) fn token_key(public: &Public) -> Result<PKey<openssl::pkey::Public>, String> {
    // SAFETY: builder, parameter array and context are created and freed
    // here; the cast is between two declarations of the same C struct; the
    // new key's one reference goes to the PKey, which frees it.
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
        Ok(PKey::from_ptr(pk))
    }
}

/// SHA-256 fingerprint of the token key's SubjectPublicKeyInfo.
pub fn token_fingerprint(public: &PublicKey) -> Result<String, String> {
    Ok(fingerprint(&*token_key(&Public::from_token(public)?)?))
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
    if cert.public_eq(&token) {
        return Ok(());
    }
    Err(CertCheckError::Mismatch { cert: cert_path.to_string(), cert_key: fingerprint(&cert), token_key: fingerprint(&token) })
}
