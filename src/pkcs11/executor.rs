//! Runs token calls on a small pool of helper threads so that the caller
//! (a worker thread in the middle of a TLS handshake) waits at most a bound.
//! A PKCS#11 call cannot be cancelled: when it hangs, its helper thread
//! stays with it until it returns, and the caller goes on with an error.
//! The pool grows when every helper is busy (or stuck) and keeps idle
//! helpers for reuse. Threads do not survive fork; a child starts afresh.
//!
//! There is one pool per CPU, its helpers pinned to that CPU, and a caller
//! hands its job to the pool of the CPU it runs on. The caller then sleeps
//! until the job is done, so the helper runs where the caller was, and both
//! wake-ups stay on one CPU. Waking a thread on another CPU costs an
//! inter-processor interrupt, which in a VM is a VM exit: on the 2-core
//! benchmark VM an empty round trip cost about 30-45 µs of CPU that way and
//! about 7 µs on one CPU (BENCHMARKS.md). Where pinning is not allowed
//! (a cpuset without that CPU), a helper runs unpinned, as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The CPU its helpers are pinned to; None: unpinned.
    cpu: Option<usize>,
    /// Helpers of all pools of this process (stuck ones included).
    total: Arc<AtomicUsize>,
}

/// The pools of this process by CPU (index 0: the unpinned pool, CPU n at
/// n + 1), with their common thread count; fresh ones after fork (the
/// parent's helpers do not exist in the child). Only callers of `run` take
/// this lock, never a helper; in httpd's parent the one caller is the
/// thread that forks, so a child never inherits it held.
struct Pools {
    pid: u32,
    by_cpu: Vec<Option<Arc<Pool>>>,
    total: Arc<AtomicUsize>,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

/// CPUs a pool may be pinned to (the size of glibc's cpu_set_t).
const MAX_CPUS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A helper never panics while holding a lock (jobs run unlocked), so a
    // poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CPU the calling thread runs on, if the kernel says.
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions; -1 means unknown.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok().filter(|c| *c < MAX_CPUS)
}

/// Pins the calling thread to `cpu`; false if the kernel refused.
fn pin_to(cpu: usize) -> bool {
    debug_assert!(cpu < MAX_CPUS);
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set), CPU_SET
    // writes the bit of `cpu` < CPU_SETSIZE inside it, and
    // sched_setaffinity(0, ...) reads it for the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn pool() -> Arc<Pool> {
    let pid = std::process::id();
    let cpu = current_cpu();
    let mut g = lock(&POOLS);
    if g.as_ref().map(|p| p.pid != pid).unwrap_or(true) {
        // The parent's pools are forgotten, not dropped: their memory may be
        // in a state only the parent's threads could make sense of.
        if let Some(old) = g.replace(Pools { pid, by_cpu: Vec::new(), total: Arc::new(AtomicUsize::new(0)) }) {
            std::mem::forget(old);
        }
    }
    let pools = g.as_mut().expect("set above");
    let slot = cpu.map(|c| c + 1).unwrap_or(0);
    if pools.by_cpu.len() <= slot {
        pools.by_cpu.resize(slot + 1, None);
    }
    let total = pools.total.clone();
    pools.by_cpu[slot]
        .get_or_insert_with(|| {
            Arc::new(Pool { inner: Mutex::new(Inner { jobs: VecDeque::new(), idle: 0, threads: 0 }), wake: Condvar::new(), cpu, total })
        })
        .clone()
}

/// Upper bound on helper threads per process (stuck ones included).
const MAX_THREADS: usize = 512;

fn worker(pool: Arc<Pool>) {
    if let Some(cpu) = pool.cpu {
        if !pin_to(cpu) {
            log::debug!("HSM00475: token helper thread could not be pinned to CPU {cpu}; it runs unpinned");
        }
    }
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
fn needs_helper(inner: &Inner, total_threads: usize) -> bool {
    inner.jobs.len() > inner.idle && total_threads < MAX_THREADS
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
    let mut inner = lock(&pool.inner);
    inner.jobs.push_back(job);
    let spawn = needs_helper(&inner, pool.total.load(Ordering::Relaxed));
    if spawn {
        let p = pool.clone();
        let spawned = std::thread::Builder::new().name("hsm_ssl-token".into()).spawn(move || worker(p));
        if spawned.is_ok() {
            inner.threads += 1;
            pool.total.fetch_add(1, Ordering::Relaxed);
        }
    }
    if inner.threads == 0 {
        inner.jobs.clear();
        return None;
    }
    drop(inner);
    if !spawn {
        // Wake an idle helper after letting go of the lock, so that it
        // does not run only to block on the lock the caller still holds
        // (more thread switches per call). It cannot miss the job: a
        // helper looks at the queue under the lock before it waits.
        pool.wake.notify_one();
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
    fn the_job_runs_on_the_callers_cpu() {
        // From a caller pinned to each CPU in turn, the helper that runs the
        // job is on that CPU too (both wake-ups stay local).
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
        for cpu in 0..cpus {
            let ran_on = std::thread::spawn(move || {
                if !pin_to(cpu) {
                    return None; // a cpuset without this CPU: nothing to check
                }
                assert_eq!(current_cpu(), Some(cpu));
                run(Duration::from_secs(5), current_cpu).expect("job ran")
            })
            .join()
            .unwrap();
            if let Some(ran_on) = ran_on {
                assert_eq!(ran_on, cpu, "a caller on CPU {cpu} had its job run on CPU {ran_on}");
            }
        }
    }

    #[test]
    fn a_queue_longer_than_the_idle_helpers_gets_a_new_helper() {
        let inner = |queued: usize, idle: usize| Inner { jobs: (0..queued).map(|_| Box::new(|| ()) as Job).collect(), idle, threads: idle };
        assert!(needs_helper(&inner(1, 0), 0));
        assert!(!needs_helper(&inner(1, 1), 1));
        // A helper woken for the first job still counts as idle.
        assert!(needs_helper(&inner(2, 1), 1));
        // The cap counts the helpers of every CPU's pool.
        assert!(!needs_helper(&inner(2, 1), MAX_THREADS));
    }
}

#[cfg(test)]
mod fork_tests {
    use super::*;

    /// Set in the process that runs the test body on its own.
    const ALONE: &str = "HSM_SSL_EXECUTOR_FORK_TEST";

    #[test]
    fn a_forked_child_gets_fresh_helpers() {
        // fork() copies only the calling thread. Under the test harness the
        // other tests' threads run this module too, and a lock one of them
        // held at the fork (the pool table, a pool's queue) stays held in
        // the child forever: CI once hung here. httpd's parent has no such
        // threads (only idle helpers, which never take the pool table), so
        // the body runs in a process of its own: this test binary again,
        // with only this test and one test thread.
        if crate::pkcs11::rerun_alone("pkcs11::executor::fork_tests::a_forked_child_gets_fresh_helpers", ALONE) {
            return;
        }
        assert_eq!(run(Duration::from_secs(1), || 1), Some(1));
        // SAFETY: fork in a process whose only other threads are this
        // module's idle helper and the harness's main thread waiting for
        // this test; the child only runs our code and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
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
        // A child that hangs fails the test instead of hanging the run.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut status = 0;
        loop {
            // SAFETY: pid is our child; status is a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: pid is our own child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!("the forked child did not finish its calls within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    }
}
