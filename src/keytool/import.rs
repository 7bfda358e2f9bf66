//! Importing an existing PEM private key into the token.
//!
//! [`read_private_key_pem`] reads the key file (PKCS#1, PKCS#8, encrypted
//! PKCS#8, legacy encrypted PEM, SEC1) and accepts only the key types the
//! module serves: RSA of 2048 bits or more, EC on P-256, P-384 or P-521.
//!
//! [`import_key`] puts it on the token as a sensitive, non-extractable
//! private key (CKA_SENSITIVE true, CKA_EXTRACTABLE false; CKA_MODIFIABLE and
//! CKA_COPYABLE false where the token takes them; decrypt only on request,
//! see `policy`) plus the matching public key object:
//!
//! 1. `C_CreateObject` with the plaintext private key ([`ImportPath::Created`]).
//! 2. If the token refuses plaintext private keys (AWS CloudHSM wants private
//!    keys to come in wrapped), the key's PKCS#8 DER is wrapped locally with a fresh
//!    random AES-256 key (RFC 5649, AES key wrap with padding) and unwrapped
//!    into the token with `C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)`
//!    ([`ImportPath::Unwrapped`]). The AES key has to be in the token as a
//!    session key first: by `C_CreateObject` (CKA_TOKEN false, CKA_UNWRAP
//!    true), or, if the token refuses that too, by generating a session RSA
//!    key pair in the token, encrypting the AES key locally to its public
//!    key with RSA-OAEP and `C_UnwrapKey(CKM_RSA_PKCS_OAEP)`-ing it in.
//!
//!    Why not `C_GenerateKey` for the AES key: the token would then hold the
//!    only copy, and getting the PKCS#8 wrapped under it needs
//!    `C_Encrypt(CKM_AES_KEY_WRAP_PAD)` (`C_WrapKey` only wraps keys that
//!    already are objects in the token). SoftHSM2 2.6 offers CKM_AES_KEY_WRAP_PAD for wrap/unwrap only
//!    and unwraps nothing but AES key wrap and RSA PKCS#1/OAEP, so an in-token
//!    AES key can never carry external data there. AWS CloudHSM (Client SDK 5)
//!    lists AES key wrap, AES-GCM, RSA-AES and RSA-OAEP for wrap/unwrap and
//!    no AES key wrap among its encrypt mechanisms; its sample code unwraps
//!    with CKM_AES_KEY_WRAP_PAD (RFC 5649 there too) and with RSA-OAEP using
//!    SHA-256, which the RSA route offers first (their sample makes its RSA
//!    unwrapping pair token objects; a token that refuses a session pair
//!    makes the import fail with its error). CloudHSM's plain
//!    CKM_AES_KEY_WRAP is a non-standard PKCS#5-padded variant, which is why
//!    only the `_PAD` mechanism is used here.
//!
//! Every session object made on the way is destroyed again on all paths
//! (they would also vanish with the session). Every buffer that holds key
//! material (the file, the PEM block, CKA_* values, the PKCS#8 DER, the AES
//! key) is wiped when dropped. Nothing here logs or returns key material or
//! passphrases.

use std::path::Path;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use openssl::bn::{BigNum, BigNumContext};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::{CipherCtx, CipherCtxFlags};
use openssl::ec::{EcKey, PointConversionForm};
use openssl::error::ErrorStack;
use openssl::md::Md;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};
use zeroize::{Zeroize, Zeroizing};

use super::policy::{is_refusal, make_frozen, Frozen, Usage};
use crate::pkcs11::token::ck_error_text;

/// What the key types this tool accepts are, for error messages.
const SUPPORTED: &str = "supported are RSA (2048 bits or more) and EC on P-256, P-384 or P-521";

/// The PEM labels of the private key formats we read.
const PEM_LABELS: [&str; 4] = ["PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: u32 = 2048;

/// How the private key got into the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPath {
    /// `C_CreateObject` with the plaintext key.
    Created,
    /// The token refused plaintext private keys; the key was wrapped with a
    /// one-time AES key and `C_UnwrapKey`-ed in.
    Unwrapped,
}

