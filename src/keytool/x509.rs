//! Certificate requests (PKCS#10) and self-signed certificates whose
//! signature is made by a key inside the token.
//!
//! The token key becomes an OpenSSL key of the `hsm_ssl` provider
//! ([`token_pkey`]); OpenSSL then builds and signs the request or
//! certificate as for any key, and the provider sends the digest to the
//! token. Both are signed with SHA-256 (RSA: PKCS#1 v1.5).
//!
//! Subjects are written as in RFC 4514, most specific attribute first:
//! `CN=www.example.com,O=Example Ltd,C=DE` (a comma inside a value is
//! escaped as `\,`). As in RFC 4514 the string lists the name's RDNs in
//! reverse order, so the DER (and `openssl x509 -text`) has `C=DE` first
//! and `openssl ... -nameopt RFC2253` prints the string back as given.

use std::net::IpAddr;
use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier};
use openssl::x509::{X509Builder, X509Extension, X509Name, X509NameBuilder, X509ReqBuilder, X509v3Context};

use crate::pkcs11::token::KeyRef;
use crate::tls::provider::evp_pkey_for;

/// Longest validity [`selfsigned_pem`] accepts, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// The token key as an OpenSSL key: its private operations (signing) go to
/// the token through the `hsm_ssl` provider; the private key never leaves
/// the token. Only signing with SHA-1/SHA-2 digests is possible.
pub fn token_pkey(key: Arc<KeyRef>) -> Result<PKey<Private>, String> {
    let uri = key.uri_text.clone();
    let raw = evp_pkey_for(key).map_err(|e| {
        format!(
            "cannot make an OpenSSL key object for the token key {uri}: {e}; \
             the key must be RSA or EC (P-256, P-384, P-521) and libcrypto OpenSSL 3"
        )
    })?;
    // SAFETY: `raw` is a valid EVP_PKEY of which evp_pkey_for gave us one
    // reference. `&PKeyRef` is by design (foreign-types) the C pointer
    // itself, so the cast is what `ForeignTypeRef::from_ptr` does (the
    // `foreign-types` crate is not a direct dependency to call it by name).
    // `to_owned` takes a reference of its own (EVP_PKEY_up_ref) into the
    // returned PKey; ours is released right after.
    let pkey = unsafe {
        let owned = (*(raw as *const PKeyRef<Private>)).to_owned();
        openssl_sys::EVP_PKEY_free(raw);
        owned
    };
    Ok(pkey)
}

/// The attribute names [`parse_subject`] knows (case-insensitive).
const ATTRIBUTES: &[(&str, Nid)] = &[
    ("CN", Nid::COMMONNAME),
    ("C", Nid::COUNTRYNAME),
    ("ST", Nid::STATEORPROVINCENAME),
    ("L", Nid::LOCALITYNAME),
    ("O", Nid::ORGANIZATIONNAME),
    ("OU", Nid::ORGANIZATIONALUNITNAME),
    ("STREET", Nid::STREETADDRESS),
    ("postalCode", Nid::POSTALCODE),
    ("serialNumber", Nid::SERIALNUMBER),
    ("emailAddress", Nid::PKCS9_EMAILADDRESS),
    ("DC", Nid::DOMAINCOMPONENT),
    ("UID", Nid::USERID),
];

fn known_attributes() -> String {
    ATTRIBUTES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Splits `s` at commas not escaped by a backslash; `\x` stands for `x`.
/// Returns each part unescaped, with a flag per character saying whether
/// it was escaped (so that an escaped `=` is not taken as the separator).
fn split_escaped(s: &str) -> Result<Vec<Vec<(char, bool)>>, String> {
    let mut parts = vec![Vec::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => parts.last_mut().expect("non-empty").push((e, true)),
                None => return Err("the subject ends in a lone backslash; write \\\\ for a backslash, \\, for a comma".into()),
            },
            ',' => parts.push(Vec::new()),
            c => parts.last_mut().expect("non-empty").push((c, false)),
        }
    }
    Ok(parts)
}

