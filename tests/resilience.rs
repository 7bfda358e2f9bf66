//! Keeps serving through HSM trouble: session and token faults, hangs,
//! refused PINs, fork safety. Real httpd + SoftHSM2 behind the
//! fault-injecting wrapper (tests/p11wrap).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn rsa_site(name: &str, mpm: Mpm, extra: &str) -> Site {
    let mut s = Site::new(name, mpm);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    if !extra.is_empty() {
        s.global(extra);
    }
    s.start();
    s
}

/// Polls with full handshakes until one succeeds; fails after `limit`.
fn back_within(s: &Site, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let r = s.try_get(tls("1.3"));
        if r.ok && r.http_status == Some(200) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "service not back {limit:?} after the fault ended:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One event child with 16 threads (all handshakes meet the same PKCS#11
/// state) and `HSMSSLOperationTimeout` of `timeout` seconds.
fn one_child_site(name: &str, timeout: u32) -> Site {
    rsa_site(
        name,
        Mpm::Event,
        &format!(
            "ServerLimit 1\nStartServers 1\nThreadLimit 16\nThreadsPerChild 16\nMaxRequestWorkers 16\n\
             MinSpareThreads 1\nMaxSpareThreads 16\nHSMSSLOperationTimeout {timeout}"
        ),
    )
}

/// `n` TLS 1.3 handshakes at once (client i starts i * `stagger` later):
/// each result with how long it took.
fn timed_clients(s: &Site, n: u32, stagger: Duration) -> Vec<(TlsResult, Duration)> {
    let port = s.apache.port;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let ca = s.ca.clone();
            std::thread::spawn(move || {
                std::thread::sleep(stagger * i);
                let t = Instant::now();
                let r = tls_get(port, &ClientOpts { cafile: Some(ca), timeout: Some(Duration::from_secs(30)), ..tls("1.3") });
                (r, t.elapsed())
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn a_session_error_is_retried_on_a_new_session_and_the_client_never_notices() {
    for rv in ["CKR_SESSION_HANDLE_INVALID", "CKR_SESSION_CLOSED"] {
        let s = rsa_site(&format!("sess-{rv}"), Mpm::Event, "");
        s.get(tls("1.3"));
        let opened = s.p11.count("C_OpenSession");
        s.p11.fail_once("C_Sign", rv);
        let r = s.get(tls("1.3"));
        assert_eq!(r.peer_sig_type.as_deref(), Some("RSA-PSS"));
        assert!(s.p11.fail_once_fired(), "{rv} was never injected");
        assert!(s.p11.count("C_OpenSession") > opened, "{rv}: no new session was opened");
        assert!(has_id(&s.apache.error_log(), "HSM00465"), "{}", s.apache.error_log());
    }
}

#[test]
fn a_one_off_token_error_reinitializes_and_the_client_never_notices() {
    for rv in ["CKR_DEVICE_ERROR", "CKR_TOKEN_NOT_PRESENT", "CKR_USER_NOT_LOGGED_IN", "CKR_OBJECT_HANDLE_INVALID"] {
        let s = rsa_site(&format!("tok1-{rv}"), Mpm::Event, "");
        s.get(tls("1.3"));
        let (inits, logins) = (s.p11.count("C_Initialize"), s.p11.count("C_Login"));
        s.p11.fail_once("C_Sign", rv);
        s.get(tls("1.3"));
        assert!(s.p11.fail_once_fired(), "{rv} was never injected");
        assert!(s.p11.count("C_Initialize") > inits, "{rv}: PKCS#11 was not re-initialized");
        assert!(s.p11.count("C_Login") > logins, "{rv}: no new login");
    }
}

#[test]
fn while_the_token_is_down_handshakes_fail_fast_and_service_returns_within_2s() {
    for rv in ["CKR_DEVICE_ERROR", "CKR_TOKEN_NOT_PRESENT", "CKR_USER_NOT_LOGGED_IN", "CKR_OBJECT_HANDLE_INVALID", "CKR_FUNCTION_FAILED"] {
        let s = rsa_site(&format!("down-{rv}"), Mpm::Event, "HSMSSLOperationTimeout 2");
        s.get(tls("1.3"));
        s.p11.fail("C_Sign", rv);
        let logins = s.p11.count("C_Login");
        for _ in 0..6 {
            let t = Instant::now();
            let r = s.try_get(tls("1.3"));
            assert!(r.http_status.is_none(), "{rv}: served while the token is down:\n{}", r.raw);
            assert!(r.raw.contains("alert"), "{rv}: no TLS alert:\n{}", r.raw);
            assert!(t.elapsed() < Duration::from_secs(3), "{rv}: a failing handshake took {:?}", t.elapsed());
        }
        // Re-initialization is paced by the backoff, not done per handshake.
        assert!(s.p11.count("C_Login") - logins <= 6, "{rv}: {} logins for 6 handshakes", s.p11.count("C_Login") - logins);
        s.p11.clear_faults();
        back_within(&s, Duration::from_secs(2));
    }
}

#[test]
fn a_hanging_token_call_costs_a_handshake_at_most_the_bound_and_leaks_no_session() {
    let s = rsa_site("hang", Mpm::Event, "HSMSSLOperationTimeout 1");
    s.get(tls("1.3"));
    s.p11.delay("C_Sign", 4000);
    let t = Instant::now();
    let r = s.try_get(ClientOpts { timeout: Some(Duration::from_secs(20)), ..tls("1.3") });
    let waited = t.elapsed();
    assert!(r.http_status.is_none(), "served through a hanging token:\n{}", r.raw);
    assert!(waited < Duration::from_secs(3), "the handshake waited {waited:?} with a 1 s bound");
    let log = s.apache.error_log();
    assert!(log.contains("did not answer within 1000 ms"), "{log}");
    // The timeout marks the token unavailable, so the next handshakes fail at
    // once instead of each waiting the bound. (The key service's watchdog
    // notices within its tick of the bound: poll for the line.)
    let marked = |log: &str| log.lines().any(|l| l.contains("token unavailable: ") && l.contains("did not answer within 1000 ms"));
    let t = Instant::now();
    while !marked(&s.apache.error_log()) {
        assert!(t.elapsed() < Duration::from_secs(2), "the token was not marked unavailable:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    s.p11.clear_faults();
    // The hung call ends after 4 s; its session goes back to the pool.
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..5 {
        s.get(tls("1.3"));
    }
    let open = s.p11.count("C_OpenSession") as i64 - s.p11.count("C_CloseSession") as i64;
    let children = s.apache.child_pids().len() as i64;
    // Per child: sessions for the calls in flight (at most 2 here) + the login anchor.
    assert!(open <= children * 3, "{open} sessions open for {children} children: a session leaked");
}

/// Threads named like the executor's helpers in the processes of `s` that
/// talk to the token: the children, or the key service.
fn helper_threads(s: &Site) -> usize {
    let mut pids = s.apache.child_pids();
    pids.extend(s.apache.key_service_pids());
    pids.iter()
        .flat_map(|&p| task_dirs(p))
        .filter(|t| std::fs::read_to_string(t.join("comm")).map(|c| c.trim() == "hsm_ssl-token").unwrap_or(false))
        .count()
}

#[test]
fn with_direct_calls_the_worker_calls_the_token_itself_and_a_slow_call_is_waited_for() {
    // By default a child runs its calls on helper threads (the bounded
    // wait); the key service runs them on the connection's thread, and
    // the child bounds its wait for the answer.
    let s = rsa_site("helpers", Mpm::Event, "");
    s.get(tls("1.3"));
    if s.apache.key_service_pids().is_empty() {
        assert!(helper_threads(&s) > 0, "no helper thread with the default setting");
    } else {
        assert_eq!(helper_threads(&s), 0, "the key service hands its calls to helper threads");
    }
    drop(s);

    let s = rsa_site("direct", Mpm::Event, "HSMSSLDirectCalls On\nHSMSSLOperationTimeout 1\nLogLevel hsm_ssl:info");
    for v in ["1.3", "1.2"] {
        let r = s.get(tls(v));
        assert_eq!(r.http_status, Some(200));
    }
    assert_eq!(helper_threads(&s), 0, "HSMSSLDirectCalls On, yet helper threads were started");
    assert!(has_id(&s.apache.error_log(), "HSM00101"), "the setting is not logged:\n{}", s.apache.error_log());
    // Not bounded: a 2.5 s call with a 1 s bound is waited for, and served.
    s.p11.delay("C_Sign", 2500);
    let t = Instant::now();
    let r = s.try_get(ClientOpts { timeout: Some(Duration::from_secs(20)), ..tls("1.3") });
    let waited = t.elapsed();
    s.p11.clear_faults();
    assert_eq!(r.http_status, Some(200), "a slow call failed the handshake with direct calls:\n{}", r.raw);
    assert!(waited >= Duration::from_millis(2400), "the handshake took only {waited:?} over a 2.5 s call");
    assert!(!s.apache.error_log().contains("did not answer within"), "{}", s.apache.error_log());
}

/// Prefork with four children, each replaced after two connections: many
/// processes, some forked after the fault began.
const MANY_CHILDREN: &str = "StartServers 4\nMinSpareServers 4\nMaxSpareServers 8\nMaxConnectionsPerChild 2";

#[test]
fn a_refused_pin_costs_one_login_try_for_the_whole_server_until_a_reload() {
    for rv in ["CKR_PIN_INCORRECT", "CKR_PIN_LOCKED", "CKR_PIN_EXPIRED", "CKR_PIN_LEN_RANGE"] {
        let mut s = rsa_site(&format!("pin-{rv}"), Mpm::Prefork, MANY_CHILDREN);
        assert!(s.apache.wait_children(4, Duration::from_secs(10)), "prefork did not start 4 children");
        s.get(tls("1.3"));
        // The token is lost and the PIN no longer works: one process tries
        // to log in again, every other process and every child forked later
        // learns from it and does not try.
        s.p11.fail("C_Login", rv);
        s.p11.fail("C_Sign", "CKR_USER_NOT_LOGGED_IN");
        let logins = s.p11.count("C_Login");
        let mut pids = std::collections::BTreeSet::new();
        for _ in 0..16 {
            let r = s.try_get(tls("1.3"));
            assert!(r.http_status.is_none(), "{rv}: served without a login");
            pids.extend(s.apache.child_pids());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(pids.len() > 4, "{rv}: no child was replaced ({pids:?})");
        let tried = s.p11.count("C_Login") - logins;
        assert_eq!(tried, 1, "{rv}: {tried} login attempts by {} children", pids.len());
        let log = s.apache.error_log();
        // Other processes learn it from the shared latch; the key service,
        // the one process that logs in, from its own refusal.
        assert!(with_id(&log, "HSM00403").iter().any(|l| l.contains(rv)), "{rv}:\n{log}");
        // Fixed and reloaded: a new try, and service is back.
        s.p11.clear_faults();
        s.apache.graceful_signal().expect("graceful restart");
        back_within(&s, Duration::from_secs(10));
    }
}

#[test]
fn children_never_use_the_parents_pkcs11_state_and_initialize_with_os_locking() {
    for mpm in [Mpm::Event, Mpm::Worker, Mpm::Prefork] {
        let s = rsa_site(&format!("fork-{mpm:?}"), mpm, "");
        for _ in 0..6 {
            s.get(tls("1.3"));
        }
        let master = s.apache.master_pid().unwrap() as u32;
        let procs = s.p11.per_process();
        let mut signers = 0;
        for (pid, calls) in &procs {
            if let Some(first_sign) = calls.iter().position(|c| c == "C_Sign") {
                signers += 1;
                assert_ne!(*pid, master, "{mpm:?}: the parent signed");
                let init = calls.iter().position(|c| c == "C_Initialize");
                assert!(init.is_some_and(|i| i < first_sign), "{mpm:?}: pid {pid} signed without its own C_Initialize");
            }
            for c in calls.iter().filter(|c| c.starts_with("C_Initialize flags")) {
                assert!(c.ends_with("0x2"), "{mpm:?}: pid {pid} initialized without CKF_OS_LOCKING_OK: {c}");
            }
        }
        assert!(signers > 0, "{mpm:?}: no process signed");
        // The parent finalized before forking: its log ends with C_Finalize.
        if let Some((_, calls)) = procs.iter().find(|(p, _)| *p == master) {
            let last = calls.iter().rev().find(|c| !c.starts_with("C_Initialize flags"));
            assert_eq!(last.map(String::as_str), Some("C_Finalize"), "{mpm:?}: the parent kept PKCS#11 open");
        }
    }
}

#[test]
fn the_session_pool_is_bounded_by_hsmsslmaxsessions_and_waiters_are_served() {
    let s = rsa_site(
        "pool",
        Mpm::Event,
        "ServerLimit 1\nStartServers 1\nThreadLimit 16\nThreadsPerChild 16\nMaxRequestWorkers 16\n\
         MinSpareThreads 1\nMaxSpareThreads 16\nHSMSSLMaxSessions 2",
    );
    s.p11.delay("C_Sign", 200);
    let port = s.apache.port;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let ca = s.ca.clone();
            std::thread::spawn(move || tls_get(port, &ClientOpts { cafile: Some(ca), timeout: Some(Duration::from_secs(30)), ..tls("1.3") }))
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert!(r.ok && r.http_status == Some(200), "a waiter was not served:\n{}\n{}", r.raw, s.apache.error_log());
    }
    let child = s.apache.child_pids()[0] as u32;
    let calls = s.p11.per_process().into_iter().find(|(p, _)| *p == child).map(|(_, c)| c).unwrap_or_default();
    let opened = calls.iter().filter(|c| *c == "C_OpenSession").count();
    // Two pooled sessions and the one that holds the login.
    assert!(opened <= 3, "{opened} sessions opened with HSMSSLMaxSessions 2");
    assert!(s.p11.max_in_flight("C_Sign") <= 2, "more than 2 signatures at once");
}

#[test]
fn concurrent_handshakes_hitting_a_token_failure_do_not_stall() {
    let s = one_child_site("concurrent-fail", 3);
    s.get(tls("1.3"));
    s.p11.delay("C_SignInit", 300);
    s.p11.fail("C_Sign", "CKR_DEVICE_ERROR");
    let t = Instant::now();
    for (r, took) in timed_clients(&s, 8, Duration::ZERO) {
        assert!(r.http_status.is_none(), "served with a failing token");
        assert!(took < Duration::from_secs(5), "a failing handshake took {took:?}:\n{}", s.apache.error_log());
    }
    assert!(t.elapsed() < Duration::from_secs(8));
    assert!(!has_id(&s.apache.error_log(), "HSM00409"), "{}", s.apache.error_log());
    s.p11.clear_faults();
    back_within(&s, Duration::from_secs(2));
}

#[test]
fn a_token_error_while_a_call_still_hangs_costs_a_handshake_at_most_the_bound() {
    // The failover case of a network HSM: one call hangs past the bound,
    // then the token answers the next calls with an error that needs a
    // re-initialization. The old state cannot be finalized while the hung
    // call still runs on it; handshakes must not wait for that.
    let s = one_child_site("hang-then-fail", 1);
    s.get(tls("1.3"));
    s.p11.delay("C_Sign", 7000);
    let hung = s.try_get(ClientOpts { timeout: Some(Duration::from_secs(20)), ..tls("1.3") });
    assert!(hung.http_status.is_none(), "served through a hanging token");
    // The hung C_Sign goes on for about 6 s more. New calls now fail.
    let finalized = s.p11.count("C_Finalize");
    s.p11.clear_faults();
    s.p11.fail("C_Sign", "CKR_DEVICE_ERROR");
    std::thread::sleep(Duration::from_millis(300));
    for (r, took) in timed_clients(&s, 6, Duration::from_millis(100)) {
        assert!(r.http_status.is_none(), "served with a failing token");
        assert!(took < Duration::from_millis(2500), "a handshake took {took:?} with a 1 s bound:\n{}", s.apache.error_log());
    }
    // Once the hung call has returned and the faults are gone, the child
    // serves again on a fresh state (no late C_Finalize breaking it).
    s.p11.clear_faults();
    std::thread::sleep(Duration::from_secs(7));
    back_within(&s, Duration::from_secs(3));
    for _ in 0..5 {
        s.get(tls("1.3"));
    }
    // The state given up on never called C_Finalize under the new one
    // (that would fail its calls with CKR_CRYPTOKI_NOT_INITIALIZED).
    let log = s.apache.error_log();
    assert!(line_with_id(&log, "HSM00409").contains("after 5 s"), "{log}");
    assert_eq!(s.p11.count("C_Finalize"), finalized, "the library was finalized under the new state:\n{log}");
    assert!(!log.contains("CKR_CRYPTOKI_NOT_INITIALIZED"), "{log}");
    // The state opened after it took over the C_Finalize the abandoned one
    // owed: the next re-initialization finalizes the library (else the
    // library would never be initialized afresh in this child again).
    let before = s.p11.count("C_Finalize");
    s.p11.fail_once("C_Sign", "CKR_DEVICE_ERROR");
    s.get(tls("1.3"));
    assert!(s.p11.fail_once_fired());
    assert_eq!(s.p11.count("C_Finalize"), before + 1, "no C_Finalize at the next re-initialization:\n{}", s.apache.error_log());
}
