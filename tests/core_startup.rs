//! An unusable setup stops httpd at startup with one error_log line that
//! names the vhost, the key URI and the problem; a wrong PIN is tried once.

mod common;

use common::*;

/// A site whose vhost serves token key "www-rsa"; `tweak` breaks it.
fn broken(name: &str, tweak: impl FnOnce(&mut Site)) -> (Site, StartError) {
    let mut s = Site::new(name, Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    tweak(&mut s);
    match s.try_start() {
        Ok(()) => panic!("httpd started with a broken setup:\n{}", s.apache.error_log()),
        Err(e) => (s, e),
    }
}

/// The single module error line (there must be exactly one).
fn the_error_line(s: &Site, e: &StartError) -> String {
    let log = format!("{}\n{}", e.error_log, s.apache.error_log());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("[hsm_ssl:error]")).collect();
    let mut uniq = lines.clone();
    uniq.dedup();
    assert!(!uniq.is_empty(), "no hsm_ssl error line:\n{log}");
    assert!(uniq.iter().all(|l| *l == uniq[0]), "expected one error line, got:\n{}", uniq.join("\n"));
    let l = uniq[0].to_string();
    assert!(l.contains("HSM00102: "), "not HSM00102: {l}");
    assert!(l.contains("vhost localhost:"), "no vhost in: {l}");
    assert!(l.contains("httpd.conf:"), "no config file position in: {l}");
    assert!(l.contains("pkcs11:token=web;object=www-rsa"), "no key URI in: {l}");
    l
}

#[test]
fn missing_library_stops_startup_naming_vhost_uri_and_path() {
    let (s, e) = broken("nolib", |s| s.global("HSMSSLLibrary /nonexistent/libvendor-pkcs11.so"));
    let l = the_error_line(&s, &e);
    assert!(l.contains("/nonexistent/libvendor-pkcs11.so") && l.contains("No such file"), "{l}");
}

#[test]
fn a_library_that_is_not_pkcs11_stops_startup() {
    let (s, e) = broken("notp11", |s| s.global("HSMSSLLibrary /usr/lib/x86_64-linux-gnu/libz.so.1"));
    let l = the_error_line(&s, &e);
    assert!(l.contains("C_GetFunctionList") && l.contains("not a PKCS#11 library"), "{l}");
}

#[test]
fn wrong_pin_stops_startup_and_is_tried_exactly_once() {
    let (s, e) = broken("badpin", |s| s.apache.reconfigure(|c| c.env.push(("HSM_TEST_PIN".into(), "hsm-user:wrong".into()))));
    let l = the_error_line(&s, &e);
    assert!(l.contains("wrong PIN") && l.contains("CKR_PIN_INCORRECT") && l.contains("tried once"), "{l}");
    assert!(!l.contains("hsm-user:wrong"), "PIN in the log: {l}");
    assert_eq!(s.p11.count("C_Login"), 1, "login attempts: {:?}", s.p11.counts());
}

#[test]
fn label_not_on_the_token_stops_startup_and_lists_the_labels_there() {
    let (s, e) = broken("nolabel", |s| {
        s.key("other-key", "ec:P-256");
        let cert = s.cert("www-rsa", "localhost");
        s.apache.reconfigure(|c| {
            c.vhosts.clear();
            c.vhosts.push(ssl_vhost(
                "localhost",
                &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:token=web;object=www-rsa-typo\"", cert.display()),
            ));
        });
    });
    let log = format!("{}\n{}", e.error_log, s.apache.error_log());
    let l = line_with_id(&log, "HSM00102");
    assert!(l.contains("vhost localhost:") && l.contains("object=www-rsa-typo"), "{l}");
    assert!(l.contains("no private key with label 'www-rsa-typo'"), "{l}");
    assert!(l.contains("'www-rsa'") && l.contains("'other-key'"), "labels listed: {l}");
}

#[test]
fn pin_value_in_the_key_uri_is_refused_and_points_to_hsmsslpin() {
    let (s, e) = broken("pinuri", |s| {
        let cert = s.cert("www-rsa", "localhost");
        s.apache.reconfigure(|c| {
            c.vhosts.clear();
            c.vhosts.push(ssl_vhost(
                "localhost",
                &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:token=web;object=www-rsa?pin-value=1234\"", cert.display()),
            ));
        });
    });
    let log = format!("{}\n{}", e.error_log, s.apache.error_log());
    let l = line_with_id(&log, "HSM00102");
    assert!(l.contains("HSMSSLPin") && l.contains("pin-value"), "{l}");
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("[hsm_ssl:")).collect();
    assert!(ours.iter().all(|l| !l.contains("1234")), "PIN from the URI echoed by mod_hsm_ssl:\n{}", ours.join("\n"));
    assert_eq!(s.p11.count("C_Login"), 0, "no login with a refused URI");
}

