//! One process's connection to the PKCS#11 library: library loading,
//! token selection, the single login per token, the session pool, key
//! lookup and the private-key operations.
//!
//! An [`Hsm`] belongs to exactly one process. The Apache parent opens one
//! while it loads keys for mod_ssl and finalizes it before any child is
//! forked; every child opens its own (with OS locking) and logs in again with
//! the PIN it inherited. PKCS#11 state is never carried across fork.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use parking_lot::{Condvar, Mutex};

use super::secret::Secret;
use super::uri::{hex, KeyUri, TokenSelector};

/// What the configuration says about the HSM, shared by every key of one
/// configuration generation.
#[derive(Debug)]
pub struct Binding {
    pub library: PathBuf,
    pub pin: Arc<Secret>,
    pub default_token: TokenSelector,
    /// Upper bound of open sessions per token in one process.
    pub max_sessions: usize,
    /// How long a caller waits for a free session before giving up.
    pub session_wait: Duration,
    /// Bound of one PKCS#11 step at startup and configtest.
    pub op_timeout: Duration,
    /// HSMSSLDirectCalls: in a child, token calls run on the calling
    /// thread, not bounded by `op_timeout` (no helper thread, no hop).
    pub direct_calls: bool,
}

impl Binding {
    /// Runs one token step of a child: on a helper thread, waited for at
    /// most `op_timeout` (None if it did not finish in time; it then ends
    /// on its own); with HSMSSLDirectCalls on the calling thread, as long
    /// as it takes.
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if self.direct_calls {
            Some(f())
        } else {
            super::executor::run(self.op_timeout, f)
        }
    }

    /// `call` for a step that returns an `OpError`: not finishing in time
    /// is `OpError::Timeout`.
    pub fn call_op<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T, OpError> + Send + 'static) -> Result<T, OpError> {
        self.call(f).unwrap_or(Err(OpError::Timeout(self.op_timeout)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// `params`: CKA_EC_PARAMS (DER of the curve OID); `point`: the
    /// uncompressed point (04 || X || Y).
    Ec {
        params: Vec<u8>,
        point: Vec<u8>,
    },
}

/// What a private key's attributes say about whether it could ever leave
/// the token. None: the token did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// CKA_SENSITIVE: false means the private value can be read in plaintext.
    pub sensitive: Option<bool>,
    /// CKA_EXTRACTABLE: true means it can be wrapped out of the token.
    pub extractable: Option<bool>,
    /// CKA_ALWAYS_SENSITIVE: false means it was readable at some time.
    pub always_sensitive: Option<bool>,
    /// CKA_NEVER_EXTRACTABLE: false means it was extractable (or imported).
    pub never_extractable: Option<bool>,
}

/// A configured key, resolved on the token by the parent process. Children
/// find the same object again by token serial, CKA_ID and CKA_LABEL.
#[derive(Debug)]
pub struct KeyRef {
    pub uri_text: String,
    pub token_serial: String,
    pub token_label: String,
    pub id: Vec<u8>,
    pub label: Option<String>,
    pub public: PublicKey,
    /// CKA_SIGN and CKA_DECRYPT of the private key.
    pub can_sign: bool,
    pub can_decrypt: bool,
    pub protection: Protection,
    pub binding: Arc<Binding>,
    /// How TLS 1.2 RSA key exchange decrypts with this key: chosen once in
    /// the parent by [`Hsm::choose_premaster_mech`] (children inherit it
    /// through fork); unset means CKM_RSA_PKCS.
    pub premaster: std::sync::OnceLock<PremasterMech>,
    /// Token serial, CKA_ID, CKA_LABEL: the key of the per-process handle
    /// cache, built once so a handshake's lookup copies nothing.
    ident: KeyIdent,
}

/// How a child finds a key again: token serial, CKA_ID, CKA_LABEL.
type KeyIdent = (String, Vec<u8>, Option<String>);

/// Everything the token said about a configured key: a [`KeyRef`] without
/// its binding. The key service sends it to httpd's parent, which builds
/// the key mod_ssl gets from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
    pub uri_text: String,
    pub token_serial: String,
    pub token_label: String,
    pub id: Vec<u8>,
    pub label: Option<String>,
    pub public: PublicKey,
    pub can_sign: bool,
    pub can_decrypt: bool,
    pub protection: Protection,
    pub premaster: Option<PremasterMech>,
}

impl KeyRef {
    /// The key these facts describe, under `binding`.
    pub fn from_facts(f: KeyFacts, binding: Arc<Binding>) -> KeyRef {
        let premaster = std::sync::OnceLock::new();
        if let Some(m) = f.premaster {
            let _ = premaster.set(m);
        }
        KeyRef {
            ident: (f.token_serial.clone(), f.id.clone(), f.label.clone()),
            uri_text: f.uri_text,
            token_serial: f.token_serial,
            token_label: f.token_label,
            id: f.id,
            label: f.label,
            public: f.public,
            can_sign: f.can_sign,
            can_decrypt: f.can_decrypt,
            protection: f.protection,
            binding,
            premaster,
        }
    }

    /// What [`KeyRef::from_facts`] builds this key from.
    pub fn facts(&self) -> KeyFacts {
        KeyFacts {
            uri_text: self.uri_text.clone(),
            token_serial: self.token_serial.clone(),
            token_label: self.token_label.clone(),
            id: self.id.clone(),
            label: self.label.clone(),
            public: self.public.clone(),
            can_sign: self.can_sign,
            can_decrypt: self.can_decrypt,
            protection: self.protection,
            premaster: self.premaster.get().copied(),
        }
    }

    /// A key that was never on a token, for tests of what may be asked of it.
    #[cfg(test)]
    pub fn for_test(public: PublicKey, can_sign: bool, can_decrypt: bool) -> KeyRef {
        let binding = Arc::new(Binding {
            library: PathBuf::from("/nonexistent"),
            pin: Arc::new(super::secret::Secret::new(b"test".to_vec())),
            default_token: TokenSelector::default(),
            max_sessions: 1,
            session_wait: Duration::from_secs(1),
            op_timeout: Duration::from_secs(1),
            direct_calls: false,
        });
        KeyRef {
            ident: (String::new(), vec![1], None),
            uri_text: "pkcs11:object=test".into(),
            token_serial: String::new(),
            token_label: String::new(),
            id: vec![1],
            label: None,
            public,
            can_sign,
            can_decrypt,
            protection: Protection::default(),
            binding,
            premaster: std::sync::OnceLock::new(),
        }
    }

