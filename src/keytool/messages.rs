//! How the key tool words the errors of the layers below: it names the
//! option the user gave (`--pin`, `--passphrase`), not httpd's
//! directives, and speaks of the shell it runs in.

use crate::pkcs11::pin::{PinError, PinProblem};
use crate::pkcs11::settings::Setting;
use crate::pkcs11::uri::{SelectorError, UriError};

/// The option behind each setting the token layer's messages name.
pub fn option(s: Setting) -> &'static str {
    match s {
        Setting::Library => "--library",
        Setting::Pin => "--pin",
        Setting::Token => "--token",
        Setting::OperationTimeout => "the tool's token timeout",
        Setting::MaxSessions => "the tool's session limit",
    }
}

/// A PIN or passphrase source, given with `option`, that gives nothing.
pub fn pin(option: &str, e: &PinError) -> String {
    match &e.problem {
        PinProblem::EnvUnset => {
            format!("{option} {}: the variable is not set in this shell's environment (export it, or use {option} file:/path)", e.source)
        }
        PinProblem::UnexpandedVariable(var) => format!("{option} {}: the variable {var} is not set in this shell's environment", e.source),
        _ => format!("{option} {e}"),
    }
}

/// A key URI given to the tool that is not one.
pub fn key_uri(e: &UriError) -> String {
    match e {
        UriError::PinAttribute(n) => format!("{n} is refused in a key URI: give the PIN with --pin env:VAR|file:/path|exec:/program"),
        UriError::ModuleAttribute(n) => format!("{n} is not accepted in the key URI: --library names the PKCS#11 library"),
        _ => e.to_string(),
    }
}

/// A `--token` argument that is not a token selector.
pub fn token(e: &SelectorError) -> String {
    match e {
        SelectorError::Uri(s, u) => format!("--token '{s}': {}", key_uri(u)),
        _ => format!("--token {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs11::pin::PinSource;

    #[test]
    fn pin_errors_name_the_option_and_the_shell() {
        let e = PinSource::parse("env:").unwrap_err();
        assert_eq!(pin("--pin", &e).split(':').next(), Some("--pin 'env"));
        let e = PinSource::Env("HSM_KEYTOOL_MESSAGES_TEST_UNSET".into()).read().unwrap_err();
        let m = pin("--passphrase", &e);
        assert!(m.starts_with("--passphrase env:HSM_KEYTOOL_MESSAGES_TEST_UNSET: the variable is not set in this shell's environment"), "{m}");
        assert!(!m.contains("HSMSSL") && !m.contains("httpd"), "{m}");
    }

    #[test]
    fn uri_errors_name_the_tools_options() {
        use crate::pkcs11::uri::{KeyUri, TokenSelector};
        let m = key_uri(&KeyUri::parse("pkcs11:object=k?pin-value=1234").unwrap_err());
        assert!(m.contains("--pin env:VAR") && !m.contains("HSMSSL") && !m.contains("1234"), "{m}");
        let m = token(&TokenSelector::parse_directive("").unwrap_err());
        assert_eq!(m, "--token empty token label");
    }
}
