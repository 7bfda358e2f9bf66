//! The protocol between httpd's children and the key service: one request,
//! one answer, each a frame of a 4-byte big-endian length and a body.
//!
//! A request names a key by the index the startup gave it (never by URI or
//! handle) and asks for one of the operations TLS needs: a signature over a
//! digest in a named scheme, or the decryption of one TLS premaster block.
//! Decoding checks only the form; whether the key allows the operation is
//! the service's check (`service::admit`).
//!
//! Request body: `op u8 | key u32 | ...`
//! * op 1, sign: `scheme u8 | digest u8 | mgf1 u8 | salt u32 | len u16 | digest bytes`
//! * op 2, premaster: `len u16 | ciphertext`
//!
//! Answer body: `status u8 | ...`
//! * 0, done: `len u16 | bytes` (a signature, or a premaster block)
//! * 1, the token's answer to a premaster decrypt was an error: `text`
//! * 2.., the operation failed before or at the token: `ms u32 | text`

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use crate::tls::digest::Digest;

/// Largest body either side accepts: an RSA-8192 block plus headers.
pub const MAX_BODY: usize = 1024 + 64;

/// Longest error text carried in an answer.
const MAX_TEXT: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// PKCS#1 v1.5 over a DigestInfo the service builds for `digest`; with
    /// no digest, the 36-byte MD5+SHA-1 of TLS 1.0 and 1.1.
    Pkcs1(Option<Digest>),
    Pss {
        digest: Digest,
        mgf1: Digest,
        salt: u32,
    },
    Ecdsa,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Sign { key: u32, scheme: Scheme, digest: Vec<u8> },
    Premaster { key: u32, ciphertext: Vec<u8> },
}

/// Why an operation failed, as the service tells a child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No session became free in `ms`.
    Busy(u32),
    /// The token did not answer in `ms`.
    Timeout(u32),
    /// The token or key cannot be reached now (login, lookup, library).
    Setup(String),
    /// The token refused the PIN.
    Denied(String),
    /// The token answered with an error.
    Token(String),
    /// The request was refused (not an operation this key allows).
    Refused(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Done(Zeroizing<Vec<u8>>),
    /// The token's error for a premaster decrypt: the child treats it as
    /// bad padding (the text is for the log only).
    PremasterError(String),
    Failed(Failure),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ProtoError {
    Truncated,
    /// A body of `.0` bytes where at most `.1` are allowed.
    TooLong(usize, usize),
    UnknownOp(u8),
    UnknownScheme(u8),
    UnknownDigest(u8),
    UnknownStatus(u8),
    TrailingBytes(usize),
    /// A field the scheme does not use is not zero.
    UnusedField,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Truncated => f.write_str("the message ends early"),
            ProtoError::TooLong(n, max) => write!(f, "a message of {n} bytes (at most {max})"),
            ProtoError::UnknownOp(b) => write!(f, "unknown operation {b}"),
            ProtoError::UnknownScheme(b) => write!(f, "unknown signature scheme {b}"),
            ProtoError::UnknownDigest(b) => write!(f, "unknown digest {b}"),
            ProtoError::UnknownStatus(b) => write!(f, "unknown answer status {b}"),
            ProtoError::TrailingBytes(n) => write!(f, "{n} bytes after the end of the message"),
            ProtoError::UnusedField => f.write_str("a field the signature scheme does not use is set"),
        }
    }
}

impl std::error::Error for ProtoError {}

const DIGESTS: [Digest; 5] = [Digest::Sha1, Digest::Sha224, Digest::Sha256, Digest::Sha384, Digest::Sha512];

fn digest_code(d: Option<Digest>) -> u8 {
    d.and_then(|d| DIGESTS.iter().position(|x| *x == d)).map(|i| i as u8 + 1).unwrap_or(0)
}

fn digest_from(b: u8) -> Result<Option<Digest>, ProtoError> {
    match b {
        0 => Ok(None),
        n => DIGESTS.get(n as usize - 1).copied().map(Some).ok_or(ProtoError::UnknownDigest(b)),
    }
}

fn required_digest(b: u8) -> Result<Digest, ProtoError> {
    digest_from(b)?.ok_or(ProtoError::UnknownDigest(b))
}

/// Reads fields from a body; every read checks the length.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(super) fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub(super) fn end(self) -> Result<(), ProtoError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(ProtoError::TrailingBytes(n)),
        }
    }
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&b[..b.len().min(u16::MAX as usize)]);
}

pub(super) fn put_text(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes(out, &s.as_bytes()[..end]);
}

