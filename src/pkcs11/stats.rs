//! Counters of the token work, shared by every process of one server
//! instance, for the status page, the metrics and the health check.
//!
//! The record lives in an anonymous shared mapping that httpd's parent
//! makes before it forks anything ([`map`], from `post_config_first`), as
//! the refused-PIN latch does: every key service and child, of every
//! configuration generation, writes to and reads the same memory. It is
//! made once per parent process, so the counters grow for the life of the
//! server instance: graceful and full restarts keep them (httpd's parent
//! stays), a stop and start begins at zero.
//!
//! Only atomics, no lock: the process that talks to the token (the key
//! service, or each child with `HSMSSLKeyService Off`) adds to them on the
//! handshake path with a few relaxed read-modify-writes; readers take a
//! [`Snapshot`]. Names (token labels, key URIs) are written once into a
//! slot claimed with a compare-and-swap and read only once it is marked
//! ready.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Tokens and keys one server instance can count; more are served but not
/// counted (and said so once in the log).
pub const MAX_TOKENS: usize = 8;
pub const MAX_KEYS: usize = 64;
/// Distinct PKCS#11 return codes counted per token; others add to `other`.
pub const MAX_CODES: usize = 24;
/// Upper bounds of the latency buckets, in microseconds (then +Inf).
pub const BUCKETS_US: [u64; 14] = [250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000];
const NAME_WORDS: usize = 32; // 256 bytes

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;

/// What the token is doing, as the process that talks to it sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// No operation yet since the instance started.
    Unknown = 0,
    Serving = 1,
    /// Failing: handshakes fail at once until the next attempt.
    BackingOff = 2,
    /// The PIN was refused: nothing is tried until the next reload.
    Down = 3,
}

impl TokenState {
    fn from(v: u32) -> TokenState {
        match v {
            1 => TokenState::Serving,
            2 => TokenState::BackingOff,
            3 => TokenState::Down,
            _ => TokenState::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenState::Unknown => "unknown",
            TokenState::Serving => "serving",
            TokenState::BackingOff => "backing_off",
            TokenState::Down => "down",
        }
    }
}

/// A text of at most `W` × 8 bytes, written once.
#[repr(C)]
struct Text<const W: usize> {
    state: AtomicU32,
    len: AtomicU32,
    words: [AtomicU64; W],
}

type Name = Text<NAME_WORDS>;
/// A return code's name (`CKR_PIN_INCORRECT`, `CKR_VENDOR_DEFINED(0x…)`).
type CodeName = Text<6>;

impl<const W: usize> Text<W> {
    const MAX: usize = W * 8;

    fn write(&self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(Self::MAX)];
        for (i, w) in self.words.iter().enumerate() {
            let mut word = [0u8; 8];
            for (j, x) in word.iter_mut().enumerate() {
                *x = b.get(i * 8 + j).copied().unwrap_or(0);
            }
            w.store(u64::from_le_bytes(word), Relaxed);
        }
        self.len.store(b.len() as u32, Relaxed);
        self.state.store(READY, Release);
    }

    fn read(&self) -> Option<String> {
        if self.state.load(Acquire) != READY {
            return None;
        }
        let len = (self.len.load(Relaxed) as usize).min(Self::MAX);
        let bytes: Vec<u8> = self.words.iter().flat_map(|w| w.load(Relaxed).to_le_bytes()).take(len).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether this slot holds `s` (waiting out a writer).
    fn holds(&self, s: &str) -> bool {
        loop {
            match self.state.load(Acquire) {
                WRITING => std::hint::spin_loop(),
                READY => return self.read().is_some_and(|r| r.as_bytes() == &s.as_bytes()[..s.len().min(Self::MAX)]),
                _ => return false,
            }
        }
    }
}

