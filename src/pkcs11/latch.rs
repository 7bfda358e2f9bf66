//! A refused PIN, shared by every process of one server instance.
//!
//! A token that refuses the PIN counts each failed login; after a few the
//! user is locked (CloudHSM: an administrator must unlock it). So after a
//! PIN rotation, httpd must try the old PIN at most once per start or
//! reload, however many children it has and forks later. The record lives
//! in one anonymous shared page that httpd's parent maps before it forks
//! anything: every child, and every child forked later, sees the same page.
//! It holds the number of the configuration generation in which the PIN
//! was refused; the parent starts a new generation (a new PIN read) at each
//! start and reload, so an older refusal stops counting then.
//!
//! Logins are also taken one at a time across processes, so that two
//! children starting together cannot both spend a try.
//!
//! Nothing here knows about PKCS#11: a key service that does every login
//! itself can keep using it as it is.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The shared page's contents.
#[repr(C)]
struct Shared {
    /// The generation in which the PIN was refused (0: never).
    refused_gen: AtomicU64,
    /// The process in which it was refused.
    refused_pid: AtomicU32,
    /// The process logging in now (0: none).
    trying: AtomicU32,
}

static SHARED: OnceLock<&'static Shared> = OnceLock::new();

/// This process's configuration generation; children inherit it.
static GENERATION: AtomicU64 = AtomicU64::new(1);

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        // SAFETY: a fresh shared anonymous mapping, zero-filled (a valid
        // `Shared`: all atomics 0), never unmapped, so the reference
        // lives as long as the process.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Shared>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                log::warn!(
                    "HSM00480: cannot map a shared page for the refused-PIN record ({}); each process keeps its own",
                    std::io::Error::last_os_error()
                );
                return Box::leak(Box::new(Shared { refused_gen: AtomicU64::new(0), refused_pid: AtomicU32::new(0), trying: AtomicU32::new(0) }));
            }
            &*(p as *const Shared)
        }
    })
}

