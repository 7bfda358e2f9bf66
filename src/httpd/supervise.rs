//! httpd's parent starts the key service and keeps it running, the way
//! mod_cgid keeps its daemon: registered as an APR "other child", so the
//! MPM tells us when it dies (started again at once unless httpd stops or
//! restarts).
//!
//! Each service's registration lives in a pool of its own under httpd's
//! process pool, not in the configuration pool: when a configuration ends
//! (a cleanup on its pool), its service is told to drain (a restart) or
//! stopped (httpd exits), and the MPM still reports its death to us, so
//! it is reaped quietly and its pool freed.

use std::ffi::{c_int, c_void, CStr};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ffi::httpd::{self, apr_pool_t, apr_proc_t};
use crate::keyservice::control::{Control, ControlAnswer, MAX_CONTROL};
use crate::keyservice::proto;
use crate::keyservice::service::{self, Plan};
use crate::pkcs11::token::KeyRef;

/// A service httpd's parent started.
struct Supervised {
    plan: Plan,
    /// The parent's end of the control channel, while the configuration
    /// is being loaded (see `keyservice::control`).
    control: Option<UnixStream>,
    pid: libc::pid_t,
    /// When it was forked.
    started: Instant,
    /// The APR record registered as an other child (lives in `pool`).
    proc_: *mut apr_proc_t,
    /// This service's own pool, under httpd's process pool.
    pool: *mut apr_pool_t,
}

// SAFETY: the pointers are only used by httpd's parent on its main thread
// (post_config, pool cleanups and the MPM's maintenance callbacks).
unsafe impl Send for Supervised {}

/// The service of the current configuration.
static CURRENT: Mutex<Option<Supervised>> = Mutex::new(None);
/// Services of ended configurations, still draining.
static ENDED: Mutex<Vec<Supervised>> = Mutex::new(Vec::new());
/// The service of httpd's first configuration pass at startup, kept for
/// the second pass (see [`adopt`]).
static CARRIED: Mutex<Option<Supervised>> = Mutex::new(None);

/// httpd's process pool (lives until httpd exits).
static PROCESS_POOL: AtomicPtr<apr_pool_t> = AtomicPtr::new(ptr::null_mut());

/// Configurations loaded so far: part of the socket name, so that old
/// children after a graceful restart never reach the new service (their
/// key numbers belong to the old configuration).
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// The socket path of a new configuration's service.
pub fn socket_path(pconf: *mut apr_pool_t) -> PathBuf {
    let n = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    let name = format!("hsm_ssl-keys.{}.{n}.sock", std::process::id());
    let c = std::ffi::CString::new(name.clone()).unwrap_or_default();
    runtime_relative(pconf, &c).unwrap_or_else(|| PathBuf::from("/run").join(name))
}

/// `name` under httpd's DefaultRuntimeDir (unchanged if absolute), as
/// httpd places its own runtime files (ap_runtime_dir_relative); None if
/// httpd gives no path.
pub fn runtime_relative(pool: *mut apr_pool_t, name: &CStr) -> Option<PathBuf> {
    // SAFETY: ap_runtime_dir_relative returns a string allocated from
    // `pool` (a live pool of this configuration) or null; it is copied at
    // once.
    unsafe {
        let p = httpd::ap_runtime_dir_relative(pool, name.as_ptr());
        (!p.is_null()).then(|| PathBuf::from(CStr::from_ptr(p).to_string_lossy().into_owned()))
    }
}

/// In a child (child_init): closes the inherited control channel of the
/// key service, before the child serves anything.
pub fn close_control_in_child() {
    if let Some(s) = CURRENT.lock().as_mut() {
        s.control = None;
    }
}

/// Sends `msg` on the current service's control channel and waits at most
/// `limit` for the answer.
fn control(msg: &Control, limit: Duration) -> Result<ControlAnswer, String> {
    let (mut s, pid) = {
        let cur = CURRENT.lock();
        let Some(sup) = cur.as_ref() else { return Err("the key service is not running".into()) };
        let Some(c) = sup.control.as_ref() else { return Err("the key service's control channel is closed".into()) };
        (c.try_clone().map_err(|e| format!("control channel: {e}"))?, sup.pid)
    };
    let lost = |e: std::io::Error| {
        let why = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("no answer within {} s", limit.as_secs_f32()),
            _ => e.to_string(),
        };
        format!("the key service (pid {pid}) did not answer: {why}")
    };
    s.set_read_timeout(Some(limit)).map_err(lost)?;
    s.set_write_timeout(Some(limit)).map_err(lost)?;
    proto::write_frame(&mut s, &msg.encode()).map_err(lost)?;
    let body = proto::read_frame_up_to(&mut s, MAX_CONTROL).map_err(lost)?.ok_or_else(|| lost(std::io::ErrorKind::UnexpectedEof.into()))?;
    ControlAnswer::decode(&body).map_err(|e| format!("the key service (pid {pid}) answered something unreadable: {e}"))
}

