//! Keeps the health answer true without traffic: a thread in the process
//! that talks to the token probes each token in use when nothing has
//! succeeded on it for `HSMSSLHealthProbeInterval` (reading a pooled
//! session's info and a key attribute: no private-key operation, nothing
//! from a client). Its result goes to the shared counters (`stats`) that
//! `hsm-ssl-health` reads; a failing probe also goes through the runtime's
//! usual fault handling (re-initialization, backoff).

use std::sync::Arc;
use std::time::Duration;

use super::runtime;
use super::stats::{self, Event};
use super::token::KeyRef;

/// Starts the probe thread of this process; `keys` gives the keys in use
/// at each round (the first key of each token is probed).
pub fn start(interval: Duration, keys: impl Fn() -> Vec<Arc<KeyRef>> + Send + 'static) -> std::io::Result<()> {
    let tick = (interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    std::thread::Builder::new().name("hsm_ssl-health".into()).spawn(move || loop {
        std::thread::sleep(tick);
        let mut seen = Vec::new();
        for key in keys() {
            let (_, token) = key.stats_slots();
            if token.is_none() || seen.contains(&token) {
                continue;
            }
            seen.push(token);
            if !stats::claim_probe(token, interval) {
                continue;
            }
            match runtime::with_hsm(&key.binding, |hsm| hsm.probe(&key)) {
                Ok(()) => {
                    stats::event(token, Event::ProbeOk);
                    stats::state(token, stats::TokenState::Serving);
                }
                Err(e) => {
                    stats::failure(token, &e);
                    stats::event(token, Event::ProbeFailed);
                    log::warn!("HSM00478: token health probe failed: {e}");
                }
            }
        }
    })?;
    Ok(())
}