#[repr(C)]
struct Token {
    name: Name,
    state: AtomicU32,
    state_since_ms: AtomicU64,
    /// 1 + the index in `codes` of the last error (0: none).
    last_error: AtomicU64,
    last_success_ms: AtomicU64,
    last_probe_ms: AtomicU64,
    logins_ok: AtomicU64,
    logins_refused: AtomicU64,
    reinits: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    session_wait_timeouts: AtomicU64,
    sessions_in_use: AtomicU64,
    sessions_limit: AtomicU64,
    probes_ok: AtomicU64,
    probes_failed: AtomicU64,
    /// When a process last took the turn to probe (see [`claim_probe`]).
    probe_claim_ms: AtomicU64,
    /// (return code's name, count).
    codes: [(CodeName, AtomicU64); MAX_CODES],
    other_errors: AtomicU64,
}

#[repr(C)]
struct Key {
    name: Name,
    token: AtomicU32,
    signs: AtomicU64,
    decrypts: AtomicU64,
    errors: AtomicU64,
    last_success_ms: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

#[repr(C)]
struct Region {
    started_ms: AtomicU64,
    service_restarts: AtomicU64,
    reloads: AtomicU64,
    tokens: [Token; MAX_TOKENS],
    keys: [Key; MAX_KEYS],
}

static REGION: OnceLock<&'static Region> = OnceLock::new();

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn region() -> &'static Region {
    REGION.get_or_init(|| {
        let size = std::mem::size_of::<Region>();
        // SAFETY: a fresh shared anonymous mapping, zero-filled: a valid
        // `Region` (atomics and arrays of atomics, all 0). Never unmapped,
        // so the reference lives as long as the process.
        let r: &'static Region = unsafe {
            let p = libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0);
            if p == libc::MAP_FAILED {
                log::warn!("HSM00490: cannot map the shared counters ({}); each process counts on its own", std::io::Error::last_os_error());
                let layout = std::alloc::Layout::new::<Region>();
                let q = std::alloc::alloc_zeroed(layout);
                if q.is_null() {
                    std::alloc::handle_alloc_error(layout);
                }
                &*(q as *const Region)
            } else {
                &*(p as *const Region)
            }
        };
        r.started_ms.store(now_ms(), Relaxed);
        r
    })
}

/// Maps the shared counters (httpd's parent, before its first fork) and
/// records httpd's configuration generation (`AP_SQ_CONFIG_GEN`: 0 for
/// the first startup pass, 1 for the second, one more per restart or
/// graceful restart), kept as the number of restarts since the start.
pub fn map(config_generation: u64) {
    region().reloads.store(config_generation.saturating_sub(1), Relaxed);
}

/// Finds or claims the slot named `name` among `slots`.
fn slot<T, const W: usize>(slots: &'static [T], name_of: impl Fn(&T) -> &Text<W>, name: &str) -> Option<usize> {
    for (i, s) in slots.iter().enumerate() {
        if name_of(s).holds(name) {
            return Some(i);
        }
    }
    for (i, s) in slots.iter().enumerate() {
        let n = name_of(s);
        if n.state.compare_exchange(FREE, WRITING, AcqRel, Acquire).is_ok() {
            n.write(name);
            return Some(i);
        }
        if n.holds(name) {
            return Some(i); // another process claimed it for the same name
        }
    }
    static FULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !FULL.swap(true, Relaxed) {
        log::warn!("HSM00491: the shared counters are full: '{name}' is served but not counted");
    }
    None
}

/// The token slots this process has used (bit i: slot i): what a
/// re-initialization or a backoff of this process's PKCS#11 state is
/// about (see [`all_mine`]).
static MINE: AtomicU64 = AtomicU64::new(0);

/// The counter slot of a token, by its label and serial.
pub fn token_slot(label: &str, serial: &str) -> Option<usize> {
    let t = slot(&region().tokens, |t| &t.name, &format!("{label}\u{1f}{serial}"));
    if let Some(i) = t {
        MINE.fetch_or(1 << i, Relaxed);
    }
    t
}

/// Each token slot this process has used: `runtime`'s state is the
/// process's PKCS#11 library state, which serves all of them.
pub fn all_mine() -> impl Iterator<Item = Option<usize>> {
    let m = MINE.load(Relaxed);
    (0..MAX_TOKENS).filter(move |i| m & (1 << i) != 0).map(Some)
}

