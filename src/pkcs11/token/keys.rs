//! Finding a configured key on the token: its attributes, public half
//! and the mechanisms TLS needs of it.

use std::sync::Arc;

use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::pkcs11::uri::{hex, KeyUri, TokenSelector};

use super::session::TokenState;
use super::*;

impl Hsm {
    /// Finds the private key a URI names and reads its public half. Used by
    /// the parent process while mod_ssl loads keys.
    pub fn resolve(&self, uri_text: &str, uri: &KeyUri) -> Result<KeyRef, OpError> {
        let tok = self.token(&uri.token)?;
        let session = tok.pool.take(&self.ctx, tok.slot)?;
        let result = self.resolve_on(&tok, &session, uri_text, uri);
        tok.pool.give_back(session);
        result
    }

    fn resolve_on(&self, tok: &TokenState, s: &Session, uri_text: &str, uri: &KeyUri) -> Result<KeyRef, OpError> {
        let setup = OpError::Setup;
        let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(l) = &uri.object {
            tmpl.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            tmpl.push(Attribute::Id(id.clone()));
        }
        let found = s.find_objects(&tmpl).map_err(|e| setup(format!("searching token '{}': {}", tok.label, ck_error_text(&e))))?;
        let what = match (&uri.object, &uri.id) {
            (Some(l), Some(id)) => format!("label '{l}' and id {}", hex(id)),
            (Some(l), None) => format!("label '{l}'"),
            (None, Some(id)) => format!("id {}", hex(id)),
            (None, None) => "that name".to_string(),
        };
        let handle = match found.len() {
            1 => found[0],
            0 => {
                let others = self.describe_objects(s, ObjectClass::PRIVATE_KEY);
                let other_kinds = self.other_classes(s, uri);
                return Err(OpError::NoKey(format!(
                    "token '{}' has no private key with {what}{other_kinds}; private keys on the token: {}",
                    tok.label,
                    if others.is_empty() { "none".to_string() } else { others.join(", ") }
                )));
            }
            n => {
                let ids: Vec<String> = found
                    .iter()
                    .map(|h| match self.attribute(s, *h, AttributeType::Id) {
                        Ok(Some(id)) => hex(&id),
                        _ => "?".into(),
                    })
                    .collect();
                return Err(OpError::NoKey(format!(
                    "token '{}' has {n} private keys with {what} (ids {}); add id=%.. to the URI to pick one",
                    tok.label,
                    ids.join(", ")
                )));
            }
        };
        let key_type = self.key_type(s, handle).map_err(setup)?;
        let id = self.attribute(s, handle, AttributeType::Id).map_err(setup)?.unwrap_or_default();
        let label = self.attribute(s, handle, AttributeType::Label).map_err(setup)?.map(|v| String::from_utf8_lossy(&v).into_owned());
        let can_sign = self.flag(s, handle, AttributeType::Sign).map_err(setup)?;
        let can_decrypt = self.flag(s, handle, AttributeType::Decrypt).map_err(setup)?;
        let public = match key_type {
            Some(KeyType::RSA) => {
                let public = self.rsa_public(s, handle).map_err(setup)?;
                if matches!(&public, PublicKey::Rsa { n, e } if n.is_empty() || e.is_empty()) {
                    return Err(setup("the token does not reveal the RSA key's modulus and exponent".into()));
                }
                check_rsa_size(&public).map_err(OpError::NoKey)?;
                public
            }
            Some(KeyType::EC) => {
                let params = self
                    .attribute(s, handle, AttributeType::EcParams)
                    .map_err(setup)?
                    .ok_or_else(|| setup("the token does not reveal the EC key's curve (CKA_EC_PARAMS)".into()))?;
                let point = self.ec_point(s, handle, &id, label.as_deref()).map_err(setup)?.ok_or_else(|| {
                    setup(format!(
                        "no public key object with the same CKA_ID ({}) as the EC private key; \
                         store the public key on the token beside the private key",
                        hex(&id)
                    ))
                })?;
                PublicKey::Ec { params, point }
            }
            Some(other) => return Err(OpError::NoKey(format!("the key is of type {other}, which mod_hsm_ssl does not serve; {SUPPORTED}"))),
            None => return Err(setup("the token does not say what type the key is".into())),
        };
        let facts = KeyFacts {
            uri_text: uri_text.to_string(),
            token_serial: tok.serial.clone(),
            token_label: tok.label.clone(),
            id,
            label,
            public,
            can_sign,
            can_decrypt,
            protection: self.protection(s, handle).map_err(|e| setup(format!("reading the key's protection attributes: {e}")))?,
        };
        Ok(KeyRef::new(facts, None, self.binding.clone()))
    }

