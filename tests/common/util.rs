//! Small process / file helpers.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The unprivileged user (and group) that apache2 children run as.
pub const RUN_USER: &str = "www-data";

/// Run a command to completion, panic with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Run a command to completion; (exit code or -1, stdout+stderr).
pub fn run_status(cmd: &mut Command) -> (i32, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

pub fn stdout_string(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0).
/// Another process may grab it before apache2 binds it; [`crate::common::Apache`]
/// retries with a new port when the bind fails.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// uid and gid of a user from /etc/passwd.
pub fn user_ids(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == user {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("user {user} not in /etc/passwd");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// chown -R path to user:user's primary group (no-op when not root).
pub fn chown_r(path: &Path, user: &str) {
    if !is_root() {
        return;
    }
    let (uid, gid) = user_ids(user);
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    // The state, field 3 of proc(5).
    matches!(stat_field::<char>(pid, 3), Some(c) if c != 'Z' && c != 'X')
}

/// Field `n` of /proc/<pid>/stat, numbered as in proc(5) (3 is the state;
/// the parenthesised command before it may contain spaces).
pub fn stat_field<T: std::str::FromStr>(pid: i32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// The thread directories of a process (/proc/<pid>/task/<tid>).
pub fn task_dirs(pid: i32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Parent pid of a process, from /proc.
pub fn ppid_of(pid: i32) -> Option<i32> {
    stat_field(pid, 4)
}

/// All live pids whose command line contains `needle` as one argument.
pub fn pids_with_arg(needle: &OsStr) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        use std::os::unix::ffi::OsStrExt;
        if cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we own; errors (ESRCH) are ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The lines of `log` that carry message ID `id` (see docs/messages.md).
/// Tests find the module's lines by ID; what they check in a line is data
/// (key URIs, labels, return codes, files) or the reason it gives.
pub fn with_id<'a>(log: &'a str, id: &str) -> Vec<&'a str> {
    let tag = format!("{id}: ");
    log.lines().filter(|l| l.contains(&tag)).collect()
}

/// The first line of `log` with message ID `id`; panics, showing the log,
/// when there is none.
pub fn line_with_id<'a>(log: &'a str, id: &str) -> &'a str {
    with_id(log, id).into_iter().next().unwrap_or_else(|| panic!("no {id} line in the log:\n{log}"))
}

/// Whether `log` has a line with message ID `id`.
pub fn has_id(log: &str, id: &str) -> bool {
    !with_id(log, id).is_empty()
}

/// The lines of `log` that carry any of the message IDs `ids`.
pub fn with_any_id<'a>(log: &'a str, ids: &[&str]) -> Vec<&'a str> {
    log.lines().filter(|l| ids.iter().any(|id| l.contains(&format!("{id}: ")))).collect()
}
