//! The key tool's X.509 part against a real SoftHSM2 token: certificate
//! requests and self-signed certificates signed by RSA-2048, P-256 and
//! P-384 keys that stay in the token, checked with the openssl CLI.
//!
//! One test only: SoftHSM2 reads SOFTHSM2_CONF once per process and
//! `pkcs11::runtime` keeps one PKCS#11 state per process.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{run_ok, run_status, stdout_string, Token, SOFTHSM_LIB};
use mod_hsm_ssl::keytool::x509::{csr_pem, parse_sans, selfsigned_pem, token_pkey};
use mod_hsm_ssl::pkcs11::secret::Secret;
use mod_hsm_ssl::pkcs11::token::{Binding, Hsm};
use mod_hsm_ssl::pkcs11::uri::KeyUri;
use mod_hsm_ssl::tls::certcheck;

fn openssl(args: &[&str], file: &Path) -> String {
    stdout_string(&run_ok(Command::new("openssl").args(args).arg(file)))
}

/// A copy of the PEM certificate or request `src` with the last bit of its
/// signature flipped (the DER still parses: the signature is the last
/// field, and for ECDSA the flip stays inside the last INTEGER).
fn corrupt(src: &Path, kind: &str, dst: &Path) {
    let der = dst.with_extension("der");
    run_ok(Command::new("openssl").args([kind, "-outform", "DER", "-in"]).arg(src).arg("-out").arg(&der));
    let mut bytes = std::fs::read(&der).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&der, bytes).unwrap();
    run_ok(Command::new("openssl").args([kind, "-inform", "DER", "-in"]).arg(&der).arg("-out").arg(dst));
}

/// `openssl verify` that really checks the self-signature: the certificate
/// is its own trust anchor (-partial_chain; CA:FALSE is fine for a
/// self-issued end-entity certificate, RFC 6818) and -check_ss_sig makes
/// OpenSSL verify a trust anchor's signature, which it skips otherwise.
fn verify_self_signed(crt: &Path) -> (i32, String) {
    run_status(Command::new("openssl").args(["verify", "-check_ss_sig", "-partial_chain", "-purpose", "sslserver", "-trusted"]).arg(crt).arg(crt))
}

