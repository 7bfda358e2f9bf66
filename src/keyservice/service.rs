//! The key service: one process per httpd instance, forked by httpd's
//! parent once a configuration is loaded, that alone loads the PKCS#11
//! library, logs in and holds the sessions. Children reach it over a Unix
//! socket; see `hooks` for how the parent starts and supervises it.
//!
//! What keeps the children away from the credential:
//! * the process is not dumpable (no ptrace, no /proc/<pid>/mem, no core
//!   file), also after it changes user;
//! * it runs as `HSMSSLKeyServiceUser` (default: httpd's `User`);
//! * the socket is mode 0660, owned by that user and httpd's `Group`, and
//!   each connection's peer must run as httpd's `User` and be a child of
//!   this server's parent (SO_PEERCRED and /proc);
//! * a request names a key by its startup index and asks only what
//!   [`super::admit`] allows for it; anything else is refused and logged.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::control::{Control, ControlAnswer, MAX_CONTROL};
use super::proto::{self, Answer, Failure, Request};
use super::{admit, premaster_here, sign_here, Admitted};
use crate::pkcs11::lookup::{self, LookupError};
use crate::pkcs11::runtime;
use crate::pkcs11::token::{Binding, KeyRef, OpError};

/// The name of the process (its /proc/<pid>/comm).
pub const PROCESS_NAME: &CStr = c"hsm_ssl-keys";

/// Set by SIGUSR1: the configuration is gone (a graceful restart).
static DRAINING: AtomicBool = AtomicBool::new(false);
/// Set by SIGTERM: httpd stops (or its parent died).
static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOPPING.store(true, Ordering::Relaxed);
}

/// Closes the sessions, logs out and finalizes PKCS#11 (so the HSM frees
/// what this process held at once), then ends the process.
fn finish(socket: &Path, why: &str) -> ! {
    remove_socket(socket);
    log::debug!("HSM00300: key service (pid {}) exits: {why}", std::process::id());
    runtime::shutdown();
    // SAFETY: ends this process; nothing of httpd's runs here.
    unsafe { libc::_exit(0) }
}

/// Connections being served, and their bound.
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
const MAX_CONNECTIONS: usize = 4096;

/// Milliseconds since START of the last request.
static LAST_REQUEST: AtomicU64 = AtomicU64::new(0);
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// How long a draining service waits for a request before it exits even
/// though old children still run (one serving a long download, say, needs
/// no more handshakes).
const DRAIN_IDLE: Duration = Duration::from_secs(30);

/// When the drain began, in clock ticks since boot (the unit of a
/// process's start time in /proc/<pid>/stat).
static DRAIN_TICKS: AtomicU64 = AtomicU64::new(u64::MAX);

extern "C" fn on_drain(_sig: libc::c_int) {
    // clock_gettime and atomic stores only: async-signal-safe.
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let hz = TICKS_PER_SECOND.load(Ordering::Relaxed);
    DRAIN_TICKS.store(ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000, Ordering::Relaxed);
    DRAINING.store(true, Ordering::Relaxed);
}

/// sysconf(_SC_CLK_TCK), read before the handler is installed.
static TICKS_PER_SECOND: AtomicU64 = AtomicU64::new(100);

