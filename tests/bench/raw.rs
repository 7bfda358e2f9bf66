//! The token's raw limit, measured the same day as the handshakes: private
//! key operations per second through cryptoki straight into SoftHSM2 (no
//! wrapper, no module), with 1 and 2 threads, against OpenSSL doing the same
//! operation on the same key from its PEM file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use mod_hsm_ssl::tls::digest::Digest;
use mod_hsm_ssl::tls::key::{Public, CURVES};
use mod_hsm_ssl::tls::sigcheck::{Scheme, SigCheck};
use openssl::pkey::{PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;

use crate::client::Scenario;

/// One operation's rates (operations per second).
#[derive(Clone, Debug)]
pub struct RawRate {
    pub op: &'static str,
    pub token_1: f64,
    pub token_2: f64,
    pub openssl_1: f64,
    pub openssl_2: f64,
    /// CPU microseconds of the module's check of one such signature
    /// (`SigCheck::verifies`, one thread); None for a decryption.
    pub check_us: Option<f64>,
}

impl RawRate {
    /// CPU the token spends per operation beyond what OpenSSL spends on the
    /// same operation, in microseconds (single-thread rates: one core each).
    pub fn token_extra_us(&self) -> f64 {
        1e6 / self.token_1 - 1e6 / self.openssl_1
    }
}

/// Input and mechanism of the operation a scenario needs.
struct Op {
    name: &'static str,
    label: &'static str,
    decrypt: bool,
    /// Made per call: a Mechanism holds raw pointers and is not Sync.
    mech: fn() -> Mechanism<'static>,
    input: Vec<u8>,
    /// The same operation in OpenSSL.
    openssl: fn(&PKey<Private>, &[u8]) -> Vec<u8>,
    /// How the module checks the signature (None: a decryption).
    check: Option<Scheme>,
}

fn ops(rsa: &PKey<Private>) -> Vec<(Scenario, Op)> {
    let hash = vec![0x5a; 32];
    // DigestInfo(SHA-256) || hash: what TLS 1.2 signs with PKCS#1 v1.5.
    let mut digest_info = vec![0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
    digest_info.extend_from_slice(&hash);
    // A TLS premaster secret encrypted to the RSA key.
    let premaster = {
        let ctx_key = PKey::public_key_from_der(&rsa.public_key_to_der().expect("public DER")).expect("public key");
        let mut ctx = PkeyCtx::new(&ctx_key).expect("ctx");
        ctx.encrypt_init().expect("encrypt_init");
        ctx.set_rsa_padding(Padding::PKCS1).expect("padding");
        let mut out = Vec::new();
        let mut pms = vec![3u8, 3];
        pms.extend_from_slice(&[0x42; 46]);
        ctx.encrypt_to_vec(&pms, &mut out).expect("encrypt");
        out
    };
    fn pss() -> Mechanism<'static> {
        Mechanism::RsaPkcsPss(PkcsPssParams { hash_alg: MechanismType::SHA256, mgf: PkcsMgfType::MGF1_SHA256, s_len: 32u64.into() })
    }
    vec![
        (
            Scenario::Tls13RsaPss,
            Op {
                name: "RSA-2048 PSS sign",
                label: "bench-rsa",
                decrypt: false,
                mech: pss,
                input: hash.clone(),
                openssl: openssl_pss,
                check: Some(Scheme::Pss { md: Digest::Sha256, mgf1: Digest::Sha256, salt: 32 }),
            },
        ),
        (
            Scenario::Tls12EcdheRsa,
            Op {
                name: "RSA-2048 PKCS#1 sign",
                label: "bench-rsa",
                decrypt: false,
                mech: || Mechanism::RsaPkcs,
                input: digest_info,
                openssl: openssl_pkcs1_raw,
                check: Some(Scheme::Pkcs1(None)),
            },
        ),
        (
            Scenario::Tls12RsaKx,
            Op {
                name: "RSA-2048 PKCS#1 decrypt",
                label: "bench-rsa",
                decrypt: true,
                mech: || Mechanism::RsaPkcs,
                input: premaster,
                openssl: openssl_decrypt,
                check: None,
            },
        ),
        (
            Scenario::Tls13Ecdsa,
            Op {
                name: "ECDSA P-256 sign",
                label: "bench-ec",
                decrypt: false,
                mech: || Mechanism::Ecdsa,
                input: hash,
                openssl: openssl_ecdsa,
                check: Some(Scheme::Ecdsa),
            },
        ),
    ]
}

fn openssl_pss(k: &PKey<Private>, hash: &[u8]) -> Vec<u8> {
    let mut ctx = PkeyCtx::new(k).expect("ctx");
    ctx.sign_init().expect("sign_init");
    ctx.set_rsa_padding(Padding::PKCS1_PSS).expect("padding");
    ctx.set_signature_md(openssl::md::Md::sha256()).expect("md");
    ctx.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH).expect("salt");
    let mut out = Vec::new();
    ctx.sign_to_vec(hash, &mut out).expect("PSS sign");
    out
}

