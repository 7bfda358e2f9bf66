//! The digests TLS signs with, their DigestInfo prefixes and their PKCS#11
//! names. Hashing happens here in OpenSSL; only the digest goes to the token.

use std::ffi::{c_uint, CString};
use std::sync::OnceLock;

use cryptoki::mechanism::rsa::PkcsMgfType;
use cryptoki::mechanism::MechanismType;
use openssl_sys as sys;

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

    fn openssl_name(self) -> &'static str {
        match self {
            Digest::Sha1 => "SHA1",
            Digest::Sha224 => "SHA2-224",
            Digest::Sha256 => "SHA2-256",
            Digest::Sha384 => "SHA2-384",
            Digest::Sha512 => "SHA2-512",
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

    /// The fetched EVP_MD, once per process (the pointer lives as long as
    /// libcrypto, which is never unloaded).
    pub(crate) fn md(self) -> *const sys::EVP_MD {
        static MDS: [OnceLock<usize>; 5] = [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let cell = &MDS[self as usize];
        *cell.get_or_init(|| {
            let name = CString::new(self.openssl_name()).expect("static name");
            // SAFETY: plain fetch from the default library context with
            // static NUL-terminated strings; the result is kept for the
            // process's life.
            unsafe { sys::EVP_MD_fetch(std::ptr::null_mut(), name.as_ptr(), c"provider=default".as_ptr()) as usize }
        }) as *const sys::EVP_MD
    }
}

/// An incremental hash (for DigestSignUpdate / Final).
pub struct Hasher {
    ctx: *mut sys::EVP_MD_CTX,
    pub digest: Digest,
}

// SAFETY: an EVP_MD_CTX is plain memory owned by this struct; OpenSSL uses
// one provider signature context from one thread at a time.
unsafe impl Send for Hasher {}

impl Hasher {
    pub fn new(digest: Digest) -> Option<Hasher> {
        let md = digest.md();
        if md.is_null() {
            return None;
        }
        // SAFETY: a fresh context initialised with a fetched digest.
        unsafe {
            let ctx = sys::EVP_MD_CTX_new();
            if ctx.is_null() {
                return None;
            }
            if sys::EVP_DigestInit_ex(ctx, md, std::ptr::null_mut()) != 1 {
                sys::EVP_MD_CTX_free(ctx);
                return None;
            }
            Some(Hasher { ctx, digest })
        }
    }

    pub fn update(&mut self, data: &[u8]) -> bool {
        // SAFETY: ctx is initialised; data is a valid slice.
        unsafe { sys::EVP_DigestUpdate(self.ctx, data.as_ptr().cast(), data.len()) == 1 }
    }

    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 64];
        let mut len: c_uint = 0;
        // SAFETY: out has room for the largest digest (64 bytes).
        if unsafe { sys::EVP_DigestFinal_ex(self.ctx, out.as_mut_ptr(), &mut len) } != 1 {
            return None;
        }
        out.truncate(len as usize);
        Some(out)
    }

    pub fn try_clone(&self) -> Option<Hasher> {
        // SAFETY: copying one initialised context into a fresh one.
        unsafe {
            let ctx = sys::EVP_MD_CTX_new();
            if ctx.is_null() || sys::EVP_MD_CTX_copy_ex(ctx, self.ctx) != 1 {
                sys::EVP_MD_CTX_free(ctx);
                return None;
            }
            Some(Hasher { ctx, digest: self.digest })
        }
    }

    pub fn oneshot(digest: Digest, data: &[u8]) -> Option<Vec<u8>> {
        let mut h = Hasher::new(digest)?;
        if !h.update(data) {
            return None;
        }
        h.finish()
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        // SAFETY: ctx was allocated by EVP_MD_CTX_new and is freed once.
        unsafe { sys::EVP_MD_CTX_free(self.ctx) }
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
