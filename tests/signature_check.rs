//! A faulty signature from the token never reaches a client: every
//! signature is verified against the key's public half before it is sent
//! (a faulty RSA-CRT signature would reveal the private key). The fault
//! wrapper's `corrupt C_Sign` flips one byte of what the token returns.

mod common;

use common::*;

/// One vhost with an RSA-2048 and a P-256 key, and the three kinds of
/// signature a handshake can ask for: (what, client options, peer
/// signature type the client reports when it works).
fn setup(name: &str) -> (Site, Vec<(&'static str, ClientOpts, &'static str)>) {
    let mut s = Site::new(name, Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.key("www-ec", "ec:P-256");
    s.vhost("localhost", &["www-rsa", "www-ec"]);
    s.start();
    let handshakes = vec![
        ("TLS 1.3 RSA-PSS", ClientOpts { sigalgs: Some("rsa_pss_rsae_sha256".into()), ..tls("1.3") }, "RSA-PSS"),
        (
            "TLS 1.2 ECDHE-RSA PKCS#1",
            ClientOpts { cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()), sigalgs: Some("RSA+SHA256".into()), ..tls("1.2") },
            "RSA",
        ),
        ("TLS 1.3 ECDSA", ClientOpts { sigalgs: Some("ECDSA+SHA256".into()), ..tls("1.3") }, "ECDSA"),
    ];
    (s, handshakes)
}

const NOT_SENT: &str = "does not verify against the key's public half";

#[test]
fn a_signature_that_does_not_verify_is_never_sent_and_fails_the_handshake_with_an_alert() {
    let (s, handshakes) = setup("sigcorrupt");
    for (what, o, sig_type) in &handshakes {
        let r = s.get(o.clone());
        assert_eq!(r.peer_sig_type.as_deref(), Some(*sig_type), "{what}");
    }
    s.p11.corrupt("C_Sign");
    for (i, (what, o, _)) in handshakes.iter().enumerate() {
        let signs = s.p11.sign_ops();
        let r = s.try_get(o.clone());
        assert!(s.p11.sign_ops() > signs, "{what}: the token was not asked to sign");
        assert!(!r.ok && r.http_status.is_none(), "{what}: served with a corrupted signature:\n{}", r.raw);
        assert!(r.raw.contains("alert"), "{what}: no TLS alert from the server:\n{}", r.raw);
        // The client never got a signature to check.
        assert!(!r.raw.to_lowercase().contains("bad signature"), "{what}: the client received the faulty signature:\n{}", r.raw);
        assert!(r.peer_sig_type.is_none(), "{what}: the client saw a peer signature:\n{}", r.raw);
        let log = s.apache.error_log();
        let refused = with_id(&log, "HSM00531");
        assert_eq!(refused.len(), i + 1, "{what}: no (or more than one) log line per refused signature:\n{log}");
        let line = refused.last().unwrap();
        let label = if what.contains("ECDSA") { "www-ec" } else { "www-rsa" };
        assert!(line.contains(&s.token.key_uri(label)), "{what}: the line does not name the key:\n{line}");
        assert!(line.contains(NOT_SENT) && line.contains("it was not sent"), "{line}");
    }
    s.p11.clear_faults();
    for (what, o, sig_type) in &handshakes {
        let r = s.get(o.clone());
        assert_eq!(r.peer_sig_type.as_deref(), Some(*sig_type), "{what} after the fault");
    }
    assert_eq!(s.apache.error_log().matches(NOT_SENT).count(), handshakes.len(), "a good signature was refused");
}

/// The key tool signs requests through the same operation: a request the
/// token signed wrongly is not written.
#[test]
fn the_key_tool_writes_no_request_whose_signature_does_not_verify() {
    let token = Token::new("kt-sig");
    token.gen_ec("www-ec", "prime256v1");
    let p11 = P11Log::new(token.dir());
    let out = token.dir().join("www.csr");
    let csr = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
            .args(["csr", "--label", "www-ec", "--subject", "CN=www.example.com", "--out"])
            .arg(&out)
            .arg("--library")
            .arg(p11.module())
            .args(["--token", &token.label, "--pin", "env:KT_PIN"])
            .envs(token.env())
            .envs(p11.env())
            .env("KT_PIN", &token.pin)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run hsm-ssl-keytool")
    };
    p11.corrupt("C_Sign");
    let o = csr();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "csr succeeded with a corrupted signature:\n{stderr}");
    assert!(p11.sign_ops() > 0, "the token was not asked to sign:\n{stderr}");
    assert!(stderr.contains(NOT_SENT), "{stderr}");
    assert!(!out.exists(), "a request was written");
    p11.clear_faults();
    let o = csr();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    run_ok(std::process::Command::new("openssl").args(["req", "-verify", "-noout", "-in"]).arg(&out));
}
