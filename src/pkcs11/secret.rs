//! A PIN in memory: never printed, wiped when dropped.

use std::fmt;
use parking_lot::Mutex;
use zeroize::{Zeroize, Zeroizing};

/// The user PIN (CloudHSM: `crypto-user:password`). `Debug` prints a
/// placeholder; the bytes are zeroed by [`Secret::wipe`] (at process exit)
/// or when the last owner drops it.
pub struct Secret(Mutex<Zeroizing<Vec<u8>>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Mutex::new(Zeroizing::new(bytes)))
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> Vec<u8> {
        self.0.lock().to_vec()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Runs `f` with the secret bytes (no copy escapes unless `f` makes one).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.0.lock())
    }

    /// Zeroes the PIN now; later logins fail instead of using stale bytes.
    pub fn wipe(&self) {
        let mut g = self.0.lock();
        g.zeroize();
        g.clear();
    }

    /// The PIN in the form cryptoki's `login_with_raw` takes; that copy is
    /// itself wiped on drop (secrecy's `SecretBox`).
    pub fn to_raw_auth_pin(&self) -> cryptoki::types::RawAuthPin {
        cryptoki::types::RawAuthPin::new(Box::new(self.0.lock().to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_pin() {
        let s = Secret::new(b"crypto-user:hunter2".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.as_bytes(), b"crypto-user:hunter2");
        s.wipe();
        assert!(s.is_empty());
    }
}
