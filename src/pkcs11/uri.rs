//! RFC 7512 `pkcs11:` URIs naming a private key, as written in
//! `SSLCertificateKeyFile`, and token selectors (`HSMSSLToken`).
//!
//! Only what names a token and a private key is accepted. PIN attributes are
//! refused: mod_ssl logs key URIs in clear text, so a PIN has no place there;
//! it comes from `HSMSSLPin` (the key tool's `--pin`).
//!
//! Errors ([`UriError`], [`SelectorError`]) do not name the directive or
//! option the text came from; each front end does.

use std::fmt;

/// Why a text is not a key URI (or token URI) this module accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UriError {
    NotPkcs11,
    /// Neither `object=` nor `id=`.
    NoKey,
    NoValue(String),
    UnknownAttribute(String),
    Twice(String),
    BadPercent(String),
    NotUtf8(String),
    SlotIdNotNumber(String),
    Empty(String),
    /// `type=` other than `private` in a key URI.
    NotPrivate(String),
    /// `pin-value` or `pin-source`: the PIN is given apart.
    PinAttribute(String),
    /// `module-name` or `module-path`: the library is given apart.
    ModuleAttribute(String),
    UnknownQuery(String),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::NotPkcs11 => f.write_str("a PKCS#11 URI starts with 'pkcs11:'"),
            UriError::NoKey => f.write_str("the URI names no key: add object=<label> and/or id=<CKA_ID>"),
            UriError::NoValue(a) => write!(f, "attribute '{a}' has no '=value'"),
            UriError::UnknownAttribute(n) => {
                write!(f, "unknown attribute '{n}' (known: token, serial, manufacturer, model, slot-id, object, id, type)")
            }
            UriError::Twice(n) => write!(f, "attribute '{n}' given twice"),
            UriError::BadPercent(v) => write!(f, "bad percent-encoding in '{v}'"),
            UriError::NotUtf8(n) => write!(f, "attribute '{n}' is not valid UTF-8 after percent-decoding"),
            UriError::SlotIdNotNumber(t) => write!(f, "slot-id '{t}' is not a decimal number"),
            UriError::Empty(n) => write!(f, "{n}= is empty"),
            UriError::NotPrivate(t) => write!(f, "type={t}: the URI must name a private key (type=private or no type)"),
            UriError::PinAttribute(n) => {
                write!(f, "{n} is refused in a key URI: key URIs are logged in clear text; remove it and give the PIN apart")
            }
            UriError::ModuleAttribute(n) => write!(f, "{n} is not accepted in the key URI: the PKCS#11 library is configured apart"),
            UriError::UnknownQuery(n) => write!(f, "unknown query attribute '{n}'"),
        }
    }
}

impl std::error::Error for UriError {}

/// Why a token selector (a bare label, or a `pkcs11:` URI with token
/// attributes only) is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorError {
    /// The URI names a key, not only a token.
    KeyAttributes(String),
    NoTokenAttribute(String),
    EmptyLabel,
    Uri(String, UriError),
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectorError::KeyAttributes(s) => write!(f, "'{s}': give token attributes only (token=, serial=, manufacturer=, model=, slot-id=)"),
            SelectorError::NoTokenAttribute(s) => write!(f, "'{s}': no token attribute given"),
            SelectorError::EmptyLabel => f.write_str("empty token label"),
            SelectorError::Uri(s, e) => write!(f, "'{s}': {e}"),
        }
    }
}

