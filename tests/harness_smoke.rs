//! Proves the test harness itself works, with plain mod_ssl and file keys
//! (no mod_hsm_ssl loaded), and that token + certificate setup is sound.

mod common;

use common::*;

/// A plain mod_ssl vhost with a file key of `spec` and a cert from the test
/// CA, both in the apache test dir. Returns the apache and the CA cert.
fn file_key_apache(name: &str, mpm: Mpm, spec: &str) -> (Apache, std::path::PathBuf) {
    file_key_apache_with(ApacheConfig::new(name).mpm(mpm), spec)
}

fn file_key_apache_with(cfg: ApacheConfig, spec: &str) -> (Apache, std::path::PathBuf) {
    let mut apache = cfg.build();
    let pki = apache.dir().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (key, pubkey) = file_key(&pki, "server", spec);
    let cert = make_cert(&pki, &pubkey, "localhost", &["localhost"]);
    apache.reconfigure(|c| {
        c.vhosts.push(ssl_vhost("localhost", &format!("SSLCertificateFile {}\nSSLCertificateKeyFile {}", cert.display(), key.display())))
    });
    apache.start().expect("apache2 starts");
    (apache, ca_cert(&pki))
}

fn opts(ca: &std::path::Path) -> ClientOpts {
    ClientOpts { cafile: Some(ca.to_path_buf()), ..Default::default() }
}

#[test]
fn event_mpm_serves_tls13_with_rsa_file_key() {
    let (apache, ca) = file_key_apache("event-rsa", Mpm::Event, "rsa:2048");
    let r = tls_get(apache.port, &ClientOpts { tls: Some("1.3"), ..opts(&ca) });
    assert!(r.ok, "{}", r.raw);
    assert!(r.verified, "{}", r.raw);
    assert_eq!(r.protocol.as_deref(), Some("TLSv1.3"));
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    assert_eq!(r.server_key.as_deref(), Some("RSA 2048"));
    assert_eq!(r.http_status, Some(200), "{}", r.raw);
    let resp = r.http_response.unwrap();
    assert!(resp.trim_end().ends_with("hsm-ssl test page</body></html>"), "{resp}");
    assert!(apache.error_log().contains(" resuming normal operations"));
    assert!(apache.pids().len() >= 2, "master + children: {:?}", apache.pids());
}

#[test]
fn tls12_client_sigalgs_choose_pkcs1_or_pss() {
    let (apache, ca) = file_key_apache("sigalgs", Mpm::Event, "rsa:2048");
    let pkcs1 = tls_get(apache.port, &ClientOpts { tls: Some("1.2"), sigalgs: Some("RSA+SHA256".into()), ..opts(&ca) });
    assert!(pkcs1.ok, "{}", pkcs1.raw);
    assert_eq!(pkcs1.protocol.as_deref(), Some("TLSv1.2"));
    assert_eq!(pkcs1.peer_sig_type.as_deref(), Some("RSA"), "{}", pkcs1.raw);
    assert_eq!(pkcs1.peer_sig_digest.as_deref(), Some("SHA256"));
    assert!(pkcs1.cipher.as_deref().unwrap().starts_with("ECDHE-RSA-"), "{:?}", pkcs1.cipher);
    assert_eq!(pkcs1.http_status, Some(200));

    let pss = tls_get(apache.port, &ClientOpts { tls: Some("1.2"), sigalgs: Some("RSA-PSS+SHA256".into()), ..opts(&ca) });
    assert!(pss.ok, "{}", pss.raw);
    assert_eq!(pss.peer_sig_type.as_deref(), Some("RSA-PSS"), "{}", pss.raw);
    assert_eq!(pss.peer_sig_digest.as_deref(), Some("SHA256"));
    assert_eq!(pss.http_status, Some(200));
}

#[test]
fn tls12_static_rsa_cipher_has_no_server_signature() {
    let (apache, ca) = file_key_apache("static-rsa", Mpm::Event, "rsa:2048");
    let r = tls_get(apache.port, &ClientOpts { tls: Some("1.2"), cipher: Some("AES128-GCM-SHA256".into()), ..opts(&ca) });
    assert!(r.ok, "{}", r.raw);
    assert_eq!(r.cipher.as_deref(), Some("AES128-GCM-SHA256"));
    assert_eq!(r.peer_sig_type, None, "{}", r.raw);
    assert_eq!(r.http_status, Some(200));
}