/// Takes over the service of the first configuration pass for this one,
/// if `fits` its plan: httpd reads its configuration twice at startup, and
/// when it runs in the foreground (systemd's `-DFOREGROUND`, as on Amazon
/// Linux) both passes run in this process, so the service that checked
/// the keys in the first pass, logged in, serves: one login per start.
/// When httpd detaches (`apachectl start`), the first pass ran in the
/// process that has exited since: its service is not ours and ends with
/// it (PR_SET_PDEATHSIG); this pass starts its own. Returns the socket.
pub fn adopt(pconf: *mut apr_pool_t, fits: impl FnOnce(&Plan) -> bool) -> Option<PathBuf> {
    let s = CARRIED.lock().take()?;
    let mut status: c_int = 0;
    // SAFETY: waitpid without blocking: 0 for a live child of ours, -1
    // (ECHILD) for a process that is not our child, its pid once reaped.
    let w = unsafe { libc::waitpid(s.pid, &mut status, libc::WNOHANG) };
    if w == 0 && fits(&s.plan) {
        log::debug!("HSM00200: key service (pid {}) of the first configuration pass serves this one", s.pid);
        let socket = s.plan.socket.clone();
        *CURRENT.lock() = Some(s);
        // SAFETY: a cleanup with no data on the configuration pool.
        unsafe {
            httpd::apr_pool_cleanup_register(pconf, ptr::null(), Some(configuration_ends), Some(httpd::apr_pool_cleanup_null));
        }
        return Some(socket);
    }
    // Ours, but for another plan: it drains (it has no children).
    end_unless_gone(s, w == 0);
    None
}

/// At the end of the configuration: a first pass's service no pass took
/// over goes (see [`adopt`]).
pub fn end_carried() {
    if let Some(s) = CARRIED.lock().take() {
        // SAFETY: as in `adopt`.
        let ours = unsafe { libc::waitpid(s.pid, ptr::null_mut(), libc::WNOHANG) } == 0;
        end_unless_gone(s, ours);
    }
}

/// A service that no configuration uses any more: while it is our live
/// child (`alive`) it is told to drain and kept until it exits; otherwise
/// its registration is dropped.
fn end_unless_gone(mut s: Supervised, alive: bool) {
    s.control = None;
    if alive {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(s.pid, libc::SIGUSR1) };
        ENDED.lock().push(s);
    } else {
        forget(s);
    }
}

/// Drops the registration of a service that is gone or not our child.
fn forget(s: Supervised) {
    // SAFETY: the record registered in `spawn`, then its pool (APR reads
    // nothing of it once unregistered).
    unsafe {
        httpd::apr_proc_other_child_unregister(s.proc_.cast());
        httpd::apr_pool_destroy(s.pool);
    }
}

/// Has the current service find the key `uri` and number it `slot`.
pub fn find(slot: usize, uri: &str, limit: Duration) -> Result<ControlAnswer, String> {
    control(&Control::Find { slot: slot as u32, uri: uri.to_string() }, limit)
}

/// The configuration is loaded with `keys` (slot i is `keys[i]`): the
/// service serves them, and is started again with them if it dies. Unless
/// a second startup pass may take the service over (`last` false), the
/// control channel is closed on both ends.
pub fn seal(keys: Vec<Arc<KeyRef>>, last: bool, limit: Duration) -> Result<(), String> {
    match control(&Control::Seal { count: keys.len() as u32, last }, limit)? {
        ControlAnswer::Sealed => {}
        other => return Err(format!("the key service answered {other:?} to the end of the configuration")),
    }
    if let Some(s) = CURRENT.lock().as_mut() {
        s.plan.keys = keys;
        if last {
            s.control = None;
        }
    }
    Ok(())
}