fn now_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Ends the service when it is told to: at once (but cleanly) when httpd
/// stops; after a graceful restart once its old children are done.
///
/// After a graceful restart the old children finish the connections they
/// had accepted, with the old configuration's key numbers. The old service
/// serves them until every child of httpd's parent that was alive when
/// the drain began (the old children: the new ones are forked after the
/// new configuration is read) has exited, or no request came for
/// DRAIN_IDLE; then it exits. New children use the new service.
fn drain_watch(socket: PathBuf, parent: libc::pid_t) {
    while !DRAINING.load(Ordering::Relaxed) {
        if STOPPING.load(Ordering::Relaxed) {
            finish(&socket, "httpd stops");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let me = std::process::id() as i32;
    // Started before the drain (or in the same tick): the old children.
    // New children of the next configuration may already run by now.
    let cutoff = DRAIN_TICKS.load(Ordering::Relaxed);
    let old: Vec<(i32, u64)> = children_of(parent).into_iter().filter(|(p, start)| *p != me && *start <= cutoff).collect();
    log::debug!("HSM00301: key service (pid {me}) of an old configuration serves its {} old children until they exit", old.len());
    loop {
        // The socket stays while draining: an old child's new thread still
        // connects to it.
        let idle = Duration::from_millis(now_ms().saturating_sub(LAST_REQUEST.load(Ordering::Relaxed)));
        let alive = children_of(parent);
        let waiting = old.iter().any(|o| alive.contains(o));
        if STOPPING.load(Ordering::Relaxed) {
            finish(&socket, "httpd stops");
        }
        if !waiting {
            finish(&socket, "the children of its configuration are gone");
        }
        if idle >= DRAIN_IDLE {
            finish(&socket, "no request from the children of its configuration for 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The children of `parent` that are not key services, with their start
/// times (so that a reused pid is not taken for an old child).
fn children_of(parent: libc::pid_t) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            if stat.get(open + 1..close)? == PROCESS_NAME.to_str().ok()? {
                return None;
            }
            // After "(comm)": state, ppid, ..., starttime is the 20th.
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ppid: i32 = f.get(1)?.parse().ok()?;
            let state = *f.first()?;
            (ppid == parent && state != "Z").then_some((pid, f.get(19)?.parse().ok()?))
        })
        .collect()
}

/// A Unix user: name, uid, primary gid and every group it is in (the
/// primary one included), read from the user database in httpd's parent,
/// before any fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// The user named `name` (or `#uid`), from the system's user database.
pub fn lookup_user(name: &str) -> Result<User, String> {
    if let Some(n) = name.strip_prefix('#') {
        let uid: libc::uid_t = n.parse().map_err(|_| "not a user name or #uid".to_string())?;
        return by_uid(uid).ok_or_else(|| format!("no user has uid {uid}"));
    }
    let c = CString::new(name).map_err(|_| "a user name cannot contain NUL".to_string())?;
    // SAFETY: getpwnam_r with a NUL-terminated name and the buffers `passwd` gives.
    passwd(|pw, buf, len, out| unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf, len, out) }).ok_or_else(|| "no such user on this system".into())
}

fn by_uid(uid: libc::uid_t) -> Option<User> {
    // SAFETY: getpwuid_r with the buffers `passwd` gives.
    passwd(|pw, buf, len, out| unsafe { libc::getpwuid_r(uid, pw, buf, len, out) })
}

/// The user a getpw*_r call (`lookup`) finds, if any.
fn passwd(lookup: impl FnOnce(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int) -> Option<User> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data (all zero is valid); the call fills it
    // with pointers into `buf`, which outlives every use of them below.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        if lookup(&mut pw, buf.as_mut_ptr(), buf.len(), &mut out) != 0 || out.is_null() {
            return None;
        }
        let name = CStr::from_ptr(pw.pw_name);
        Some(User { name: name.to_string_lossy().into_owned(), uid: pw.pw_uid, gid: pw.pw_gid, groups: group_list(name, pw.pw_gid) })
    }
}

/// The groups `name` is in, with `gid` first: what `initgroups` would
/// give it, as httpd gives its children (unixd). Only `gid` if the
/// database cannot say.
fn group_list(name: &CStr, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let mut n: libc::c_int = 32;
    for _ in 0..4 {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at
        // most that many and sets `n` to the number it found (or needs).
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if n <= asked {
            n = asked * 4;
        }
    }
    vec![gid]
}

/// Everything a key service needs, decided by the parent before the fork.
#[derive(Clone)]
pub struct Plan {
    pub socket: PathBuf,
    /// The user the service runs as.
    pub user: User,
    /// httpd's User and Group: the children's credentials.
    pub child_uid: libc::uid_t,
    pub child_gid: libc::gid_t,
    /// httpd's parent process.
    pub parent: libc::pid_t,
    /// The configuration's library, PIN, token and limits.
    pub binding: Arc<Binding>,
    /// The keys, in the order requests name them: empty for the first
    /// service of a configuration (the parent has it find them over the
    /// control channel, [`Control::Find`]), the sealed list for a service
    /// started again after one died.
    pub keys: Vec<Arc<KeyRef>>,
    /// How long the service waits before it opens the token: zero, or the
    /// backoff after services that died soon after they started (see
    /// `supervise::restart_delay`).
    pub delay: Duration,
    /// HSMSSLHealthProbeInterval (see `pkcs11::health`).
    pub probe_interval: Duration,
}

