//! Full-handshake benchmark: file key vs mod_hsm_ssl vs libp11's engine,
//! on one machine, one token, one certificate pair (see BENCHMARKS.md for
//! the latest report and docs/development.md "Benchmark" for how to run it).
//!
//! `scripts/bench.sh [options]` builds in release mode and runs this as
//! `cargo bench --bench handshake -- [options]`:
//!
//! ```text
//! --short             a few seconds per cell (CI): 1 s cells, 1 repetition
//! --seconds S         measured seconds per cell (default 5)
//! --warmup S          unmeasured seconds before each cell (default 1)
//! --reps N            repetitions of the whole matrix (default 3)
//! --concurrency LIST  e.g. 1,8,32 (default)
//! --scenarios LIST    slugs: tls13-rsa-pss,tls12-ecdhe-rsa,tls12-rsa-kx,tls13-ecdsa-p256
//! --setups LIST       file,module,module-direct,module-service,engine,
//!                     module-1ms,module-service-1ms,engine-1ms,module-5ms,
//!                     module-service-5ms,engine-5ms (default: all)
//! --out DIR           results folder (default target/bench/<UTC time>)
//! --callgrind N       connections per callgrind cell (default 20, short 3, 0: skip);
//!                     the file key and the setups of --setups
//! --update-doc        also write BENCHMARKS.md and tests/bench/latest/
//! ```
//!
//! The cells run interleaved: for each repetition, scenario and
//! concurrency, the setups run one after the other (in the order of
//! VARIANTS), so machine noise hits all alike; medians over the
//! repetitions are reported. Speed never fails the run; a setup
//! that should work and does not (file key and module in every scenario),
//! or a module that does other than one token operation per handshake,
//! makes it exit 1.

#[path = "../common/mod.rs"]
mod common;

mod callgrind;
mod client;
mod raw;
mod report;
mod setup;
mod shm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use client::{Load, Scenario, SCENARIOS};
use setup::{Bench, Kind};

/// One column of the matrix: a server and the latency added per token call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub kind: Kind,
    pub latency_ms: u64,
}

impl Variant {
    pub fn slug(self) -> String {
        let base = self.kind.slug();
        if self.latency_ms == 0 {
            base.to_string()
        } else {
            format!("{base}-{}ms", self.latency_ms)
        }
    }

    pub fn name(self) -> String {
        if self.latency_ms == 0 {
            self.kind.name().to_string()
        } else {
            format!("{} +{} ms/call", self.kind.name(), self.latency_ms)
        }
    }
}

/// The key service's variants right after the in-process module's, so
/// that the pairs compared run side by side.
pub const VARIANTS: [Variant; 11] = [
    Variant { kind: Kind::FileKey, latency_ms: 0 },
    Variant { kind: Kind::Module, latency_ms: 0 },
    Variant { kind: Kind::ModuleService, latency_ms: 0 },
    Variant { kind: Kind::ModuleDirect, latency_ms: 0 },
    Variant { kind: Kind::Engine, latency_ms: 0 },
    Variant { kind: Kind::Module, latency_ms: 1 },
    Variant { kind: Kind::ModuleService, latency_ms: 1 },
    Variant { kind: Kind::Engine, latency_ms: 1 },
    Variant { kind: Kind::Module, latency_ms: 5 },
    Variant { kind: Kind::ModuleService, latency_ms: 5 },
    Variant { kind: Kind::Engine, latency_ms: 5 },
];