#[test]
fn no_hsmssllibrary_with_a_pkcs11_key_stops_startup() {
    let (s, e) = broken("nolibdirective", |s| {
        s.apache.reconfigure(|c| {
            c.global = c.global.lines().filter(|l| !l.starts_with("HSMSSLLibrary")).map(|l| format!("{l}\n")).collect();
        })
    });
    let l = the_error_line(&s, &e);
    assert!(l.contains("no HSMSSLLibrary is configured"), "{l}");
}

#[test]
fn hsmssl_directives_inside_a_virtualhost_are_a_configuration_error() {
    let mut s = Site::new("context", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    let cert = s.cert("www-rsa", "localhost");
    s.apache.reconfigure(|c| {
        c.vhosts.push(ssl_vhost(
            "localhost",
            &format!("HSMSSLPin env:OTHER\nSSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:object=www-rsa\"", cert.display()),
        ))
    });
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("HSMSSLPin cannot occur within <VirtualHost> section"), "{out}");
}

#[test]
fn hsmssl_value_errors_name_the_directive_and_what_it_takes() {
    for (line, says) in [
        ("HSMSSLDirectCalls maybe", "HSMSSLDirectCalls maybe: give On or Off"),
        ("HSMSSLAllowExportableKeys maybe", "HSMSSLAllowExportableKeys maybe: give On or Off"),
        ("HSMSSLMaxSessions 0", "HSMSSLMaxSessions 0: give a number from 1 to 1024"),
        ("HSMSSLOperationTimeout 0.01", "HSMSSLOperationTimeout 0.01: give seconds, from 0.1 to 600"),
    ] {
        let mut s = Site::new("values", Mpm::Event);
        s.key("www-rsa", "rsa:2048");
        s.vhost("localhost", &["www-rsa"]);
        s.global(line);
        let (code, out) = s.apache.configtest();
        assert_ne!(code, 0, "{line}: configtest passed:\n{out}");
        assert!(out.contains(says), "{line}:\n{out}");
        assert!(out.contains("httpd.conf"), "{line}: no file named:\n{out}");
    }
}

#[test]
fn hsmssltoken_picks_the_token_when_the_uri_names_none() {
    let mut s = Site::new("tokendirective", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    let cert = s.cert("www-rsa", "localhost");
    s.apache.reconfigure(|c| {
        c.global.push_str("HSMSSLToken web\n");
        c.vhosts.push(ssl_vhost("localhost", &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:object=www-rsa\"", cert.display())));
    });
    s.start();
    s.get(tls("1.3"));
}

#[test]
fn hsmssltoken_naming_an_absent_token_stops_startup_and_lists_the_tokens() {
    let (s, e) = broken("notoken", |s| {
        let cert = s.cert("www-rsa", "localhost");
        s.apache.reconfigure(|c| {
            c.global.push_str("HSMSSLToken pkcs11:token=backup\n");
            c.vhosts.clear();
            c.vhosts.push(ssl_vhost("localhost", &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:object=www-rsa\"", cert.display())));
        });
    });
    let log = format!("{}\n{}", e.error_log, s.apache.error_log());
    let l = line_with_id(&log, "HSM00102");
    assert!(l.contains("no token matches token=backup") && l.contains("'web'"), "{l}");
}

#[test]
fn pin_from_a_private_file_works_and_a_group_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    for (mode, ok) in [(0o600, true), (0o640, false)] {
        let mut s = Site::new(&format!("pinfile{mode:o}"), Mpm::Event);
        s.key("www-rsa", "rsa:2048");
        s.vhost("localhost", &["www-rsa"]);
        let pin = s.pki.path().join("pin");
        std::fs::write(&pin, format!("{}\n", s.token.pin)).unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(mode)).unwrap();
        s.global(&format!("HSMSSLPin file:{}", pin.display()));
        match (s.try_start(), ok) {
            (Ok(()), true) => {
                s.get(tls("1.3"));
            }
            (Err(e), false) => {
                let log = format!("{}\n{}", e.error_log, s.apache.error_log());
                let l = line_with_id(&log, "HSM00102");
                assert!(l.contains("accessible by group or others") && l.contains("chmod 600"), "{log}");
            }
            (r, _) => panic!("mode {mode:o}: unexpected start result {:?}\n{}", r.err(), s.apache.error_log()),
        }
    }
}

#[test]
fn the_built_module_exports_hsm_ssl_module() {
    let out = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(module_path()).output().unwrap();
    let syms = String::from_utf8_lossy(&out.stdout);
    assert!(syms.lines().any(|l| l.ends_with(" hsm_ssl_module")), "{syms}");
}