fn openssl_pkcs1_raw(k: &PKey<Private>, digest_info: &[u8]) -> Vec<u8> {
    let mut ctx = PkeyCtx::new(k).expect("ctx");
    ctx.sign_init().expect("sign_init");
    ctx.set_rsa_padding(Padding::PKCS1).expect("padding");
    let mut out = Vec::new();
    ctx.sign_to_vec(digest_info, &mut out).expect("PKCS#1 sign");
    out
}

fn openssl_decrypt(k: &PKey<Private>, ct: &[u8]) -> Vec<u8> {
    let mut ctx = PkeyCtx::new(k).expect("ctx");
    ctx.decrypt_init().expect("decrypt_init");
    ctx.set_rsa_padding(Padding::PKCS1).expect("padding");
    let mut out = Vec::new();
    ctx.decrypt_to_vec(ct, &mut out).expect("decrypt");
    out
}

fn openssl_ecdsa(k: &PKey<Private>, hash: &[u8]) -> Vec<u8> {
    let mut ctx = PkeyCtx::new(k).expect("ctx");
    ctx.sign_init().expect("sign_init");
    let mut out = Vec::new();
    ctx.sign_to_vec(hash, &mut out).expect("ECDSA sign");
    out
}

/// The public half of a PEM key as the module holds it.
fn public_of(k: &PKey<Private>) -> Public {
    if let Ok(rsa) = k.rsa() {
        return Public::Rsa { n: rsa.n().to_vec(), e: rsa.e().to_vec() };
    }
    let ec = k.ec_key().expect("an RSA or EC key");
    let mut bn = openssl::bn::BigNumContext::new().expect("BN_CTX");
    let point = ec.public_key().to_bytes(ec.group(), openssl::ec::PointConversionForm::UNCOMPRESSED, &mut bn).expect("EC point");
    let curve = CURVES.iter().find(|c| c.bits == ec.group().degree()).expect("a curve the module serves");
    Public::Ec { curve, point }
}

