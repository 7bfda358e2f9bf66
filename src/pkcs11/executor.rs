//! Runs token calls on a small pool of helper threads so that the caller
//! (a worker thread in the middle of a TLS handshake) waits at most a bound.
//! A PKCS#11 call cannot be cancelled: when it hangs, its helper thread
//! stays with it until it returns, and the caller goes on with an error.
//! The pool grows when every helper is busy (or stuck) and keeps idle
//! helpers for reuse. Threads do not survive fork; a child starts afresh.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

// std's futex-based primitives, not parking_lot's: httpd's parent keeps
// idle helpers parked here when it forks its children, and parking_lot
// records parked threads in a process-wide table that a forked child would
// inherit with entries for threads that do not exist there (seen: corrupt
// wake-ups and a misaligned-pointer panic inside parking_lot_core). A futex
// has no such user-space record.
use std::sync::{Condvar, Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
}

struct Pool {
    inner: Mutex<Inner>,
    wake: Condvar,
}

/// The helper pool of this process; a fresh one after fork (the parent's
/// helpers do not exist in the child).
static POOL: Mutex<Option<(u32, Arc<Pool>)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A helper never panics while holding a lock (jobs run unlocked), so a
    // poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool() -> Arc<Pool> {
    let pid = std::process::id();
    let mut g = lock(&POOL);
    if let Some((p, pool)) = &*g {
        if *p == pid {
            return pool.clone();
        }
    }
    let pool = Arc::new(Pool { inner: Mutex::new(Inner { jobs: VecDeque::new(), idle: 0, threads: 0 }), wake: Condvar::new() });
    // The parent's pool is forgotten, not dropped: its memory may be in
    // a state only the parent's threads could make sense of.
    if let Some(old) = g.replace((pid, pool.clone())) {
        std::mem::forget(old);
    }
    pool
}

/// Upper bound on helper threads per process (stuck ones included).
const MAX_THREADS: usize = 512;

fn worker(pool: Arc<Pool>) {
    let mut inner = lock(&pool.inner);
    loop {
        if let Some(job) = inner.jobs.pop_front() {
            drop(inner);
            // A panicking job (a bug) must not take the helper down with
            // it; its caller times out and reports the failure.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            inner = lock(&pool.inner);
            continue;
        }
        inner.idle += 1;
        inner = pool.wake.wait(inner).unwrap_or_else(|p| p.into_inner());
        inner.idle -= 1;
    }
}

/// Whether the queued jobs need one more helper. A helper counts as idle
/// until it has woken up and taken a job, so compare with the queue: jobs
/// queued beyond the idle helpers need a new one (testing `idle == 0` left
/// a second job waiting behind a first whose helper had been woken but had
/// not yet run).
fn needs_helper(inner: &Inner) -> bool {
    inner.jobs.len() > inner.idle && inner.threads < MAX_THREADS
}

/// Runs `f` on a helper thread; None if it did not finish within `limit`
/// (it then finishes on its own later) or no helper could be started.
pub fn run<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let done: Arc<(Mutex<Option<T>>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
    let d = done.clone();
    let job: Job = Box::new(move || {
        let v = f();
        *lock(&d.0) = Some(v);
        d.1.notify_one();
    });
    let pool = pool();
    {
        let mut inner = lock(&pool.inner);
        inner.jobs.push_back(job);
        if needs_helper(&inner) {
            let p = pool.clone();
            let spawned = std::thread::Builder::new().name("hsm_ssl-token".into()).spawn(move || worker(p));
            if spawned.is_ok() {
                inner.threads += 1;
            }
        } else {
            pool.wake.notify_one();
        }
        if inner.threads == 0 {
            inner.jobs.clear();
            return None;
        }
    }
    let deadline = Instant::now() + limit;
    let mut slot = lock(&done.0);
    while slot.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        slot = done.1.wait_timeout(slot, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
    }
    slot.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_and_a_hung_job_costs_only_the_bound() {
        assert_eq!(run(Duration::from_secs(1), || 41 + 1), Some(42));
        let t = Instant::now();
        let r = run(Duration::from_millis(100), || std::thread::sleep(Duration::from_secs(2)));
        assert!(r.is_none());
        assert!(t.elapsed() < Duration::from_secs(1));
        // Other work still runs while one helper is stuck.
        assert_eq!(run(Duration::from_secs(1), || "ok"), Some("ok"));
    }

    #[test]
    fn concurrent_jobs_never_queue_behind_each_other() {
        // Each round: one more job than there are idle helpers, all started
        // at once, and they can only finish together. If a job waited in
        // the queue behind another (a woken helper counted as idle twice),
        // the barrier would never fill and the jobs would time out.
        for _round in 0..30 {
            let p = pool();
            let deadline = Instant::now() + Duration::from_secs(5);
            let idle = loop {
                let i = lock(&p.inner);
                if i.idle == i.threads || Instant::now() > deadline {
                    break i.idle;
                }
                drop(i);
                std::thread::yield_now();
            };
            let n = idle + 1;
            let barrier = Arc::new(std::sync::Barrier::new(n));
            let callers: Vec<_> = (0..n)
                .map(|_| {
                    let b = barrier.clone();
                    std::thread::spawn(move || run(Duration::from_secs(5), move || b.wait().is_leader()))
                })
                .collect();
            let results: Vec<Option<bool>> = callers.into_iter().map(|c| c.join().unwrap()).collect();
            assert!(results.iter().all(|r| r.is_some()), "a job waited behind another: {results:?}");
        }
    }

    #[test]
    fn a_queue_longer_than_the_idle_helpers_gets_a_new_helper() {
        let inner = |queued: usize, idle: usize| Inner { jobs: (0..queued).map(|_| Box::new(|| ()) as Job).collect(), idle, threads: idle };
        assert!(needs_helper(&inner(1, 0)));
        assert!(!needs_helper(&inner(1, 1)));
        // A helper woken for the first job still counts as idle.
        assert!(needs_helper(&inner(2, 1)));
    }
}

#[cfg(test)]
mod fork_tests {
    use super::*;

    #[test]
    fn a_forked_child_gets_fresh_helpers() {
        assert_eq!(run(Duration::from_secs(1), || 1), Some(1));
        // SAFETY: fork in a test; the child only runs our code and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Several calls: the later ones reuse an idle helper (the
            // wake-up path that must not reach the parent's threads).
            let ok = (0..5).all(|i| {
                let r = run(Duration::from_secs(2), move || i) == Some(i);
                std::thread::sleep(Duration::from_millis(20));
                r
            });
            // SAFETY: leave the child without running the parent's atexit work.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    }
}
