//! `HSMSSLPin` sources: `env:NAME`, `file:/path`, `exec:/path/to/program`.
//!
//! The PIN is read by the Apache parent process only; children get it from
//! the parent's memory through fork. Error messages name the source and what
//! to do, never the PIN or any part of it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zeroize::Zeroize;

use super::secret::Secret;

/// How long an `exec:` program may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PinSource {
    Env(String),
    File(PathBuf),
    Exec(PathBuf),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::Env(n) => write!(f, "env:{n}"),
            PinSource::File(p) => write!(f, "file:{}", p.display()),
            PinSource::Exec(p) => write!(f, "exec:{}", p.display()),
        }
    }
}

/// The `VAR` of a path that starts with `${VAR}`: httpd leaves it as it is
/// when VAR is not in its environment.
fn unexpanded_variable(path: &str) -> Option<&str> {
    path.strip_prefix("${").and_then(|r| r.split_once('}')).map(|(v, _)| v)
}

fn unexpanded(kind: &str, rest: &str, var: &str) -> String {
    let mut msg = format!("HSMSSLPin {kind}:{rest}: the variable {var} is not set in httpd's environment");
    if var == "CREDENTIALS_DIRECTORY" {
        msg.push_str(
            "; systemd sets it for httpd.service from LoadCredential= (the drop-in \
             /usr/lib/systemd/system/httpd.service.d/hsm_ssl.conf): start httpd with systemctl, \
             and check the configuration from a shell with \
             'CREDENTIALS_DIRECTORY=/etc/httpd/hsm-ssl apachectl configtest'",
        );
    }
    msg
}

impl PinSource {
    /// Parses the argument of `HSMSSLPin`.
    pub fn parse(s: &str) -> Result<PinSource, String> {
        let bad = || {
            format!(
                "HSMSSLPin '{s}' is not a PIN source: use env:VARIABLE, file:/absolute/path \
                 or exec:/absolute/path/to/program (the PIN itself never goes into the configuration)"
            )
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "env" => {
                if rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    Ok(PinSource::Env(rest.to_string()))
                } else {
                    Err(format!("HSMSSLPin env:{rest}: not a valid environment variable name"))
                }
            }
            "file" | "exec" => {
                let p = PathBuf::from(rest);
                // A `${VAR}` httpd could not expand is refused when the PIN
                // is read, not here: `httpd -k graceful|stop` from a shell
                // parses the configuration without the service's
                // environment, and must still reach the running server.
                if !p.is_absolute() && unexpanded_variable(rest).is_none() {
                    return Err(format!("HSMSSLPin {kind}:{rest}: the path must be absolute"));
                }
                Ok(if kind == "file" { PinSource::File(p) } else { PinSource::Exec(p) })
            }
            _ => Err(bad()),
        }
    }

    /// Reads the PIN once. The first line is the PIN (without its line end).
    pub fn read(&self) -> Result<Secret, String> {
        if let PinSource::File(p) | PinSource::Exec(p) = self {
            let text = p.to_string_lossy();
            if let Some(var) = unexpanded_variable(&text) {
                let kind = if matches!(self, PinSource::File(_)) { "file" } else { "exec" };
                return Err(unexpanded(kind, &text, var));
            }
        }
        match self {
            PinSource::Env(name) => read_env(name),
            PinSource::File(path) => read_file(path),
            PinSource::Exec(path) => run_program(path, EXEC_TIMEOUT),
        }
    }
}

/// The most a PIN file or program may give: a CloudHSM `user:password` is
/// far shorter, and a bound keeps a wrong path (a log, a device) from
/// filling memory.
pub const MAX_PIN_INPUT: usize = 4096;

/// PINs taken out of the environment, by variable name, kept for the life
/// of the process. httpd's parent reads its configuration again at each
/// graceful restart, but the variable is gone from its environment by then;
/// this module stays mapped across restarts (RTLD_NODELETE, see
/// `module::pin_self`), so the statics survive, as mod_ssl keeps its pass
/// phrases. Children inherit it through fork and wipe their copy
/// ([`wipe_kept_env_pins`]).
static KEPT: Mutex<Vec<(String, Secret)>> = Mutex::new(Vec::new());

