//! Library loading, token selection and the single login per token.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use parking_lot::Mutex;

use crate::pkcs11::uri::TokenSelector;

use super::error::rv_name;
use super::session::{Pool, TokenState};
use super::*;
use crate::pkcs11::policy;

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
    pub(super) ctx: Pkcs11,
    /// Sign, decrypt and attribute reads with buffers the token does not
    /// size (see direct.rs).
    pub(super) direct: crate::pkcs11::direct::Direct,
    pub(super) binding: Arc<Binding>,
    pub(super) pid: u32,
    /// Whether we called C_Initialize (and so must call C_Finalize).
    pub(super) owns_init: AtomicBool,
    /// Given up on while calls still ran on it (see `abandon`).
    pub(super) abandoned: AtomicBool,
    pub(super) tokens: Mutex<HashMap<u64, Arc<TokenState>>>,
    pub(super) handles: Mutex<HashMap<KeyIdent, (Arc<TokenState>, ObjectHandle)>>,
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
                log::debug!("HSM00450: C_Finalize: {}", ck_error_text(&e));
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
        let s_library = crate::pkcs11::settings::name(crate::pkcs11::settings::Setting::Library);
        let lib = &binding.library;
        let shown = lib.display();
        match std::fs::metadata(lib) {
            Err(e) => return Err(format!("{s_library} {shown}: {e}; install the vendor's PKCS#11 library or fix the path")),
            Ok(m) if !m.is_file() => return Err(format!("{s_library} {shown}: not a regular file")),
            Ok(_) => {}
        }
        let ctx = Pkcs11::new(lib).map_err(|e| match e {
            CkError::LibraryLoading(le) => format!(
                "{s_library} {shown}: cannot load it as a shared library ({le}); \
                 point {s_library} at the vendor's PKCS#11 .so"
            ),
            CkError::MissingSymbol(s) => format!("{s_library} {shown}: the library exports no {s}, so it is not a PKCS#11 library"),
            other => format!("{s_library} {shown}: {}", ck_error_text(&other)),
        })?;
        // The only way the module signs, decrypts and reads key attributes
        // (never cryptoki's, which size buffers as the token says: see
        // direct.rs). It is the library cryptoki just loaded, by the same
        // path, so its function list is always there; if not, something
        // is badly wrong and nothing is initialized yet.
        let direct = crate::pkcs11::direct::Direct::open(lib)
            .map_err(|e| format!("{s_library} {shown}: cannot take the library's function list ({e}); is it a PKCS#11 library?"))?;
        let owns_init = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {
                take_left_behind(lib);
                true
            }
            // Still initialized by an abandoned state of ours: this one
            // finalizes it in its place. Otherwise someone else in the
            // process initialized it and finalizes it.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => take_left_behind(lib),
            Err(e) => return Err(format!("{s_library} {shown}: {}", ck_error_text(&e))),
        };
        log::debug!("HSM00451: PKCS#11 library {shown} initialized in pid {}", std::process::id());
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
    pub(super) fn token(&self, sel: &TokenSelector) -> Result<Arc<TokenState>, OpError> {
        let sel = if sel.is_empty() { &self.binding.default_token } else { sel };
        let (slot, info) = self.find_slot(sel).map_err(OpError::Setup)?;
        let mut tokens = self.tokens.lock();
        if let Some(t) = tokens.get(&slot.id()) {
            return Ok(t.clone());
        }
        let label = info.label().trim().to_string();
        let serial = info.serial_number().trim().to_string();
        let s_pin = crate::pkcs11::settings::name(crate::pkcs11::settings::Setting::Pin);
        if info.user_pin_locked() {
            return Err(OpError::Denied(format!(
                "token '{label}': the user PIN is locked; not trying to log in (an administrator must unlock the crypto user)"
            )));
        }
        if info.user_pin_final_try() {
            return Err(OpError::Denied(format!(
                "token '{label}': the next wrong PIN would lock the user; not trying to log in \
                 (check {s_pin}, then log in once by hand to reset the counter)"
            )));
        }
        let anchor =
            self.ctx.open_ro_session(slot).map_err(|e| OpError::Setup(format!("token '{label}': cannot open a session: {}", ck_error_text(&e))))?;
        let pin = self.binding.pin.to_raw_auth_pin();
        // One login at a time across the server's processes, and none once
        // the token refused this generation's PIN in any of them.
        let attempt = crate::pkcs11::latch::login(self.binding.op_timeout / 2, || {
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
        .map_err(|pid| OpError::Denied(format!("token '{label}': {}", crate::pkcs11::latch::refusal_text(pid))))?;
        let counters = crate::pkcs11::stats::token_slot(&label, &serial);
        {
            use crate::pkcs11::stats::{error_code, event, Event};
            match &attempt {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => event(counters, Event::LoginOk),
                Err(e) => {
                    if let CkError::Pkcs11(rv, _) = e {
                        error_code(counters, &rv_name(*rv));
                    }
                    event(counters, Event::LoginRefused);
                }
            }
        }
        match attempt {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(OpError::Denied(format!(
                    "token '{label}': login failed: wrong PIN (CKR_PIN_INCORRECT); tried once and not retried, \
                     so the crypto user is not locked out; fix what {s_pin} gives"
                )))
            }
            Err(CkError::Pkcs11(rv @ (RvError::PinInvalid | RvError::PinLenRange), _)) => {
                return Err(OpError::Denied(format!(
                    "token '{label}': login failed: the token refuses the PIN's form ({}); tried once and not retried; \
                     fix what {s_pin} gives (AWS CloudHSM: <crypto-user>:<password>)",
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
        log::debug!("HSM00452: logged in to token '{label}' (serial {serial}) in pid {}", self.pid);
        let t = Arc::new(TokenState {
            slot,
            label,
            serial,
            _anchor: Mutex::new(anchor),
            pool: Pool::new(self.binding.max_sessions, self.binding.session_wait, counters),
        });
        tokens.insert(slot.id(), t.clone());
        Ok(t)
    }
}

/// C_GetTokenInfo, retried briefly: a token that another process is
/// reading at the same moment can answer with a transient error
/// (SoftHSM2 does, when sibling children start together).
fn token_info(ctx: &Pkcs11, slot: Slot) -> Result<cryptoki::slot::TokenInfo, CkError> {
    let mut last = None;
    for attempt in 0..policy::TOKEN_INFO_ATTEMPTS {
        match ctx.get_token_info(slot) {
            Ok(i) => return Ok(i),
            Err(e) => {
                log::debug!("HSM00453: C_GetTokenInfo on slot {} (attempt {}): {}", slot.id(), attempt + 1, ck_error_text(&e));
                last = Some(e);
                std::thread::sleep(policy::token_info_pause(attempt));
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
            "{} tokens match {sel} ({}); say which one with token= or serial= in the key URI or with {}",
            found.len(),
            found.iter().map(|(_, i)| format!("'{}' serial {}", i.label().trim(), i.serial_number().trim())).collect::<Vec<_>>().join(", "),
            crate::pkcs11::settings::name(crate::pkcs11::settings::Setting::Token)
        )),
    }
}
