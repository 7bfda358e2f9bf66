//! hsm-ssl-keytool against fresh SoftHSM2 tokens, checked with independent
//! tools (pkcs11-tool, openssl) and a real Apache serving its key.

mod common;

use std::process::{Command, Output};

use common::*;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Runs the key tool on `token` with --library/--pin given explicitly.
fn kt(token: &Token, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"));
    c.args(args)
        .args(["--library", SOFTHSM, "--token", &token.label, "--pin", "env:KT_PIN"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("KT_PIN", &token.pin)
        .stdin(std::process::Stdio::null());
    c.output().expect("run hsm-ssl-keytool")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "keytool failed ({:?}):\n{out}\n{}", o.status.code(), String::from_utf8_lossy(&o.stderr));
    out
}

fn err(o: &Output, code: i32) -> String {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{e}", String::from_utf8_lossy(&o.stdout));
    e
}

/// `text` with every run of white space made one space (help text is
/// wrapped to the terminal's width).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().unwrap()
}

fn private_block(token: &Token, label: &str) -> String {
    let out = token.pkcs11_tool_login().args(["--list-objects", "--type", "privkey"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("Private Key Object")
        .find(|b| b.lines().any(|l| l.trim() == format!("label:      {label}")))
        .unwrap_or_else(|| panic!("no private key {label}:\n{text}"))
        .to_string()
}

#[test]
fn generate_makes_sensitive_non_extractable_key_pairs_and_refuses_a_taken_label() {
    let token = Token::new("kt");
    for (label, ty, kind, usage_opt) in [
        ("www-rsa", "rsa:2048", "RSA", None),
        ("www-rsa-kx", "rsa:2048", "RSA", Some("sign,decrypt")),
        ("www-ec", "ec:P-256", "EC", None),
        ("www-ec384", "ec:P-384", "EC", Some("sign")),
    ] {
        let mut args = vec!["generate", "--label", label, "--type", ty];
        args.extend(usage_opt.iter().flat_map(|u| ["--usage", u]));
        let o = kt(&token, &args);
        let out = ok(&o);
        assert!(out.contains(&format!("key URI for SSLCertificateKeyFile: \"pkcs11:token=kt;object={label}\"")), "{out}");
        let decrypt = usage_opt == Some("sign,decrypt");
        let said = if decrypt { "usage: sign, decrypt\n" } else { "usage: sign\n" };
        assert!(out.contains(&format!("sensitive, not extractable, not modifiable, not copyable; {said}")), "{out}");
        // SoftHSM2 2.6 takes CKA_MODIFIABLE/CKA_COPYABLE false: no warning.
        assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
        let b = private_block(&token, label);
        assert!(b.contains(kind), "{b}");
        assert!(b.contains("sensitive") && b.contains("never extractable"), "not protected:\n{b}");
        assert!(b.contains("sign"), "{b}");
        let usage = b.lines().find(|l| l.trim_start().starts_with("Usage:")).unwrap_or_default().to_string();
        // Decrypt only on request (TLS 1.2 RSA key exchange), never for EC.
        assert_eq!(usage.contains("decrypt"), decrypt, "{label}: {usage}");
        assert!(!usage.contains("derive") && !usage.contains("unwrap"), "{label} may do more than TLS needs: {usage}");
        // Not modifiable: the token refuses to change it (pkcs11-tool shows
        // no CKA_MODIFIABLE, so change CKA_ID and expect CKR_ACTION_PROHIBITED).
        let set = token.pkcs11_tool_login().args(["--type", "privkey", "--label", label, "--set-id", "77"]).output().unwrap();
        let text = String::from_utf8_lossy(&set.stderr).to_string() + &String::from_utf8_lossy(&set.stdout);
        assert!(!set.status.success() && text.contains("C_SetAttributeValue failed") && text.contains("0x1b"), "{label} was modified:\n{text}");
        token.assert_private_key_protected(label);
        // The public key is there too, with the same id.
        let id = b.lines().find_map(|l| l.trim().strip_prefix("ID:").map(|v| v.trim().to_string())).unwrap();
        let pubs = token.pkcs11_tool().args(["--list-objects", "--type", "pubkey"]).output().unwrap();
        assert!(String::from_utf8_lossy(&pubs.stdout).contains(&id), "no public key with id {id}");
    }
    let e = err(&kt(&token, &["generate", "--label", "www-rsa", "--type", "rsa:2048"]), 3);
    assert!(e.contains("already has objects labelled 'www-rsa'"), "{e}");
    let e = err(&kt(&token, &["generate", "--label", "x", "--type", "dsa:1024"]), 1);
    assert!(e.contains("--type dsa:1024"), "{e}");
    let e = err(&kt(&token, &["generate", "--label", "x", "--type", "ec:P-256", "--usage", "sign,decrypt"]), 1);
    assert!(e.contains("EC keys never decrypt"), "{e}");
    let e = err(&kt(&token, &["generate", "--label", "x", "--type", "rsa:2048", "--usage", "decrypt"]), 1);
    assert!(e.contains("--usage decrypt: use sign (the default) or sign,decrypt"), "{e}");
    // generate --help says why one would want decrypt.
    let help = words(&ok(&kt(&token, &["generate", "--help"])));
    assert!(
        help.contains("sign,decrypt: an RSA key may also decrypt") && help.contains("AES128-GCM-SHA256") && help.contains("EC keys never decrypt"),
        "{help}"
    );
}

#[test]
fn csr_and_selfsign_are_signed_by_the_token_key_and_verify_with_openssl() {
    let token = Token::new("kt");
    let dir = TestDir::new("kt-x509");
    for (label, ty) in [("www-rsa", "rsa:2048"), ("www-ec", "ec:P-256")] {
        ok(&kt(&token, &["generate", "--label", label, "--type", ty]));
        let csr = dir.path().join(format!("{label}.csr"));
        let out = ok(&kt(
            &token,
            &[
                "csr",
                "--label",
                label,
                "--subject",
                "CN=www.example.com,O=Example",
                "--san",
                "DNS:www.example.com,IP:127.0.0.1",
                "--out",
                csr.to_str().unwrap(),
            ],
        ));
        assert!(out.contains("written to"), "{out}");
        let v = openssl(&["req", "-in", csr.to_str().unwrap(), "-verify", "-noout", "-text"]);
        let text = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
        assert!(v.status.success() && text.contains("verify OK"), "{text}");
        assert!(text.contains("CN = www.example.com") && text.contains("DNS:www.example.com") && text.contains("IP Address:127.0.0.1"), "{text}");

        let crt = dir.path().join(format!("{label}.crt"));
        ok(&kt(
            &token,
            &["selfsign", "--label", label, "--subject", "CN=localhost", "--san", "DNS:localhost", "--days", "30", "--out", crt.to_str().unwrap()],
        ));
        let x = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"]);
        let text = String::from_utf8_lossy(&x.stdout);
        assert!(x.status.success() && text.contains("DNS:localhost") && text.contains("TLS Web Server Authentication"), "{text}");
        // The certificate's key is the token key, as the module checks it.
        let out = ok(&kt(&token, &["check", "--cert", crt.to_str().unwrap(), "--key", &format!("pkcs11:object={label}")]));
        assert!(out.starts_with("OK:"), "{out}");
        // Its self-signature verifies (-check_ss_sig: plain `verify` would
        // not look at the signature of a trusted self-signed certificate).
        let c = crt.to_str().unwrap();
        let v = openssl(&["verify", "-check_ss_sig", "-partial_chain", "-purpose", "sslserver", "-trusted", c, c]);
        let t = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
        assert!(v.status.success() && t.contains(": OK"), "{t}");
    }
}

#[test]
fn list_check_delete_and_config_work_and_mismatches_exit_4() {
    let token = Token::new("kt");
    let dir = TestDir::new("kt-list");
    ok(&kt(&token, &["generate", "--label", "www-rsa", "--type", "rsa:2048"]));
    ok(&kt(&token, &["generate", "--label", "www-ec", "--type", "ec:P-256"]));
    let crt = dir.path().join("rsa.crt");
    ok(&kt(&token, &["selfsign", "--label", "www-rsa", "--subject", "CN=www.example.com", "--days", "10", "--out", crt.to_str().unwrap()]));

    let j = json(&ok(&kt(&token, &["list", "--json", "--cert", crt.to_str().unwrap()])));
    assert_eq!(j["token"], "kt", "{j}");
    let row = |label: &str| j["keys"].as_array().unwrap().iter().find(|k| k["label"] == label).cloned().unwrap_or_else(|| panic!("no {label}: {j}"));
    let (rsa, ec) = (row("www-rsa"), row("www-ec"));
    assert_eq!((rsa["type"].as_str(), rsa["matches_cert"].as_bool()), (Some("RSA 2048"), Some(true)), "{j}");
    assert_eq!((ec["type"].as_str(), ec["matches_cert"].as_bool()), (Some("EC P-256"), Some(false)), "{j}");
    for k in [&rsa, &ec] {
        assert_eq!((k["sensitive"].as_bool(), k["extractable"].as_bool()), (Some(true), Some(false)), "{j}");
    }
    let text = ok(&kt(&token, &["list", "--cert", crt.to_str().unwrap()]));
    assert!(text.contains("www-rsa") && text.contains("matches the certificate"), "{text}");

    let e = err(&kt(&token, &["check", "--cert", crt.to_str().unwrap(), "--key", "pkcs11:object=www-ec"]), 4);
    assert!(e.contains("does not belong") && e.matches("sha256:").count() == 2, "{e}");
    let e = err(&kt(&token, &["check", "--cert", crt.to_str().unwrap(), "--key", "pkcs11:object=nope"]), 3);
    assert!(e.contains("no private key with label 'nope'"), "{e}");

    let conf = ok(&kt(&token, &["config", "--label", "www-rsa", "--cert", crt.to_str().unwrap()]));
    assert!(conf.contains("ServerName www.example.com") && conf.contains("SSLCertificateKeyFile \"pkcs11:token=kt;object=www-rsa\""), "{conf}");
    assert!(conf.contains(&format!("HSMSSLLibrary {SOFTHSM}")) && !conf.contains(&token.pin), "{conf}");

    // Without --yes and without a terminal: listed, not deleted.
    let o = kt(&token, &["delete", "--label", "www-ec"]);
    let e = err(&o, 6);
    assert!(e.contains("--yes"), "{e}");
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(listed.contains("to delete from token 'kt':") && listed.contains("private key  'www-ec' id "), "{listed}");
    let out = ok(&kt(&token, &["delete", "--label", "www-ec", "--yes"]));
    assert!(out.contains("private key  'www-ec'") && out.contains("public key   'www-ec'"), "--yes skips the question, not the listing: {out}");
    assert!(out.contains("deleted 2 object(s)"), "{out}");
    let j = json(&ok(&kt(&token, &["list", "--json"])));
    assert!(j["keys"].as_array().unwrap().iter().all(|k| k["label"] != "www-ec"), "{j}");
}

#[test]
fn token_and_pin_come_from_the_apache_configuration_and_a_wrong_pin_is_not_printed() {
    let token = Token::new("kt");
    let dir = TestDir::new("kt-conf");
    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{}\n", token.pin)).unwrap();
    chmod(&pin, 0o600);
    let conf = dir.path().join("httpd.conf");
    std::fs::write(&conf, format!("ServerRoot {}\nInclude hsm*.conf\n", dir.path().display())).unwrap();
    std::fs::write(dir.path().join("hsm-ssl.conf"), format!("HSMSSLLibrary {SOFTHSM}\nHSMSSLPin file:{}\nHSMSSLToken kt\n", pin.display())).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
            .args(args)
            .args(["--httpd-conf", conf.to_str().unwrap()])
            .env("SOFTHSM2_CONF", &token.conf)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    ok(&run(&["generate", "--label", "from-conf", "--type", "ec:P-256"]));
    assert!(ok(&run(&["list"])).contains("from-conf"));
    let bad = Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
        .args(["list", "--library", SOFTHSM, "--pin", "env:KT_BAD"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("KT_BAD", "hsm-user:definitely-wrong")
        .output()
        .unwrap();
    let e = err(&bad, 2);
    assert!(e.contains("wrong PIN") && !e.contains("definitely-wrong"), "{e}");
    let e = err(&Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool")).args(["frobnicate"]).output().unwrap(), 1);
    assert!(e.contains("unrecognized subcommand 'frobnicate'") && e.contains("--help"), "{e}");
}

#[test]
fn apache_serves_with_a_key_from_generate_and_a_certificate_from_selfsign() {
    let mut s = Site::new("kt-serve", Mpm::Event);
    ok(&kt(&s.token, &["generate", "--label", "served", "--type", "rsa:2048"]));
    let crt = s.pki.path().join("served.crt");
    ok(&kt(
        &s.token,
        &["selfsign", "--label", "served", "--subject", "CN=localhost", "--san", "DNS:localhost", "--days", "2", "--out", crt.to_str().unwrap()],
    ));
    chmod(&crt, 0o644);
    s.apache.reconfigure(|c| {
        c.vhosts
            .push(ssl_vhost("localhost", &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:token=web;object=served\"", crt.display())))
    });
    // Site's token is labelled "web": generate ran on it (kt uses --token web).
    s.start();
    let r = tls_get(s.apache.port, &ClientOpts { cafile: Some(crt.clone()), ..tls("1.3") });
    assert!(r.ok && r.http_status == Some(200), "{}\n{}", r.raw, s.apache.error_log());
    assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
    assert!(s.p11.sign_ops() >= 1);
}

#[test]
fn import_puts_an_encrypted_pem_key_into_the_token_and_says_how_to_remove_the_file() {
    let token = Token::new("kt");
    let dir = TestDir::new("kt-import");
    let key = dir.path().join("old.key");
    let o = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-aes256",
        "-pass",
        "pass:file-secret",
        "-out",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
        .args(["import", "--label", "old", "--key", key.to_str().unwrap(), "--passphrase", "env:KT_PASS"])
        .args(["--library", SOFTHSM, "--token", "kt", "--pin", "env:KT_PIN"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("KT_PIN", &token.pin)
        .env("KT_PASS", "file-secret")
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(text.contains("imported 'old'") && text.contains("shred -u"), "{text}");
    assert!(!text.contains("file-secret"), "{text}");
    assert!(text.contains("it is sensitive, not extractable, not modifiable, not copyable; usage: sign\n"), "{text}");
    let b = private_block(&token, "old");
    assert!(b.contains("sensitive"), "{b}");
    let usage = b.lines().find(|l| l.trim_start().starts_with("Usage:")).unwrap_or_default().to_string();
    assert!(usage.contains("sign") && !usage.contains("decrypt"), "decrypt without --usage sign,decrypt: {usage}");
    // The token key is the file's key: a certificate for it checks out.
    let crt = dir.path().join("old.crt");
    ok(&kt(&token, &["selfsign", "--label", "old", "--subject", "CN=old.example", "--days", "5", "--out", crt.to_str().unwrap()]));
    let from_file = openssl(&["pkey", "-in", key.to_str().unwrap(), "-passin", "pass:file-secret", "-pubout"]).stdout;
    let from_cert = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"]).stdout;
    assert_eq!(from_file, from_cert);
    let e = Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
        .args(["import", "--label", "again", "--key", key.to_str().unwrap(), "--passphrase", "env:KT_PASS"])
        .args(["--library", SOFTHSM, "--token", "kt", "--pin", "env:KT_PIN"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("KT_PIN", &token.pin)
        .env("KT_PASS", "wrong")
        .output()
        .unwrap();
    let msg = err(&e, 3);
    assert!(msg.contains("wrong passphrase") && !msg.contains("file-secret"), "{msg}");
}

#[test]
fn without_a_pin_source_the_tool_asks_on_the_terminal_without_echo() {
    let token = Token::new("kt");
    // `script` gives the tool a real terminal; the PIN is typed into it.
    let cmd = format!("{} list --library {SOFTHSM} --token kt --httpd-conf /dev/null", env!("CARGO_BIN_EXE_hsm-ssl-keytool"));
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("SOFTHSM2_CONF", &token.conf)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        stdin.write_all(format!("{}\n", token.pin).as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Token user PIN"), "no prompt:\n{text}");
    assert!(text.contains("token 'kt': 0 private key(s)"), "{text}");
    assert!(!text.contains(&token.pin), "the PIN was echoed:\n{text}");
}

#[test]
fn labels_that_no_key_uri_can_name_are_refused_before_the_token_is_touched() {
    let token = Token::new("kt");
    for label in ["", "www\nrsa", "www\u{1b}[2J"] {
        for args in [
            &["generate", "--label", label, "--type", "ec:P-256"][..],
            &["delete", "--label", label, "--yes"],
            &["csr", "--label", label, "--subject", "CN=x"],
        ] {
            let o = kt(&token, args);
            assert!(o.stdout.is_empty(), "{args:?}: printed {}", String::from_utf8_lossy(&o.stdout));
            let e = err(&o, 1);
            assert!(e.contains("--label"), "{args:?}: {e}");
            assert!(!e.contains('\u{1b}'), "{args:?}: the control character reached the terminal: {e:?}");
        }
    }
    let o = token.pkcs11_tool_login().args(["--list-objects"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Object"), "objects were created:\n{}", String::from_utf8_lossy(&o.stdout));
    // A label with URI syntax in it is encoded, and httpd's parser reads it back.
    let out = ok(&kt(&token, &["generate", "--label", "www rsa;v=2", "--type", "ec:P-256"]));
    assert!(out.contains("\"pkcs11:token=kt;object=www%20rsa%3Bv%3D2\""), "{out}");
    let uri = mod_hsm_ssl::pkcs11::uri::KeyUri::parse("pkcs11:token=kt;object=www%20rsa%3Bv%3D2").unwrap();
    assert_eq!(uri.object.as_deref(), Some("www rsa;v=2"));
}

#[test]
fn out_never_writes_through_a_symlink_and_replaces_a_file_only_with_force() {
    let token = Token::new("kt");
    let dir = TestDir::new("kt-out");
    ok(&kt(&token, &["generate", "--label", "www", "--type", "ec:P-256"]));
    let precious = dir.path().join("shadow-copy");
    std::fs::write(&precious, "not a certificate\n").unwrap();
    let link = dir.path().join("www.csr");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let csr = |out: &std::path::Path, more: &[&str]| {
        let mut a = vec!["csr", "--label", "www", "--subject", "CN=www.example.com", "--out", out.to_str().unwrap()];
        a.extend_from_slice(more);
        kt(&token, &a)
    };
    for more in [&[][..], &["--force"]] {
        let e = err(&csr(&link, more), 5);
        assert!(e.contains("symbolic link"), "{e}");
    }
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "not a certificate\n");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    let crt = dir.path().join("www.crt");
    std::fs::write(&crt, "the old certificate\n").unwrap();
    let selfsign = |more: &[&str]| {
        let mut a = vec!["selfsign", "--label", "www", "--subject", "CN=www.example.com", "--days", "2", "--out", crt.to_str().unwrap()];
        a.extend_from_slice(more);
        kt(&token, &a)
    };
    let e = err(&selfsign(&[]), 5);
    assert!(e.contains("already exists; add --force"), "{e}");
    assert_eq!(std::fs::read_to_string(&crt).unwrap(), "the old certificate\n");
    let before = std::fs::metadata(&crt).unwrap();
    ok(&selfsign(&["--force"]));
    let after = std::fs::metadata(&crt).unwrap();
    assert!(std::fs::read_to_string(&crt).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    // Replaced by a rename (a new inode), not rewritten in place.
    use std::os::unix::fs::MetadataExt;
    assert_ne!(before.ino(), after.ino(), "the file was rewritten in place");
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["shadow-copy", "www.crt", "www.csr"], "temporary files left behind");
}

/// `pkcs11-tool --list-objects` (logged in) of the token.
fn objects(token: &Token) -> String {
    let o = token.pkcs11_tool_login().args(["--list-objects"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// How many objects pkcs11-tool lists with a header starting with `kind`
/// ("Data object", "Private Key Object", ...), `label` and (if given) `id`.
fn count_objects(listing: &str, kind: &str, label: &str, id: Option<&str>) -> usize {
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in listing.lines() {
        match blocks.last_mut() {
            Some(b) if line.starts_with(' ') => b.push(line),
            _ => blocks.push(vec![line]),
        }
    }
    let field = |b: &[&str], name: &str| -> Option<String> {
        b.iter().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().trim_matches('\'').to_string()))
    };
    blocks
        .iter()
        .filter(|b| b[0].starts_with(kind))
        .filter(|b| field(b, "label:").as_deref() == Some(label))
        .filter(|b| id.map_or(true, |id| field(b, "ID:").as_deref() == Some(id)))
        .count()
}

fn key_id(token: &Token, label: &str) -> String {
    private_block(token, label).lines().find_map(|l| l.trim().strip_prefix("ID:").map(|v| v.trim().to_string())).unwrap()
}

#[test]
fn delete_removes_the_key_pair_and_its_certificate_and_no_other_object_with_the_label() {
    let token = Token::new("kt");
    let dir = TestDir::new("kt-delete");
    ok(&kt(&token, &["generate", "--label", "www", "--type", "ec:P-256"]));
    let id = key_id(&token, "www");
    // Its certificate on the token, as other tools store it (same label and id).
    let crt = dir.path().join("www.crt");
    ok(&kt(&token, &["selfsign", "--label", "www", "--subject", "CN=www", "--days", "2", "--out", crt.to_str().unwrap()]));
    let der = dir.path().join("www.der");
    assert!(openssl(&["x509", "-in", crt.to_str().unwrap(), "-outform", "DER", "-out", der.to_str().unwrap()]).status.success());
    run_ok(token.pkcs11_tool_login().args(["--write-object", der.to_str().unwrap(), "--type", "cert", "--label", "www", "--id", &id]));
    // What other tools put under the same label: a data object and an AES key.
    let data = dir.path().join("data.bin");
    std::fs::write(&data, "another tool's settings").unwrap();
    run_ok(token.pkcs11_tool_login().args(["--write-object", data.to_str().unwrap(), "--type", "data", "--label", "www", "--private"]));
    run_ok(token.pkcs11_tool_login().args(["--keygen", "--key-type", "AES:16", "--label", "www", "--id", &id]));
    let before = objects(&token);
    assert_eq!(count_objects(&before, "Data object", "www", None), 1, "{before}");
    assert_eq!(count_objects(&before, "Secret Key Object", "www", None), 1, "{before}");
    assert_eq!(count_objects(&before, "Certificate Object", "www", Some(&id)), 1, "{before}");

    let out = ok(&kt(&token, &["delete", "--label", "www", "--yes"]));
    for line in [
        format!("  private key  'www' id {id}"),
        format!("  public key   'www' id {id}"),
        format!("  certificate  'www' id {id}"),
        "  kept: data object  'www' id (none)".to_string(),
        format!("  kept: secret key   'www' id {id}"),
        "deleted 3 object(s) from token 'kt'".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
    let after = objects(&token);
    assert_eq!(count_objects(&after, "Data object", "www", None), 1, "the data object was deleted:\n{after}");
    assert_eq!(count_objects(&after, "Secret Key Object", "www", None), 1, "the secret key was deleted:\n{after}");
    for kind in ["Private Key Object", "Public Key Object", "Certificate Object"] {
        assert_eq!(count_objects(&after, kind, "www", None), 0, "{kind} left:\n{after}");
    }
    // Only other classes are left: nothing more to delete, and they stay.
    let e = err(&kt(&token, &["delete", "--label", "www", "--yes"]), 3);
    assert!(e.contains("no private key labelled 'www'") && e.contains("data object") && e.contains("nothing deleted"), "{e}");
    assert_eq!(objects(&token), after);
}

#[test]
fn delete_refuses_an_ambiguous_label_until_id_names_the_key_pair() {
    let token = Token::new("kt");
    // Two key pairs with one label (ids 01 and 02), as pkcs11-tool allows.
    token.gen_ec("dup", "prime256v1");
    token.gen_ec("dup", "prime256v1");
    let o = kt(&token, &["delete", "--label", "dup", "--yes"]);
    let e = err(&o, 3);
    assert!(e.contains("2 private keys are labelled 'dup' (ids 01, 02)") && e.contains("--id"), "{e}");
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(count_objects(&objects(&token), "Private Key Object", "dup", None), 2);

    let out = ok(&kt(&token, &["delete", "--label", "dup", "--id", "02", "--yes"]));
    assert!(out.contains("  private key  'dup' id 02\n  public key   'dup' id 02\n"), "{out}");
    assert!(out.contains("kept: private key  'dup' id 01") && out.contains("deleted 2 object(s)"), "{out}");
    let after = objects(&token);
    assert_eq!(count_objects(&after, "Private Key Object", "dup", Some("01")), 1, "{after}");
    assert_eq!(count_objects(&after, "Public Key Object", "dup", Some("01")), 1, "{after}");
    assert_eq!(count_objects(&after, "Private Key Object", "dup", Some("02")), 0, "{after}");
    assert_eq!(count_objects(&after, "Public Key Object", "dup", Some("02")), 0, "{after}");

    // One private key left, but a certificate with the label and another id:
    // whose is it? Refused until --id says.
    let dir = TestDir::new("kt-delete-stray");
    let pem = dir.path().join("other.crt");
    let der = dir.path().join("other.der");
    assert!(openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        dir.path().join("k").to_str().unwrap(),
        "-subj",
        "/CN=other",
        "-days",
        "1",
        "-out",
        pem.to_str().unwrap()
    ])
    .status
    .success());
    assert!(openssl(&["x509", "-in", pem.to_str().unwrap(), "-outform", "DER", "-out", der.to_str().unwrap()]).status.success());
    run_ok(token.pkcs11_tool_login().args(["--write-object", der.to_str().unwrap(), "--type", "cert", "--label", "dup", "--id", "ff"]));
    let e = err(&kt(&token, &["delete", "--label", "dup", "--yes"]), 3);
    assert!(e.contains("another CKA_ID") && e.contains("certificate (id ff)") && e.contains("--id 01"), "{e}");
    let out = ok(&kt(&token, &["delete", "--label", "dup", "--id", "01", "--yes"]));
    assert!(out.contains("kept: certificate  'dup' id ff") && out.contains("deleted 2 object(s)"), "{out}");
    assert_eq!(count_objects(&objects(&token), "Certificate Object", "dup", Some("ff")), 1);
    let e = err(&kt(&token, &["delete", "--label", "dup", "--id", "0g"]), 1);
    assert!(e.contains("--id 0g"), "{e}");
}

#[test]
fn errors_name_the_tools_options_not_httpds_directives() {
    let token = Token::new("kt");
    let tool = |args: &[&str], pin: &str| {
        Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
            .args(["check", "--cert", "/etc/hostname"])
            .args(args)
            .env("SOFTHSM2_CONF", &token.conf)
            .env("KT_PIN", pin)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let not_pkcs11 = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let key = ["--key", "pkcs11:object=none"];
    let cases: [(Vec<&str>, &str, i32, &str); 4] = [
        (
            vec!["--library", not_pkcs11, "--pin", "env:KT_PIN"],
            "right",
            2,
            "--library /usr/lib/x86_64-linux-gnu/libc.so.6: the library exports no C_GetFunctionList",
        ),
        (
            vec!["--library", SOFTHSM, "--token", "kt", "--pin", "env:KT_UNSET_PIN"],
            "right",
            2,
            "--pin env:KT_UNSET_PIN: the variable is not set in this shell's environment",
        ),
        (
            vec!["--library", SOFTHSM, "--token", "kt", "--pin", "env:KT_PIN"],
            "hsm-user:definitely-wrong",
            2,
            "wrong PIN (CKR_PIN_INCORRECT); tried once and not retried, so the crypto user is not locked out; fix what --pin gives",
        ),
        (
            vec!["--library", SOFTHSM, "--pin", "env:KT_PIN", "--key", "pkcs11:object=k?pin-value=1"],
            "right",
            1,
            "pin-value is refused in a key URI: give the PIN with --pin",
        ),
    ];
    for (args, pin, code, expected) in cases {
        let mut all = args.clone();
        if !args.contains(&"--key") {
            all.extend_from_slice(&key);
        }
        let pin = if pin == "right" { token.pin.as_str() } else { pin };
        let e = err(&tool(&all, pin), code);
        assert!(e.contains(expected), "{args:?}: {e}");
        assert!(!e.contains("HSMSSL") && !e.contains("httpd's environment"), "{args:?}: the tool speaks of httpd: {e}");
    }
}

/// The tool with `args` as given (no options added), on `token`.
fn kt_raw(token: &Token, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
        .args(args)
        .env("SOFTHSM2_CONF", &token.conf)
        .env("KT_PIN", &token.pin)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run hsm-ssl-keytool")
}

#[test]
fn the_command_line_behaves_like_git_and_cargo() {
    let token = Token::new("kt-cli");
    let target = ["--library", SOFTHSM, "--token", &token.label, "--pin", "env:KT_PIN"];
    // Token options before the command, after it, or both sides.
    ok(&kt_raw(&token, &[&target[..], &["generate", "--label", "before", "--type", "ec:P-256"]].concat()));
    ok(&kt_raw(&token, &[&["generate", "--label", "after", "--type", "ec:P-256"][..], &target[..]].concat()));
    let mixed = kt_raw(&token, &["--library", SOFTHSM, "list", "--token", &token.label, "--json", "--pin", "env:KT_PIN"]);
    let listed = ok(&mixed);
    assert!(listed.contains("\"label\":\"before\"") && listed.contains("\"label\":\"after\""), "{listed}");

    // --version; --help for the tool and for each command, on stdout.
    let v = ok(&kt_raw(&token, &["--version"]));
    assert_eq!(v.trim(), format!("hsm-ssl-keytool {}", env!("CARGO_PKG_VERSION")));
    let help = words(&ok(&kt_raw(&token, &["--help"])));
    for c in ["generate", "import", "csr", "selfsign", "list", "check", "delete", "config", "tokens", "mechanisms", "test", "completions", "manpage"]
    {
        assert!(help.contains(&format!(" {c} ")), "{c} missing from --help: {help}");
        let h = words(&ok(&kt_raw(&token, &[c, "--help"])));
        assert!(h.contains(&format!("Usage: hsm-ssl-keytool {c}")), "{c} --help: {h}");
    }
    assert!(help.contains("Exit codes: 0 done; 1 bad command line"), "{help}");
    let h = words(&ok(&kt_raw(&token, &["import", "--help"])));
    assert!(h.contains("env:VAR | file:/path | exec:/program"), "--passphrase sources: {h}");

    // A bad command line is exit code 1 and touches nothing.
    for (args, says) in [
        (&["list", "--json", "--json"][..], "cannot be used multiple times"),
        (&["--pin", "env:A", "list", "--pin", "env:B"], "cannot be used multiple times"),
        (&["generate", "--label", "a", "--label", "b", "--type", "ec:P-256"], "cannot be used multiple times"),
        (&["list", "--colour", "red"], "unexpected argument '--colour'"),
        (&["generate", "--label", "x"], "--type <TYPE>"),
        (&["list", "stray"], "unexpected argument 'stray'"),
        (&[], "Usage: hsm-ssl-keytool"),
    ] {
        let e = err(&kt_raw(&token, args), 1);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    let left = words(&ok(&kt(&token, &["list"])));
    assert!(left.contains("2 private key(s)"), "{left}");
}

#[test]
fn out_dash_is_stdout_and_completions_are_scripts_for_each_shell() {
    let token = Token::new("kt-out");
    ok(&kt(&token, &["generate", "--label", "www", "--type", "ec:P-256"]));
    let pem = ok(&kt(&token, &["csr", "--label", "www", "--subject", "CN=www.example.com", "--out", "-"]));
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{pem}");
    assert!(!std::path::Path::new("-").exists(), "--out - wrote a file named '-'");
    let crt = ok(&kt(&token, &["selfsign", "--label", "www", "--subject", "CN=www.example.com", "--days", "1", "--out", "-"]));
    assert!(crt.starts_with("-----BEGIN CERTIFICATE-----"), "{crt}");

    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef hsm-ssl-keytool"), ("fish", "complete -c hsm-ssl-keytool")] {
        let script = ok(&kt_raw(&token, &["completions", shell]));
        assert!(script.contains(marker) && script.contains("selfsign") && script.contains("httpd-conf"), "{shell}:\n{script}");
    }
    // bash accepts the script, and it completes the commands.
    let script = ok(&kt_raw(&token, &["completions", "bash"]));
    let dir = TestDir::new("kt-completions");
    let file = dir.path().join("hsm-ssl-keytool.bash");
    std::fs::write(&file, script).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(hsm-ssl-keytool sel); COMP_CWORD=1; COMP_LINE='hsm-ssl-keytool sel'; COMP_POINT=${{#COMP_LINE}}; \
         _hsm-ssl-keytool hsm-ssl-keytool sel hsm-ssl-keytool; echo \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let o = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "selfsign", "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn verbose_says_each_step_on_stderr_and_quiet_says_nothing() {
    let token = Token::new("kt-verbose");
    let quiet = kt(&token, &["generate", "--label", "q", "--type", "ec:P-256"]);
    ok(&quiet);
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    let loud = kt(&token, &["-v", "generate", "--label", "v", "--type", "ec:P-256"]);
    ok(&loud);
    let e = String::from_utf8_lossy(&loud.stderr).to_string();
    for id in ["HSM00720", "HSM00721", "HSM00722", "HSM00723"] {
        assert!(e.lines().any(|l| l.starts_with("hsm-ssl-keytool: info: ") && l.contains(&format!("{id}: "))), "no {id}:\n{e}");
    }
    assert!(!e.contains(&token.pin), "the PIN is in the verbose output");
}

/// The tool on `token` through the fault wrapper `p11` (with a PIN).
fn kt_wrapped(token: &Token, p11: &P11Log, args: &[&str]) -> Output {
    let module = p11.module();
    let mut c = Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"));
    c.args(args)
        .args(["--library", module.to_str().unwrap(), "--token", &token.label, "--pin", "env:KT_PIN"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env("KT_PIN", &token.pin)
        .envs(p11.env())
        .stdin(std::process::Stdio::null());
    c.output().expect("run hsm-ssl-keytool")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn tokens_and_mechanisms_need_no_pin_and_say_what_tls_can_do() {
    let token = Token::new("kt-tokens");
    let no_pin = |args: &[&str]| kt_raw(&token, &[&["--library", SOFTHSM, "--token", &token.label][..], args].concat());
    let text = ok(&no_pin(&["tokens"]));
    assert!(text.contains(&format!("token '{}'", token.label)) && text.contains("ready  <- selected"), "{text}");
    let j = json(&ok(&no_pin(&["tokens", "--json"])));
    let mine: Vec<&serde_json::Value> = j["tokens"].as_array().unwrap().iter().filter(|t| t["label"] == token.label.as_str()).collect();
    assert_eq!(mine.len(), 1, "{j}");
    assert_eq!((mine[0]["selected"].as_bool(), mine[0]["initialized"].as_bool()), (Some(true), Some(true)), "{j}");

    let text = words(&ok(&no_pin(&["mechanisms"])));
    assert!(text.contains("CKM_RSA_PKCS_PSS offered (sign") && text.contains("RSA keys: TLS 1.3 signatures (RSA-PSS) yes"), "{text}");
    let j = json(&ok(&no_pin(&["mechanisms", "--json"])));
    for need in [
        "RSA keys: TLS 1.2 signatures",
        "RSA keys: TLS 1.3 signatures (RSA-PSS)",
        "RSA keys: TLS 1.2 RSA key exchange",
        "EC keys: TLS signatures (ECDSA)",
    ] {
        assert_eq!(j["tls"][need].as_bool(), Some(true), "{need}: {j}");
    }
    // A token without PSS: the answer changes (the wrapper hides it).
    let p11 = P11Log::new(token.dir());
    p11.hide_mechanism("0xd");
    let j = json(&ok(&kt_wrapped(&token, &p11, &["mechanisms", "--json"])));
    assert_eq!(j["tls"]["RSA keys: TLS 1.3 signatures (RSA-PSS)"].as_bool(), Some(false), "{j}");
    assert_eq!(j["tls"]["RSA keys: TLS 1.2 signatures"].as_bool(), Some(true), "{j}");
    assert_eq!(p11.count("C_Login"), 0, "mechanisms logged in");
}

#[test]
fn test_signs_and_decrypts_in_the_token_and_checks_with_the_certificate() {
    let token = Token::new("kt-test");
    let dir = TestDir::new("kt-test-certs");
    let mut certs = Vec::new();
    for (label, ty, usage) in [("rsa", "rsa:2048", "sign,decrypt"), ("ec", "ec:P-256", "sign")] {
        ok(&kt(&token, &["generate", "--label", label, "--type", ty, "--usage", usage]));
        let crt = dir.path().join(format!("{label}.crt"));
        ok(&kt(&token, &["selfsign", "--label", label, "--subject", "CN=t", "--days", "1", "--out", crt.to_str().unwrap()]));
        certs.push(crt);
    }
    let (rsa_crt, ec_crt) = (certs[0].to_str().unwrap(), certs[1].to_str().unwrap());
    let text = ok(&kt(&token, &["test", "--label", "rsa", "--cert", rsa_crt]));
    for op in ["sign RSA PKCS#1 v1.5 SHA-256 (TLS 1.2): OK", "sign RSA-PSS SHA-256 (TLS 1.3): OK", "decrypt a TLS 1.2 premaster (CKM_RSA_X_509): OK"]
    {
        assert!(text.contains(op), "{op}:\n{text}");
    }
    let j = json(&ok(&kt(&token, &["test", "--label", "ec", "--cert", ec_crt, "--json"])));
    assert_eq!(j["ok"].as_bool(), Some(true), "{j}");
    assert_eq!(j["operations"].as_array().map(Vec::len), Some(1), "an EC key only signs: {j}");
    assert_eq!(j["key"]["type"], "EC P-256", "{j}");
    assert!(j["key"]["fingerprint"].as_str().unwrap_or("").starts_with("sha256:"), "{j}");
    // The other key's certificate: exit code 4, nothing signed.
    let e = err(&kt(&token, &["test", "--label", "ec", "--cert", rsa_crt]), 4);
    assert!(e.contains("does not belong"), "{e}");
    // A token that signs wrongly: exit code 3, the report says which step.
    let p11 = P11Log::new(token.dir());
    p11.corrupt("C_Sign");
    let o = kt_wrapped(&token, &p11, &["test", "--label", "rsa", "--cert", rsa_crt]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    err(&o, 3);
    assert!(out.contains("sign RSA PKCS#1 v1.5 SHA-256 (TLS 1.2): FAILED: the signature does not verify"), "{out}");
    assert!(out.contains("(CKM_RSA_X_509): OK"), "the decryption is still checked:\n{out}");
}

#[test]
fn every_reporting_command_answers_json_and_id_selects_the_key() {
    let token = Token::new("kt-json");
    let dir = TestDir::new("kt-json-files");
    // generate --id --json: the key as every report shows it.
    let g = json(&ok(&kt(&token, &["generate", "--label", "www", "--type", "rsa:2048", "--id", "0a0b", "--json"])));
    let key = &g["key"];
    assert_eq!((key["id"].as_str(), key["type"].as_str(), key["label"].as_str()), (Some("0a0b"), Some("RSA 2048"), Some("www")), "{g}");
    assert_eq!(key["uri"], format!("pkcs11:token={};object=www", token.label), "{g}");
    let fp = key["fingerprint"].as_str().unwrap_or_default().to_string();
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{g}");
    assert_eq!(g["usage"], "sign", "{g}");
    let e = err(&kt(&token, &["generate", "--label", "other", "--type", "ec:P-256", "--id", "0a0b"]), 3);
    assert!(e.contains("already has a key with id 0a0b"), "{e}");

    // import --id --json: the fingerprint is the key file's public key.
    let pem = dir.path().join("imported.pem");
    assert!(openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", pem.to_str().unwrap()]).status.success());
    let i = json(&ok(&kt(&token, &["import", "--label", "imp", "--key", pem.to_str().unwrap(), "--id", "0c", "--json"])));
    assert_eq!((i["key"]["id"].as_str(), i["key"]["type"].as_str(), i["path"].as_str()), (Some("0c"), Some("EC P-256"), Some("created")), "{i}");

    // Two keys labelled "www" (pkcs11-tool allows it): --id says which.
    token.gen_ec("www", "prime256v1");
    let crt = dir.path().join("www.crt");
    let e = err(&kt(&token, &["selfsign", "--label", "www", "--subject", "CN=www", "--days", "1", "--out", crt.to_str().unwrap()]), 3);
    assert!(e.contains("2 private keys"), "{e}");
    ok(&kt(&token, &["selfsign", "--label", "www", "--id", "0a0b", "--subject", "CN=www", "--days", "1", "--out", crt.to_str().unwrap()]));
    let csr = ok(&kt(&token, &["csr", "--label", "www", "--id", "0a0b", "--subject", "CN=www"]));
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{csr}");
    let c = json(&ok(&kt(&token, &["config", "--label", "www", "--id", "0a0b", "--cert", crt.to_str().unwrap(), "--json"])));
    assert_eq!(c["key"]["uri"], format!("pkcs11:token={};object=www;id=%0a%0b", token.label), "{c}");
    assert_eq!(c["key"]["fingerprint"].as_str(), Some(fp.as_str()), "{c}");
    assert!(c["apache"].as_str().unwrap_or_default().contains("id=%0a%0b\""), "{c}");
    assert!(!c.to_string().contains(&token.pin), "the PIN is in config's answer");
    let k = json(&ok(&kt(&token, &["check", "--cert", crt.to_str().unwrap(), "--key", "pkcs11:object=www;id=%0a%0b", "--json"])));
    assert_eq!((k["ok"].as_bool(), k["key"]["fingerprint"].as_str()), (Some(true), Some(fp.as_str())), "{k}");
    let t = json(&ok(&kt(&token, &["test", "--label", "www", "--id", "0a0b", "--cert", crt.to_str().unwrap(), "--json"])));
    assert_eq!(t["ok"].as_bool(), Some(true), "{t}");

    // list --json: every key with its URI and fingerprint.
    let l = json(&ok(&kt(&token, &["list", "--json", "--cert", crt.to_str().unwrap()])));
    let keys = l["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{l}");
    let mine = keys.iter().find(|k| k["id"] == "0a0b").unwrap();
    assert_eq!((mine["fingerprint"].as_str(), mine["matches_cert"].as_bool()), (Some(fp.as_str()), Some(true)), "{l}");
    let text = ok(&kt(&token, &["list"]));
    assert!(text.contains(&format!("public key {fp}")), "{text}");

    // delete --json: the answer on stdout, the listing on stderr.
    let o = kt(&token, &["delete", "--label", "www", "--id", "0a0b", "--yes", "--json"]);
    let d = json(&ok(&o));
    let gone: Vec<&str> = d["deleted"].as_array().unwrap().iter().map(|x| x["class"].as_str().unwrap()).collect();
    assert_eq!(gone, ["private key", "public key"], "{d}");
    assert_eq!(d["kept"].as_array().map(Vec::len), Some(2), "the other 'www' key pair stays: {d}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("to delete from token"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_token_that_refuses_an_import_is_exit_code_2_and_keeps_nothing() {
    let token = Token::new("kt-refuse");
    let dir = TestDir::new("kt-refuse-key");
    let pem = dir.path().join("k.pem");
    assert!(openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", pem.to_str().unwrap()]).status.success());
    let p11 = P11Log::new(token.dir());
    p11.fail("C_CreateObject", "CKR_DEVICE_ERROR");
    p11.fail("C_UnwrapKey", "CKR_DEVICE_ERROR");
    let e = err(&kt_wrapped(&token, &p11, &["import", "--label", "k", "--key", pem.to_str().unwrap()]), 2);
    assert!(e.contains("CKR_DEVICE_ERROR"), "{e}");
    let left = ok(&kt(&token, &["list"]));
    assert!(left.contains("0 private key(s)"), "{left}");
}
