//! Where the PIN lives while httpd runs: not in any process's environment
//! (`HSMSSLPin env:`), and read from systemd's credentials directory with
//! the packaged configuration line. Real httpd + SoftHSM2.

mod common;

use std::path::Path;

use common::*;

/// Every live descendant of `pid` (children, piped loggers, their children).
fn descendants(pid: i32) -> Vec<i32> {
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&p| pid_alive(p))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        let kids: Vec<i32> = all.iter().copied().filter(|&p| ppid_of(p) == Some(parent) && !found.contains(&p)).collect();
        found.extend(kids);
        i += 1;
    }
    found.remove(0);
    found
}

/// The processes of `s` whose /proc/<pid>/environ holds `needle`; also
/// checks that there are some processes to look at.
fn environs_holding(s: &Site, needle: &[u8]) -> Vec<i32> {
    let master = s.apache.master_pid().expect("running");
    let mut pids = vec![master];
    pids.extend(descendants(master));
    assert!(pids.len() >= 3, "expected the master, children and a piped logger: {pids:?}");
    pids.into_iter()
        .filter(|p| {
            let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            env.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

#[test]
fn an_env_pin_is_in_no_process_environment_and_lasts_across_graceful_restarts() {
    let mut s = Site::new("pin-env", Mpm::Prefork);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    // A piped logger is spawned before post_config; it must not get the
    // PIN either.
    s.global("StartServers 2\nCustomLog \"|/bin/cat >/dev/null\" common");
    s.start();
    let pin = s.token.pin.clone();
    assert!(pin.len() > 8, "the test PIN must be distinctive");
    s.get(tls("1.3"));
    let holding = environs_holding(&s, pin.as_bytes());
    assert!(holding.is_empty(), "the PIN is in /proc/<pid>/environ of {holding:?}");
    assert!(environs_holding(&s, b"HSM_TEST_PIN=h").is_empty());

    // A graceful restart reads the configuration again: the PIN comes from
    // memory, and the new children do not get it in their environment.
    s.apache.graceful_signal().expect("graceful restart");
    s.get(tls("1.3"));
    let holding = environs_holding(&s, pin.as_bytes());
    assert!(holding.is_empty(), "after a graceful restart the PIN is in /proc/<pid>/environ of {holding:?}");
    let log = s.apache.error_log();
    assert!(line_with_id(&log, "HSM00100").contains("env:HSM_TEST_PIN"), "{log}");
    assert!(!log.contains(&pin), "the PIN is in the error log");
    // A restart (SIGHUP) keeps the process too.
    s.apache.restart_signal().expect("restart");
    s.get(tls("1.2"));
}

/// The `HSMSSLPin` line of the packaged example configuration, uncommented.
fn packaged_pin_line() -> String {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rpm/hsm_ssl.conf.example")).unwrap();
    let line = example.lines().find(|l| l.starts_with("#HSMSSLPin ")).expect("the example has an HSMSSLPin line");
    line.trim_start_matches('#').to_string()
}

#[test]
fn the_packaged_pin_line_reads_systemds_credentials_directory() {
    let line = packaged_pin_line();
    assert_eq!(line, "HSMSSLPin file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin");
    let mut s = Site::new("pin-cred", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    // What systemd makes for LoadCredential=: a root-owned 0500 directory
    // with a 0400 file.
    let creds = TestDir::new("pin-cred-credentials");
    let dir = creds.path().join("httpd.service");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hsm-ssl-pin"), format!("{}\n", s.token.pin)).unwrap();
    chmod(&dir.join("hsm-ssl-pin"), 0o400);
    chmod(&dir, 0o500);
    s.global(&line);
    let cred_dir = dir.display().to_string();
    s.apache.reconfigure(|c| {
        c.env.retain(|(k, _)| k != "HSM_TEST_PIN");
        c.env.push(("CREDENTIALS_DIRECTORY".into(), cred_dir));
    });
    s.start();
    s.get(tls("1.3"));
    s.apache.graceful_signal().expect("graceful restart");
    s.get(tls("1.3"));

    // From a shell (no CREDENTIALS_DIRECTORY), `apache2 -k graceful` still
    // reaches the running server, which has the credential; configtest
    // cannot read the PIN and says why and what to do.
    s.apache.reconfigure(|c| c.env.retain(|(k, _)| k != "CREDENTIALS_DIRECTORY"));
    s.apache.graceful().expect("apache2 -k graceful from a shell");
    s.get(tls("1.3"));
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    let l = line_with_id(&out, "HSM00114");
    assert!(l.contains("CREDENTIALS_DIRECTORY is not set") && l.contains("LoadCredential"), "{out}");
}

#[test]
fn a_pin_program_whose_child_keeps_stdout_open_does_not_hang_the_start() {
    let mut s = Site::new("pin-exec", Mpm::Event);
    s.key("www-rsa", "rsa:2048");
    s.vhost("localhost", &["www-rsa"]);
    let dir = TestDir::new("pin-exec-program");
    let pids = dir.path().join("pids");
    let program = dir.path().join("pin");
    // Prints the PIN without a line end and leaves a process holding stdout.
    std::fs::write(&program, format!("#!/bin/sh\nsleep 1000 &\necho $! >> {}\nprintf '%s' '{}'\n", pids.display(), s.token.pin)).unwrap();
    chmod(&program, 0o755);
    s.global(&format!("HSMSSLPin exec:{}", program.display()));
    let t = std::time::Instant::now();
    s.start();
    assert!(t.elapsed() < std::time::Duration::from_secs(8), "the start took {:?}", t.elapsed());
    s.get(tls("1.3"));
    let left: Vec<i32> = std::fs::read_to_string(&pids).unwrap().lines().filter_map(|l| l.parse().ok()).filter(|&p| pid_alive(p)).collect();
    assert!(left.is_empty(), "processes the PIN program started are still alive: {left:?}");

    // A program others could change is refused, with the fix.
    chmod(&program, 0o775);
    let (code, out) = s.apache.configtest();
    assert_ne!(code, 0, "{out}");
    let l = line_with_id(&out, "HSM00114");
    assert!(l.contains("writable by group or others (mode 775)") && l.contains("chmod go-w"), "{out}");
}
