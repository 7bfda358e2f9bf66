//! httpd's parent starts the key service and keeps it running, the way
//! mod_cgid keeps its daemon: registered as an APR "other child", so the
//! MPM tells us when it dies (started again at once) and when the
//! configuration pool goes away at a restart or stop (stopped then).

use std::ffi::{c_int, c_void, CStr};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::ffi::httpd::{self, apr_pool_t, apr_proc_t};
use crate::keyservice::service::{self, Plan};

/// The running service of the current configuration.
struct Supervised {
    plan: Plan,
    pid: libc::pid_t,
    /// The APR record registered as an other child (lives in `pool`).
    proc_: *mut apr_proc_t,
    /// The configuration pool the registration belongs to.
    pool: *mut apr_pool_t,
}

// SAFETY: the pointers are only used by httpd's parent on its main thread
// (post_config and the MPM's maintenance callbacks).
unsafe impl Send for Supervised {}

static CURRENT: Mutex<Option<Supervised>> = Mutex::new(None);

/// Configurations loaded so far: part of the socket name, so that old
/// children after a graceful restart never reach the new service (their
/// key numbers belong to the old configuration).
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// The socket path of a new configuration's service.
pub fn socket_path(pconf: *mut apr_pool_t) -> PathBuf {
    let n = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    let name = format!("hsm_ssl-keys.{}.{n}.sock", std::process::id());
    let c = std::ffi::CString::new(name.clone()).unwrap_or_default();
    // SAFETY: ap_runtime_dir_relative returns a string from `pconf` (or
    // null), read at once.
    unsafe {
        let p = httpd::ap_runtime_dir_relative(pconf, c.as_ptr());
        if p.is_null() {
            return PathBuf::from("/run").join(name);
        }
        PathBuf::from(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Starts the service for `plan` and registers it with the MPM.
pub fn start(pconf: *mut apr_pool_t, plan: Plan) -> Result<libc::pid_t, String> {
    let pid = service::start(&plan)?;
    // SAFETY: apr_proc_t allocated in pconf (zeroed by us), registered on
    // pconf: APR unregisters it (UNREGISTER callback) when pconf is cleared.
    unsafe {
        let proc_ = httpd::apr_palloc(pconf, std::mem::size_of::<apr_proc_t>()) as *mut apr_proc_t;
        if proc_.is_null() {
            libc::kill(pid, libc::SIGTERM);
            return Err("out of memory registering the key service".into());
        }
        ptr::write_bytes(proc_, 0, 1);
        (*proc_).pid = pid;
        *CURRENT.lock() = Some(Supervised { plan, pid, proc_, pool: pconf });
        httpd::apr_proc_other_child_register(proc_, Some(maintenance), proc_.cast(), ptr::null_mut(), pconf);
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

/// APR's callback for the registered service. CURRENT is never held while
/// calling into APR: unregistering runs this callback again (UNREGISTER).
unsafe extern "C" fn maintenance(reason: c_int, data: *mut c_void, status: c_int) {
    crate::ffi::guard("key service maintenance", (), || {
        let reason = reason as u32;
        let proc_ = data as *mut apr_proc_t;
        let watched = |reason: u32| {
            let mut cur = CURRENT.lock();
            match cur.as_ref() {
                Some(s) if s.proc_ == proc_ && reason != httpd::APR_OC_REASON_RUNNING && reason != httpd::APR_OC_REASON_UNWRITABLE => cur.take(),
                _ => None,
            }
        };
        let Some(s) = watched(reason) else { return };
        match reason {
            httpd::APR_OC_REASON_DEATH | httpd::APR_OC_REASON_LOST => {
                // SAFETY: unregistering the record APR called us for (the
                // UNREGISTER callback that follows finds nothing to do).
                unsafe { httpd::apr_proc_other_child_unregister(data) };
                if stopping() {
                    service::remove_socket(&s.plan.socket);
                    return;
                }
                log::error!("key service (pid {}) died ({}); starting it again", s.pid, describe_status(reason, status));
                if let Err(e) = start(s.pool, s.plan) {
                    log::error!("key service could not be started again: {e}; handshakes with token keys fail until httpd is restarted");
                }
            }
            _ => {
                // RESTART or UNREGISTER (the configuration pool is
                // cleared): this configuration's service ends. At a stop
                // at once; otherwise it serves the old children until they
                // are done (see service::drain_watch), and the MPM reaps
                // it (and stops it with the server) as an extra process.
                if reason == httpd::APR_OC_REASON_RESTART {
                    // SAFETY: unregistering the record APR called us for.
                    unsafe { httpd::apr_proc_other_child_unregister(data) };
                }
                if exiting() {
                    // SAFETY: a signal to our own child.
                    unsafe { libc::kill(s.pid, libc::SIGTERM) };
                    service::remove_socket(&s.plan.socket);
                } else {
                    let mut generation: c_int = 0;
                    // SAFETY: ap_mpm_query writes one int; the other calls
                    // take plain values.
                    unsafe {
                        httpd::ap_mpm_query(httpd::AP_MPMQ_GENERATION as c_int, &mut generation);
                        httpd::ap_register_extra_mpm_process(s.pid, generation);
                        libc::kill(s.pid, libc::SIGUSR1);
                    }
                }
                log::debug!("key service (pid {}) ends with its configuration", s.pid);
            }
        }
    })
}

fn describe_status(reason: u32, status: c_int) -> String {
    if reason == httpd::APR_OC_REASON_LOST {
        return "lost".into();
    }
    // APR passes the exit code or the number of the signal that ended it.
    format!("exit code or signal {status}")
}
