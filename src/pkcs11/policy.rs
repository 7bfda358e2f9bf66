//! Every second chance the token code gives, how long it waits, and how a
//! token's error is sorted: one place to read (and to change) how hard the
//! module tries before a handshake or a start fails. Each constant says
//! where it is used.

use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};

use super::token::OpError;

/// `lookup::find_key` (startup, configtest): attempts at logging in and
/// finding a key. A token can be unreadable for a moment while another
/// process writes it (SoftHSM2 rewrites its file at every login), or a
/// network HSM can blip during a restart. A refused PIN is never retried.
pub const FIND_KEY_ATTEMPTS: u32 = 3;

/// `lookup::find_key`: the pause after failed attempt `n` (1-based).
pub fn find_key_pause(n: u32) -> Duration {
    Duration::from_millis(200 * u64::from(n))
}

/// A child without key service (`child_init`) and a restarted key service
/// prepare their keys before serving: the pauses between the attempts
/// after an error a fresh state may cure (siblings start together).
pub const PREPARE_PAUSES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];

/// `token::hsm`: attempts at C_GetTokenInfo, 20 ms doubling between them
/// (a token being read by another process can answer with an error).
pub const TOKEN_INFO_ATTEMPTS: u32 = 5;

/// `token::hsm`: the pause after failed C_GetTokenInfo attempt `n` (0-based).
pub fn token_info_pause(n: u32) -> Duration {
    Duration::from_millis(20 << n)
}

/// `keyservice::sign_here`: AWS CloudHSM reports throttling as
/// CKR_FUNCTION_FAILED; a signature is tried once more after this pause.
/// (Signing has no padding oracle to protect, unlike the premaster
/// decrypt, which is never tried again.)
pub const THROTTLE_PAUSE: Duration = Duration::from_millis(20);

/// `runtime`: after a token failure calls fail at once for this long, then
/// one is let through to try again; doubled at each failure up to
/// [`BACKOFF_MAX`], which bounds how long service stays off once the token
/// is back.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// `runtime`: how long closing a PKCS#11 state waits for calls still
/// running on it before it leaves it to them.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// `runtime`: least time between two premaster probes, so that a client
/// that makes every decrypt fail costs the token at most one probe per
/// second per process.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a fresh PKCS#11 state (C_Finalize, C_Initialize, login, key
/// lookup) may cure `e`: the token went away, was replaced, lost our login
/// or our handles. `runtime::with_hsm` then re-initializes and tries once
/// more.
pub fn needs_reinit(e: &OpError) -> bool {
    match e {
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

/// Whether `e` ended the session only: the session is dropped and the
/// operation tried once more on a fresh one (`token::ops`).
pub fn is_session_error(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _))
}

/// Whether `e` may be throttling (see [`THROTTLE_PAUSE`]).
pub fn is_throttled(e: &OpError) -> bool {
    matches!(e, OpError::Token(CkError::Pkcs11(RvError::FunctionFailed, _)))
}

/// The token's documented answer about a premaster ciphertext: a bad
/// PKCS#1 block (CKM_RSA_PKCS), or a value not below the modulus. Every
/// other error of a premaster decrypt may be token trouble and wakes the
/// probe (`runtime::wake_probe`).
pub fn is_data_error(e: &OpError) -> bool {
    matches!(e, OpError::Token(CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rv: RvError) -> OpError {
        OpError::Token(CkError::Pkcs11(rv, cryptoki::context::Function::Sign))
    }

    #[test]
    fn errors_are_sorted_by_what_can_be_done_about_them() {
        for rv in [RvError::DeviceError, RvError::TokenNotPresent, RvError::UserNotLoggedIn, RvError::ObjectHandleInvalid] {
            assert!(needs_reinit(&token(rv)), "{rv:?}");
        }
        assert!(needs_reinit(&OpError::Setup("library gone".into())));
        for e in [token(RvError::PinIncorrect), token(RvError::FunctionFailed), OpError::Denied("no".into()), OpError::Busy(BACKOFF_MIN)] {
            assert!(!needs_reinit(&e), "{e:?}");
        }
        assert!(is_throttled(&token(RvError::FunctionFailed)));
        assert!(!is_throttled(&token(RvError::DeviceError)));
        assert!(is_data_error(&token(RvError::EncryptedDataInvalid)));
        assert!(!is_data_error(&token(RvError::DeviceError)));
        assert!(is_session_error(&CkError::Pkcs11(RvError::SessionClosed, cryptoki::context::Function::Sign)));
    }

    #[test]
    fn pauses_grow_and_backoff_is_bounded() {
        assert!(find_key_pause(2) > find_key_pause(1));
        assert_eq!(token_info_pause(0), Duration::from_millis(20));
        assert_eq!(token_info_pause(4), Duration::from_millis(320));
        assert!(BACKOFF_MIN < BACKOFF_MAX);
    }
}