/// The keys requests may name, by slot. Connection threads keep a copy of
/// the list and take a new one only when `KEYS_VERSION` moved (keys are
/// found before any child runs): no lock is shared per request.
static KEYS: Mutex<Option<Arc<Vec<Arc<KeyRef>>>>> = Mutex::new(None);
static KEYS_VERSION: AtomicU64 = AtomicU64::new(0);

fn keys_now() -> Arc<Vec<Arc<KeyRef>>> {
    KEYS.lock().clone().unwrap_or_default()
}

/// Changes the key list (the control channel's thread only).
fn set_keys(f: impl FnOnce(&mut Vec<Arc<KeyRef>>)) {
    let mut k = KEYS.lock();
    let mut list: Vec<Arc<KeyRef>> = k.as_deref().cloned().unwrap_or_default();
    f(&mut list);
    *k = Some(Arc::new(list));
    KEYS_VERSION.fetch_add(1, Ordering::Release);
}

/// Makes the service's listening socket, in httpd's parent (root), just
/// before it forks the service: a child connecting while the service
/// starts waits in the backlog. The parent closes its copy once the
/// service is forked (see [`start`]).
pub fn listen(plan: &Plan) -> Result<UnixListener, String> {
    if plan.socket.as_os_str().len() >= 100 {
        return Err(format!("the key service socket path {} is too long for a Unix socket; set a shorter DefaultRuntimeDir", plan.socket.display()));
    }
    let path = &plan.socket;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove the old socket {}: {e}", path.display())),
    }
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()));
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l?;
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "socket path with NUL".to_string())?;
    // SAFETY: chown/chmod of the socket just created, by path.
    unsafe {
        if libc::chown(c.as_ptr(), plan.user.uid, plan.child_gid) != 0 || libc::chmod(c.as_ptr(), 0o660) != 0 {
            return Err(format!("cannot give {} to user {}: {}", path.display(), plan.user.name, io::Error::last_os_error()));
        }
    }
    Ok(l)
}

/// Forks the key service, which accepts on `listener` (see [`listen`]);
/// this process's copy of it is closed on return. Returns the service's
/// pid and the parent's end of the control channel; the new process runs
/// [`serve`] and exits, never returning into httpd.
pub fn start(plan: &Plan, listener: UnixListener) -> Result<(libc::pid_t, UnixStream), String> {
    // Close-on-exec, like every socket std makes.
    let (parent_end, service_end) = UnixStream::pair().map_err(|e| format!("cannot make the key service's control channel: {e}"))?;
    // SAFETY: fork in httpd's parent, whose only other threads are idle
    // token helpers (the startup joins its bounded threads); the new
    // process only runs `serve` and leaves with _exit.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(format!("cannot fork the key service: {}", io::Error::last_os_error())),
        0 => {
            drop(parent_end);
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(plan, listener, service_end))) {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    log::error!("HSM00302: key service (pid {}): {e}", std::process::id());
                    1
                }
                Err(_) => 2,
            };
            // SAFETY: ends the forked process without running httpd's
            // exit handlers or pool cleanups, which belong to the parent.
            unsafe { libc::_exit(code) }
        }
        pid => Ok((pid, parent_end)),
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err(format!("prctl({option}): {}", io::Error::last_os_error()));
    }
    Ok(())
}

fn set_up_process(plan: &Plan) -> Result<(), String> {
    // A session of its own: the signals an MPM sends to its process group
    // (SIGHUP to every child at a restart) are not for the service, which
    // the parent stops itself (and the kernel, if the parent dies).
    // SAFETY: setsid has no preconditions; it fails only for a group leader.
    unsafe { libc::setsid() };
    prctl(libc::PR_SET_NAME, PROCESS_NAME.as_ptr() as libc::c_ulong)?;
    prctl(libc::PR_SET_DUMPABLE, 0)?;
    // Gone with the parent, even if it is killed.
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong)?;
    // SAFETY: plain signal and mask calls. httpd's parent handlers (restart,
    // stop) would only set flags nobody reads here: back to the defaults.
    unsafe {
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGWINCH] {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::signal(libc::SIGTERM, on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t);
        let hz = libc::sysconf(libc::_SC_CLK_TCK);
        if hz > 0 {
            TICKS_PER_SECOND.store(hz as u64, Ordering::Relaxed);
        }
        libc::signal(libc::SIGUSR1, on_drain as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::getppid() != plan.parent {
            return Err("httpd's parent exited before the key service started".into());
        }
    }
    Ok(())
}

