//! What a private key made by `generate` or `import` may do, and the
//! attributes that keep it that way.
//!
//! - It signs. It decrypts only when asked (`--usage sign,decrypt`): TLS
//!   needs a decrypting key only for TLS 1.2 RSA key exchange (ciphers like
//!   AES128-GCM-SHA256, no forward secrecy), and a key that decrypts is one
//!   more oracle (Bleichenbacher) on the network path. ECDHE and TLS 1.3
//!   only sign. EC keys never decrypt.
//! - CKA_MODIFIABLE and CKA_COPYABLE are false where the token accepts them,
//!   so neither the PIN holder nor a later tool can turn on CKA_DECRYPT or
//!   derive, or copy the key (C_CopyObject) into one with weaker
//!   attributes. CKA_SENSITIVE true and CKA_EXTRACTABLE false are set by the
//!   callers and are one-way by the standard anyway.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::Attribute;

use super::tool::{fail, Code, Res};
use crate::pkcs11::token::ck_error_text;

/// `--usage`: what the private key may do besides signing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CKA_DECRYPT on the private key (CKA_ENCRYPT on the public key).
    pub decrypt: bool,
}

impl Usage {
    /// `--usage sign` (the default) or `--usage sign,decrypt`.
    pub fn parse(s: Option<&str>) -> Res<Usage> {
        let Some(s) = s else { return Ok(Usage::default()) };
        let mut parts: Vec<&str> = s.split(',').map(str::trim).collect();
        parts.sort_unstable();
        match parts.as_slice() {
            ["sign"] => Ok(Usage { decrypt: false }),
            ["decrypt", "sign"] => Ok(Usage { decrypt: true }),
            _ => Err(fail(Code::Usage, format!("--usage {s}: use sign (the default) or sign,decrypt (decrypt only for TLS 1.2 RSA key exchange)"))),
        }
    }

    /// Refuses decrypt for a key that is not RSA.
    pub fn check_for(self, is_rsa: bool) -> Res<()> {
        if self.decrypt && !is_rsa {
            return Err(fail(
                Code::Usage,
                "--usage sign,decrypt: EC keys never decrypt (ECDHE key exchange only needs a signature); use --usage sign",
            ));
        }
        Ok(())
    }

    /// "sign" or "sign, decrypt", for the tool's output.
    pub fn describe(self) -> &'static str {
        if self.decrypt {
            "sign, decrypt"
        } else {
            "sign"
        }
    }
}

/// Which of CKA_MODIFIABLE=false and CKA_COPYABLE=false a new private key
/// got: a token may refuse either (SoftHSM2 2.6 refuses CKA_MODIFIABLE in
/// a C_UnwrapKey template).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frozen {
    pub unmodifiable: bool,
    pub uncopyable: bool,
}

impl Frozen {
    pub const FULLY: Frozen = Frozen { unmodifiable: true, uncopyable: true };

    /// The attributes to append to a template. CKA_MODIFIABLE comes last:
    /// SoftHSM2 2.6 applies a C_UnwrapKey template in order and refuses
    /// every attribute after CKA_MODIFIABLE=false (CKR_ATTRIBUTE_READ_ONLY).
    fn attributes(self) -> Vec<Attribute> {
        let mut v = Vec::with_capacity(2);
        if self.uncopyable {
            v.push(Attribute::Copyable(false));
        }
        if self.unmodifiable {
            v.push(Attribute::Modifiable(false));
        }
        v
    }

    /// "not modifiable, not copyable", or what is missing, for the output.
    pub fn describe(self) -> String {
        let m = if self.unmodifiable { "not modifiable" } else { "MODIFIABLE (the token refused CKA_MODIFIABLE=false)" };
        let c = if self.uncopyable { "not copyable" } else { "COPYABLE (the token refused CKA_COPYABLE=false)" };
        format!("{m}, {c}")
    }
}

/// Errors with which a token says "not like this" to a template, rather
/// than "something broke".
pub fn is_refusal(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::TemplateInconsistent
                | RvError::TemplateIncomplete
                | RvError::AttributeValueInvalid
                | RvError::AttributeTypeInvalid
                | RvError::AttributeReadOnly
                | RvError::FunctionNotSupported
                | RvError::ActionProhibited,
            _
        )
    )
}