/// Starts the service of the configuration whose pool is `pconf`; it ends
/// with that configuration. `process_pool` is httpd's process pool.
pub fn start(pconf: *mut apr_pool_t, process_pool: *mut apr_pool_t, plan: Plan) -> Result<libc::pid_t, String> {
    PROCESS_POOL.store(process_pool, Ordering::Relaxed);
    let pid = spawn(process_pool, plan)?;
    // SAFETY: a cleanup with no data on the configuration pool.
    unsafe {
        httpd::apr_pool_cleanup_register(pconf, ptr::null(), Some(configuration_ends), Some(httpd::apr_pool_cleanup_null));
    }
    Ok(pid)
}

/// Makes the service's listening socket, forks the service and registers
/// it as an other child in a new pool. The parent closes its copy of the
/// socket at once: nothing it forks later (its children, or a daemon of
/// another module such as mod_cgid's) can accept on it and answer
/// children in the service's place. A service started again after a death
/// gets a new socket at the same path.
fn spawn(process_pool: *mut apr_pool_t, plan: Plan) -> Result<libc::pid_t, String> {
    let listener = service::listen(&plan)?;
    let (pid, control) = service::start(&plan, listener)?;
    // A service started again knows its keys: no control channel.
    let control = plan.keys.is_empty().then_some(control);
    // SAFETY: a subpool of the process pool holds the apr_proc_t (zeroed
    // here) and APR's registration; it is destroyed when the service has
    // died and been unregistered (`maintenance`).
    unsafe {
        let mut pool: *mut apr_pool_t = ptr::null_mut();
        if httpd::apr_pool_create_ex(&mut pool, process_pool, None, ptr::null_mut()) != 0 || pool.is_null() {
            libc::kill(pid, libc::SIGTERM);
            return Err("cannot make a pool to register the key service".into());
        }
        let proc_ = httpd::apr_palloc(pool, std::mem::size_of::<apr_proc_t>()) as *mut apr_proc_t;
        ptr::write_bytes(proc_, 0, 1);
        (*proc_).pid = pid;
        *CURRENT.lock() = Some(Supervised { plan, control, pid, started: Instant::now(), proc_, pool });
        httpd::apr_proc_other_child_register(proc_, Some(maintenance), proc_.cast(), ptr::null_mut(), pool);
    }
    Ok(pid)
}

fn stopping() -> bool {
    let mut state: c_int = 0;
    // SAFETY: ap_mpm_query writes one int.
    let rc = unsafe { httpd::ap_mpm_query(httpd::AP_MPMQ_MPM_STATE as c_int, &mut state) };
    rc != 0 || state == httpd::AP_MPMQ_STOPPING as c_int
}

/// Whether httpd is exiting (a stop), not restarting: the MPM's state says
/// "stopping" for both while the configuration pool is cleared.
fn exiting() -> bool {
    // SAFETY: a plain query of httpd's state.
    unsafe { httpd::ap_state_query(httpd::AP_SQ_MAIN_STATE as c_int) == httpd::AP_SQ_MS_EXITING as c_int }
}

/// Whether the configuration pool being cleared is the one of httpd's
/// first configuration pass at startup.
fn first_pass_ends() -> bool {
    // SAFETY: plain queries of httpd's state.
    unsafe {
        httpd::ap_state_query(httpd::AP_SQ_CONFIG_GEN as c_int) == 0
            && httpd::ap_state_query(httpd::AP_SQ_MAIN_STATE as c_int) == httpd::AP_SQ_MS_DESTROY_CONFIG as c_int
    }
}

/// The configuration pool is being cleared: at a restart the service
/// serves the old children until they are gone (`service::drain_watch`),
/// when httpd exits it stops now. After the first pass at startup it is
/// kept for the second (see [`adopt`]).
unsafe extern "C" fn configuration_ends(_data: *mut c_void) -> httpd::apr_status_t {
    crate::ffi::guard("key service cleanup", 0, || {
        let Some(mut s) = CURRENT.lock().take() else { return 0 };
        if first_pass_ends() {
            log::debug!("HSM00201: key service (pid {}) kept for the second configuration pass", s.pid);
            *CARRIED.lock() = Some(s);
            return 0;
        }
        s.control = None;
        let exiting = exiting();
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(s.pid, if exiting { libc::SIGTERM } else { libc::SIGUSR1 }) };
        if exiting {
            service::remove_socket(&s.plan.socket);
        }
        log::debug!("HSM00202: key service (pid {}) ends with its configuration", s.pid);
        ENDED.lock().push(s);
        0
    })
}

