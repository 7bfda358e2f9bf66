//! The key tool's commands. Each returns the text to print on stdout or a
//! [`Failure`] whose message goes to stderr and whose code is the exit code.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::cli::{CheckArgs, ConfigArgs, GenerateArgs, ListArgs, TargetArgs};
use super::policy::{make_frozen, Frozen, Usage};
use super::tool::{fail, key_uri, label, Code, Res, Target};
use crate::pkcs11::token::{rsa_public, Hsm, KeyRef, PublicKey};
use crate::pkcs11::uri::{hex, KeyUri};
use crate::tls::certcheck;

/// A key type `generate` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    Rsa(u64),
    Ec(&'static str, &'static [u8]),
}

pub fn parse_type(s: &str) -> Res<KeySpec> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "rsa:2048" => KeySpec::Rsa(2048),
        "rsa:3072" => KeySpec::Rsa(3072),
        "rsa:4096" => KeySpec::Rsa(4096),
        "ec:p-256" | "ec:prime256v1" => KeySpec::Ec("P-256", &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        "ec:p-384" | "ec:secp384r1" => KeySpec::Ec("P-384", &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        _ => return Err(fail(Code::Usage, format!("--type {s}: use rsa:2048, rsa:3072, rsa:4096, ec:P-256 or ec:P-384"))),
    })
}

fn ck(what: &str, e: cryptoki::error::Error) -> crate::keytool::tool::Failure {
    fail(Code::Setup, format!("{what}: {}", crate::pkcs11::token::ck_error_text(&e)))
}

/// Objects (any class) with this label.
fn with_label(s: &Session, label: &str) -> Res<Vec<ObjectHandle>> {
    s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]).map_err(|e| ck("searching the token", e))
}

/// A random 8-byte CKA_ID for a new key pair.
pub fn random_id() -> Res<Vec<u8>> {
    let mut id = vec![0u8; 8];
    // SAFETY: id is a writable buffer of 8 bytes.
    if unsafe { openssl_sys::RAND_bytes(id.as_mut_ptr(), 8) } != 1 {
        return Err(fail(Code::Other, "no random bytes from OpenSSL"));
    }
    Ok(id)
}

pub fn generate(o: &TargetArgs, a: &GenerateArgs) -> Res<String> {
    let (label, usage, chosen) = a.new.get()?;
    let label = label.to_string();
    let spec = parse_type(&a.key_type)?;
    usage.check_for(matches!(spec, KeySpec::Rsa(_)))?;
    let t = Target::from_args(o)?;
    let (_ctx, s, token) = t.session()?;
    if !with_label(&s, &label)?.is_empty() {
        return Err(fail(
            Code::Key,
            format!("token '{token}' already has objects labelled '{label}'; choose another --label (or delete the old key first)"),
        ));
    }
    let id = new_id(&s, &token, chosen)?;
    let common_pub = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    let common_priv = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        // Nothing but what TLS needs: no unwrapping, no derivation, and
        // decryption only on request (see policy).
        Attribute::Decrypt(usage.decrypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    let (mech, mut pubt, mut privt) = match spec {
        KeySpec::Rsa(bits) => {
            let mut p = common_pub.clone();
            p.push(Attribute::Encrypt(usage.decrypt));
            p.push(Attribute::ModulusBits(cryptoki::types::Ulong::from(bits as std::ffi::c_ulong)));
            p.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            (Mechanism::RsaPkcsKeyPairGen, p, common_priv)
        }
        KeySpec::Ec(_, oid) => {
            let mut p = common_pub.clone();
            p.push(Attribute::EcParams(oid.to_vec()));
            (Mechanism::EccKeyPairGen, p, common_priv)
        }
    };
    pubt.shrink_to_fit();
    privt.shrink_to_fit();
    log::info!("HSM00723: generating the {} key pair '{label}' in token '{token}'", a.key_type);
    let ((pub_h, _), frozen) =
        make_frozen(&format!("the private key '{label}'"), |extra| s.generate_key_pair(&mech, &pubt, &[&privt[..], extra].concat()))
            .map_err(|e| fail(Code::Key, format!("generating the key pair in token '{token}': {}", crate::pkcs11::token::ck_error_text(&e))))?;
    let public = read_public(&s, pub_h, spec)?;
    let fp = certcheck::token_fingerprint(&public).unwrap_or_else(|e| format!("({e})"));
    let kind = match spec {
        KeySpec::Rsa(b) => format!("RSA {b}"),
        KeySpec::Ec(c, _) => format!("EC {c}"),
    };
    if a.new.json {
        let report = KeyReport::new(&token, &label, &id, &public);
        return json_line(&serde_json::json!({ "key": report, "usage": usage.describe(), "protection": protection(usage, frozen) }));
    }
    let uri = key_uri(Some(&token), &label);
    Ok(format!(
        "generated {kind} key '{label}' (id {}) in token '{token}': {}\n\
         public key {fp}\n\
         key URI for SSLCertificateKeyFile: \"{uri}\"\n\
         next: hsm-ssl-keytool csr --label {label} --subject \"CN=...\"   (or selfsign)\n",
        hex(&id),
        protection(usage, frozen)
    ))
}

/// The CKA_ID for a new key: `chosen` (`--id`) if no key object on the
/// token has it yet, else 8 random bytes.
pub fn new_id(s: &Session, token: &str, chosen: Option<Vec<u8>>) -> Res<Vec<u8>> {
    let Some(id) = chosen else { return random_id() };
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let found = s.find_objects(&[Attribute::Class(class), Attribute::Id(id.clone())]).map_err(|e| ck("searching the token", e))?;
        if !found.is_empty() {
            return Err(fail(Code::Key, format!("token '{token}' already has a key with id {}; choose another --id", hex(&id))));
        }
    }
    Ok(id)
}