/// Read a PEM private key: PKCS#1 (`BEGIN RSA PRIVATE KEY`), PKCS#8 (`BEGIN
/// PRIVATE KEY`), encrypted PKCS#8 (`BEGIN ENCRYPTED PRIVATE KEY`), legacy
/// encrypted PEM (`Proc-Type: 4,ENCRYPTED`) or SEC1 (`BEGIN EC PRIVATE KEY`;
/// an `EC PARAMETERS` block before it is skipped).
///
/// `passphrase` is called (once) only when the key is encrypted; its error
/// is returned as is. A wrong passphrase gives an error saying so. Only RSA
/// of at least 2048 bits and EC keys on P-256, P-384 and P-521 are accepted.
pub fn read_private_key_pem(path: &Path, passphrase: &mut dyn FnMut() -> Result<Zeroizing<String>, String>) -> Result<PKey<Private>, String> {
    let shown = path.display();
    let data = Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?);
    let block = private_key_block(&data).map_err(|e| format!("{shown}: {e}"))?;

    let mut asked = false;
    let mut passphrase_error: Option<String> = None;
    let parsed = PKey::private_key_from_pem_callback(&block, |buf| {
        // OpenSSL asks only for encrypted keys, and (with its passphrase
        // cache) at most once per read; the buffer it hands us is its own
        // and is cleansed by it afterwards.
        asked = true;
        let pass = match passphrase() {
            Ok(p) => p,
            Err(e) => {
                passphrase_error = Some(e);
                return Err(ErrorStack::get());
            }
        };
        let bytes = pass.as_bytes();
        if bytes.is_empty() {
            passphrase_error = Some("the key is encrypted and the passphrase given is empty".into());
            return Err(ErrorStack::get());
        }
        if bytes.len() > buf.len() {
            passphrase_error = Some(format!("the passphrase is too long (at most {} bytes)", buf.len()));
            return Err(ErrorStack::get());
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(bytes.len())
    });
    let pkey = match parsed {
        Ok(k) => k,
        Err(e) => {
            return Err(if let Some(msg) = passphrase_error {
                format!("{shown}: {msg}")
            } else if asked {
                format!("cannot decrypt the private key in {shown}: wrong passphrase")
            } else {
                format!("{shown}: not a readable private key ({})", openssl_reason(&e))
            })
        }
    };
    check_supported(&pkey).map_err(|e| format!("{shown}: {e}"))?;
    Ok(pkey)
}

/// The one private key PEM block of a file, BEGIN to END line, as bytes to
/// hand to OpenSSL. Refuses files with no or several private keys and
/// private key formats we do not read (DSA, OpenSSH, ...).
fn private_key_block(data: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let text = std::str::from_utf8(data)
        .map_err(|_| "not a PEM file (binary data; DER keys are not supported, convert with `openssl pkey -outform PEM`)".to_string())?;
    let mut found: Vec<(&str, usize)> = Vec::new();
    let mut unsupported: Option<&str> = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(label) = trimmed.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
            if PEM_LABELS.contains(&label) {
                found.push((label, pos));
            } else if label.ends_with("PRIVATE KEY") {
                unsupported.get_or_insert(label);
            }
        }
        pos += line.len();
    }
    let (label, start) = match (found.as_slice(), unsupported) {
        ([one], _) => *one,
        ([], Some(other)) => {
            return Err(format!(
                "unsupported key format \"BEGIN {other}\"; PEM formats read: PKCS#8 (BEGIN PRIVATE KEY, \
                 BEGIN ENCRYPTED PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY), SEC1 (BEGIN EC PRIVATE KEY); {SUPPORTED}"
            ))
        }
        ([], None) => {
            return Err("no PEM private key found (expected BEGIN PRIVATE KEY, BEGIN ENCRYPTED PRIVATE KEY, \
                        BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)"
                .to_string())
        }
        _ => return Err(format!("{} private keys in one file; give a file with exactly one", found.len())),
    };
    let end_marker = format!("-----END {label}-----");
    let end = text[start..]
        .find(&end_marker)
        .map(|i| start + i + end_marker.len())
        .ok_or_else(|| format!("the \"BEGIN {label}\" block has no END line"))?;
    let mut block = Zeroizing::new(Vec::with_capacity(end - start + 1));
    block.extend_from_slice(&data[start..end]);
    block.push(b'\n');
    Ok(block)
}