#[test]
fn ecdsa_file_key_gives_ecdsa_signatures() {
    let (apache, ca) = file_key_apache("ec", Mpm::Event, "ec:prime256v1");
    for tls in ["1.2", "1.3"] {
        let r = tls_get(apache.port, &ClientOpts { tls: Some(tls), ..opts(&ca) });
        assert!(r.ok, "{}", r.raw);
        assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"), "{}", r.raw);
        assert_eq!(r.server_key.as_deref(), Some("EC 256"));
        assert_eq!(r.http_status, Some(200));
    }
}

#[test]
fn handshake_failure_is_reported_not_ok() {
    let (apache, ca) = file_key_apache("fail", Mpm::Event, "rsa:2048");
    // A TLS 1.2 suite that needs an ECDSA key cannot be negotiated.
    let r = tls_get(apache.port, &ClientOpts { tls: Some("1.2"), cipher: Some("ECDHE-ECDSA-AES128-GCM-SHA256".into()), ..opts(&ca) });
    assert!(!r.ok, "{}", r.raw);
    assert_eq!(r.http_status, None);
    // Wrong SNI name fails verification when a CA is given.
    let r = tls_get(apache.port, &ClientOpts { servername: Some("other.example".into()), ..opts(&ca) });
    assert!(!r.ok && !r.verified, "{}", r.raw);
}

#[test]
fn prefork_mpm_serves_and_survives_graceful_restart() {
    let (mut apache, ca) = file_key_apache("prefork-graceful", Mpm::Prefork, "rsa:2048");
    let master = apache.master_pid().unwrap();
    assert_eq!(tls_get(apache.port, &opts(&ca)).http_status, Some(200));
    apache.graceful().expect("graceful restart");
    assert_eq!(apache.master_pid(), Some(master), "graceful keeps the master");
    assert!(apache.error_log().contains("Graceful restart requested"), "{}", apache.error_log());
    let r = tls_get(apache.port, &opts(&ca));
    assert_eq!(r.http_status, Some(200), "{}", r.raw);
}

#[test]
fn event_mpm_survives_graceful_and_full_restart() {
    let (mut apache, ca) = file_key_apache("event-restart", Mpm::Event, "rsa:2048");
    let master = apache.master_pid().unwrap();
    let children_before = apache.child_pids();
    apache.graceful().expect("graceful restart");
    assert_eq!(tls_get(apache.port, &opts(&ca)).http_status, Some(200));
    apache.restart().expect("restart");
    assert_eq!(apache.master_pid(), Some(master));
    let r = tls_get(apache.port, &opts(&ca));
    assert_eq!(r.http_status, Some(200), "{}", r.raw);
    let children_after = apache.child_pids();
    assert!(children_after.iter().all(|c| !children_before.contains(c)), "children replaced: {children_before:?} -> {children_after:?}");
}

#[test]
fn worker_mpm_serves_and_readiness_works_at_loglevel_warn() {
    let cfg = ApacheConfig::new("worker").mpm(Mpm::Worker).log_level("warn");
    let (apache, ca) = file_key_apache_with(cfg, "rsa:2048");
    assert_eq!(tls_get(apache.port, &opts(&ca)).http_status, Some(200));
    assert!(!apache.error_log().contains("[ssl:info]"));
}

#[test]
fn stop_ends_every_apache_process() {
    let (mut apache, _ca) = file_key_apache("stop", Mpm::Prefork, "rsa:2048");
    let pids = apache.pids();
    assert!(pids.len() >= 2);
    assert!(apache.stop(), "clean stop without SIGKILL");
    for p in pids {
        assert!(!pid_alive(p), "pid {p} still alive");
    }
}

#[test]
fn configtest_reports_syntax_errors() {
    let good = ApacheConfig::new("configtest-good").build();
    let (code, out) = good.configtest();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Syntax OK"), "{out}");
    let bad = ApacheConfig::new("configtest-bad").global("NoSuchDirective on").build();
    let (code, out) = bad.configtest();
    assert_ne!(code, 0);
    assert!(out.contains("NoSuchDirective"), "{out}");
}

#[test]
fn start_failure_returns_error_log() {
    let err = ApacheConfig::new("start-fail")
        .vhost(&ssl_vhost("localhost", "SSLCertificateFile /nonexistent/cert.pem"))
        .start()
        .err()
        .expect("start must fail");
    let text = format!("{}{}", err.output, err.error_log);
    assert!(text.contains("/nonexistent/cert.pem"), "{err:?}");
}