/// How the new private key is protected, for the tool's output.
pub fn protection(usage: Usage, frozen: Frozen) -> String {
    format!("sensitive, not extractable, {}; usage: {}", frozen.describe(), usage.describe())
}

fn read_public(s: &Session, h: ObjectHandle, spec: KeySpec) -> Res<PublicKey> {
    match spec {
        KeySpec::Rsa(_) => rsa_public(s, h).map_err(|e| ck("reading the public key", e)),
        KeySpec::Ec(_, oid) => {
            let a = s.get_attributes(h, &[AttributeType::EcPoint]).map_err(|e| ck("reading the public key", e))?;
            let point = a
                .into_iter()
                .find_map(|x| match x {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| fail(Code::Key, "the token did not return the public point"))?;
            // CKA_EC_POINT is a DER OCTET STRING around the point.
            let raw = if point.len() > 2 && point[0] == 0x04 && point[1] as usize == point.len() - 2 { point[2..].to_vec() } else { point };
            Ok(PublicKey::Ec { params: oid.to_vec(), point: raw })
        }
    }
}

/// A key found like httpd finds it, for csr, selfsign, check and config.
pub fn resolve(t: &Target, uri_text: &str) -> Res<(Arc<Hsm>, Arc<KeyRef>)> {
    let uri = KeyUri::parse(uri_text).map_err(|e| fail(Code::Usage, format!("--key {uri_text}: {}", super::messages::key_uri(&e))))?;
    let binding = t.binding()?;
    let hsm = crate::pkcs11::runtime::hsm_for(&binding).map_err(|e| fail(Code::Setup, e.to_string()))?;
    let key = hsm.resolve(uri_text, &uri).map_err(|e| match e {
        crate::pkcs11::token::OpError::NoKey(m) => fail(Code::Key, m),
        other => fail(Code::Setup, other.to_string()),
    })?;
    Ok((hsm, Arc::new(key)))
}

/// The URI for `--label` on the selected token.
pub fn label_uri(l: &str) -> Res<String> {
    Ok(key_uri(None, label(l)?))
}

/// The URI for `--label` and, when given, `--id` on the selected token.
pub fn selector_uri(l: &str, id: Option<&[u8]>) -> Res<String> {
    Ok(super::tool::key_uri_id(None, label(l)?, id))
}

/// The tool's failure for a certificate that does not go with the key.
fn cert_failure(e: certcheck::CertCheckError) -> super::tool::Failure {
    let code = match e {
        certcheck::CertCheckError::Mismatch { .. } => Code::Mismatch,
        certcheck::CertCheckError::Unreadable(_) => Code::Other,
    };
    fail(code, e.to_string())
}

pub fn check(o: &TargetArgs, a: &CheckArgs) -> Res<String> {
    let (cert, key) = (a.cert.as_str(), a.key.as_str());
    let t = Target::from_args(o)?;
    let (hsm, k) = resolve(&t, key)?;
    certcheck::check(cert, &k.public).map_err(cert_failure)?;
    let warnings = hsm.check_mechanisms(&k).map_err(|e| fail(Code::Key, e))?;
    if a.json {
        return json_line(&serde_json::json!({ "key": KeyReport::of(&k), "cert": cert, "ok": true, "warnings": warnings }));
    }
    let mut out = format!("OK: {key} is on token '{}' and belongs to {cert}\n", k.token_label);
    for w in warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    Ok(out)
}

pub fn config(o: &TargetArgs, a: &ConfigArgs) -> Res<String> {
    let (label, id) = a.key.get()?;
    let cert = a.cert.as_str();
    let t = Target::from_args(o)?;
    let uri = selector_uri(label, id.as_deref())?;
    let (_, k) = resolve(&t, &uri)?;
    certcheck::check(cert, &k.public).map_err(cert_failure)?;
    let cert_abs = std::fs::canonicalize(cert).map_err(|e| fail(Code::Other, format!("{cert}: {e}")))?;
    let server_name = match &a.server_name {
        Some(n) => n.clone(),
        None => cert_common_name(&cert_abs).unwrap_or_else(|| "www.example.com".into()),
    };
    let key_uri = super::tool::key_uri_id(Some(&k.token_label), label, id.as_deref());
    let pin = t.pin_source.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "env:CLOUDHSM_PIN".into());
    let text = format!(
        "# mod_hsm_ssl: key '{label}' on token '{}'\n\
         HSMSSLLibrary {}\n\
         HSMSSLPin     {pin}\n\
         \n\
         <VirtualHost *:443>\n    ServerName {server_name}\n    SSLEngine on\n    SSLCertificateFile    {}\n    SSLCertificateKeyFile \"{key_uri}\"\n</VirtualHost>\n",
        k.token_label,
        t.library.display(),
        cert_abs.display()
    );
    if !a.json {
        return Ok(text);
    }
    let mut report = KeyReport::of(&k);
    report.uri = key_uri;
    json_line(&serde_json::json!({
        "key": report,
        "library": t.library,
        "pin": pin,
        "server_name": server_name,
        "cert": cert_abs,
        "apache": text,
    }))
}

