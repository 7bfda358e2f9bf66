//! The control channel between httpd's parent and its key service: a
//! socket pair made at the fork, which only these two processes hold
//! (children close the parent's end in child_init). Over it the parent has
//! the service find each configured key while mod_ssl loads keys, so that
//! the service's one login serves both the startup check and the
//! handshakes; the parent itself never opens the token.
//!
//! Frames as in [`super::proto`], bodies up to [`MAX_CONTROL`] bytes.
//!
//! Parent to service, `op u8 | ...`:
//! * 1, find: `slot u32 | uri` — find the key and number it `slot`
//! * 2, seal: `count u32 | last u8` — the configuration has `count` keys,
//!   slots 0..count; with `last` the service closes the channel after its
//!   answer (only the first of httpd's two startup passes keeps it, for
//!   the second pass to take the service over)
//!
//! Service to parent, `status u8 | ...`:
//! * 0, found: the key's facts, then `n u16 | n texts` (warnings)
//! * 1, not found: `denied u8 | text`
//! * 2, sealed

use super::proto::{put_bytes, ProtoError, Reader};
use crate::pkcs11::token::{KeyFacts, PremasterMech, Protection, PublicKey};

/// Largest control body: facts of an RSA-8192 key and their warnings.
pub const MAX_CONTROL: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    Find { slot: u32, uri: String },
    Seal { count: u32, last: bool },
}

#[derive(Debug, PartialEq, Eq)]
pub enum ControlAnswer {
    Found { facts: Box<KeyFacts>, premaster: Option<PremasterMech>, warnings: Vec<String> },
    NotFound { denied: bool, text: String },
    Sealed,
}

fn text(r: &mut Reader) -> Result<String, ProtoError> {
    String::from_utf8(r.bytes()?.to_vec()).map_err(|_| ProtoError::UnusedField)
}

fn flag(r: &mut Reader) -> Result<bool, ProtoError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ProtoError::UnusedField),
    }
}

fn put_flag(out: &mut Vec<u8>, b: bool) {
    out.push(b as u8);
}

/// None, false, true as 0, 1, 2.
fn put_tristate(out: &mut Vec<u8>, v: Option<bool>) {
    out.push(v.map(|b| b as u8 + 1).unwrap_or(0));
}

fn tristate(r: &mut Reader) -> Result<Option<bool>, ProtoError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(false)),
        2 => Ok(Some(true)),
        _ => Err(ProtoError::UnusedField),
    }
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Control::Find { slot, uri } => {
                b.push(1);
                b.extend_from_slice(&slot.to_be_bytes());
                put_bytes(&mut b, uri.as_bytes());
            }
            Control::Seal { count, last } => {
                b.push(2);
                b.extend_from_slice(&count.to_be_bytes());
                put_flag(&mut b, *last);
            }
        }
        b
    }

    pub fn decode(body: &[u8]) -> Result<Control, ProtoError> {
        let mut r = Reader(body);
        let c = match r.u8()? {
            1 => Control::Find { slot: r.u32()?, uri: text(&mut r)? },
            2 => Control::Seal { count: r.u32()?, last: flag(&mut r)? },
            other => return Err(ProtoError::UnknownOp(other)),
        };
        r.end()?;
        Ok(c)
    }
}

