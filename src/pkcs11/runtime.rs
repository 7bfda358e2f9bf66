//! The one [`Hsm`] of the current process, opened on first use.
//!
//! The parent opens it while mod_ssl loads keys and shuts it down before
//! children are forked ([`shutdown`]); each child opens its own. A state
//! found with another process id was inherited through fork and is never
//! used (nor finalized: its sessions belong to the parent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::token::{Binding, Hsm, OpError};

struct Slot {
    hsm: Option<Arc<Hsm>>,
    /// Last failure to open, to fail fast instead of hammering a dead HSM.
    failed: Option<(Instant, String)>,
}

static CURRENT: Mutex<Slot> = Mutex::new(Slot { hsm: None, failed: None });

/// How long a failure to open the library or log in is remembered before
/// the next attempt.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// This process's `Hsm` for `binding`, opening it if needed.
pub fn hsm_for(binding: &Arc<Binding>) -> Result<Arc<Hsm>, OpError> {
    let mut cur = CURRENT.lock();
    let pid = std::process::id();
    if let Some(h) = &cur.hsm {
        if h.pid() != pid {
            // Inherited through fork: the parent's state, unusable here.
            std::mem::forget(cur.hsm.take());
        } else if h.binding().library == binding.library {
            return Ok(h.clone());
        } else if let Some(old) = cur.hsm.take() {
            close(old);
        }
    }
    if let Some((at, msg)) = &cur.failed {
        if at.elapsed() < REOPEN_BACKOFF {
            return Err(OpError::Setup(msg.clone()));
        }
    }
    match Hsm::open(binding.clone()) {
        Ok(h) => {
            let h = Arc::new(h);
            cur.hsm = Some(h.clone());
            cur.failed = None;
            Ok(h)
        }
        Err(msg) => {
            cur.failed = Some((Instant::now(), msg.clone()));
            Err(OpError::Setup(msg))
        }
    }
}

/// Closes this process's state (sessions, login, C_Finalize).
pub fn shutdown() {
    let taken = {
        let mut cur = CURRENT.lock();
        cur.failed = None;
        cur.hsm.take()
    };
    if let Some(h) = taken {
        if h.pid() == std::process::id() {
            close(h);
        } else {
            std::mem::forget(h);
        }
    }
}

fn close(h: Arc<Hsm>) {
    match Arc::try_unwrap(h) {
        Ok(h) => h.close(),
        // An operation still holds it: it finalizes nothing then, the
        // process is going away or the holder drops it soon.
        Err(h) => drop(h),
    }
}