/// The counter slot of a key, by its (redacted) URI, under a token slot.
pub fn key_slot(token: Option<usize>, uri: &str) -> Option<usize> {
    let k = slot(&region().keys, |k| &k.name, uri)?;
    if let Some(t) = token {
        region().keys[k].token.store(t as u32 + 1, Relaxed);
    }
    Some(k)
}

fn token(t: Option<usize>) -> Option<&'static Token> {
    t.map(|i| &region().tokens[i])
}

/// What a private-key operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sign,
    Decrypt,
}

/// One private-key operation that reached the token and took `took`; `ok`
/// is whether it succeeded. For a TLS premaster decrypt `ok` is always
/// true (its answer is not judged here, so that counting does not depend
/// on the ciphertext; [`premaster_error`] counts the token's errors later,
/// off the answer's path).
pub fn operation(key: Option<usize>, token_slot: Option<usize>, op: Op, took: Duration, ok: bool) {
    let now = now_ms();
    if let Some(k) = key.map(|i| &region().keys[i]) {
        match op {
            Op::Sign => k.signs.fetch_add(1, Relaxed),
            Op::Decrypt => k.decrypts.fetch_add(1, Relaxed),
        };
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let b = BUCKETS_US.iter().position(|le| us <= *le).unwrap_or(BUCKETS_US.len());
        k.buckets[b].fetch_add(1, Relaxed);
        k.sum_us.fetch_add(us, Relaxed);
        if ok {
            k.last_success_ms.store(now, Relaxed);
        } else {
            k.errors.fetch_add(1, Relaxed);
        }
    }
    if let (Some(t), true) = (token(token_slot), ok) {
        t.last_success_ms.store(now, Relaxed);
        if t.state.load(Relaxed) != TokenState::Serving as u32 {
            state(token_slot, TokenState::Serving);
        }
    }
}

/// A PKCS#11 return code from the token, by name (`CKR_…`).
pub fn error_code(token_slot: Option<usize>, code: &str) {
    let Some(t) = token(token_slot) else { return };
    match slot(&t.codes, |(n, _)| n, code) {
        Some(i) => {
            t.codes[i].1.fetch_add(1, Relaxed);
            t.last_error.store(i as u64 + 1, Relaxed);
        }
        None => {
            t.other_errors.fetch_add(1, Relaxed);
        }
    }
}

/// Counts what `e` says about the token: its return code, or a timeout.
pub fn failure(token_slot: Option<usize>, e: &crate::pkcs11::token::OpError) {
    use crate::pkcs11::token::OpError;
    match e {
        OpError::Token(cryptoki::error::Error::Pkcs11(rv, _)) => error_code(token_slot, &crate::pkcs11::token::rv_name(*rv)),
        OpError::Timeout(_) => event(token_slot, Event::Timeout),
        _ => {}
    }
}

/// A counter of one token's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    LoginOk,
    LoginRefused,
    Reinit,
    Retry,
    Timeout,
    SessionWaitTimeout,
    ProbeOk,
    ProbeFailed,
}

pub fn event(token_slot: Option<usize>, e: Event) {
    let Some(t) = token(token_slot) else { return };
    let c = match e {
        Event::LoginOk => &t.logins_ok,
        Event::LoginRefused => &t.logins_refused,
        Event::Reinit => &t.reinits,
        Event::Retry => &t.retries,
        Event::Timeout => &t.timeouts,
        Event::SessionWaitTimeout => &t.session_wait_timeouts,
        Event::ProbeOk => {
            t.last_probe_ms.store(now_ms(), Relaxed);
            &t.probes_ok
        }
        Event::ProbeFailed => &t.probes_failed,
    };
    c.fetch_add(1, Relaxed);
}

/// The token's state changed (or was confirmed): the time is kept from the
/// first of a run of the same state.
pub fn state(token_slot: Option<usize>, s: TokenState) {
    let Some(t) = token(token_slot) else { return };
    if t.state.swap(s as u32, AcqRel) != s as u32 {
        t.state_since_ms.store(now_ms(), Release);
    }
}