pub struct Options {
    pub short: bool,
    pub seconds: f64,
    pub warmup: f64,
    pub reps: usize,
    pub concurrency: Vec<usize>,
    pub scenarios: Vec<Scenario>,
    pub variants: Vec<Variant>,
    pub out: PathBuf,
    pub update_doc: bool,
    /// Connections measured per callgrind cell (0: no callgrind stage).
    pub callgrind: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("handshake bench: {msg}\n(see the options at the top of tests/bench/handshake.rs)");
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut o = Options {
        short: false,
        seconds: 5.0,
        warmup: 1.0,
        reps: 3,
        concurrency: vec![1, 8, 32],
        scenarios: SCENARIOS.to_vec(),
        variants: VARIANTS.to_vec(),
        out: PathBuf::new(),
        update_doc: false,
        callgrind: 20,
    };
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            "--short" => {
                o.short = true;
                o.seconds = 1.0;
                o.warmup = 0.3;
                o.reps = 1;
                o.callgrind = 3;
            }
            "--callgrind" => o.callgrind = value().parse().unwrap_or_else(|_| usage("--callgrind: a whole number")),
            "--seconds" => o.seconds = value().parse().unwrap_or_else(|_| usage("--seconds: a number")),
            "--warmup" => o.warmup = value().parse().unwrap_or_else(|_| usage("--warmup: a number")),
            "--reps" => o.reps = value().parse().unwrap_or_else(|_| usage("--reps: a whole number")),
            "--concurrency" => {
                o.concurrency = value().split(',').map(|c| c.parse().unwrap_or_else(|_| usage("--concurrency: e.g. 1,8,32"))).collect()
            }
            "--scenarios" => {
                o.scenarios = value().split(',').map(|s| Scenario::from_slug(s).unwrap_or_else(|| usage(&format!("unknown scenario {s}")))).collect()
            }
            "--setups" => {
                o.variants = value()
                    .split(',')
                    .map(|s| VARIANTS.into_iter().find(|v| v.slug() == s).unwrap_or_else(|| usage(&format!("unknown setup {s}"))))
                    .collect()
            }
            "--out" => out = Some(PathBuf::from(value())),
            "--update-doc" => o.update_doc = true,
            other => usage(&format!("unknown option {other}")),
        }
    }
    if o.reps == 0 || o.seconds <= 0.0 || o.concurrency.is_empty() || o.scenarios.is_empty() || o.variants.is_empty() {
        usage("nothing to measure");
    }
    o.out = out.unwrap_or_else(|| {
        let stamp = String::from_utf8_lossy(&std::process::Command::new("date").args(["-u", "+%Y%m%d-%H%M%S"]).output().expect("date").stdout)
            .trim()
            .to_string();
        common::workspace_root().join("target/bench").join(stamp)
    });
    o
}

/// What one cell measured.
#[derive(Clone, Debug)]
pub struct Cell {
    pub variant: Variant,
    pub scenario: Scenario,
    pub concurrency: usize,
    pub rep: usize,
    /// Successful handshakes in the measured window.
    pub ok: usize,
    /// Failed attempts in the whole run.
    pub failed: usize,
    pub hs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Server CPU (all httpd processes, the key service included) per
    /// handshake, microseconds.
    pub cpu_us: f64,
    /// Minor page faults and context switches (voluntary + involuntary)
    /// of all httpd threads, per handshake: the kernel side, which
    /// callgrind does not see.
    pub faults_per_hs: f64,
    pub switches_per_hs: f64,
    /// Token key operations and PKCS#11 calls per handshake (token setups),
    /// from the wrapper's shared counters: every process that loaded it
    /// adds to them, the key service included.
    pub ops_per_hs: Option<f64>,
    pub calls_per_hs: Option<f64>,
    pub first_error: Option<String>,
}

/// user+system CPU seconds of `pids`, from /proc/<pid>/stat.
fn cpu_seconds(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime: fields 14 and 15 of proc(5), in clock ticks.
    pids.iter().filter_map(|&p| Some(common::stat_field::<f64>(p, 14)? + common::stat_field::<f64>(p, 15)?)).sum::<f64>() / tck
}

