//! `openssl s_client` as the TLS client, with its output parsed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options for [`tls_get`]. `Default` = let OpenSSL negotiate everything.
#[derive(Clone, Debug, Default)]
pub struct ClientOpts {
    /// Force the protocol: "1.2" or "1.3".
    pub tls: Option<&'static str>,
    /// TLS <= 1.2 cipher list (`-cipher`), e.g. "AES128-GCM-SHA256".
    pub cipher: Option<String>,
    /// TLS 1.3 suites (`-ciphersuites`).
    pub ciphersuites: Option<String>,
    /// Offered signature algorithms (`-sigalgs`), e.g. "RSA+SHA256" (PKCS#1)
    /// or "RSA-PSS+SHA256" / "rsa_pss_rsae_sha256".
    pub sigalgs: Option<String>,
    /// SNI (`-servername`); also the Host header. Default "localhost".
    pub servername: Option<String>,
    /// Verify the server against this CA (`-CAfile`, `-verify_return_error`,
    /// `-verify_hostname <servername>`); a verification failure fails the
    /// handshake. None = no verification.
    pub cafile: Option<PathBuf>,
    /// Request path, default "/".
    pub path: Option<String>,
    /// Give up (kill s_client) after this long; default 20 s.
    pub timeout: Option<Duration>,
    /// Save the session (TLS 1.3: the last ticket received) to this file
    /// (`-sess_out`).
    pub sess_out: Option<PathBuf>,
    /// Offer the session saved in this file for resumption (`-sess_in`).
    pub sess_in: Option<PathBuf>,
}

/// What [`tls_get`] saw.
#[derive(Clone, Debug, Default)]
pub struct TlsResult {
    /// The handshake completed (a cipher was negotiated).
    pub ok: bool,
    /// e.g. "TLSv1.3", "TLSv1.2".
    pub protocol: Option<String>,
    /// e.g. "TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384".
    pub cipher: Option<String>,
    /// "RSA-PSS", "RSA" (PKCS#1 v1.5), "ECDSA"; None for static RSA.
    pub peer_sig_type: Option<String>,
    /// e.g. "SHA256".
    pub peer_sig_digest: Option<String>,
    /// Server certificate key, "RSA 2048" / "EC 256".
    pub server_key: Option<String>,
    /// "Verify return code: 0 (ok)" seen.
    pub verified: bool,
    /// s_client printed "Reused, ..." (an abbreviated handshake) rather than
    /// "New, ...".
    pub reused: bool,
    /// Status code of the HTTP response, if one arrived.
    pub http_status: Option<u16>,
    /// Everything from the HTTP status line on (headers + body).
    pub http_response: Option<String>,
    /// s_client exit code (None if killed on timeout).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// stdout then stderr of s_client.
    pub raw: String,
}

/// One HTTPS GET to 127.0.0.1:`port` with `openssl s_client`.
/// Sends `GET <path> HTTP/1.1`, `Host`, `Connection: close`, and waits for the
/// server to close (`-ign_eof`).
pub fn tls_get(port: u16, opts: &ClientOpts) -> TlsResult {
    let servername = opts.servername.clone().unwrap_or_else(|| "localhost".into());
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]).args(["-servername", &servername]).args(["-ign_eof", "-showcerts"]);
    match opts.tls {
        Some("1.2") => {
            cmd.arg("-tls1_2");
        }
        Some("1.3") => {
            cmd.arg("-tls1_3");
        }
        Some(other) => panic!("unsupported tls version {other}"),
        None => {}
    }
    if let Some(c) = &opts.cipher {
        cmd.args(["-cipher", c]);
    }
    if let Some(c) = &opts.ciphersuites {
        cmd.args(["-ciphersuites", c]);
    }
    if let Some(s) = &opts.sigalgs {
        cmd.args(["-sigalgs", s]);
    }
    if let Some(f) = &opts.sess_out {
        cmd.arg("-sess_out").arg(f);
    }
    if let Some(f) = &opts.sess_in {
        cmd.arg("-sess_in").arg(f);
    }
    if let Some(ca) = &opts.cafile {
        cmd.arg("-CAfile").arg(ca).arg("-verify_return_error").args(["-verify_hostname", &servername]);
    }
    let path = opts.path.clone().unwrap_or_else(|| "/".into());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {servername}\r\nConnection: close\r\n\r\n");

    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    // s_client reads stdin only after the handshake; the pipe buffers it.
    let _ = stdin.write_all(request.as_bytes());
    drop(stdin);
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + opts.timeout.unwrap_or(Duration::from_secs(20));
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait s_client") {
            Some(st) => break Some(st),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let mut r = parse_s_client(&stdout);
    r.exit_code = status.and_then(|s| s.code());
    r.timed_out = timed_out;
    r.raw = format!("{stdout}\n--- s_client stderr ---\n{stderr}");
    r
}

fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.trim_start().strip_prefix(prefix).map(str::trim)
}

/// Parse the (non -brief) stdout of `openssl s_client` (OpenSSL 3.0).
///
/// Layout notes: "Peer signing digest:" / "Peer signature type:" come before
/// "SSL-Session:" (absent for static-RSA key exchange); the depth-0
/// "a:PKEY: rsaEncryption, 2048 (bit); sigalg: ..." line of "Certificate
/// chain" gives the server key; with TLS 1.3 the session block is printed
/// again per post-handshake ticket, possibly after the HTTP response; a failed
/// handshake prints "Cipher    : 0000" / "Cipher is (NONE)".
pub fn parse_s_client(raw: &str) -> TlsResult {
    let mut r = TlsResult::default();
    let mut in_chain = false;
    for line in raw.lines() {
        if line.starts_with("Certificate chain") {
            in_chain = true;
        } else if in_chain && line.starts_with("---") {
            in_chain = false;
        }
        // Depth-0 entry of the chain: "   a:PKEY: rsaEncryption, 2048 (bit); sigalg: ..."
        if in_chain && r.server_key.is_none() {
            if let Some(v) = after(line, "a:PKEY:") {
                let mut parts = v.split(';').next().unwrap_or("").split(',');
                let alg = parts.next().unwrap_or("").trim();
                let bits = parts.next().unwrap_or("").trim().trim_end_matches("(bit)").trim();
                // OpenSSL 3.5 names an EC key's curve instead of its size:
                // "a:PKEY: EC, (prime256v1); sigalg: ...".
                let bits = match bits {
                    "(prime256v1)" => "256",
                    "(secp384r1)" => "384",
                    "(secp521r1)" => "521",
                    other => other,
                };
                let alg = match alg {
                    "rsaEncryption" => "RSA",
                    "id-ecPublicKey" | "EC" => "EC",
                    "rsassaPss" | "RSASSA-PSS" => "RSA-PSS",
                    other => other,
                };
                r.server_key = Some(format!("{alg} {bits}"));
            }
        }
        if let Some(v) = after(line, "Protocol  :") {
            r.protocol = Some(v.to_string());
        } else if let Some(v) = after(line, "Cipher    :") {
            r.cipher = Some(v.to_string());
        } else if let Some(v) = after(line, "Peer signature type:") {
            // OpenSSL 3.5 prints the TLS SignatureScheme name
            // (rsa_pss_rsae_sha256, rsa_pkcs1_sha256, ecdsa_secp256r1_sha256),
            // 3.0 the key type (RSA-PSS, RSA, ECDSA).
            let t = if v.starts_with("rsa_pss_") {
                "RSA-PSS"
            } else if v.starts_with("rsa_pkcs1_") {
                "RSA"
            } else if v.starts_with("ecdsa_") {
                "ECDSA"
            } else {
                v
            };
            r.peer_sig_type = Some(t.to_string());
        } else if let Some(v) = after(line, "Peer signing digest:") {
            r.peer_sig_digest = Some(v.to_string());
        } else if after(line, "Verify return code: 0 (ok)").is_some() {
            r.verified = true;
        } else if line.starts_with("Reused, ") {
            r.reused = true;
        }
        // Fallback for the key when the chain line is absent.
        if r.server_key.is_none() {
            if let Some(v) = after(line, "Server public key is") {
                r.server_key = Some(format!("? {}", v.trim_end_matches(" bit")));
            }
        }
    }
    // Some versions print "Protocol: TLSv1.3" at top level instead.
    if r.protocol.is_none() {
        r.protocol = raw.lines().find_map(|l| after(l, "Protocol:").map(str::to_string));
    }
    r.ok = matches!(&r.cipher, Some(c) if c != "0000" && c != "(NONE)");
    let status_line = raw.match_indices("HTTP/1.").map(|(i, _)| i).find(|&i| i == 0 || raw.as_bytes()[i - 1] == b'\n');
    if let Some(i) = status_line {
        let resp = &raw[i..];
        r.http_status = resp.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        // The response ends where s_client's own output resumes.
        let end = ["\n---\nPost-Handshake", "\nread R BLOCK", "\nclosed\n", "\nread:errno="]
            .iter()
            .filter_map(|m| resp.find(m))
            .min()
            .unwrap_or(resp.len());
        r.http_response = Some(resp[..end].to_string());
    }
    r
}
