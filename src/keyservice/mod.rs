//! Private-key operations, wherever they run.
//!
//! With `HSMSSLKeyService On` (the default), one process per server (the key service,
//! [`service`]) alone loads the PKCS#11 library, logs in and holds the
//! sessions; children send each operation over a local socket
//! ([`client`], [`proto`]). Otherwise each child runs them itself
//! (`pkcs11::runtime`). The TLS code calls [`sign`] and [`premaster`] and
//! does not know which.
//!
//! [`admit`] is the one check of what an operation may ask of a key: the
//! service applies it to every request, and the in-process path to every
//! call, so both refuse the same things.

pub mod client;
pub mod control;
pub mod proto;
pub mod service;

use std::sync::Arc;

use crate::pkcs11::token::{KeyRef, Mech, OpError, PublicKey, TokenAnswer};
use crate::pkcs11::{policy, runtime, stats};
use proto::Scheme;

/// Why [`admit`] refused a request: what TLS never asks of this key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A premaster block of `len` bytes for a modulus of `modulus`.
    PremasterLength {
        len: usize,
        modulus: usize,
    },
    NoDecrypt,
    PremasterWithEc,
    NoSign,
    /// A digest of `len` bytes for the named digest.
    DigestLength {
        digest: &'static str,
        len: usize,
    },
    /// PKCS#1 without a digest name: only MD5+SHA-1's 36 bytes.
    RawPkcs1Length(usize),
    DigestInfoTooLong,
    SaltTooLong(u32),
    EcdsaDigestLength(usize),
    EcdsaWithRsa,
    RsaWithEc,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PremasterLength { len, modulus } => write!(f, "a premaster block of {len} bytes; the key's modulus has {modulus}"),
            Refusal::NoDecrypt => f.write_str("the key may not decrypt (CKA_DECRYPT is false)"),
            Refusal::PremasterWithEc => f.write_str("a premaster decrypt with an EC key"),
            Refusal::NoSign => f.write_str("the key may not sign (CKA_SIGN is false)"),
            Refusal::DigestLength { digest, len } => write!(f, "a {digest} digest of {len} bytes"),
            Refusal::RawPkcs1Length(len) => write!(f, "PKCS#1 data without a digest of {len} bytes (only the 36 of MD5+SHA-1)"),
            Refusal::DigestInfoTooLong => f.write_str("a DigestInfo too long for the key"),
            Refusal::SaltTooLong(salt) => write!(f, "a PSS salt of {salt} bytes, too long for the key"),
            Refusal::EcdsaDigestLength(len) => write!(f, "an ECDSA digest of {len} bytes"),
            Refusal::EcdsaWithRsa => f.write_str("an ECDSA signature with an RSA key"),
            Refusal::RsaWithEc => f.write_str("an RSA signature with an EC key"),
        }
    }
}

impl std::error::Error for Refusal {}

/// What a token operation will be, once [`admit`] accepted the request.
pub enum Admitted {
    Sign { mech: Mech, data: Vec<u8> },
    Premaster,
}

/// Bytes of an RSA modulus (its big-endian form without leading zeros).
fn modulus_len(n: &[u8]) -> usize {
    n.iter().position(|b| *b != 0).map(|i| n.len() - i).unwrap_or(0)
}

fn modulus_bits(n: &[u8]) -> usize {
    match n.iter().position(|b| *b != 0) {
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
        None => 0,
    }
}

/// Whether TLS may ask `key` for this operation, and the token mechanism
/// and data if so: a signature of a digest of the right size in a scheme
/// the key type has, or the decryption of exactly one modulus-sized block
/// with an RSA key that may decrypt. The error says what was wrong.
pub fn admit(key: &KeyRef, req: &proto::Request) -> Result<Admitted, Refusal> {
    match req {
        proto::Request::Sign { scheme, digest, .. } => admit_sign(key, *scheme, digest).map(|(mech, data)| Admitted::Sign { mech, data }),
        proto::Request::Premaster { ciphertext, .. } => admit_premaster(key, ciphertext.len()).map(|()| Admitted::Premaster),
    }
}

/// [`admit`] for a premaster block of `len` bytes.
fn admit_premaster(key: &KeyRef, len: usize) -> Result<(), Refusal> {
    match &key.public {
        PublicKey::Rsa { n, .. } if key.can_decrypt => {
            let k = modulus_len(n);
            if len != k {
                return Err(Refusal::PremasterLength { len, modulus: k });
            }
            Ok(())
        }
        PublicKey::Rsa { .. } => Err(Refusal::NoDecrypt),
        PublicKey::Ec { .. } => Err(Refusal::PremasterWithEc),
    }
}

