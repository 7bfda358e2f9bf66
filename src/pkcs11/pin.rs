//! PIN sources: `env:NAME`, `file:/path`, `exec:/path/to/program`, as
//! `HSMSSLPin` and the key tool's `--pin` give them.
//!
//! The PIN is read by the Apache parent process only; children get it from
//! the parent's memory through fork. Errors ([`PinError`]) name the source
//! and what to do, never the PIN or any part of it, nor the setting that
//! named the source: each front end says that itself.

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

/// Why a PIN source cannot give a PIN: the source as written and what is
/// wrong with it. Its text does not say which setting named the source
/// (`HSMSSLPin`, `--pin`); each front end puts that first, and words the
/// problems that depend on where it runs ([`PinProblem::EnvUnset`],
/// [`PinProblem::UnexpandedVariable`]) itself.
#[derive(Debug)]
pub struct PinError {
    /// The source as written, e.g. `file:/etc/pin`.
    pub source: String,
    pub problem: PinProblem,
}

#[derive(Debug)]
pub enum PinProblem {
    /// Not `env:`, `file:` or `exec:` followed by something.
    NotASource,
    BadVariableName,
    RelativePath,
    /// The path starts with `${VAR}` and VAR was not set where the
    /// configuration was read.
    UnexpandedVariable(String),
    /// `env:`: the variable is not set in this process's environment.
    EnvUnset,
    EnvEmpty,
    NotAFilePath,
    /// Reading the file (or its directory, or running the program) failed.
    Io {
        what: String,
        error: std::io::Error,
    },
    /// A file or directory that decides the PIN is not safe.
    Unsafe {
        what: String,
        shown: String,
        why: Unsafety,
    },
    /// The file or program is a symbolic link (to `target`, if known).
    SymbolicLink {
        program: bool,
        target: Option<String>,
    },
    NotRegularFile,
    NotRegularProgram,
    FileTooLarge,
    FileEmpty,
    ProgramTooLong,
    ProgramTimeout(Duration),
    ProgramFailed(String),
    ProgramNoPin,
}

/// Why a file or directory that decides the PIN is not safe.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsafety {
    /// Owned by `uid`; root (or `euid`, if it is not root) must own it.
    Owner { uid: u32, euid: u32 },
    /// Group or others may write it.
    Writable { mode: u32 },
    /// Group or others may read or write it (the PIN file itself).
    Accessible { mode: u32 },
}

impl fmt::Display for Unsafety {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsafety::Owner { uid, euid: 0 } => write!(f, "is owned by uid {uid}, must be root"),
            Unsafety::Owner { uid, euid } => write!(f, "is owned by uid {uid}, must be root or uid {euid}"),
            Unsafety::Writable { mode } => write!(f, "is writable by group or others (mode {mode:03o}), so they could replace the PIN"),
            Unsafety::Accessible { mode } => write!(f, "is accessible by group or others (mode {mode:03o})"),
        }
    }
}