/// Sessions in use now (+1 / -1) and the limit, for a token.
pub fn sessions(token_slot: Option<usize>, delta: i64, limit: usize) {
    let Some(t) = token(token_slot) else { return };
    if delta >= 0 {
        t.sessions_in_use.fetch_add(delta as u64, Relaxed);
    } else {
        let _ = t.sessions_in_use.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(delta.unsigned_abs())));
    }
    t.sessions_limit.store(limit as u64, Relaxed);
}

/// Whether this process should probe the token now: nothing succeeded on
/// it (operation or probe) and nobody took the turn for `interval`. One
/// process of the server wins the turn (compare-and-swap), so children
/// with `HSMSSLKeyService Off` do not all probe.
pub fn claim_probe(token_slot: Option<usize>, interval: Duration) -> bool {
    let Some(t) = token(token_slot) else { return false };
    let now = now_ms();
    let claim = t.probe_claim_ms.load(Acquire);
    let newest = t.last_success_ms.load(Relaxed).max(t.last_probe_ms.load(Relaxed)).max(claim);
    now.saturating_sub(newest) >= interval.as_millis() as u64 && t.probe_claim_ms.compare_exchange(claim, now, AcqRel, Acquire).is_ok()
}

/// httpd's parent started the key service again after it died.
pub fn service_restarted() {
    region().service_restarts.fetch_add(1, Relaxed);
}

/// A token as the snapshot shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenView {
    pub label: String,
    pub serial: String,
    pub state: &'static str,
    pub state_since_ms: u64,
    pub last_error: Option<String>,
    pub last_success_ms: u64,
    pub last_probe_ms: u64,
    pub logins_ok: u64,
    pub logins_refused: u64,
    pub reinits: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub session_wait_timeouts: u64,
    pub sessions_in_use: u64,
    pub sessions_limit: u64,
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// (return code's name, count), by name.
    pub errors: Vec<(String, u64)>,
    pub other_errors: u64,
}

/// A key as the snapshot shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyView {
    pub uri: String,
    /// Index into [`Snapshot::tokens`].
    pub token: Option<usize>,
    pub signs: u64,
    pub decrypts: u64,
    pub errors: u64,
    pub last_success_ms: u64,
    /// Counts per bucket of [`BUCKETS_US`], the last one +Inf (not
    /// cumulative).
    pub buckets: Vec<u64>,
    pub sum_us: u64,
}

impl KeyView {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The latency at quantile `q` (0..1), in µs: the upper bound of the
    /// bucket it falls in (None without operations; u64::MAX in +Inf).
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        None
    }
}

/// Everything at one moment (each counter read once; counters may move
/// between two reads, never backwards).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub now_ms: u64,
    pub started_ms: u64,
    pub service_restarts: u64,
    pub reloads: u64,
    pub tokens: Vec<TokenView>,
    pub keys: Vec<KeyView>,
}

