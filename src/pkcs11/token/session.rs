//! The bounded session pool of one token in one process.

use std::time::Duration;

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use parking_lot::{Condvar, Mutex};

use super::*;

/// A bounded pool of sessions on one token. Callers take a session, run one
/// operation on it and give it back; no lock is held while the token works.
pub(super) struct Pool {
    inner: Mutex<PoolInner>,
    freed: Condvar,
    max: usize,
    wait: Duration,
    /// The token's slot in the shared counters (`pkcs11::stats`).
    counters: Option<usize>,
}

struct PoolInner {
    idle: Vec<Session>,
    open: usize,
    stats: PoolStats,
}

/// Counters of one token's session pool in one process (for the status
/// view and for tests): sessions in use and idle now, sessions opened,
/// failed opens, sessions dropped after an error, waits that timed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub in_use: usize,
    pub idle: usize,
    pub opened: u64,
    pub open_failed: u64,
    pub discarded: u64,
    pub wait_timeouts: u64,
}

impl Pool {
    pub(super) fn new(max: usize, wait: Duration, counters: Option<usize>) -> Pool {
        Pool {
            inner: Mutex::new(PoolInner { idle: Vec::new(), open: 0, stats: PoolStats::default() }),
            freed: Condvar::new(),
            max: max.max(1),
            wait,
            counters,
        }
    }

    fn counted(&self, delta: i64) {
        crate::pkcs11::stats::sessions(self.counters, delta, self.max);
    }

    pub(super) fn take(&self, ctx: &Pkcs11, slot: Slot) -> Result<Session, OpError> {
        let mut inner = self.inner.lock();
        let deadline = std::time::Instant::now() + self.wait;
        loop {
            if let Some(s) = inner.idle.pop() {
                drop(inner);
                self.counted(1);
                return Ok(s);
            }
            if inner.open < self.max {
                inner.open += 1;
                drop(inner);
                let r = ctx.open_ro_session(slot);
                let mut inner = self.inner.lock();
                return match r {
                    Ok(s) => {
                        inner.stats.opened += 1;
                        drop(inner);
                        self.counted(1);
                        Ok(s)
                    }
                    Err(e) => {
                        inner.open -= 1;
                        inner.stats.open_failed += 1;
                        self.freed.notify_one();
                        Err(OpError::Token(e))
                    }
                };
            }
            if self.freed.wait_until(&mut inner, deadline).timed_out() {
                inner.stats.wait_timeouts += 1;
                drop(inner);
                crate::pkcs11::stats::event(self.counters, crate::pkcs11::stats::Event::SessionWaitTimeout);
                return Err(OpError::Busy(self.wait));
            }
        }
    }

    pub(super) fn give_back(&self, s: Session) {
        self.inner.lock().idle.push(s);
        self.freed.notify_one();
        self.counted(-1);
    }

    pub(super) fn discard(&self, s: Session) {
        drop(s);
        let mut inner = self.inner.lock();
        inner.open -= 1;
        inner.stats.discarded += 1;
        self.freed.notify_one();
        drop(inner);
        self.counted(-1);
    }

    pub(super) fn stats(&self) -> PoolStats {
        let inner = self.inner.lock();
        PoolStats { in_use: inner.open - inner.idle.len(), idle: inner.idle.len(), ..inner.stats }
    }
}

/// One token (slot) as this process uses it.
pub(super) struct TokenState {
    pub(super) slot: Slot,
    pub(super) label: String,
    pub(super) serial: String,
    /// Kept open so that the login lasts (PKCS#11 ends the login when the
    /// last session on the slot closes). Never used for operations.
    pub(super) _anchor: Mutex<Session>,
    pub(super) pool: Pool,
}
