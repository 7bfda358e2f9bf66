//! How httpd's error_log and configtest word the errors of the layers
//! below: those layers say what went wrong without naming the directive
//! that led there; httpd names it, and adds the advice that depends on
//! running under httpd (its environment, systemd, graceful restarts).

use crate::pkcs11::pin::{PinError, PinProblem};
use crate::pkcs11::settings::Setting;
use crate::pkcs11::uri::{SelectorError, UriError};

/// The directive behind each setting the token layer's messages name.
pub fn directive(s: Setting) -> &'static str {
    match s {
        Setting::Library => "HSMSSLLibrary",
        Setting::Pin => "HSMSSLPin",
        Setting::Token => "HSMSSLToken",
        Setting::OperationTimeout => "HSMSSLOperationTimeout",
        Setting::MaxSessions => "HSMSSLMaxSessions",
    }
}

/// An `HSMSSLPin` source that gives no PIN.
pub fn pin(e: &PinError) -> String {
    match &e.problem {
        PinProblem::EnvUnset => format!(
            "HSMSSLPin {}: the variable is not set in httpd's environment \
             (set it where the service gets its environment, e.g. /etc/sysconfig/httpd \
             or /etc/apache2/envvars, then stop and start httpd: a graceful restart keeps the PIN read at start)",
            e.source
        ),
        PinProblem::UnexpandedVariable(var) => {
            let mut msg = format!("HSMSSLPin {}: the variable {var} is not set in httpd's environment", e.source);
            if var == "CREDENTIALS_DIRECTORY" {
                msg.push_str(
                    "; systemd sets it for httpd.service from LoadCredential= (the drop-in \
                     /usr/lib/systemd/system/httpd.service.d/hsm_ssl.conf): start httpd with systemctl, \
                     and check the configuration from a shell with \
                     'CREDENTIALS_DIRECTORY=/etc/httpd/hsm-ssl apachectl configtest'",
                );
            }
            msg
        }
        _ => format!("HSMSSLPin {e}"),
    }
}

/// A key URI (`SSLCertificateKeyFile "pkcs11:..."`) that is not one.
pub fn key_uri(e: &UriError) -> String {
    match e {
        UriError::PinAttribute(n) => format!(
            "{n} is refused in a key URI: mod_ssl logs key URIs in clear text; \
             remove it and give the PIN with HSMSSLPin env:VAR|file:/path|exec:/program"
        ),
        UriError::ModuleAttribute(n) => format!("{n} is not accepted in the key URI: HSMSSLLibrary names the PKCS#11 library"),
        UriError::NotPrivate(t) => format!("type={t}: SSLCertificateKeyFile must name a private key (type=private or no type)"),
        _ => e.to_string(),
    }
}

/// An `HSMSSLToken` argument that is not a token selector.
pub fn token(e: &SelectorError) -> String {
    match e {
        SelectorError::Uri(s, u) => format!("HSMSSLToken '{s}': {}", key_uri(u)),
        _ => format!("HSMSSLToken {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs11::pin::PinSource;

    #[test]
    fn pin_errors_name_the_directive_and_httpds_environment() {
        let e = PinSource::parse("nonsense").unwrap_err();
        assert!(pin(&e).starts_with("HSMSSLPin 'nonsense' is not a PIN source"), "{}", pin(&e));
        let e = PinSource::Env("HSM_MESSAGES_TEST_UNSET".into()).read().unwrap_err();
        assert!(pin(&e).contains("HSMSSLPin env:HSM_MESSAGES_TEST_UNSET: the variable is not set in httpd's environment"), "{}", pin(&e));
        let e = PinSource::parse("file:${CREDENTIALS_DIRECTORY}/pin").unwrap().read().unwrap_err();
        let m = pin(&e);
        assert!(m.contains("the variable CREDENTIALS_DIRECTORY is not set in httpd's environment") && m.contains("LoadCredential="), "{m}");
    }

    #[test]
    fn uri_errors_name_httpds_directives() {
        use crate::pkcs11::uri::{KeyUri, TokenSelector};
        let m = key_uri(&KeyUri::parse("pkcs11:object=k?pin-value=1234").unwrap_err());
        assert!(m.contains("HSMSSLPin env:VAR") && !m.contains("1234"), "{m}");
        assert!(key_uri(&KeyUri::parse("pkcs11:object=k?module-path=/x").unwrap_err()).contains("HSMSSLLibrary names"));
        let m = token(&TokenSelector::parse_directive("pkcs11:object=k").unwrap_err());
        assert!(m.starts_with("HSMSSLToken 'pkcs11:object=k': give token attributes only"), "{m}");
    }
}