/// The first OpenSSL reason in an error stack, for messages.
fn openssl_reason(e: &ErrorStack) -> String {
    e.errors().iter().find_map(|err| err.reason().map(str::to_string)).unwrap_or_else(|| "unrecognized data".to_string())
}

/// What we need to know about a supported key.
enum KeyInfo {
    Rsa(Rsa<Private>),
    Ec {
        ec: EcKey<Private>,
        /// CKA_EC_PARAMS: the DER of the curve OID.
        params: &'static [u8],
        /// Bytes of the group order (the private value is padded to this).
        order_len: usize,
    },
}

/// DER OIDs of the supported curves (CKA_EC_PARAMS, namedCurve form).
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

fn check_supported(key: &PKeyRef<Private>) -> Result<(), String> {
    key_info(key).map(|_| ())
}

/// Refuse what the module cannot serve; name what is supported.
fn key_info(key: &PKeyRef<Private>) -> Result<KeyInfo, String> {
    match key.id() {
        Id::RSA => {
            let rsa = key.rsa().map_err(|e| format!("cannot read the RSA key ({})", openssl_reason(&e)))?;
            let bits = rsa.n().num_bits();
            if bits < MIN_RSA_BITS as i32 {
                return Err(format!("RSA key of {bits} bits is too small; {SUPPORTED}"));
            }
            if rsa.p().is_none() || rsa.q().is_none() || rsa.dmp1().is_none() || rsa.dmq1().is_none() || rsa.iqmp().is_none() {
                return Err("the RSA key lacks its CRT components (p, q, dP, dQ, qInv)".into());
            }
            if !rsa.check_key().unwrap_or(false) {
                return Err("the RSA key is inconsistent (its components do not match)".into());
            }
            Ok(KeyInfo::Rsa(rsa))
        }
        Id::EC => {
            let ec = key.ec_key().map_err(|e| format!("cannot read the EC key ({})", openssl_reason(&e)))?;
            let curve = ec.group().curve_name();
            let params = match curve {
                Some(Nid::X9_62_PRIME256V1) => P256_OID,
                Some(Nid::SECP384R1) => P384_OID,
                Some(Nid::SECP521R1) => P521_OID,
                Some(other) => {
                    let name = other.short_name().unwrap_or("an unnamed curve");
                    return Err(format!("EC key on curve {name} is not supported; {SUPPORTED}"));
                }
                None => return Err(format!("EC key with explicit curve parameters is not supported; {SUPPORTED}")),
            };
            if ec.check_key().is_err() {
                return Err("the EC key is inconsistent (public and private parts do not match)".into());
            }
            let order_len = (ec.group().order_bits() as usize).div_ceil(8);
            Ok(KeyInfo::Ec { ec, params, order_len })
        }
        other => Err(format!("unsupported key type {}; {SUPPORTED}", key_type_name(other))),
    }
}

fn key_type_name(id: Id) -> String {
    match id {
        Id::ED25519 => "Ed25519".into(),
        Id::ED448 => "Ed448".into(),
        Id::X25519 => "X25519".into(),
        Id::X448 => "X448".into(),
        Id::DSA => "DSA".into(),
        Id::DH => "DH".into(),
        Id::RSA_PSS => "RSA-PSS (a PSS-restricted RSA key)".into(),
        other => Nid::from_raw(other.as_raw()).short_name().map(str::to_string).unwrap_or_else(|_| format!("#{}", other.as_raw())),
    }
}

