//! The servers of the benchmark, built from one token, one pair of
//! keys and one pair of certificates, so that only the key path differs:
//!
//! * file key: mod_ssl reads the PEM keys;
//! * mod_hsm_ssl: the module in-process (`HSMSSLKeyService Off`), the
//!   keys inside the token;
//! * mod_hsm_ssl with `HSMSSLDirectCalls On`: the same, token calls on
//!   the worker thread (no helper-thread hop);
//! * mod_hsm_ssl with `HSMSSLKeyService On` (the default): every token call in
//!   the key service process (`hsm_ssl-keys`, a child of httpd's parent),
//!   the children sending their operations over its Unix socket;
//! * libp11 engine: mod_ssl with libp11's `pkcs11` ENGINE and the same
//!   token keys, our module not loaded.
//!
//! The keys are made in software and imported into the token with the
//! repo's key tool (the file-key server needs the same keys on disk; a
//! deployment would generate them inside the HSM). Both token setups reach
//! SoftHSM2 through the p11wrap wrapper in its shared-memory mode, which
//! counts calls per function and can add latency per call, without a file
//! write per call.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::shm::Shm;

/// MPM settings shared by all: two children with 32 threads each,
/// never replaced during a run (no spare-thread reaping, no request limit).
const MPM: &str = "StartServers 2\nServerLimit 2\nThreadLimit 32\nThreadsPerChild 32\nMaxRequestWorkers 64\n\
    MinSpareThreads 1\nMaxSpareThreads 64\nMaxConnectionsPerChild 0\nListenBacklog 512";

/// libp11's engine as Debian installs it (libengine-pkcs11-openssl).
pub const LIBP11_ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    FileKey,
    Module,
    /// The module with `HSMSSLDirectCalls On` (no helper-thread hop).
    ModuleDirect,
    /// The module with `HSMSSLKeyService On` (token calls in the key service).
    ModuleService,
    Engine,
}

impl Kind {
    pub fn slug(self) -> &'static str {
        match self {
            Kind::FileKey => "file",
            Kind::Module => "module",
            Kind::ModuleDirect => "module-direct",
            Kind::ModuleService => "module-service",
            Kind::Engine => "engine",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::FileKey => "file key",
            Kind::Module => "mod_hsm_ssl",
            Kind::ModuleDirect => "mod_hsm_ssl direct calls",
            Kind::ModuleService => "mod_hsm_ssl key service",
            Kind::Engine => "libp11 engine",
        }
    }

    /// Any form of the module.
    pub fn is_module(self) -> bool {
        matches!(self, Kind::Module | Kind::ModuleDirect | Kind::ModuleService)
    }
}

/// Every server of the benchmark, in the order the cells run.
pub const KINDS: [Kind; 5] = [Kind::FileKey, Kind::Module, Kind::ModuleDirect, Kind::ModuleService, Kind::Engine];

/// `/proc/<pid>/comm` of the key service (src/keyservice/service.rs).
pub const KEY_SERVICE_COMM: &str = "hsm_ssl-keys";

/// The key service processes among the children of httpd's parent
/// `master` (whatever their command line).
pub fn key_service_pids(master: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut v: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| ppid_of(p) == Some(master) && pid_alive(p))
        .filter(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == KEY_SERVICE_COMM))
        .collect();
    v.sort();
    v
}

/// Every process of `apache` whose CPU counts: the parent, its children
/// with httpd's command line and the key service (a fork of the parent,
/// so it has that command line too; added here whatever it is).
pub fn server_pids(apache: &Apache) -> Vec<i32> {
    let mut v = apache.pids();
    if let Some(master) = apache.master_pid() {
        for p in key_service_pids(master) {
            if !v.contains(&p) {
                v.push(p);
            }
        }
    }
    v
}

pub struct Server {
    pub kind: Kind,
    pub apache: Apache,
    /// The wrapper's counters and latency knob (token setups only).
    pub shm: Option<Shm>,
}

