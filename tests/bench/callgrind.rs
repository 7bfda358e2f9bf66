//! Instructions per handshake, counted by valgrind's callgrind: the same
//! for the same binaries and inputs whatever else the machine is doing, so
//! the module's own cost can be told apart from noise that /proc CPU time
//! cannot resolve.
//!
//! Each setup runs as `apache2 -X` (one process, 4 threads) under
//! callgrind with `--dump-before=ap_run_pre_connection`: every connection
//! starts a new dump, so with sequential clients each dump holds exactly
//! one connection (accept, full handshake, GET, close). The token setups
//! use SoftHSM2 directly (no wrapper). For one median dump per cell,
//! callgrind_annotate gives the inclusive cost of the token's calls
//! (C_SignInit + C_Sign, or C_DecryptInit + C_Decrypt, inside SoftHSM2)
//! and, for the file key, of OpenSSL's own private-key operation. Then
//!
//!   overhead = Ir(setup) - Ir(file key) - (Ir(token calls) - Ir(OpenSSL op))
//!
//! is what the key path adds besides the key operation itself.
//!
//! The key service (`HSMSSLKeyService On`) cannot run under `-X`: it only
//! answers children of httpd's parent. That setup runs as `apache2 -D
//! FOREGROUND` (parent, one child of 4 threads, the key service), valgrind
//! following the forks, one output file per process (`cg.out.<pid>.<n>`).
//! The child dumps per connection as above; the key service dumps before
//! each C_SignInit / C_DecryptInit, so with sequential clients each of its
//! dumps holds exactly one operation (answer, read of the next request,
//! token calls). Its median dump is added to the child's: Ir(setup) is
//! child + key service per handshake, the token's calls counted where
//! they run (in the service), so the overhead compares with the
//! in-process module's on the same terms. The parent's instructions are
//! not counted (under `-X` there is no parent either).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{self, Scenario};
use crate::common::*;
use crate::setup::{Bench, Kind};

/// One process, a few threads: less for valgrind to serialize.
const MPM: &str = "StartServers 1\nServerLimit 1\nThreadLimit 4\nThreadsPerChild 4\nMaxRequestWorkers 4\n\
    MinSpareThreads 1\nMaxSpareThreads 4";

#[derive(Clone, Debug)]
pub struct CgCell {
    pub kind: Kind,
    pub scenario: Scenario,
    pub handshakes: usize,
    /// Median instructions of one connection (with the key service: the
    /// child's plus the service's per operation).
    pub ir: f64,
    /// Of `ir`, the key service's median per operation (key service only).
    pub service_ir: Option<f64>,
    /// Inclusive instructions of the token's calls in that connection.
    pub token_ir: Option<f64>,
    /// Inclusive instructions of OpenSSL's private-key operation (file key).
    pub openssl_op_ir: Option<f64>,
}

/// OpenSSL 3.0's exported function that does the scenario's private-key
/// operation for a file key (providers/implementations/{signature,asymcipher}).
fn openssl_op(s: Scenario) -> &'static str {
    match s {
        Scenario::Tls13RsaPss => "RSA_private_encrypt",
        Scenario::Tls12EcdheRsa => "RSA_sign",
        Scenario::Tls12RsaKx => "RSA_private_decrypt",
        Scenario::Tls13Ecdsa => "ECDSA_sign_ex",
    }
}

const TOKEN_CALLS: [&str; 4] = ["C_SignInit", "C_Sign", "C_DecryptInit", "C_Decrypt"];

/// The dump trigger of the child's connections.
const CONNECTION_TRIGGER: &str = "ap_run_pre_connection";

/// One callgrind dump file: its process, number and path.
struct Dump {
    pid: u32,
    part: u64,
    path: PathBuf,
}

struct Valgrind {
    child: Child,
    out_dir: PathBuf,
    port: u16,
    /// Run as parent, child and key service (not `-X`).
    service: bool,
}

