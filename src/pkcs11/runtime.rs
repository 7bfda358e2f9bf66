//! The one [`Hsm`] of the current process, opened on first use.
//!
//! The parent opens it while mod_ssl loads keys and shuts it down before
//! children are forked ([`shutdown`]); each child opens its own. A state
//! found with another process id was inherited through fork and is never
//! used (nor finalized: its sessions belong to the parent).

use super::settings::{self, Setting};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::policy::{BACKOFF_MAX, BACKOFF_MIN, CLOSE_DRAIN as DRAIN, PROBE_INTERVAL};
use super::token::{Binding, Hsm, KeyRef, Mech, OpError, TokenAnswer};

struct Slot {
    hsm: Option<Arc<Hsm>>,
    /// Set while the token is unusable: until then callers fail fast
    /// instead of hammering a dead HSM; the next attempt after it
    /// re-initializes.
    down: Option<Down>,
    /// Set once the token refused the PIN in this process: no further
    /// login is attempted (a locked CloudHSM crypto user needs an admin).
    denied: Option<String>,
    /// States taken out by `invalidate` and not yet closed: no new state
    /// is opened until they are (a late C_Finalize would break it).
    closing: usize,
}

struct Down {
    until: Instant,
    backoff: Duration,
    reason: String,
}

static CURRENT: Mutex<Slot> = Mutex::new(Slot { hsm: None, down: None, denied: None, closing: 0 });

/// Held while one thread opens the library (C_Initialize, which can hang
/// on a network HSM), so that others wait for it without holding CURRENT:
/// `shutdown` and fail-fast checks never block behind a hung open.
static OPENING: Mutex<()> = Mutex::new(());

