//! Rotation without downtime, as docs/operations.md tells it: a renewed
//! certificate, a new key and a new PIN each reach a running server with a
//! graceful restart while clients keep connecting, and no handshake fails.
//! (The docs' own commands run in tests/docs_commands.rs; this test adds
//! the load that shows nothing is dropped.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The first certificate the server sent, as s_client printed it.
fn served_cert(r: &TlsResult) -> String {
    let begin = r.raw.find("-----BEGIN CERTIFICATE-----").expect("no certificate in the s_client output");
    let end = r.raw[begin..].find("-----END CERTIFICATE-----").expect("unterminated certificate") + begin;
    r.raw[begin..end].to_string()
}

fn file_cert(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin;
    text[begin..end].to_string()
}

/// Writes the PIN file as HSMSSLPin file: wants it: root's, mode 0600.
fn write_pin(path: &Path, pin: &str) {
    std::fs::write(path, format!("{pin}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn certificate_key_and_pin_rotate_by_graceful_restart_under_load_without_a_failed_handshake() {
    let mut s = Site::new("rotation", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    // The PIN from a root-only file that httpd's parent reads at every
    // reload: the source that lets a PIN change without a full restart.
    let pin_dir = s.apache.root.join("hsm-ssl");
    std::fs::create_dir_all(&pin_dir).unwrap();
    std::fs::set_permissions(&pin_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let pin_file = pin_dir.join("hsm-ssl-pin");
    write_pin(&pin_file, &s.token.pin);
    let pin_line = format!("HSMSSLPin file:{}", pin_file.display());
    s.apache.reconfigure(|c| c.global = c.global.replace("HSMSSLPin env:HSM_TEST_PIN", &pin_line));
    s.start();
    let first = s.get(tls("1.3"));
    let load = Load::start(s.apache.port, &s.ca, 8);
    std::thread::sleep(Duration::from_secs(1));

    // 1. A renewed certificate for the same key, in the same file.
    let cert = s.cert("www-rsa", "localhost");
    let renewed = file_cert(&cert);
    assert_ne!(served_cert(&first), renewed, "the test CA issued the same certificate twice");
    s.apache.graceful().expect("graceful after the certificate");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(served_cert(&s.get(tls("1.3"))), renewed, "the renewed certificate is not served");

    // 2. A new key under a new label; the vhost's two lines change.
    s.key("www-rsa-2027", "rsa:2048");
    s.apache.reconfigure(|c| c.vhosts.clear());
    s.vhost("localhost", &["www-rsa-2027"]);
    s.apache.graceful().expect("graceful after the new key");
    std::thread::sleep(Duration::from_secs(1));
    let r = s.get(tls("1.2"));
    assert!(
        r.raw.contains("CN = www-rsa-2027.localhost") || r.raw.contains("CN=www-rsa-2027.localhost"),
        "the new key's certificate is not served:\n{}",
        r.raw
    );
    // The old key goes once the old key service has ended.
    std::thread::sleep(Duration::from_secs(2));
    run_ok(s.token.pkcs11_tool_login().args(["--delete-object", "--type", "privkey", "--label", "www-rsa"]));

    // 3. A new PIN: first on the token (the running service stays logged
    // in), then in the file, then a graceful restart.
    let new_pin = "rotated-PIN-2027";
    s.token.set_pin(new_pin);
    std::thread::sleep(Duration::from_secs(1));
    write_pin(&pin_file, new_pin);
    let logins_before = s.apache.error_log().lines().filter(|l| has_id(l, "HSM00104")).count();
    s.apache.graceful().expect("graceful after the new PIN");
    std::thread::sleep(Duration::from_secs(2));
    s.get(tls("1.3"));

    let outcomes = load.stop();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).collect();
    let log = s.apache.error_log();
    eprintln!("rotation: {} handshakes under load, {} failed", outcomes.len(), failed.len());
    assert!(outcomes.len() > 100, "only {} handshakes under load", outcomes.len());
    assert!(failed.is_empty(), "{} failed handshakes, first: {:?}\n{log}", failed.len(), failed[0].error);
    assert!(!log.contains("CKR_PIN_INCORRECT"), "a login was refused:\n{log}");
    let keys_found_after = log.lines().filter(|l| has_id(l, "HSM00104")).count();
    assert!(keys_found_after > logins_before, "the reload after the PIN change found no key:\n{log}");
}
