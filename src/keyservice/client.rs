//! A child's side of the key service: a few connections to its socket,
//! reused across handshakes, each request and answer waited for at most
//! HSMSSLOperationTimeout.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::proto::{self, Answer, Failure, Request, Scheme};
use crate::pkcs11::token::{KeyRef, OpError, TokenAnswer};

pub struct Client {
    path: PathBuf,
    /// The keys in the order the startup numbered them.
    keys: Vec<Arc<KeyRef>>,
    /// HSMSSLOperationTimeout; None with HSMSSLDirectCalls On (unbounded).
    timeout: Option<Duration>,
    /// Connections not in use; a handshake takes one or opens a new one.
    idle: Mutex<Vec<UnixStream>>,
}

/// How long connecting is tried again without HSMSSLOperationTimeout
/// (HSMSSLDirectCalls On), and how often (see [`Client::connect`]).
const RECONNECT_WINDOW: Duration = Duration::from_secs(2);
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Set once, in child_init, in a child of a configuration with a key
/// service: read by every handshake, so no lock.
static ACTIVE: OnceLock<Client> = OnceLock::new();

/// The client of this child, if it uses a key service.
pub fn active() -> Option<&'static Client> {
    ACTIVE.get()
}

/// Makes this process send every operation to the service at `path` (a
/// child's first and only call; a later one changes nothing).
pub fn activate(path: PathBuf, keys: Vec<Arc<KeyRef>>, timeout: Option<Duration>) {
    let _ = ACTIVE.set(Client { path, keys, timeout, idle: Mutex::new(Vec::new()) });
}

/// What is left until `deadline` (at least 1 ms: zero means no timeout to
/// the socket calls); None without a deadline.
fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))
}

/// Writes all of `buf` without raising SIGPIPE if the service went away.
fn send_all(s: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: a send(2) on an open socket from a valid buffer.
        let n = unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// A transport failure, and whether the service can have seen the request.
struct Lost {
    error: io::Error,
    sent: bool,
}

impl Client {
    fn index(&self, key: &Arc<KeyRef>) -> Result<u32, OpError> {
        self.keys
            .iter()
            .position(|k| Arc::ptr_eq(k, key))
            .map(|i| i as u32)
            .ok_or_else(|| OpError::Setup(format!("key {} is not one the key service was started with", key.uri_text)))
    }

    /// A new connection. While the service is being started again after
    /// it died (httpd's parent notices within a second and binds a new
    /// socket), connecting is refused: tried again every few milliseconds
    /// until `deadline` (or [`RECONNECT_WINDOW`] without one), so that
    /// the handshakes of that second wait instead of failing.
    fn connect(&self, deadline: Option<Instant>) -> Result<UnixStream, OpError> {
        let until = deadline.unwrap_or_else(|| Instant::now() + RECONNECT_WINDOW);
        let s = loop {
            match UnixStream::connect(&self.path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) && Instant::now() + RECONNECT_PAUSE < until =>
                {
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Err(e) => {
                    return Err(OpError::Setup(format!(
                        "cannot reach the key service at {}: {e} (httpd starts it again within a second if it died)",
                        self.path.display()
                    )))
                }
            }
        };
        let _ = s.set_write_timeout(left(deadline));
        Ok(s)
    }

    fn exchange(&self, s: &mut UnixStream, body: &[u8], deadline: Option<Instant>) -> Result<Answer, Lost> {
        let mut frame = zeroize::Zeroizing::new(Vec::with_capacity(4 + body.len()));
        proto::write_frame(&mut *frame, body).map_err(|error| Lost { error, sent: false })?;
        send_all(s, &frame).map_err(|error| Lost { error, sent: false })?;
        let _ = s.set_read_timeout(left(deadline));
        let body = match proto::read_frame(s) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(Lost { error: io::ErrorKind::UnexpectedEof.into(), sent: true }),
            Err(error) => return Err(Lost { error, sent: true }),
        };
        Answer::decode(&body).map_err(|e| Lost { error: io::Error::new(io::ErrorKind::InvalidData, e), sent: true })
    }

    /// One request and its answer. A pooled connection the service closed
    /// (it was restarted) fails before the request leaves: then once more
    /// on a new connection. Once sent, a request is never sent again.
    fn call(&self, req: &Request) -> Result<Answer, OpError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let body = req.encode();
        let mut pooled = self.idle.lock().pop();
        loop {
            let was_pooled = pooled.is_some();
            let mut s = match pooled.take() {
                Some(s) => s,
                None => self.connect(deadline)?,
            };
            match self.exchange(&mut s, &body, deadline) {
                Ok(a) => {
                    self.idle.lock().push(s);
                    return Ok(a);
                }
                Err(Lost { sent: false, .. }) if was_pooled => continue,
                Err(Lost { error, .. }) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(OpError::Timeout(self.timeout.unwrap_or_default()));
                }
                Err(Lost { error, .. }) => {
                    return Err(OpError::Setup(format!("the key service at {} did not answer: {error}", self.path.display())));
                }
            }
        }
    }

    pub fn sign(&self, key: &Arc<KeyRef>, scheme: Scheme, digest: &[u8]) -> Result<Vec<u8>, OpError> {
        let req = Request::Sign { key: self.index(key)?, scheme, digest: digest.to_vec() };
        match self.call(&req)? {
            Answer::Done(sig) => Ok(sig.to_vec()),
            Answer::PremasterError(t) => Err(OpError::Service(format!("the key service answered a signature request with a decrypt error: {t}"))),
            Answer::Failed(f) => Err(failure(f)),
        }
    }

    pub fn premaster(&self, key: &Arc<KeyRef>, ciphertext: &[u8]) -> Result<TokenAnswer, OpError> {
        let req = Request::Premaster { key: self.index(key)?, ciphertext: ciphertext.to_vec() };
        match self.call(&req)? {
            Answer::Done(block) => Ok(Ok(block.to_vec())),
            Answer::PremasterError(t) => Ok(Err(OpError::Service(t))),
            Answer::Failed(f) => Err(failure(f)),
        }
    }
}

fn failure(f: Failure) -> OpError {
    match f {
        Failure::Busy(ms) => OpError::Busy(Duration::from_millis(ms.into())),
        Failure::Timeout(ms) => OpError::Timeout(Duration::from_millis(ms.into())),
        Failure::Setup(t) => OpError::Setup(t),
        Failure::Denied(t) => OpError::Denied(t),
        Failure::Token(t) => OpError::Service(t),
        Failure::Refused(t) => OpError::Service(format!("the key service refused the request: {t}")),
    }
}