pub struct Bench {
    pub token: Token,
    pub pki: TestDir,
    pub ca: PathBuf,
    pub rsa_key: PathBuf,
    pub ec_key: PathBuf,
    pub servers: Vec<Server>,
    /// (certificate, token label) of the RSA and the EC key.
    pub certs: [(PathBuf, &'static str); 2],
}

const PIN_ENV: &str = "HSM_BENCH_PIN";

impl Bench {
    pub fn new() -> Bench {
        let token = Token::new("bench");
        let pki = TestDir::new("bench-pki");
        let ca = ca_cert(pki.path());
        let (rsa_key, rsa_pub) = file_key(pki.path(), "bench-rsa", "rsa:2048");
        let (ec_key, ec_pub) = file_key(pki.path(), "bench-ec", "ec:prime256v1");
        // The RSA key decrypts: the benchmark measures TLS 1.2 RSA key exchange.
        for (label, key, usage) in [("bench-rsa", &rsa_key, "sign,decrypt"), ("bench-ec", &ec_key, "sign")] {
            // The tool removes nothing; the file-key server still needs it.
            run_ok(
                Command::new(env!("CARGO_BIN_EXE_hsm-ssl-keytool"))
                    .args(["import", "--library", SOFTHSM_LIB, "--token", &token.label, "--pin", &format!("env:{PIN_ENV}")])
                    .args(["--label", label, "--usage", usage, "--key"])
                    .arg(key)
                    .env("SOFTHSM2_CONF", &token.conf)
                    .env(PIN_ENV, &token.pin),
            );
        }
        token.share();
        let rsa_cert = make_cert(pki.path(), &rsa_pub, "bench-rsa", &["localhost"]);
        let ec_cert = make_cert(pki.path(), &ec_pub, "bench-ec", &["localhost"]);
        // Everything a child reads must be readable by www-data; the keys
        // only by root (the parent reads them before dropping privileges).
        for f in [&rsa_cert, &ec_cert, &ca] {
            chmod(f, 0o644);
        }
        let certs = [(rsa_cert, "bench-rsa"), (ec_cert, "bench-ec")];
        let mut bench = Bench { token, pki, ca, rsa_key, ec_key, servers: Vec::new(), certs };
        for kind in KINDS {
            let server = bench.server(kind, &bench.certs);
            bench.servers.push(server);
        }
        bench
    }

    fn server(&self, kind: Kind, certs: &[(PathBuf, &str); 2]) -> Server {
        let wrap = p11wrap_path();
        let mut cfg = self.config(kind, certs, &wrap, &format!("bench-{}", kind.slug())).global(MPM);
        let mut shm = None;
        if kind != Kind::FileKey {
            let s = Shm::create(&self.pki.path().join(format!("p11wrap-{}.shm", kind.slug())));
            cfg = cfg.env(crate::shm::ENV, &s.path.display().to_string());
            shm = Some(s);
        }
        let mut apache = cfg.build();
        if let Err(e) = apache.start() {
            panic!("the {} server did not start: {e:?}", kind.name());
        }
        Server { kind, apache, shm }
    }

    /// The configuration of one setup, its token setups reaching the token
    /// through `library` (the wrapper, or SoftHSM2 itself).
    pub fn config(&self, kind: Kind, certs: &[(PathBuf, &str); 2], library: &Path, name: &str) -> ApacheConfig {
        let mut cfg = ApacheConfig::new(name).log_level("warn");
        let mut body = String::new();
        for (cert, label) in certs {
            let key = match kind {
                Kind::FileKey => (if *label == "bench-rsa" { &self.rsa_key } else { &self.ec_key }).display().to_string(),
                Kind::Module | Kind::ModuleDirect | Kind::ModuleService | Kind::Engine => self.token.key_uri(label),
            };
            body += &format!("SSLCertificateFile {}\nSSLCertificateKeyFile \"{key}\"\n", cert.display());
        }
        cfg = cfg.vhost(&ssl_vhost("localhost", &body));
        match kind {
            Kind::FileKey => cfg,
            Kind::Module | Kind::ModuleDirect | Kind::ModuleService => cfg
                .token(&self.token)
                .hsm_module()
                .global(&format!("HSMSSLLibrary {}\nHSMSSLPin env:{PIN_ENV}", library.display()))
                .global(match kind {
                    // The in-process path is named: the key service is the
                    // module's default.
                    Kind::ModuleDirect => "HSMSSLKeyService Off\nHSMSSLDirectCalls On",
                    Kind::ModuleService => "HSMSSLKeyService On",
                    _ => "HSMSSLKeyService Off",
                })
                .env(PIN_ENV, &self.token.pin),
            Kind::Engine => {
                let conf = engine_openssl_conf(self.pki.path(), name, library, &self.token.pin);
                cfg.token(&self.token).env("OPENSSL_CONF", &conf.display().to_string())
            }
        }
    }
}

/// An OpenSSL configuration that makes libp11's engine use `module` (the
/// counting wrapper in front of SoftHSM2) and log in with `pin`.
fn engine_openssl_conf(dir: &Path, name: &str, module: &Path, pin: &str) -> PathBuf {
    let path = dir.join(format!("openssl-{name}.cnf"));
    let text = format!(
        "# generated by tests/bench/setup.rs: libp11's engine for mod_ssl\n\
         openssl_conf = openssl_init\n\n\
         [openssl_init]\nengines = engine_section\n\n\
         [engine_section]\npkcs11 = pkcs11_section\n\n\
         [pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {LIBP11_ENGINE}\nMODULE_PATH = {}\nPIN = {pin}\ninit = 0\n",
        module.display()
    );
    std::fs::write(&path, text).expect("write the engine's openssl.cnf");
    chmod(&path, 0o644);
    path
}