    /// The EC point of the private key, or of the EC public key object with
    /// its CKA_ID (or label); None if there is none. An error only when the
    /// token answers with something unusable (see `attribute`).
    fn ec_point(&self, s: &Session, priv_handle: ObjectHandle, id: &[u8], label: Option<&str>) -> Result<Option<Vec<u8>>, String> {
        // Some tokens keep CKA_EC_POINT on the private key too.
        let from_attrs = |h: ObjectHandle| -> Result<Option<Vec<u8>>, String> {
            Ok(self.attribute(s, h, AttributeType::EcPoint)?.and_then(|p| unwrap_octet_string(&p)))
        };
        if let Some(p) = from_attrs(priv_handle)? {
            return Ok(Some(p));
        }
        let mut tmpl = vec![Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::KeyType(KeyType::EC)];
        if !id.is_empty() {
            tmpl.push(Attribute::Id(id.to_vec()));
        } else if let Some(label) = label {
            tmpl.push(Attribute::Label(label.as_bytes().to_vec()));
        } else {
            return Ok(None);
        }
        match s.find_objects(&tmpl).unwrap_or_default().as_slice() {
            [h] => from_attrs(*h),
            _ => Ok(None),
        }
    }

    fn describe_objects(&self, s: &Session, class: ObjectClass) -> Vec<String> {
        let text = |h, ty| self.attribute(s, h, ty).ok().flatten().unwrap_or_default();
        s.find_objects(&[Attribute::Class(class)])
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                let l = String::from_utf8_lossy(&text(h, AttributeType::Label)).into_owned();
                format!("'{l}' (id {})", hex(&text(h, AttributeType::Id)))
            })
            .collect()
    }

    /// Attribute `ty` of object `h` read with a bounded buffer (see
    /// direct.rs): every attribute the module reads goes through here, so
    /// a token claiming a huge value costs an error, not the memory. (The
    /// key tool's own commands still read with cryptoki.)
    fn attribute(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<Option<Vec<u8>>, String> {
        Ok(self.direct.attribute(s, h, ty)?)
    }

    /// A CK_BBOOL attribute; false if the object has none.
    fn flag(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<bool, String> {
        Ok(self.flag_if_known(s, h, ty)?.unwrap_or(false))
    }

    /// A CK_BBOOL attribute; None if the object has none.
    fn flag_if_known(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<Option<bool>, String> {
        match self.attribute(s, h, ty)?.as_deref() {
            None => Ok(None),
            Some([b]) => Ok(Some(*b != 0)),
            Some(v) => Err(format!("the token returned {} bytes for {ty}, a CK_BBOOL of 1 byte (a token or library bug)", v.len())),
        }
    }

    /// CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE and
    /// CKA_NEVER_EXTRACTABLE of a private key, each None if the token does
    /// not know that attribute. A failed read is an error, not "nothing to
    /// say": the policy on these attributes must not be skipped by a token
    /// hiccup.
    fn protection(&self, s: &Session, h: ObjectHandle) -> Result<Protection, String> {
        Ok(Protection {
            sensitive: self.flag_if_known(s, h, AttributeType::Sensitive)?,
            extractable: self.flag_if_known(s, h, AttributeType::Extractable)?,
            always_sensitive: self.flag_if_known(s, h, AttributeType::AlwaysSensitive)?,
            never_extractable: self.flag_if_known(s, h, AttributeType::NeverExtractable)?,
        })
    }

    /// CKA_KEY_TYPE; None if the token does not say.
    fn key_type(&self, s: &Session, h: ObjectHandle) -> Result<Option<KeyType>, String> {
        let Some(v) = self.attribute(s, h, AttributeType::KeyType)? else { return Ok(None) };
        let raw: [u8; std::mem::size_of::<cryptoki_sys::CK_KEY_TYPE>()] = v
            .as_slice()
            .try_into()
            .map_err(|_| format!("the token returned {} bytes for CKA_KEY_TYPE, a CK_ULONG (a token or library bug)", v.len()))?;
        let raw = cryptoki_sys::CK_KEY_TYPE::from_ne_bytes(raw);
        KeyType::try_from(raw).map(Some).map_err(|_| format!("the key is of type {raw:#x}, which mod_hsm_ssl does not serve; {SUPPORTED}"))
    }

    /// CKA_MODULUS and CKA_PUBLIC_EXPONENT of an RSA key object (private or
    /// public), bounded like every attribute; empty when the token does not
    /// reveal them.
    fn rsa_public(&self, s: &Session, h: ObjectHandle) -> Result<PublicKey, String> {
        let n = self.attribute(s, h, AttributeType::Modulus)?.unwrap_or_default();
        let e = self.attribute(s, h, AttributeType::PublicExponent)?.unwrap_or_default();
        Ok(PublicKey::Rsa { n, e })
    }

    /// " (but a public key / certificate with that name exists)" when the
    /// URI names an object of another class.
    fn other_classes(&self, s: &Session, uri: &KeyUri) -> String {
        let mut kinds = Vec::new();
        for (class, name) in [(ObjectClass::PUBLIC_KEY, "a public key"), (ObjectClass::CERTIFICATE, "a certificate")] {
            let mut tmpl = vec![Attribute::Class(class)];
            if let Some(l) = &uri.object {
                tmpl.push(Attribute::Label(l.as_bytes().to_vec()));
            }
            if let Some(id) = &uri.id {
                tmpl.push(Attribute::Id(id.clone()));
            }
            if s.find_objects(&tmpl).map(|v| !v.is_empty()).unwrap_or(false) {
                kinds.push(name);
            }
        }
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" (only {} with that name: the private key is missing)", kinds.join(" and "))
        }
    }

    /// What the token of `key` says of mechanism `m`; None when the token
    /// does not list it (or will not describe it).
    pub fn mechanism_info(&self, key: &KeyRef, m: cryptoki::mechanism::MechanismType) -> Result<Option<cryptoki::mechanism::MechanismInfo>, String> {
        let (tok, list) = self.mechanisms(key)?;
        Ok(self.listed_info(&tok, &list, m))
    }

    fn listed_info(
        &self,
        tok: &TokenState,
        list: &[cryptoki::mechanism::MechanismType],
        m: cryptoki::mechanism::MechanismType,
    ) -> Option<cryptoki::mechanism::MechanismInfo> {
        list.contains(&m).then(|| self.ctx.get_mechanism_info(tok.slot, m).ok()).flatten()
    }

    /// The token of `key` (logged in) and the mechanisms it lists.
    fn mechanisms(&self, key: &KeyRef) -> Result<(Arc<TokenState>, Vec<cryptoki::mechanism::MechanismType>), String> {
        let sel = TokenSelector { serial: Some(key.token_serial.clone()), ..Default::default() };
        let tok = self.token(&sel).map_err(|e| e.to_string())?;
        let list = self.ctx.get_mechanism_list(tok.slot).map_err(|e| format!("cannot list the token's mechanisms: {}", ck_error_text(&e)))?;
        Ok((tok, list))
    }

    /// Checks that the token offers what `key` needs in TLS. Err: a need
    /// that is not met (the key would fail handshakes); Ok: warnings about
    /// modes that will not work.
    pub fn check_mechanisms(&self, key: &KeyRef) -> Result<Vec<String>, String> {
        use cryptoki::mechanism::MechanismType;
        let (tok, list) = self.mechanisms(key)?;
        let info = |m: MechanismType| self.listed_info(&tok, &list, m);
        let mut warnings = Vec::new();
        if !key.can_sign {
            return Err("the private key may not sign (CKA_SIGN is false); TLS needs it to sign handshakes".into());
        }
        match &key.public {
            PublicKey::Rsa { .. } => {
                match info(MechanismType::RSA_PKCS) {
                    Some(i) if i.sign() && i.decrypt() => {}
                    Some(_) => return Err("the token offers CKM_RSA_PKCS but not for both sign and decrypt; TLS needs both".into()),
                    None => return Err("the token does not offer CKM_RSA_PKCS, which TLS needs for RSA keys".into()),
                }
                if !info(MechanismType::RSA_PKCS_PSS).is_some_and(|i| i.sign()) {
                    warnings.push(
                        "the token does not offer CKM_RSA_PKCS_PSS: TLS 1.3 with this RSA key will fail, and TLS 1.2 clients that ask for RSA-PSS will fail; add an EC certificate or use a token with PSS"
                            .to_string(),
                    );
                }
                if !key.can_decrypt {
                    warnings.push(
                        "the private key may not decrypt (CKA_DECRYPT is false), so it cannot do TLS 1.2 RSA key exchange: \
                         mod_hsm_ssl removes those cipher suites (kRSA, e.g. AES128-GCM-SHA256) from this vhost; ECDHE and \
                         TLS 1.3 are unaffected; to offer them, use a key made with decrypt usage"
                            .to_string(),
                    );
                }
            }
            PublicKey::Ec { .. } => {
                if !info(MechanismType::ECDSA).is_some_and(|i| i.sign()) {
                    return Err("the token does not offer CKM_ECDSA, which TLS needs for EC keys".into());
                }
            }
        }
        Ok(warnings)
    }

    /// Chooses, once per key, how TLS 1.2 RSA key exchange decrypts with
    /// `key` (see [`PremasterMech`]) and records it in the key: raw RSA when
    /// the token offers CKM_RSA_X_509 for decryption, else CKM_RSA_PKCS.
    /// None for keys that do no RSA key exchange (EC, or no CKA_DECRYPT).
    pub fn choose_premaster_mech(&self, key: &KeyRef) -> Result<Option<PremasterMech>, String> {
        use cryptoki::mechanism::MechanismType;
        if !matches!(key.public, PublicKey::Rsa { .. }) || !key.can_decrypt {
            return Ok(None);
        }
        let (tok, list) = self.mechanisms(key)?;
        let raw =
            list.contains(&MechanismType::RSA_X_509) && self.ctx.get_mechanism_info(tok.slot, MechanismType::RSA_X_509).is_ok_and(|i| i.decrypt());
        let mech = match raw.then(|| self.raw_round_trip(key)) {
            None => PremasterMech::Pkcs1,
            Some(Ok(())) => PremasterMech::Raw,
            Some(Err(e)) => {
                log::warn!(
                    "HSM00460: key {}: the token lists CKM_RSA_X_509 for decryption but a trial with it failed ({e}); \
                     TLS 1.2 RSA key exchange uses CKM_RSA_PKCS, so the token checks the padding",
                    key.uri_text
                );
                PremasterMech::Pkcs1
            }
        };
        Ok(Some(*key.premaster.get_or_init(|| mech)))
    }

    /// Decrypts n - 1 raw with `key` and checks the answer: for any RSA key
    /// (n - 1)^d = n - 1 (mod n), as d is odd, so a token that really
    /// decrypts raw with this key returns it. Public values only. Some
    /// tokens list CKM_RSA_X_509 but refuse it for a key, or answer in a
    /// form the module does not expect: without this trial every RSA key
    /// exchange would fail at Finished, with nothing saying why.
    fn raw_round_trip(&self, key: &KeyRef) -> Result<(), String> {
        let PublicKey::Rsa { n, .. } = &key.public else { return Err("not an RSA key".into()) };
        let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
        let Some(last) = n.last().filter(|&&b| b & 1 == 1) else { return Err("the modulus is even or empty".into()) };
        let mut c = n.to_vec();
        *c.last_mut().expect("non-empty") = last - 1; // n is odd: no borrow
        let expect = c.clone();
        let got = self.run_here(key, move |me, s, h| me.direct.decrypt(s, &Mech::RsaX509.to_ck(), h, &c)).map_err(|e| e.to_string())?;
        let got = &got[got.iter().position(|&b| b != 0).unwrap_or(got.len())..];
        if got == expect.as_slice() {
            Ok(())
        } else {
            Err(format!("the token answered {} bytes that are not the expected value", got.len()))
        }
    }

    /// The handle of `key` in this process, found once and cached.
    pub(super) fn key_handle(&self, key: &KeyRef) -> Result<(Arc<TokenState>, ObjectHandle), OpError> {
        if let Some(v) = self.handles.lock().get(&key.ident) {
            return Ok(v.clone());
        }
        let sel = TokenSelector { serial: Some(key.token_serial.clone()), ..Default::default() };
        let tok = self.token(&sel)?;
        let session = tok.pool.take(&self.ctx, tok.slot)?;
        let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if !key.id.is_empty() {
            tmpl.push(Attribute::Id(key.id.clone()));
        }
        if let Some(l) = &key.label {
            tmpl.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        let found = session.find_objects(&tmpl).map_err(OpError::Token).and_then(|found| match found.as_slice() {
            [h] => self.same_public_half(&session, *h, key).map(|_| found),
            _ => Ok(found),
        });
        tok.pool.give_back(session);
        let found = found?;
        match found.as_slice() {
            [h] => {
                let v = (tok, *h);
                self.handles.lock().insert(key.ident.clone(), v.clone());
                Ok(v)
            }
            other => Err(OpError::Setup(format!("key {} is no longer on token '{}' ({} objects match)", key.uri_text, tok.label, other.len()))),
        }
    }

    /// Checks that the object found again for `key` has the public half
    /// checked at startup (against the certificate too): a key replaced
    /// on the token under the same label and CKA_ID is not used.
    fn same_public_half(&self, s: &Session, h: ObjectHandle, key: &KeyRef) -> Result<(), OpError> {
        let now = match &key.public {
            PublicKey::Rsa { .. } => self.rsa_public(s, h).map_err(OpError::Setup)?,
            PublicKey::Ec { params, .. } => {
                let point = self.ec_point(s, h, &key.id, key.label.as_deref()).map_err(OpError::Setup)?.unwrap_or_default();
                PublicKey::Ec { params: params.clone(), point }
            }
        };
        if now == key.public {
            return Ok(());
        }
        Err(OpError::Setup(format!(
            "the key on the token changed since startup: {} (token '{}', id {}) now has another public key than the \
             one checked against its certificate at startup; it is not used; reload httpd (apachectl graceful) so \
             that the new key is checked, with a certificate that belongs to it",
            key.uri_text,
            key.token_label,
            hex(&key.id)
        )))
    }
}

/// The keys the module serves, for error messages.
const SUPPORTED: &str = "supported: RSA of 2048 to 8192 bits, EC P-256, P-384, P-521";

/// RSA moduli the module serves, in bits: 2048 as the key tool's import,
/// 8192 as the largest output direct.rs makes room for.
pub const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

/// Refuses an RSA key of a size the module does not serve.
fn check_rsa_size(public: &PublicKey) -> Result<(), String> {
    let PublicKey::Rsa { n, .. } = public else { return Ok(()) };
    let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
    let bits = n.first().map_or(0, |&b| n.len() as u32 * 8 - b.leading_zeros());
    if RSA_BITS.contains(&bits) {
        return Ok(());
    }
    Err(format!("the RSA key has {bits} bits; mod_hsm_ssl serves RSA keys of {} to {} bits", RSA_BITS.start(), RSA_BITS.end()))
}

/// CKA_MODULUS and CKA_PUBLIC_EXPONENT of an RSA key object (private or
/// public); empty when the token does not reveal them. For the key tool:
/// cryptoki's read, whose buffers the token sizes (the module reads with
/// `Hsm::rsa_public`, bounded).
pub fn rsa_public(s: &Session, h: ObjectHandle) -> Result<PublicKey, CkError> {
    let (mut n, mut e) = (Vec::new(), Vec::new());
    for x in s.get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])? {
        match x {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    Ok(PublicKey::Rsa { n, e })
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point; some tokens store
/// the raw point. Returns the raw uncompressed point.
fn unwrap_octet_string(v: &[u8]) -> Option<Vec<u8>> {
    if v.first() == Some(&0x04) && v.len() > 2 {
        // Either a raw point (04 X Y, odd length) or an OCTET STRING tag.
        let (len, hdr) = match v[1] {
            l if l < 0x80 => (l as usize, 2),
            0x81 if v.len() > 3 => (v[2] as usize, 3),
            0x82 if v.len() > 4 => (((v[2] as usize) << 8) | v[3] as usize, 4),
            _ => (0, 0),
        };
        if hdr > 0 && hdr + len == v.len() && v.get(hdr) == Some(&0x04) {
            return Some(v[hdr..].to_vec());
        }
        if v.len() % 2 == 1 {
            return Some(v.to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_is_unwrapped_from_der_or_taken_raw() {
        let raw: Vec<u8> = std::iter::once(4u8).chain(1..=64).collect();
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&raw);
        assert_eq!(unwrap_octet_string(&der).unwrap(), raw);
        assert_eq!(unwrap_octet_string(&raw).unwrap(), raw);
        assert!(unwrap_octet_string(&[0x30, 0x01, 0x00]).is_none());
    }

    #[test]
    fn rsa_keys_of_2048_to_8192_bits_are_served_and_others_refused() {
        let rsa = |bytes: usize, top: u8| {
            let mut n = vec![0xff; bytes];
            n[0] = top;
            PublicKey::Rsa { n, e: vec![1, 0, 1] }
        };
        assert!(check_rsa_size(&rsa(256, 0x80)).is_ok());
        assert!(check_rsa_size(&rsa(1024, 0xc1)).is_ok());
        // A leading zero byte does not count.
        let mut padded = rsa(256, 0x80);
        if let PublicKey::Rsa { n, .. } = &mut padded {
            n.insert(0, 0);
        }
        assert!(check_rsa_size(&padded).is_ok());
        assert_eq!(check_rsa_size(&rsa(256, 0x7f)).unwrap_err(), "the RSA key has 2047 bits; mod_hsm_ssl serves RSA keys of 2048 to 8192 bits");
        assert!(check_rsa_size(&rsa(128, 0x80)).unwrap_err().contains("1024 bits"));
        assert!(check_rsa_size(&rsa(1025, 0x01)).unwrap_err().contains("8193 bits"));
        assert!(check_rsa_size(&PublicKey::Ec { params: vec![], point: vec![] }).is_ok());
    }
}