fn cert_common_name(path: &Path) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    let x = openssl::x509::X509::from_pem(&pem).ok()?;
    let e = x.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
    e.data().as_utf8().ok().map(|s| s.to_string())
}

struct Listed {
    label: String,
    id: Vec<u8>,
    kind: String,
    sensitive: bool,
    extractable: bool,
    public: Option<PublicKey>,
}

/// "RSA 2048", "EC P-256": what kind of key a public half is.
pub fn key_kind(public: &PublicKey) -> String {
    match public {
        PublicKey::Rsa { n, .. } => {
            let bits = n.iter().position(|&b| b != 0).map_or(0, |i| (n.len() - i) * 8 - n[i].leading_zeros() as usize);
            format!("RSA {bits}")
        }
        PublicKey::Ec { params, .. } => ec_kind(Some(params)),
    }
}

fn ec_kind(params: Option<&[u8]>) -> String {
    match params {
        Some([0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]) => "EC P-256".into(),
        Some([0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]) => "EC P-384".into(),
        Some([0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]) => "EC P-521".into(),
        _ => "EC (other curve)".into(),
    }
}

/// One key in a `--json` answer: where it is, what it is, and the
/// fingerprint of its public half (as `list` and `generate` print it).
#[derive(Debug, serde::Serialize)]
pub struct KeyReport {
    pub uri: String,
    pub token: String,
    pub label: String,
    pub id: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub fingerprint: String,
}

impl KeyReport {
    pub fn new(token: &str, label: &str, id: &[u8], public: &PublicKey) -> KeyReport {
        KeyReport {
            uri: key_uri(Some(token), label),
            token: token.to_string(),
            label: label.to_string(),
            id: hex(id),
            key_type: key_kind(public),
            fingerprint: certcheck::token_fingerprint(public).unwrap_or_else(|e| format!("({e})")),
        }
    }

    /// The report of a key the tool looked up.
    pub fn of(k: &KeyRef) -> KeyReport {
        KeyReport::new(&k.token_label, k.label.as_deref().unwrap_or(""), &k.id, &k.public)
    }
}