impl fmt::Display for PinProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinProblem::NotASource => f.write_str(
                "not a PIN source: use env:VARIABLE, file:/absolute/path \
                 or exec:/absolute/path/to/program (the PIN itself never goes into the configuration)",
            ),
            PinProblem::BadVariableName => f.write_str("not a valid environment variable name"),
            PinProblem::RelativePath => f.write_str("the path must be absolute"),
            PinProblem::UnexpandedVariable(var) => write!(f, "the variable {var} is not set"),
            PinProblem::EnvUnset => f.write_str("the variable is not set"),
            PinProblem::EnvEmpty => f.write_str("the variable is empty"),
            PinProblem::NotAFilePath => f.write_str("not a file path"),
            PinProblem::Io { what, error } => write!(f, "{what}: {error}"),
            PinProblem::Unsafe { what, shown, why } => {
                write!(f, "{what} {why}")?;
                match why {
                    Unsafety::Owner { .. } => write!(f, ": run 'chown root {shown}'"),
                    Unsafety::Writable { .. } => write!(f, ": run 'chmod go-w {shown}'"),
                    Unsafety::Accessible { .. } => write!(f, "; run 'chmod 600 {shown}' (owner root)"),
                }
            }
            PinProblem::SymbolicLink { program: false, .. } => f.write_str("the PIN file is a symbolic link; name the file itself"),
            PinProblem::SymbolicLink { program: true, target } => {
                write!(f, "the program is a symbolic link (to {}); name the program itself", target.as_deref().unwrap_or("?"))
            }
            PinProblem::NotRegularFile => f.write_str("not a regular file; file: must name a file holding the PIN"),
            PinProblem::NotRegularProgram => f.write_str("cannot run the program: not a regular file"),
            PinProblem::FileTooLarge => write!(f, "the file is larger than {MAX_PIN_INPUT} bytes; it must hold only the PIN, on its first line"),
            PinProblem::FileEmpty => f.write_str("the first line of the file is empty"),
            PinProblem::ProgramTooLong => {
                write!(f, "the program printed more than {MAX_PIN_INPUT} bytes without a line end; it must print only the PIN")
            }
            PinProblem::ProgramTimeout(d) => write!(f, "the program did not finish within {} s and was killed", d.as_secs()),
            PinProblem::ProgramFailed(status) => write!(f, "the program failed ({status})"),
            PinProblem::ProgramNoPin => f.write_str("the program printed no PIN on its first line"),
        }
    }
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            PinProblem::NotASource => write!(f, "'{}' is {}", self.source, self.problem),
            _ => write!(f, "{}: {}", self.source, self.problem),
        }
    }
}

impl std::error::Error for PinError {}

/// The `VAR` of a path that starts with `${VAR}`: httpd leaves it as it is
/// when VAR is not in its environment.
fn unexpanded_variable(path: &str) -> Option<&str> {
    path.strip_prefix("${").and_then(|r| r.split_once('}')).map(|(v, _)| v)
}