fn drop_privileges(plan: &Plan) -> Result<(), String> {
    // SAFETY: plain credential calls; failure of any is fatal to the service.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(()); // httpd not started as root: nothing to drop
        }
        // The user's own groups, as httpd's children get theirs: a token
        // that a group may use (SoftHSM2's `softhsm` group) stays usable.
        let groups = &plan.user.groups;
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(plan.user.gid) != 0 || libc::setuid(plan.user.uid) != 0 {
            return Err(format!("cannot become user {}: {}", plan.user.name, io::Error::last_os_error()));
        }
    }
    // A change of user resets the flag to fs.suid_dumpable, and clears the
    // parent-death signal: set both again, then check that the parent did
    // not die in between.
    prctl(libc::PR_SET_DUMPABLE, 0)?;
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong)?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != plan.parent {
        return Err("httpd's parent exited while the key service started".into());
    }
    Ok(())
}

/// Closes the internet sockets the service inherited from httpd's parent:
/// its `Listen` sockets and any other. The service talks to the children
/// over its own Unix socket only; holding httpd's ports would keep them
/// bound after httpd stops (a new httpd could not bind them until the
/// service exits) and would put accept() on a web port in the process
/// that holds the PIN. What it needs (its Unix sockets, the error log,
/// stdio) is not an internet socket. The PKCS#11 library opens its own
/// connections later.
fn close_inherited_internet_sockets() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<libc::c_int> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: getsockname on a descriptor number with a buffer of the
        // size passed; a descriptor that is not a socket (or is already
        // closed, like the directory's own) just fails.
        let family = unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) != 0 {
                continue;
            }
            libc::c_int::from(addr.ss_family)
        };
        if family == libc::AF_INET || family == libc::AF_INET6 {
            // SAFETY: closing a descriptor this process inherited and does
            // not use; nothing in the service refers to it.
            unsafe { libc::close(fd) };
        }
    }
}

/// The key service's life: set up, open the token, serve until killed.
fn serve(plan: &Plan, listener: UnixListener, control: UnixStream) -> Result<(), String> {
    set_up_process(plan)?;
    close_inherited_internet_sockets();
    // The service logs in with its configuration's PIN (in the binding);
    // the copy of an env: PIN the parent keeps for the next configuration
    // is not needed here.
    crate::pkcs11::pin::wipe_kept_env_pins();
    drop_privileges(plan)?;
    if !plan.binding.direct_calls {
        crate::pkcs11::watchdog::enable(plan.binding.op_timeout).map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    log::info!("HSM00303: key service started: pid {} as user {}, socket {}", std::process::id(), plan.user.name, plan.socket.display());
    // Started again after deaths in quick succession: no fork and token
    // login storm (connections wait in the backlog meanwhile).
    std::thread::sleep(plan.delay);
    if plan.keys.is_empty() {
        // The first service of a configuration: the parent has it find the
        // keys (the login the startup check makes is the one that serves).
        let binding = plan.binding.clone();
        std::thread::Builder::new()
            .name("hsm_ssl-control".into())
            .spawn(move || control_channel(control, &binding))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    } else {
        // Started again after the service died: the keys are known.
        drop(control);
        runtime::set_serving();
        set_keys(|k| *k = plan.keys.clone());
        for k in &plan.keys {
            if let Err(e) = runtime::prepare(k) {
                log::error!("HSM00304: key service: key {} is not usable yet: {e}; its handshakes fail until the token is back", k.uri_text);
            }
        }
    }
    crate::pkcs11::health::start(plan.probe_interval, || keys_now().to_vec()).map_err(|e| format!("cannot start a thread: {e}"))?;
    LAST_REQUEST.store(now_ms(), Ordering::Relaxed);
    let (socket, parent) = (plan.socket.clone(), plan.parent);
    std::thread::Builder::new()
        .name("hsm_ssl-drain".into())
        .spawn(move || drain_watch(socket, parent))
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    for conn in listener.incoming() {
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("HSM00305: key service: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let peer = match peer_of(&s, plan) {
            Ok(pid) => pid,
            Err((pid, uid, why)) => {
                log::error!("HSM00306: key service: refused a connection from pid {pid} (uid {uid}): {why}");
                continue;
            }
        };
        // A thread per connection, and a bound on them: a child that opens
        // connections without end (a bug, or code run in it) must not take
        // the service's memory; children hold at most one per handshake in
        // flight.
        if CONNECTIONS.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            log::error!("HSM00307: key service: refused a connection from pid {peer}: {MAX_CONNECTIONS} connections are open already");
            continue;
        }
        CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new().name("hsm_ssl-conn".into()).spawn(move || {
            connection(s, peer);
            CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
            log::error!("HSM00308: key service: cannot start a thread for pid {peer}: {e}");
        }
    }
    Ok(())
}

/// The peer's pid if it may use the service; otherwise its pid, uid and why not.
fn peer_of(s: &UnixStream, plan: &Plan) -> Result<i32, (i32, u32, String)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given size.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    if rc != 0 {
        return Err((0, u32::MAX, format!("cannot read its credentials: {}", io::Error::last_os_error())));
    }
    if cred.uid != plan.child_uid {
        return Err((cred.pid, cred.uid, format!("not httpd's User (uid {})", plan.child_uid)));
    }
    match parent_of(cred.pid) {
        Some(pp) if pp == plan.parent => Ok(cred.pid),
        _ => Err((cred.pid, cred.uid, "not a process of this server".into())),
    }
}

