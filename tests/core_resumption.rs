//! TLS session resumption costs the token nothing: exactly one token
//! operation (C_SignInit, or C_DecryptInit for static RSA key exchange) per
//! full handshake, none per resumed one. Real apache2 + mod_ssl, a key in a
//! fresh SoftHSM2 token behind the counting wrapper, `openssl s_client
//! -sess_out` for the full handshake and `-sess_in` for the resumed ones.
//!
//! Each case also checks the server's side: a log line per request with the
//! serving child's pid and mod_ssl's `SSL_SESSION_RESUMED` ("Initial" /
//! "Resumed").

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Resumed connections after the full one, per case.
const RESUMES: usize = 5;

/// Per request: serving pid, `Initial`/`Resumed`, protocol.
const RESUMPTION_LOG: &str = "LogFormat \"%P %{SSL_SESSION_RESUMED}x %{SSL_PROTOCOL}x\" resumption\n\
                              CustomLog @ROOT@/logs/resumption.log resumption";

/// A started site serving the token key `label` (`spec`, see `Site::key`) for
/// "localhost", with `extra` global lines (merged into the vhost by mod_ssl).
fn site(name: &str, mpm: Mpm, label: &str, spec: &str, extra: &str) -> Site {
    let mut s = Site::new(name, mpm);
    s.key(label, spec);
    s.vhost("localhost", &[label]);
    s.global(RESUMPTION_LOG);
    s.global(extra);
    s.start();
    s
}

/// (C_SignInit, C_DecryptInit) calls so far, all processes.
fn token_ops(s: &Site) -> (usize, usize) {
    (s.p11.sign_ops(), s.p11.decrypt_ops())
}

fn ops_since(s: &Site, before: (usize, usize)) -> (usize, usize) {
    let now = token_ops(s);
    (now.0 - before.0, now.1 - before.1)
}

/// The server issued a session ticket (s_client prints it in the session
/// block).
fn has_ticket(r: &TlsResult) -> bool {
    r.raw.contains("TLS session ticket:")
}

/// One full handshake saving its session to a file, whose path is returned
/// with the result. Asserts: a new session, verified, HTTP 200, and exactly
/// `full_ops` (signatures, decryptions) in the token.
fn full(s: &Site, case: &str, opts: &ClientOpts, full_ops: (usize, usize)) -> (TlsResult, PathBuf) {
    let sess = s.pki.path().join("session.pem");
    let before = token_ops(s);
    let r = s.get(ClientOpts { sess_out: Some(sess.clone()), ..opts.clone() });
    assert!(!r.reused, "{case}: the first connection must be a full handshake, s_client says reused:\n{}", r.raw);
    assert_eq!(
        ops_since(s, before),
        full_ops,
        "{case}: a full handshake must cost exactly {} token signature(s) and {} decryption(s) \
         (C_SignInit, C_DecryptInit)",
        full_ops.0,
        full_ops.1
    );
    let saved = std::fs::metadata(&sess).map(|m| m.len()).unwrap_or(0);
    assert!(saved > 0, "{case}: s_client saved no session:\n{}", r.raw);
    (r, sess)
}

/// `RESUMES` connections offering the session in `sess`. Asserts for each:
/// resumed (s_client says "Reused"), HTTP 200 with the test page, the
/// protocol and cipher of `full`, and no token operation at all.
fn resumed(s: &Site, case: &str, opts: &ClientOpts, sess: &Path, full: &TlsResult) -> Vec<TlsResult> {
    let mut out = Vec::new();
    for i in 1..=RESUMES {
        let before = token_ops(s);
        let r = s.try_get(ClientOpts { sess_in: Some(sess.to_path_buf()), ..opts.clone() });
        assert!(r.ok, "{case}: resumed connection {i}: handshake failed:\n{}\n--- error_log ---\n{}", r.raw, s.apache.error_log());
        assert!(r.reused, "{case}: resumed connection {i}: the server did not resume the session (s_client: New, not Reused):\n{}", r.raw);
        assert_eq!(r.http_status, Some(200), "{case}: resumed connection {i}: no HTTP 200:\n{}", r.raw);
        assert!(
            r.http_response.as_deref().unwrap_or("").contains("hsm-ssl test page"),
            "{case}: resumed connection {i}: not the test page:\n{}",
            r.raw
        );
        assert_eq!(r.protocol, full.protocol, "{case}: resumed connection {i}: protocol differs from the full handshake");
        assert_eq!(r.cipher, full.cipher, "{case}: resumed connection {i}: cipher differs from the full handshake");
        assert_eq!(
            ops_since(s, before),
            (0, 0),
            "{case}: resumed connection {i}: a resumed handshake must not touch the token, \
             yet it cost these (signatures, decryptions)"
        );
        out.push(r);
    }
    out
}

/// The full handshake, then the resumed ones.
fn full_then_resumed(s: &Site, case: &str, opts: ClientOpts, full_ops: (usize, usize)) -> (TlsResult, Vec<TlsResult>) {
    let (f, sess) = full(s, case, &opts, full_ops);
    let r = resumed(s, case, &opts, &sess, &f);
    (f, r)
}

