//! A load client of our own: many threads doing full TLS handshakes (a new
//! TCP connection each, no session resumption) and a GET that must return
//! 200. Records every outcome with its time, so tests can excuse failures
//! inside a known window (a `restart` closes connections by design).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslSessionCacheMode, SslVerifyMode};

#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Instant,
    pub ok: bool,
    pub error: Option<String>,
}

/// One full handshake + GET.
pub fn one_request(port: u16, connector: &SslConnector) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(15))).ok();
    let mut tls = connector.connect("localhost", tcp).map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_string();
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("bad response: {head:?}"))
    }
}

pub fn connector(ca: &Path) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("SSL_CTX");
    b.set_ca_file(ca).expect("CA file");
    b.set_verify(SslVerifyMode::PEER);
    // Every connection is a full handshake.
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.build()
}

/// Runs `clients` threads against `port` until `stop` is set.
pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, ca: &Path, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                let connector = connector(ca);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = one_request(port, &connector);
                        let o = Outcome { at: Instant::now(), ok: r.is_ok(), error: r.err() };
                        outcomes.lock().unwrap().push(o);
                    }
                })
            })
            .collect();
        Load { stop, outcomes, threads }
    }

    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    pub fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let v = self.outcomes.lock().unwrap().clone();
        v
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}