/// The parent pid of `pid`, from /proc/<pid>/stat.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Serves httpd's parent on the control channel while it loads a
/// configuration: finds each key it names, numbers it as told, and starts
/// serving children once the list is sealed. Ends at the last seal, or
/// when the parent closes its end. After the last seal nothing can add a
/// key: a process that inherited the parent's end without running
/// child_init (another module's daemon forked by the parent, mod_cgid's
/// say) finds the channel closed.
fn control_channel(mut s: UnixStream, binding: &Arc<Binding>) {
    loop {
        let body = match proto::read_frame_up_to(&mut s, MAX_CONTROL) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                log::error!("HSM00309: key service: control channel: {e}");
                return;
            }
        };
        let mut closing = false;
        let answer = match Control::decode(&body) {
            Ok(Control::Find { slot, uri }) => find(binding, slot as usize, &uri),
            Ok(Control::Seal { count, last }) => {
                set_keys(|k| k.truncate(count as usize));
                runtime::set_serving();
                log::debug!("HSM00310: key service (pid {}) serves {count} key(s)", std::process::id());
                closing = last;
                ControlAnswer::Sealed
            }
            Err(e) => {
                log::error!("HSM00311: key service: control channel: {e}");
                return;
            }
        };
        if proto::write_frame(&mut s, &answer.encode()).is_err() || closing {
            return;
        }
    }
}

/// Finds the key `uri` on the token and numbers it `slot` (replacing what
/// had that number: a configuration read again numbers from 0).
fn find(binding: &Arc<Binding>, slot: usize, uri: &str) -> ControlAnswer {
    match lookup::find_key(binding, uri) {
        Ok(found) => {
            let facts = Box::new(found.key.facts().clone());
            let premaster = found.key.premaster.get().copied();
            let mut placed = true;
            set_keys(|k| match slot.cmp(&k.len()) {
                std::cmp::Ordering::Less => k[slot] = found.key.clone(),
                std::cmp::Ordering::Equal => k.push(found.key.clone()),
                std::cmp::Ordering::Greater => placed = false,
            });
            if !placed {
                return ControlAnswer::NotFound { denied: false, text: format!("key number {slot} asked for out of order") };
            }
            ControlAnswer::Found { facts, premaster, warnings: found.warnings }
        }
        Err(LookupError::Denied(text)) => ControlAnswer::NotFound { denied: true, text },
        Err(LookupError::Failed(text)) => ControlAnswer::NotFound { denied: false, text },
        // httpd's parent checks the URI before it asks (it words that).
        Err(e @ LookupError::Uri(_)) => ControlAnswer::NotFound { denied: false, text: e.to_string() },
    }
}