/// Parses `CN=www.example.com,O=Example Ltd,C=DE` (RFC 4514 order: the
/// most specific attribute first; `\,` is a comma inside a value, `\\` a
/// backslash). Known attributes: CN, C, ST, L, O, OU, STREET, postalCode,
/// serialNumber, emailAddress, DC, UID.
pub fn parse_subject(s: &str) -> Result<X509Name, String> {
    if s.trim().is_empty() {
        return Err("the subject is empty; give at least CN=<server name>, e.g. CN=www.example.com,O=Example Ltd,C=DE".into());
    }
    let mut rdns = Vec::new();
    for part in split_escaped(s)? {
        let text: String = part.iter().map(|(c, _)| c).collect();
        if text.trim().is_empty() {
            return Err(format!("empty part in the subject '{s}' (two commas in a row, or a leading or trailing comma)"));
        }
        let Some(eq) = part.iter().position(|&(c, escaped)| c == '=' && !escaped) else {
            return Err(format!(
                "subject part '{}' has no '='; write attribute=value pairs separated by commas \
                 (a comma inside a value as \\,), e.g. CN=www.example.com,O=Example Ltd,C=DE",
                text.trim()
            ));
        };
        let name: String = part[..eq].iter().map(|(c, _)| c).collect();
        let name = name.trim();
        let value: String = part[eq + 1..].iter().map(|(c, _)| c).collect();
        let value = value.trim();
        let Some(&(canonical, nid)) = ATTRIBUTES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
            return Err(format!("unknown subject attribute '{name}' (in '{}'); known attributes: {}", text.trim(), known_attributes()));
        };
        if value.is_empty() {
            return Err(format!("subject attribute {canonical} has an empty value; give a value or leave the attribute out"));
        }
        if nid == Nid::COUNTRYNAME && !(value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(format!("subject attribute C='{value}' is not a country code; use the two capital letters of ISO 3166, e.g. C=DE"));
        }
        if value.chars().count() > 64 && nid != Nid::PKCS9_EMAILADDRESS {
            return Err(format!("subject attribute {canonical} is longer than 64 characters (RFC 5280 upper bound); shorten it"));
        }
        rdns.push((canonical, nid, value.to_string()));
    }
    let mut b = X509NameBuilder::new().map_err(|e| format!("OpenSSL cannot make a name: {e}"))?;
    // RFC 4514 lists the last RDN of the DER sequence first.
    for (canonical, nid, value) in rdns.iter().rev() {
        b.append_entry_by_nid(*nid, value)
            .map_err(|e| format!("OpenSSL refused subject attribute {canonical}='{value}': {e}; check the value's characters and length"))?;
    }
    Ok(b.build())
}

/// One SAN entry: `DNS:<host name>` or `IP:<IPv4 or IPv6 address>`
/// (type names case-insensitive). Returns it normalised (`DNS:` host name
/// in lower case, `IP:` address in its canonical text form).
fn parse_san(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    let Some((kind, value)) = entry.split_once(':') else {
        return Err(format!("subject alternative name '{entry}' has no type; write DNS:<host name> or IP:<address>"));
    };
    let value = value.trim();
    if kind.trim().eq_ignore_ascii_case("DNS") {
        check_dns_name(value).map_err(|why| format!("subject alternative name DNS:{value}: {why}"))?;
        Ok(format!("DNS:{}", value.to_ascii_lowercase()))
    } else if kind.trim().eq_ignore_ascii_case("IP") {
        let ip: IpAddr = value
            .parse()
            .map_err(|_| format!("subject alternative name IP:{value}: not an IPv4 or IPv6 address (e.g. IP:192.0.2.10, IP:2001:db8::1)"))?;
        Ok(format!("IP:{ip}"))
    } else {
        Err(format!("subject alternative name '{entry}': unsupported type '{}'; use DNS:<host name> or IP:<address>", kind.trim()))
    }
}

