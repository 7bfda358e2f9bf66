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
        let cert = make_cert(&pki, &token.public_key_pem(label), "localhost", &["localhost"]);
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
    if let Err(e) = apache.start() {
        panic!("apache2 with mod_hsm_ssl did not start: {e:?}");
    }
    Setup { ca: ca_cert(&pki), apache, p11, _token: token }
}

fn get(s: &Setup, o: ClientOpts) -> TlsResult {
    let r = tls_get(s.apache.port, &ClientOpts { cafile: Some(s.ca.clone()), ..o });
    assert!(r.ok && r.verified, "handshake failed:\n{}\n--- error_log ---\n{}", r.raw, s.apache.error_log());
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
