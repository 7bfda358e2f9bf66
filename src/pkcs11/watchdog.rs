//! Token calls on the calling thread, watched.
//!
//! In the key service a token call runs on the thread that serves the
//! child's connection: a hop to a helper thread (`executor`) would cost
//! every handshake two more thread wake-ups, and the bound it gives is
//! already kept by the child, which waits for the answer at most
//! HSMSSLOperationTimeout and then drops the connection. What the
//! helper's timeout also did is done here: a call that has run longer
//! than the bound marks the token slow (`runtime::mark_slow`), so the
//! next handshakes fail at once during the backoff instead of each
//! waiting the bound behind a hung HSM.
//!
//! Per call the cost is two stores to the calling thread's own slot; the
//! watchdog thread reads every slot each [`TICK`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the watchdog looks at the calls in flight.
const TICK: Duration = Duration::from_millis(25);

/// One thread's call in flight: when it began (ms since [`EPOCH`], 0 for
/// none), and whether the watchdog reported it already.
#[derive(Default)]
struct Slot {
    since: AtomicU64,
    reported: AtomicBool,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();
/// The bound, once [`enable`] was called in this process.
static LIMIT: OnceLock<Duration> = OnceLock::new();
/// Every thread's slot (a thread registers on its first call).
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: Arc<Slot> = {
        let s = Arc::new(Slot::default());
        SLOTS.lock().push(s.clone());
        s
    };
}

fn now_ms() -> u64 {
    // At least 1: 0 means no call.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Makes token calls of this process run on the calling thread, watched
/// against `limit` (the key service, once, before it serves).
pub fn enable(limit: Duration) -> std::io::Result<()> {
    if LIMIT.set(limit).is_err() {
        return Ok(());
    }
    now_ms();
    std::thread::Builder::new().name("hsm_ssl-watch".into()).spawn(move || loop {
        std::thread::sleep(TICK);
        let late = check(limit, now_ms());
        if late > 0 {
            super::runtime::mark_slow(format!(
                "{late} token call(s) did not answer within {} ms ({}) and still run",
                limit.as_millis(),
                super::settings::name(super::settings::Setting::OperationTimeout)
            ));
        }
    })?;
    Ok(())
}

/// Whether [`enable`] was called in this process.
pub fn enabled() -> bool {
    LIMIT.get().is_some()
}

/// Runs `f` (a token call) on this thread, in view of the watchdog.
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    MINE.with(|slot| {
        slot.reported.store(false, Ordering::Relaxed);
        slot.since.store(now_ms(), Ordering::Release);
        let r = f();
        slot.since.store(0, Ordering::Release);
        r
    })
}

/// The calls that have run over `limit` and were not counted before;
/// forgets the slots of threads that have ended.
fn check(limit: Duration, now: u64) -> usize {
    let mut late = 0;
    SLOTS.lock().retain(|s| {
        let since = s.since.load(Ordering::Acquire);
        if since != 0 && now.saturating_sub(since) > limit.as_millis() as u64 && !s.reported.swap(true, Ordering::Relaxed) {
            late += 1;
        }
        Arc::strong_count(s) > 1 || since != 0
    });
    late
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_over_the_bound_is_reported_once_and_a_finished_one_never() {
        let limit = Duration::from_millis(100);
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            run(|| {
                tx.send(()).unwrap();
                go_rx.recv().unwrap();
            })
        });
        rx.recv().unwrap();
        let slot = Arc::downgrade(SLOTS.lock().last().unwrap());
        let since = slot.upgrade().unwrap().since.load(Ordering::Acquire);
        assert_ne!(since, 0, "a call in flight has no start time");
        assert_eq!(check(limit, since + 50), 0, "reported within the bound");
        assert_eq!(check(limit, since + 150), 1, "not reported over the bound");
        assert_eq!(check(limit, since + 200), 0, "reported twice");
        go_tx.send(()).unwrap();
        t.join().unwrap();
        // The thread is gone: its slot is dropped at the next look.
        assert_eq!(check(limit, since + 1000), 0, "a finished call still looks in flight");
        assert!(slot.upgrade().is_none(), "the slot of an ended thread is kept");
    }
}