/// Takes the variable `name` out of this process's environment, keeping
/// its first line in memory ([`PinSource::read`] finds it there).
///
/// Removing it is not enough: `/proc/<pid>/environ` shows the environment
/// block the process was started with, and so does every process forked
/// from it (httpd's children, piped loggers, `RewriteMap prg:`, CGI). The
/// value is therefore overwritten with zeros where it lies, then removed.
/// Called when the `HSMSSLPin env:` line is read, before httpd forks or
/// spawns anything. Returns whether the variable was set.
pub fn capture_env(name: &str) -> bool {
    let mut kept = KEPT.lock();
    let mut pin = None;
    for value in env_values(name) {
        // getenv answers with the first entry; a duplicate is zeroed too.
        if pin.is_none() {
            pin = Some(first_line(value));
        }
        value.zeroize();
    }
    let Some(pin) = pin else {
        return kept.iter().any(|(n, _)| n == name);
    };
    std::env::remove_var(name);
    kept.retain(|(n, _)| n != name);
    kept.push((name.to_string(), pin));
    true
}

/// The values of every `name=` entry of the environment, as the mutable
/// memory they lie in: the original block on the stack for a variable
/// inherited at exec, the heap for one set later.
fn env_values(name: &str) -> Vec<&'static mut [u8]> {
    let prefix = format!("{name}=");
    let mut found = Vec::new();
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated
    // strings. Reading and changing the environment races with other
    // threads doing the same. httpd's parent reads its configuration on
    // its main thread, and a variable is taken out the first time its
    // directive is read: in the first startup pass, before any PKCS#11
    // library is loaded. The only other threads are this module's helpers
    // (executor, bounded steps), which never touch the environment. Later
    // generations find the variable gone and change nothing. The strings
    // stay allocated after unsetenv (glibc never frees them), and no one
    // else writes them.
    unsafe {
        let mut entry = libc::environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = std::slice::from_raw_parts_mut(*entry as *mut u8, libc::strlen(*entry));
            if bytes.starts_with(prefix.as_bytes()) {
                found.push(&mut bytes[prefix.len()..]);
            }
            entry = entry.add(1);
        }
    }
    found
}

/// Zeroes every PIN kept from the environment in this process (a child,
/// which has its own copy of the PIN from its generation).
pub fn wipe_kept_env_pins() {
    for (_, pin) in KEPT.lock().iter() {
        pin.wipe();
    }
}

fn read_env(name: &str) -> Result<Secret, String> {
    if !capture_env(name) {
        return Err(format!(
            "HSMSSLPin env:{name}: the variable is not set in httpd's environment \
             (set it where the service gets its environment, e.g. /etc/sysconfig/httpd \
             or /etc/apache2/envvars, then stop and start httpd: a graceful restart keeps the PIN read at start)"
        ));
    }
    let kept = KEPT.lock();
    let pin = kept.iter().find(|(n, _)| n == name).map(|(_, p)| p.duplicate()).unwrap_or_else(|| Secret::new(Vec::new()));
    if pin.is_empty() {
        return Err(format!("HSMSSLPin env:{name}: the variable is empty"));
    }
    Ok(pin)
}

fn first_line(bytes: &[u8]) -> Secret {
    let end = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
    let mut line = &bytes[..end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    Secret::new(line.to_vec())
}

/// Why a file or directory that decides the PIN is not safe: its owner
/// must be root (or the user reading it) and no one else may write it.
fn ownership_problem(uid: u32, mode: u32, what: &str, shown: &str, extra_mask: u32) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if uid != 0 && uid != euid {
        let who = if euid == 0 { "root".to_string() } else { format!("root or uid {euid}") };
        return Some(format!("{what} is owned by uid {uid}, must be {who}: run 'chown root {shown}'"));
    }
    let mode = mode & 0o7777;
    if mode & (0o022 | extra_mask) != 0 {
        return Some(if extra_mask != 0 {
            format!("{what} is accessible by group or others (mode {mode:03o}); run 'chmod 600 {shown}' (owner root)")
        } else {
            format!("{what} is writable by group or others (mode {mode:03o}), so they could replace the PIN: run 'chmod go-w {shown}'")
        });
    }
    None
}

