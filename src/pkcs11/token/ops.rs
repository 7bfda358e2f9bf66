//! The private-key operations, with their second chances.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cryptoki::error::Error as CkError;
use cryptoki::object::{AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::*;
use crate::pkcs11::policy::is_session_error;

impl Hsm {
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

    pub(super) fn run_here<T>(&self, key: &KeyRef, op: impl Fn(&Hsm, &Session, ObjectHandle) -> Result<T, CkError>) -> Result<T, OpError> {
        let (tok, handle) = self.key_handle(key)?;
        let mut retried = false;
        loop {
            let session = tok.pool.take(&self.ctx, tok.slot)?;
            let r = op(self, &session, handle);
            match r {
                Err(e) if crate::pkcs11::direct::spoils_session(&e) => {
                    tok.pool.discard(session);
                    return Err(OpError::Token(e));
                }
                Err(e) if is_session_error(&e) => {
                    tok.pool.discard(session);
                    if retried {
                        return Err(OpError::Token(e));
                    }
                    log::info!("HSM00465: token '{}': {}; retrying on a new session", tok.label, ck_error_text(&e));
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
            Err(e) if crate::pkcs11::direct::spoils_session(e) => tok.pool.discard(session),
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