#[test]
fn token_keys_sign_requests_and_self_signed_certificates() {
    let token = Token::new("x509");
    std::env::set_var("SOFTHSM2_CONF", &token.conf);
    token.gen_rsa("web-rsa", 2048);
    token.gen_ec("web-p256", "prime256v1");
    token.gen_ec("web-p384", "secp384r1");

    let binding = Arc::new(Binding {
        library: SOFTHSM_LIB.into(),
        pin: Arc::new(Secret::new(token.pin.clone().into_bytes())),
        default_token: Default::default(),
        max_sessions: 4,
        session_wait: Duration::from_secs(5),
        direct_calls: false,
        op_timeout: Duration::from_secs(5),
    });
    // As the tool does: one open state for finding the keys, kept until
    // the end (signing runs through pkcs11::runtime, which shares the
    // initialized library).
    let hsm = Hsm::open(binding.clone()).expect("open SoftHSM2");

    let subject = "CN=www.example.com,O=Example\\, Ltd,C=DE";
    let sans = parse_sans("DNS:www.example.com,DNS:example.com,IP:10.0.0.1,IP:::1").unwrap();

    for (label, rsa, sig_alg) in
        [("web-rsa", true, "sha256WithRSAEncryption"), ("web-p256", false, "ecdsa-with-SHA256"), ("web-p384", false, "ecdsa-with-SHA256")]
    {
        let uri = token.key_uri(label);
        let parsed = KeyUri::parse(&uri).unwrap();
        let keyref = Arc::new(hsm.resolve(&uri, &parsed).unwrap_or_else(|e| panic!("resolve {uri}: {e}")));
        let pkey = token_pkey(keyref.clone()).unwrap();
        let dir = token.dir();

        // The request.
        let csr = csr_pem(&pkey, subject, &sans).unwrap_or_else(|e| panic!("{label}: csr: {e}"));
        let csr_path = dir.join(format!("{label}.csr.pem"));
        std::fs::write(&csr_path, &csr).unwrap();
        // OpenSSL 3.0's `req -verify` exits 0 even when the signature is
        // wrong; only its message tells.
        let (rc, out) = run_status(Command::new("openssl").args(["req", "-verify", "-noout", "-in"]).arg(&csr_path));
        assert!(rc == 0 && out.contains("self-signature verify OK"), "{label}: openssl req -verify: {out}");
        let text = openssl(&["req", "-noout", "-text", "-nameopt", "RFC2253", "-in"], &csr_path);
        assert!(text.contains("Subject: CN=www.example.com,O=Example\\, Ltd,C=DE"), "{label}: {text}");
        assert!(text.contains("DNS:www.example.com, DNS:example.com, IP Address:10.0.0.1, IP Address:0:0:0:0:0:0:0:1"), "{label}: {text}");
        assert!(text.contains(&format!("Signature Algorithm: {sig_alg}")), "{label}: {text}");
        assert!(text.contains("Attributes:") && text.contains("Requested Extensions:"), "{label}: {text}");
        // The request carries the token key.
        let csr_pub = openssl(&["req", "-noout", "-pubkey", "-in"], &csr_path);
        let token_pub = std::fs::read_to_string(token.public_key_pem(label)).unwrap();
        assert_eq!(csr_pub, token_pub, "{label}: the request's public key is the token key's");
        // A damaged request fails the same check.
        let bad_csr = dir.join(format!("{label}.bad.csr.pem"));
        corrupt(&csr_path, "req", &bad_csr);
        let (rc, out) = run_status(Command::new("openssl").args(["req", "-verify", "-noout", "-in"]).arg(&bad_csr));
        assert!(
            !out.contains("verify OK") && (rc != 0 || out.contains("self-signature verify failure")),
            "{label}: a corrupted request must not verify: {out}"
        );

        // The self-signed certificate.
        let crt = selfsigned_pem(&pkey, subject, &sans, 30).unwrap_or_else(|e| panic!("{label}: cert: {e}"));
        let crt_path = dir.join(format!("{label}.crt.pem"));
        std::fs::write(&crt_path, &crt).unwrap();
        let text = openssl(&["x509", "-noout", "-text", "-nameopt", "RFC2253", "-in"], &crt_path);
        for want in [
            "Version: 3 (0x2)",
            "Issuer: CN=www.example.com,O=Example\\, Ltd,C=DE",
            "Subject: CN=www.example.com,O=Example\\, Ltd,C=DE",
            "X509v3 Basic Constraints: critical\n                CA:FALSE",
            "X509v3 Key Usage: critical",
            "X509v3 Extended Key Usage: \n                TLS Web Server Authentication",
            "X509v3 Subject Key Identifier:",
            "DNS:www.example.com, DNS:example.com, IP Address:10.0.0.1, IP Address:0:0:0:0:0:0:0:1",
            &format!("Signature Algorithm: {sig_alg}"),
        ] {
            assert!(text.contains(want), "{label}: no '{want}' in\n{text}");
        }
        let usage = if rsa { "Digital Signature, Key Encipherment\n" } else { "Digital Signature\n" };
        assert!(text.contains(&format!("X509v3 Key Usage: critical\n                {usage}")), "{label}: {text}");
        // 16-byte positive serial.
        let serial = openssl(&["x509", "-noout", "-serial", "-in"], &crt_path);
        let hex = serial.trim().strip_prefix("serial=").unwrap();
        assert_eq!(hex.len(), 32, "{label}: serial {hex}");
        assert!(u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80, "{label}: serial {hex}");
        // Valid now and for 30 days, not for 31.
        let (rc, _) = run_status(Command::new("openssl").args(["x509", "-noout", "-checkend", "2505600", "-in"]).arg(&crt_path));
        assert_eq!(rc, 0, "{label}: still valid in 29 days");
        let (rc, _) = run_status(Command::new("openssl").args(["x509", "-noout", "-checkend", "2678400", "-in"]).arg(&crt_path));
        assert_ne!(rc, 0, "{label}: expired in 31 days");
        // The signature verifies; a damaged one does not.
        let (rc, out) = verify_self_signed(&crt_path);
        assert_eq!(rc, 0, "{label}: openssl verify: {out}");
        let bad_crt = dir.join(format!("{label}.bad.crt.pem"));
        corrupt(&crt_path, "x509", &bad_crt);
        let (rc, out) = verify_self_signed(&bad_crt);
        assert_ne!(rc, 0, "{label}: a corrupted certificate must not verify: {out}");
        assert!(out.contains("certificate signature failure"), "{label}: {out}");
        // The certificate belongs to the token key.
        certcheck::check(crt_path.to_str().unwrap(), &keyref.public).unwrap_or_else(|e| panic!("{label}: {e}"));
    }

    // A certificate of another key is told apart (certcheck is meaningful).
    let other = Arc::new(hsm.resolve(&token.key_uri("web-p256"), &KeyUri::parse(&token.key_uri("web-p256")).unwrap()).unwrap());
    let rsa_crt = token.dir().join("web-rsa.crt.pem");
    let e = certcheck::check(rsa_crt.to_str().unwrap(), &other.public).unwrap_err();
    assert!(matches!(e, certcheck::CertCheckError::Mismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("does not belong to this key"), "{e}");
    let missing = certcheck::check("/nonexistent.pem", &other.public).unwrap_err();
    assert!(matches!(missing, certcheck::CertCheckError::Unreadable(_)), "{missing:?}");
    hsm.close();
}
