//! A broken or hostile token cannot crash, bloat or hang the server: wrong
//! output lengths from C_Sign / C_Decrypt, huge attribute values, a login
//! that does not return. Real httpd + SoftHSM2 behind the wrapper
//! (tests/p11wrap), whose `outlen`, `lieoutlen`, `toosmall` and `attrlen`
//! knobs make the token lie.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 2^32: a length no buffer of the module may ever be sized by.
const FOUR_GIB: u64 = 1 << 32;
/// What a child may grow to, whatever the token claims (a child of these
/// tests uses about 15-25 MiB).
const CHILD_RSS_LIMIT_KIB: u64 = 128 * 1024;

/// One event child (every handshake meets the same PKCS#11 state and
/// session pool) serving the token key "www" of type `key`, with
/// HSMSSLOperationTimeout `timeout` s.
fn site(name: &str, key: &str, timeout: u32) -> Site {
    let mut s = Site::new(name, Mpm::Event);
    s.key("www", key);
    s.vhost("localhost", &["www"]);
    s.global(&format!(
        "ServerLimit 1\nStartServers 1\nThreadLimit 16\nThreadsPerChild 16\nMaxRequestWorkers 16\n\
         MinSpareThreads 1\nMaxSpareThreads 16\nHSMSSLOperationTimeout {timeout}"
    ));
    s
}

fn started(name: &str, key: &str) -> Site {
    let mut s = site(name, key, 2);
    s.start();
    s.get(tls("1.3"));
    s
}

