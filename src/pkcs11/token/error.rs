//! Errors of token operations and how they are classified.

use std::fmt;
use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};

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
    /// The URI names no key the module can serve: none, several, or one of
    /// a type or size it does not serve.
    NoKey(String),
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
    /// Whether a fresh PKCS#11 state may cure this error (see
    /// `policy::needs_reinit`).
    pub fn needs_reinit(&self) -> bool {
        crate::pkcs11::policy::needs_reinit(self)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::pkcs11::settings::{name, Setting};
        let (s_operationtimeout, s_maxsessions) = (name(Setting::OperationTimeout), name(Setting::MaxSessions));
        match self {
            OpError::Token(e) => write!(f, "{}", ck_error_text(e)),
            OpError::Timeout(d) => write!(f, "the token did not answer within {} ms ({s_operationtimeout}); is the HSM reachable?", d.as_millis()),
            OpError::Busy(d) => {
                write!(f, "no PKCS#11 session became free within {} ms (all sessions busy; raise {s_maxsessions} or add HSM capacity)", d.as_millis())
            }
            OpError::Setup(s) | OpError::NoKey(s) | OpError::Denied(s) | OpError::Service(s) => f.write_str(s),
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

pub fn rv_name(rv: RvError) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_ckr_constants() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(RvError::SessionHandleInvalid), "CKR_SESSION_HANDLE_INVALID");
    }
}