impl Drop for Valgrind {
    fn drop(&mut self) {
        kill(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Valgrind {
    /// `apache` under callgrind: `-X`, or with `service` (the key
    /// service setup) as a parent with one child and the key service.
    fn start(apache: &Apache, service: bool) -> Valgrind {
        let out_dir = apache.root.join("callgrind");
        std::fs::create_dir_all(&out_dir).unwrap();
        // The dumps are written after httpd has switched to www-data.
        chmod(&out_dir, 0o777);
        let log = std::fs::File::create(apache.root.join("logs/valgrind.out")).unwrap();
        let mut cmd = Command::new("valgrind");
        // Instrumented from the start. Turning it on later takes
        // callgrind_control, whose vgdb makes valgrind reopen its FIFOs in
        // /tmp after a lost connection; they are root's (made before httpd
        // switched to www-data), so valgrind then dies ("vgdb FIFO cannot
        // be opened"; seen in CI). --vgdb=no: no FIFOs at all.
        cmd.args(["--tool=callgrind", "--vgdb=no"]).arg(format!("--dump-before={CONNECTION_TRIGGER}"));
        if service {
            // Only the key service makes these calls: one dump per operation.
            cmd.args(["--dump-before=C_SignInit", "--dump-before=C_DecryptInit"]);
        }
        cmd.arg(format!("--callgrind-out-file={}", out_dir.join("cg.out.%p").display()))
            .arg(APACHE_BIN)
            .args(if service { &["-D", "FOREGROUND"][..] } else { &["-X"][..] })
            .arg("-d")
            .arg(&apache.root)
            .arg("-f")
            .arg(&apache.conf_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in &apache.cfg.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("run valgrind (scripts/install-deps.sh installs it)");
        let mut v = Valgrind { child, out_dir, port: apache.port, service };
        v.wait_listening(&apache.root);
        v
    }

    fn wait_listening(&mut self, root: &Path) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("apache2 under valgrind ended ({st}) before it listened; see {}", root.join("logs").display());
            }
            assert!(Instant::now() < deadline, "apache2 under valgrind did not listen within 10 minutes; see {}", root.join("logs").display());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every dump so far, by process and number.
    fn dumps(&self) -> Vec<Dump> {
        let mut v: Vec<Dump> = std::fs::read_dir(&self.out_dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let (pid, part) = name.strip_prefix("cg.out.")?.split_once('.')?;
                Some(Dump { pid: pid.parse().ok()?, part: part.parse().ok()?, path: e.path() })
            })
            .collect();
        v.sort_by_key(|d| (d.pid, d.part));
        v
    }

    /// The last `n` dumps of the process (other than the parent under
    /// `apache2 -D FOREGROUND`) whose dumps `trigger` made, in order.
    fn last_dumps(&self, trigger: &dyn Fn(&str) -> bool, n: usize) -> Vec<PathBuf> {
        let all: Vec<Dump> = self.dumps().into_iter().filter(|d| dump_trigger(&d.path).is_some_and(|t| trigger(&t))).collect();
        let mut pids: Vec<u32> = all.iter().map(|d| d.pid).collect();
        pids.dedup();
        // Under -X the only process is valgrind's own; otherwise that is
        // httpd's parent, which also loads the token at startup: not counted.
        let pid = pids.iter().copied().filter(|p| !self.service || *p != self.child.id()).max_by_key(|p| all.iter().filter(|d| d.pid == *p).count());
        let mine: Vec<PathBuf> = all.into_iter().filter(|d| Some(d.pid) == pid).map(|d| d.path).collect();
        mine[mine.len().saturating_sub(n)..].to_vec()
    }
}

/// What made callgrind write a dump (its `desc: Trigger:` line).
fn dump_trigger(dump: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dump).ok()?;
    text.lines().take(100).find_map(|l| l.strip_prefix("desc: Trigger:")).map(|t| t.trim().to_string())
}

/// Total instructions of a dump (its `summary:` or `totals:` line).
fn total_ir(dump: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dump).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Inclusive instructions per function, from callgrind_annotate:
/// (function, object, Ir).
fn inclusive(dump: &Path) -> Vec<(String, String, f64)> {
    let out = Command::new("callgrind_annotate").args(["--inclusive=yes", "--threshold=100"]).arg(dump).output().expect("run callgrind_annotate");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            // "  1,234,567 (12.34%)  file:function [object]"
            let l = l.trim_start();
            let (num, rest) = l.split_once(' ')?;
            let ir: f64 = num.replace(',', "").parse().ok()?;
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('(')?.split_once(')')?.1.trim();
            let (loc, obj) = match rest.rsplit_once(" [") {
                Some((a, b)) => (a, b.trim_end_matches(']')),
                None => (rest, ""),
            };
            let func = loc.rsplit_once(':').map(|(_, f)| f).unwrap_or(loc);
            Some((func.to_string(), obj.to_string(), ir))
        })
        .collect()
}

