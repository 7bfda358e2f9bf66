//! mod_hsm_ssl serving HTTPS with keys generated inside a SoftHSM2 token:
//! real apache2 + mod_ssl, real token, real TLS client (openssl s_client).

mod common;

use std::path::PathBuf;

use common::*;

/// An Apache with mod_hsm_ssl whose vhost serves `labels` (one cert/key
/// pair each) from `token`, through the call-counting wrapper.
struct Setup {
    apache: Apache,
    ca: PathBuf,
    p11: P11Log,
    _token: Token,
}

fn setup(name: &str, mpm: Mpm, keys: &[(&str, &str)]) -> Setup {
    let token = Token::new("web");
    for (label, spec) in keys {
        match *spec {
            "rsa:2048" => token.gen_rsa(label, 2048),
            "rsa:3072" => token.gen_rsa(label, 3072),
            "ec:P-256" => token.gen_ec(label, "prime256v1"),
            "ec:P-384" => token.gen_ec(label, "secp384r1"),
            other => panic!("unknown key spec {other}"),
        };
    }
    let mut apache = ApacheConfig::new(name).mpm(mpm).hsm_module().token(&token).build();
    let p11dir = apache.dir().join("p11");
    std::fs::create_dir_all(&p11dir).unwrap();
    let p11 = P11Log::new(&p11dir);
    let pki = apache.dir().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let mut lines = String::new();
    for (label, _) in keys {
        let cert = make_cert(&pki, &token.public_key_pem(label), label, &["localhost"]);
        lines += &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"{}\"\n", cert.display(), token.key_uri(label));
    }
    let wrap = p11.module();
    let pin = token.pin.clone();
    apache.reconfigure(|c| {
        c.global.push_str(&format!("HSMSSLLibrary {}\nHSMSSLPin env:HSM_TEST_PIN\n", wrap.display()));
        c.env.push(("HSM_TEST_PIN".into(), pin));
        c.env.extend(p11.env());
        c.vhosts.push(ssl_vhost("localhost", &lines));
    });
    token.share();
    if let Err(e) = apache.start() {
        panic!("apache2 with mod_hsm_ssl did not start: {e:?}");
    }
    Setup { ca: ca_cert(&pki), apache, p11, _token: token }
}

fn get(s: &Setup, o: ClientOpts) -> TlsResult {
    let r = tls_get(s.apache.port, &ClientOpts { cafile: Some(s.ca.clone()), ..o });
    if !(r.ok && r.verified) {
        let ls = std::process::Command::new("ls").arg("-laRn").arg(&s._token.tokendir).output().unwrap();
        panic!("handshake failed:\n{}\n--- error_log ---\n{}\n--- token dir ---\n{}", r.raw, s.apache.error_log(), String::from_utf8_lossy(&ls.stdout));
    }
    assert_eq!(r.http_status, Some(200), "{}", r.raw);
    r
}

#[test]
fn rsa2048_tls13_signs_with_pss_in_the_token() {
    let s = setup("rsa13", Mpm::Event, &[("www-rsa", "rsa:2048")]);
    let before = s.p11.sign_ops();
    let r = get(&s, ClientOpts { tls: Some("1.3"), ..Default::default() });
    assert_eq!(r.protocol.as_deref(), Some("TLSv1.3"));
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    assert_eq!(r.server_key.as_deref(), Some("RSA 2048"));
    assert_eq!(s.p11.sign_ops() - before, 1, "exactly one token signature per full handshake");
}

#[test]
fn rsa2048_tls12_ecdhe_with_pkcs1_and_with_pss_sigalgs() {
    let s = setup("rsa12", Mpm::Event, &[("www-rsa", "rsa:2048")]);
    let r = get(&s, ClientOpts { tls: Some("1.2"), sigalgs: Some("RSA+SHA256".into()), ..Default::default() });
    assert_eq!(r.protocol.as_deref(), Some("TLSv1.2"));
    assert!(r.cipher.as_deref().unwrap_or("").starts_with("ECDHE-RSA"), "{:?}", r.cipher);
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA"));
    let r = get(&s, ClientOpts { tls: Some("1.2"), sigalgs: Some("RSA-PSS+SHA256".into()), ..Default::default() });
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
}

#[test]
fn rsa_static_key_exchange_decrypts_the_premaster_in_the_token() {
    let s = setup("rsakx", Mpm::Event, &[("www-rsa", "rsa:2048")]);
    let before = s.p11.decrypt_ops();
    let signs = s.p11.sign_ops();
    let r = get(&s, ClientOpts { tls: Some("1.2"), cipher: Some("AES128-GCM-SHA256".into()), ..Default::default() });
    assert_eq!(r.cipher.as_deref(), Some("AES128-GCM-SHA256"));
    assert_eq!(s.p11.decrypt_ops() - before, 1, "one token decrypt per RSA key exchange");
    assert_eq!(s.p11.sign_ops(), signs, "no signature in static RSA key exchange");
}

#[test]
fn rsa3072_serves_tls13_tls12_and_static_rsa() {
    let s = setup("rsa3072", Mpm::Event, &[("www-rsa3k", "rsa:3072")]);
    let r = get(&s, ClientOpts { tls: Some("1.3"), ..Default::default() });
    assert_eq!(r.server_key.as_deref(), Some("RSA 3072"));
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    let r = get(&s, ClientOpts { tls: Some("1.2"), sigalgs: Some("RSA+SHA384".into()), ..Default::default() });
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA"));
    get(&s, ClientOpts { tls: Some("1.2"), cipher: Some("AES256-GCM-SHA384".into()), ..Default::default() });
}

#[test]
fn ec_p256_and_p384_serve_tls13_and_tls12_ecdhe_ecdsa() {
    for (name, spec, bits) in [("ec256", "ec:P-256", "256"), ("ec384", "ec:P-384", "384")] {
        let s = setup(name, Mpm::Event, &[("www-ec", spec)]);
        let before = s.p11.sign_ops();
        let r = get(&s, ClientOpts { tls: Some("1.3"), ..Default::default() });
        assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"));
        assert!(r.server_key.as_deref().unwrap_or("").ends_with(bits), "{:?}", r.server_key);
        let r = get(&s, ClientOpts { tls: Some("1.2"), ..Default::default() });
        assert!(r.cipher.as_deref().unwrap_or("").starts_with("ECDHE-ECDSA"), "{:?}", r.cipher);
        assert_eq!(s.p11.sign_ops() - before, 2);
    }
}

#[test]
fn one_vhost_with_rsa_and_ec_keys_serves_what_the_client_asks_for() {
    let s = setup("dual", Mpm::Event, &[("www-rsa", "rsa:2048"), ("www-ec", "ec:P-256")]);
    let r = get(&s, ClientOpts { tls: Some("1.3"), sigalgs: Some("ECDSA+SHA256".into()), ..Default::default() });
    assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"));
    let r = get(&s, ClientOpts { tls: Some("1.3"), sigalgs: Some("rsa_pss_rsae_sha256".into()), ..Default::default() });
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    let r = get(&s, ClientOpts { tls: Some("1.2"), cipher: Some("ECDHE-ECDSA-AES128-GCM-SHA256".into()), ..Default::default() });
    assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"));
}