#[test]
fn token_keys_are_protected_and_certs_carry_the_token_key() {
    let token = Token::new("smoke");
    let rsa = token.gen_rsa("rsa-key", 2048);
    let ec = token.gen_ec("ec-key", "prime256v1");
    let ec384 = token.gen_ec("ec384-key", "secp384r1");
    assert_eq!((rsa.id_hex.as_str(), ec.id_hex.as_str(), ec384.id_hex.as_str()), ("01", "02", "03"));
    for key in ["rsa-key", "ec-key", "ec384-key"] {
        token.assert_private_key_protected(key);
        let pubkey = token.public_key_pem(key);
        let cert = make_cert(token.dir(), &pubkey, &format!("{key}.test"), &[&format!("{key}.test")]);
        assert_eq!(cert_pubkey_pem(&cert), pubkey_pem_text(&pubkey), "{key}");
        // Signed by the test CA.
        let (code, out) = run_status(std::process::Command::new("openssl").args(["verify", "-CAfile"]).arg(ca_cert(token.dir())).arg(&cert));
        assert_eq!(code, 0, "{out}");
    }
    // The token dir belongs to the apache2 run user.
    use std::os::unix::fs::MetadataExt;
    let (uid, _) = user_ids(RUN_USER);
    if is_root() {
        assert_eq!(std::fs::metadata(&token.tokendir).unwrap().uid(), uid);
    }
}

#[test]
fn p11wrap_counts_and_fails_calls_for_pkcs11_tool() {
    let token = Token::new("wrap");
    token.gen_rsa("k", 2048);
    let p11 = P11Log::new(token.dir());
    let data = token.dir().join("data");
    std::fs::write(&data, "hello").unwrap();
    let sign = || {
        let mut c = std::process::Command::new("pkcs11-tool");
        c.args(["--module"])
            .arg(p11.module())
            .args(["--token-label", "wrap", "--login", "--pin", &token.pin])
            .args(["--sign", "-m", "SHA256-RSA-PKCS", "--label", "k", "-i"])
            .arg(&data)
            .arg("-o")
            .arg(token.dir().join("sig"));
        for (k, v) in token.env().into_iter().chain(p11.env()) {
            c.env(k, v);
        }
        run_status(&mut c)
    };
    let (code, out) = sign();
    assert_eq!(code, 0, "{out}");
    assert_eq!(p11.count("C_Sign"), 1, "{:?}", p11.counts());
    assert_eq!(p11.count("C_SignInit"), 1);
    assert!(p11.count("C_Login") >= 1);
    p11.reset();
    p11.fail("C_Login", "CKR_PIN_INCORRECT");
    let (code, out) = sign();
    assert_ne!(code, 0);
    assert!(out.contains("CKR_PIN_INCORRECT"), "{out}");
    assert_eq!(p11.count("C_Sign"), 0);
    p11.clear_faults();
    assert_eq!(sign().0, 0);
}

#[test]
fn graceful_with_broken_config_is_refused_and_server_keeps_serving() {
    let (mut apache, ca) = file_key_apache("graceful-broken", Mpm::Event, "rsa:2048");
    std::fs::remove_file(apache.dir().join("pki/localhost.crt")).unwrap();
    // apache2 -k graceful parses the config first and refuses.
    let err = apache.graceful().expect_err("graceful must be refused");
    assert_eq!(err.exit_code, Some(1));
    assert!(err.output.contains("localhost.crt"), "{err:?}");
    assert!(apache.is_running());
    assert_eq!(tls_get(apache.port, &opts(&ca)).http_status, Some(200));
    // A raw SIGUSR1 makes the master reload the broken config and exit.
    assert!(apache.graceful_signal().is_err());
    assert!(!apache.is_running());
    // stop() still cleans up although `apache2 -k stop` cannot parse the config.
    assert!(apache.stop());
}

#[test]
fn token_and_p11wrap_log_are_usable_by_the_apache_run_user() {
    if !is_root() {
        eprintln!("skipped: needs root to switch to {RUN_USER}");
        return;
    }
    let token = Token::new("runuser");
    token.gen_ec("k", "prime256v1");
    let p11 = P11Log::new(token.dir());
    let data = token.dir().join("data");
    // SoftHSM2 2.6 has CKM_ECDSA (raw digest in) but no CKM_ECDSA_SHA256.
    std::fs::write(&data, [0x5a; 32]).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // Sign as www-data, the user apache2 children run as.
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", RUN_USER, "--regid", RUN_USER, "--init-groups", "pkcs11-tool", "--module"])
        .arg(p11.module())
        .args(["--token-label", "runuser", "--login", "--pin", &token.pin])
        .args(["--sign", "-m", "ECDSA", "--label", "k", "-i"])
        .arg(&data)
        .args(["-o", "/dev/null"]);
    for (k, v) in token.env().into_iter().chain(p11.env()) {
        c.env(k, v);
    }
    let (code, out) = run_status(&mut c);
    assert_eq!(code, 0, "{out}");
    assert_eq!(p11.count("C_Sign"), 1, "{:?}", p11.counts());
}