impl ControlAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            ControlAnswer::Found { facts: f, premaster, warnings } => {
                b.push(0);
                for s in [&f.uri_text, &f.token_serial, &f.token_label] {
                    put_bytes(&mut b, s.as_bytes());
                }
                put_bytes(&mut b, &f.id);
                put_flag(&mut b, f.label.is_some());
                put_bytes(&mut b, f.label.as_deref().unwrap_or("").as_bytes());
                match &f.public {
                    PublicKey::Rsa { n, e } => {
                        b.push(1);
                        put_bytes(&mut b, n);
                        put_bytes(&mut b, e);
                    }
                    PublicKey::Ec { params, point } => {
                        b.push(2);
                        put_bytes(&mut b, params);
                        put_bytes(&mut b, point);
                    }
                }
                put_flag(&mut b, f.can_sign);
                put_flag(&mut b, f.can_decrypt);
                let p = &f.protection;
                for v in [p.sensitive, p.extractable, p.always_sensitive, p.never_extractable] {
                    put_tristate(&mut b, v);
                }
                b.push(match premaster {
                    None => 0,
                    Some(PremasterMech::Raw) => 1,
                    Some(PremasterMech::Pkcs1) => 2,
                });
                b.extend_from_slice(&(warnings.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for w in warnings.iter().take(u16::MAX as usize) {
                    put_bytes(&mut b, w.as_bytes());
                }
            }
            ControlAnswer::NotFound { denied, text } => {
                b.push(1);
                put_flag(&mut b, *denied);
                put_bytes(&mut b, text.as_bytes());
            }
            ControlAnswer::Sealed => b.push(2),
        }
        b
    }

    pub fn decode(body: &[u8]) -> Result<ControlAnswer, ProtoError> {
        if body.len() > MAX_CONTROL {
            return Err(ProtoError::TooLong(body.len(), MAX_CONTROL));
        }
        let mut r = Reader(body);
        let a = match r.u8()? {
            0 => {
                let (uri_text, token_serial, token_label) = (text(&mut r)?, text(&mut r)?, text(&mut r)?);
                let id = r.bytes()?.to_vec();
                let has_label = flag(&mut r)?;
                let label = text(&mut r)?;
                if !has_label && !label.is_empty() {
                    return Err(ProtoError::UnusedField);
                }
                let public = match r.u8()? {
                    1 => PublicKey::Rsa { n: r.bytes()?.to_vec(), e: r.bytes()?.to_vec() },
                    2 => PublicKey::Ec { params: r.bytes()?.to_vec(), point: r.bytes()?.to_vec() },
                    other => return Err(ProtoError::UnknownScheme(other)),
                };
                let (can_sign, can_decrypt) = (flag(&mut r)?, flag(&mut r)?);
                let protection = Protection {
                    sensitive: tristate(&mut r)?,
                    extractable: tristate(&mut r)?,
                    always_sensitive: tristate(&mut r)?,
                    never_extractable: tristate(&mut r)?,
                };
                let premaster = match r.u8()? {
                    0 => None,
                    1 => Some(PremasterMech::Raw),
                    2 => Some(PremasterMech::Pkcs1),
                    _ => return Err(ProtoError::UnusedField),
                };
                let n = r.u16()?;
                let warnings = (0..n).map(|_| text(&mut r)).collect::<Result<Vec<_>, _>>()?;
                let facts = KeyFacts {
                    uri_text,
                    token_serial,
                    token_label,
                    id,
                    label: has_label.then_some(label),
                    public,
                    can_sign,
                    can_decrypt,
                    protection,
                };
                ControlAnswer::Found { facts: Box::new(facts), premaster, warnings }
            }
            1 => ControlAnswer::NotFound { denied: flag(&mut r)?, text: text(&mut r)? },
            2 => ControlAnswer::Sealed,
            other => return Err(ProtoError::UnknownStatus(other)),
        };
        r.end()?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Vec<KeyFacts> {
        let rsa = KeyFacts {
            uri_text: "pkcs11:token=t;object=web".into(),
            token_serial: "0123".into(),
            token_label: "t".into(),
            id: vec![1, 2],
            label: Some("web".into()),
            public: PublicKey::Rsa { n: vec![0xc5; 1025], e: vec![1, 0, 1] },
            can_sign: true,
            can_decrypt: true,
            protection: Protection { sensitive: Some(true), extractable: Some(false), always_sensitive: None, never_extractable: Some(true) },
        };
        let ec = KeyFacts {
            label: None,
            id: vec![],
            public: PublicKey::Ec { params: vec![6, 8, 42], point: vec![4; 97] },
            can_decrypt: false,
            protection: Protection::default(),
            ..rsa.clone()
        };
        let empty_label = KeyFacts { label: Some(String::new()), ..rsa.clone() };
        vec![rsa, ec, empty_label]
    }

    fn answers() -> Vec<ControlAnswer> {
        let premasters = [Some(PremasterMech::Raw), None, Some(PremasterMech::Pkcs1)];
        let mut v: Vec<ControlAnswer> = facts()
            .into_iter()
            .zip(premasters)
            .map(|(f, premaster)| ControlAnswer::Found { facts: Box::new(f), premaster, warnings: vec!["no PSS".into(), "é".into()] })
            .collect();
        v.push(ControlAnswer::NotFound { denied: true, text: "login refused".into() });
        v.push(ControlAnswer::NotFound { denied: false, text: "x".repeat(4000) });
        v.push(ControlAnswer::Sealed);
        v
    }

    #[test]
    fn every_message_comes_back_as_it_was_sent() {
        for c in [
            Control::Find { slot: 7, uri: "pkcs11:object=a%20b".into() },
            Control::Seal { count: 3, last: true },
            Control::Seal { count: 0, last: false },
        ] {
            assert_eq!(Control::decode(&c.encode()), Ok(c));
        }
        for a in answers() {
            assert_eq!(ControlAnswer::decode(&a.encode()), Ok(a));
        }
    }

    #[test]
    fn every_cut_or_extended_message_is_refused() {
        let bodies: Vec<Vec<u8>> = answers().iter().map(|a| a.encode()).collect();
        for b in &bodies {
            for cut in 0..b.len() {
                assert!(ControlAnswer::decode(&b[..cut]).is_err(), "a cut answer was read: {cut} of {} bytes", b.len());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(ControlAnswer::decode(&longer), Err(ProtoError::TrailingBytes(1)));
        }
        let find = Control::Find { slot: 1, uri: "pkcs11:object=k".into() }.encode();
        for cut in 0..find.len() {
            assert!(Control::decode(&find[..cut]).is_err());
        }
        assert_eq!(Control::decode(&[9]), Err(ProtoError::UnknownOp(9)));
        assert_eq!(ControlAnswer::decode(&[9]), Err(ProtoError::UnknownStatus(9)));
        assert!(ControlAnswer::decode(&vec![0; MAX_CONTROL + 1]).is_err());
    }

    #[test]
    fn flipped_bits_never_panic_and_what_decodes_encodes_back_the_same() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for a in answers() {
            let body = a.encode();
            for _ in 0..2000 {
                let mut b = body.clone();
                let i = (next() as usize) % b.len();
                b[i] ^= 1 << (next() % 8);
                if let Ok(d) = ControlAnswer::decode(&b) {
                    assert_eq!(d.encode(), b, "two encodings of one answer");
                }
            }
        }
    }
}