fn fstat(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<libc::stat> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed stat is a valid out-buffer; fd is open.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }
}

fn lstat(path: &Path) -> std::io::Result<libc::stat> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed stat is a valid out-buffer; c is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::lstat(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }
}

fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Opens `path` under the checks of a PIN file: its directory owned by root
/// (or us) and not writable by others, then the file itself opened in that
/// directory without following a symbolic link (and without blocking on a
/// FIFO), checked on the open descriptor: a regular file owned by root (or
/// us) that no one else can read or write.
fn open_pin_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let err = |msg: String| format!("HSMSSLPin file:{shown}: {msg}");
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(err("not a file path".into()));
    };
    let dir_shown = dir.display().to_string();
    let dirf = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| err(format!("cannot read the PIN file: its directory {dir_shown}: {e}")))?;
    let dst = fstat(dirf.as_fd()).map_err(|e| err(format!("cannot read the PIN file: its directory {dir_shown}: {e}")))?;
    if let Some(why) = ownership_problem(dst.st_uid, dst.st_mode, &format!("the directory {dir_shown} holding the PIN file"), &dir_shown, 0) {
        return Err(err(why));
    }
    let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| err("not a file path".into()))?;
    // SAFETY: openat on a directory descriptor we own with a NUL-terminated
    // name; the result is checked and owned below.
    let fd = unsafe {
        use std::os::fd::AsRawFd;
        libc::openat(dirf.as_raw_fd(), cname.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(err(if e.raw_os_error() == Some(libc::ELOOP) {
            "the PIN file is a symbolic link; point HSMSSLPin at the file itself".into()
        } else {
            format!("cannot read the PIN file: {e}")
        }));
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_fd()).map_err(|e| err(format!("cannot read the PIN file: {e}")))?;
    if !is_kind(&st, libc::S_IFREG) {
        return Err(err("not a regular file; HSMSSLPin file: must name a file holding the PIN".into()));
    }
    if let Some(why) = ownership_problem(st.st_uid, st.st_mode, "the PIN file", &shown, 0o077) {
        return Err(err(why));
    }
    Ok(std::fs::File::from(fd))
}

/// Reads at most [`MAX_PIN_INPUT`] bytes from `r` into a buffer wiped on
/// drop; `None` if there is more.
fn read_bounded(mut r: impl Read) -> std::io::Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; MAX_PIN_INPUT + 1]);
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if n > MAX_PIN_INPUT {
        return Ok(None);
    }
    buf[n..].fill(0);
    buf.truncate(n);
    Ok(Some(buf))
}

fn read_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let f = open_pin_file(path)?;
    let content = read_bounded(f).map_err(|e| format!("HSMSSLPin file:{shown}: cannot read the PIN file: {e}"))?.ok_or_else(|| {
        format!("HSMSSLPin file:{shown}: the file is larger than {MAX_PIN_INPUT} bytes; it must hold only the PIN, on its first line")
    })?;
    let pin = first_line(&content);
    if pin.is_empty() {
        return Err(format!("HSMSSLPin file:{shown}: the first line of the file is empty"));
    }
    Ok(pin)
}