/// Runs `make` with the attributes to add to the private key template:
/// CKA_MODIFIABLE=false and CKA_COPYABLE=false; while the token refuses
/// the template, with each alone, then with neither (and a warning naming
/// `what`). Returns the result and what the key got; an error that is not
/// a refusal, or the last one, is returned as is. (`make` builds the
/// template itself, so one holding key material is never copied here.)
pub fn make_frozen<T>(what: &str, mut make: impl FnMut(&[Attribute]) -> Result<T, CkError>) -> Result<(T, Frozen), CkError> {
    const TRIES: [Frozen; 4] = [
        Frozen::FULLY,
        Frozen { unmodifiable: true, uncopyable: false },
        Frozen { unmodifiable: false, uncopyable: true },
        Frozen { unmodifiable: false, uncopyable: false },
    ];
    let mut refusal = None;
    for f in TRIES {
        match make(&f.attributes()) {
            Ok(v) => {
                if let Some(e) = refusal {
                    log::warn!(
                        "HSM00710: the token refused CKA_MODIFIABLE=false and CKA_COPYABLE=false for {what} ({}); it is {}{}",
                        ck_error_text(&e),
                        f.describe(),
                        if f.unmodifiable { "" } else { ": its attributes (e.g. CKA_DECRYPT) can still be changed by whoever has the PIN" }
                    );
                }
                return Ok((v, f));
            }
            Err(e) if is_refusal(&e) && f != TRIES[3] => {
                refusal.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last try returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_sign_unless_decrypt_is_asked_for_and_ec_never_decrypts() {
        assert_eq!(Usage::parse(None).unwrap(), Usage { decrypt: false });
        assert_eq!(Usage::parse(Some("sign")).unwrap(), Usage { decrypt: false });
        assert_eq!(Usage::parse(Some("sign,decrypt")).unwrap(), Usage { decrypt: true });
        assert_eq!(Usage::parse(Some("decrypt, sign")).unwrap(), Usage { decrypt: true });
        for bad in ["", "decrypt", "sign,derive", "sign,sign", "sign,decrypt,unwrap"] {
            assert_eq!(Usage::parse(Some(bad)).unwrap_err().code, Code::Usage, "{bad}");
        }
        Usage { decrypt: true }.check_for(true).unwrap();
        Usage { decrypt: false }.check_for(false).unwrap();
        let f = Usage { decrypt: true }.check_for(false).unwrap_err();
        assert!(f.code == Code::Usage && f.msg.contains("EC keys never decrypt"), "{}", f.msg);
    }

    #[test]
    fn a_refused_template_is_retried_with_less_and_other_errors_are_not() {
        let refused = || CkError::Pkcs11(RvError::AttributeReadOnly, cryptoki::context::Function::UnwrapKey);
        // A token that refuses CKA_MODIFIABLE only (SoftHSM2's C_UnwrapKey).
        let mut seen = Vec::new();
        let r = make_frozen("k", |extra| {
            seen.push(extra.to_vec());
            if extra.contains(&Attribute::Modifiable(false)) {
                Err(refused())
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), (7, Frozen { unmodifiable: false, uncopyable: true }));
        assert_eq!(seen.len(), 3);
        // One that refuses both: the key is made plain.
        let mut calls = 0;
        let r = make_frozen("k", |extra| {
            calls += 1;
            if extra.is_empty() {
                Ok(())
            } else {
                Err(refused())
            }
        });
        assert_eq!(r.unwrap().1, Frozen { unmodifiable: false, uncopyable: false });
        assert_eq!(calls, 4);
        // A refusal of everything comes back as the error; a device error at once.
        let mut calls = 0;
        assert!(make_frozen("k", |_| -> Result<(), CkError> {
            calls += 1;
            Err(refused())
        })
        .is_err());
        assert_eq!(calls, 4);
        let mut calls = 0;
        let r = make_frozen("k", |_| -> Result<(), CkError> {
            calls += 1;
            Err(CkError::Pkcs11(RvError::DeviceError, cryptoki::context::Function::GenerateKeyPair))
        });
        assert!(r.is_err() && calls == 1);
        assert_eq!(make_frozen("k", |extra| Ok::<usize, CkError>(extra.len())).unwrap(), (2, Frozen::FULLY));
        assert_eq!(Frozen::FULLY.describe(), "not modifiable, not copyable");
    }
}