impl PinSource {
    /// Parses a PIN source (`HSMSSLPin`'s argument, `--pin`'s).
    pub fn parse(s: &str) -> Result<PinSource, PinError> {
        let fail = |problem| PinError { source: s.to_string(), problem };
        let bad = || fail(PinProblem::NotASource);
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "env" => {
                if rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    Ok(PinSource::Env(rest.to_string()))
                } else {
                    Err(fail(PinProblem::BadVariableName))
                }
            }
            "file" | "exec" => {
                let p = PathBuf::from(rest);
                // A `${VAR}` httpd could not expand is refused when the PIN
                // is read, not here: `httpd -k graceful|stop` from a shell
                // parses the configuration without the service's
                // environment, and must still reach the running server.
                if !p.is_absolute() && unexpanded_variable(rest).is_none() {
                    return Err(fail(PinProblem::RelativePath));
                }
                Ok(if kind == "file" { PinSource::File(p) } else { PinSource::Exec(p) })
            }
            _ => Err(bad()),
        }
    }

    /// Reads the PIN once. The first line is the PIN (without its line end).
    pub fn read(&self) -> Result<Secret, PinError> {
        let fail = |problem| PinError { source: self.to_string(), problem };
        if let PinSource::File(p) | PinSource::Exec(p) = self {
            if let Some(var) = unexpanded_variable(&p.to_string_lossy()) {
                return Err(fail(PinProblem::UnexpandedVariable(var.to_string())));
            }
        }
        match self {
            PinSource::Env(name) => read_env(name),
            PinSource::File(path) => read_file(path),
            PinSource::Exec(path) => run_program(path, EXEC_TIMEOUT),
        }
        .map_err(fail)
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

fn read_env(name: &str) -> Result<Secret, PinProblem> {
    if !capture_env(name) {
        return Err(PinProblem::EnvUnset);
    }
    let kept = KEPT.lock();
    let pin = kept.iter().find(|(n, _)| n == name).map(|(_, p)| p.duplicate()).unwrap_or_else(|| Secret::new(Vec::new()));
    if pin.is_empty() {
        return Err(PinProblem::EnvEmpty);
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
/// must be root (or the user reading it) and no one else may write it
/// (nor, with `extra_mask`, read it).
fn ownership_problem(uid: u32, mode: u32, what: &str, shown: &str, extra_mask: u32) -> Option<PinProblem> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mode = mode & 0o7777;
    let why = if uid != 0 && uid != euid {
        Unsafety::Owner { uid, euid }
    } else if mode & (0o022 | extra_mask) != 0 {
        if extra_mask != 0 {
            Unsafety::Accessible { mode }
        } else {
            Unsafety::Writable { mode }
        }
    } else {
        return None;
    };
    Some(PinProblem::Unsafe { what: what.to_string(), shown: shown.to_string(), why })
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
fn open_pin_file(path: &Path) -> Result<std::fs::File, PinProblem> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let io = |what: String| move |error| PinProblem::Io { what, error };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(PinProblem::NotAFilePath);
    };
    let dir_shown = dir.display().to_string();
    let in_dir = format!("cannot read the PIN file: its directory {dir_shown}");
    let dirf = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir).map_err(io(in_dir.clone()))?;
    let dst = fstat(dirf.as_fd()).map_err(io(in_dir))?;
    if let Some(why) = ownership_problem(dst.st_uid, dst.st_mode, &format!("the directory {dir_shown} holding the PIN file"), &dir_shown, 0) {
        return Err(why);
    }
    let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| PinProblem::NotAFilePath)?;
    // SAFETY: openat on a directory descriptor we own with a NUL-terminated
    // name; the result is checked and owned below.
    let fd = unsafe {
        use std::os::fd::AsRawFd;
        libc::openat(dirf.as_raw_fd(), cname.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ELOOP) {
            PinProblem::SymbolicLink { program: false, target: None }
        } else {
            io("cannot read the PIN file".into())(e)
        });
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_fd()).map_err(io("cannot read the PIN file".into()))?;
    if !is_kind(&st, libc::S_IFREG) {
        return Err(PinProblem::NotRegularFile);
    }
    if let Some(why) = ownership_problem(st.st_uid, st.st_mode, "the PIN file", &shown, 0o077) {
        return Err(why);
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

fn read_file(path: &Path) -> Result<Secret, PinProblem> {
    let f = open_pin_file(path)?;
    let content =
        read_bounded(f).map_err(|error| PinProblem::Io { what: "cannot read the PIN file".into(), error })?.ok_or(PinProblem::FileTooLarge)?;
    let pin = first_line(&content);
    if pin.is_empty() {
        return Err(PinProblem::FileEmpty);
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
fn check_program(path: &Path) -> Result<(), PinProblem> {
    let shown = path.display().to_string();
    let st = lstat(path).map_err(|error| PinProblem::Io { what: "cannot run the program".into(), error })?;
    if is_kind(&st, libc::S_IFLNK) {
        let target = std::fs::read_link(path).ok().map(|t| t.display().to_string());
        return Err(PinProblem::SymbolicLink { program: true, target });
    }
    if !is_kind(&st, libc::S_IFREG) {
        return Err(PinProblem::NotRegularProgram);
    }
    if let Some(why) = ownership_problem(st.st_uid, st.st_mode, "the program", &shown, 0) {
        return Err(why);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_shown = dir.display().to_string();
    let dst = std::fs::metadata(dir).map_err(|error| PinProblem::Io { what: format!("cannot run the program: its directory {dir_shown}"), error })?;
    use std::os::unix::fs::MetadataExt;
    if let Some(why) = ownership_problem(dst.uid(), dst.mode(), &format!("the directory {dir_shown} holding the program"), &dir_shown, 0) {
        return Err(why);
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
fn run_program(path: &Path, limit: Duration) -> Result<Secret, PinProblem> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
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
    let mut child = command.spawn().map_err(|error| PinProblem::Io { what: "cannot run the program".into(), error })?;
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
        Err(Overflow::TooLong) => return Err(PinProblem::ProgramTooLong),
        Err(Overflow::Deadline) => return Err(PinProblem::ProgramTimeout(limit)),
    };
    if !exited {
        return Err(PinProblem::ProgramTimeout(limit));
    }
    match status {
        Ok(st) if st.success() => {}
        Ok(st) => return Err(PinProblem::ProgramFailed(st.to_string())),
        Err(error) => return Err(PinProblem::Io { what: "waiting for the program failed".into(), error }),
    }
    let pin = first_line(&buf);
    if pin.is_empty() {
        return Err(PinProblem::ProgramNoPin);
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
        assert!(matches!(&e.problem, PinProblem::UnexpandedVariable(v) if v == "CREDENTIALS_DIRECTORY"), "{e}");
        assert_eq!(e.to_string(), "file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin: the variable CREDENTIALS_DIRECTORY is not set");
        assert!(PinSource::parse("file:$HOME/pin").is_err());
    }

    #[test]
    fn env_source_reads_first_line_and_refuses_unset_or_empty() {
        std::env::set_var("HSM_PIN_TEST_SET", "user:pw\nignored");
        std::env::set_var("HSM_PIN_TEST_EMPTY", "");
        assert_eq!(PinSource::Env("HSM_PIN_TEST_SET".into()).read().unwrap().as_bytes(), b"user:pw".to_vec());
        assert!(PinSource::Env("HSM_PIN_TEST_EMPTY".into()).read().unwrap_err().to_string().contains("empty"));
        assert!(PinSource::Env("HSM_PIN_TEST_UNSET_X".into()).read().unwrap_err().to_string().contains("not set"));
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
        let err = PinSource::File(p.clone()).read().unwrap_err().to_string();
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
        assert!(read(&link).unwrap_err().to_string().contains("symbolic link"));

        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        assert!(read(&fifo).unwrap_err().to_string().contains("not a regular file"));
        assert!(t.elapsed() < Duration::from_secs(2), "a FIFO blocked the read");

        let big = d.join("big");
        std::fs::write(&big, vec![b'x'; MAX_PIN_INPUT + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&big).unwrap_err().to_string().contains("larger than 4096 bytes"));

        if is_root() {
            chown(&p, NOBODY, 0);
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534, must be root") && e.contains("chown root"), "{e}");
            chown(&p, 0, 0);
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = read(&p).unwrap_err().to_string();
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
        assert!(PinSource::Exec(mk("fails", "echo cu:pw; exit 3")).read().unwrap_err().to_string().contains("failed"));
        assert!(PinSource::Exec(mk("silent", "true")).read().unwrap_err().to_string().contains("no PIN"));
        assert!(PinSource::Exec(d.join("absent")).read().unwrap_err().to_string().contains("cannot run"));
    }

    #[test]
    fn exec_source_refuses_programs_others_could_change() {
        let d = tmpdir("exec-rules");
        let p = script(&d, "pin", "echo cu:pw");
        let read = |p: &Path| PinSource::Exec(p.to_path_buf()).read().map(|s| s.as_bytes());
        assert_eq!(read(&p).unwrap(), b"cu:pw");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("the program is writable by group or others (mode 770)") && e.contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            chown(&p, NOBODY, 0);
            assert!(read(&p).unwrap_err().to_string().contains("the program is owned by uid 65534, must be root"));
            chown(&p, 0, 0);
        }
        let link = d.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read(&link).unwrap_err().to_string().contains("symbolic link"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o757)).unwrap();
        let e = read(&p).unwrap_err().to_string();
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
        let e = run_program(&p, Duration::from_millis(500)).unwrap_err().to_string();
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
        let e = run_program(&p, Duration::from_secs(10)).unwrap_err().to_string();
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
                // The error names the source as given, whatever it is.
                prop_assert!(e.source == s && e.to_string().contains(&s), "{}", e);
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
