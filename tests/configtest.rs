//! `apachectl configtest` (httpd -t) proves the HSM side before a restart,
//! and every bad input is refused by configtest AND by startup with one
//! error line that says where, which key, what is wrong and what to do.

mod common;

use common::*;

/// Token "web" with key www-rsa, a vhost serving it; not started.
fn site(name: &str) -> Site {
    let mut s = Site::new(name, Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    s
}

/// Replace the vhost with one serving `uri` with the certificate of `label`.
fn serve_uri(s: &mut Site, label: &str, uri: &str) {
    let cert = s.cert(label, "localhost");
    s.apache.reconfigure(|c| {
        c.vhosts.clear();
        c.vhosts.push(ssl_vhost("localhost", &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"{uri}\"", cert.display())));
    });
}

fn error_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().filter(|l| l.contains("[hsm_ssl:error]")).map(|l| l.to_string()).collect();
    v.dedup_by(|a, b| a.split("] ").last() == b.split("] ").last());
    v
}

/// configtest fails and startup fails, each with one module error line
/// containing every needle.
fn refused(s: &mut Site, needles: &[&str]) {
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "configtest passed:\n{out}");
    assert!(!out.contains("Syntax OK"), "{out}");
    let lines = error_lines(&out);
    assert_eq!(lines.len(), 1, "configtest: expected one error line:\n{out}");
    assert!(lines[0].contains("HSM00114: "), "configtest: not HSM00114:\n{}", lines[0]);
    for n in needles.iter().chain(&["httpd.conf:"]) {
        assert!(lines[0].contains(n), "configtest line lacks {n:?}:\n{}", lines[0]);
    }
    let e = match s.try_start() {
        Ok(()) => panic!("httpd started:\n{}", s.apache.error_log()),
        Err(e) => e,
    };
    let log = format!("{}\n{}", e.error_log, s.apache.error_log());
    let lines = error_lines(&log);
    assert!(!lines.is_empty(), "startup: no module error line:\n{log}");
    assert!(lines[0].contains("HSM00102: "), "startup: not HSM00102:\n{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "startup line lacks {n:?}:\n{}", lines[0]);
    }
}

#[test]
fn a_good_setup_passes_configtest_with_one_login() {
    let mut s = site("ct-ok");
    s.key("www-ec", "ec:P-256");
    s.vhost("other.example", &["www-ec"]);
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Syntax OK"), "{out}");
    assert_eq!(s.p11.count("C_Login"), 1, "one login per configtest: {:?}", s.p11.counts());
}