/// Serves one child's connection until it closes it or sends something
/// malformed.
fn connection(mut s: UnixStream, peer: i32) {
    // The version before the list: a change in between is seen later.
    let mut version = KEYS_VERSION.load(Ordering::Acquire);
    let mut keys = keys_now();
    loop {
        let body = match proto::read_frame(&mut s) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    log::error!("HSM00312: key service: refused a request from pid {peer}: {e}; connection closed");
                }
                return;
            }
        };
        LAST_REQUEST.store(now_ms(), Ordering::Relaxed);
        let now = KEYS_VERSION.load(Ordering::Acquire);
        if now != version {
            (keys, version) = (keys_now(), now);
        }
        let answer = match Request::decode(&body) {
            Ok(req) => execute(&req, peer, &keys),
            Err(e) => {
                log::error!("HSM00313: key service: refused a request from pid {peer}: {e}; connection closed");
                return;
            }
        };
        if proto::write_frame(&mut s, &answer.encode()).is_err() {
            return;
        }
    }
}

fn execute(req: &Request, peer: i32, keys: &[Arc<KeyRef>]) -> Answer {
    let index = match req {
        Request::Sign { key, .. } | Request::Premaster { key, .. } => *key,
    };
    let Some(key) = keys.get(index as usize) else {
        log::error!("HSM00314: key service: refused a request from pid {peer}: no key number {index} (the service has {})", keys.len());
        return Answer::Failed(Failure::Refused(format!("no key number {index}")));
    };
    match (admit(key, req), req) {
        (Err(why), _) => {
            log::error!("HSM00315: key service: refused a request from pid {peer} for key {}: {why}", key.uri_text);
            Answer::Failed(Failure::Refused(why.to_string()))
        }
        (Ok(Admitted::Sign { mech, data }), _) => match sign_here(key, mech, &data) {
            Ok(sig) => Answer::Done(sig.into()),
            Err(e) => Answer::Failed(failure(e)),
        },
        (Ok(Admitted::Premaster), Request::Premaster { ciphertext, .. }) => match premaster_here(key, ciphertext) {
            Ok(Ok(block)) => Answer::Done(block.into()),
            Ok(Err(e)) => {
                // Same answer for every token error; the probe (not the
                // client) decides whether the token is in trouble.
                let text = e.to_string();
                super::after_premaster_error(key, e);
                Answer::PremasterError(text)
            }
            Err(e) => Answer::Failed(failure(e)),
        },
        (Ok(Admitted::Premaster), Request::Sign { .. }) => Answer::Failed(Failure::Refused("a signature admitted as a decrypt".into())),
    }
}

fn failure(e: OpError) -> Failure {
    let ms = |d: std::time::Duration| d.as_millis().min(u32::MAX as u128) as u32;
    match e {
        OpError::Busy(d) => Failure::Busy(ms(d)),
        OpError::Timeout(d) => Failure::Timeout(ms(d)),
        OpError::Setup(t) | OpError::NoKey(t) => Failure::Setup(t),
        OpError::Denied(t) => Failure::Denied(t),
        e @ (OpError::Token(_) | OpError::Service(_)) => Failure::Token(e.to_string()),
    }
}

/// Removes a socket the service left (at a restart or stop).
pub fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_and_by_uid() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("#0").unwrap().name, "root");
        assert_eq!(root.groups.first(), Some(&root.gid), "the primary group first: {:?}", root.groups);
        assert!(lookup_user("no-such-user-here").unwrap_err().contains("no such user"));
        assert!(lookup_user("#x").is_err());
    }

    #[test]
    fn children_are_found_with_their_start_time_and_zombies_are_not() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let me = std::process::id() as i32;
        let found = children_of(me);
        let entry = found.iter().find(|(p, _)| *p == child.id() as i32).copied();
        assert!(entry.is_some_and(|(_, start)| start > 0), "{found:?}");
        child.kill().unwrap();
        // Killed but not reaped: a zombie, no longer counted.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!children_of(me).iter().any(|(p, _)| *p == child.id() as i32));
        child.wait().unwrap();
    }

    #[test]
    fn the_parent_of_a_process_is_read_from_proc() {
        // SAFETY: getppid has no preconditions.
        assert_eq!(parent_of(std::process::id() as i32), Some(unsafe { libc::getppid() }));
        assert_eq!(parent_of(i32::MAX), None);
    }
}
