//! One process's connection to the PKCS#11 library, by concern:
//!
//! * here: what the configuration binds ([`Binding`]) and what is known
//!   about a configured key ([`KeyRef`], [`KeyFacts`], [`PublicKey`]);
//! * `error`: [`OpError`] and how a token's error is classified;
//! * `hsm`: library loading, token selection and the single login per token;
//! * `session`: the bounded session pool of a token;
//! * `keys`: finding a key, its attributes, public half and mechanisms;
//! * `ops`: the private-key operations and their second chances.
//!
//! How often anything is tried again, and for how long it waits, is in
//! `pkcs11::policy`.
//!
//! An [`Hsm`] belongs to exactly one process: the key service, a child
//! without one, configtest or the key tool. PKCS#11 state is never carried
//! across fork.

mod error;
mod hsm;
mod keys;
mod ops;
mod session;

pub use error::{ck_error_text, rv_name, OpError};
pub use hsm::{find_token, Hsm};
pub use keys::{rsa_public, RSA_BITS};
pub use session::PoolStats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cryptoki::mechanism::Mechanism;

use super::secret::Secret;
use super::uri::TokenSelector;

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
    /// Whether `other` names the same library, token, PIN and limits: a
    /// process opened with one serves the other as it is.
    pub fn same_as(&self, other: &Binding) -> bool {
        let Binding { library, pin, default_token, max_sessions, session_wait, op_timeout, direct_calls } = self;
        let same_pin = Arc::ptr_eq(pin, &other.pin) || pin.with_bytes(|a| other.pin.with_bytes(|b| a == b));
        same_pin
            && (library, default_token, max_sessions, session_wait, op_timeout, direct_calls)
                == (&other.library, &other.default_token, &other.max_sessions, &other.session_wait, &other.op_timeout, &other.direct_calls)
    }

    /// Runs one token step of a handshake: on a helper thread, waited for
    /// at most `op_timeout` (None if it did not finish in time; it then
    /// ends on its own); with HSMSSLDirectCalls on the calling thread, as
    /// long as it takes; in the key service on the calling thread, watched
    /// (`watchdog`).
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if self.direct_calls {
            Some(f())
        } else if super::watchdog::enabled() {
            // The key service: the child bounds its wait (see `watchdog`).
            Some(super::watchdog::run(f))
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

/// Everything the token said about a configured key: what a [`KeyRef`]
/// is besides its binding and the RSA key exchange's mechanism. The key
/// service sends it to httpd's parent, which builds mod_ssl's key from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
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
}

/// A configured key as one process uses it: its facts (read through
/// `Deref`), the configuration's binding, and how RSA key exchange
/// decrypts with it. Processes find the same object again by token serial,
/// CKA_ID and CKA_LABEL.
#[derive(Debug)]
pub struct KeyRef {
    facts: KeyFacts,
    pub binding: Arc<Binding>,
    /// How TLS 1.2 RSA key exchange decrypts with this key: chosen once at
    /// startup by [`Hsm::choose_premaster_mech`] where the key is found,
    /// and sent with its facts; unset means CKM_RSA_PKCS.
    pub premaster: std::sync::OnceLock<PremasterMech>,
    /// Token serial, CKA_ID, CKA_LABEL: the key of the per-process handle
    /// cache, built once so a handshake's lookup copies nothing.
    ident: KeyIdent,
    /// The key's and its token's slots in the shared counters, found at
    /// the first operation of the process that talks to the token.
    stats: std::sync::OnceLock<(Option<usize>, Option<usize>)>,
}

/// How a child finds a key again: token serial, CKA_ID, CKA_LABEL.
type KeyIdent = (String, Vec<u8>, Option<String>);

impl std::ops::Deref for KeyRef {
    type Target = KeyFacts;
    fn deref(&self) -> &KeyFacts {
        &self.facts
    }
}

impl KeyRef {
    /// The key these facts describe, under `binding`.
    pub fn new(facts: KeyFacts, premaster: Option<PremasterMech>, binding: Arc<Binding>) -> KeyRef {
        let cell = std::sync::OnceLock::new();
        if let Some(m) = premaster {
            let _ = cell.set(m);
        }
        KeyRef {
            ident: (facts.token_serial.clone(), facts.id.clone(), facts.label.clone()),
            facts,
            binding,
            premaster: cell,
            stats: std::sync::OnceLock::new(),
        }
    }

    /// (key, token) slots of the shared counters (`pkcs11::stats`).
    pub fn stats_slots(&self) -> (Option<usize>, Option<usize>) {
        *self.stats.get_or_init(|| {
            let t = crate::pkcs11::stats::token_slot(&self.token_label, &self.token_serial);
            (crate::pkcs11::stats::key_slot(t, &crate::pkcs11::uri::redacted(&self.uri_text)), t)
        })
    }

    /// What the token said about this key.
    pub fn facts(&self) -> &KeyFacts {
        &self.facts
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
        let facts = KeyFacts {
            uri_text: "pkcs11:object=test".into(),
            token_serial: String::new(),
            token_label: String::new(),
            id: vec![1],
            label: None,
            public,
            can_sign,
            can_decrypt,
            protection: Protection::default(),
        };
        KeyRef::new(facts, None, binding)
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