// 1. HSMSSLLibrary
#[test]
fn library_missing_not_a_library_or_not_pkcs11_is_refused() {
    let text = TestDir::new("notalib");
    let not_so = text.path().join("readme.so");
    std::fs::write(&not_so, "just text\n").unwrap();
    for (i, (path, needle)) in [
        ("/nonexistent/libvendor.so".to_string(), "No such file"),
        (not_so.display().to_string(), "cannot load it as a shared library"),
        ("/usr/lib/x86_64-linux-gnu/libz.so.1".to_string(), "not a PKCS#11 library"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = site(&format!("ct-lib{i}"));
        s.global(&format!("HSMSSLLibrary {path}"));
        refused(&mut s, &[&path, needle, "pkcs11:token=web;object=www-rsa"]);
    }
}

// 2. No HSMSSLLibrary
#[test]
fn a_pkcs11_key_without_hsmssllibrary_is_refused() {
    let mut s = site("ct-nolib");
    s.apache.reconfigure(|c| c.global = c.global.lines().filter(|l| !l.starts_with("HSMSSLLibrary")).map(|l| format!("{l}\n")).collect());
    refused(&mut s, &["no HSMSSLLibrary is configured", "vhost localhost"]);
}

// 3. Token not found / ambiguous
#[test]
fn an_absent_token_or_two_matching_tokens_are_refused() {
    let mut s = site("ct-notoken");
    serve_uri(&mut s, "www-rsa", "pkcs11:token=nosuch;object=www-rsa");
    refused(&mut s, &["no token matches token=nosuch", "'web'"]);

    let mut s = site("ct-twotokens");
    let out = s.token.softhsm_util().args(["--init-token", "--free", "--label", "backup", "--pin", "1111", "--so-pin", "2222"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (pkcs11-tool --token-label matches label prefixes, so the second
    // token's label must not start with "web".)
    serve_uri(&mut s, "www-rsa", "pkcs11:object=www-rsa");
    refused(&mut s, &["2 tokens match", "'web'", "'backup'", "HSMSSLToken"]);
}

// 4. PIN sources
#[test]
fn pin_sources_that_yield_no_pin_are_refused() {
    let dir = TestDir::new("ct-pins");
    let script = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        chmod(&p, 0o755);
        p.display().to_string()
    };
    let open_file = dir.path().join("pin644");
    std::fs::write(&open_file, "x\n").unwrap();
    chmod(&open_file, 0o644);
    /// (HSMSSLPin source, extra environment variable, expected message)
    type Case<'a> = (String, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("env:HSM_UNSET_PIN_VAR".into(), None, "is not set"),
        ("env:HSM_EMPTY_PIN".into(), Some(("HSM_EMPTY_PIN", "")), "is empty"),
        (format!("file:{}/missing", dir.path().display()), None, "cannot read the PIN file"),
        (format!("file:{}", open_file.display()), None, "accessible by group or others"),
        (format!("exec:{}/absent", dir.path().display()), None, "cannot run the program"),
        (format!("exec:{}", script("fails", "exit 3")), None, "the program failed"),
        (format!("exec:{}", script("silent", "true")), None, "printed no PIN"),
    ];
    for (i, (source, env, needle)) in cases.into_iter().enumerate() {
        let mut s = site(&format!("ct-pin{i}"));
        s.global(&format!("HSMSSLPin {source}"));
        if let Some((k, v)) = env {
            s.apache.reconfigure(|c| c.env.push((k.into(), v.into())));
        }
        refused(&mut s, &[needle, "HSMSSLPin"]);
        assert_eq!(s.p11.count("C_Login"), 0, "{source}: no login without a PIN");
    }
}

#[test]
fn a_pin_program_that_hangs_is_killed_after_its_timeout() {
    let dir = TestDir::new("ct-pinhang");
    let p = dir.path().join("hang");
    std::fs::write(&p, "#!/bin/sh\nexec sleep 60\n").unwrap();
    chmod(&p, 0o755);
    let mut s = site("ct-pinhang");
    s.global(&format!("HSMSSLPin exec:{}", p.display()));
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    assert!(line_with_id(&out, "HSM00114").contains("did not finish within 10 s and was killed"), "{out}");
}

// 5. Wrong PIN, PIN at risk
#[test]
fn a_wrong_pin_is_reported_and_tried_once() {
    let mut s = site("ct-badpin");
    s.apache.reconfigure(|c| c.env.push(("HSM_TEST_PIN".into(), "hsm-user:not-it".into())));
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0);
    assert!(line_with_id(&out, "HSM00114").contains("CKR_PIN_INCORRECT"), "{out}");
    assert!(!out.contains("not-it"), "PIN printed: {out}");
    assert_eq!(s.p11.count("C_Login"), 1);
}

#[test]
fn a_locked_pin_or_a_final_try_is_not_tried_at_all() {
    for (i, (flags, needle)) in [("0x40000", "the user PIN is locked"), ("0x20000", "the next wrong PIN would lock the user")].into_iter().enumerate()
    {
        let mut s = site(&format!("ct-pinrisk{i}"));
        s.p11.token_flags(flags);
        refused(&mut s, &[needle, "not trying to log in"]);
        assert_eq!(s.p11.count("C_Login"), 0, "{needle}: a login was attempted");
    }
}

// 6. Malformed URIs
#[test]
fn malformed_key_uris_are_refused() {
    for (i, (uri, needle)) in [
        ("pkcs11:token=web;object=www-rsa;colour=red", "unknown attribute 'colour'"),
        ("pkcs11:token=web;object=www%2", "bad percent-encoding"),
        ("pkcs11:token=web;object=", "object= is empty"),
        ("pkcs11:token=web;object=www-rsa?pin-value=hunter2", "pin-value is refused"),
        ("pkcs11:token=web;object=www-rsa?pin-source=file:/etc/pin", "pin-source is refused"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = site(&format!("ct-uri{i}"));
        serve_uri(&mut s, "www-rsa", uri);
        refused(&mut s, &["malformed key URI", needle]);
        let (_, out) = s.apache.configtest();
        assert!(!out.lines().filter(|l| l.contains("[hsm_ssl:")).any(|l| l.contains("hunter2")), "{out}");
    }
}

// 7. Key lookup
#[test]
fn keys_that_are_missing_ambiguous_public_only_or_of_an_unsupported_type_are_refused() {
    let mut s = site("ct-nolabel");
    serve_uri(&mut s, "www-rsa", "pkcs11:token=web;object=www-typo");
    refused(&mut s, &["no private key with label 'www-typo'", "'www-rsa'"]);

    // Two private keys share a label: their ids are listed.
    let mut s = site("ct-dup");
    let out = s
        .token
        .pkcs11_tool_login()
        .args(["--keypairgen", "--key-type", "rsa:2048", "--label", "www-rsa", "--id", "99", "--usage-sign", "--sensitive"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    refused(&mut s, &["2 private keys with label 'www-rsa'", "01", "99", "id="]);

    // Only the public key is left under that label.
    let mut s = site("ct-pubonly");
    let cert = s.cert("www-rsa", "localhost");
    let out = s.token.pkcs11_tool_login().args(["--delete-object", "--type", "privkey", "--label", "www-rsa"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.apache.reconfigure(|c| {
        c.vhosts.clear();
        c.vhosts.push(ssl_vhost(
            "localhost",
            &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:token=web;object=www-rsa\"", cert.display()),
        ));
    });
    refused(&mut s, &["only a public key with that name", "private key is missing"]);

    // An Ed25519 key: TLS with it is not offered, and the message says what is.
    let mut s = site("ct-ed25519");
    let out = s
        .token
        .pkcs11_tool_login()
        .args(["--keypairgen", "--key-type", "EC:edwards25519", "--label", "www-ed", "--id", "77", "--usage-sign", "--sensitive"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serve_uri(&mut s, "www-rsa", "pkcs11:token=web;object=www-ed");
    refused(&mut s, &["which mod_hsm_ssl does not serve", "supported: RSA", "P-256"]);
}

// 8. Certificate and key do not match
#[test]
fn a_certificate_for_another_key_is_refused_with_both_fingerprints() {
    let mut s = site("ct-mismatch");
    s.key("other", "rsa:2048");
    let wrong = s.cert("other", "localhost");
    s.apache.reconfigure(|c| {
        c.vhosts.clear();
        c.vhosts.push(ssl_vhost(
            "localhost",
            &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:token=web;object=www-rsa\"", wrong.display()),
        ));
    });
    let token_fp = {
        let pem = s.token.public_key_pem("www-rsa");
        let der = std::process::Command::new("openssl").args(["pkey", "-pubin", "-outform", "DER", "-in"]).arg(&pem).output().unwrap().stdout;
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(&der)?;
                c.wait_with_output()
            })
            .unwrap();
        format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
    };
    refused(&mut s, &["does not belong to this key", "certificate public key sha256:", &format!("token key {token_fp}")]);
}

// Hanging token
#[test]
fn a_token_call_that_hangs_fails_configtest_within_the_bound() {
    let mut s = site("ct-hang");
    s.global("HSMSSLOperationTimeout 1");
    s.p11.delay("C_Login", 30_000);
    let t = std::time::Instant::now();
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    assert!(line_with_id(&out, "HSM00114").contains("did not return within 1 s (HSMSSLOperationTimeout)"), "{out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "configtest took {:?}", t.elapsed());
    // Startup gives up within the bound too, with the same reason.
    let t = std::time::Instant::now();
    let e = s.try_start().err().unwrap_or_else(|| panic!("started with a hanging token"));
    let log = format!("{}\n{}", e.error_log, s.apache.error_log());
    assert!(line_with_id(&log, "HSM00102").contains("did not return within 1 s"), "{log}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "startup took {:?}", t.elapsed());
}

// The PIN never reaches a log line.
#[test]
fn the_pin_never_appears_in_the_error_log_at_trace8() {
    let mut s = site("ct-trace");
    s.apache.reconfigure(|c| c.log_level = Some("trace8".into()));
    s.start();
    s.get(tls("1.3"));
    s.apache.graceful().unwrap();
    s.get(tls("1.3"));
    let (_, out) = s.apache.configtest();
    let log = format!("{}\n{out}", s.apache.error_log());
    assert!(log.contains("[hsm_ssl:debug]"), "debug lines expected at trace8");
    assert!(!log.contains(&s.token.pin), "the PIN is in the error log");
    assert!(!log.contains("Secret-PIN1"), "part of the PIN is in the error log");
}

#[test]
fn keys_in_included_files_are_checked_whatever_the_module_load_order() {
    for first in [true, false] {
        let name = if first { "ct-inc-first" } else { "ct-inc-last" };
        let mut s = site(name);
        s.key("other", "rsa:2048");
        let wrong = s.cert("other", "inc.example");
        let right = s.cert("www-rsa", "inc.example");
        let inc = s.pki.path().join("vhost.conf");
        let write = |cert: &std::path::Path| {
            std::fs::write(
                &inc,
                ssl_vhost(
                    "inc.example",
                    &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"pkcs11:token=web;object=www-rsa\"", cert.display()),
                )
                .replace("@PORT@", "*"),
            )
            .unwrap();
        };
        write(&wrong);
        s.apache.reconfigure(|c| {
            c.module_first = first;
            c.global.push_str(&format!("<IfModule ssl_module>\nInclude {}\n</IfModule>\n", inc.display()));
        });
        let (code, out) = s.apache.configtest();
        assert_ne!(code, 0, "module first={first}: mismatch in an included vhost passed:\n{out}");
        let l = line_with_id(&out, "HSM00114");
        assert!(l.contains("vhost inc.example") && l.contains("vhost.conf:") && l.contains("does not belong to this key"), "{out}");
        write(&right);
        s.p11.reset();
        let (code, out) = s.apache.configtest();
        assert_eq!(code, 0, "module first={first}:\n{out}");
        assert_eq!(s.p11.count("C_Login"), 1, "one login for two keys in one configtest");
    }
}

#[test]
fn missing_mechanisms_are_errors_and_a_missing_pss_is_a_warning_that_names_tls13() {
    let s = site("ct-nopss");
    s.p11.hide_mechanism("0xd"); // CKM_RSA_PKCS_PSS
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "a missing PSS is only a warning:\n{out}");
    let warn = line_with_id(&out, "HSM00153");
    assert!(warn.contains("[hsm_ssl:warn]"), "{warn}");
    assert!(warn.contains("CKM_RSA_PKCS_PSS") && warn.contains("TLS 1.3") && warn.contains("object=www-rsa"), "{warn}");

    let mut s = site("ct-norsa");
    s.p11.hide_mechanism("0x1"); // CKM_RSA_PKCS
    refused(&mut s, &["does not offer CKM_RSA_PKCS"]);

    let mut s = Site::new("ct-noecdsa", Mpm::Event);
    s.key("www-ec", "ec:P-256");
    s.vhost("localhost", &["www-ec"]);
    s.p11.hide_mechanism("0x1041"); // CKM_ECDSA
    refused(&mut s, &["does not offer CKM_ECDSA"]);
}

#[test]
fn a_library_whose_initialization_hangs_fails_configtest_within_the_bound() {
    let mut s = site("ct-inithang");
    s.global("HSMSSLOperationTimeout 1");
    s.p11.delay("C_Initialize", 20_000);
    let t = std::time::Instant::now();
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    // (the outer step bound or the inner open bound fires first: "1 s" or "1000 ms")
    assert!(line_with_id(&out, "HSM00114").contains("loading and initializing the PKCS#11 library did not return within 1"), "{out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "configtest took {:?}", t.elapsed());
}