    /// The mechanism that decrypts this key's TLS premaster secrets.
    pub fn premaster_mech(&self) -> PremasterMech {
        self.premaster.get().copied().unwrap_or(PremasterMech::Pkcs1)
    }
}

/// How the premaster secret of TLS 1.2 RSA key exchange is decrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PremasterMech {
    /// CKM_RSA_X_509: the token returns the whole PKCS#1 block and the
    /// module checks its padding in constant time, so neither the token's
    /// padding check nor its timing is on the network path.
    Raw,
    /// CKM_RSA_PKCS: the token checks the padding; only for tokens that
    /// offer no raw RSA decryption.
    Pkcs1,
}

impl PremasterMech {
    pub fn mech(self) -> Mech {
        match self {
            PremasterMech::Raw => Mech::RsaX509,
            PremasterMech::Pkcs1 => Mech::RsaPkcs,
        }
    }

    /// For the startup log line.
    pub fn describe(self) -> &'static str {
        match self {
            PremasterMech::Raw => "raw RSA (CKM_RSA_X_509), padding checked in constant time in the module",
            PremasterMech::Pkcs1 => "the token offers no usable CKM_RSA_X_509 for decryption: the token checks the padding (CKM_RSA_PKCS)",
        }
    }
}

/// What the token answered to one premaster C_Decrypt: its output, or its
/// error (also a timeout of the call itself), not yet classified.
pub type TokenAnswer = Result<Vec<u8>, OpError>;

/// An error of a private-key operation, classified by what can be done
/// about it.
#[derive(Debug)]
pub enum OpError {
    /// The token answered with an error.
    Token(CkError),
    /// No session became free in time.
    Busy(Duration),
    /// The token did not answer within HSMSSLOperationTimeout; the call
    /// goes on in a helper thread and its session returns when it ends.
    Timeout(Duration),
    /// The token or key could not be reached (login, lookup, library).
    Setup(String),
    /// The token refused the PIN (wrong, locked, expired, or one more
    /// failure would lock it). Never retried.
    Denied(String),
    /// The key service reports an error of the token (its text) or refused
    /// the request; the service, not this process, handles the token.
    Service(String),
}

impl OpError {
    /// Whether a fresh PKCS#11 state (C_Finalize, C_Initialize, login,
    /// key lookup) may cure this error: the token went away, was replaced,
    /// lost our login or our handles.
    pub fn needs_reinit(&self) -> bool {
        match self {
            OpError::Setup(_) => true,
            OpError::Token(CkError::Pkcs11(rv, _)) => matches!(
                rv,
                RvError::DeviceError
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::UserNotLoggedIn
                    | RvError::CryptokiNotInitialized
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid
                    | RvError::SessionHandleInvalid
                    | RvError::SessionClosed
            ),
            _ => false,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Token(e) => write!(f, "{}", ck_error_text(e)),
            OpError::Timeout(d) => write!(f, "the token did not answer within {} ms (HSMSSLOperationTimeout); is the HSM reachable?", d.as_millis()),
            OpError::Busy(d) => write!(
                f,
                "no PKCS#11 session became free within {} ms (all sessions busy; raise HSMSSLMaxSessions or add HSM capacity)",
                d.as_millis()
            ),
            OpError::Setup(s) | OpError::Denied(s) | OpError::Service(s) => f.write_str(s),
        }
    }
}

/// `CKR_…` name of a cryptoki error, short enough for one log line.
pub fn ck_error_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, func) => format!("{} returned {}", func, rv_name(*rv)),
        CkError::LibraryLoading(le) => format!("cannot load the PKCS#11 library: {le}"),
        CkError::MissingSymbol(s) => format!("the library has no {s}: it is not a PKCS#11 library"),
        CkError::InvalidValue => "the token answered with a length or value out of range (a token or library bug)".into(),
        other => other.to_string(),
    }
}

fn rv_name(rv: RvError) -> String {
    // "PinIncorrect" -> "CKR_PIN_INCORRECT"
    let dbg = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in dbg.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        if c == '(' {
            break;
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Errors after which the session is dropped and the operation retried once
/// on a fresh session.
fn is_session_error(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _))
}

/// The mechanisms TLS needs, in a form that can cross to a helper thread
/// (cryptoki's `Mechanism` holds raw pointers).
#[derive(Clone, Copy, Debug)]
pub enum Mech {
    /// CKM_RSA_PKCS (PKCS#1 v1.5 sign of a DigestInfo, or decrypt).
    RsaPkcs,
    /// CKM_RSA_X_509: raw RSA (decrypt of a TLS premaster block).
    RsaX509,
    /// CKM_RSA_PKCS_PSS over a digest.
    RsaPss { hash: cryptoki::mechanism::MechanismType, mgf: cryptoki::mechanism::rsa::PkcsMgfType, salt: u64 },
    /// CKM_ECDSA over a digest.
    Ecdsa,
}

impl Mech {
    fn to_ck(self) -> Mechanism<'static> {
        match self {
            Mech::RsaPkcs => Mechanism::RsaPkcs,
            Mech::RsaX509 => Mechanism::RsaX509,
            Mech::RsaPss { hash, mgf, salt } => Mechanism::RsaPkcsPss(cryptoki::mechanism::rsa::PkcsPssParams {
                hash_alg: hash,
                mgf,
                s_len: cryptoki::types::Ulong::from(salt as std::ffi::c_ulong),
            }),
            Mech::Ecdsa => Mechanism::Ecdsa,
        }
    }
}

/// A bounded pool of sessions on one token. Callers take a session, run one
/// operation on it and give it back; no lock is held while the token works.
struct Pool {
    inner: Mutex<PoolInner>,
    freed: Condvar,
    max: usize,
    wait: Duration,
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
    fn new(max: usize, wait: Duration) -> Pool {
        Pool { inner: Mutex::new(PoolInner { idle: Vec::new(), open: 0, stats: PoolStats::default() }), freed: Condvar::new(), max: max.max(1), wait }
    }

    fn take(&self, ctx: &Pkcs11, slot: Slot) -> Result<Session, OpError> {
        let mut inner = self.inner.lock();
        let deadline = std::time::Instant::now() + self.wait;
        loop {
            if let Some(s) = inner.idle.pop() {
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
                return Err(OpError::Busy(self.wait));
            }
        }
    }

    fn give_back(&self, s: Session) {
        self.inner.lock().idle.push(s);
        self.freed.notify_one();
    }

    fn discard(&self, s: Session) {
        drop(s);
        let mut inner = self.inner.lock();
        inner.open -= 1;
        inner.stats.discarded += 1;
        self.freed.notify_one();
    }

