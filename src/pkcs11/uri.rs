//! RFC 7512 `pkcs11:` URIs naming a private key, as written in
//! `SSLCertificateKeyFile`, and token selectors (`HSMSSLToken`).
//!
//! Only what names a token and a private key is accepted. PIN attributes are
//! refused: mod_ssl logs key URIs in clear text, so a PIN has no place there;
//! it comes from `HSMSSLPin`.

use std::fmt;

/// Which token a key lives on. Empty means "the only token there is"
/// (or the one `HSMSSLToken` names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenSelector {
    pub label: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
}

impl TokenSelector {
    pub fn is_empty(&self) -> bool {
        *self == TokenSelector::default()
    }

    /// `HSMSSLToken`: a bare token label, or a `pkcs11:` URI with token
    /// attributes only.
    pub fn parse_directive(s: &str) -> Result<TokenSelector, String> {
        if s.starts_with("pkcs11:") {
            let uri = KeyUri::parse_inner(s, false)?;
            if uri.object.is_some() || uri.id.is_some() {
                return Err(format!("HSMSSLToken '{s}': give token attributes only (token=, serial=, manufacturer=, model=, slot-id=)"));
            }
            if uri.token.is_empty() {
                return Err(format!("HSMSSLToken '{s}': no token attribute given"));
            }
            Ok(uri.token)
        } else if s.is_empty() {
            Err("HSMSSLToken: empty token label".to_string())
        } else {
            Ok(TokenSelector { label: Some(s.to_string()), ..Default::default() })
        }
    }
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = &self.label {
            parts.push(format!("token={v}"));
        }
        if let Some(v) = &self.serial {
            parts.push(format!("serial={v}"));
        }
        if let Some(v) = &self.manufacturer {
            parts.push(format!("manufacturer={v}"));
        }
        if let Some(v) = &self.model {
            parts.push(format!("model={v}"));
        }
        if let Some(v) = &self.slot_id {
            parts.push(format!("slot-id={v}"));
        }
        if parts.is_empty() {
            f.write_str("(any token)")
        } else {
            f.write_str(&parts.join(";"))
        }
    }
}

/// A parsed key URI.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyUri {
    pub token: TokenSelector,
    /// `object=`: the key's CKA_LABEL.
    pub object: Option<String>,
    /// `id=`: the key's CKA_ID (percent-decoded bytes).
    pub id: Option<Vec<u8>>,
}

const PATH_ATTRS: &[&str] = &[
    "token",
    "manufacturer",
    "serial",
    "model",
    "slot-id",
    "object",
    "id",
    "type",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-description",
    "slot-manufacturer",
];

impl KeyUri {
    /// Parses `SSLCertificateKeyFile "pkcs11:..."`.
    pub fn parse(s: &str) -> Result<KeyUri, String> {
        let uri = Self::parse_inner(s, true)?;
        if uri.object.is_none() && uri.id.is_none() {
            return Err("the URI names no key: add object=<label> and/or id=<CKA_ID>".to_string());
        }
        Ok(uri)
    }

    fn parse_inner(s: &str, key: bool) -> Result<KeyUri, String> {
        let rest = s.strip_prefix("pkcs11:").ok_or_else(|| "a PKCS#11 URI starts with 'pkcs11:'".to_string())?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = KeyUri::default();
        let mut seen: Vec<&str> = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr.split_once('=').ok_or_else(|| format!("attribute '{attr}' has no '=value'"))?;
            if !PATH_ATTRS.contains(&name) {
                if name.starts_with("pin-") {
                    return Err(pin_refusal(name));
                }
                return Err(format!("unknown attribute '{name}' (known: token, serial, manufacturer, model, slot-id, object, id, type)"));
            }
            if seen.contains(&name) {
                return Err(format!("attribute '{name}' given twice"));
            }
            seen.push(name);
            let value = percent_decode(raw).map_err(|e| format!("attribute '{name}': {e}"))?;
            let text = || String::from_utf8(value.clone()).map_err(|_| format!("attribute '{name}' is not valid UTF-8 after percent-decoding"));
            match name {
                "token" => uri.token.label = Some(nonempty(name, text()?)?),
                "serial" => uri.token.serial = Some(nonempty(name, text()?)?),
                "manufacturer" => uri.token.manufacturer = Some(nonempty(name, text()?)?),
                "model" => uri.token.model = Some(nonempty(name, text()?)?),
                "slot-id" => {
                    let t = text()?;
                    uri.token.slot_id = Some(t.parse().map_err(|_| format!("slot-id '{t}' is not a decimal number"))?)
                }
                "object" => uri.object = Some(nonempty(name, text()?)?),
                "id" => {
                    if value.is_empty() {
                        return Err("id= is empty".to_string());
                    }
                    uri.id = Some(value)
                }
                "type" => {
                    let t = text()?;
                    if key && t != "private" {
                        return Err(format!("type={t}: SSLCertificateKeyFile must name a private key (type=private or no type)"));
                    }
                }
                // Library and slot descriptions do not select anything here:
                // HSMSSLLibrary names the library.
                _ => {}
            }
        }
        // Every query attribute is refused: PINs come from HSMSSLPin and the
        // library from HSMSSLLibrary.
        if let Some(attr) = query.and_then(|q| q.split('&').find(|a| !a.is_empty())) {
            let name = attr.split_once('=').map(|(n, _)| n).unwrap_or(attr);
            return Err(match name {
                "pin-value" | "pin-source" => pin_refusal(name),
                "module-name" | "module-path" => {
                    format!("{name} is not accepted in the key URI: HSMSSLLibrary names the PKCS#11 library")
                }
                _ => format!("unknown query attribute '{name}'"),
            });
        }
        Ok(uri)
    }
}