/// A CKA_* template some of whose values are key material: wiped on drop.
struct SecretTemplate(Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for attr in &mut self.0 {
            match attr {
                Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v)
                | Attribute::Value(v) => v.zeroize(),
                _ => {}
            }
        }
    }
}

/// A session object made on the way; destroyed when dropped.
struct TempObject<'a> {
    session: &'a Session,
    handle: ObjectHandle,
    what: &'static str,
}

impl Drop for TempObject<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.session.destroy_object(self.handle) {
            // A session object: it goes away with the session anyway.
            log::warn!("HSM00700: import: cannot destroy the temporary {}: {}", self.what, ck_error_text(&e));
        }
    }
}

/// The public half of `key` as the token stores it (for the tool's
/// report: key type and fingerprint).
pub fn public_of(key: &PKeyRef<Private>) -> Result<crate::pkcs11::token::PublicKey, String> {
    use crate::pkcs11::token::PublicKey;
    Ok(match key_info(key)? {
        KeyInfo::Rsa(rsa) => PublicKey::Rsa { n: rsa.n().to_vec(), e: rsa.e().to_vec() },
        KeyInfo::Ec { ec, params, .. } => {
            let mut ctx = BigNumContext::new().map_err(|e| openssl_reason(&e))?;
            let point = ec.public_key().to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx).map_err(|e| openssl_reason(&e))?;
            PublicKey::Ec { params: params.to_vec(), point }
        }
    })
}

/// What [`import_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub path: ImportPath,
    /// Which of CKA_MODIFIABLE and CKA_COPYABLE false the token took.
    pub frozen: Frozen,
}