    fn stats(&self) -> PoolStats {
        let inner = self.inner.lock();
        PoolStats { in_use: inner.open - inner.idle.len(), idle: inner.idle.len(), ..inner.stats }
    }
}

/// One token (slot) as this process uses it.
struct TokenState {
    slot: Slot,
    label: String,
    serial: String,
    /// Kept open so that the login lasts (PKCS#11 ends the login when the
    /// last session on the slot closes). Never used for operations.
    _anchor: Mutex<Session>,
    pool: Pool,
}

/// The library whose C_Initialize an abandoned state owned: the next state
/// opened on it finds it still initialized and finalizes it later in its
/// place.
static INIT_LEFT_BEHIND: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Clears INIT_LEFT_BEHIND if it names `lib`; whether it did.
fn take_left_behind(lib: &std::path::Path) -> bool {
    let mut left = INIT_LEFT_BEHIND.lock();
    let ours = left.as_deref() == Some(lib);
    if ours {
        *left = None;
    }
    ours
}

/// A process's PKCS#11 state. See the module docs.
pub struct Hsm {
    ctx: Pkcs11,
    /// Sign, decrypt and attribute reads with buffers the token does not
    /// size (see direct.rs).
    direct: super::direct::Direct,
    binding: Arc<Binding>,
    pid: u32,
    /// Whether we called C_Initialize (and so must call C_Finalize).
    owns_init: AtomicBool,
    /// Given up on while calls still ran on it (see `abandon`).
    abandoned: AtomicBool,
    tokens: Mutex<HashMap<u64, Arc<TokenState>>>,
    handles: Mutex<HashMap<KeyIdent, (Arc<TokenState>, ObjectHandle)>>,
}

impl Drop for Hsm {
    /// Sessions first (they log out when the last one closes), then
    /// C_Finalize, in the process that initialized the library only.
    fn drop(&mut self) {
        if self.abandoned.load(Ordering::Acquire) {
            // A newer state may have re-initialized the library since: the
            // session handles kept here may now name its sessions, so they
            // are forgotten, never closed.
            std::mem::forget(std::mem::take(&mut *self.handles.lock()));
            std::mem::forget(std::mem::take(&mut *self.tokens.lock()));
            return;
        }
        self.handles.lock().clear();
        self.tokens.lock().clear();
        if self.owns_init.load(Ordering::Acquire) && self.pid == std::process::id() {
            if let Err(e) = self.ctx.clone().finalize() {
                log::debug!("C_Finalize: {}", ck_error_text(&e));
            }
        }
    }
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hsm({}, pid {})", self.binding.library.display(), self.pid)
    }
}