/// APR's callback for a registered service. No lock is held while calling
/// into APR: unregistering runs this callback again (UNREGISTER).
unsafe extern "C" fn maintenance(reason: c_int, data: *mut c_void, status: c_int) {
    crate::ffi::guard("key service maintenance", (), || {
        let reason = reason as u32;
        if reason != httpd::APR_OC_REASON_DEATH && reason != httpd::APR_OC_REASON_LOST {
            return; // running, restart, unregister: nothing to do here
        }
        let proc_ = data as *mut apr_proc_t;
        let current = take_matching(&CURRENT, proc_);
        let was_current = current.is_some();
        let Some(s) = current.or_else(|| take_matching(&CARRIED, proc_)).or_else(|| {
            let mut ended = ENDED.lock();
            ended.iter().position(|s| s.proc_ == proc_).map(|i| ended.remove(i))
        }) else {
            return;
        };
        // SAFETY: the record APR called us for, then its pool (APR reads
        // nothing of it after this callback returns).
        unsafe {
            httpd::apr_proc_other_child_unregister(data);
        }
        let (mut plan, pool, pid, lived) = (s.plan, s.pool, s.pid, s.started.elapsed());
        let waited = plan.delay;
        plan.delay = restart_delay(lived, waited);
        let process_pool = PROCESS_POOL.load(Ordering::Relaxed);
        // SAFETY: nothing refers to this pool any more.
        unsafe { httpd::apr_pool_destroy(pool) };
        if !was_current {
            service::remove_socket(&plan.socket);
            log::debug!("HSM00203: key service (pid {pid}) of an ended configuration has exited");
            return;
        }
        if stopping() {
            return;
        }
        if plan.delay.is_zero() {
            log::error!("HSM00204: key service (pid {pid}) died ({}); starting it again", describe_status(reason, status));
        } else {
            log::error!(
                "HSM00205: key service (pid {pid}) died ({}) {} ms after it started; starting it again, to open the token in {} ms",
                describe_status(reason, status),
                lived.saturating_sub(waited).as_millis(),
                plan.delay.as_millis()
            );
        }
        crate::pkcs11::stats::service_restarted();
        if let Err(e) = spawn(process_pool, plan) {
            log::error!("HSM00206: key service could not be started again: {e}; handshakes with token keys fail until httpd is restarted");
        }
    })
}
/// Takes the record in `slot` if it is the one registered as `proc_`.
fn take_matching(slot: &Mutex<Option<Supervised>>, proc_: *mut apr_proc_t) -> Option<Supervised> {
    let mut s = slot.lock();
    if s.as_ref().is_some_and(|s| s.proc_ == proc_) {
        s.take()
    } else {
        None
    }
}

/// A service that served for [`STABLE`] is started again at once; one that
/// died sooner waits before it opens the token, 100 ms doubling to 5 s, so
/// that a service that cannot live (a library that crashes at once, say)
/// costs a fork and a login attempt every few seconds, not a storm.
const STABLE: Duration = Duration::from_secs(10);
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// The delay of the next service, after one that lived `lived` and had
/// waited `delay` before it opened the token.
fn restart_delay(lived: Duration, delay: Duration) -> Duration {
    if lived >= delay + STABLE {
        Duration::ZERO
    } else {
        (delay * 2).clamp(RESTART_MIN, RESTART_MAX)
    }
}

fn describe_status(reason: u32, status: c_int) -> String {
    if reason == httpd::APR_OC_REASON_LOST {
        return "lost".into();
    }
    // APR passes the exit code or the number of the signal that ended it.
    format!("exit code or signal {status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_that_die_soon_are_started_again_later_and_later() {
        let ms = Duration::from_millis;
        // A first death after a long life: at once.
        assert_eq!(restart_delay(Duration::from_secs(3600), Duration::ZERO), Duration::ZERO);
        // Deaths in quick succession: 100 ms, doubling, at most 5 s.
        let mut d = restart_delay(ms(10), Duration::ZERO);
        assert_eq!(d, ms(100));
        let mut seen = vec![d];
        for _ in 0..8 {
            d = restart_delay(d + ms(10), d);
            seen.push(d);
        }
        assert_eq!(&seen[..4], &[ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(*seen.last().unwrap(), RESTART_MAX);
        // One that then served 10 s after its wait: at once again.
        assert_eq!(restart_delay(RESTART_MAX + STABLE, RESTART_MAX), Duration::ZERO);
    }
}