impl Request {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::with_capacity(64));
        match self {
            Request::Sign { key, scheme, digest } => {
                b.push(1);
                b.extend_from_slice(&key.to_be_bytes());
                let (s, d, m, salt) = match *scheme {
                    Scheme::Pkcs1(d) => (1, digest_code(d), 0, 0),
                    Scheme::Pss { digest, mgf1, salt } => (2, digest_code(Some(digest)), digest_code(Some(mgf1)), salt),
                    Scheme::Ecdsa => (3, 0, 0, 0),
                };
                b.extend_from_slice(&[s, d, m]);
                b.extend_from_slice(&salt.to_be_bytes());
                put_bytes(&mut b, digest);
            }
            Request::Premaster { key, ciphertext } => {
                b.push(2);
                b.extend_from_slice(&key.to_be_bytes());
                put_bytes(&mut b, ciphertext);
            }
        }
        b
    }

    pub fn decode(body: &[u8]) -> Result<Request, ProtoError> {
        if body.len() > MAX_BODY {
            return Err(ProtoError::TooLong(body.len(), MAX_BODY));
        }
        let mut r = Reader(body);
        let op = r.u8()?;
        let key = r.u32()?;
        let req = match op {
            1 => {
                let (s, d, m, salt) = (r.u8()?, r.u8()?, r.u8()?, r.u32()?);
                // One encoding per request: what a scheme does not use is zero.
                let scheme = match s {
                    1 if m == 0 && salt == 0 => Scheme::Pkcs1(digest_from(d)?),
                    2 => Scheme::Pss { digest: required_digest(d)?, mgf1: required_digest(m)?, salt },
                    3 if d == 0 && m == 0 && salt == 0 => Scheme::Ecdsa,
                    1 | 3 => return Err(ProtoError::UnusedField),
                    other => return Err(ProtoError::UnknownScheme(other)),
                };
                Request::Sign { key, scheme, digest: r.bytes()?.to_vec() }
            }
            2 => Request::Premaster { key, ciphertext: r.bytes()?.to_vec() },
            other => return Err(ProtoError::UnknownOp(other)),
        };
        r.end()?;
        Ok(req)
    }
}

impl Answer {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::with_capacity(64));
        match self {
            Answer::Done(v) => {
                b.push(0);
                put_bytes(&mut b, v);
            }
            Answer::PremasterError(t) => {
                b.push(1);
                put_text(&mut b, t);
            }
            Answer::Failed(f) => {
                let (status, ms, text) = match f {
                    Failure::Busy(ms) => (2, *ms, ""),
                    Failure::Timeout(ms) => (3, *ms, ""),
                    Failure::Setup(t) => (4, 0, t.as_str()),
                    Failure::Denied(t) => (5, 0, t.as_str()),
                    Failure::Token(t) => (6, 0, t.as_str()),
                    Failure::Refused(t) => (7, 0, t.as_str()),
                };
                b.push(status);
                b.extend_from_slice(&ms.to_be_bytes());
                put_text(&mut b, text);
            }
        }
        b
    }

    pub fn decode(body: &[u8]) -> Result<Answer, ProtoError> {
        if body.len() > MAX_BODY {
            return Err(ProtoError::TooLong(body.len(), MAX_BODY));
        }
        let mut r = Reader(body);
        let status = r.u8()?;
        let text = |r: &mut Reader| -> Result<String, ProtoError> { Ok(String::from_utf8_lossy(r.bytes()?).into_owned()) };
        let a = match status {
            0 => Answer::Done(Zeroizing::new(r.bytes()?.to_vec())),
            1 => Answer::PremasterError(text(&mut r)?),
            2..=7 => {
                let ms = r.u32()?;
                let t = text(&mut r)?;
                Answer::Failed(match status {
                    2 => Failure::Busy(ms),
                    3 => Failure::Timeout(ms),
                    4 => Failure::Setup(t),
                    5 => Failure::Denied(t),
                    6 => Failure::Token(t),
                    _ => Failure::Refused(t),
                })
            }
            other => return Err(ProtoError::UnknownStatus(other)),
        };
        r.end()?;
        Ok(a)
    }
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let mut frame = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)
}

/// Reads one frame; a length over [`MAX_BODY`] is refused before anything
/// is allocated for it. `Ok(None)`: the peer closed before a new frame.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    read_frame_up_to(r, MAX_BODY)
}

