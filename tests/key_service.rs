//! The key service (`HSMSSLKeyService On`): one process per httpd instance,
//! started by httpd's parent, alone loads the PKCS#11 library, logs in and
//! does every private-key operation; children send their operations to it
//! over a Unix socket and never see the PIN. Real httpd + SoftHSM2 behind
//! the counting wrapper (tests/p11wrap), real `openssl s_client`.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// `/proc/<pid>/comm` of the key service.
const KEY_SERVICE_COMM: &str = "hsm_ssl-keys";

const PKCS11_LIBS: &[&str] = &["libhsm_test_p11wrap.so", "libsofthsm2.so"];

// ---------------------------------------------------------------- processes

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_string())
}

fn live_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&p| pid_alive(p))
        .collect()
}

fn master(s: &Site) -> i32 {
    s.apache.master_pid().expect("apache2 is running")
}

/// Live children of httpd's parent, whatever their command line.
fn children_of_master(s: &Site) -> Vec<i32> {
    let m = master(s);
    let mut v: Vec<i32> = live_pids().into_iter().filter(|&p| ppid_of(p) == Some(m)).collect();
    v.sort();
    v
}

/// Live key-service processes of `s`: children of httpd's parent named
/// `hsm_ssl-keys`.
fn key_services(s: &Site) -> Vec<i32> {
    children_of_master(s).into_iter().filter(|&p| comm(p).as_deref() == Some(KEY_SERVICE_COMM)).collect()
}

/// Live httpd workers: the children of httpd's parent but the key service.
fn workers(s: &Site) -> Vec<i32> {
    children_of_master(s).into_iter().filter(|&p| comm(p).as_deref() != Some(KEY_SERVICE_COMM)).collect()
}

