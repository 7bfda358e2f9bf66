//! Every signature the token makes is verified here, with OpenSSL's default
//! provider and the key's public half, before it leaves the module.
//!
//! A token that returns a wrong signature is not only a failed handshake:
//! an RSA signature computed with the CRT and faulty in one half gives away
//! the private key to whoever receives it (Boneh-DeMillo-Lipton, Lenstra).
//! OpenSSL checks its own CRT results; a PKCS#11 token's answer reaches us
//! unchecked, so the module checks it: RSA PKCS#1 v1.5 over the DigestInfo,
//! RSA-PSS with the digest, MGF1 digest and salt length that were asked
//! for, ECDSA over the digest (the DER signature that would be sent).
//!
//! The verifying key is built once per token key (when mod_ssl or the key
//! tool gets its EVP_PKEY, see `provider::evp_pkey_for`) and shared by all
//! threads; each check only makes a short-lived EVP_PKEY_CTX.

use openssl::pkey::PKey;
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;

use crate::tls::certcheck::token_key;
use crate::tls::digest::Digest;
use crate::tls::key::Public;

/// What was signed, as the verifier must check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// RSA PKCS#1 v1.5. With a digest, `tbs` is the digest and OpenSSL
    /// builds the DigestInfo; without one, `tbs` is what the token padded.
    Pkcs1(Option<Digest>),
    /// RSA-PSS over a digest `md`, with MGF1 over `mgf1` and `salt` bytes
    /// of salt.
    Pss { md: Digest, mgf1: Digest, salt: usize },
    /// ECDSA over a digest; the signature is the DER ECDSA-Sig-Value.
    Ecdsa,
}

impl std::fmt::Display for Scheme {
    /// For log lines: "RSA-PSS (SHA-256, MGF1 SHA-256, salt 32)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheme::Pkcs1(Some(d)) => write!(f, "RSA PKCS#1 v1.5 ({})", d.name()),
            Scheme::Pkcs1(None) => f.write_str("RSA PKCS#1 v1.5"),
            Scheme::Pss { md, mgf1, salt } => write!(f, "RSA-PSS ({}, MGF1 {}, salt {salt})", md.name(), mgf1.name()),
            Scheme::Ecdsa => f.write_str("ECDSA"),
        }
    }
}

/// The public half of one token key, as an ordinary OpenSSL key that
/// verifies its signatures.
pub struct SigCheck {
    key: PKey<openssl::pkey::Public>,
}

impl SigCheck {
    /// Builds the verifying key from the public half read from the token.
    pub fn new(public: &Public) -> Result<SigCheck, String> {
        Ok(SigCheck { key: token_key(public)? })
    }