/// [`read_frame`] with a bound of `max` bytes.
pub fn read_frame_up_to(r: &mut impl Read, max: usize) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, ProtoError::TooLong(n, max)));
    }
    let mut body = Zeroizing::new(vec![0u8; n]);
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Sign { key: 0, scheme: Scheme::Pkcs1(Some(Digest::Sha256)), digest: vec![7; 32] },
            Request::Sign { key: 3, scheme: Scheme::Pkcs1(None), digest: vec![1; 36] },
            Request::Sign { key: 1, scheme: Scheme::Pss { digest: Digest::Sha384, mgf1: Digest::Sha384, salt: 48 }, digest: vec![2; 48] },
            Request::Sign { key: u32::MAX, scheme: Scheme::Ecdsa, digest: vec![3; 64] },
            Request::Premaster { key: 2, ciphertext: vec![9; 1024] },
        ]
    }

    fn answers() -> Vec<Answer> {
        vec![
            Answer::Done(Zeroizing::new(vec![5; 512])),
            Answer::PremasterError("C_Decrypt returned CKR_ENCRYPTED_DATA_INVALID".into()),
            Answer::Failed(Failure::Busy(250)),
            Answer::Failed(Failure::Timeout(5000)),
            Answer::Failed(Failure::Setup("token gone".into())),
            Answer::Failed(Failure::Denied("PIN refused".into())),
            Answer::Failed(Failure::Token("C_Sign returned CKR_DEVICE_ERROR".into())),
            Answer::Failed(Failure::Refused("key 9 does not exist".into())),
        ]
    }

    #[test]
    fn every_request_and_answer_comes_back_as_it_was_sent() {
        for r in requests() {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        for a in answers() {
            assert_eq!(Answer::decode(&a.encode()), Ok(a));
        }
    }

    #[test]
    fn frames_round_trip_and_an_oversized_length_is_refused_unread() {
        let mut wire = Vec::new();
        for r in requests() {
            write_frame(&mut wire, &r.encode()).unwrap();
        }
        let mut rd = &wire[..];
        for r in requests() {
            let body = read_frame(&mut rd).unwrap().unwrap();
            assert_eq!(Request::decode(&body), Ok(r));
        }
        assert!(read_frame(&mut rd).unwrap().is_none(), "clean end of stream");

        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let e = read_frame(&mut &huge[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = read_frame(&mut &[0, 0][..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = read_frame(&mut &[0, 0, 0, 9, 1, 2][..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn malformed_requests_are_named_errors() {
        assert_eq!(Request::decode(&[]), Err(ProtoError::Truncated));
        assert_eq!(Request::decode(&[9, 0, 0, 0, 0]), Err(ProtoError::UnknownOp(9)));
        assert_eq!(Request::decode(&[1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]), Err(ProtoError::UnknownScheme(4)));
        assert_eq!(Request::decode(&[1, 0, 0, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0, 0]), Err(ProtoError::UnknownDigest(6)));
        // PSS needs a digest and an MGF1 digest.
        assert_eq!(Request::decode(&[1, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 0, 0, 0]), Err(ProtoError::UnknownDigest(0)));
        // A length beyond the body.
        assert_eq!(Request::decode(&[2, 0, 0, 0, 0, 0, 9, 1]), Err(ProtoError::Truncated));
        let mut extra = Request::Premaster { key: 0, ciphertext: vec![1; 4] }.encode().to_vec();
        extra.push(0);
        assert_eq!(Request::decode(&extra), Err(ProtoError::TrailingBytes(1)));
        assert_eq!(Request::decode(&vec![2; MAX_BODY + 1]), Err(ProtoError::TooLong(MAX_BODY + 1, MAX_BODY)));
    }

    #[test]
    fn random_and_mutated_bytes_never_panic_and_never_decode_to_something_else() {
        // A small deterministic generator: the test is the same on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid: Vec<Vec<u8>> = requests().iter().map(|r| r.encode().to_vec()).collect();
        for round in 0..20_000 {
            let body: Vec<u8> = if round % 2 == 0 {
                (0..(next() % 80) as usize).map(|_| next() as u8).collect()
            } else {
                let mut b = valid[(next() % valid.len() as u64) as usize].clone();
                let i = (next() % b.len() as u64) as usize;
                b[i] ^= 1 << (next() % 8);
                if next() % 4 == 0 {
                    b.truncate(i);
                }
                b
            };
            if let Ok(r) = Request::decode(&body) {
                // Whatever decodes, encodes back to the very same bytes.
                assert_eq!(r.encode().as_slice(), body.as_slice(), "round {round}");
            }
            let _ = Answer::decode(&body);
        }
    }

    #[test]
    fn long_error_texts_are_cut_at_a_character_boundary() {
        let t = "é".repeat(400);
        let Answer::Failed(Failure::Token(back)) = Answer::decode(&Answer::Failed(Failure::Token(t)).encode()).unwrap() else {
            panic!("wrong answer")
        };
        assert!(back.len() <= MAX_TEXT && back.chars().all(|c| c == 'é'), "{}", back.len());
    }
}