fn median_index(v: &[f64]) -> usize {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|a, b| v[*a].partial_cmp(&v[*b]).unwrap());
    idx[idx.len() / 2]
}

/// `kinds`: the setups to count (the file key always, the others' overhead
/// is relative to it).
pub fn measure(bench: &Bench, kinds: &[Kind], scenarios: &[Scenario], works: impl Fn(Kind, Scenario) -> bool, n: usize) -> Vec<CgCell> {
    let mut cells = Vec::new();
    for kind in [Kind::FileKey, Kind::Module, Kind::ModuleService, Kind::Engine] {
        if kind != Kind::FileKey && !kinds.contains(&kind) {
            continue;
        }
        let todo: Vec<Scenario> = scenarios.iter().copied().filter(|s| works(kind, *s)).collect();
        if todo.is_empty() {
            continue;
        }
        let service = kind == Kind::ModuleService;
        let apache = bench.config(kind, &bench.certs, Path::new(SOFTHSM_LIB), &format!("cg-{}", kind.slug())).global(MPM).build();
        bench.token.share();
        eprintln!("callgrind: {} under valgrind (startup takes a while)", kind.name());
        let vg = Valgrind::start(&apache, service);
        for s in todo {
            let connector = s.connector(&bench.ca);
            for _ in 0..2 {
                client::one_request(vg.port, &connector).expect("warm-up request under valgrind");
            }
            for _ in 0..=n {
                client::one_request(vg.port, &connector).expect("request under valgrind");
            }
            // The dump made as request i+1 began holds request i.
            let mine = vg.last_dumps(&|t| t.contains(CONNECTION_TRIGGER), n);
            assert!(mine.len() >= n, "callgrind wrote {} connection dumps, expected at least {n}", mine.len());
            let irs: Vec<f64> = mine.iter().map(|d| total_ir(d).unwrap_or(f64::NAN)).collect();
            let mid = median_index(&irs);
            // The key service: the dump made as operation i+1 began holds
            // operation i (its token calls, answer, the next request's read).
            let svc = if service {
                let ops = vg.last_dumps(&|t| t.contains("C_SignInit") || t.contains("C_DecryptInit"), n);
                assert!(ops.len() >= n, "the key service wrote {} operation dumps under callgrind, expected at least {n}", ops.len());
                let irs: Vec<f64> = ops.iter().map(|d| total_ir(d).unwrap_or(f64::NAN)).collect();
                let mid = median_index(&irs);
                Some((irs[mid], inclusive(&ops[mid])))
            } else {
                None
            };
            // The token's calls: where they run (the key service, or the child).
            let incl = match &svc {
                Some((_, incl)) => incl.clone(),
                None => inclusive(&mine[mid]),
            };
            let sum = |pred: &dyn Fn(&str, &str) -> bool| -> Option<f64> {
                let v: Vec<f64> = incl.iter().filter(|(f, o, _)| pred(f, o)).map(|(_, _, ir)| *ir).collect();
                (!v.is_empty()).then(|| v.iter().sum())
            };
            let token_ir = sum(&|f, o| o.contains("libsofthsm2") && TOKEN_CALLS.contains(&f));
            let op = openssl_op(s);
            // Only the file key's counts: in a token setup the same
            // function also runs inside SoftHSM2.
            let openssl_op_ir = if kind == Kind::FileKey { sum(&|f, o| o.contains("libcrypto") && f == op) } else { None };
            let service_ir = svc.map(|(ir, _)| ir);
            let cell = CgCell { kind, scenario: s, handshakes: n, ir: irs[mid] + service_ir.unwrap_or(0.0), service_ir, token_ir, openssl_op_ir };
            eprintln!(
                "callgrind {} / {}: {:.0} instructions per connection (key service {:?}), token calls {:?}, OpenSSL op {:?}",
                kind.name(),
                s.name(),
                cell.ir,
                cell.service_ir,
                cell.token_ir,
                cell.openssl_op_ir
            );
            cells.push(cell);
        }
    }
    cells
}

/// `overhead` of the module's header, in instructions.
pub fn overhead(cells: &[CgCell], kind: Kind, s: Scenario) -> Option<f64> {
    let find = |k: Kind| cells.iter().find(|c| c.kind == k && c.scenario == s);
    let setup = find(kind)?;
    let file = find(Kind::FileKey)?;
    Some(setup.ir - file.ir - (setup.token_ir? - file.openssl_op_ir?))
}