/// The environment a PIN program gets: nothing of httpd's (which may hold
/// other secrets, and whose variables could change what the program runs).
const PROGRAM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// After the program exits, how long its output may still take to arrive
/// when a process it started keeps the pipe open.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// Checks that only root (or the user running it) can change what `path`
/// runs: the program itself, not a symbolic link (whose target is checked
/// nowhere), owned by root and not writable by others, in a directory of
/// the same kind.
fn check_program(path: &Path) -> Result<(), String> {
    let shown = path.display().to_string();
    let err = |msg: String| format!("HSMSSLPin exec:{shown}: {msg}");
    let st = lstat(path).map_err(|e| err(format!("cannot run the program: {e}")))?;
    if is_kind(&st, libc::S_IFLNK) {
        let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
        return Err(err(format!("the program is a symbolic link (to {target}); point HSMSSLPin at the program itself")));
    }
    if !is_kind(&st, libc::S_IFREG) {
        return Err(err("cannot run the program: not a regular file".into()));
    }
    if let Some(why) = ownership_problem(st.st_uid, st.st_mode, "the program", &shown, 0) {
        return Err(err(why));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_shown = dir.display().to_string();
    let dst = std::fs::metadata(dir).map_err(|e| err(format!("cannot run the program: its directory {dir_shown}: {e}")))?;
    use std::os::unix::fs::MetadataExt;
    if let Some(why) = ownership_problem(dst.uid(), dst.mode(), &format!("the directory {dir_shown} holding the program"), &dir_shown, 0) {
        return Err(err(why));
    }
    Ok(())
}

/// Runs the PIN program and takes the first line of its output.
///
/// The program runs with an empty environment (but `PATH` and `LANG=C`),
/// stdin from /dev/null, in `/`, in a process group of its own. Its output
/// is read with one deadline and at most [`MAX_PIN_INPUT`] bytes: reading
/// stops at the first line end, or once the program has exited and nothing
/// more came within a short grace (a process it left behind may hold the
/// pipe open forever). Then its whole process group is killed, so nothing
/// it started outlives it; on timeout too.
fn run_program(path: &Path, limit: Duration) -> Result<Secret, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let shown = path.display();
    check_program(path)?;
    let mut command = Command::new(path);
    command
        .env_clear()
        .env("PATH", PROGRAM_PATH)
        .env("LANG", "C")
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec and makes
    // one system call (async-signal-safe), touching no memory: every
    // descriptor from 3 up is marked close-on-exec, so the program gets
    // none of httpd's (listening sockets, log files) beside its stdio. A
    // kernel without CLOSE_RANGE_CLOEXEC (before 5.11) answers EINVAL,
    // which is ignored: the program then runs as it did before.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("HSMSSLPin exec:{shown}: cannot run the program: {e}"))?;
    let group = child.id() as libc::pid_t;
    let out = child.stdout.take().expect("stdout was piped");
    let deadline = Instant::now() + limit;
    let read = read_until_line(out.as_raw_fd(), child.id(), deadline);
    drop(out); // a program still writing gets EPIPE instead of blocking
    let exited = read.is_ok() && wait_exited(child.id(), deadline);
    // SAFETY: the group's leader is our child, not yet reaped, so the
    // group id cannot name anyone else's group.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let status = child.wait();
    let buf = match read {
        Ok(buf) => buf,
        Err(Overflow::TooLong) => {
            return Err(format!(
                "HSMSSLPin exec:{shown}: the program printed more than {MAX_PIN_INPUT} bytes without a line end; it must print only the PIN"
            ))
        }
        Err(Overflow::Deadline) => {
            return Err(format!("HSMSSLPin exec:{shown}: the program did not finish within {} s and was killed", limit.as_secs()))
        }
    };
    if !exited {
        return Err(format!("HSMSSLPin exec:{shown}: the program did not finish within {} s and was killed", limit.as_secs()));
    }
    match status {
        Ok(st) if st.success() => {}
        Ok(st) => return Err(format!("HSMSSLPin exec:{shown}: the program failed ({st})")),
        Err(e) => return Err(format!("HSMSSLPin exec:{shown}: waiting for the program failed: {e}")),
    }
    let pin = first_line(&buf);
    if pin.is_empty() {
        return Err(format!("HSMSSLPin exec:{shown}: the program printed no PIN on its first line"));
    }
    Ok(pin)
}

/// Why reading a PIN program's output stopped without a result.
enum Overflow {
    TooLong,
    Deadline,
}