/// Import `key` as a token private key (sensitive, not extractable, not
/// modifiable or copyable where the token allows, sign; decrypt only with
/// `usage.decrypt`, RSA only) plus its public key object, both with `label`
/// and `id`.
///
/// `session` must be R/W and logged in as the user. A `label` already used
/// by a private key, public key or certificate on the token is refused
/// before anything is created. Tries `C_CreateObject` first and falls back
/// to wrapping + `C_UnwrapKey` when the token refuses plaintext private keys
/// (see the module docs); each way is tried with the freezing attributes
/// first and, if the token refuses that template, without them. Returns
/// which way worked. If the public key cannot be created, the private key
/// just created is destroyed again.
pub fn import_key(session: &Session, key: &PKeyRef<Private>, label: &str, id: &[u8], usage: Usage) -> Result<Imported, ImportError> {
    if label.is_empty() {
        return Err("the key label must not be empty".to_string().into());
    }
    let info = key_info(key)?;
    usage.check_for(matches!(info, KeyInfo::Rsa(_))).map_err(|f| f.msg)?;
    refuse_taken_label(session, label)?;

    let common = |class: ObjectClass, key_type: KeyType| {
        vec![
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let key_type = match info {
        KeyInfo::Rsa(_) => KeyType::RSA,
        KeyInfo::Ec { .. } => KeyType::EC,
    };
    // The private key's attributes without the key material: also the
    // C_UnwrapKey template (the material then comes from the PKCS#8).
    let mut private_base = common(ObjectClass::PRIVATE_KEY, key_type);
    private_base.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(usage.decrypt),
    ]);

    let mut private = SecretTemplate(private_base.clone());
    let mut public = common(ObjectClass::PUBLIC_KEY, key_type);
    public.extend([Attribute::Private(false), Attribute::Verify(true)]);
    match &info {
        KeyInfo::Rsa(rsa) => {
            // unwrap: key_info checked they are all present.
            let part = |b: Option<&openssl::bn::BigNumRef>| b.map(|b| b.to_vec()).unwrap_or_default();
            private.0.extend([
                Attribute::Modulus(rsa.n().to_vec()),
                Attribute::PublicExponent(rsa.e().to_vec()),
                Attribute::PrivateExponent(rsa.d().to_vec()),
                Attribute::Prime1(part(rsa.p())),
                Attribute::Prime2(part(rsa.q())),
                Attribute::Exponent1(part(rsa.dmp1())),
                Attribute::Exponent2(part(rsa.dmq1())),
                Attribute::Coefficient(part(rsa.iqmp())),
            ]);
            public.extend([Attribute::Encrypt(usage.decrypt), Attribute::Modulus(rsa.n().to_vec()), Attribute::PublicExponent(rsa.e().to_vec())]);
        }
        KeyInfo::Ec { ec, params, order_len } => {
            let d = ec
                .private_key()
                .to_vec_padded(*order_len as i32)
                .map_err(|e| format!("cannot encode the EC private key ({})", openssl_reason(&e)))?;
            private.0.extend([Attribute::EcParams(params.to_vec()), Attribute::Value(d)]);
            let mut ctx = BigNumContext::new().map_err(|e| openssl_reason(&e))?;
            let point = ec
                .public_key()
                .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
                .map_err(|e| format!("cannot encode the EC public key ({})", openssl_reason(&e)))?;
            public.extend([Attribute::EcParams(params.to_vec()), Attribute::EcPoint(der_octet_string(&point))]);
        }
    }

    let what = format!("the private key \"{label}\"");
    // The freezing attributes go on the end of the template itself: a copy
    // would be key material that is not wiped.
    let base_len = private.0.len();
    private.0.reserve(2);
    let created = make_frozen(&what, |extra| {
        private.0.truncate(base_len);
        private.0.extend_from_slice(extra);
        session.create_object(&private.0)
    });
    drop(private);
    let ((private_handle, frozen), path) = match created {
        Ok(h) => (h, ImportPath::Created),
        Err(e) if is_refusal(&e) => {
            log::info!("HSM00701: import: the token refuses plaintext private keys ({}); importing \"{label}\" by unwrapping", ck_error_text(&e));
            (import_by_unwrap(session, key, &what, &private_base)?, ImportPath::Unwrapped)
        }
        Err(e) => return Err(format!("cannot create the private key \"{label}\": {}", ck_error_text(&e)).into()),
    };

    if let Err(e) = session.create_object(&public) {
        let why = ck_error_text(&e);
        return Err(ImportError::Failed(match session.destroy_object(private_handle) {
            Ok(()) => format!("cannot create the public key \"{label}\": {why}; the private key was removed again"),
            Err(e2) => format!(
                "cannot create the public key \"{label}\": {why}; removing the private key created a moment ago \
                 failed too ({}): delete the objects labelled \"{label}\" by hand",
                ck_error_text(&e2)
            ),
        }));
    }
    Ok(Imported { path, frozen })
}

/// Why [`import_key`] put nothing on the token (the text says what and
/// what to do).
#[derive(Debug, PartialEq, Eq)]
pub enum ImportError {
    /// An object on the token already has the label.
    LabelTaken(String),
    /// The key, its usage or the token refused the import.
    Failed(String),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::LabelTaken(t) | ImportError::Failed(t) => f.write_str(t),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<String> for ImportError {
    fn from(t: String) -> ImportError {
        ImportError::Failed(t)
    }
}

/// Error if a private key, public key or certificate already has `label`.
fn refuse_taken_label(session: &Session, label: &str) -> Result<(), ImportError> {
    for (class, what) in
        [(ObjectClass::PRIVATE_KEY, "private key"), (ObjectClass::PUBLIC_KEY, "public key"), (ObjectClass::CERTIFICATE, "certificate")]
    {
        let found = session
            .find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| format!("cannot search the token for \"{label}\": {}", ck_error_text(&e)))?;
        if !found.is_empty() {
            return Err(ImportError::LabelTaken(format!(
                "the token already has a {what} labelled \"{label}\"; choose another label or delete the existing objects first"
            )));
        }
    }
    Ok(())
}