impl Hsm {
    /// Loads the library and calls C_Initialize with OS locking.
    pub fn open(binding: Arc<Binding>) -> Result<Hsm, String> {
        let lib = &binding.library;
        let shown = lib.display();
        match std::fs::metadata(lib) {
            Err(e) => return Err(format!("HSMSSLLibrary {shown}: {e}; install the vendor's PKCS#11 library or fix the path")),
            Ok(m) if !m.is_file() => return Err(format!("HSMSSLLibrary {shown}: not a regular file")),
            Ok(_) => {}
        }
        let ctx = Pkcs11::new(lib).map_err(|e| match e {
            CkError::LibraryLoading(le) => format!(
                "HSMSSLLibrary {shown}: cannot load it as a shared library ({le}); \
                 point HSMSSLLibrary at the vendor's PKCS#11 .so"
            ),
            CkError::MissingSymbol(s) => format!("HSMSSLLibrary {shown}: the library exports no {s}, so it is not a PKCS#11 library"),
            other => format!("HSMSSLLibrary {shown}: {}", ck_error_text(&other)),
        })?;
        // The only way the module signs, decrypts and reads key attributes
        // (never cryptoki's, which size buffers as the token says: see
        // direct.rs). It is the library cryptoki just loaded, by the same
        // path, so its function list is always there; if not, something
        // is badly wrong and nothing is initialized yet.
        let direct = super::direct::Direct::open(lib)
            .map_err(|e| format!("HSMSSLLibrary {shown}: cannot take the library's function list ({e}); is it a PKCS#11 library?"))?;
        let owns_init = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {
                take_left_behind(lib);
                true
            }
            // Still initialized by an abandoned state of ours: this one
            // finalizes it in its place. Otherwise someone else in the
            // process initialized it and finalizes it.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => take_left_behind(lib),
            Err(e) => return Err(format!("HSMSSLLibrary {shown}: {}", ck_error_text(&e))),
        };
        log::debug!("PKCS#11 library {shown} initialized in pid {}", std::process::id());
        Ok(Hsm {
            ctx,
            direct,
            binding,
            pid: std::process::id(),
            owns_init: AtomicBool::new(owns_init),
            abandoned: AtomicBool::new(false),
            tokens: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        })
    }

    pub fn binding(&self) -> &Arc<Binding> {
        &self.binding
    }

    /// The process this state belongs to.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Gives this state up while calls still run on it (a hung call that
    /// cannot be cancelled): when its last user lets go, it neither closes
    /// its sessions nor calls C_Finalize, which would pull the library out
    /// from under the state opened after it. The next state to open takes
    /// over the C_Finalize this one owed.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        if self.owns_init.swap(false, Ordering::AcqRel) {
            *INIT_LEFT_BEHIND.lock() = Some(self.binding.library.clone());
        }
    }

    /// Logs out, closes every session and calls C_Finalize (see `Drop`).
    pub fn close(self) {
        drop(self)
    }

    fn find_slot(&self, sel: &TokenSelector) -> Result<(Slot, cryptoki::slot::TokenInfo), String> {
        find_token(&self.ctx, sel, &self.binding.library)
    }

    /// The token for `sel`, logged in. The login happens once per token and
    /// process; a wrong or locked PIN is never retried.
    fn token(&self, sel: &TokenSelector) -> Result<Arc<TokenState>, OpError> {
        let sel = if sel.is_empty() { &self.binding.default_token } else { sel };
        let (slot, info) = self.find_slot(sel).map_err(OpError::Setup)?;
        let mut tokens = self.tokens.lock();
        if let Some(t) = tokens.get(&slot.id()) {
            return Ok(t.clone());
        }
        let label = info.label().trim().to_string();
        let serial = info.serial_number().trim().to_string();
        if info.user_pin_locked() {
            return Err(OpError::Denied(format!(
                "token '{label}': the user PIN is locked; not trying to log in (an administrator must unlock the crypto user)"
            )));
        }
        if info.user_pin_final_try() {
            return Err(OpError::Denied(format!(
                "token '{label}': the next wrong PIN would lock the user; not trying to log in \
                 (check HSMSSLPin, then log in once by hand to reset the counter)"
            )));
        }
        let anchor =
            self.ctx.open_ro_session(slot).map_err(|e| OpError::Setup(format!("token '{label}': cannot open a session: {}", ck_error_text(&e))))?;
        let pin = self.binding.pin.to_raw_auth_pin();
        // One login at a time across the server's processes, and none once
        // the token refused this generation's PIN in any of them.
        let attempt = super::latch::login(self.binding.op_timeout / 2, || {
            let r = anchor.login_with_raw(UserType::User, &pin);
            // A PIN of the wrong form or length is refused like a wrong
            // one: retrying it (it would be, as a Setup error) could count
            // towards the token's lockout on some tokens.
            let refused = matches!(
                r,
                Err(CkError::Pkcs11(
                    RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired | RvError::PinInvalid | RvError::PinLenRange,
                    _
                ))
            );
            (r, refused)
        })
        .map_err(|pid| OpError::Denied(format!("token '{label}': {}", super::latch::refusal_text(pid))))?;
        match attempt {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(OpError::Denied(format!(
                    "token '{label}': login failed: wrong PIN (CKR_PIN_INCORRECT); tried once and not retried, \
                     so the crypto user is not locked out; fix what HSMSSLPin gives"
                )))
            }
            Err(CkError::Pkcs11(rv @ (RvError::PinInvalid | RvError::PinLenRange), _)) => {
                return Err(OpError::Denied(format!(
                    "token '{label}': login failed: the token refuses the PIN's form ({}); tried once and not retried; \
                     fix what HSMSSLPin gives (AWS CloudHSM: <crypto-user>:<password>)",
                    rv_name(rv)
                )))
            }
            Err(CkError::Pkcs11(rv @ (RvError::PinLocked | RvError::PinExpired), _)) => {
                return Err(OpError::Denied(format!(
                    "token '{label}': login refused ({}); an administrator must unlock or reset the user PIN",
                    rv_name(rv)
                )))
            }
            Err(e) => return Err(OpError::Setup(format!("token '{label}': login failed: {}", ck_error_text(&e)))),
        }
        log::debug!("logged in to token '{label}' (serial {serial}) in pid {}", self.pid);
        let t = Arc::new(TokenState {
            slot,
            label,
            serial,
            _anchor: Mutex::new(anchor),
            pool: Pool::new(self.binding.max_sessions, self.binding.session_wait),
        });
        tokens.insert(slot.id(), t.clone());
        Ok(t)
    }

    /// Finds the private key a URI names and reads its public half. Used by
    /// the parent process while mod_ssl loads keys.
    pub fn resolve(&self, uri_text: &str, uri: &KeyUri) -> Result<KeyRef, OpError> {
        let tok = self.token(&uri.token)?;
        let session = tok.pool.take(&self.ctx, tok.slot)?;
        let result = self.resolve_on(&tok, &session, uri_text, uri);
        tok.pool.give_back(session);
        result.map_err(OpError::Setup)
    }

    fn resolve_on(&self, tok: &TokenState, s: &Session, uri_text: &str, uri: &KeyUri) -> Result<KeyRef, String> {
        let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(l) = &uri.object {
            tmpl.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            tmpl.push(Attribute::Id(id.clone()));
        }
        let found = s.find_objects(&tmpl).map_err(|e| format!("searching token '{}': {}", tok.label, ck_error_text(&e)))?;
        let what = match (&uri.object, &uri.id) {
            (Some(l), Some(id)) => format!("label '{l}' and id {}", hex(id)),
            (Some(l), None) => format!("label '{l}'"),
            (None, Some(id)) => format!("id {}", hex(id)),
            (None, None) => "that name".to_string(),
        };
        let handle = match found.len() {
            1 => found[0],
            0 => {
                let others = self.describe_objects(s, ObjectClass::PRIVATE_KEY);
                let other_kinds = self.other_classes(s, uri);
                return Err(format!(
                    "token '{}' has no private key with {what}{other_kinds}; private keys on the token: {}",
                    tok.label,
                    if others.is_empty() { "none".to_string() } else { others.join(", ") }
                ));
            }
            n => {
                let ids: Vec<String> = found
                    .iter()
                    .map(|h| match self.attribute(s, *h, AttributeType::Id) {
                        Ok(Some(id)) => hex(&id),
                        _ => "?".into(),
                    })
                    .collect();
                return Err(format!(
                    "token '{}' has {n} private keys with {what} (ids {}); add id=%.. to the URI to pick one",
                    tok.label,
                    ids.join(", ")
                ));
            }
        };
        let key_type = self.key_type(s, handle)?;
        let id = self.attribute(s, handle, AttributeType::Id)?.unwrap_or_default();
        let label = self.attribute(s, handle, AttributeType::Label)?.map(|v| String::from_utf8_lossy(&v).into_owned());
        let can_sign = self.flag(s, handle, AttributeType::Sign)?;
        let can_decrypt = self.flag(s, handle, AttributeType::Decrypt)?;
        let public = match key_type {
            Some(KeyType::RSA) => {
                let public = self.rsa_public(s, handle)?;
                if matches!(&public, PublicKey::Rsa { n, e } if n.is_empty() || e.is_empty()) {
                    return Err("the token does not reveal the RSA key's modulus and exponent".into());
                }
                check_rsa_size(&public)?;
                public
            }
            Some(KeyType::EC) => {
                let params =
                    self.attribute(s, handle, AttributeType::EcParams)?.ok_or("the token does not reveal the EC key's curve (CKA_EC_PARAMS)")?;
                let point = self.ec_point(s, handle, &id, label.as_deref())?.ok_or_else(|| {
                    format!(
                        "no public key object with the same CKA_ID ({}) as the EC private key; \
                         store the public key on the token beside the private key",
                        hex(&id)
                    )
                })?;
                PublicKey::Ec { params, point }
            }
            Some(other) => return Err(format!("the key is of type {other}, which mod_hsm_ssl does not serve; {SUPPORTED}")),
            None => return Err("the token does not say what type the key is".into()),
        };
        Ok(KeyRef {
            ident: (tok.serial.clone(), id.clone(), label.clone()),
            uri_text: uri_text.to_string(),
            token_serial: tok.serial.clone(),
            token_label: tok.label.clone(),
            id,
            label,
            public,
            can_sign,
            can_decrypt,
            protection: self.protection(s, handle).map_err(|e| format!("reading the key's protection attributes: {e}"))?,
            binding: self.binding.clone(),
            premaster: std::sync::OnceLock::new(),
        })
    }

    /// The EC point of the private key, or of the EC public key object with
    /// its CKA_ID (or label); None if there is none. An error only when the
    /// token answers with something unusable (see `attribute`).
    fn ec_point(&self, s: &Session, priv_handle: ObjectHandle, id: &[u8], label: Option<&str>) -> Result<Option<Vec<u8>>, String> {
        // Some tokens keep CKA_EC_POINT on the private key too.
        let from_attrs = |h: ObjectHandle| -> Result<Option<Vec<u8>>, String> {
            Ok(self.attribute(s, h, AttributeType::EcPoint)?.and_then(|p| unwrap_octet_string(&p)))
        };
        if let Some(p) = from_attrs(priv_handle)? {
            return Ok(Some(p));
        }
        let mut tmpl = vec![Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::KeyType(KeyType::EC)];
        if !id.is_empty() {
            tmpl.push(Attribute::Id(id.to_vec()));
        } else if let Some(label) = label {
            tmpl.push(Attribute::Label(label.as_bytes().to_vec()));
        } else {
            return Ok(None);
        }
        match s.find_objects(&tmpl).unwrap_or_default().as_slice() {
            [h] => from_attrs(*h),
            _ => Ok(None),
        }
    }

    fn describe_objects(&self, s: &Session, class: ObjectClass) -> Vec<String> {
        let text = |h, ty| self.attribute(s, h, ty).ok().flatten().unwrap_or_default();
        s.find_objects(&[Attribute::Class(class)])
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                let l = String::from_utf8_lossy(&text(h, AttributeType::Label)).into_owned();
                format!("'{l}' (id {})", hex(&text(h, AttributeType::Id)))
            })
            .collect()
    }

    /// Attribute `ty` of object `h` read with a bounded buffer (see
    /// direct.rs): every attribute the module reads goes through here, so
    /// a token claiming a huge value costs an error, not the memory. (The
    /// key tool's own commands still read with cryptoki.)
    fn attribute(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<Option<Vec<u8>>, String> {
        Ok(self.direct.attribute(s, h, ty)?)
    }

    /// A CK_BBOOL attribute; false if the object has none.
    fn flag(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<bool, String> {
        Ok(self.flag_if_known(s, h, ty)?.unwrap_or(false))
    }

    /// A CK_BBOOL attribute; None if the object has none.
    fn flag_if_known(&self, s: &Session, h: ObjectHandle, ty: AttributeType) -> Result<Option<bool>, String> {
        match self.attribute(s, h, ty)?.as_deref() {
            None => Ok(None),
            Some([b]) => Ok(Some(*b != 0)),
            Some(v) => Err(format!("the token returned {} bytes for {ty}, a CK_BBOOL of 1 byte (a token or library bug)", v.len())),
        }
    }

    /// CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE and
    /// CKA_NEVER_EXTRACTABLE of a private key, each None if the token does
    /// not know that attribute. A failed read is an error, not "nothing to
    /// say": the policy on these attributes must not be skipped by a token
    /// hiccup.
    fn protection(&self, s: &Session, h: ObjectHandle) -> Result<Protection, String> {
        Ok(Protection {
            sensitive: self.flag_if_known(s, h, AttributeType::Sensitive)?,
            extractable: self.flag_if_known(s, h, AttributeType::Extractable)?,
            always_sensitive: self.flag_if_known(s, h, AttributeType::AlwaysSensitive)?,
            never_extractable: self.flag_if_known(s, h, AttributeType::NeverExtractable)?,
        })
    }

    /// CKA_KEY_TYPE; None if the token does not say.
    fn key_type(&self, s: &Session, h: ObjectHandle) -> Result<Option<KeyType>, String> {
        let Some(v) = self.attribute(s, h, AttributeType::KeyType)? else { return Ok(None) };
        let raw: [u8; std::mem::size_of::<cryptoki_sys::CK_KEY_TYPE>()] = v
            .as_slice()
            .try_into()
            .map_err(|_| format!("the token returned {} bytes for CKA_KEY_TYPE, a CK_ULONG (a token or library bug)", v.len()))?;
        let raw = cryptoki_sys::CK_KEY_TYPE::from_ne_bytes(raw);
        KeyType::try_from(raw).map(Some).map_err(|_| format!("the key is of type {raw:#x}, which mod_hsm_ssl does not serve; {SUPPORTED}"))
    }

    /// CKA_MODULUS and CKA_PUBLIC_EXPONENT of an RSA key object (private or
    /// public), bounded like every attribute; empty when the token does not
    /// reveal them.
    fn rsa_public(&self, s: &Session, h: ObjectHandle) -> Result<PublicKey, String> {
        let n = self.attribute(s, h, AttributeType::Modulus)?.unwrap_or_default();
        let e = self.attribute(s, h, AttributeType::PublicExponent)?.unwrap_or_default();
        Ok(PublicKey::Rsa { n, e })
    }

    /// " (but a public key / certificate with that name exists)" when the
    /// URI names an object of another class.
    fn other_classes(&self, s: &Session, uri: &KeyUri) -> String {
        let mut kinds = Vec::new();
        for (class, name) in [(ObjectClass::PUBLIC_KEY, "a public key"), (ObjectClass::CERTIFICATE, "a certificate")] {
            let mut tmpl = vec![Attribute::Class(class)];
            if let Some(l) = &uri.object {
                tmpl.push(Attribute::Label(l.as_bytes().to_vec()));
            }
            if let Some(id) = &uri.id {
                tmpl.push(Attribute::Id(id.clone()));
            }
            if s.find_objects(&tmpl).map(|v| !v.is_empty()).unwrap_or(false) {
                kinds.push(name);
            }
        }
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" (only {} with that name: the private key is missing)", kinds.join(" and "))
        }
    }

    /// The token of `key` (logged in) and the mechanisms it lists.
    fn mechanisms(&self, key: &KeyRef) -> Result<(Arc<TokenState>, Vec<cryptoki::mechanism::MechanismType>), String> {
        let sel = TokenSelector { serial: Some(key.token_serial.clone()), ..Default::default() };
        let tok = self.token(&sel).map_err(|e| e.to_string())?;
        let list = self.ctx.get_mechanism_list(tok.slot).map_err(|e| format!("cannot list the token's mechanisms: {}", ck_error_text(&e)))?;
        Ok((tok, list))
    }

    /// Checks that the token offers what `key` needs in TLS. Err: a need
    /// that is not met (the key would fail handshakes); Ok: warnings about
    /// modes that will not work.
    pub fn check_mechanisms(&self, key: &KeyRef) -> Result<Vec<String>, String> {
        use cryptoki::mechanism::MechanismType;
        let (tok, list) = self.mechanisms(key)?;
        let info = |m: MechanismType| -> Option<cryptoki::mechanism::MechanismInfo> {
            if list.contains(&m) {
                self.ctx.get_mechanism_info(tok.slot, m).ok()
            } else {
                None
            }
        };
        let mut warnings = Vec::new();
        if !key.can_sign {
            return Err("the private key may not sign (CKA_SIGN is false); TLS needs it to sign handshakes".into());
        }
        match &key.public {
            PublicKey::Rsa { .. } => {
                match info(MechanismType::RSA_PKCS) {
                    Some(i) if i.sign() && i.decrypt() => {}
                    Some(_) => return Err("the token offers CKM_RSA_PKCS but not for both sign and decrypt; TLS needs both".into()),
                    None => return Err("the token does not offer CKM_RSA_PKCS, which TLS needs for RSA keys".into()),
                }
                if !info(MechanismType::RSA_PKCS_PSS).is_some_and(|i| i.sign()) {
                    warnings.push(
                        "the token does not offer CKM_RSA_PKCS_PSS: TLS 1.3 with this RSA key will fail, and TLS 1.2 clients that ask for RSA-PSS will fail; add an EC certificate or use a token with PSS"
                            .to_string(),
                    );
                }
                if !key.can_decrypt {
                    warnings.push(
                        "the private key may not decrypt (CKA_DECRYPT is false), so it cannot do TLS 1.2 RSA key exchange: \
                         mod_hsm_ssl removes those cipher suites (kRSA, e.g. AES128-GCM-SHA256) from this vhost; ECDHE and \
                         TLS 1.3 are unaffected; to offer them, use a key made with decrypt usage"
                            .to_string(),
                    );
                }
            }
            PublicKey::Ec { .. } => {
                if !info(MechanismType::ECDSA).is_some_and(|i| i.sign()) {
                    return Err("the token does not offer CKM_ECDSA, which TLS needs for EC keys".into());
                }
            }
        }
        Ok(warnings)
    }

    /// Chooses, once per key, how TLS 1.2 RSA key exchange decrypts with
    /// `key` (see [`PremasterMech`]) and records it in the key: raw RSA when
    /// the token offers CKM_RSA_X_509 for decryption, else CKM_RSA_PKCS.
    /// None for keys that do no RSA key exchange (EC, or no CKA_DECRYPT).
    pub fn choose_premaster_mech(&self, key: &KeyRef) -> Result<Option<PremasterMech>, String> {
        use cryptoki::mechanism::MechanismType;
        if !matches!(key.public, PublicKey::Rsa { .. }) || !key.can_decrypt {
            return Ok(None);
        }
        let (tok, list) = self.mechanisms(key)?;
        let raw =
            list.contains(&MechanismType::RSA_X_509) && self.ctx.get_mechanism_info(tok.slot, MechanismType::RSA_X_509).is_ok_and(|i| i.decrypt());
        let mech = match raw.then(|| self.raw_round_trip(key)) {
            None => PremasterMech::Pkcs1,
            Some(Ok(())) => PremasterMech::Raw,
            Some(Err(e)) => {
                log::warn!(
                    "key {}: the token lists CKM_RSA_X_509 for decryption but a trial with it failed ({e}); \
                     TLS 1.2 RSA key exchange uses CKM_RSA_PKCS, so the token checks the padding",
                    key.uri_text
                );
                PremasterMech::Pkcs1
            }
        };
        Ok(Some(*key.premaster.get_or_init(|| mech)))
    }

    /// Decrypts n - 1 raw with `key` and checks the answer: for any RSA key
    /// (n - 1)^d = n - 1 (mod n), as d is odd, so a token that really
    /// decrypts raw with this key returns it. Public values only. Some
    /// tokens list CKM_RSA_X_509 but refuse it for a key, or answer in a
    /// form the module does not expect: without this trial every RSA key
    /// exchange would fail at Finished, with nothing saying why.
    fn raw_round_trip(&self, key: &KeyRef) -> Result<(), String> {
        let PublicKey::Rsa { n, .. } = &key.public else { return Err("not an RSA key".into()) };
        let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
        let Some(last) = n.last().filter(|&&b| b & 1 == 1) else { return Err("the modulus is even or empty".into()) };
        let mut c = n.to_vec();
        *c.last_mut().expect("non-empty") = last - 1; // n is odd: no borrow
        let expect = c.clone();
        let got = self.run_here(key, move |me, s, h| me.direct.decrypt(s, &Mech::RsaX509.to_ck(), h, &c)).map_err(|e| e.to_string())?;
        let got = &got[got.iter().position(|&b| b != 0).unwrap_or(got.len())..];
        if got == expect.as_slice() {
            Ok(())
        } else {
            Err(format!("the token answered {} bytes that are not the expected value", got.len()))
        }
    }

    /// The handle of `key` in this process, found once and cached.
    fn key_handle(&self, key: &KeyRef) -> Result<(Arc<TokenState>, ObjectHandle), OpError> {
        if let Some(v) = self.handles.lock().get(&key.ident) {
            return Ok(v.clone());
        }
        let sel = TokenSelector { serial: Some(key.token_serial.clone()), ..Default::default() };
        let tok = self.token(&sel)?;
        let session = tok.pool.take(&self.ctx, tok.slot)?;
        let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if !key.id.is_empty() {
            tmpl.push(Attribute::Id(key.id.clone()));
        }
        if let Some(l) = &key.label {
            tmpl.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        let found = session.find_objects(&tmpl).map_err(OpError::Token).and_then(|found| match found.as_slice() {
            [h] => self.same_public_half(&session, *h, key).map(|_| found),
            _ => Ok(found),
        });
        tok.pool.give_back(session);
        let found = found?;
        match found.as_slice() {
            [h] => {
                let v = (tok, *h);
                self.handles.lock().insert(key.ident.clone(), v.clone());
                Ok(v)
            }
            other => Err(OpError::Setup(format!("key {} is no longer on token '{}' ({} objects match)", key.uri_text, tok.label, other.len()))),
        }
    }

    /// Checks that the object found again for `key` has the public half
    /// checked at startup (against the certificate too): a key replaced
    /// on the token under the same label and CKA_ID is not used.
    fn same_public_half(&self, s: &Session, h: ObjectHandle, key: &KeyRef) -> Result<(), OpError> {
        let now = match &key.public {
            PublicKey::Rsa { .. } => self.rsa_public(s, h).map_err(OpError::Setup)?,
            PublicKey::Ec { params, .. } => {
                let point = self.ec_point(s, h, &key.id, key.label.as_deref()).map_err(OpError::Setup)?.unwrap_or_default();
                PublicKey::Ec { params: params.clone(), point }
            }
        };
        if now == key.public {
            return Ok(());
        }
        Err(OpError::Setup(format!(
            "the key on the token changed since startup: {} (token '{}', id {}) now has another public key than the \
             one checked against its certificate at startup; it is not used; reload httpd (apachectl graceful) so \
             that the new key is checked, with a certificate that belongs to it",
            key.uri_text,
            key.token_label,
            hex(&key.id)
        )))
    }

    /// Makes sure the token of `key` is logged in and the key is found, so
    /// that the first handshake does not pay for it; bounded like `run`.
    pub fn prepare(self: &Arc<Self>, key: &Arc<KeyRef>) -> Result<(), OpError> {
        let (me, key) = (self.clone(), key.clone());
        self.binding.call_op(move || me.key_handle(&key).map(|_| ()))
    }

    /// Runs one token operation on a helper thread and waits at most
    /// HSMSSLOperationTimeout for all of it: finding the key (a login after
    /// a re-initialization), waiting for a pooled session, the call itself.
    /// A session-level error drops the session and retries once on a fresh
    /// one. A call that outlives the wait gives its session back when it
    /// ends. With HSMSSLDirectCalls the calling thread does all of it
    /// itself, as long as it takes (only the wait for a session stays
    /// bounded).
    fn run<T, F>(self: &Arc<Self>, key: &Arc<KeyRef>, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: Fn(&Hsm, &Session, ObjectHandle) -> Result<T, CkError> + Send + 'static,
    {
        let (me, key) = (self.clone(), key.clone());
        self.binding.call_op(move || me.run_here(&key, op))
    }

    fn run_here<T>(&self, key: &KeyRef, op: impl Fn(&Hsm, &Session, ObjectHandle) -> Result<T, CkError>) -> Result<T, OpError> {
        let (tok, handle) = self.key_handle(key)?;
        let mut retried = false;
        loop {
            let session = tok.pool.take(&self.ctx, tok.slot)?;
            let r = op(self, &session, handle);
            match r {
                Err(e) if super::direct::spoils_session(&e) => {
                    tok.pool.discard(session);
                    return Err(OpError::Token(e));
                }
                Err(e) if is_session_error(&e) => {
                    tok.pool.discard(session);
                    if retried {
                        return Err(OpError::Token(e));
                    }
                    log::info!("token '{}': {}; retrying on a new session", tok.label, ck_error_text(&e));
                    retried = true;
                }
                r => {
                    tok.pool.give_back(session);
                    return r.map_err(OpError::Token);
                }
            }
        }
    }

    /// C_Sign with `mech` over `data` (a digest or DigestInfo: hashing is
    /// done by the caller).
    pub fn sign(self: &Arc<Self>, key: &Arc<KeyRef>, mech: Mech, data: Vec<u8>) -> Result<Vec<u8>, OpError> {
        self.run(key, move |me, s, h| me.direct.sign(s, &mech.to_ck(), h, &data))
    }

    /// C_Decrypt with `mech`.
    pub fn decrypt(self: &Arc<Self>, key: &Arc<KeyRef>, mech: Mech, data: Vec<u8>) -> Result<Vec<u8>, OpError> {
        self.run(key, move |me, s, h| me.direct.decrypt(s, &mech.to_ck(), h, &data))
    }

    /// One C_DecryptInit + C_Decrypt of a TLS premaster secret, without
    /// the second chances of `run`.
    ///
    /// Err: the ciphertext never reached the token (key lookup, login, no
    /// free session in time, or the bound ran out before the call). Those
    /// do not depend on the ciphertext and may fail the handshake.
    /// Ok: whatever the token answered, an error or a timeout of the call
    /// itself included. Nothing here reacts to that answer: the session
    /// goes back to the pool (a broken one is found by the probe,
    /// `runtime::wake_probe`; only one the token left with an operation
    /// active is closed), nothing is retried, so the caller can treat
    /// every answer alike (Bleichenbacher / ROBOT).
    pub fn decrypt_premaster(self: &Arc<Self>, key: &Arc<KeyRef>, mech: Mech, data: Vec<u8>) -> Result<TokenAnswer, OpError> {
        let reached = Arc::new(AtomicBool::new(false));
        let (me, k, r) = (self.clone(), key.clone(), reached.clone());
        match self.binding.call(move || me.decrypt_premaster_here(&k, mech, &data, &r)) {
            Some(answer) => answer,
            None if reached.load(Ordering::Acquire) => Ok(Err(OpError::Timeout(self.binding.op_timeout))),
            None => Err(OpError::Timeout(self.binding.op_timeout)),
        }
    }

    fn decrypt_premaster_here(&self, key: &KeyRef, mech: Mech, data: &[u8], reached: &AtomicBool) -> Result<TokenAnswer, OpError> {
        let (tok, handle) = self.key_handle(key)?;
        let session = tok.pool.take(&self.ctx, tok.slot)?;
        reached.store(true, Ordering::Release);
        let r = self.direct.decrypt(&session, &mech.to_ck(), handle, data);
        // A session the token left with an operation active (it asked for
        // a buffer larger than any premaster needs) is closed, not reused:
        // that is the token's framing, the same for every ciphertext.
        match &r {
            Err(e) if super::direct::spoils_session(e) => tok.pool.discard(session),
            _ => tok.pool.give_back(session),
        }
        Ok(r.map_err(OpError::Token))
    }

    /// Checks the token with calls that carry no client data: session
    /// info of a pooled session and the key type of `key`'s handle. Run
    /// through `run` (a broken session is replaced, the call is bounded).
    pub fn probe(self: &Arc<Self>, key: &Arc<KeyRef>) -> Result<(), OpError> {
        self.run(key, |me, s, h| {
            s.get_session_info()?;
            me.direct.attribute(s, h, AttributeType::KeyType).map_err(|e| e.into_ck())?;
            Ok(())
        })
    }

    /// Session pool counters per token label.
    pub fn pool_stats(&self) -> Vec<(String, PoolStats)> {
        self.tokens.lock().values().map(|t| (t.label.clone(), t.pool.stats())).collect()
    }
}

/// C_GetTokenInfo, retried briefly: a token that another process is
/// reading at the same moment can answer with a transient error
/// (SoftHSM2 does, when sibling children start together).
fn token_info(ctx: &Pkcs11, slot: Slot) -> Result<cryptoki::slot::TokenInfo, CkError> {
    let mut last = None;
    for attempt in 0..5 {
        match ctx.get_token_info(slot) {
            Ok(i) => return Ok(i),
            Err(e) => {
                log::debug!("C_GetTokenInfo on slot {} (attempt {}): {}", slot.id(), attempt + 1, ck_error_text(&e));
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20 << attempt));
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// The one initialized token `sel` names (any, if `sel` is empty), with an
/// error that lists the tokens present when there is not exactly one.
pub fn find_token(ctx: &Pkcs11, sel: &TokenSelector, library: &std::path::Path) -> Result<(Slot, cryptoki::slot::TokenInfo), String> {
    let slots = ctx.get_slots_with_token().map_err(|e| format!("cannot list tokens: {}", ck_error_text(&e)))?;
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for slot in slots {
        let info = match token_info(ctx, slot) {
            Ok(i) => i,
            Err(e) => {
                seen.push(format!("slot {} (token info unreadable: {})", slot.id(), ck_error_text(&e)));
                continue;
            }
        };
        if !info.token_initialized() {
            // An empty slot (SoftHSM2 always shows one) holds no keys.
            continue;
        }
        let label = info.label().trim().to_string();
        seen.push(format!("'{}' (serial {})", label, info.serial_number().trim()));
        let ok = sel.label.as_deref().map_or(true, |l| l == label)
            && sel.serial.as_deref().map_or(true, |s| s == info.serial_number().trim())
            && sel.manufacturer.as_deref().map_or(true, |m| m == info.manufacturer_id().trim())
            && sel.model.as_deref().map_or(true, |m| m == info.model().trim())
            && sel.slot_id.map_or(true, |id| id == slot.id());
        if ok {
            found.push((slot, info));
        }
    }
    match found.len() {
        1 => Ok(found.pop().expect("one element")),
        0 if seen.is_empty() => {
            Err(format!("no initialized token is present in {} (is the HSM client configured and reachable?)", library.display()))
        }
        0 => Err(format!("no token matches {sel}; tokens present: {}", seen.join(", "))),
        _ => Err(format!(
            "{} tokens match {sel} ({}); say which one with token= or serial= in the key URI or with HSMSSLToken",
            found.len(),
            found.iter().map(|(_, i)| format!("'{}' serial {}", i.label().trim(), i.serial_number().trim())).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The keys the module serves, for error messages.
const SUPPORTED: &str = "supported: RSA of 2048 to 8192 bits, EC P-256, P-384, P-521";

/// RSA moduli the module serves, in bits: 2048 as the key tool's import,
/// 8192 as the largest output direct.rs makes room for.
pub const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

/// Refuses an RSA key of a size the module does not serve.
fn check_rsa_size(public: &PublicKey) -> Result<(), String> {
    let PublicKey::Rsa { n, .. } = public else { return Ok(()) };
    let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
    let bits = n.first().map_or(0, |&b| n.len() as u32 * 8 - b.leading_zeros());
    if RSA_BITS.contains(&bits) {
        return Ok(());
    }
    Err(format!("the RSA key has {bits} bits; mod_hsm_ssl serves RSA keys of {} to {} bits", RSA_BITS.start(), RSA_BITS.end()))
}

/// CKA_MODULUS and CKA_PUBLIC_EXPONENT of an RSA key object (private or
/// public); empty when the token does not reveal them. For the key tool:
/// cryptoki's read, whose buffers the token sizes (the module reads with
/// `Hsm::rsa_public`, bounded).
pub fn rsa_public(s: &Session, h: ObjectHandle) -> Result<PublicKey, CkError> {
    let (mut n, mut e) = (Vec::new(), Vec::new());
    for x in s.get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])? {
        match x {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    Ok(PublicKey::Rsa { n, e })
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point; some tokens store
/// the raw point. Returns the raw uncompressed point.
fn unwrap_octet_string(v: &[u8]) -> Option<Vec<u8>> {
    if v.first() == Some(&0x04) && v.len() > 2 {
        // Either a raw point (04 X Y, odd length) or an OCTET STRING tag.
        let (len, hdr) = match v[1] {
            l if l < 0x80 => (l as usize, 2),
            0x81 if v.len() > 3 => (v[2] as usize, 3),
            0x82 if v.len() > 4 => (((v[2] as usize) << 8) | v[3] as usize, 4),
            _ => (0, 0),
        };
        if hdr > 0 && hdr + len == v.len() && v.get(hdr) == Some(&0x04) {
            return Some(v[hdr..].to_vec());
        }
        if v.len() % 2 == 1 {
            return Some(v.to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_is_unwrapped_from_der_or_taken_raw() {
        let raw: Vec<u8> = std::iter::once(4u8).chain(1..=64).collect();
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&raw);
        assert_eq!(unwrap_octet_string(&der).unwrap(), raw);
        assert_eq!(unwrap_octet_string(&raw).unwrap(), raw);
        assert!(unwrap_octet_string(&[0x30, 0x01, 0x00]).is_none());
    }

    #[test]
    fn rsa_keys_of_2048_to_8192_bits_are_served_and_others_refused() {
        let rsa = |bytes: usize, top: u8| {
            let mut n = vec![0xff; bytes];
            n[0] = top;
            PublicKey::Rsa { n, e: vec![1, 0, 1] }
        };
        assert!(check_rsa_size(&rsa(256, 0x80)).is_ok());
        assert!(check_rsa_size(&rsa(1024, 0xc1)).is_ok());
        // A leading zero byte does not count.
        let mut padded = rsa(256, 0x80);
        if let PublicKey::Rsa { n, .. } = &mut padded {
            n.insert(0, 0);
        }
        assert!(check_rsa_size(&padded).is_ok());
        assert_eq!(check_rsa_size(&rsa(256, 0x7f)).unwrap_err(), "the RSA key has 2047 bits; mod_hsm_ssl serves RSA keys of 2048 to 8192 bits");
        assert!(check_rsa_size(&rsa(128, 0x80)).unwrap_err().contains("1024 bits"));
        assert!(check_rsa_size(&rsa(1025, 0x01)).unwrap_err().contains("8193 bits"));
        assert!(check_rsa_size(&PublicKey::Ec { params: vec![], point: vec![] }).is_ok());
    }

    #[test]
    fn error_names_are_ckr_constants() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(RvError::SessionHandleInvalid), "CKR_SESSION_HANDLE_INVALID");
    }
}
