//! Runs token calls on a small pool of helper threads so that the caller
//! (a worker thread in the middle of a TLS handshake) waits at most a bound.
//! A PKCS#11 call cannot be cancelled: when it hangs, its helper thread
//! stays with it until it returns, and the caller goes on with an error.
//! The pool grows when every helper is busy (or stuck) and keeps idle
//! helpers for reuse. Threads do not survive fork; a child starts afresh.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    pid: u32,
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
}

struct Pool {
    inner: Mutex<Inner>,
    wake: Condvar,
}

static POOL: Pool = Pool {
    inner: Mutex::new(Inner { pid: 0, jobs: VecDeque::new(), idle: 0, threads: 0 }),
    wake: Condvar::new(),
};

/// Upper bound on helper threads per process (stuck ones included).
const MAX_THREADS: usize = 512;

fn worker() {
    let mut inner = POOL.inner.lock();
    loop {
        if let Some(job) = inner.jobs.pop_front() {
            drop(inner);
            job();
            inner = POOL.inner.lock();
            continue;
        }
        inner.idle += 1;
        POOL.wake.wait(&mut inner);
        inner.idle -= 1;
    }
}

/// Runs `f` on a helper thread; None if it did not finish within `limit`
/// (it then finishes on its own later) or no helper could be started.
pub fn run<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let done: Arc<(Mutex<Option<T>>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
    let d = done.clone();
    let job: Job = Box::new(move || {
        let v = f();
        *d.0.lock() = Some(v);
        d.1.notify_one();
    });
    {
        let mut inner = POOL.inner.lock();
        let pid = std::process::id();
        if inner.pid != pid {
            // Forked: the parent's helpers do not exist here.
            *inner = Inner { pid, jobs: VecDeque::new(), idle: 0, threads: 0 };
        }
        inner.jobs.push_back(job);
        if inner.idle == 0 && inner.threads < MAX_THREADS {
            let spawned = std::thread::Builder::new().name("hsm_ssl-token".into()).spawn(worker);
            if spawned.is_ok() {
                inner.threads += 1;
            }
        } else {
            POOL.wake.notify_one();
        }
        if inner.threads == 0 {
            inner.jobs.clear();
            return None;
        }
    }
    let deadline = Instant::now() + limit;
    let mut slot = done.0.lock();
    while slot.is_none() {
        if done.1.wait_until(&mut slot, deadline).timed_out() {
            return slot.take();
        }
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
}