/// DER OCTET STRING around `content` (CKA_EC_POINT form).
fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![0x04];
    match n {
        0..=0x7f => out.push(n as u8),
        0x80..=0xff => out.extend([0x81, n as u8]),
        _ => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// Length of the AES key wrapping the private key in the fallback.
const KEK_LEN: usize = 32;

/// The fallback: wrap the PKCS#8 of `key` under a fresh AES-256 key
/// (RFC 5649), bring that AES key into the token as a session key, unwrap.
fn import_by_unwrap(session: &Session, key: &PKeyRef<Private>, what: &str, template: &[Attribute]) -> Result<(ObjectHandle, Frozen), String> {
    let pkcs8 = Zeroizing::new(key.private_key_to_pkcs8().map_err(|e| format!("cannot encode the key as PKCS#8 ({})", openssl_reason(&e)))?);
    let mut kek = Zeroizing::new([0u8; KEK_LEN]);
    openssl::rand::rand_priv_bytes(&mut kek[..]).map_err(|e| format!("cannot generate a random wrapping key ({})", openssl_reason(&e)))?;
    let wrapped = aes256_wrap_pad(&kek, &pkcs8)?;
    drop(pkcs8);
    let unwrapping_key = session_aes_key(session, &kek)?;
    drop(kek);
    make_frozen(what, |extra| session.unwrap_key(&Mechanism::AesKeyWrapPad, unwrapping_key.handle, &wrapped, &[template, extra].concat()))
        .map_err(|e| format!("cannot unwrap the private key into the token: {}", ck_error_text(&e)))
    // unwrapping_key is dropped (destroyed) here, on success and on error.
}

/// RFC 5649 (AES key wrap with padding) of `data` under `kek`, as
/// OpenSSL's `id-aes256-wrap-pad` computes it (default alternative IV).
fn aes256_wrap_pad(kek: &[u8; KEK_LEN], data: &[u8]) -> Result<Vec<u8>, String> {
    let fail = |e: ErrorStack| format!("cannot wrap the key locally ({})", openssl_reason(&e));
    let cipher = Cipher::aes_256_wrap_pad();
    let mut ctx = CipherCtx::new().map_err(fail)?;
    ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
    ctx.encrypt_init(Some(cipher), Some(&kek[..]), None).map_err(fail)?;
    // RFC 5649 output: the input padded to a multiple of 8, plus 8; the
    // openssl crate also wants a block of room beyond the input.
    let mut out = vec![0u8; data.len() + 8 + 2 * cipher.block_size()];
    let n = ctx.cipher_update(data, Some(&mut out)).map_err(fail)?;
    let m = ctx.cipher_final(&mut out[n..]).map_err(fail)?;
    out.truncate(n + m);
    Ok(out)
}

/// `kek` as a session AES key that may unwrap: created directly, or, if
/// the token refuses that, carried in with RSA-OAEP.
fn session_aes_key<'a>(session: &'a Session, kek: &[u8; KEK_LEN]) -> Result<TempObject<'a>, String> {
    let mut template = SecretTemplate(aes_template());
    template.0.push(Attribute::Value(kek.to_vec()));
    let created = session.create_object(&template.0);
    drop(template);
    match created {
        Ok(handle) => Ok(TempObject { session, handle, what: "AES wrapping key" }),
        Err(e) if is_refusal(&e) => {
            log::info!("HSM00702: import: the token refuses a plaintext AES session key too ({}); carrying it in with RSA-OAEP", ck_error_text(&e));
            aes_key_via_rsa_oaep(session, kek)
        }
        Err(e) => Err(format!("cannot create the AES session key for unwrapping: {}", ck_error_text(&e))),
    }
}

/// Attributes of the session AES key (without its value).
fn aes_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
    ]
}