/// Whether `pid` (our child) has exited, without reaping it.
fn has_exited(pid: u32) -> bool {
    // SAFETY: waitid on our own child with WNOWAIT leaves it a zombie; the
    // siginfo is a valid out-buffer.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        r == 0 && info.si_pid() != 0
    }
}

/// Waits until `pid` has exited (not reaped) or the deadline passed.
fn wait_exited(pid: u32, deadline: Instant) -> bool {
    loop {
        if has_exited(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads from `fd` until a line end, end of file, or (once `pid` has
/// exited) [`EXIT_GRACE`] without data; bounded by `deadline` and by
/// [`MAX_PIN_INPUT`] bytes.
fn read_until_line(fd: std::os::fd::RawFd, pid: u32, deadline: Instant) -> Result<zeroize::Zeroizing<Vec<u8>>, Overflow> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(MAX_PIN_INPUT + 256));
    let mut chunk = zeroize::Zeroizing::new([0u8; 256]);
    let mut quiet_since_exit: Option<Instant> = None;
    loop {
        if buf.contains(&b'\n') {
            return Ok(buf);
        }
        if buf.len() > MAX_PIN_INPUT {
            return Err(Overflow::TooLong);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Overflow::Deadline);
        }
        if quiet_since_exit.is_some_and(|t| now.duration_since(t) >= EXIT_GRACE) {
            return Ok(buf);
        }
        let wait = (deadline - now).min(Duration::from_millis(20));
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
        if ready > 0 {
            let room = (MAX_PIN_INPUT + 1 - buf.len()).min(chunk.len());
            // SAFETY: reading at most `room` bytes into our chunk.
            let n = unsafe { libc::read(fd, chunk.as_mut_ptr() as *mut libc::c_void, room) };
            if n == 0 {
                return Ok(buf); // end of file: every writer is gone
            }
            if n > 0 {
                buf.extend_from_slice(&chunk[..n as usize]);
                quiet_since_exit = None;
                continue;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted && e.kind() != std::io::ErrorKind::WouldBlock {
                return Ok(buf);
            }
        }
        if quiet_since_exit.is_none() && has_exited(pid) {
            quiet_since_exit = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hsm-pin-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }

    /// A user that is neither root nor us (tests run as root).
    const NOBODY: u32 = 65534;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn parse_accepts_the_three_sources_and_rejects_others() {
        assert_eq!(PinSource::parse("env:CLOUDHSM_PIN").unwrap(), PinSource::Env("CLOUDHSM_PIN".into()));
        assert_eq!(PinSource::parse("file:/etc/pin").unwrap(), PinSource::File("/etc/pin".into()));
        assert_eq!(PinSource::parse("exec:/bin/pin").unwrap(), PinSource::Exec("/bin/pin".into()));
        for bad in ["1234", "env:", "file:relative", "exec:", "pass:1234", "env:A-B"] {
            assert!(PinSource::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_unexpanded_credentials_directory_parses_and_is_refused_when_read() {
        let src = PinSource::parse("file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin").unwrap();
        let e = src.read().unwrap_err();
        assert!(e.contains("the variable CREDENTIALS_DIRECTORY is not set") && e.contains("LoadCredential="), "{e}");
        assert!(PinSource::parse("file:$HOME/pin").is_err());
    }

    #[test]
    fn env_source_reads_first_line_and_refuses_unset_or_empty() {
        std::env::set_var("HSM_PIN_TEST_SET", "user:pw\nignored");
        std::env::set_var("HSM_PIN_TEST_EMPTY", "");
        assert_eq!(PinSource::Env("HSM_PIN_TEST_SET".into()).read().unwrap().as_bytes(), b"user:pw".to_vec());
        assert!(PinSource::Env("HSM_PIN_TEST_EMPTY".into()).read().unwrap_err().contains("empty"));
        assert!(PinSource::Env("HSM_PIN_TEST_UNSET_X".into()).read().unwrap_err().contains("not set"));
    }

    #[test]
    fn an_env_pin_leaves_the_environment_and_is_kept_in_memory() {
        std::env::set_var("HSM_PIN_TEST_TAKEN", "cu:taken");
        assert!(capture_env("HSM_PIN_TEST_TAKEN"));
        assert!(std::env::var_os("HSM_PIN_TEST_TAKEN").is_none(), "the variable is still in the environment");
        // Read again later (a graceful restart): the kept copy, each time.
        for _ in 0..2 {
            let pin = PinSource::Env("HSM_PIN_TEST_TAKEN".into()).read().unwrap();
            assert_eq!(pin.as_bytes(), b"cu:taken");
            pin.wipe();
        }
    }

    #[test]
    fn file_source_refuses_group_readable_files_and_never_echoes_the_pin() {
        let d = tmpdir("file");
        let p = d.join("pin");
        std::fs::File::create(&p).unwrap().write_all(b"cu:s3cret-pin\r\nrest\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = PinSource::File(p.clone()).read().unwrap_err();
        assert!(err.contains("chmod 600") && !err.contains("s3cret"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(PinSource::File(p).read().unwrap().as_bytes(), b"cu:s3cret-pin".to_vec());
        assert!(PinSource::File(d.join("missing")).read().is_err());
    }

    #[test]
    fn file_source_refuses_links_fifos_other_owners_open_directories_and_big_files() {
        let d = tmpdir("file-rules");
        let p = d.join("pin");
        std::fs::write(&p, "cu:pw\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = |p: &Path| PinSource::File(p.to_path_buf()).read().map(|s| s.as_bytes());
        assert_eq!(read(&p).unwrap(), b"cu:pw");

        let link = d.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read(&link).unwrap_err().contains("symbolic link"));

        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        assert!(read(&fifo).unwrap_err().contains("not a regular file"));
        assert!(t.elapsed() < Duration::from_secs(2), "a FIFO blocked the read");

        let big = d.join("big");
        std::fs::write(&big, vec![b'x'; MAX_PIN_INPUT + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&big).unwrap_err().contains("larger than 4096 bytes"));

        if is_root() {
            chown(&p, NOBODY, 0);
            let e = read(&p).unwrap_err();
            assert!(e.contains("owned by uid 65534, must be root") && e.contains("chown root"), "{e}");
            chown(&p, 0, 0);
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("the directory") && e.contains("writable by group or others") && e.contains("chmod go-w"), "{e}");
    }

    fn script(d: &Path, name: &str, body: &str) -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p
    }

    #[test]
    fn exec_source_takes_stdout_and_reports_failure_silence_and_absence() {
        let d = tmpdir("exec");
        let mk = |name: &str, body: &str| script(&d, name, body);
        assert_eq!(PinSource::Exec(mk("ok", "echo cu:pw")).read().unwrap().as_bytes(), b"cu:pw".to_vec());
        assert!(PinSource::Exec(mk("fails", "echo cu:pw; exit 3")).read().unwrap_err().contains("failed"));
        assert!(PinSource::Exec(mk("silent", "true")).read().unwrap_err().contains("no PIN"));
        assert!(PinSource::Exec(d.join("absent")).read().unwrap_err().contains("cannot run"));
    }

    #[test]
    fn exec_source_refuses_programs_others_could_change() {
        let d = tmpdir("exec-rules");
        let p = script(&d, "pin", "echo cu:pw");
        let read = |p: &Path| PinSource::Exec(p.to_path_buf()).read().map(|s| s.as_bytes());
        assert_eq!(read(&p).unwrap(), b"cu:pw");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("the program is writable by group or others (mode 770)") && e.contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            chown(&p, NOBODY, 0);
            assert!(read(&p).unwrap_err().contains("the program is owned by uid 65534, must be root"));
            chown(&p, 0, 0);
        }
        let link = d.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read(&link).unwrap_err().contains("symbolic link"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o757)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("the directory") && e.contains("holding the program is writable"), "{e}");
    }

    fn gone(pid: i32) -> bool {
        // Dead, or a zombie no one reaps (PID 1 in containers).
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')),
        }
    }

    #[test]
    fn a_pin_program_whose_child_keeps_stdout_open_does_not_hang_and_its_group_is_killed() {
        let d = tmpdir("exec-grandchild");
        let pids = d.join("pids");
        for (name, print) in [("line", "echo cu:pw"), ("noline", "printf cu:pw")] {
            let p = script(&d, name, &format!("sleep 1000 &\necho $! > {}\n{print}", pids.display()));
            let t = Instant::now();
            assert_eq!(run_program(&p, Duration::from_secs(10)).unwrap().as_bytes(), b"cu:pw", "{name}");
            assert!(t.elapsed() < Duration::from_secs(3), "{name}: took {:?}", t.elapsed());
            let gc: i32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            while !gone(gc) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(gone(gc), "{name}: the program's child {gc} outlived it");
        }
    }

    #[test]
    fn a_pin_program_that_hangs_is_killed_with_its_group_at_the_deadline() {
        let d = tmpdir("exec-hang");
        let pids = d.join("pids");
        let p = script(&d, "hang", &format!("sleep 1000 &\necho $! > {}\nwait", pids.display()));
        let t = Instant::now();
        let e = run_program(&p, Duration::from_millis(500)).unwrap_err();
        assert!(e.contains("did not finish") && e.contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
        let gc: i32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(gone(gc), "the program's child {gc} outlived the timeout");
    }

    #[test]
    fn a_pin_program_printing_a_megabyte_is_refused_at_once() {
        let d = tmpdir("exec-big");
        let p = script(&d, "big", "head -c 1000000 /dev/zero | tr '\\0' x");
        let t = Instant::now();
        let e = run_program(&p, Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("more than 4096 bytes"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    }

    #[test]
    fn a_pin_program_sees_none_of_the_callers_environment() {
        let d = tmpdir("exec-env");
        let env = d.join("env");
        std::env::set_var("HSM_PIN_TEST_SECRET_OTHER", "leak");
        let p = script(&d, "env", &format!("env > {}\necho cu:pw", env.display()));
        run_program(&p, Duration::from_secs(10)).unwrap();
        let seen = std::fs::read_to_string(&env).unwrap();
        let names: Vec<&str> = seen.lines().filter_map(|l| l.split('=').next()).collect();
        for n in &names {
            assert!(["PATH", "LANG", "PWD", "SHLVL", "_"].contains(n), "the program saw {n}:\n{seen}");
        }
        assert!(seen.contains("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), "{seen}");
    }

    #[test]
    fn a_pin_program_inherits_no_descriptor_but_its_stdio() {
        let d = tmpdir("exec-fds");
        let fds = d.join("fds");
        // A descriptor of the caller without close-on-exec, as httpd has
        // (a listening socket, a log file).
        // SAFETY: a plain open of a path that exists; closed below.
        let open = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(open > 2);
        let p = script(&d, "fds", &format!("ls /proc/$$/fd > {}\necho cu:pw", fds.display()));
        let r = run_program(&p, Duration::from_secs(10));
        // SAFETY: the descriptor opened above, closed once.
        unsafe { libc::close(open) };
        r.unwrap();
        let seen = std::fs::read_to_string(&fds).unwrap();
        // The shell itself may hold one more (its script, the redirection).
        assert!(!seen.lines().any(|l| l.trim() == open.to_string()), "the program inherited fd {open}:\n{seen}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn any_source_string_parses_or_errs_never_panics(s in "(env|file|exec|pass)?:?[a-zA-Z0-9_/.:\\- \\x00é]{0,40}") {
            if let Err(e) = PinSource::parse(&s) {
                prop_assert!(e.starts_with("HSMSSLPin"), "{}", e);
            }
        }

        #[test]
        fn arbitrary_unicode_never_panics(s in any::<String>()) {
            let _ = PinSource::parse(&s);
        }

        #[test]
        fn first_line_never_keeps_line_ends(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let got = first_line(&bytes).as_bytes();
            prop_assert!(!got.contains(&b'\n'));
            prop_assert!(bytes.starts_with(&got));
        }
    }
}