/// `value` as one line of JSON.
pub fn json_line<T: serde::Serialize>(value: &T) -> Res<String> {
    serde_json::to_string(value).map(|s| s + "\n").map_err(|e| fail(Code::Other, format!("JSON: {e}")))
}

fn list_keys(s: &Session) -> Res<Vec<Listed>> {
    let privs = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).map_err(|e| ck("listing keys", e))?;
    let mut out = Vec::new();
    for h in privs {
        let a = s
            .get_attributes(
                h,
                &[AttributeType::Label, AttributeType::Id, AttributeType::KeyType, AttributeType::Sensitive, AttributeType::Extractable],
            )
            .map_err(|e| ck("reading key attributes", e))?;
        let mut l = Listed { label: String::new(), id: Vec::new(), kind: "unknown".into(), sensitive: false, extractable: true, public: None };
        let mut kt = None;
        for x in a {
            match x {
                Attribute::Label(v) => l.label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::Id(v) => l.id = v,
                Attribute::KeyType(k) => kt = Some(k),
                Attribute::Sensitive(b) => l.sensitive = b,
                Attribute::Extractable(b) => l.extractable = b,
                _ => {}
            }
        }
        match kt {
            Some(KeyType::RSA) => {
                if let Ok(p) = rsa_public(s, h) {
                    l.kind = key_kind(&p);
                    l.public = Some(p);
                }
            }
            Some(KeyType::EC) => {
                let params = s.get_attributes(h, &[AttributeType::EcParams]).ok().and_then(|a| {
                    a.into_iter().find_map(|x| match x {
                        Attribute::EcParams(p) => Some(p),
                        _ => None,
                    })
                });
                l.kind = ec_kind(params.as_deref());
                if let Some(params) = params {
                    let pubs = s.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(l.id.clone())]).unwrap_or_default();
                    if let Some(ph) = pubs.first() {
                        if let Ok(PublicKey::Ec { point, .. }) = read_public(s, *ph, KeySpec::Ec("", &[])) {
                            l.public = Some(PublicKey::Ec { params, point });
                        }
                    }
                }
            }
            Some(other) => l.kind = format!("{other}"),
            None => {}
        }
        out.push(l);
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(out)
}

/// One key in `list --json`.
#[derive(serde::Serialize)]
struct ListRow {
    label: String,
    id: String,
    #[serde(rename = "type")]
    key_type: String,
    sensitive: bool,
    extractable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    matches_cert: Option<bool>,
    uri: String,
    fingerprint: Option<String>,
}

pub fn list(o: &TargetArgs, a: &ListArgs) -> Res<String> {
    let t = Target::from_args(o)?;
    let (_ctx, s, token) = t.session()?;
    let keys = list_keys(&s)?;
    let cert = a.cert.as_deref();
    let matches = |k: &Listed| -> Option<bool> {
        let c = cert?;
        Some(k.public.as_ref().is_some_and(|p| certcheck::check(c, p).is_ok()))
    };
    if a.json {
        let rows: Vec<ListRow> = keys
            .iter()
            .map(|k| ListRow {
                label: k.label.clone(),
                id: hex(&k.id),
                key_type: k.kind.clone(),
                sensitive: k.sensitive,
                extractable: k.extractable,
                matches_cert: matches(k),
                uri: key_uri(Some(&token), &k.label),
                fingerprint: k.public.as_ref().and_then(|p| certcheck::token_fingerprint(p).ok()),
            })
            .collect();
        return json_line(&serde_json::json!({ "token": token, "keys": rows }));
    }
    let mut out = format!("token '{token}': {} private key(s)\n", keys.len());
    for k in &keys {
        let m = match matches(k) {
            Some(true) => "  matches the certificate",
            Some(false) => "",
            None => "",
        };
        let _ = writeln!(
            out,
            "  {:<24} id {:<18} {:<10} {}{}{m}",
            k.label,
            hex(&k.id),
            k.kind,
            if k.sensitive { "sensitive" } else { "NOT sensitive" },
            if k.extractable { ", EXTRACTABLE" } else { ", not extractable" }
        );
        if let Some(fp) = k.public.as_ref().and_then(|p| certcheck::token_fingerprint(p).ok()) {
            let _ = writeln!(out, "  {:<24} public key {fp}", "");
        }
    }
    if cert.is_some() && !keys.iter().any(|k| matches(k) == Some(true)) {
        let _ = writeln!(out, "no key on this token matches the certificate");
    }
    Ok(out)
}