/// Generate a session RSA key pair in the token, encrypt `kek` to its
/// public key with RSA-OAEP locally, and unwrap it into a session AES key.
/// OAEP with SHA-256 first (what CloudHSM's samples use), SHA-1 if the
/// token does not take that (SoftHSM2 2.6 unwraps OAEP with SHA-1 only).
fn aes_key_via_rsa_oaep<'a>(session: &'a Session, kek: &[u8; KEK_LEN]) -> Result<TempObject<'a>, String> {
    let public_template = [
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Encrypt(true),
        Attribute::Wrap(true),
        Attribute::ModulusBits(2048.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
    ];
    let private_template = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(true),
    ];
    let (public_handle, private_handle) = session
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_template, &private_template)
        .map_err(|e| format!("cannot generate a session RSA key to carry the AES key in: {}", ck_error_text(&e)))?;
    let _public = TempObject { session, handle: public_handle, what: "RSA transport public key" };
    let rsa_private = TempObject { session, handle: private_handle, what: "RSA transport private key" };

    let attrs = session
        .get_attributes(public_handle, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .map_err(|e| format!("cannot read the RSA transport key: {}", ck_error_text(&e)))?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let (Some(n), Some(e)) = (n, e) else {
        return Err("the token did not return the RSA transport key's modulus and exponent".into());
    };
    let bad = |e: ErrorStack| format!("cannot use the RSA transport key ({})", openssl_reason(&e));
    let rsa = Rsa::from_public_components(BigNum::from_slice(&n).map_err(bad)?, BigNum::from_slice(&e).map_err(bad)?).map_err(bad)?;
    let transport = PKey::from_rsa(rsa).map_err(bad)?;

    let mut last = String::new();
    for (md, mech_hash, mgf) in
        [(Md::sha256(), MechanismType::SHA256, PkcsMgfType::MGF1_SHA256), (Md::sha1(), MechanismType::SHA1, PkcsMgfType::MGF1_SHA1)]
    {
        let encrypted = oaep_encrypt(&transport, md, kek).map_err(bad)?;
        let mechanism = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(mech_hash, mgf, PkcsOaepSource::empty()));
        match session.unwrap_key(&mechanism, rsa_private.handle, &encrypted, &aes_template()) {
            Ok(handle) => return Ok(TempObject { session, handle, what: "AES wrapping key" }),
            Err(err @ CkError::Pkcs11(RvError::ArgumentsBad | RvError::MechanismParamInvalid, _)) => {
                last = ck_error_text(&err);
            }
            Err(err) => {
                return Err(format!("cannot unwrap the AES key with RSA-OAEP: {}", ck_error_text(&err)));
            }
        }
    }
    Err(format!("cannot unwrap the AES key with RSA-OAEP (SHA-256 or SHA-1): {last}"))
}