/// Microseconds of the module's signature check (`SigCheck::verifies`, as
/// after every token signature) per signature, one thread.
fn check_cost(key: &PKey<Private>, op: &Op, scheme: Scheme, secs: f64) -> f64 {
    let sig = (op.openssl)(key, &op.input);
    let check = SigCheck::new(&public_of(key)).expect("signature check key");
    assert_eq!(check.verifies(scheme, &op.input, &sig), Ok(true), "{}: OpenSSL's own signature does not pass the check", op.name);
    1e6 / rate(1, secs, |stop, count| {
        while !stop.load(Ordering::Relaxed) {
            check.verifies(scheme, &op.input, &sig).expect("check runs");
            count.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Runs `work` on `threads` threads for `secs`; operations per second.
fn rate(threads: usize, secs: f64, work: impl Fn(&AtomicBool, &AtomicU64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| work(&stop, &count));
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Measures every scenario's operation. `softhsm_conf`: the token's
/// SOFTHSM2_CONF (set for this process: nothing else here uses SoftHSM2
/// in-process).
pub fn measure(softhsm_conf: &Path, token_label: &str, pin: &str, rsa_pem: &Path, ec_pem: &Path, secs: f64) -> Vec<(Scenario, RawRate)> {
    std::env::set_var("SOFTHSM2_CONF", softhsm_conf);
    let ctx = Arc::new(Pkcs11::new(crate::common::SOFTHSM_LIB).expect("load SoftHSM2"));
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("C_Initialize");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| ctx.get_token_info(*s).map(|i| i.label() == token_label).unwrap_or(false))
        .expect("bench token present");
    let login = ctx.open_ro_session(slot).expect("session");
    login.login(UserType::User, Some(&AuthPin::new(pin.into()))).expect("login");
    let rsa = PKey::private_key_from_pem(&std::fs::read(rsa_pem).unwrap()).expect("RSA PEM");
    let ec = PKey::private_key_from_pem(&std::fs::read(ec_pem).unwrap()).expect("EC PEM");
    let mut out = Vec::new();
    for (scenario, op) in ops(&rsa) {
        let handle = *login
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(op.label.as_bytes().to_vec())])
            .expect("find key")
            .first()
            .expect("bench key on the token");
        let token = |threads| {
            rate(threads, secs, |stop, count| {
                let s = ctx.open_ro_session(slot).expect("session");
                while !stop.load(Ordering::Relaxed) {
                    let r = if op.decrypt { s.decrypt(&(op.mech)(), handle, &op.input) } else { s.sign(&(op.mech)(), handle, &op.input) };
                    r.expect("token operation");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let key = if op.label == "bench-ec" { &ec } else { &rsa };
        let soft = |threads| {
            rate(threads, secs, |stop, count| {
                while !stop.load(Ordering::Relaxed) {
                    (op.openssl)(key, &op.input);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let check_us = op.check.map(|scheme| check_cost(key, &op, scheme, secs));
        let r = RawRate { op: op.name, token_1: token(1), token_2: token(2), openssl_1: soft(1), openssl_2: soft(2), check_us };
        eprintln!(
            "raw {}: token {:.0}/s (1 thread) {:.0}/s (2); OpenSSL {:.0}/s (1) {:.0}/s (2); signature check {}",
            r.op,
            r.token_1,
            r.token_2,
            r.openssl_1,
            r.openssl_2,
            r.check_us.map_or("none".to_string(), |us| format!("{us:.1} us"))
        );
        out.push((scenario, r));
    }
    drop(login);
    out
}

/// `openssl speed` for RSA-2048 and ECDSA P-256, its summary lines.
pub fn openssl_speed(secs: u32) -> String {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", &secs.to_string(), "rsa2048", "ecdsap256"])
        .output()
        .expect("run openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("sign/s") || l.starts_with("rsa 2048") || l.contains("ecdsa (nistp256)"))
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one cost the module adds per token call that callgrind cannot see:
/// handing the call to a helper thread and waiting for it (two thread
/// wake-ups). Process CPU time (user + system, all threads) per empty
/// round trip through the module's executor, and the wall time.
pub struct Hop {
    pub cpu_us: f64,
    pub wall_us: f64,
    /// Context switches (voluntary + involuntary, all threads) per call.
    pub switches: f64,
}

pub fn executor_hop(secs: f64) -> Hop {
    /// (CPU seconds, context switches) of this process, all threads.
    fn usage() -> (f64, f64) {
        // SAFETY: rusage is plain data (all-zero is valid); getrusage fills
        // the struct we pass for RUSAGE_SELF.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru
        };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        (t(ru.ru_utime) + t(ru.ru_stime), (ru.ru_nvcsw + ru.ru_nivcsw) as f64)
    }
    let limit = Duration::from_secs(5);
    // Warm up: the first call starts the helper thread.
    mod_hsm_ssl::pkcs11::executor::run(limit, || ()).expect("executor");
    let (u0, t0) = (usage(), Instant::now());
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..100 {
            mod_hsm_ssl::pkcs11::executor::run(limit, || ()).expect("executor");
        }
        n += 100;
    }
    let u1 = usage();
    let hop =
        Hop { cpu_us: (u1.0 - u0.0) * 1e6 / n as f64, wall_us: t0.elapsed().as_secs_f64() * 1e6 / n as f64, switches: (u1.1 - u0.1) / n as f64 };
    eprintln!("executor hop: {:.1} us CPU, {:.1} us wall, {:.2} context switches per call ({n} calls)", hop.cpu_us, hop.wall_us, hop.switches);
    hop
}