/// A host name as a certificate carries it: ASCII letters, digits and
/// hyphens in dot-separated labels of 1-63 characters, at most 253 in all;
/// a leading `*.` wildcard label is allowed.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if !name.is_ascii() {
        return Err("not ASCII; write an internationalised name in its xn-- (punycode) form".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    if rest.is_empty() {
        return Err("a wildcard needs a domain after '*.'".into());
    }
    if name.ends_with('.') {
        return Err("ends with a dot; leave the trailing dot out".into());
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("label '{label}' is longer than 63 characters"));
        }
        if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(if bad == '*' {
                "a wildcard '*' is allowed only as the whole first label ('*.example.com')".into()
            } else {
                format!("character '{bad}' is not allowed in a host name (letters, digits, '-' and '.' only)")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label '{label}' starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Parses `DNS:www.example.com,DNS:example.com,IP:10.0.0.1,IP:::1` into
/// its entries (`DNS:` names lower-cased, IP addresses in canonical form).
/// An empty string gives no entries.
pub fn parse_sans(s: &str) -> Result<Vec<String>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for entry in s.split(',') {
        if entry.trim().is_empty() {
            return Err(format!("empty entry in the subject alternative names '{s}' (two commas in a row, or a leading or trailing comma)"));
        }
        let san = parse_san(entry)?;
        if out.contains(&san) {
            return Err(format!("subject alternative name {san} is listed twice; list each name once"));
        }
        out.push(san);
    }
    Ok(out)
}

/// Builds the subjectAltName extension for `sans` (entries as
/// [`parse_sans`] returns them; checked again here). None when empty.
fn san_extension(sans: &[String], ctx: &X509v3Context) -> Result<Option<X509Extension>, String> {
    if sans.is_empty() {
        return Ok(None);
    }
    let mut ext = SubjectAlternativeName::new();
    for entry in sans {
        let san = parse_san(entry)?;
        match san.split_once(':') {
            Some(("DNS", name)) => ext.dns(name),
            Some(("IP", ip)) => ext.ip(ip),
            _ => unreachable!("parse_san returns DNS: or IP:"),
        };
    }
    ext.build(ctx).map(Some).map_err(|e| format!("OpenSSL cannot encode the subject alternative names: {e}"))
}

/// Adds the subjectAltName extension for `sans` (none when empty) to `exts`.
fn add_san_extension(exts: &mut Stack<X509Extension>, sans: &[String], ctx: &X509v3Context) -> Result<(), String> {
    if let Some(ext) = san_extension(sans, ctx)? {
        exts.push(ext).map_err(|e| format!("out of memory: {e}"))?;
    }
    Ok(())
}

fn is_rsa(key: &PKeyRef<Private>) -> Result<bool, String> {
    match key.id() {
        Id::RSA => Ok(true),
        Id::EC => Ok(false),
        other => Err(format!("the key is neither RSA nor EC (OpenSSL key type {}); use an RSA or EC key", other.as_raw())),
    }
}

/// What to tell the user when OpenSSL could not sign `what`.
fn sign_error(what: &str, e: ErrorStack) -> String {
    format!(
        "signing the {what} with the token key failed: {e}; if the token refused, the logged error names its answer. \
         Check that the token is reachable and that the key may sign (CKA_SIGN)"
    )
}

/// Drops errors earlier code left in OpenSSL's (per-thread) error queue,
/// so that a failure reports only its own. SoftHSM2, for one, leaves the
/// failed load of OpenSSL's rdrand engine there when it initializes.
fn clear_stale_errors() {
    let _ = ErrorStack::get();
}

fn pem_text(what: &str, pem: Vec<u8>) -> Result<String, String> {
    String::from_utf8(pem).map_err(|_| format!("OpenSSL wrote a {what} PEM that is not text"))
}

/// A PKCS#10 certificate request for `key` with `subject` (see
/// [`parse_subject`]) and `sans` (see [`parse_sans`]; requested as an
/// extension), signed by the key with SHA-256.
pub fn csr_pem(key: &PKeyRef<Private>, subject: &str, sans: &[String]) -> Result<String, String> {
    let name = parse_subject(subject)?;
    is_rsa(key)?;
    clear_stale_errors();
    let oom = |e: ErrorStack| format!("OpenSSL could not build the certificate request: {e}");
    let mut b = X509ReqBuilder::new().map_err(oom)?;
    b.set_version(0).map_err(oom)?;
    b.set_subject_name(&name).map_err(oom)?;
    b.set_pubkey(key).map_err(|e| format!("OpenSSL cannot put the token key's public key into the request: {e}"))?;
    let mut exts = Stack::new().map_err(oom)?;
    add_san_extension(&mut exts, sans, &b.x509v3_context(None))?;
    if !exts.is_empty() {
        b.add_extensions(&exts).map_err(oom)?;
    }
    b.sign(key, MessageDigest::sha256()).map_err(|e| sign_error("certificate request", e))?;
    pem_text("request", b.build().to_pem().map_err(oom)?)
}

/// A self-signed X.509 v3 server certificate for `key`, valid from now for
/// `days` (1..=[`MAX_DAYS`]): random positive 16-byte serial,
/// basicConstraints CA:FALSE (critical), keyUsage digitalSignature (and
/// keyEncipherment for RSA; critical), extendedKeyUsage serverAuth,
/// subjectKeyIdentifier and the `sans`; signed by the key with SHA-256.
pub fn selfsigned_pem(key: &PKeyRef<Private>, subject: &str, sans: &[String], days: u32) -> Result<String, String> {
    if days == 0 || days > MAX_DAYS {
        return Err(format!("validity of {days} days is out of range; give 1 to {MAX_DAYS} days"));
    }
    let name = parse_subject(subject)?;
    let rsa = is_rsa(key)?;
    clear_stale_errors();
    let oom = |e: ErrorStack| format!("OpenSSL could not build the certificate: {e}");
    let mut b = X509Builder::new().map_err(oom)?;
    b.set_version(2).map_err(oom)?;
    let mut serial = [0u8; 16];
    openssl::rand::rand_bytes(&mut serial).map_err(|e| format!("no random numbers for the serial number: {e}"))?;
    // Positive (top bit clear) and a full 16 bytes (next bit set).
    serial[0] = (serial[0] & 0x3f) | 0x40;
    let serial = BigNum::from_slice(&serial).and_then(|bn| bn.to_asn1_integer()).map_err(oom)?;
    b.set_serial_number(&serial).map_err(oom)?;
    b.set_subject_name(&name).map_err(oom)?;
    b.set_issuer_name(&name).map_err(oom)?;
    let not_before = Asn1Time::days_from_now(0).map_err(oom)?;
    let not_after = Asn1Time::days_from_now(days).map_err(oom)?;
    b.set_not_before(&not_before).map_err(oom)?;
    b.set_not_after(&not_after).map_err(oom)?;
    b.set_pubkey(key).map_err(|e| format!("OpenSSL cannot put the token key's public key into the certificate: {e}"))?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(oom)?).map_err(oom)?;
    let mut ku = KeyUsage::new();
    ku.critical().digital_signature();
    if rsa {
        ku.key_encipherment();
    }
    b.append_extension(ku.build().map_err(oom)?).map_err(oom)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(oom)?).map_err(oom)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None)).map_err(oom)?;
    b.append_extension(ski).map_err(oom)?;
    let mut exts = Stack::new().map_err(oom)?;
    add_san_extension(&mut exts, sans, &b.x509v3_context(None, None))?;
    for ext in exts {
        b.append_extension(ext).map_err(oom)?;
    }
    b.sign(key, MessageDigest::sha256()).map_err(|e| sign_error("certificate", e))?;
    pem_text("certificate", b.build().to_pem().map_err(oom)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc2253(name: &X509Name) -> Vec<(String, String)> {
        name.entries().map(|e| (e.object().nid().short_name().unwrap().to_string(), e.data().as_utf8().unwrap().to_string())).collect()
    }

    #[test]
    fn subject_is_parsed_in_rfc4514_order_with_escapes() {
        let n = parse_subject("CN=www.example.com, O=Example\\, Ltd ,C=DE").unwrap();
        assert_eq!(rfc2253(&n), [("C", "DE"), ("O", "Example, Ltd"), ("CN", "www.example.com")].map(|(a, b)| (a.to_string(), b.to_string())));
        let n = parse_subject("cn=a\\=b\\\\c,ou=x,OU=y,dc=example,DC=com,emailaddress=a@b.c").unwrap();
        let e = rfc2253(&n);
        assert_eq!(e.last().unwrap(), &("CN".to_string(), "a=b\\c".to_string()));
        assert_eq!(e.len(), 6);
    }

    #[test]
    fn bad_subjects_are_refused_with_the_reason() {
        let err = |s: &str| parse_subject(s).err().expect("refused");
        let e = err("CN=www.example.com,XX=1");
        assert!(e.contains("unknown subject attribute 'XX'") && e.contains("known attributes: CN"), "{e}");
        let e = err("CN=a,Organisation=b");
        assert!(e.contains("'Organisation'"), "{e}");
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("give at least CN="));
        assert!(err("CN=www.example.com,O=Example, Ltd").contains("'Ltd' has no '='"));
        assert!(err("CN=").contains("empty value"));
        assert!(err("CN=a,C=Germany").contains("country code"));
        assert!(err("CN=a,C=de").contains("country code"));
        assert!(err("CN=a\\").contains("lone backslash"));
        assert!(err("CN=a,,O=b").contains("empty part"));
        assert!(err("CN=a,").contains("empty part"));
        assert!(err(&format!("CN={}", "a".repeat(65))).contains("longer than 64"));
        assert!(err("CN\\=x").contains("has no '='"));
    }

    #[test]
    fn sans_are_parsed_validated_and_normalised() {
        assert_eq!(
            parse_sans("DNS:www.example.com,DNS:Example.COM,IP:10.0.0.1,IP:::1, dns:*.example.org ,ip:2001:DB8:0::1").unwrap(),
            ["DNS:www.example.com", "DNS:example.com", "IP:10.0.0.1", "IP:::1", "DNS:*.example.org", "IP:2001:db8::1"]
        );
        assert_eq!(parse_sans("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_sans("DNS:localhost").unwrap(), ["DNS:localhost"]);
    }

    #[test]
    fn bad_sans_are_refused_with_the_reason() {
        let err = |s: &str| parse_sans(s).unwrap_err();
        assert!(err("www.example.com").contains("has no type"));
        assert!(err("URI:https://x").contains("unsupported type 'URI'"));
        assert!(err("DNS:a,,DNS:b").contains("empty entry"));
        assert!(err("DNS:a,").contains("empty entry"));
        assert!(err("DNS:").contains("empty host name"));
        assert!(err("DNS:exa mple.com").contains("character ' '"));
        assert!(err("DNS:under_score.example").contains("character '_'"));
        assert!(err("DNS:bücher.de").contains("punycode"));
        assert!(err("DNS:example.com.").contains("trailing dot"));
        assert!(err("DNS:a..b").contains("empty label"));
        assert!(err("DNS:-a.b").contains("starts or ends with '-'"));
        assert!(err("DNS:www.*.example.com").contains("wildcard"));
        assert!(err("DNS:*.").contains("wildcard needs a domain"));
        assert!(err("DNS:*").contains("whole first label"));
        assert!(err(&format!("DNS:{}.com", "a".repeat(64))).contains("longer than 63"));
        assert!(err("IP:10.0.0.256").contains("not an IPv4 or IPv6 address"));
        assert!(err("IP:www.example.com").contains("not an IPv4 or IPv6 address"));
        assert!(err("DNS:a.b,dns:A.B").contains("listed twice"));
    }

    fn file_key(rsa: bool) -> PKey<Private> {
        if rsa {
            PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
        } else {
            PKey::ec_gen("prime256v1").unwrap()
        }
    }

    /// The builders with an ordinary (file) key: what the token key must
    /// produce too (tests/keytool_x509.rs does that with real tokens).
    #[test]
    fn csr_and_certificate_carry_subject_sans_and_extensions() {
        for rsa in [true, false] {
            let key = file_key(rsa);
            let sans = parse_sans("DNS:www.example.com,IP:10.0.0.1").unwrap();
            let csr = csr_pem(&key, "CN=www.example.com,O=Example Ltd,C=DE", &sans).unwrap();
            let req = openssl::x509::X509Req::from_pem(csr.as_bytes()).unwrap();
            assert!(req.verify(&key).unwrap());
            assert_eq!(req.extensions().unwrap().len(), 1);
            let pem = selfsigned_pem(&key, "CN=www.example.com,O=Example Ltd,C=DE", &sans, 30).unwrap();
            let crt = openssl::x509::X509::from_pem(pem.as_bytes()).unwrap();
            assert!(crt.verify(&key).unwrap());
            assert_eq!(crt.version(), 2);
            let serial = crt.serial_number().to_bn().unwrap();
            assert_eq!((serial.num_bytes(), serial.is_negative()), (16, false));
            let alt = crt.subject_alt_names().unwrap();
            assert_eq!(alt.iter().filter_map(|g| g.dnsname()).collect::<Vec<_>>(), ["www.example.com"]);
            assert_eq!(alt.iter().filter_map(|g| g.ipaddress()).collect::<Vec<_>>(), [&[10u8, 0, 0, 1][..]]);
            assert!(crt.subject_key_id().is_some());
            assert_eq!(crt.signature_algorithm().object().nid(), if rsa { Nid::SHA256WITHRSAENCRYPTION } else { Nid::ECDSA_WITH_SHA256 });
            let text = String::from_utf8(crt.to_text().unwrap()).unwrap();
            assert!(text.contains("CA:FALSE") && text.contains("TLS Web Server Authentication"), "{text}");
            assert_eq!(text.contains("Key Encipherment"), rsa, "{text}");
        }
    }

    #[test]
    fn builders_refuse_bad_input_before_signing() {
        let key = file_key(false);
        assert!(selfsigned_pem(&key, "CN=a", &[], 0).unwrap_err().contains("give 1 to 36500 days"));
        assert!(selfsigned_pem(&key, "CN=a", &[], MAX_DAYS + 1).unwrap_err().contains("out of range"));
        assert!(selfsigned_pem(&key, "XX=a", &[], 1).unwrap_err().contains("unknown subject attribute 'XX'"));
        assert!(csr_pem(&key, "CN=a", &["DNS:a b".into()]).unwrap_err().contains("character ' '"));
        let csr = csr_pem(&key, "CN=a", &[]).unwrap();
        let req = openssl::x509::X509Req::from_pem(csr.as_bytes()).unwrap();
        assert!(req.extensions().map(|e| e.len()).unwrap_or(0) == 0);
    }
}