/// Whether this process serves handshakes (an httpd child): only there is
/// a token going away news for the log; in the parent the failing startup
/// step reports it.
static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as one that serves handshakes.
pub fn set_serving() {
    SERVING.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Slot {
    fn mark_down(&mut self, reason: String) {
        let backoff = match &self.down {
            Some(d) => (d.backoff * 2).min(BACKOFF_MAX),
            None => BACKOFF_MIN,
        };
        for t in super::stats::all_mine() {
            super::stats::state(t, super::stats::TokenState::BackingOff);
        }
        if SERVING.load(std::sync::atomic::Ordering::Relaxed) {
            log::warn!("HSM00400: token unavailable: {reason}; next attempt in {} ms", backoff.as_millis());
        } else {
            log::debug!("HSM00401: token unavailable: {reason}");
        }
        self.down = Some(Down { until: Instant::now() + backoff, backoff, reason });
    }
}

/// This process's `Hsm` for `binding`, opening it if needed. The flag says
/// whether this call opened it.
///
/// Waiting for a state being closed, or for another thread opening one, is
/// bounded by HSMSSLOperationTimeout (unless HSMSSLDirectCalls is on): a
/// state cannot close while a hung call still runs on it, and no handshake
/// waits for that longer than the bound.
fn current(binding: &Arc<Binding>) -> Result<(Arc<Hsm>, bool), OpError> {
    let mut found = usable(binding)?;
    if let Found::Ready(h) = found {
        return Ok((h, false)); // every handshake but the first: no clock read
    }
    let limit = binding.op_timeout;
    let deadline = (!binding.direct_calls).then(|| Instant::now() + limit);
    loop {
        match found {
            Found::Ready(h) => return Ok((h, false)),
            Found::Absent | Found::Stale(_) => {
                let opening = match deadline {
                    None => Some(OPENING.lock()),
                    Some(d) => OPENING.try_lock_until(d),
                };
                let Some(_opening) = opening else {
                    let s_operationtimeout = settings::name(Setting::OperationTimeout);
                    return Err(OpError::Setup(format!(
                        "another thread has been opening the PKCS#11 library for over {} ms ({s_operationtimeout})",
                        limit.as_millis()
                    )));
                };
                if let Found::Stale(old) = found {
                    close(old);
                }
                // Another thread may have opened it, or dropped it, meanwhile.
                match usable(binding)? {
                    Found::Ready(h) => return Ok((h, false)),
                    Found::Absent => return open(binding),
                    Found::Stale(old) => {
                        close(old);
                        return open(binding);
                    }
                    Found::Closing => {}
                }
            }
            Found::Closing => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let s_operationtimeout = settings::name(Setting::OperationTimeout);
            let msg = format!(
                "re-initializing PKCS#11: a call still running on the old state has not returned within {} ms ({s_operationtimeout})",
                limit.as_millis()
            );
            CURRENT.lock().mark_down(msg.clone());
            return Err(OpError::Setup(msg));
        }
        std::thread::sleep(Duration::from_millis(2));
        found = usable(binding)?;
    }
}

/// Opens a new state; called with OPENING held and nothing to close.
fn open(binding: &Arc<Binding>) -> Result<(Arc<Hsm>, bool), OpError> {
    let b = binding.clone();
    let limit = binding.op_timeout;
    let opened = binding.call(move || Hsm::open(b)).unwrap_or_else(|| {
        let s_operationtimeout = settings::name(Setting::OperationTimeout);
        Err(format!(
            "loading and initializing the PKCS#11 library did not return within {} ms ({s_operationtimeout}); is the HSM reachable?",
            limit.as_millis()
        ))
    });
    let mut cur = CURRENT.lock();
    match opened {
        Ok(h) => {
            let h = Arc::new(h);
            cur.hsm = Some(h.clone());
            Ok((h, true))
        }
        Err(msg) => {
            cur.mark_down(msg.clone());
            Err(OpError::Setup(msg))
        }
    }
}

/// What `usable` found.
enum Found {
    /// The open state for the binding.
    Ready(Arc<Hsm>),
    /// None yet: an invalidated state is still being closed.
    Closing,
    /// None: it must be opened.
    Absent,
    /// A state for another library, taken out of the slot: the caller
    /// closes it (holding OPENING) and opens one for this binding.
    Stale(Arc<Hsm>),
}

/// The open `Hsm` for `binding`, or why there is none; an error while the
/// PIN is refused or the token is marked down.
fn usable(binding: &Arc<Binding>) -> Result<Found, OpError> {
    let mut cur = CURRENT.lock();
    if let Some(msg) = &cur.denied {
        return Err(OpError::Denied(msg.clone()));
    }
    if let Some(d) = &cur.down {
        if Instant::now() < d.until {
            return Err(OpError::Setup(format!("{} (token marked unavailable; retrying shortly)", d.reason)));
        }
    }
    let pid = std::process::id();
    if let Some(h) = &cur.hsm {
        if h.pid() != pid {
            // Inherited through fork: the parent's state, unusable here.
            std::mem::forget(cur.hsm.take());
        } else if h.binding().library == binding.library {
            return Ok(Found::Ready(h.clone()));
        } else if let Some(old) = cur.hsm.take() {
            // Not closed here: the caller may hold OPENING already.
            return Ok(Found::Stale(old));
        }
    }
    Ok(if cur.closing > 0 { Found::Closing } else { Found::Absent })
}

/// Finds `key` on the token before the first handshake needs it (a child
/// without key service, a restarted key service), with the second chances
/// of `policy::PREPARE_PAUSES`: sibling processes start together, and a
/// token being read by another process can answer with a transient error.
pub fn prepare(key: &Arc<KeyRef>) -> Result<(), OpError> {
    let mut r = with_hsm(&key.binding, |h| h.prepare(key));
    for pause in super::policy::PREPARE_PAUSES {
        match &r {
            Err(e) if e.needs_reinit() => {
                std::thread::sleep(pause);
                r = with_hsm(&key.binding, |h| h.prepare(key));
            }
            _ => break,
        }
    }
    r
}

/// This process's `Hsm` for `binding`, opening it if needed.
pub fn hsm_for(binding: &Arc<Binding>) -> Result<Arc<Hsm>, OpError> {
    current(binding).map(|(h, _)| h)
}

/// Runs `op` on this process's `Hsm`.
///
/// * A refused PIN (wrong, locked, expired) stops every further login in
///   this process: it is never retried.
/// * An error a fresh PKCS#11 state may cure (device error, token removed,
///   login lost, handles gone) drops the state; `op` runs once more on a
///   fresh one unless the failing one was brand new. If that fails too, the
///   token is marked unavailable for a backoff (100 ms doubling to 1 s)
///   during which callers fail at once.
pub fn with_hsm<T>(binding: &Arc<Binding>, op: impl Fn(&Arc<Hsm>) -> Result<T, OpError>) -> Result<T, OpError> {
    let mut reinit_done = false;
    loop {
        let (hsm, opened) = current(binding)?;
        match op(&hsm) {
            Ok(v) => {
                if opened || reinit_done {
                    let mut cur = CURRENT.lock();
                    if cur.down.take().is_some() {
                        log::info!("HSM00402: token available again in pid {}", std::process::id());
                    }
                }
                return Ok(v);
            }
            Err(OpError::Denied(msg)) => {
                for t in super::stats::all_mine() {
                    super::stats::state(t, super::stats::TokenState::Down);
                }
                super::latch::refuse(); // for the server's other processes too
                CURRENT.lock().denied = Some(msg.clone());
                log::error!("HSM00403: {msg}; this process will not try to log in again");
                return Err(OpError::Denied(msg));
            }
            Err(e @ OpError::Timeout(_)) => {
                drop(hsm);
                mark_slow(e.to_string());
                return Err(e);
            }
            Err(e) if e.needs_reinit() => {
                invalidate(hsm);
                if opened || reinit_done {
                    CURRENT.lock().mark_down(e.to_string());
                    return Err(e);
                }
                log::warn!("HSM00404: {e}; re-initializing PKCS#11 and retrying once");
                for t in super::stats::all_mine() {
                    super::stats::event(t, super::stats::Event::Reinit);
                }
                reinit_done = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Decrypts a TLS premaster secret. `with_hsm` handles what happens before
/// the token sees the ciphertext (library, login, key lookup, a free
/// session: none depends on the ciphertext). The token's answer to the
/// C_Decrypt itself, whatever it is, comes back as `Ok` and causes no
/// retry, re-initialization or backoff here, so it cannot change the
/// handshake's outcome or timing (Bleichenbacher / ROBOT): the caller
/// treats every answer alike and, after an error, calls [`wake_probe`].
pub fn decrypt_premaster(key: &Arc<KeyRef>, mech: Mech, data: &[u8]) -> Result<TokenAnswer, OpError> {
    with_hsm(&key.binding, |hsm| hsm.decrypt_premaster(key, mech, data.to_vec()))
}

/// The probe of this process: what woke it, and whether its thread runs.
struct Probe {
    /// The process the thread belongs to: a record inherited through fork
    /// names a thread that does not exist in the child.
    pid: u32,
    /// The first error since the last probe and its key.
    pending: Option<(Arc<KeyRef>, OpError)>,
    /// Errors since the last probe.
    count: u64,
    thread: bool,
}

static PROBE: Mutex<Probe> = Mutex::new(Probe { pid: 0, pending: None, count: 0, thread: false });
static PROBE_WAKE: parking_lot::Condvar = parking_lot::Condvar::new();

/// Wakes (never waits for) this process's probe after a premaster
/// C_Decrypt returned `error`: one probe at a time, on a thread of its own,
/// with calls that carry no client data (`Hsm::probe`). Only the probe's
/// own failure goes through the normal path (`with_hsm`: re-initialize,
/// mark the token down), so a client cannot make the token look down for
/// everyone by sending bad ciphertexts, while real token trouble is still
/// found. The probe logs the decrypt error (its CKR name, never the data).
pub fn wake_probe(key: &Arc<KeyRef>, error: OpError) {
    let pid = std::process::id();
    let mut p = PROBE.lock();
    if p.pid != pid {
        *p = Probe { pid, pending: None, count: 0, thread: false };
    }
    p.count += 1;
    if p.pending.is_none() {
        p.pending = Some((key.clone(), error));
    }
    if !p.thread {
        p.thread = std::thread::Builder::new().name("hsm_ssl-probe".into()).spawn(probe_loop).is_ok();
    }
    drop(p);
    PROBE_WAKE.notify_one();
}

fn probe_loop() {
    loop {
        let (key, error, count) = {
            let mut p = PROBE.lock();
            loop {
                if let Some((k, e)) = p.pending.take() {
                    break (k, e, std::mem::take(&mut p.count));
                }
                PROBE_WAKE.wait(&mut p);
            }
        };
        let started = Instant::now();
        // A panic (a bug) must not end the thread: the flag says it runs.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe_once(&key, &error, count)));
        if checked.is_err() {
            log::error!("HSM00405: the token check after a failed premaster decrypt panicked; checking again at the next failure");
        }
        std::thread::sleep(PROBE_INTERVAL.saturating_sub(started.elapsed()));
    }
}

/// One check of the token after `count` premaster decrypt errors, the
/// first of which was `error`; logs the outcome.
fn probe_once(key: &Arc<KeyRef>, error: &OpError, count: u64) {
    let what = format!(
        "premaster decrypt with {} failed ({error}; {count} time{} since the last check); \
         the client saw the same as for a bad premaster",
        key.uri_text,
        if count == 1 { "" } else { "s" }
    );
    match with_hsm(&key.binding, |hsm| hsm.probe(key)) {
        Ok(()) => log::warn!(
            "HSM00406: {what}; a check of token '{}' that uses no client data (C_GetSessionInfo, C_GetAttributeValue) passed: the token stays in use",
            key.token_label
        ),
        Err(e) => {
            log::warn!("HSM00407: {what}; a check of token '{}' that uses no client data failed too ({e}): handled as token trouble", key.token_label)
        }
    }
}

/// Pool counters of this process's token sessions (empty when closed).
pub fn pool_stats() -> Vec<(String, super::token::PoolStats)> {
    CURRENT.lock().hsm.as_ref().map(|h| h.pool_stats()).unwrap_or_default()
}

/// Drops `hsm` as this process's state if it still is; the next use opens
/// a new one. Its sessions close and C_Finalize runs once the operations
/// still using it return (see `close`). In a child that happens on a thread
/// of its own: the caller (a handshake) goes on at once, and `current`
/// waits for the close at most HSMSSLOperationTimeout.
pub fn invalidate(hsm: Arc<Hsm>) {
    // Taken out under CURRENT (briefly: other threads holding the same
    // state must be able to find it gone and drop their references) and
    // counted as closing, then closed under OPENING, so that no new state
    // is initialized before the old one is finalized.
    let taken = {
        let mut cur = CURRENT.lock();
        match &cur.hsm {
            Some(h) if Arc::ptr_eq(h, &hsm) => {
                cur.closing += 1;
                cur.hsm.take()
            }
            _ => None,
        }
    };
    drop(hsm);
    if let Some(h) = taken {
        let closing = Closing(Some(h));
        if SERVING.load(std::sync::atomic::Ordering::Relaxed) {
            // If no thread can be started, the closure (and so the close)
            // is dropped, and runs, right here.
            let _ = std::thread::Builder::new().name("hsm_ssl-close".into()).spawn(move || drop(closing));
        } else {
            // httpd's parent closes on the spot: it forks, and a child
            // must not inherit OPENING held by a closing thread.
            drop(closing);
        }
    }
}

/// A state taken out by `invalidate`: closed, and uncounted, when dropped.
struct Closing(Option<Arc<Hsm>>);

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _opening = OPENING.lock();
            // Uncounted even if closing panics (a bug): a count left behind
            // would keep this process from ever opening the token again.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| close(h))).is_err() {
                log::error!("HSM00408: closing a failed PKCS#11 state panicked; opening a new one regardless");
            }
        }
        CURRENT.lock().closing -= 1;
    }
}

/// Marks the token unavailable (backoff) without dropping the state: for
/// calls that hang, whose state cannot be finalized under them.
pub fn mark_slow(reason: String) {
    CURRENT.lock().mark_down(reason);
}

/// Closes this process's state (sessions, login, C_Finalize).
pub fn shutdown() {
    let taken = {
        let mut cur = CURRENT.lock();
        cur.down = None;
        cur.denied = None;
        cur.hsm.take()
    };
    if let Some(h) = taken {
        if h.pid() == std::process::id() {
            // try_lock: a hung C_Initialize holding OPENING must not stop
            // a shutdown (the process is going away or restarting anyway).
            let _opening = OPENING.try_lock_for(Duration::from_millis(100));
            close(h);
        } else {
            std::mem::forget(h);
        }
    }
}

fn close(h: Arc<Hsm>) {
    let start = Instant::now();
    let mut h = h;
    loop {
        match Arc::try_unwrap(h) {
            Ok(h) => return h.close(),
            Err(shared) if start.elapsed() < DRAIN => {
                h = shared;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(shared) => {
                // Still in use after the drain time (a hung call): leave it
                // to its last user, without closing or finalizing anything
                // then, since a new state may be open by that time.
                log::warn!(
                    "HSM00409: PKCS#11 state still in use after {} s; leaving it to the calls still running, a new state opens beside it",
                    DRAIN.as_secs()
                );
                shared.abandon();
                drop(shared);
                return;
            }
        }
    }
}

/// Runs `f` on a helper thread and waits at most `limit` for it: a PKCS#11
/// library that never returns must not hang httpd's start or configtest.
/// On timeout the thread is left behind (the caller fails and exits).
///
/// A thread that answered is joined before this returns: the parent forks
/// (children, and httpd's detach) right after its startup steps, and a
/// thread still exiting then may hold a lock of a library's thread-exit
/// handler (OpenSSL's thread-event lock, taken again by the first OpenSSL
/// call of any new thread). A fork at that moment left that lock held for
/// ever in the child, whose PKCS#11 library then hung in C_Initialize.
pub fn bounded<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("hsm_ssl-bounded".into()).spawn(move || {
        let _ = tx.send(f());
    });
    let thread = match spawned {
        Ok(t) => t,
        Err(e) => return Err(format!("{what}: cannot start a thread: {e}")),
    };
    match rx.recv_timeout(limit) {
        Ok(v) => {
            // It has sent its answer, so it only has its exit left to run.
            let _ = thread.join();
            Ok(v)
        }
        Err(_) => Err(format!(
            "{what} did not return within {} s ({}); is the HSM reachable?",
            limit.as_secs_f32(),
            settings::name(Setting::OperationTimeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    static EXITED: AtomicBool = AtomicBool::new(false);

    /// Stands for a library's thread-exit handler that holds a lock.
    struct SlowExit;
    impl Drop for SlowExit {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(50));
            EXITED.store(true, Ordering::SeqCst);
        }
    }
    thread_local!(static ON_EXIT: std::cell::RefCell<Option<SlowExit>> = const { std::cell::RefCell::new(None) });

    #[test]
    fn bounded_returns_only_once_its_thread_has_exited() {
        EXITED.store(false, Ordering::SeqCst);
        let v = bounded(Duration::from_secs(5), "test", || {
            ON_EXIT.with(|e| *e.borrow_mut() = Some(SlowExit));
            7
        });
        assert_eq!(v, Ok(7));
        assert!(EXITED.load(Ordering::SeqCst), "bounded returned while its thread was still exiting");
    }

    #[test]
    fn bounded_gives_up_after_the_limit() {
        let t = Instant::now();
        let r = bounded(Duration::from_millis(100), "sleeping", || std::thread::sleep(Duration::from_secs(3)));
        assert!(r.unwrap_err().contains("sleeping did not return within 0.1 s"));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
