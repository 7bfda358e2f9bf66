//! The key the server is about to use: whether it could leave the token
//! (CKA_SENSITIVE, CKA_EXTRACTABLE, ...), whether it may decrypt (RSA key
//! exchange), and whether the key a child finds again is still the one
//! checked at startup.

mod common;

use std::time::Duration;

use common::*;

const NOT_SENSITIVE: &str = "the private key is not sensitive (CKA_SENSITIVE is false)";
const NO_DECRYPT: &str = "the private key may not decrypt (CKA_DECRYPT is false), so it cannot do TLS 1.2 RSA key exchange";

/// A site whose vhost serves one RSA-2048 key made with `attrs`.
fn site_with(name: &str, attrs: &[(&str, bool)]) -> Site {
    let mut s = Site::new(name, Mpm::Event);
    s.token.gen_rsa_with("www-rsa", 2048, attrs);
    s.vhost("localhost", &["www-rsa"]);
    s
}

#[test]
fn an_rsa_key_that_may_not_decrypt_never_negotiates_rsa_key_exchange() {
    let mut s = site_with("nodecrypt", &[("decrypt", false)]);
    s.start();
    let log = s.apache.error_log();
    let lines: Vec<&str> = with_id(&log, "HSM00153").into_iter().filter(|l| l.contains(NO_DECRYPT)).collect();
    assert_eq!(lines.len(), 1, "not one startup warning:\n{log}");
    assert!(lines[0].contains("[hsm_ssl:warn]") && lines[0].contains("vhost localhost:"), "{}", lines[0]);
    // A client that offers only RSA key exchange: no shared cipher, and
    // the token is never asked to decrypt.
    let r = s.try_get(ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") });
    assert!(!r.ok && r.http_status.is_none(), "RSA key exchange negotiated:\n{}", r.raw);
    assert!(r.raw.contains("handshake failure"), "not a handshake_failure alert:\n{}", r.raw);
    assert_eq!(s.p11.count("C_DecryptInit"), 0, "the token was asked to decrypt");
    // Everything else still works.
    let r = s.get(ClientOpts { sigalgs: Some("RSA+SHA256".into()), ..tls("1.2") });
    assert!(r.cipher.as_deref().unwrap_or("").starts_with("ECDHE-RSA"), "{:?}", r.cipher);
    let r = s.get(tls("1.3"));
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    // A key made inside the token, sensitive and never extractable: no
    // protection notes at all.
    let log = s.apache.error_log();
    for note in ["HSM00150", "HSM00151", "HSM00152"] {
        assert!(!has_id(&log, note), "{note} for a well-protected key:\n{log}");
    }
}

#[test]
fn a_key_that_is_not_sensitive_is_refused_by_configtest_and_start_unless_allowed() {
    let mut s = site_with("nonsensitive", &[("sensitive", false)]);
    let uri = s.token.key_uri("www-rsa");
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "configtest accepted a non-sensitive key:\n{out}");
    let line = line_with_id(&out, "HSM00114");
    assert!(line.contains(NOT_SENSITIVE), "{line}");
    for part in ["vhost localhost (", uri.as_str(), "refused", "hsm-ssl-keytool generate", "HSMSSLAllowExportableKeys On"] {
        assert!(line.contains(part), "configtest line lacks {part:?}:\n{line}");
    }
    let e = s.try_start().expect_err("httpd started with a non-sensitive key");
    let line = line_with_id(&e.error_log, "HSM00102");
    assert!(line.contains(NOT_SENSITIVE) && line.contains(&uri) && line.contains("refused"), "{line}");

    s.global("HSMSSLAllowExportableKeys On");
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "configtest refused the key although allowed:\n{out}");
    assert!(line_with_id(&out, "HSM00150").contains("HSMSSLAllowExportableKeys is On"), "{out}");
    s.start();
    s.get(tls("1.3"));
    let log = s.apache.error_log();
    // The error log also holds the refusal of the first start.
    let line = line_with_id(&log, "HSM00150");
    assert!(line.contains("[hsm_ssl:warn]") && line.contains("vhost localhost:") && line.contains("HSMSSLAllowExportableKeys is On"), "{line}");
}

#[test]
fn an_extractable_but_sensitive_key_starts_with_a_warning() {
    let mut s = site_with("extractable", &[("sensitive", true), ("extractable", true)]);
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "{out}");
    assert!(has_id(&out, "HSM00151"), "configtest gave no warning:\n{out}");
    s.start();
    s.get(tls("1.3"));
    let log = s.apache.error_log();
    let warn = line_with_id(&log, "HSM00151");
    assert!(warn.contains("[hsm_ssl:warn]") && warn.contains("vhost localhost:") && warn.contains("CKA_EXTRACTABLE"), "{warn}");
    let info = line_with_id(&log, "HSM00152");
    assert!(info.contains("[hsm_ssl:info]"), "{info}");
    assert!(!has_id(&log, "HSM00150"), "{log}");
}

#[test]
fn a_key_replaced_on_the_token_after_startup_is_not_used() {
    let mut s = Site::new("keychange", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    s.global("ServerLimit 1\nStartServers 1\nMinSpareThreads 1\nMaxSpareThreads 25\nThreadsPerChild 25\nMaxRequestWorkers 25");
    s.start();
    s.get(tls("1.3"));
    let id = s.token.key("www-rsa").id_hex;
    // Another key under the same label and CKA_ID.
    for kind in ["privkey", "pubkey"] {
        run_ok(s.token.pkcs11_tool_login().args(["--delete-object", "--type", kind, "--label", "www-rsa"]));
    }
    run_ok(s.token.pkcs11_tool_login().args([
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        "www-rsa",
        "--id",
        &id,
        "--usage-sign",
        "--usage-decrypt",
        "--sensitive",
    ]));
    s.token.share();
    // A new child (or, with the key service, a new service) finds the key
    // again.
    let old_service = s.apache.key_service_pids();
    for pid in &old_service {
        // SAFETY: a plain signal to a process of the test's own server.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !old_service.is_empty() && s.apache.key_service_pids().iter().all(|p| old_service.contains(p)) {
        assert!(std::time::Instant::now() < deadline, "no new key service:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let old = s.apache.child_pids();
    for pid in &old {
        // SAFETY: a plain signal to a child of the test's own server.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.apache.child_pids().iter().all(|p| old.contains(p)) || s.apache.child_pids().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no new child:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let signs = s.p11.sign_ops();
    let r = s.try_get(tls("1.3"));
    assert!(!r.ok && r.http_status.is_none(), "served with a replaced key:\n{}", r.raw);
    assert_eq!(s.p11.sign_ops(), signs, "the replaced key was asked to sign");
    let log = s.apache.error_log();
    let line = with_any_id(&log, &["HSM00530", "HSM00304", "HSM00116"])
        .into_iter()
        .find(|l| l.contains("the key on the token changed since startup"))
        .unwrap_or_else(|| panic!("no log line about the changed key:\n{log}"));
    assert!(line.contains(&s.token.key_uri("www-rsa")) && line.contains("reload httpd"), "{line}");
}