/// Starts a new configuration generation: called by httpd's parent at each
/// start and reload, before it forks children. The first call maps the
/// shared page, so it must come before the first fork.
pub fn new_generation() {
    shared();
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The process in which the token refused this generation's PIN, if it did.
pub fn refused() -> Option<u32> {
    let s = shared();
    (s.refused_gen.load(Ordering::Acquire) == GENERATION.load(Ordering::Acquire)).then(|| s.refused_pid.load(Ordering::Acquire))
}

/// Records that the token refused this generation's PIN in this process
/// (unless a refusal of this generation is already recorded: the first
/// one names the process that tried).
pub fn refuse() {
    // A child of an older generation (still serving after a graceful
    // restart) must not replace a newer generation's refusal with its own:
    // the recorded generation only goes up.
    let s = shared();
    let gen = GENERATION.load(Ordering::Acquire);
    let mut cur = s.refused_gen.load(Ordering::Acquire);
    while cur < gen {
        s.refused_pid.store(std::process::id(), Ordering::Release);
        match s.refused_gen.compare_exchange(cur, gen, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// Why a process does not log in: the PIN was refused in `pid`.
pub fn refusal_text(pid: u32) -> String {
    let s_pin = super::settings::name(super::settings::Setting::Pin);
    if pid == std::process::id() {
        format!("the token refused the PIN in this process; not trying again: fix {s_pin}, then reload httpd")
    } else {
        format!("the token refused the PIN in another process of this server (pid {pid}); not trying again: fix {s_pin}, then reload httpd")
    }
}

/// Whether `pid` still exists (a zombie counts, until reaped).
fn exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks the process; EPERM means it exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// Releases the login turn when dropped.
struct Turn(Option<&'static Shared>);

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            let _ = s.trying.compare_exchange(std::process::id(), 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// Waits for this process's turn to log in, at most `wait`; after that the
/// login goes ahead anyway (a slow login elsewhere must not stop this one),
/// without a turn. A turn held by a process that is gone is taken over.
fn take_turn(wait: Duration) -> Result<Turn, u32> {
    let s = shared();
    let me = std::process::id();
    let deadline = Instant::now() + wait;
    loop {
        if let Some(pid) = refused() {
            return Err(pid);
        }
        match s.trying.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(Turn(Some(s))),
            Err(holder) if holder == me => return Ok(Turn(None)), // another thread of ours has it
            Err(holder) if !exists(holder) => {
                let _ = s.trying.compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Acquire);
                continue;
            }
            Err(_) if Instant::now() >= deadline => return Ok(Turn(None)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Runs one login, `login`, unless this generation's PIN was already
/// refused (then `Err(pid)` of the process where it was, and no login).
/// `login` says whether the token refused the PIN; that is recorded for
/// every process before the next one gets its turn.
pub fn login<T>(wait: Duration, login: impl FnOnce() -> (T, bool)) -> Result<T, u32> {
    let _turn = take_turn(wait)?;
    // Checked again with the turn held: the previous holder may just have
    // been refused.
    if let Some(pid) = refused() {
        return Err(pid);
    }
    let (result, refused_now) = login();
    if refused_now {
        refuse();
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the process that runs a test body on its own.
    const ALONE: &str = "HSM_SSL_LATCH_TEST_ALONE";

    /// See `pkcs11::rerun_alone`.
    fn in_own_process(name: &str) -> bool {
        crate::pkcs11::rerun_alone(name, ALONE)
    }

    /// Forks a child that runs `f` and exits with its result; returns its
    /// pid and waits for it.
    fn in_child(f: impl FnOnce() -> i32) -> (u32, i32) {
        // SAFETY: fork in a process with only the harness's main thread
        // besides this one; the child runs `f` (no locks) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = f();
            // SAFETY: leave the child without the parent's atexit work.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        (pid as u32, if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 })
    }

    #[test]
    fn a_pin_refused_in_one_process_stops_every_other_until_the_next_generation() {
        if in_own_process("pkcs11::latch::tests::a_pin_refused_in_one_process_stops_every_other_until_the_next_generation") {
            return;
        }
        new_generation();
        assert_eq!(refused(), None);
        // A child is refused; the parent, and a child forked later, see it
        // and do not log in.
        let (first, code) = in_child(|| match login(Duration::from_secs(1), || ((), true)) {
            Ok(()) => 0,
            Err(_) => 1,
        });
        assert_eq!(code, 0, "the first login did not run");
        assert_eq!(refused(), Some(first));
        let mut ran = false;
        assert_eq!(
            login(Duration::from_secs(1), || {
                ran = true;
                ((), false)
            }),
            Err(first)
        );
        assert!(!ran, "logged in after a refusal in another process");
        let (_, code) = in_child(|| match login(Duration::from_secs(1), || ((), false)) {
            Err(pid) if pid == first => 7,
            _ => 0,
        });
        assert_eq!(code, 7, "a child forked later logged in");
        assert!(refusal_text(first).contains(&format!("another process of this server (pid {first})")));
        // A reload starts a new generation: one new try.
        new_generation();
        assert_eq!(refused(), None);
        assert_eq!(login(Duration::from_secs(1), || (5, false)), Ok(5));
        // This generation's PIN is refused; then a child still of the old
        // generation (forked before the reload) is refused too: the newer
        // refusal stays.
        refuse();
        let now = refused().expect("refused in this generation");
        let (_, code) = in_child(|| {
            GENERATION.fetch_sub(1, Ordering::AcqRel);
            refuse();
            0
        });
        assert_eq!(code, 0);
        assert_eq!(refused(), Some(now), "an older generation's refusal replaced this one's");
    }

    #[test]
    fn logins_take_turns_across_processes() {
        if in_own_process("pkcs11::latch::tests::logins_take_turns_across_processes") {
            return;
        }
        new_generation();
        // A child holds the turn for 300 ms and is refused; a login here
        // meanwhile waits for it, then does not run.
        // SAFETY: as in in_child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let _ = login(Duration::from_secs(1), || {
                std::thread::sleep(Duration::from_millis(300));
                ((), true)
            });
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(0) };
        }
        let t = Instant::now();
        while shared().trying.load(Ordering::Acquire) != pid as u32 {
            assert!(t.elapsed() < Duration::from_secs(5), "the child never took its turn");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut ran = false;
        assert_eq!(
            login(Duration::from_secs(5), || {
                ran = true;
                ((), false)
            }),
            Err(pid as u32)
        );
        assert!(!ran);
        assert!(t.elapsed() >= Duration::from_millis(250), "did not wait for the turn");
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        // A turn left by a process that is gone is taken over.
        new_generation();
        shared().trying.store(pid as u32, Ordering::Release);
        let t = Instant::now();
        assert_eq!(login(Duration::from_secs(5), || (1, false)), Ok(1));
        assert!(t.elapsed() < Duration::from_secs(1), "waited for a dead process's turn");
    }
}