/// TLS 1.2 with RSA key exchange: the token decrypts the premaster.
fn rsa_kx() -> ClientOpts {
    ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") }
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// With the token misbehaving (`fault` set up), a handshake with `client`
/// fails with an alert within the bound, the error log names the fault
/// (a line with message ID `id` containing `needle`; no check when `id` is
/// empty), no child crashed or grew, and service is back once the fault is
/// cleared.
fn handshake_refused(s: &Site, what: &str, client: &ClientOpts, id: &str, needle: &str) {
    let t = Instant::now();
    let r = s.try_get(client.clone());
    assert!(r.http_status.is_none(), "{what}: served:\n{}", r.raw);
    assert!(r.raw.contains("alert"), "{what}: no TLS alert:\n{}", r.raw);
    assert!(t.elapsed() < Duration::from_secs(4), "{what}: the failing handshake took {:?}", t.elapsed());
    let log = s.apache.error_log();
    assert!(id.is_empty() || with_id(&log, id).iter().any(|l| l.contains(needle)), "{what}: no {id} line with '{needle}':\n{log}");
    assert!(!log.contains("exit signal"), "{what}: a child crashed:\n{log}");
    let children = s.apache.child_pids();
    assert!(!children.is_empty(), "{what}: no child left");
    for pid in children {
        let rss = rss_kib(pid);
        eprintln!("{what}: child {pid} RSS {rss} KiB");
        assert!(rss < CHILD_RSS_LIMIT_KIB, "{what}: child {pid} grew to {rss} KiB");
    }
    s.p11.clear_faults();
    back(s, client);
}

/// Polls with `client` until a handshake succeeds (fails after 5 s), then
/// the next few must succeed too: no session or state the fault spoiled is
/// still in use.
fn back(s: &Site, client: &ClientOpts) {
    let t = Instant::now();
    loop {
        let r = s.try_get(client.clone());
        if r.ok && r.http_status == Some(200) {
            for _ in 0..4 {
                let r = s.try_get(client.clone());
                assert_eq!(r.http_status, Some(200), "served once, then failed again:\n{}\n{}", r.raw, s.apache.error_log());
            }
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "service not back after the fault was cleared:\n{}\n{}", r.raw, s.apache.error_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_token_claiming_more_output_than_the_buffer_fails_the_operation_with_a_clear_line() {
    let s = started("lieoutlen", "rsa:2048");
    for (function, client) in [("C_Sign", tls("1.3")), ("C_Decrypt", rsa_kx())] {
        for n in [1025, FOUR_GIB] {
            s.p11.lie_out_len(function, n);
            let needle = format!("{function} returned CKR_OK claiming {n} bytes of output in a 1024-byte buffer");
            handshake_refused(&s, &format!("{function} claiming {n}"), &client, "HSM00471", &needle);
        }
    }
}

#[test]
fn a_token_asking_for_a_huge_buffer_fails_the_operation_and_its_session_is_not_reused() {
    let s = started("toosmall", "rsa:2048");
    for (function, client) in [("C_Sign", tls("1.3")), ("C_Decrypt", rsa_kx())] {
        for n in [2048, FOUR_GIB] {
            s.p11.too_small(function, n);
            let needle = format!("{function} asked for a {n}-byte output buffer");
            // Service must return: the session whose operation the token
            // left active is closed, not handed to the next handshake.
            handshake_refused(&s, &format!("{function} asking for {n}"), &client, "HSM00470", &needle);
        }
    }
}

#[test]
fn ecdsa_signatures_one_byte_short_or_long_are_refused_with_their_length() {
    let s = started("ecdsa-len", "ec:P-256");
    for n in [63, 65] {
        s.p11.out_len("C_Sign", n);
        let needle = format!("the token returned an ECDSA signature of {n} bytes; P-256 needs 64 (r || s)");
        handshake_refused(&s, &format!("ECDSA {n} bytes"), &tls("1.3"), "HSM00530", &needle);
    }
}

#[test]
fn premaster_decrypts_of_47_or_49_bytes_fail_the_handshake_and_nothing_else() {
    let s = started("premaster-len", "rsa:2048");
    for n in [47, 49] {
        s.p11.out_len("C_Decrypt", n);
        // A premaster of the wrong length is replaced by a random one, as
        // for any bad ciphertext (no oracle): the Finished check fails.
        handshake_refused(&s, &format!("premaster {n} bytes"), &rsa_kx(), "", "");
        assert!(s.p11.decrypt_ops() > 0, "the decrypt never reached the token");
    }
}

/// Peak RSS of the children this test process has waited for (apache2 -t
/// among them), in KiB.
fn children_max_rss_kib() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as u64
}

#[test]
fn huge_key_attributes_fail_configtest_and_startup_naming_the_attribute_and_size() {
    for (key, attrs) in [
        ("rsa:2048", &[("0x120", "CKA_MODULUS"), ("0x122", "CKA_PUBLIC_EXPONENT"), ("0x102", "CKA_ID"), ("0x3", "CKA_LABEL")][..]),
        ("ec:P-256", &[("0x181", "CKA_EC_POINT"), ("0x180", "CKA_EC_PARAMS")][..]),
    ] {
        let mut s = site(&format!("attr-{}", &key[..2]), key, 2);
        for &(cka, name) in attrs {
            for n in [4 << 20, FOUR_GIB] {
                s.p11.clear_faults();
                s.p11.attr_len(cka, n);
                let needle = format!("the token claims {name} is {n} bytes long");
                let t = Instant::now();
                let (code, out) = s.apache.configtest();
                assert_eq!(code, 1, "{name} of {n} bytes: configtest did not fail cleanly:\n{out}");
                assert!(line_with_id(&out, "HSM00114").contains(&needle), "{name} of {n} bytes: no line with '{needle}':\n{out}");
                assert!(t.elapsed() < Duration::from_secs(15), "{name}: configtest took {:?}", t.elapsed());
                let rss = children_max_rss_kib();
                eprintln!("{name} of {n} bytes: configtest in {:?}, peak RSS of waited-for children {rss} KiB", t.elapsed());
                assert!(rss < 256 * 1024, "{name} of {n} bytes: a child of this test reached {rss} KiB");
            }
            // Startup reads the key the same way and fails the same way.
            let e = s.try_start().err().unwrap_or_else(|| panic!("started with a 4 GiB {name}"));
            let needle = format!("the token claims {name} is {FOUR_GIB} bytes long");
            assert!(with_id(&e.error_log, "HSM00102").iter().any(|l| l.contains(&needle)), "{name} at startup:\n{}", e.error_log);
        }
        s.p11.clear_faults();
        s.start();
        s.get(tls("1.3"));
    }
}

#[test]
fn an_rsa_key_under_2048_bits_is_refused_by_configtest_and_startup() {
    let mut s = Site::new("rsa1024", Mpm::Event);
    s.token.gen_rsa("www", 1024);
    s.vhost("localhost", &["www"]);
    let needle = "the RSA key has 1024 bits; mod_hsm_ssl serves RSA keys of 2048 to 8192 bits";
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    assert!(line_with_id(&out, "HSM00114").contains(needle), "{out}");
    // At startup OpenSSL's security level makes mod_ssl refuse the
    // certificate before it asks for the key.
    let e = s.try_start().err().unwrap_or_else(|| panic!("started with a 1024-bit RSA key"));
    assert!(with_id(&e.error_log, "HSM00102").iter().any(|l| l.contains(needle)) || e.error_log.contains("ee key too small"), "{}", e.error_log);
}

#[test]
fn a_relogin_that_never_returns_costs_a_handshake_at_most_the_bound() {
    let mut s = site("relogin-hang", "rsa:2048", 1);
    s.start();
    s.get(tls("1.3"));
    // The token is lost; logging in again (after the re-initialization)
    // hangs for 6 s, far past the 1 s bound.
    s.p11.delay("C_Login", 6000);
    s.p11.fail_once("C_Sign", "CKR_DEVICE_ERROR");
    let t = Instant::now();
    let r = s.try_get(ClientOpts { timeout: Some(Duration::from_secs(20)), ..tls("1.3") });
    let waited = t.elapsed();
    assert!(s.p11.fail_once_fired(), "the token error was never injected");
    assert!(r.http_status.is_none(), "served while the login hangs:\n{}", r.raw);
    assert!(waited < Duration::from_secs(3), "the handshake waited {waited:?} for a hung login with a 1 s bound");
    let log = s.apache.error_log();
    let late = with_any_id(&log, &["HSM00400", "HSM00530"]);
    assert!(late.iter().any(|l| l.contains("did not answer within 1000 ms")), "{log}");
    assert!(!log.contains("exit signal"), "{log}");
    s.p11.clear_faults();
    // The hung login ends after 6 s; then the token serves again.
    let t = Instant::now();
    loop {
        let r = s.try_get(tls("1.3"));
        if r.http_status == Some(200) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "service not back after the login returned:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}