fn oaep_encrypt(key: &PKey<openssl::pkey::Public>, md: &openssl::md::MdRef, data: &[u8]) -> Result<Vec<u8>, ErrorStack> {
    let mut ctx = PkeyCtx::new(key)?;
    ctx.encrypt_init()?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
    ctx.set_rsa_oaep_md(md)?;
    ctx.set_rsa_mgf1_md(md)?;
    let mut out = Vec::new();
    ctx.encrypt_to_vec(data, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_string_lengths() {
        assert_eq!(der_octet_string(&[1, 2]), vec![0x04, 2, 1, 2]);
        let p256 = der_octet_string(&[0x04; 65]);
        assert_eq!(&p256[..2], &[0x04, 65]);
        let p521 = der_octet_string(&[0x04; 133]);
        assert_eq!(&p521[..3], &[0x04, 0x81, 133]);
        assert_eq!(p521.len(), 136);
    }

    #[test]
    fn wrap_pad_round_trips() {
        let kek = [7u8; KEK_LEN];
        for len in [1usize, 8, 20, 1217] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wrapped = aes256_wrap_pad(&kek, &data).unwrap();
            assert_eq!(wrapped.len(), len.div_ceil(8) * 8 + 8, "RFC 5649 length for {len}");
            let cipher = Cipher::aes_256_wrap_pad();
            let mut ctx = CipherCtx::new().unwrap();
            ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
            ctx.decrypt_init(Some(cipher), Some(&kek[..]), None).unwrap();
            let mut out = vec![0u8; wrapped.len() + 2 * cipher.block_size()];
            let n = ctx.cipher_update(&wrapped, Some(&mut out)).unwrap();
            let m = ctx.cipher_final(&mut out[n..]).unwrap();
            out.truncate(n + m);
            assert_eq!(out, data);
        }
    }

    #[test]
    fn rfc5649_vector() {
        // RFC 5649 section 6 uses a 192-bit KEK; check OpenSSL's
        // id-aes192-wrap-pad gives the RFC's output the same way we drive
        // the 256-bit variant.
        let kek = hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let data = hex("c37b7e6492584340bed12207808941155068f738");
        let cipher = Cipher::aes_192_wrap_pad();
        let mut ctx = CipherCtx::new().unwrap();
        ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
        ctx.encrypt_init(Some(cipher), Some(&kek), None).unwrap();
        let mut out = vec![0u8; data.len() + 8 + 2 * cipher.block_size()];
        let n = ctx.cipher_update(&data, Some(&mut out)).unwrap();
        let m = ctx.cipher_final(&mut out[n..]).unwrap();
        out.truncate(n + m);
        assert_eq!(out, hex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn pem_block_selection() {
        let two = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n\
                    -----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let block = private_key_block(two).unwrap();
        assert!(block.starts_with(b"-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(block.ends_with(b"-----END EC PRIVATE KEY-----\n"));

        let ssh = b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        let e = private_key_block(ssh).unwrap_err();
        assert!(e.contains("unsupported key format \"BEGIN OPENSSH PRIVATE KEY\""), "{e}");

        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(private_key_block(cert).unwrap_err().contains("no PEM private key"));

        let double = b"-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n\
                       -----BEGIN RSA PRIVATE KEY-----\nAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(private_key_block(double).unwrap_err().contains("2 private keys"));

        let cut = b"-----BEGIN PRIVATE KEY-----\nAA\n";
        assert!(private_key_block(cut).unwrap_err().contains("no END line"));

        assert!(private_key_block(&[0x30, 0x82, 0xff, 0xfe]).unwrap_err().contains("not a PEM file"));
    }

    #[test]
    fn refusals() {
        use cryptoki::context::Function;
        assert!(is_refusal(&CkError::Pkcs11(RvError::TemplateInconsistent, Function::CreateObject)));
        assert!(is_refusal(&CkError::Pkcs11(RvError::AttributeReadOnly, Function::CreateObject)));
        assert!(!is_refusal(&CkError::Pkcs11(RvError::DeviceError, Function::CreateObject)));
        assert!(!is_refusal(&CkError::Pkcs11(RvError::UserNotLoggedIn, Function::CreateObject)));
    }

    #[test]
    fn key_type_checks() {
        let small = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        assert!(check_supported(&small).unwrap_err().contains("1024 bits is too small"));
        let ed = PKey::generate_ed25519().unwrap();
        let e = check_supported(&ed).unwrap_err();
        assert!(e.contains("Ed25519") && e.contains("P-256"), "{e}");
        let k1 = openssl::ec::EcGroup::from_curve_name(Nid::SECP256K1).unwrap();
        let k1 = PKey::from_ec_key(EcKey::generate(&k1).unwrap()).unwrap();
        assert!(check_supported(&k1).unwrap_err().contains("secp256k1"));
        for nid in [Nid::X9_62_PRIME256V1, Nid::SECP384R1, Nid::SECP521R1] {
            let g = openssl::ec::EcGroup::from_curve_name(nid).unwrap();
            let k = PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap();
            match key_info(&k).unwrap() {
                KeyInfo::Ec { order_len, .. } => {
                    assert_eq!(
                        order_len,
                        match nid {
                            Nid::SECP521R1 => 66,
                            Nid::SECP384R1 => 48,
                            _ => 32,
                        }
                    )
                }
                KeyInfo::Rsa(_) => unreachable!(),
            }
        }
    }
}