/// [`admit`] for a signature: the token mechanism and the data it signs.
fn admit_sign(key: &KeyRef, scheme: Scheme, digest: &[u8]) -> Result<(Mech, Vec<u8>), Refusal> {
    if !key.can_sign {
        return Err(Refusal::NoSign);
    }
    match (&key.public, scheme) {
        (PublicKey::Rsa { n, .. }, Scheme::Pkcs1(md)) => {
            let tbs = match md {
                Some(md) if digest.len() == md.size() => [md.digest_info_prefix(), digest].concat(),
                Some(md) => return Err(Refusal::DigestLength { digest: md.name(), len: digest.len() }),
                // TLS 1.0 and 1.1: MD5 and SHA-1 side by side.
                None if digest.len() == 36 => digest.to_vec(),
                None => return Err(Refusal::RawPkcs1Length(digest.len())),
            };
            if tbs.len() + 11 > modulus_len(n) {
                return Err(Refusal::DigestInfoTooLong);
            }
            Ok((Mech::RsaPkcs, tbs))
        }
        (PublicKey::Rsa { n, .. }, Scheme::Pss { digest: md, mgf1, salt }) => {
            if digest.len() != md.size() {
                return Err(Refusal::DigestLength { digest: md.name(), len: digest.len() });
            }
            let em_len = (modulus_bits(n).saturating_sub(1)).div_ceil(8);
            if salt as usize + md.size() + 2 > em_len {
                return Err(Refusal::SaltTooLong(salt));
            }
            Ok((Mech::RsaPss { hash: md.mechanism(), mgf: mgf1.mgf1(), salt: salt as u64 }, digest.to_vec()))
        }
        (PublicKey::Ec { .. }, Scheme::Ecdsa) => {
            if ![20, 28, 32, 48, 64].contains(&digest.len()) {
                return Err(Refusal::EcdsaDigestLength(digest.len()));
            }
            Ok((Mech::Ecdsa, digest.to_vec()))
        }
        (PublicKey::Rsa { .. }, Scheme::Ecdsa) => Err(Refusal::EcdsaWithRsa),
        (PublicKey::Ec { .. }, _) => Err(Refusal::RsaWithEc),
    }
}

/// Signs in this process (a child without key service, or the service);
/// once more after what may be throttling (`policy::THROTTLE_PAUSE`).
pub fn sign_here(key: &Arc<KeyRef>, mech: Mech, data: &[u8]) -> Result<Vec<u8>, OpError> {
    let (k, t) = key.stats_slots();
    let started = std::time::Instant::now();
    let once = || runtime::with_hsm(&key.binding, |hsm| hsm.sign(key, mech, data.to_vec()));
    let r = match once() {
        Err(e) if policy::is_throttled(&e) => {
            stats::failure(t, &e);
            stats::event(t, stats::Event::Retry);
            std::thread::sleep(policy::THROTTLE_PAUSE);
            once()
        }
        r => r,
    };
    if let Err(e) = &r {
        stats::failure(t, e);
    }
    stats::operation(k, t, stats::Op::Sign, started.elapsed(), r.is_ok());
    r
}

/// Decrypts a TLS premaster block in this process with the mechanism the
/// startup chose for the key; see `runtime::decrypt_premaster` for why the
/// token's own answer comes back as `Ok`.
///
/// Counted as one decrypt whatever the token answered (the same stores
/// for every ciphertext); the token's error is counted by
/// [`after_premaster_error`].
pub fn premaster_here(key: &Arc<KeyRef>, ciphertext: &[u8]) -> Result<TokenAnswer, OpError> {
    let (k, t) = key.stats_slots();
    let started = std::time::Instant::now();
    let r = runtime::decrypt_premaster(key, key.premaster_mech().mech(), ciphertext);
    if let Err(e) = &r {
        // The ciphertext never reached the token (see decrypt_premaster).
        stats::failure(t, e);
    }
    stats::operation(k, t, stats::Op::Decrypt, started.elapsed(), r.is_ok());
    r
}

/// A signature of `digest` with `key` in `scheme`.
pub fn sign(key: &Arc<KeyRef>, scheme: Scheme, digest: &[u8]) -> Result<Vec<u8>, OpError> {
    if let Some(c) = client::active() {
        return c.sign(key, scheme, digest);
    }
    let (mech, data) = admit_sign(key, scheme, digest).map_err(|e| OpError::Setup(e.to_string()))?;
    sign_here(key, mech, &data)
}

/// The token's answer to a TLS premaster block. The caller treats every
/// answer alike (see `tls::cipher`), then calls [`after_premaster_error`]
/// with the error, if any.
pub fn premaster(key: &Arc<KeyRef>, ciphertext: &[u8]) -> Result<TokenAnswer, OpError> {
    if let Some(c) = client::active() {
        return c.premaster(key, ciphertext);
    }
    admit_premaster(key, ciphertext.len()).map_err(|e| OpError::Setup(e.to_string()))?;
    premaster_here(key, ciphertext)
}