/// The server's view, from the resumption log, once it has `n` lines:
/// (pid, `Initial`/`Resumed`, protocol) per request, in order.
fn server_log(s: &Site, case: &str, n: usize) -> Vec<(i32, String, String)> {
    let path = s.apache.root.join("logs/resumption.log");
    // The line is written when the request ends; the client may exit first.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(text.lines().count(), n, "{case}: expected {n} requests in the resumption log:\n{text}");
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{case}: resumption log line {l:?}");
            (f[0].parse().expect("pid in the resumption log"), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// Checks that the server saw one initial handshake and then `RESUMES`
/// resumed ones (mod_ssl's SSL_SESSION_RESUMED), all with `protocol`;
/// returns the serving pids in order.
fn server_side(s: &Site, case: &str, protocol: &str) -> Vec<i32> {
    let log = server_log(s, case, 1 + RESUMES);
    for (i, (_, state, proto)) in log.iter().enumerate() {
        let expected = if i == 0 { "Initial" } else { "Resumed" };
        assert_eq!(state, expected, "{case}: request {i}: mod_ssl's SSL_SESSION_RESUMED: {log:?}");
        assert_eq!(proto, protocol, "{case}: request {i}: protocol: {log:?}");
    }
    log.iter().map(|e| e.0).collect()
}

#[test]
fn tls13_session_ticket_resumption_costs_no_token_operation() {
    let s = site("res13", Mpm::Event, "www-rsa", "rsa:2048", "SSLSessionTickets on");
    let (full, _) = full_then_resumed(&s, "TLS 1.3 tickets", tls("1.3"), (1, 0));
    assert_eq!(full.protocol.as_deref(), Some("TLSv1.3"));
    assert_eq!(full.peer_sig_type.as_deref(), Some("RSA-PSS"));
    server_side(&s, "TLS 1.3 tickets", "TLSv1.3");
}

#[test]
fn tls12_ecdhe_rsa_ticket_resumption_costs_no_token_operation() {
    let s = site("res12t", Mpm::Event, "www-rsa", "rsa:2048", "SSLSessionTickets on");
    let opts = ClientOpts { cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()), ..tls("1.2") };
    // (Resumed connections are checked to have the full one's cipher.)
    let (full, _) = full_then_resumed(&s, "TLS 1.2 ECDHE-RSA tickets", opts, (1, 0));
    assert_eq!(full.cipher.as_deref(), Some("ECDHE-RSA-AES128-GCM-SHA256"));
    assert_eq!(full.peer_sig_type.as_deref(), Some("RSA-PSS"));
    assert!(has_ticket(&full), "TLS 1.2 with SSLSessionTickets on: the server issued no ticket:\n{}", full.raw);
    server_side(&s, "TLS 1.2 ECDHE-RSA tickets", "TLSv1.2");
}

/// Without tickets, a TLS 1.2 session is resumed by its ID from mod_ssl's
/// shmcb cache, which the children share. To make sure the resumptions are
/// served by other children than the one that made the session, that child
/// is terminated after the full handshake (prefork: one connection per
/// child; the master forks a replacement).
#[test]
fn tls12_session_id_resumption_from_the_shared_cache_works_across_children_without_the_token() {
    let case = "TLS 1.2 session ID, shmcb";
    let s = site("res12id", Mpm::Prefork, "www-rsa", "rsa:2048", "SSLSessionTickets off");
    let opts = ClientOpts { cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()), ..tls("1.2") };
    let (f, sess) = full(&s, case, &opts, (1, 0));
    assert!(!has_ticket(&f), "{case}: SSLSessionTickets off, yet the server issued a ticket:\n{}", f.raw);

    let creator = server_log(&s, case, 1)[0].0;
    assert!(s.apache.child_pids().contains(&creator), "{case}: pid {creator} is not a child of this apache2");
    kill(creator, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(creator) {
        assert!(Instant::now() < deadline, "{case}: child {creator} did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }

    for r in resumed(&s, case, &opts, &sess, &f) {
        assert!(!has_ticket(&r), "{case}: resumed with a ticket, not by session ID:\n{}", r.raw);
    }
    let pids = server_side(&s, case, "TLSv1.2");
    assert!(pids[1..].iter().all(|p| *p != creator), "{case}: a resumption was served by pid {creator}, which had exited: {pids:?}");
}

#[test]
fn tls12_static_rsa_resumption_costs_no_token_decryption() {
    let case = "TLS 1.2 RSA key exchange";
    let s = site("res12rsa", Mpm::Event, "www-rsa", "rsa:2048", "");
    let opts = ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") };
    let (full, _) = full_then_resumed(&s, case, opts, (0, 1));
    assert_eq!(full.cipher.as_deref(), Some("AES128-GCM-SHA256"));
    assert_eq!(full.peer_sig_type, None, "{case}: static RSA key exchange has no server signature");
    server_side(&s, case, "TLSv1.2");
}

#[test]
fn ec_p256_tls13_resumption_costs_no_token_operation() {
    let case = "EC P-256 TLS 1.3";
    let s = site("res13ec", Mpm::Event, "www-ec", "ec:P-256", "");
    let (full, _) = full_then_resumed(&s, case, tls("1.3"), (1, 0));
    assert_eq!(full.peer_sig_type.as_deref(), Some("ECDSA"));
    assert_eq!(full.server_key.as_deref(), Some("EC 256"));
    server_side(&s, case, "TLSv1.3");
}