/// (minor faults, context switches) of `pids`: faults from
/// /proc/<pid>/stat (all threads, exited ones included), switches summed
/// over /proc/<pid>/task/*/status (httpd's threads live as long as the
/// process in these runs).
fn kernel_counts(pids: &[i32]) -> (u64, u64) {
    let mut faults = 0;
    let mut switches = 0;
    for &p in pids {
        // minflt: field 10 of proc(5).
        faults += common::stat_field::<u64>(p, 10).unwrap_or(0);
        for t in common::task_dirs(p) {
            let Ok(status) = std::fs::read_to_string(t.join("status")) else { continue };
            switches += status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (faults, switches)
}

fn run_cell(bench: &Bench, o: &Options, variant: Variant, scenario: Scenario, concurrency: usize, rep: usize) -> Cell {
    let server = bench.servers.iter().find(|s| s.kind == variant.kind).expect("server of the variant");
    if let Some(shm) = &server.shm {
        shm.set_latency_us(variant.latency_ms * 1000);
    }
    let connector = scenario.connector(&bench.ca);
    // The key service is a fork of httpd's parent: its CPU is the token
    // work the other setups do inside the children.
    let pids = setup::server_pids(&server.apache);
    if variant.kind == Kind::ModuleService && setup::key_service_pids(server.apache.master_pid().unwrap_or(0)).is_empty() {
        eprintln!("warning: no key service process ({}) under the {} server", setup::KEY_SERVICE_COMM, variant.kind.name());
    }
    let counts0 = server.shm.as_ref().map(|s| s.counts());
    let cpu0 = cpu_seconds(&pids);
    let kernel0 = kernel_counts(&pids);
    let load = Load::start(server.apache.port, &connector, concurrency);
    std::thread::sleep(Duration::from_secs_f64(o.warmup));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    let t1 = Instant::now();
    let (attempts, first_error) = load.stop();
    let cpu = cpu_seconds(&pids) - cpu0;
    let kernel1 = kernel_counts(&pids);
    let counts = server.shm.as_ref().zip(counts0).map(|(s, c0)| shm::diff(&c0, &s.counts()));
    if let Some(shm) = &server.shm {
        shm.set_latency_us(0);
    }
    if setup::server_pids(&server.apache) != pids {
        eprintln!("warning: the {} server's processes changed during a cell", variant.kind.name());
    }
    let all_ok = attempts.iter().filter(|a| a.ok).count();
    let failed = attempts.len() - all_ok;
    let mut window: Vec<Duration> = attempts.iter().filter(|a| a.ok && a.end >= t0 && a.end <= t1).map(|a| a.handshake).collect();
    window.sort();
    let per_hs = |n: u64| (all_ok > 0).then(|| n as f64 / all_ok as f64);
    Cell {
        variant,
        scenario,
        concurrency,
        rep,
        ok: window.len(),
        failed,
        hs_per_s: window.len() as f64 / (t1 - t0).as_secs_f64(),
        p50_ms: client::quantile_ms(&window, 0.50),
        p99_ms: client::quantile_ms(&window, 0.99),
        cpu_us: if all_ok > 0 { cpu * 1e6 / all_ok as f64 } else { f64::NAN },
        faults_per_hs: per_hs(kernel1.0.saturating_sub(kernel0.0)).unwrap_or(f64::NAN),
        switches_per_hs: per_hs(kernel1.1.saturating_sub(kernel0.1)).unwrap_or(f64::NAN),
        ops_per_hs: counts.as_ref().and_then(|c| per_hs(shm::key_ops(c))),
        calls_per_hs: counts.as_ref().and_then(|c| per_hs(shm::calls(c))),
        first_error,
    }
}

/// One request per setup and scenario before measuring: what is
/// negotiated, or why it fails (the engine cannot do RSA key exchange).
pub struct Preflight {
    pub kind: Kind,
    pub scenario: Scenario,
    pub result: Result<String, String>,
}

/// Which PKCS#11 calls a token setup makes per full handshake: the
/// wrapper's counts over ten sequential handshakes, before any load.
pub struct CallProfile {
    pub kind: Kind,
    pub scenario: Scenario,
    pub per_hs: Vec<(&'static str, f64)>,
}

fn call_profile(bench: &Bench, kind: Kind, scenario: Scenario) -> Option<CallProfile> {
    let server = bench.servers.iter().find(|s| s.kind == kind)?;
    let shm = server.shm.as_ref()?;
    let connector = scenario.connector(&bench.ca);
    let before = shm.counts();
    let n = 10;
    for _ in 0..n {
        client::one_request(server.apache.port, &connector).ok()?;
    }
    let d = shm::diff(&before, &shm.counts());
    let per_hs = d.into_iter().filter(|(_, v)| *v > 0).map(|(k, v)| (k, v as f64 / n as f64)).collect();
    Some(CallProfile { kind, scenario, per_hs })
}

fn main() {
    let o = parse_args();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        usage("run as root (Apache binds, switches to www-data; scripts/bench.sh uses sudo)");
    }
    std::fs::create_dir_all(&o.out).expect("create the results folder");
    eprintln!("handshake bench: results in {}", o.out.display());
    let bench = Bench::new();

    let mut preflight = Vec::new();
    for kind in setup::KINDS {
        let server = bench.servers.iter().find(|s| s.kind == kind).unwrap();
        for &scenario in &o.scenarios {
            let result = client::one_request(server.apache.port, &scenario.connector(&bench.ca)).map(|(_, n)| n);
            eprintln!("preflight {} / {}: {:?}", kind.name(), scenario.name(), result);
            preflight.push(Preflight { kind, scenario, result });
        }
    }
    let works = |kind: Kind, scenario: Scenario| preflight.iter().any(|p| p.kind == kind && p.scenario == scenario && p.result.is_ok());
    let profiles: Vec<CallProfile> = [Kind::Module, Kind::ModuleDirect, Kind::ModuleService, Kind::Engine]
        .into_iter()
        .flat_map(|k| o.scenarios.iter().map(move |s| (k, *s)))
        .filter(|(k, s)| works(*k, *s))
        .filter_map(|(k, s)| call_profile(&bench, k, s))
        .collect();

    let raw_secs = if o.short { 0.5 } else { 2.0 };
    let raw = raw::measure(&bench.token.conf, &bench.token.label, &bench.token.pin, &bench.rsa_key, &bench.ec_key, raw_secs);
    let speed = raw::openssl_speed(if o.short { 1 } else { 3 });
    let hop = raw::executor_hop(if o.short { 0.5 } else { 2.0 });

    let mut cells = Vec::new();
    let total = o.reps * o.scenarios.len() * o.concurrency.len() * o.variants.len();
    for rep in 0..o.reps {
        for &scenario in &o.scenarios {
            for &c in &o.concurrency {
                for &v in &o.variants {
                    if !works(v.kind, scenario) {
                        continue;
                    }
                    let cell = run_cell(&bench, &o, v, scenario, c, rep);
                    eprintln!(
                        "[{}/{total}] rep {} {} c={} {}: {:.0} hs/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} us CPU/hs, {:.1} faults/hs, {:.1} switches/hs, ops/hs {:?}, {} failed",
                        cells.len() + 1,
                        rep + 1,
                        scenario.name(),
                        c,
                        v.name(),
                        cell.hs_per_s,
                        cell.p50_ms,
                        cell.p99_ms,
                        cell.cpu_us,
                        cell.faults_per_hs,
                        cell.switches_per_hs,
                        cell.ops_per_hs,
                        cell.failed
                    );
                    cells.push(cell);
                }
            }
        }
    }

    let kinds: Vec<Kind> = o.variants.iter().map(|v| v.kind).collect();
    let instructions = if o.callgrind > 0 { callgrind::measure(&bench, &kinds, &o.scenarios, works, o.callgrind) } else { Vec::new() };

    let machine = report::machine_info();
    let r = report::Report {
        options: &o,
        machine,
        preflight: &preflight,
        profiles: &profiles,
        raw: &raw,
        speed,
        cells: &cells,
        instructions: &instructions,
        hop: &hop,
    };
    let problems = r.problems();
    r.write(&o.out);
    if o.update_doc {
        r.write_doc(&common::workspace_root());
    }
    eprintln!("handshake bench: report in {}", o.out.join("report.md").display());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("handshake bench: PROBLEM: {p}");
        }
        std::process::exit(1);
    }
}