/// After a premaster decrypt's token error: unless it is the token's
/// documented answer about the data, wake the probe of the process that
/// talks to the token (a child with a key service has nothing to wake:
/// the service wakes its own).
pub fn after_premaster_error(key: &Arc<KeyRef>, error: OpError) {
    if client::active().is_none() {
        stats::failure(key.stats_slots().1, &error);
        if !policy::is_data_error(&error) {
            runtime::wake_probe(key, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::digest::Digest;
    use proto::Request;

    fn rsa(bits: usize, sign: bool, decrypt: bool) -> KeyRef {
        let mut n = vec![0u8; bits / 8 + 1]; // a leading zero, as DER integers have
        n[1] = 0xc0;
        KeyRef::for_test(PublicKey::Rsa { n, e: vec![1, 0, 1] }, sign, decrypt)
    }

    fn ec() -> KeyRef {
        KeyRef::for_test(PublicKey::Ec { params: vec![6, 8], point: vec![4; 65] }, true, false)
    }

    fn sign(scheme: Scheme, len: usize) -> Request {
        Request::Sign { key: 0, scheme, digest: vec![0xab; len] }
    }

    #[test]
    fn what_tls_needs_is_admitted_with_the_mechanism_and_data_it_needs() {
        let k = rsa(2048, true, true);
        match admit(&k, &sign(Scheme::Pkcs1(Some(Digest::Sha256)), 32)).unwrap() {
            Admitted::Sign { mech: Mech::RsaPkcs, data } => {
                assert_eq!(&data[..19], Digest::Sha256.digest_info_prefix());
                assert_eq!(data.len(), 19 + 32);
            }
            _ => panic!("not a PKCS#1 signature"),
        }
        assert!(matches!(admit(&k, &sign(Scheme::Pkcs1(None), 36)), Ok(Admitted::Sign { .. })));
        let pss = Scheme::Pss { digest: Digest::Sha256, mgf1: Digest::Sha256, salt: 32 };
        assert!(matches!(admit(&k, &sign(pss, 32)), Ok(Admitted::Sign { mech: Mech::RsaPss { salt: 32, .. }, .. })));
        // The largest salt RSA-2048 with SHA-256 allows: 256 - 32 - 2.
        let max = Scheme::Pss { digest: Digest::Sha256, mgf1: Digest::Sha256, salt: 222 };
        assert!(admit(&k, &sign(max, 32)).is_ok());
        assert!(matches!(admit(&k, &Request::Premaster { key: 0, ciphertext: vec![1; 256] }), Ok(Admitted::Premaster)));
        assert!(matches!(admit(&ec(), &sign(Scheme::Ecdsa, 32)), Ok(Admitted::Sign { mech: Mech::Ecdsa, .. })));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let k = rsa(2048, true, true);
        let refused = |k: &KeyRef, r: Request| admit(k, &r).err().unwrap_or_else(|| panic!("admitted {r:?}")).to_string();
        assert!(refused(&k, sign(Scheme::Pkcs1(Some(Digest::Sha256)), 31)).contains("31 bytes"));
        assert!(refused(&k, sign(Scheme::Pkcs1(Some(Digest::Sha256)), 33)).contains("33 bytes"));
        assert!(refused(&k, sign(Scheme::Pkcs1(None), 35)).contains("35 bytes"));
        assert!(refused(&k, sign(Scheme::Pkcs1(None), 256)).contains("256 bytes"));
        let pss = |salt| Scheme::Pss { digest: Digest::Sha256, mgf1: Digest::Sha256, salt };
        assert!(refused(&k, sign(pss(32), 48)).contains("48 bytes"));
        assert!(refused(&k, sign(pss(223), 32)).contains("salt"));
        assert!(refused(&k, sign(Scheme::Ecdsa, 32)).contains("RSA key"));
        assert!(refused(&k, Request::Premaster { key: 0, ciphertext: vec![1; 255] }).contains("modulus has 256"));
        assert!(refused(&k, Request::Premaster { key: 0, ciphertext: vec![1; 512] }).contains("512 bytes"));
        assert!(refused(&rsa(2048, false, true), sign(Scheme::Pkcs1(Some(Digest::Sha256)), 32)).contains("CKA_SIGN"));
        assert!(refused(&rsa(2048, true, false), Request::Premaster { key: 0, ciphertext: vec![1; 256] }).contains("CKA_DECRYPT"));
        let e = ec();
        assert!(refused(&e, sign(Scheme::Ecdsa, 33)).contains("33 bytes"));
        assert!(refused(&e, sign(Scheme::Pkcs1(Some(Digest::Sha256)), 32)).contains("EC key"));
        assert!(refused(&e, Request::Premaster { key: 0, ciphertext: vec![1; 65] }).contains("EC key"));
    }
}