fn pin_refusal(name: &str) -> String {
    format!(
        "{name} is refused in a key URI: mod_ssl logs key URIs in clear text; \
         remove it and give the PIN with HSMSSLPin env:VAR|file:/path|exec:/program"
    )
}

fn nonempty(name: &str, v: String) -> Result<String, String> {
    if v.is_empty() {
        Err(format!("{name}= is empty"))
    } else {
        Ok(v)
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(|| format!("bad percent-encoding in '{s}'"))?;
            let h = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| format!("bad percent-encoding in '{s}'"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The URI as it may appear in a log line: the values of `pin-value` and
/// `pin-source`, wherever they are written, replaced by `***`.
pub fn redacted(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = ["pin-value=", "pin-source="].iter().filter_map(|k| rest.find(k).map(|p| p + k.len())).min() {
        out.push_str(&rest[..pos]);
        out.push_str("***");
        rest = &rest[pos..];
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Hex form of a CKA_ID, for messages.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_label_id_token_and_percent_decoding() {
        let u = KeyUri::parse("pkcs11:token=web%20tier;object=www-rsa;id=%01%A0;type=private").unwrap();
        assert_eq!(u.token.label.as_deref(), Some("web tier"));
        assert_eq!(u.object.as_deref(), Some("www-rsa"));
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xa0][..]));
    }

    #[test]
    fn refuses_pins_unknown_attributes_and_bad_encoding() {
        for (uri, needle) in [
            ("pkcs11:object=k?pin-value=1234", "HSMSSLPin"),
            ("pkcs11:object=k?pin-source=file:/x", "HSMSSLPin"),
            ("pkcs11:object=k;pin-value=1234", "HSMSSLPin"),
            ("pkcs11:object=k;colour=red", "unknown attribute"),
            ("pkcs11:object=k%2", "percent"),
            ("pkcs11:object=k%zz", "percent"),
            ("pkcs11:object=", "empty"),
            ("pkcs11:token=t", "names no key"),
            ("pkcs11:object=k;type=cert", "private key"),
            ("pkcs11:object=a;object=b", "twice"),
            ("pkcs11:object=k?module-path=/x.so", "HSMSSLLibrary"),
        ] {
            let e = KeyUri::parse(uri).unwrap_err();
            assert!(e.contains(needle), "{uri}: {e}");
            assert!(!e.contains("1234"), "PIN echoed: {e}");
        }
    }

    #[test]
    fn redaction_hides_pin_values_and_keeps_the_rest() {
        assert_eq!(redacted("pkcs11:object=k?pin-value=1234"), "pkcs11:object=k?pin-value=***");
        assert_eq!(redacted("pkcs11:pin-value=9;object=k?pin-source=file:/p&x=1"), "pkcs11:pin-value=***;object=k?pin-source=***&x=1");
        assert_eq!(redacted("pkcs11:object=k"), "pkcs11:object=k");
    }

    #[test]
    fn token_directive_takes_label_or_token_uri() {
        assert_eq!(TokenSelector::parse_directive("web").unwrap().label.as_deref(), Some("web"));
        let t = TokenSelector::parse_directive("pkcs11:serial=abc;model=SoftHSM%20v2").unwrap();
        assert_eq!(t.serial.as_deref(), Some("abc"));
        assert_eq!(t.model.as_deref(), Some("SoftHSM v2"));
        assert!(TokenSelector::parse_directive("pkcs11:object=k").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Strings built from the characters that matter to the grammar, so
    /// that random inputs reach deep into the parser.
    fn uri_like() -> impl Strategy<Value = String> {
        proptest::string::string_regex("(pkcs11:)?[a-z=;%?&:0-9A-Fa-f\\-_ é\\x00]{0,60}").expect("valid regex")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn any_input_parses_or_errs_never_panics(s in uri_like()) {
            let _ = KeyUri::parse(&s);
            let _ = TokenSelector::parse_directive(&s);
            let _ = redacted(&s);
        }

        #[test]
        fn arbitrary_unicode_never_panics(s in any::<String>()) {
            let _ = KeyUri::parse(&s);
            let _ = KeyUri::parse(&format!("pkcs11:{s}"));
            let _ = TokenSelector::parse_directive(&format!("pkcs11:{s}"));
        }

        #[test]
        fn percent_encoded_labels_round_trip(label in "[ -~]{1,40}") {
            let enc: String = label.bytes().map(|b| format!("%{b:02X}")).collect();
            let u = KeyUri::parse(&format!("pkcs11:object={enc}")).expect("valid URI");
            prop_assert_eq!(u.object.as_deref(), Some(label.as_str()));
        }

        #[test]
        fn redaction_removes_every_pin_value(pin in "[A-Za-z0-9:]{4,20}", pre in "[a-z=;]{0,10}") {
            let shown = redacted(&format!("pkcs11:{pre}object=k?pin-value={pin}"));
            let leaked = format!("pin-value={}", pin);
            prop_assert!(!shown.contains(&leaked));
        }
    }
}