    /// Whether `sig` is a valid signature of `tbs` under `scheme`. Err when
    /// OpenSSL could not even run the check (the caller must then not send
    /// the signature either).
    pub fn verifies(&self, scheme: Scheme, tbs: &[u8], sig: &[u8]) -> Result<bool, String> {
        let setup = || -> Result<PkeyCtx<openssl::pkey::Public>, openssl::error::ErrorStack> {
            let mut ctx = PkeyCtx::new(&self.key)?;
            ctx.verify_init()?;
            match scheme {
                Scheme::Pkcs1(d) => {
                    ctx.set_rsa_padding(Padding::PKCS1)?;
                    if let Some(d) = d {
                        ctx.set_signature_md(d.md())?;
                    }
                }
                Scheme::Pss { md, mgf1, salt } => {
                    ctx.set_rsa_padding(Padding::PKCS1_PSS)?;
                    ctx.set_signature_md(md.md())?;
                    ctx.set_rsa_mgf1_md(mgf1.md())?;
                    let salt = i32::try_from(salt).map_err(|_| openssl::error::ErrorStack::get())?;
                    ctx.set_rsa_pss_saltlen(RsaPssSaltlen::custom(salt))?;
                }
                Scheme::Ecdsa => {}
            }
            Ok(ctx)
        };
        let mut ctx = setup().map_err(|_| format!("OpenSSL could not set up the check of an {scheme} signature"))?;
        // A signature that does not verify can leave its reason on the
        // error queue; `verify` takes it off (libssl must not find it
        // there later) and answers Err: the signature does not verify.
        Ok(ctx.verify(tbs, sig).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::key::CURVES;
    use openssl::pkey::{PKey, Private};
    use openssl::pkey_ctx::PkeyCtx;
    use openssl::rsa::Padding;

    fn rsa() -> (PKey<Private>, Public) {
        let r = openssl::rsa::Rsa::generate(2048).unwrap();
        let public = Public::Rsa { n: r.n().to_vec(), e: r.e().to_vec() };
        (PKey::from_rsa(r).unwrap(), public)
    }

    fn sign(k: &PKey<Private>, tbs: &[u8], setup: impl FnOnce(&mut PkeyCtx<Private>)) -> Vec<u8> {
        let mut ctx = PkeyCtx::new(k).unwrap();
        ctx.sign_init().unwrap();
        setup(&mut ctx);
        let mut out = Vec::new();
        ctx.sign_to_vec(tbs, &mut out).unwrap();
        out
    }

    /// Each accepted signature, then the same with one byte flipped.
    fn accepts_then_refuses_flipped(check: &SigCheck, scheme: Scheme, tbs: &[u8], mut sig: Vec<u8>) {
        assert_eq!(check.verifies(scheme, tbs, &sig), Ok(true), "{scheme:?}");
        let i = sig.len() / 2;
        sig[i] ^= 0x01;
        assert_eq!(check.verifies(scheme, tbs, &sig), Ok(false), "{scheme:?} with a flipped byte");
    }

    #[test]
    fn rsa_pkcs1_and_pss_signatures_verify_and_flipped_ones_do_not() {
        let (k, public) = rsa();
        let check = SigCheck::new(&public).unwrap();
        let digest = [0x5au8; 32];
        let pkcs1 = sign(&k, &digest, |c| {
            c.set_rsa_padding(Padding::PKCS1).unwrap();
            c.set_signature_md(openssl::md::Md::sha256()).unwrap();
        });
        accepts_then_refuses_flipped(&check, Scheme::Pkcs1(Some(Digest::Sha256)), &digest, pkcs1.clone());
        // The same signature for another digest, or under another scheme.
        assert_eq!(check.verifies(Scheme::Pkcs1(Some(Digest::Sha256)), &[0x5b; 32], &pkcs1), Ok(false));
        assert_eq!(check.verifies(Scheme::Pkcs1(Some(Digest::Sha384)), &[0x5a; 48], &pkcs1), Ok(false));

        // No digest: the DigestInfo (or any data) is what was padded.
        let mut di = Digest::Sha256.digest_info_prefix().to_vec();
        di.extend_from_slice(&digest);
        let raw = sign(&k, &di, |c| c.set_rsa_padding(Padding::PKCS1).unwrap());
        assert_eq!(raw, pkcs1, "PKCS#1 v1.5 is deterministic");
        accepts_then_refuses_flipped(&check, Scheme::Pkcs1(None), &di, raw);

        for (salt, openssl_salt) in [(32, openssl::sign::RsaPssSaltlen::DIGEST_LENGTH), (222, openssl::sign::RsaPssSaltlen::MAXIMUM_LENGTH)] {
            let pss = sign(&k, &digest, |c| {
                c.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
                c.set_signature_md(openssl::md::Md::sha256()).unwrap();
                c.set_rsa_pss_saltlen(openssl_salt).unwrap();
            });
            let scheme = Scheme::Pss { md: Digest::Sha256, mgf1: Digest::Sha256, salt };
            accepts_then_refuses_flipped(&check, scheme, &digest, pss.clone());
            let other_salt = Scheme::Pss { md: Digest::Sha256, mgf1: Digest::Sha256, salt: salt - 1 };
            assert_eq!(check.verifies(other_salt, &digest, &pss), Ok(false), "salt {salt} checked as {}", salt - 1);
            let other_mgf = Scheme::Pss { md: Digest::Sha256, mgf1: Digest::Sha1, salt };
            assert_eq!(check.verifies(other_mgf, &digest, &pss), Ok(false));
        }
    }

    #[test]
    fn ecdsa_signatures_verify_and_flipped_ones_do_not() {
        for curve in &CURVES {
            let group = openssl::ec::EcGroup::from_curve_name(match curve.bits {
                256 => openssl::nid::Nid::X9_62_PRIME256V1,
                384 => openssl::nid::Nid::SECP384R1,
                _ => openssl::nid::Nid::SECP521R1,
            })
            .unwrap();
            let ec = openssl::ec::EcKey::generate(&group).unwrap();
            let mut bn = openssl::bn::BigNumContext::new().unwrap();
            let point = ec.public_key().to_bytes(&group, openssl::ec::PointConversionForm::UNCOMPRESSED, &mut bn).unwrap();
            let check = SigCheck::new(&Public::Ec { curve, point }).unwrap();
            let k = PKey::from_ec_key(ec).unwrap();
            let digest = vec![0x42u8; 32];
            let sig = sign(&k, &digest, |_| {});
            accepts_then_refuses_flipped(&check, Scheme::Ecdsa, &digest, sig.clone());
            assert_eq!(check.verifies(Scheme::Ecdsa, &[0x43; 32], &sig), Ok(false), "{}", curve.bits);
        }
    }

    #[test]
    fn schemes_are_named_for_the_log() {
        let pss = Scheme::Pss { md: Digest::Sha384, mgf1: Digest::Sha256, salt: 48 };
        assert_eq!(pss.to_string(), "RSA-PSS (SHA-384, MGF1 SHA-256, salt 48)");
        assert_eq!(Scheme::Pkcs1(Some(Digest::Sha1)).to_string(), "RSA PKCS#1 v1.5 (SHA-1)");
        assert_eq!(Scheme::Pkcs1(None).to_string(), "RSA PKCS#1 v1.5");
        assert_eq!(Scheme::Ecdsa.to_string(), "ECDSA");
    }

    #[test]
    fn a_signature_of_another_key_does_not_verify() {
        let (k1, _) = rsa();
        let (_, public2) = rsa();
        let digest = [7u8; 32];
        let sig = sign(&k1, &digest, |c| {
            c.set_rsa_padding(Padding::PKCS1).unwrap();
            c.set_signature_md(openssl::md::Md::sha256()).unwrap();
        });
        let check = SigCheck::new(&public2).unwrap();
        assert_eq!(check.verifies(Scheme::Pkcs1(Some(Digest::Sha256)), &digest, &sig), Ok(false));
        // Garbage and empty signatures are refused, not errors.
        assert_eq!(check.verifies(Scheme::Pkcs1(Some(Digest::Sha256)), &digest, &[]), Ok(false));
        assert_eq!(check.verifies(Scheme::Pkcs1(Some(Digest::Sha256)), &digest, &[0xff; 300]), Ok(false));
    }
}
