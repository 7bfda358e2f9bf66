//! The benchmark's load client: `clients` threads, each doing full
//! handshakes back to back (a new TCP connection each, no session
//! resumption) followed by a GET that must answer 200. Every attempt is
//! recorded with its end time, so a measurement window can be cut out of a
//! run that started earlier (the warm-up).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion};

/// What the client asks for; the server offers everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// TLS 1.3, RSA-PSS signature by the RSA-2048 key.
    Tls13RsaPss,
    /// TLS 1.2 ECDHE-RSA, PKCS#1 v1.5 signature by the RSA-2048 key.
    Tls12EcdheRsa,
    /// TLS 1.2 RSA key exchange: the key decrypts the premaster secret.
    Tls12RsaKx,
    /// TLS 1.3, ECDSA signature by the P-256 key.
    Tls13Ecdsa,
}

pub const SCENARIOS: [Scenario; 4] = [Scenario::Tls13RsaPss, Scenario::Tls12EcdheRsa, Scenario::Tls12RsaKx, Scenario::Tls13Ecdsa];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Tls13RsaPss => "TLS 1.3 RSA-PSS",
            Scenario::Tls12EcdheRsa => "TLS 1.2 ECDHE-RSA",
            Scenario::Tls12RsaKx => "TLS 1.2 RSA kx",
            Scenario::Tls13Ecdsa => "TLS 1.3 ECDSA P-256",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Scenario::Tls13RsaPss => "tls13-rsa-pss",
            Scenario::Tls12EcdheRsa => "tls12-ecdhe-rsa",
            Scenario::Tls12RsaKx => "tls12-rsa-kx",
            Scenario::Tls13Ecdsa => "tls13-ecdsa-p256",
        }
    }

    pub fn from_slug(s: &str) -> Option<Scenario> {
        SCENARIOS.into_iter().find(|x| x.slug() == s)
    }

    /// The private-key operation one full handshake needs.
    pub fn key_op(self) -> &'static str {
        match self {
            Scenario::Tls13RsaPss => "RSA-2048 PSS sign",
            Scenario::Tls12EcdheRsa => "RSA-2048 PKCS#1 sign",
            Scenario::Tls12RsaKx => "RSA-2048 PKCS#1 decrypt",
            Scenario::Tls13Ecdsa => "ECDSA P-256 sign",
        }
    }

    pub fn connector(self, ca: &Path) -> SslConnector {
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("SSL_CTX");
        b.set_ca_file(ca).expect("CA file");
        b.set_verify(SslVerifyMode::PEER);
        // A full handshake every time: no client session cache, no tickets.
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        b.set_options(SslOptions::NO_TICKET);
        let (version, sigalgs, cipher) = match self {
            Scenario::Tls13RsaPss => (SslVersion::TLS1_3, Some("rsa_pss_rsae_sha256"), None),
            Scenario::Tls12EcdheRsa => (SslVersion::TLS1_2, Some("RSA+SHA256"), Some("ECDHE-RSA-AES128-GCM-SHA256")),
            Scenario::Tls12RsaKx => (SslVersion::TLS1_2, None, Some("AES128-GCM-SHA256")),
            Scenario::Tls13Ecdsa => (SslVersion::TLS1_3, Some("ecdsa_secp256r1_sha256"), None),
        };
        b.set_min_proto_version(Some(version)).expect("min version");
        b.set_max_proto_version(Some(version)).expect("max version");
        if let Some(s) = sigalgs {
            b.set_sigalgs_list(s).expect("sigalgs");
        }
        if let Some(c) = cipher {
            b.set_cipher_list(c).expect("cipher list");
        }
        b.build()
    }
}

/// One attempt: when it ended, whether it got its 200, and how long the
/// TCP connect + TLS handshake took.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub end: Instant,
    pub ok: bool,
    pub handshake: Duration,
}

/// One full handshake + GET. Ok: the handshake time and what was
/// negotiated ("TLSv1.3 TLS_AES_256_GCM_SHA384").
pub fn one_request(port: u16, connector: &SslConnector) -> Result<(Duration, String), String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(30))).ok();
    let mut tls = connector.connect("localhost", tcp).map_err(|e| format!("handshake: {e}"))?;
    let handshake = start.elapsed();
    let negotiated = format!("{} {}", tls.ssl().version_str(), tls.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::with_capacity(512);
    let _ = tls.read_to_end(&mut resp);
    if resp.starts_with(b"HTTP/1.1 200") {
        Ok((handshake, negotiated))
    } else {
        Err(format!("bad response: {:?}", String::from_utf8_lossy(&resp[..resp.len().min(64)])))
    }
}

/// A running load: threads hammering one port until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<Attempt>, Option<String>)>>,
}

impl Load {
    pub fn start(port: u16, connector: &SslConnector, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (stop, connector) = (stop.clone(), connector.clone());
                std::thread::spawn(move || {
                    let mut attempts = Vec::with_capacity(4096);
                    let mut first_error = None;
                    while !stop.load(Ordering::Relaxed) {
                        let r = one_request(port, &connector);
                        let end = Instant::now();
                        match r {
                            Ok((handshake, _)) => attempts.push(Attempt { end, ok: true, handshake }),
                            Err(e) => {
                                first_error.get_or_insert(e);
                                attempts.push(Attempt { end, ok: false, handshake: Duration::ZERO });
                                // A failing setup must not turn into a busy loop.
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                    (attempts, first_error)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the threads; every attempt and the first error seen.
    pub fn stop(self) -> (Vec<Attempt>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut first = None;
        for t in self.threads {
            if let Ok((a, e)) = t.join() {
                all.extend(a);
                if first.is_none() {
                    first = e;
                }
            }
        }
        (all, first)
    }
}

/// The `q` quantile (0..=1) of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
