//! Everything that touches the token. No Apache and no OpenSSL types here,
//! so this layer is testable on its own.

pub mod direct;
pub mod executor;
pub mod health;
pub mod latch;
pub mod lookup;
pub mod pin;
pub mod policy;
pub mod runtime;
pub mod secret;
pub mod settings;
pub mod stats;
pub mod token;
pub mod uri;
pub mod watchdog;

/// Runs test `name` again in a process of its own (this test binary, that
/// test alone, one test thread), marked by the environment variable
/// `marker`: forking under the harness's other threads is fragile (a lock
/// one of them holds at the fork stays held in the child), and some state
/// is process-wide. True in the calling process once that run passed;
/// false in the process where the body must run.
#[cfg(test)]
pub(crate) fn rerun_alone(name: &str, marker: &str) -> bool {
    if std::env::var_os(marker).is_some() {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--test-threads=1"])
        .env(marker, "1")
        .output()
        .expect("test binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "alone: {}\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 passed"), "the test did not run alone:\n{text}");
    true
}
