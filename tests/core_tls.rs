//! mod_hsm_ssl serving HTTPS with keys generated inside a SoftHSM2 token:
//! real apache2 + mod_ssl, real token, real TLS client (openssl s_client).

mod common;

use common::*;

fn setup(name: &str, mpm: Mpm, keys: &[(&str, &str)]) -> Site {
    let mut s = Site::new(name, mpm);
    for (label, spec) in keys {
        s.key(label, spec);
    }
    let labels: Vec<&str> = keys.iter().map(|(l, _)| *l).collect();
    s.vhost("localhost", &labels);
    s.start();
    s
}

fn get(s: &Site, o: ClientOpts) -> TlsResult {
    s.get(o)
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

#[test]
fn two_name_based_vhosts_on_one_port_pick_their_token_key_by_sni() {
    let mut s = Site::new("sni", Mpm::Event);
    s.key("site-a", "rsa:2048");
    s.key("site-b", "ec:P-256");
    s.vhost("a.example", &["site-a"]);
    s.vhost("b.example", &["site-b"]);
    s.start();
    let a = s.get(ClientOpts { servername: Some("a.example".into()), ..tls("1.3") });
    assert_eq!(a.server_key.as_deref(), Some("RSA 2048"));
    assert_eq!(a.peer_sig_type.as_deref(), Some("RSA-PSS"));
    let b = s.get(ClientOpts { servername: Some("b.example".into()), ..tls("1.3") });
    assert_eq!(b.peer_sig_type.as_deref(), Some("ECDSA"));
    assert!(b.server_key.as_deref().unwrap_or("").starts_with("EC"), "{:?}", b.server_key);
}

/// The TLS modes every MPM must serve from the token.
fn mode_matrix(s: &Site) {
    let r = s.get(ClientOpts { sigalgs: Some("rsa_pss_rsae_sha256".into()), ..tls("1.3") });
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    let r = s.get(ClientOpts { sigalgs: Some("RSA+SHA256".into()), ..tls("1.2") });
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA"));
    let r = s.get(ClientOpts { sigalgs: Some("RSA-PSS+SHA256".into()), ..tls("1.2") });
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    let r = s.get(ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") });
    assert_eq!(r.cipher.as_deref(), Some("AES128-GCM-SHA256"));
    let r = s.get(ClientOpts { sigalgs: Some("ECDSA+SHA256".into()), ..tls("1.3") });
    assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"));
    let r = s.get(ClientOpts { cipher: Some("ECDHE-ECDSA-AES128-GCM-SHA256".into()), ..tls("1.2") });
    assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"));
}

fn dual_site(name: &str, mpm: Mpm) -> Site {
    setup(name, mpm, &[("www-rsa", "rsa:2048"), ("www-ec", "ec:P-256")])
}

#[test]
fn prefork_mpm_serves_every_mode_from_the_token() {
    let s = dual_site("prefork", Mpm::Prefork);
    mode_matrix(&s);
}

#[test]
fn worker_mpm_serves_every_mode_from_the_token() {
    let s = dual_site("worker", Mpm::Worker);
    mode_matrix(&s);
}

#[test]
fn every_full_handshake_costs_one_token_operation_and_the_server_root_holds_no_private_key() {
    let s = dual_site("count", Mpm::Event);
    let (signs, decrypts) = (s.p11.sign_ops(), s.p11.decrypt_ops());
    for _ in 0..3 {
        s.get(tls("1.3"));
        s.get(ClientOpts { cipher: Some("AES256-GCM-SHA384".into()), ..tls("1.2") });
    }
    assert_eq!(s.p11.sign_ops() - signs, 3);
    assert_eq!(s.p11.decrypt_ops() - decrypts, 3);
    for entry in walk(s.apache.dir()) {
        let text = std::fs::read(&entry).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&text).contains("PRIVATE KEY"), "private key material on disk in the server root: {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[test]
fn serving_works_with_mod_hsm_ssl_loaded_before_mod_ssl() {
    let mut s = Site::with_config("loadfirst", ApacheConfig::new("loadfirst").mpm(Mpm::Event));
    s.apache.reconfigure(|c| c.module_first = true);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    s.start();
    let conf = std::fs::read_to_string(s.apache.dir().join("httpd.conf")).unwrap();
    let (hsm, ssl) = (conf.find("LoadModule hsm_ssl_module").unwrap(), conf.find("LoadModule ssl_module").unwrap());
    assert!(hsm < ssl, "the test must load mod_hsm_ssl first");
    let before = s.p11.sign_ops();
    s.get(tls("1.3"));
    assert_eq!(s.p11.sign_ops() - before, 1);
}