pub fn snapshot() -> Snapshot {
    let r = region();
    let mut index = [None; MAX_TOKENS];
    let mut tokens = Vec::new();
    for (i, t) in r.tokens.iter().enumerate() {
        let Some(name) = t.name.read() else { continue };
        let (label, serial) = name.split_once('\u{1f}').unwrap_or((&name, ""));
        index[i] = Some(tokens.len());
        let mut errors: Vec<(String, u64)> = t.codes.iter().filter_map(|(c, n)| Some((c.read()?, n.load(Relaxed)))).filter(|(_, n)| *n > 0).collect();
        errors.sort();
        tokens.push(TokenView {
            label: label.to_string(),
            serial: serial.to_string(),
            state: TokenState::from(t.state.load(Acquire)).name(),
            state_since_ms: t.state_since_ms.load(Acquire),
            last_error: (t.last_error.load(Relaxed) as usize).checked_sub(1).and_then(|i| t.codes.get(i)?.0.read()),
            last_success_ms: t.last_success_ms.load(Relaxed),
            last_probe_ms: t.last_probe_ms.load(Relaxed),
            logins_ok: t.logins_ok.load(Relaxed),
            logins_refused: t.logins_refused.load(Relaxed),
            reinits: t.reinits.load(Relaxed),
            retries: t.retries.load(Relaxed),
            timeouts: t.timeouts.load(Relaxed),
            session_wait_timeouts: t.session_wait_timeouts.load(Relaxed),
            sessions_in_use: t.sessions_in_use.load(Relaxed),
            sessions_limit: t.sessions_limit.load(Relaxed),
            probes_ok: t.probes_ok.load(Relaxed),
            probes_failed: t.probes_failed.load(Relaxed),
            errors,
            other_errors: t.other_errors.load(Relaxed),
        });
    }
    let keys = r
        .keys
        .iter()
        .filter_map(|k| {
            let uri = k.name.read()?;
            let token = (k.token.load(Relaxed) as usize).checked_sub(1).and_then(|t| index.get(t).copied().flatten());
            Some(KeyView {
                uri,
                token,
                signs: k.signs.load(Relaxed),
                decrypts: k.decrypts.load(Relaxed),
                errors: k.errors.load(Relaxed),
                last_success_ms: k.last_success_ms.load(Relaxed),
                buckets: k.buckets.iter().map(|b| b.load(Relaxed)).collect(),
                sum_us: k.sum_us.load(Relaxed),
            })
        })
        .collect();
    Snapshot {
        now_ms: now_ms(),
        started_ms: r.started_ms.load(Relaxed),
        service_restarts: r.service_restarts.load(Relaxed),
        reloads: r.reloads.load(Relaxed),
        tokens,
        keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_names_are_kept_per_slot() {
        let t = token_slot("stats-test-token", "0001");
        assert_eq!(token_slot("stats-test-token", "0001"), t, "the same token gets the same slot");
        let k = key_slot(t, "pkcs11:object=stats-test-key");
        assert_eq!(key_slot(t, "pkcs11:object=stats-test-key"), k);
        for us in [100, 300, 3_000, 7_000_000] {
            operation(k, t, Op::Sign, Duration::from_micros(us), true);
        }
        operation(k, t, Op::Decrypt, Duration::from_micros(800), true);
        error_code(t, "CKR_DEVICE_ERROR");
        error_code(t, "CKR_DEVICE_ERROR");
        error_code(t, "CKR_PIN_INCORRECT");
        event(t, Event::LoginOk);
        state(t, TokenState::Serving);
        sessions(t, 1, 8);
        sessions(t, 1, 8);
        sessions(t, -1, 8);
        let s = snapshot();
        let tv = s.tokens.iter().find(|v| v.label == "stats-test-token").unwrap();
        assert_eq!((tv.serial.as_str(), tv.state, tv.logins_ok), ("0001", "serving", 1));
        assert_eq!(tv.errors, vec![("CKR_DEVICE_ERROR".to_string(), 2), ("CKR_PIN_INCORRECT".to_string(), 1)]);
        assert_eq!(tv.last_error.as_deref(), Some("CKR_PIN_INCORRECT"));
        assert_eq!((tv.sessions_in_use, tv.sessions_limit), (1, 8));
        let kv = s.keys.iter().find(|v| v.uri == "pkcs11:object=stats-test-key").unwrap();
        assert_eq!((kv.signs, kv.decrypts, kv.errors, kv.count()), (4, 1, 0, 5));
        assert_eq!(kv.sum_us, 100 + 300 + 3_000 + 7_000_000 + 800);
        assert_eq!(s.tokens[kv.token.unwrap()].label, "stats-test-token");
        // 100 and 300 in the first two buckets, 800 in <=1 ms, 3 ms in <=5 ms, 7 s in +Inf.
        assert_eq!(kv.buckets[0] + kv.buckets[1] + kv.buckets[2], 3);
        assert_eq!(*kv.buckets.last().unwrap(), 1);
        assert_eq!(kv.quantile_us(0.5), Some(1_000));
        assert_eq!(kv.quantile_us(0.99), Some(u64::MAX));
    }
}
