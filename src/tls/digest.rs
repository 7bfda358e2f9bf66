//! The digests TLS signs with, their DigestInfo prefixes and their PKCS#11
//! names. Hashing happens here in OpenSSL; only the digest goes to the token.

use cryptoki::mechanism::rsa::PkcsMgfType;
use cryptoki::mechanism::MechanismType;
use openssl::hash::MessageDigest;
use openssl::md::{Md, MdRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    pub fn by_name(name: &str) -> Option<Digest> {
        let n = name.to_ascii_uppercase().replace(['-', '_'], "");
        Some(match n.as_str() {
            "SHA1" => Digest::Sha1,
            "SHA224" | "SHA2224" => Digest::Sha224,
            "SHA256" | "SHA2256" => Digest::Sha256,
            "SHA384" | "SHA2384" => Digest::Sha384,
            "SHA512" | "SHA2512" => Digest::Sha512,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Digest::Sha1 => 20,
            Digest::Sha224 => 28,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }

    /// The usual name, for messages: "SHA-256".
    pub fn name(self) -> &'static str {
        match self {
            Digest::Sha1 => "SHA-1",
            Digest::Sha224 => "SHA-224",
            Digest::Sha256 => "SHA-256",
            Digest::Sha384 => "SHA-384",
            Digest::Sha512 => "SHA-512",
        }
    }

    /// OpenSSL's digest, for hashing and for the signature check. The
    /// digests are fetched from whichever provider offers them (this
    /// module's offers none).
    pub(crate) fn md(self) -> &'static MdRef {
        match self {
            Digest::Sha1 => Md::sha1(),
            Digest::Sha224 => Md::sha224(),
            Digest::Sha256 => Md::sha256(),
            Digest::Sha384 => Md::sha384(),
            Digest::Sha512 => Md::sha512(),
        }
    }

    fn message_digest(self) -> MessageDigest {
        match self {
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Sha224 => MessageDigest::sha224(),
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }

    /// DER prefix of DigestInfo (RFC 8017 §9.2, note 1).
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Digest::Sha1 => &[0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14],
            Digest::Sha224 => &[0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c],
            Digest::Sha256 => &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20],
            Digest::Sha384 => &[0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30],
            Digest::Sha512 => &[0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40],
        }
    }

    pub fn mechanism(self) -> MechanismType {
        match self {
            Digest::Sha1 => MechanismType::SHA1,
            Digest::Sha224 => MechanismType::SHA224,
            Digest::Sha256 => MechanismType::SHA256,
            Digest::Sha384 => MechanismType::SHA384,
            Digest::Sha512 => MechanismType::SHA512,
        }
    }

    pub fn mgf1(self) -> PkcsMgfType {
        match self {
            Digest::Sha1 => PkcsMgfType::MGF1_SHA1,
            Digest::Sha224 => PkcsMgfType::MGF1_SHA224,
            Digest::Sha256 => PkcsMgfType::MGF1_SHA256,
            Digest::Sha384 => PkcsMgfType::MGF1_SHA384,
            Digest::Sha512 => PkcsMgfType::MGF1_SHA512,
        }
    }
}

/// An incremental hash (for DigestSignUpdate / Final).
#[derive(Clone)]
pub struct Hasher {
    inner: openssl::hash::Hasher,
    pub digest: Digest,
}

impl Hasher {
    pub fn new(digest: Digest) -> Option<Hasher> {
        Some(Hasher { inner: openssl::hash::Hasher::new(digest.message_digest()).ok()?, digest })
    }

    pub fn update(&mut self, data: &[u8]) -> bool {
        self.inner.update(data).is_ok()
    }

    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.inner.finish().ok().map(|d| d.to_vec())
    }

    pub fn try_clone(&self) -> Option<Hasher> {
        Some(self.clone())
    }

    pub fn oneshot(digest: Digest, data: &[u8]) -> Option<Vec<u8>> {
        openssl::hash::hash(digest.message_digest(), data).ok().map(|d| d.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_matches_the_standard_vector() {
        let d = Hasher::oneshot(Digest::Sha256, b"abc").unwrap();
        assert_eq!(d.iter().map(|b| format!("{b:02x}")).collect::<String>(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn names_map_to_digests_and_prefix_lengths_fit() {
        assert_eq!(Digest::by_name("SHA2-256"), Some(Digest::Sha256));
        assert_eq!(Digest::by_name("sha384"), Some(Digest::Sha384));
        assert_eq!(Digest::by_name("MD5-SHA1"), None);
        for d in [Digest::Sha1, Digest::Sha224, Digest::Sha256, Digest::Sha384, Digest::Sha512] {
            let p = d.digest_info_prefix();
            assert_eq!(p[p.len() - 1] as usize, d.size());
            assert_eq!(p[1] as usize + 2, p.len() + d.size());
        }
    }
}