impl std::error::Error for SelectorError {}

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
    pub fn parse_directive(s: &str) -> Result<TokenSelector, SelectorError> {
        if s.starts_with("pkcs11:") {
            let uri = KeyUri::parse_inner(s, false).map_err(|e| SelectorError::Uri(s.to_string(), e))?;
            if uri.object.is_some() || uri.id.is_some() {
                return Err(SelectorError::KeyAttributes(s.to_string()));
            }
            if uri.token.is_empty() {
                return Err(SelectorError::NoTokenAttribute(s.to_string()));
            }
            Ok(uri.token)
        } else if s.is_empty() {
            Err(SelectorError::EmptyLabel)
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
    pub fn parse(s: &str) -> Result<KeyUri, UriError> {
        let uri = Self::parse_inner(s, true)?;
        if uri.object.is_none() && uri.id.is_none() {
            return Err(UriError::NoKey);
        }
        Ok(uri)
    }

    fn parse_inner(s: &str, key: bool) -> Result<KeyUri, UriError> {
        let rest = s.strip_prefix("pkcs11:").ok_or(UriError::NotPkcs11)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = KeyUri::default();
        let mut seen: Vec<&str> = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr.split_once('=').ok_or_else(|| UriError::NoValue(attr.to_string()))?;
            if !PATH_ATTRS.contains(&name) {
                if name.starts_with("pin-") {
                    return Err(UriError::PinAttribute(name.to_string()));
                }
                return Err(UriError::UnknownAttribute(name.to_string()));
            }
            if seen.contains(&name) {
                return Err(UriError::Twice(name.to_string()));
            }
            seen.push(name);
            let value = percent_decode(raw)?;
            let text = || String::from_utf8(value.clone()).map_err(|_| UriError::NotUtf8(name.to_string()));
            match name {
                "token" => uri.token.label = Some(nonempty(name, text()?)?),
                "serial" => uri.token.serial = Some(nonempty(name, text()?)?),
                "manufacturer" => uri.token.manufacturer = Some(nonempty(name, text()?)?),
                "model" => uri.token.model = Some(nonempty(name, text()?)?),
                "slot-id" => {
                    let t = text()?;
                    uri.token.slot_id = Some(t.parse().map_err(|_| UriError::SlotIdNotNumber(t.clone()))?)
                }
                "object" => uri.object = Some(nonempty(name, text()?)?),
                "id" => {
                    if value.is_empty() {
                        return Err(UriError::Empty(name.to_string()));
                    }
                    uri.id = Some(value)
                }
                "type" => {
                    let t = text()?;
                    if key && t != "private" {
                        return Err(UriError::NotPrivate(t));
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
                "pin-value" | "pin-source" => UriError::PinAttribute(name.to_string()),
                "module-name" | "module-path" => UriError::ModuleAttribute(name.to_string()),
                _ => UriError::UnknownQuery(name.to_string()),
            });
        }
        Ok(uri)
    }
}

fn nonempty(name: &str, v: String) -> Result<String, UriError> {
    if v.is_empty() {
        Err(UriError::Empty(name.to_string()))
    } else {
        Ok(v)
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(|| UriError::BadPercent(s.to_string()))?;
            let h = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| UriError::BadPercent(s.to_string()))?;
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
        let s = |t: &str| t.to_string();
        for (uri, expected) in [
            ("pkcs11:object=k?pin-value=1234", UriError::PinAttribute(s("pin-value"))),
            ("pkcs11:object=k?pin-source=file:/x", UriError::PinAttribute(s("pin-source"))),
            ("pkcs11:object=k;pin-value=1234", UriError::PinAttribute(s("pin-value"))),
            ("pkcs11:object=k;colour=red", UriError::UnknownAttribute(s("colour"))),
            ("pkcs11:object=k%2", UriError::BadPercent(s("k%2"))),
            ("pkcs11:object=k%zz", UriError::BadPercent(s("k%zz"))),
            ("pkcs11:object=", UriError::Empty(s("object"))),
            ("pkcs11:token=t", UriError::NoKey),
            ("pkcs11:object=k;type=cert", UriError::NotPrivate(s("cert"))),
            ("pkcs11:object=a;object=b", UriError::Twice(s("object"))),
            ("pkcs11:object=k?module-path=/x.so", UriError::ModuleAttribute(s("module-path"))),
        ] {
            let e = KeyUri::parse(uri).unwrap_err();
            assert_eq!(e, expected, "{uri}");
            assert!(!e.to_string().contains("1234"), "PIN echoed: {e}");
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
