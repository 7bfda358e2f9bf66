//! The manual pages, made from the same sources as the rest: hsm-ssl-keytool(8)
//! from the clap definition (`cli::Cli`), mod_hsm_ssl(8) from the module's
//! directive list (`crate::directives`, which httpd's command table is made
//! from). `hsm-ssl-keytool manpage [--module]` prints them; the RPM and
//! apxs/install.sh install them.

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};

use super::cli::Cli;
use super::tool::{fail, Code, Res};

/// hsm-ssl-keytool(8).
pub fn keytool() -> Res<String> {
    let cmd = Cli::command().name("hsm-ssl-keytool");
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd).section("8");
    man.render(&mut out).map_err(|e| fail(Code::Other, format!("manual page: {e}")))?;
    // Each command's options, which the generated page only lists by name.
    let mut more = Roff::new();
    more.control("SH", ["COMMAND OPTIONS"]);
    for sub in Cli::command().get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        more.control("SS", [sub.get_name()]);
        if let Some(about) = sub.get_about() {
            more.text([roman(about.to_string())]);
        }
        for arg in sub.get_arguments().filter(|a| !a.is_global_set() && a.get_id() != "help") {
            let name = match (arg.get_long(), arg.get_value_names()) {
                (Some(l), Some(v)) => format!("--{l} {}", v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" ")),
                (Some(l), None) => format!("--{l}"),
                (None, Some(v)) => v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
                (None, None) => arg.get_id().to_string(),
            };
            more.control("TP", []).text([bold(name)]);
            if let Some(h) = arg.get_help() {
                more.text([roman(h.to_string())]);
            }
        }
    }
    more.control("SH", ["SEE ALSO"]).text([bold("mod_hsm_ssl"), roman("(8), "), bold("httpd"), roman("(8)")]);
    let mut page = String::from_utf8_lossy(&out).into_owned();
    page.push_str(&more.to_roff());
    Ok(page)
}

/// mod_hsm_ssl(8).
pub fn module() -> String {
    let mut r = Roff::new();
    r.control("TH", ["MOD_HSM_SSL", "8", "", concat!("mod_hsm_ssl ", env!("CARGO_PKG_VERSION")), "Apache httpd modules"]);
    r.control("SH", ["NAME"]).text([roman("mod_hsm_ssl - TLS private keys for Apache httpd's mod_ssl that stay inside a PKCS#11 HSM")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([roman("LoadModule hsm_ssl_module modules/mod_hsm_ssl.so")]).control("br", []);
    r.text([roman("HSMSSLLibrary /opt/cloudhsm/lib/libcloudhsm_pkcs11.so")]).control("br", []);
    r.text([roman("HSMSSLPin file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin")]).control("br", []);
    r.text([roman("SSLCertificateKeyFile \"pkcs11:object=www-rsa\"")]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "mod_hsm_ssl lets mod_ssl serve HTTPS with private keys that never leave a hardware security module. \
         SSLCertificateKeyFile names the key by a pkcs11: URI (RFC 7512) instead of a file; each full handshake's \
         private-key operation (a signature, or the decryption of a TLS 1.2 RSA key exchange) is done by the token. \
         One key service process per server loads the PKCS#11 library, logs in and holds the sessions; the children \
         that parse requests never hold the PIN. apachectl configtest finds every key and checks it against its \
         certificate; nothing falls back to a software key.",
    )]);
    r.control("SH", ["DIRECTIVES"]);
    r.text([roman("All belong in the main server configuration (not in a <VirtualHost>).")]);
    for d in crate::directives::ALL {
        r.control("TP", []).text([bold(d.name()), roman(" "), italic(d.syntax)]);
        // The help texts httpd shows mostly name the default already.
        let help = capitalized(d.help());
        let text = if help.to_lowercase().contains("default") { format!("{help}.") } else { format!("{help}. Default: {}.", d.default) };
        r.text([roman(text)]);
    }
    r.control("SH", ["KEY URIS"]);
    r.text([roman(
        "pkcs11:token=LABEL;object=LABEL[;id=%XX...][;serial=...]: the token and the private key's label (and \
         CKA_ID when labels repeat). A PIN in the URI (pin-value, pin-source) is refused: use HSMSSLPin.",
    )]);
    r.control("SH", ["HANDLERS"]);
    r.text([
        bold("hsm-ssl-status"),
        roman(" (HTML, ?json), "),
        bold("hsm-ssl-metrics"),
        roman(" (Prometheus), "),
        bold("hsm-ssl-health"),
        roman(" (200 or 503 for load balancers): SetHandler values; restrict them with Require."),
    ]);
    r.control("SH", ["DIAGNOSTICS"]);
    r.text([roman(
        "Every error_log line of the module starts with a stable message ID (HSMnnnnn); LogLevel hsm_ssl:debug shows \
         the details. The IDs, their meaning and what to do are listed in docs/messages.md.",
    )]);
    r.control("SH", ["FILES"]);
    r.text([roman("/usr/share/mod_hsm_ssl/docs/ (the documentation), /usr/share/mod_hsm_ssl/httpd-conf/ (examples)")]);
    r.control("SH", ["SEE ALSO"]).text([bold("hsm-ssl-keytool"), roman("(8), "), bold("httpd"), roman("(8), "), bold("apachectl"), roman("(8)")]);
    r.to_roff()
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}
