//! Which way mod_ssl gets the token keys (src/tls/loader.rs), proven with
//! Debian's mod_ssl: with no `pkcs11` engine in OpenSSL's engines
//! directory, mod_ssl finds no engine (its notice AH10132) and opens the
//! URI with OSSL_STORE, which the module's provider store answers: the only
//! way with OpenSSL 4.0, whose mod_ssl has no engine code (and no notice). The harness runs every test that way unless
//! HSM_TEST_KEY_LOADING=engine (scripts/test.sh runs the TLS matrix again
//! so); the ENGINE shim's own case is in core_lifecycle.rs (libp11's engine
//! on disk).

mod common;

use common::*;

/// Whether the mod_ssl the tests load has ENGINE code: one built against
/// OpenSSL 4.0 (scripts/compat-openssl4.sh) has none, and then goes to
/// OSSL_STORE without a word.
fn mod_ssl_has_engine_code() -> bool {
    let bin = std::fs::read("/usr/lib/apache2/modules/mod_ssl.so").expect("read mod_ssl.so");
    bin.windows(b"ENGINE_by_id".len()).any(|w| w == b"ENGINE_by_id")
}

fn count(log: &str, id: &str) -> usize {
    log.lines().filter(|l| has_id(l, id)).count()
}

#[test]
fn without_a_pkcs11_engine_the_provider_store_loads_the_keys_for_every_tls_mode_and_reload() {
    if std::env::var("HSM_TEST_KEY_LOADING").as_deref() == Ok("engine") {
        // The ENGINE run of scripts/test.sh: this test is about the store.
        return;
    }
    let mut s = Site::new("store-path", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.key("www-ec", "ec:P-256");
    s.vhost("localhost", &["www-rsa", "www-ec"]);
    s.start();
    let log = s.apache.error_log();
    // Two configuration passes at a start, each loading both keys.
    assert!(count(&log, "HSM00523") >= 2, "not loaded through the provider store:\n{log}");
    // mod_ssl tried an engine first and found none, where it can.
    assert_eq!(log.contains("AH10132"), mod_ssl_has_engine_code(), "mod_ssl's engine notice:\n{log}");
    assert_eq!(count(&log, "HSM00524"), 0, "loaded through an ENGINE:\n{log}");

    let before = s.p11.sign_ops();
    assert_eq!(s.get(ClientOpts { sigalgs: Some("RSA-PSS+SHA256".into()), ..tls("1.3") }).peer_sig_type.as_deref(), Some("RSA-PSS"));
    assert_eq!(s.get(ClientOpts { sigalgs: Some("ECDSA+SHA256".into()), ..tls("1.3") }).peer_sig_type.as_deref(), Some("ECDSA"));
    assert_eq!(
        s.get(ClientOpts { cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()), sigalgs: Some("RSA+SHA256".into()), ..tls("1.2") })
            .peer_sig_type
            .as_deref(),
        Some("RSA")
    );
    let kx = s.get(ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") });
    assert_eq!(kx.cipher.as_deref(), Some("AES128-GCM-SHA256"));
    assert_eq!(s.p11.sign_ops() - before, 3, "the signatures went through the module's token connection");

    // A graceful restart loads the keys again, the same way.
    let loads = count(&log, "HSM00523");
    s.apache.graceful().expect("graceful");
    s.get(tls("1.3"));
    let log = s.apache.error_log();
    assert!(count(&log, "HSM00523") > loads, "the reload did not load through the store:\n{log}");
    assert!(!log.contains("[hsm_ssl:error]"), "{log}");
}