/// Polls until exactly one key service runs; its pid.
fn wait_one_key_service(s: &Site, limit: Duration) -> i32 {
    let t = Instant::now();
    loop {
        let ks = key_services(s);
        if ks.len() == 1 {
            return ks[0];
        }
        assert!(
            t.elapsed() < limit,
            "not exactly one key service {limit:?} on (found {ks:?}; children of the parent: {:?})\n{}",
            children_of_master(s),
            s.apache.error_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until httpd's parent has `n` workers; their pids.
fn wait_workers(s: &Site, n: usize, limit: Duration) -> Vec<i32> {
    let t = Instant::now();
    loop {
        let w = workers(s);
        if w.len() == n {
            return w;
        }
        assert!(t.elapsed() < limit, "{} workers instead of {n} after {limit:?}: {w:?}", w.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The numbers of the `Uid:` line of /proc/<pid>/status (real, effective,
/// saved, filesystem).
fn uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_else(|| panic!("no Uid line for pid {pid}:\n{status}"));
    line["Uid:".len()..].split_whitespace().map(|u| u.parse().unwrap()).collect()
}

fn maps_library(pid: i32, lib: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().any(|l| l.ends_with(lib) || l.contains(&format!("/{lib}")))
}

// ----------------------------------------------------------------- the log

/// `(pid, socket path)` of every `key service started` line so far.
fn started_lines(s: &Site) -> Vec<(i32, String)> {
    with_id(&s.apache.error_log(), "HSM00303").into_iter().map(parse_started).collect()
}

/// The pid after `pid ` (not httpd's `[pid N:tid M]` prefix) and the path
/// after `socket ` of a `key service started` line.
fn parse_started(line: &str) -> (i32, String) {
    let pid = line
        .match_indices("pid ")
        .filter(|(i, _)| *i == 0 || line.as_bytes()[i - 1] != b'[')
        .filter_map(|(i, m)| {
            let digits: String = line[i + m.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .last()
        .unwrap_or_else(|| panic!("no 'pid <N>' in the key service line: {line}"));
    let at = line.find("socket ").unwrap_or_else(|| panic!("no 'socket <PATH>' in the key service line: {line}"));
    let path = line[at + "socket ".len()..].split_whitespace().next().unwrap_or("").trim_end_matches([',', ';', ')']);
    assert!(!path.is_empty(), "empty socket path in: {line}");
    (pid, path.to_string())
}

/// Polls until a line of the error log satisfies `f`; that line.
fn wait_log_line(s: &Site, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        if let Some(l) = s.apache.error_log().lines().find(|l| f(l)) {
            return l.to_string();
        }
        assert!(t.elapsed() < limit, "no {what} in the error log after {limit:?}:\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the `key service started` line of `pid`; its socket path.
fn started_socket(s: &Site, pid: i32) -> String {
    let line =
        wait_log_line(s, &format!("HSM00303 for pid {pid}"), Duration::from_secs(5), |l| l.contains("HSM00303: ") && parse_started(l).0 == pid);
    parse_started(&line).1
}

// ------------------------------------------------------------ the call log

/// Function names that load, log in to or use the token's keys.
const KEY_CALLS: &[&str] = &["C_Initialize", "C_Login", "C_SignInit", "C_Sign", "C_DecryptInit", "C_Decrypt"];

fn calls_of(s: &Site, pid: i32) -> Vec<String> {
    s.p11.per_process().into_iter().find(|(p, _)| *p as i32 == pid).map(|(_, c)| c).unwrap_or_default()
}

fn count(calls: &[String], function: &str) -> usize {
    calls.iter().filter(|c| *c == function).count()
}

/// Per-process call logs of every process but httpd's parent and the
/// `apache2 -k` commands (those two do the configuration passes, whose
/// startup check may use the token).
fn server_process_calls(s: &Site) -> Vec<(i32, Vec<String>)> {
    let m = master(s);
    let control = s.apache.control_pids();
    s.p11.per_process().into_iter().map(|(p, c)| (p as i32, c)).filter(|(p, _)| *p != m && !control.contains(p)).collect()
}

// ------------------------------------------------------------------ memory

/// Whether `needle` occurs in the readable memory of `pid` (read as root
/// through /proc/<pid>/maps + /proc/<pid>/mem; regions that cannot be read
/// are skipped), and how many bytes were read.
fn memory_holds(pid: i32, needle: &[u8]) -> (bool, u64) {
    const CHUNK: usize = 1 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"));
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| panic!("open /proc/{pid}/mem: {e}"));
    let keep = needle.len() - 1;
    let mut buf = vec![0u8; keep + CHUNK];
    let mut total = 0u64;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with('r') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
        // Bytes carried over from the previous chunk, so that a needle
        // across a chunk boundary is found.
        let mut carried = 0usize;
        let mut at = start;
        while at < end {
            let want = CHUNK.min((end - at) as usize);
            let n = match mem.read_at(&mut buf[carried..carried + want], at) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            total += n as u64;
            if find(&buf[..carried + n], needle) {
                return (true, total);
            }
            let len = carried + n;
            let tail = keep.min(len);
            buf.copy_within(len - tail..len, 0);
            carried = tail;
            at += n as u64;
        }
    }
    (false, total)
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    if haystack.len() < needle.len() {
        return false;
    }
    // SAFETY: both pointers and lengths come from live slices; memmem only
    // reads them.
    let hit = unsafe { libc::memmem(haystack.as_ptr().cast(), haystack.len(), needle.as_ptr().cast(), needle.len()) };
    !hit.is_null()
}

fn environ_holds(pid: i32, needle: &[u8]) -> bool {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    find(&env, needle)
}

// ------------------------------------------------------------------- sites

/// A site with `HSMSSLKeyService On`, the keys `keys` (label, spec) in the
/// vhost "localhost", and `extra` global lines. Not started.
fn ks_site(name: &str, mpm: Mpm, keys: &[(&str, &str)], extra: &str) -> Site {
    let mut s = Site::new(name, mpm);
    for (label, spec) in keys {
        s.key(label, spec);
    }
    let labels: Vec<&str> = keys.iter().map(|(l, _)| *l).collect();
    s.vhost("localhost", &labels);
    s.global("HSMSSLKeyService On");
    if !extra.is_empty() {
        s.global(extra);
    }
    s
}

const RSA: &[(&str, &str)] = &[("www-rsa", "rsa:2048")];
const RSA_EC: &[(&str, &str)] = &[("www-rsa", "rsa:2048"), ("www-ec", "ec:P-256")];

fn rsa_kx() -> ClientOpts {
    ClientOpts { cipher: Some("AES128-GCM-SHA256".into()), ..tls("1.2") }
}

/// Polls with TLS 1.3 handshakes until one is served; fails after `limit`
/// from `since`.
fn serving_by(s: &Site, since: Instant, limit: Duration) {
    loop {
        let r = s.try_get(ClientOpts { timeout: Some(Duration::from_secs(5)), ..tls("1.3") });
        if r.ok && r.http_status == Some(200) {
            return;
        }
        assert!(since.elapsed() < limit, "not serving {limit:?} later:\n{}\n{}", r.raw, s.apache.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` full handshakes + GETs from `n` threads at once (in-process
/// OpenSSL client), each repeated `per_thread` times; panics on a failure.
fn parallel_requests(s: &Site, n: usize, per_thread: usize) {
    let port = s.apache.port;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let c = connector(&s.ca);
            std::thread::spawn(move || (0..per_thread).map(|_| one_request(port, &c)).collect::<Vec<_>>())
        })
        .collect();
    let failed: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).filter_map(|r| r.err()).collect();
    assert!(failed.is_empty(), "{} of {} requests failed, first: {}\n{}", failed.len(), n * per_thread, failed[0], s.apache.error_log());
}

// ------------------------------------------------------------------- tests

#[test]
fn tls13_and_tls12_handshakes_use_the_token_only_in_the_key_service() {
    let mut s = ks_site("ks-handshakes", Mpm::Event, RSA_EC, "");
    s.start();
    let m = master(&s);
    let ks = wait_one_key_service(&s, Duration::from_secs(5));
    started_socket(&s, ks);
    // `apache2 -k start` checks the keys before it detaches, through a key
    // service of its own that ends with it; the daemon's serves.
    let started = started_lines(&s);
    assert_eq!(started.last().map(|(p, _)| *p), Some(ks), "{started:?}");
    let t = Instant::now();
    while started.iter().any(|(p, _)| *p != ks && pid_alive(*p)) {
        assert!(t.elapsed() < Duration::from_secs(5), "the key service of the first pass outlived it: {started:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let master_calls = calls_of(&s, m);

    for (what, o, sig) in [
        ("TLS 1.3 RSA-PSS", ClientOpts { sigalgs: Some("rsa_pss_rsae_sha256".into()), ..tls("1.3") }, Some("RSA-PSS")),
        ("TLS 1.3 ECDSA", ClientOpts { sigalgs: Some("ECDSA+SHA256".into()), ..tls("1.3") }, Some("ECDSA")),
        ("TLS 1.2 ECDHE-RSA", ClientOpts { cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()), ..tls("1.2") }, None),
        ("TLS 1.2 ECDHE-ECDSA", ClientOpts { cipher: Some("ECDHE-ECDSA-AES128-GCM-SHA256".into()), ..tls("1.2") }, Some("ECDSA")),
        ("TLS 1.2 RSA key exchange", rsa_kx(), None),
    ] {
        let r = s.get(o);
        assert_eq!(r.http_status, Some(200), "{what}");
        if let Some(sig) = sig {
            assert_eq!(r.peer_sig_type.as_deref(), Some(sig), "{what}:\n{}", r.raw);
        }
    }
    // Every handshake went through the one key service started at first.
    assert_eq!(key_services(&s), vec![ks], "the key service changed during the handshakes");
    let ks_calls = calls_of(&s, ks);
    assert!(count(&ks_calls, "C_Initialize") >= 1 && count(&ks_calls, "C_Login") >= 1, "the key service did not log in: {ks_calls:?}");
    assert!(count(&ks_calls, "C_SignInit") >= 4, "not every signature was made by the key service: {ks_calls:?}");
    assert!(count(&ks_calls, "C_DecryptInit") >= 1, "the RSA key exchange premaster was not decrypted by the key service: {ks_calls:?}");

    // No other process of the server touched the token: no worker has a
    // call log at all, and no process but the key service made a key call.
    let workers = workers(&s);
    assert!(!workers.is_empty());
    for (pid, calls) in server_process_calls(&s) {
        if started.iter().any(|(p, _)| *p == pid) {
            continue; // a key service
        }
        let used: Vec<&String> = calls.iter().filter(|c| KEY_CALLS.contains(&c.as_str())).collect();
        assert!(used.is_empty(), "pid {pid} (worker: {}) called {used:?}", workers.contains(&pid));
    }
    for w in &workers {
        let calls = calls_of(&s, *w);
        assert!(calls.is_empty(), "worker {w} called the PKCS#11 library: {calls:?}");
    }
    // httpd's parent never opens the token: the key service made the
    // startup check for it.
    assert!(master_calls.is_empty(), "httpd's parent called the PKCS#11 library: {master_calls:?}");
    assert!(calls_of(&s, m).is_empty(), "httpd's parent called the PKCS#11 library: {:?}", calls_of(&s, m));
    // Children never load the library: they map none the parent does not.
    for lib in PKCS11_LIBS {
        if !maps_library(m, lib) {
            for w in &workers {
                assert!(!maps_library(*w, lib), "worker {w} loaded {lib}");
            }
        }
    }
    assert!(maps_library(ks, "libhsm_test_p11wrap.so"), "the key service does not map the configured PKCS#11 library");
}

/// `n` workers of `mpm` (set by `limits`) and 2n parallel handshakes: the
/// token is initialized and logged in to once per configuration pass (a
/// detaching `apache2 -k start` makes two: the check before it detaches,
/// and the daemon's), by key services only, whatever the number of
/// children.
fn one_login_for_all_children(name: &str, mpm: Mpm, n: usize, limits: &str) {
    let mut s = ks_site(name, mpm, RSA, limits);
    s.start();
    let ks = wait_one_key_service(&s, Duration::from_secs(5));
    let before = wait_workers(&s, n, Duration::from_secs(20));
    // 2n handshakes, n at a time.
    parallel_requests(&s, n, 2);
    assert_eq!(workers(&s), before, "children were replaced");
    assert_eq!(key_services(&s), vec![ks]);

    let all = s.p11.per_process();
    let initializers: Vec<i32> = all.iter().filter(|(_, c)| count(c, "C_Initialize") > 0).map(|(p, _)| *p as i32).collect();
    let logins: usize = all.iter().map(|(_, c)| count(c, "C_Login")).sum();
    let (m, control) = (master(&s), s.apache.control_pids());
    assert!(!initializers.contains(&m) && !initializers.iter().any(|p| control.contains(p)), "httpd itself opened the token: {all:?}");
    assert!(initializers.contains(&ks), "{n} children: the key service did not open the token: {all:?}");
    assert_eq!(initializers.len(), 2, "{n} children: processes that opened the token (a service per configuration pass): {all:?}");
    assert_eq!(logins, 2, "{n} children: C_Login calls (one per configuration pass): {all:?}");
    assert!(count(&calls_of(&s, ks), "C_SignInit") >= 2 * n, "{n} children: the key service made fewer than {} signatures", 2 * n);
}

fn prefork_limits(n: usize) -> String {
    format!("StartServers {n}\nMinSpareServers {n}\nMaxSpareServers {n}\nServerLimit {n}\nMaxRequestWorkers {n}")
}

/// `n` event children of 2 threads; spare-thread bounds that never ask for
/// more or fewer.
fn event_limits(n: usize) -> String {
    let threads = 2 * n;
    format!(
        "ServerLimit {n}\nStartServers {n}\nThreadLimit 2\nThreadsPerChild 2\nMaxRequestWorkers {threads}\n\
         MinSpareThreads 1\nMaxSpareThreads {threads}"
    )
}

#[test]
fn four_prefork_children_share_one_token_login() {
    one_login_for_all_children("ks-prefork-4", Mpm::Prefork, 4, &prefork_limits(4));
}

#[test]
fn twenty_prefork_children_share_one_token_login() {
    one_login_for_all_children("ks-prefork-20", Mpm::Prefork, 20, &prefork_limits(20));
}

#[test]
fn two_event_children_share_one_token_login() {
    one_login_for_all_children("ks-event-2", Mpm::Event, 2, &event_limits(2));
}

#[test]
fn eight_event_children_share_one_token_login() {
    one_login_for_all_children("ks-event-8", Mpm::Event, 8, &event_limits(8));
}

/// A PIN found nowhere else: the test name, the test's pid and the time.
fn distinctive_pin(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("KsPin-{tag}-{}-{nanos:09}-Zq", std::process::id())
}

/// After handshakes, the PIN is in no worker's memory or environment, and
/// is in the key service's memory (so the scan can find it).
fn assert_pin_only_in_the_key_service(s: &Site) {
    let pin = s.token.pin.clone();
    for o in [tls("1.3"), tls("1.2"), rsa_kx()] {
        s.get(o);
    }
    let ks = wait_one_key_service(s, Duration::from_secs(5));
    let workers = workers(s);
    assert!(!workers.is_empty(), "no worker to look at");
    for w in &workers {
        let (found, read) = memory_holds(*w, pin.as_bytes());
        assert!(read > 1 << 20, "only {read} bytes of worker {w}'s memory could be read");
        assert!(!found, "the PIN is in the memory of worker {w}");
        assert!(!environ_holds(*w, pin.as_bytes()), "the PIN is in /proc/{w}/environ");
    }
    let (found, read) = memory_holds(ks, pin.as_bytes());
    assert!(found, "the PIN is not in the key service's memory ({read} bytes read): the scan cannot be trusted");
    assert!(!s.apache.error_log().contains(&pin), "the PIN is in the error log");
}

#[test]
fn an_env_pin_is_in_no_childs_memory_or_environment() {
    let mut s = ks_site("ks-pin-env", Mpm::Event, RSA, "");
    s.set_pin(&distinctive_pin("env"));
    s.start();
    assert_pin_only_in_the_key_service(&s);
}

#[test]
fn a_file_pin_is_in_no_childs_memory_or_environment() {
    let mut s = ks_site("ks-pin-file", Mpm::Prefork, RSA, "");
    s.set_pin(&distinctive_pin("file"));
    // As systemd's LoadCredential= makes it: root's, 0400, in a 0500 dir.
    let creds = TestDir::new("ks-pin-file-credential");
    let dir = creds.path().join("httpd.service");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("hsm-ssl-pin");
    std::fs::write(&file, format!("{}\n", s.token.pin)).unwrap();
    chmod(&file, 0o400);
    chmod(&dir, 0o500);
    s.global(&format!("HSMSSLPin file:{}", file.display()));
    s.apache.reconfigure(|c| c.env.retain(|(k, _)| k != "HSM_TEST_PIN"));
    s.start();
    assert_pin_only_in_the_key_service(&s);
}

/// The key service of a running `s` runs as `user` (every uid of its
/// `Uid:` line), is not dumpable (its /proc files belong to root), and
/// refuses a connection from a process outside the server (this test, as
/// root) with a log line; handshakes work afterwards.
fn assert_isolated(s: &Site, user: &str) {
    s.get(tls("1.3"));
    let ks = wait_one_key_service(s, Duration::from_secs(5));
    let (uid, _) = user_ids(user);
    assert_ne!(uid, 0);
    assert_eq!(uids(ks), vec![uid; 4], "Uid line of the key service (pid {ks}) is not {user}'s ({uid})");
    for f in ["mem", "environ"] {
        let owner = std::fs::metadata(format!("/proc/{ks}/{f}")).unwrap().uid();
        assert_eq!(owner, 0, "/proc/{ks}/{f} belongs to uid {owner}: the key service is dumpable");
    }

    // httpd's Listen sockets are not the service's: holding them would keep
    // the ports bound after httpd stops and put a web port in the process
    // that holds the PIN.
    let tcp = tcp_listening_inodes();
    let held: Vec<u64> = socket_inodes(ks).into_iter().filter(|i| tcp.contains(i)).collect();
    assert!(held.is_empty(), "the key service (pid {ks}) holds TCP listening sockets {held:?}");
    assert!(socket_inodes(master(s)).iter().any(|i| tcp.contains(i)), "the check sees no Listen socket in httpd's parent");

    let socket = started_socket(s, ks);
    // Only the service holds the listening socket: any other process that
    // could accept on it (a worker, httpd's parent, a daemon another
    // module forks from the parent) could answer children in its place.
    let listening = listening_inodes(&socket);
    assert!(!listening.is_empty(), "no listening socket at {socket} in /proc/net/unix");
    let holders: Vec<i32> = live_pids().into_iter().filter(|&p| socket_inodes(p).iter().any(|i| listening.contains(i))).collect();
    assert_eq!(holders, vec![ks], "processes holding the key service's listening socket {socket} (the service is {ks})");
    // The control channel, through which whoever holds the parent's end
    // could have the service find any key on the token, is closed once
    // the configuration is loaded: the service's thread for it has ended,
    // and neither httpd's parent nor a worker holds an unnamed socket
    // into the service (a process another module forks from the parent
    // would inherit one).
    let t = Instant::now();
    while thread_names(ks).iter().any(|n| n == "hsm_ssl-control") {
        assert!(t.elapsed() < Duration::from_secs(2), "the key service's control channel is still open: {:?}", thread_names(ks));
        std::thread::sleep(Duration::from_millis(20));
    }
    let unnamed = unnamed_unix_inodes();
    let parent_unnamed: Vec<u64> = socket_inodes(master(s)).into_iter().filter(|i| unnamed.contains(i)).collect();
    assert!(parent_unnamed.is_empty(), "httpd's parent holds unnamed Unix sockets {parent_unnamed:?}");
    let me = std::process::id();
    let mut conn = connect(&socket).unwrap_or_else(|e| panic!("cannot connect to the key service socket {socket}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The service may close before reading: a failed write is fine.
    let _ = conn.write_all(b"\x00\x00\x00\x10hello key service");
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the key service answered a stranger with {n} bytes: {:?}", &buf[..n]),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            panic!("the key service kept a stranger's connection open for 5 s")
        }
        Err(_) => {}
    }
    const REFUSED: &str = "key service: refused a connection from pid ";
    wait_log_line(s, &format!("'{REFUSED}{me}'"), Duration::from_secs(5), |l| {
        l.find(REFUSED).is_some_and(|i| {
            let digits: String = l[i + REFUSED.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
            digits == me.to_string()
        })
    });
    assert_eq!(key_services(s), vec![ks], "the key service went away after refusing a connection");
    s.get(tls("1.3"));
    s.get(rsa_kx());
}

/// The names of the threads of `pid`.
fn thread_names(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok()).map(|c| c.trim_end().to_string()).collect()
}

/// Unix sockets of /proc/net/unix: (flags, inode, path).
fn unix_sockets() -> Vec<(String, u64, Option<String>)> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(3)?.to_string(), f.get(6)?.parse().ok()?, f.get(7).map(|p| p.to_string())))
        })
        .collect()
}

/// Inodes of the listening TCP sockets (state 0A), IPv4 and IPv6.
fn tcp_listening_inodes() -> Vec<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok()).flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Inodes of the listening Unix sockets bound to `path` (flag 00010000 is
/// __SO_ACCEPTCON).
fn listening_inodes(path: &str) -> Vec<u64> {
    unix_sockets().into_iter().filter(|(flags, _, p)| flags == "00010000" && p.as_deref() == Some(path)).map(|(_, i, _)| i).collect()
}

/// Inodes of the Unix sockets with no path (socket pairs, connections).
fn unnamed_unix_inodes() -> Vec<u64> {
    unix_sockets().into_iter().filter(|(_, _, p)| p.is_none()).map(|(_, i, _)| i).collect()
}

/// Inodes of the sockets `pid` has open.
fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// A Unix stream connection to `path` (`@name`: an abstract socket).
fn connect(path: &str) -> std::io::Result<UnixStream> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        UnixStream::connect_addr(&addr)
    } else {
        UnixStream::connect(path)
    }
}

#[test]
fn the_key_service_runs_as_the_httpd_user_is_not_dumpable_and_refuses_strangers() {
    // mod_cgid forks its daemon from httpd's parent during the
    // configuration, without child_init: it must inherit nothing of the
    // key service's (checked in `assert_isolated`).
    let cgid = "LoadModule cgid_module /usr/lib/apache2/modules/mod_cgid.so";
    let mut s = ks_site("ks-isolated", Mpm::Event, RSA, cgid);
    s.start();
    assert_isolated(&s, RUN_USER);
    let ks = key_services(&s)[0];
    let run_dir = Path::new(&started_socket(&s, ks)).parent().unwrap().to_path_buf();
    let cgisock: Vec<u64> = unix_sockets()
        .into_iter()
        .filter(|(flags, _, p)| {
            flags == "00010000"
                && p.as_deref().and_then(|p| Path::new(p).strip_prefix(&run_dir).ok()).is_some_and(|f| f.to_string_lossy().starts_with("cgisock"))
        })
        .map(|(_, i, _)| i)
        .collect();
    let daemon: Vec<i32> = children_of_master(&s).into_iter().filter(|&p| socket_inodes(p).iter().any(|i| cgisock.contains(i))).collect();
    assert_eq!(daemon.len(), 1, "no mod_cgid daemon under httpd's parent (cgisock inodes {cgisock:?})");
}

#[test]
fn hsmsslkeyserviceuser_runs_the_key_service_as_that_user() {
    const USER: &str = "nobody";
    let mut s = ks_site("ks-user", Mpm::Event, RSA, &format!("HSMSSLKeyServiceUser {USER}"));
    // The token files are the key service's alone: the workers (www-data)
    // could not read them.
    chown_r(&s.token.tokendir, USER);
    s.apache.start().expect("apache2 starts");
    assert_isolated(&s, USER);
    let (ks_uid, _) = user_ids(USER);
    for w in workers(&s) {
        assert_ne!(uids(w)[1], ks_uid, "worker {w} runs as the key service's user");
    }
}

/// A system user in a group of its own making, for one test; both are
/// removed when it is dropped.
struct TempUser {
    user: &'static str,
    group: &'static str,
}

impl TempUser {
    fn new(user: &'static str, group: &'static str) -> TempUser {
        let _ = std::process::Command::new("userdel").arg(user).output();
        let _ = std::process::Command::new("groupdel").arg(group).output();
        run_ok(std::process::Command::new("groupadd").args(["--system", group]));
        run_ok(std::process::Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, user]));
        TempUser { user, group }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(self.user).output();
        let _ = std::process::Command::new("groupdel").arg(self.group).output();
    }
}

#[test]
fn the_key_service_has_its_users_supplementary_groups_as_httpds_children_do() {
    // The token is usable only through a group the service user is a
    // member of, not its primary group: as Debian's softhsm group is for
    // /etc/softhsm. httpd's children get such groups (initgroups); the
    // key service, which took over their token access, must too.
    let tmp = TempUser::new("hsmssl-test-ks", "hsmssl-test-tok");
    let mut s = ks_site("ks-groups", Mpm::Event, RSA, &format!("HSMSSLKeyServiceUser {}", tmp.user));
    let dir = s.token.tokendir.display().to_string();
    run_ok(std::process::Command::new("chown").args(["-R", &format!("root:{}", tmp.group), &dir]));
    run_ok(std::process::Command::new("chmod").args(["-R", "u=rwX,g=rwX,o=", &dir]));
    s.apache.start().expect("apache2 starts");
    s.get(tls("1.3"));
    s.get(tls("1.2"));
    assert_isolated(&s, tmp.user);
}

#[test]
fn a_killed_key_service_is_started_again_and_the_children_keep_running() {
    // Two event children whose number never changes under the load.
    let mut s = ks_site("ks-kill", Mpm::Event, RSA, &event_limits(2));
    s.start();
    let old = wait_one_key_service(&s, Duration::from_secs(5));
    let children = wait_workers(&s, 2, Duration::from_secs(10));
    const CLIENTS: usize = 4;
    let load = Load::start(s.apache.port, &s.ca, CLIENTS);
    let t = Instant::now();
    while load.outcomes().iter().filter(|o| o.ok).count() < 8 {
        assert!(t.elapsed() < Duration::from_secs(10), "the load does not get served: {:?}", load.outcomes().first());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Taken before the signal: a handshake in flight fails at once, maybe
    // before the line after kill() runs.
    let killed = Instant::now();
    kill(old, libc::SIGKILL);
    // A new key service within about a second (2 s allowed).
    let new = loop {
        let ks = key_services(&s);
        if ks.len() == 1 && ks[0] != old {
            break ks[0];
        }
        assert!(killed.elapsed() < Duration::from_secs(2), "no new key service 2 s after the kill: {ks:?}\n{}", s.apache.error_log());
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_log_line(&s, "HSM00204 or HSM00205", Duration::from_secs(5), |l| l.contains("HSM00204: ") || l.contains("HSM00205: "));
    started_socket(&s, new);
    // Handshakes work again within 3 s of the kill.
    let window = Duration::from_secs(3);
    serving_by(&s, killed, window);
    // Failures are excused only within the window: let the load run past it.
    let past = |o: &Outcome| o.at > killed + window;
    while load.outcomes().iter().filter(|o| past(o)).count() < 8 {
        assert!(killed.elapsed() < window + Duration::from_secs(10), "the load stalled after the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcomes = load.stop();

    assert_eq!(workers(&s), children, "the children were restarted");
    assert_eq!(key_services(&s), vec![new]);
    let late: Vec<_> = outcomes.iter().filter(|o| !o.ok && (o.at < killed || o.at > killed + window)).collect();
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    eprintln!("ks-kill: {} requests, {failed} failed, {} outside {window:?} after the kill", outcomes.len(), late.len());
    assert!(
        late.is_empty(),
        "{} requests failed outside {window:?} after the kill; first: {:?}\n{}",
        late.len(),
        late[0].error,
        s.apache.error_log()
    );
    // Only the handshakes in flight at the kill fail (one per client, a
    // little margin): the ones that follow wait for the new service
    // instead of being refused while httpd's parent starts it again.
    assert!(failed <= 2 * CLIENTS, "{failed} requests failed around the kill (clients: {CLIENTS}); first: {:?}", outcomes.iter().find(|o| !o.ok));
    let log = s.apache.error_log();
    assert!(!log.contains("exit signal"), "a child crashed:\n{log}");
}

#[test]
fn a_key_service_that_keeps_dying_is_started_again_later_and_later() {
    let mut s = ks_site("ks-backoff", Mpm::Event, RSA, "");
    s.start();
    s.get(tls("1.3"));
    // Four deaths, each soon after the service (re)started: the parent
    // waits 100, 200, 400, 800 ms before the next one opens the token.
    let mut pid = wait_one_key_service(&s, Duration::from_secs(5));
    let t = Instant::now();
    for _ in 0..4 {
        kill(pid, libc::SIGKILL);
        pid = loop {
            let ks = key_services(&s);
            if ks.len() == 1 && ks[0] != pid {
                break ks[0];
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no new key service: {ks:?}\n{}", s.apache.error_log());
            std::thread::sleep(Duration::from_millis(5));
        };
    }
    let log = s.apache.error_log();
    let delays: Vec<u64> = log.lines().filter_map(|l| l.split("to open the token in ").nth(1)?.split(" ms").next()?.parse().ok()).collect();
    assert_eq!(delays, vec![100, 200, 400, 800], "restart delays:\n{log}");
    // The last one serves once its wait is over.
    serving_by(&s, Instant::now(), Duration::from_secs(3));
    assert_eq!(key_services(&s), vec![pid]);
}

/// Polls until exactly one key service of `s` runs and every earlier one
/// (`seen`) other than it has exited (10 s); its pid.
fn settled_key_service(s: &Site, seen: &BTreeSet<i32>, what: &str) -> i32 {
    let t = Instant::now();
    loop {
        let ks = key_services(s);
        let stale: Vec<i32> = seen.iter().copied().filter(|p| !ks.contains(p) && pid_alive(*p)).collect();
        if ks.len() == 1 && stale.is_empty() {
            return ks[0];
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: not exactly one key service 10 s on: {ks:?} under the parent, {stale:?} earlier ones still alive\n{}",
            s.apache.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn graceful_and_full_restart_leave_exactly_one_key_service_serving_the_new_config() {
    let mut s = ks_site("ks-restart", Mpm::Event, RSA, "");
    // A second key, served only by the configuration the restart loads.
    s.key("www-ec", "ec:P-256");
    s.start();
    let mut seen = BTreeSet::new();
    seen.insert(wait_one_key_service(&s, Duration::from_secs(5)));
    s.get(tls("1.3"));
    let second = || ClientOpts { servername: Some("second.test".into()), sigalgs: Some("ECDSA+SHA256".into()), ..tls("1.3") };

    s.vhost("second.test", &["www-ec"]);
    s.apache.graceful().expect("graceful restart");
    let ks = settled_key_service(&s, &seen, "graceful");
    seen.insert(ks);
    let r = s.get(second());
    assert_eq!(r.peer_sig_type.as_deref(), Some("ECDSA"));
    s.get(rsa_kx());
    assert_eq!(key_services(&s), vec![ks], "graceful: the key service changed after settling");

    s.apache.restart().expect("restart");
    let ks = settled_key_service(&s, &seen, "restart");
    seen.insert(ks);
    s.get(second());
    s.get(tls("1.2"));
    assert_eq!(key_services(&s), vec![ks], "restart: the key service changed after settling");

    // Stopping httpd ends its key service too.
    assert!(s.apache.stop(), "apache2 did not stop cleanly");
    let t = Instant::now();
    while seen.iter().any(|p| pid_alive(*p)) {
        assert!(t.elapsed() < Duration::from_secs(10), "a key service outlived httpd: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// C_Login calls of every process so far, and the pids that made them.
fn logins(s: &Site) -> (usize, Vec<i32>) {
    let all = s.p11.per_process();
    let n = all.iter().map(|(_, c)| count(c, "C_Login")).sum();
    let mut pids: Vec<i32> = all.iter().filter(|(_, c)| count(c, "C_Login") > 0).map(|(p, _)| *p as i32).collect();
    pids.sort();
    (n, pids)
}

#[test]
fn in_the_foreground_a_start_logs_in_once_and_each_reload_once_more() {
    // As systemd runs httpd on Amazon Linux (Type=notify, -DFOREGROUND):
    // both configuration passes run in the master, and the key service
    // that checked the keys in the first pass serves.
    let mut s = ks_site("ks-foreground", Mpm::Event, RSA, &event_limits(4));
    s.start_foreground();
    let m = master(&s);
    let ks = wait_one_key_service(&s, Duration::from_secs(5));
    wait_workers(&s, 4, Duration::from_secs(20));
    parallel_requests(&s, 4, 2);
    assert_eq!(started_lines(&s).into_iter().map(|(p, _)| p).collect::<Vec<_>>(), vec![ks], "one start, one key service");
    assert_eq!(logins(&s), (1, vec![ks]), "logins at start: {:?}", s.p11.per_process());
    assert!(calls_of(&s, m).is_empty(), "httpd's parent called the PKCS#11 library: {:?}", calls_of(&s, m));
    assert!(has_id(&s.apache.error_log(), "HSM00201"), "{}", s.apache.error_log());

    // A reload: the new configuration's service checks the keys and serves
    // them; that is the one new login.
    s.apache.graceful().expect("graceful restart");
    let mut seen = BTreeSet::new();
    seen.insert(ks);
    let ks2 = settled_key_service(&s, &seen, "graceful");
    parallel_requests(&s, 4, 2);
    assert_eq!(logins(&s), (2, vec![ks, ks2].into_iter().collect::<BTreeSet<_>>().into_iter().collect()), "logins after one reload");
    assert!(calls_of(&s, m).is_empty(), "httpd's parent called the PKCS#11 library: {:?}", calls_of(&s, m));
}

#[test]
fn a_key_service_ends_when_httpds_parent_is_killed() {
    // Its parent-death signal outlives the change of user.
    let mut s = ks_site("ks-orphan", Mpm::Event, RSA, "");
    s.start();
    let ks = wait_one_key_service(&s, Duration::from_secs(5));
    assert_ne!(uids(ks)[0], 0, "the key service still runs as root");
    let workers = workers(&s);
    kill(master(&s), libc::SIGKILL);
    let t = Instant::now();
    while pid_alive(ks) {
        assert!(t.elapsed() < Duration::from_secs(5), "the key service (pid {ks}) outlived httpd's parent by 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in workers {
        kill(w, libc::SIGKILL);
    }
}

#[test]
fn configtest_starts_no_key_service() {
    let s = ks_site("ks-configtest", Mpm::Event, RSA, "");
    // Processes of this instance are known by the token's softhsm2.conf in
    // their environment (a key service needs it to reach the token).
    let marker = format!("SOFTHSM2_CONF={}", s.token.conf.display());
    let ours = || -> Vec<i32> {
        live_pids().into_iter().filter(|&p| comm(p).as_deref() == Some(KEY_SERVICE_COMM) && environ_holds(p, marker.as_bytes())).collect()
    };
    let (code, out) = s.apache.configtest();
    assert_eq!(code, 0, "configtest failed:\n{out}");
    assert!(out.contains("Syntax OK"), "{out}");
    assert!(!has_id(&out, "HSM00303"), "configtest started a key service:\n{out}");
    // A key service would be a second process in the call log, or linger.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        assert!(ours().is_empty(), "a key service runs after configtest: {:?}", ours());
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids: Vec<u32> = s.p11.per_process().into_iter().map(|(p, _)| p).collect();
    assert!(pids.len() <= 1, "configtest: PKCS#11 calls from several processes {pids:?}");
}

#[test]
fn with_hsmsslkeyservice_off_no_key_service_runs_and_children_use_the_token() {
    let mut s = Site::new("ks-off", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    s.global("HSMSSLKeyService Off");
    s.start();
    s.get(tls("1.3"));
    s.get(rsa_kx());
    assert!(key_services(&s).is_empty(), "a key service runs with HSMSSLKeyService Off: {:?}", key_services(&s));
    assert!(!has_id(&s.apache.error_log(), "HSM00303"), "{}", s.apache.error_log());
    let workers = workers(&s);
    let signers: Vec<i32> = server_process_calls(&s).into_iter().filter(|(_, c)| count(c, "C_SignInit") > 0).map(|(p, _)| p).collect();
    assert!(!signers.is_empty() && signers.iter().all(|p| workers.contains(p)), "signers {signers:?}, workers {workers:?}");
}

/// Malformed and disallowed requests, sent from inside a worker (a mod_lua
/// handler, so that the peer check admits the connection as a child's):
/// each gets no answer but a refusal, is logged with the worker's pid, and
/// the service keeps serving. Frames as in `src/keyservice/proto.rs`: a
/// 4-byte length, then `op | key u32 | ...`; answers start with a status
/// byte, 7 for a refusal.
const PROBE_LUA: &str = r#"
local unix = require("socket.unix")
local function frame(body) return string.pack(">I4", #body) .. body end
local function sign(key, scheme, digest, mgf1, salt, bytes)
  return frame(string.pack(">BI4BBBI4s2", 1, key, scheme, digest, mgf1, salt, bytes))
end
local cases = {
  {"oversized", string.pack(">I4", 0x7fffffff)},
  {"unknown-op", frame(string.pack(">BI4", 9, 0))},
  {"trailing-bytes", frame(string.pack(">BI4s2", 2, 0, string.rep("\1", 256)) .. "x")},
  {"no-such-key", sign(7, 1, 3, 0, 0, string.rep("\0", 32))},
  {"short-premaster", frame(string.pack(">BI4s2", 2, 0, string.rep("\1", 16)))},
  {"ecdsa-with-rsa", sign(0, 3, 0, 0, 0, string.rep("\0", 32))},
  {"short-digest", sign(0, 1, 3, 0, 0, string.rep("\0", 20))},
  {"pss-salt-too-long", sign(0, 2, 3, 3, 300, string.rep("\0", 32))},
}
function handle(r)
  r.content_type = "text/plain"
  for _, c in ipairs(cases) do
    local s = unix()
    local ok, err = s:connect("@SOCKET@")
    if not ok then
      r:puts(c[1] .. " connect-failed " .. tostring(err) .. "\n")
    else
      s:settimeout(5)
      s:send(c[2])
      local head, e = s:receive(5)
      if head then r:puts(c[1] .. " status " .. string.byte(head, 5) .. "\n")
      else r:puts(c[1] .. " " .. tostring(e) .. "\n") end
      s:close()
    end
  end
  return apache2.OK
end
"#;

#[test]
fn malformed_requests_from_inside_a_worker_are_refused_and_logged() {
    let lua = "LoadModule lua_module /usr/lib/apache2/modules/mod_lua.so\nAddHandler lua-script .lua";
    let mut s = ks_site("ks-malformed", Mpm::Event, RSA, lua);
    s.start();
    s.get(tls("1.3"));
    let ks = wait_one_key_service(&s, Duration::from_secs(5));
    let socket = started_socket(&s, ks);
    std::fs::write(s.apache.docroot.join("probe.lua"), PROBE_LUA.replace("@SOCKET@", &socket)).unwrap();

    let r = s.get(ClientOpts { tls: Some("1.3"), path: Some("/probe.lua".into()), ..Default::default() });
    assert_eq!(r.http_status, Some(200), "the probe page: {}\n{}", r.raw, s.apache.error_log());
    let body = r.http_response.clone().unwrap_or_default();
    let results: Vec<&str> = body.lines().filter(|l| l.contains(" status ") || l.ends_with(" closed") || l.contains(" connect-failed ")).collect();
    assert_eq!(
        results,
        vec![
            // Not a request at all: the connection is closed.
            "oversized closed",
            "unknown-op closed",
            "trailing-bytes closed",
            // Well formed, but not what TLS needs of key 0: refused.
            "no-such-key status 7",
            "short-premaster status 7",
            "ecdsa-with-rsa status 7",
            "short-digest status 7",
            "pss-salt-too-long status 7",
        ],
        "the probe page:\n{body}"
    );

    // Each is logged, under its own ID, with the pid of the worker that
    // sent it.
    let log = s.apache.error_log();
    let refused = with_any_id(&log, &["HSM00312", "HSM00313", "HSM00314", "HSM00315"]);
    let pids: Vec<i32> =
        refused.iter().filter_map(|l| l.split("from pid ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect();
    assert_eq!(pids.len(), 8, "refusals logged:\n{log}");
    let ws = workers(&s);
    assert!(pids.iter().all(|p| ws.contains(p)), "refusals from {pids:?}, workers are {ws:?}");
    for (id, why) in [
        ("HSM00312", "a message of 2147483647 bytes"),
        ("HSM00313", "unknown operation 9"),
        ("HSM00313", "bytes after the end"),
        ("HSM00314", "no key number 7"),
        ("HSM00315", "a premaster block of 16 bytes"),
        ("HSM00315", "an ECDSA signature with an RSA key"),
        ("HSM00315", "a SHA-256 digest of 20 bytes"),
        ("HSM00315", "PSS salt of 300 bytes"),
    ] {
        assert!(with_id(&log, id).iter().any(|l| l.contains(why)), "no {id} refusal saying '{why}':\n{log}");
    }
    assert!(with_any_id(&log, &["HSM00306", "HSM00307"]).is_empty(), "a worker's connection was refused:\n{log}");
    // The same service still serves.
    assert_eq!(key_services(&s), vec![ks]);
    s.get(tls("1.3"));
    s.get(rsa_kx());
}
