//! The README's first command: `sudo bash scripts/quickstart.sh` brings up
//! HTTPS on https://localhost:8443/ with a key generated in a SoftHSM2
//! token, and running it again starts from scratch. It runs on this machine
//! as the README says (port 8443, /var/lib/mod_hsm_ssl-quickstart), with
//! SKIP_DEPS=1 because scripts/test.sh has installed the dependencies, and
//! stops the server with the command the script prints.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BASE: &str = "/var/lib/mod_hsm_ssl-quickstart";

fn quickstart() -> String {
    let out = Command::new("bash").arg(Path::new(REPO).join("scripts/quickstart.sh")).env("SKIP_DEPS", "1").output().expect("run quickstart.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "quickstart.sh failed:\n{text}");
    text
}

/// The line after `label` in the script's closing notes, trimmed.
fn line_after<'a>(text: &'a str, label: &str) -> &'a str {
    let mut lines = text.lines();
    lines.by_ref().find(|l| l.trim() == label).unwrap_or_else(|| panic!("no '{label}' in:\n{text}"));
    lines.next().map(str::trim).unwrap_or_else(|| panic!("nothing after '{label}'"))
}

fn get(ca: &str) -> String {
    let out = Command::new("curl").args(["-sS", "--cacert", ca, "https://localhost:8443/"]).output().expect("curl");
    assert!(out.status.success(), "curl https://localhost:8443/ failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn master_pid() -> Option<String> {
    std::fs::read_to_string(format!("{BASE}/httpd/run/httpd.pid"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
}

#[test]
fn quickstart_serves_https_from_a_token_key_and_starts_over_when_run_again() {
    let first = quickstart();
    assert!(first.contains("https://localhost:8443/ answers 200"), "{first}");
    let ca = format!("{BASE}/pki/ca.crt");
    get(&ca);
    let pid = master_pid().expect("no quickstart server running");

    // Again: the running server is stopped, everything made anew.
    let second = quickstart();
    assert!(second.contains(&format!("stopping the running quickstart server (pid {pid})")), "{second}");
    assert_ne!(master_pid().as_deref(), Some(pid.as_str()), "the first server is still the one running");
    get(&ca);

    // The stop command it prints.
    let stop = line_after(&second, "Stop it:");
    let status = Command::new("sh").arg("-c").arg(stop).status().expect("run the stop command");
    assert!(status.success(), "{stop} failed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while master_pid().is_some() {
        assert!(std::time::Instant::now() < deadline, "the quickstart server did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_dir_all(BASE).unwrap();
}
