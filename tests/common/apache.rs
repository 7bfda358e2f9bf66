//! Debian's real apache2, configured and driven per test.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::dirs::{module_path, TestDir};
use super::util::{chmod, free_port, kill, pid_alive, pids_with_arg, ppid_of, run_status, RUN_USER};

pub const APACHE_BIN: &str = "/usr/sbin/apache2";
pub const MODULES_DIR: &str = "/usr/lib/apache2/modules";

/// Logged by the master each time it (re)starts serving (AH00489 event,
/// AH00163 prefork, AH00292 worker). NOTICE level: httpd 2.4 logs notices
/// whatever the LogLevel, so this works with `LogLevel warn` too.
const READY_MARK: &str = "resuming normal operations";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpm {
    Event,
    Prefork,
    Worker,
}

impl Mpm {
    pub fn name(self) -> &'static str {
        match self {
            Mpm::Event => "event",
            Mpm::Prefork => "prefork",
            Mpm::Worker => "worker",
        }
    }
}

/// Builder for an apache2 instance.
///
/// All config text (global lines, vhosts) may use placeholders, substituted
/// when the config is written: `@PORT@` (the listen port on 127.0.0.1),
/// `@ROOT@` (ServerRoot), `@DOCROOT@`.
#[derive(Clone, Debug)]
pub struct ApacheConfig {
    pub mpm: Mpm,
    pub log_level: Option<String>,
    /// Load mod_hsm_ssl before mod_ssl (default: after).
    pub module_first: bool,
    pub global: String,
    pub vhosts: Vec<String>,
    /// `LoadModule hsm_ssl_module <path>` (after mod_ssl) when Some.
    pub module: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub user: String,
    pub name: String,
}

impl Default for ApacheConfig {
    fn default() -> Self {
        ApacheConfig {
            mpm: Mpm::Event,
            log_level: None,
            module_first: false,
            global: String::new(),
            vhosts: Vec::new(),
            module: None,
            env: Vec::new(),
            user: RUN_USER.to_string(),
            name: "apache".to_string(),
        }
    }
}

/// Env vars that must not leak from the test process into apache2.
pub const SCRUBBED_ENV: &[&str] =
    &["SOFTHSM2_CONF", "HSM_P11WRAP_LOG", "HSM_P11WRAP_CONTROL", "HSM_P11WRAP_TARGET", "HSM_P11WRAP_SHM", "OPENSSL_CONF"];

impl ApacheConfig {
    /// `name` only labels the test directory.
    pub fn new(name: &str) -> Self {
        ApacheConfig { name: name.to_string(), ..Default::default() }
    }
    pub fn mpm(mut self, mpm: Mpm) -> Self {
        self.mpm = mpm;
        self
    }
    /// Replace the default `LogLevel info ssl:info [hsm_ssl:debug]`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_string());
        self
    }
    /// Append global config lines (after the harness defaults, before vhosts).
    pub fn global(mut self, lines: &str) -> Self {
        self.global.push_str(lines);
        self.global.push('\n');
        self
    }
    pub fn vhost(mut self, block: &str) -> Self {
        self.vhosts.push(block.to_string());
        self
    }
    /// Load the module under test from `target/<profile>/libmod_hsm_ssl.so`.
    pub fn hsm_module(mut self) -> Self {
        self.module = Some(module_path());
        self
    }
    /// Load the module under test from `path`.
    pub fn module_path(mut self, path: &Path) -> Self {
        self.module = Some(path.to_path_buf());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn envs(mut self, vars: &[(String, String)]) -> Self {
        self.env.extend(vars.iter().cloned());
        self
    }
    /// `SOFTHSM2_CONF` of `token` for apache2.
    pub fn token(self, token: &super::token::Token) -> Self {
        self.envs(&token.env())
    }
    /// `HSM_P11WRAP_*` of `p11` for apache2.
    pub fn p11wrap(self, p11: &super::p11log::P11Log) -> Self {
        self.envs(&p11.env())
    }
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }

    /// Write ServerRoot, config and docroot; do not start.
    pub fn build(self) -> Apache {
        let dir = TestDir::new(&self.name);
        let root = dir.path().to_path_buf();
        let docroot = dir.sub("htdocs");
        std::fs::write(docroot.join("index.html"), "<html><body>hsm-ssl test page</body></html>\n").unwrap();
        chmod(&docroot.join("index.html"), 0o644);
        dir.sub("run");
        dir.sub("logs");
        let mut a = Apache {
            conf_file: root.join("httpd.conf"),
            root,
            docroot,
            port: 0,
            cfg: self,
            started: false,
            master: None,
            control: std::sync::Mutex::new(Vec::new()),
            foreground: None,
            dir,
        };
        a.port = free_port();
        a.write_conf();
        a
    }

    /// `build()` then `start()`.
    pub fn start(self) -> Result<Apache, StartError> {
        let mut a = self.build();
        a.start()?;
        Ok(a)
    }
}

/// `<VirtualHost 127.0.0.1:@PORT@>` with `ServerName name`, `SSLEngine on`
/// and the given directives.
pub fn ssl_vhost(server_name: &str, body: &str) -> String {
    format!(
        "<VirtualHost 127.0.0.1:@PORT@>\n    ServerName {server_name}\n    SSLEngine on\n{}\n</VirtualHost>\n",
        body.lines().map(|l| format!("    {}", l.trim())).collect::<Vec<_>>().join("\n")
    )
}

/// apache2 failed to start / restart.
pub struct StartError {
    /// Exit status of the `apache2 -k ...` command (None if it was fine and
    /// the daemon died or timed out later).
    pub exit_code: Option<i32>,
    /// stdout+stderr of the `apache2 -k ...` command.
    pub output: String,
    pub error_log: String,
    pub reason: String,
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "apache2 failed: {} (exit {:?})\n--- apache2 output ---\n{}\n--- error_log ---\n{}",
            self.reason, self.exit_code, self.output, self.error_log
        )
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A configured apache2 (maybe running). Stopped on drop; if the test is
/// panicking its error_log is printed.
pub struct Apache {
    pub root: PathBuf,
    pub conf_file: PathBuf,
    pub docroot: PathBuf,
    pub port: u16,
    pub cfg: ApacheConfig,
    started: bool,
    master: Option<i32>,
    /// Pids of the `apache2 -k ...` commands run so far.
    control: std::sync::Mutex<Vec<i32>>,
    /// The master started by [`Apache::start_foreground`], reaped at stop.
    foreground: Option<std::process::Child>,
    // Last: dropped after Drop::drop has stopped the server.
    dir: TestDir,
}

impl Apache {
    pub fn error_log_path(&self) -> PathBuf {
        self.root.join("logs/error.log")
    }
    pub fn access_log_path(&self) -> PathBuf {
        self.root.join("logs/access.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("run/httpd.pid")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    /// Occurrences of `needle` in the error log.
    pub fn error_log_count(&self, needle: &str) -> usize {
        self.error_log().matches(needle).count()
    }

    /// The config text as written.
    pub fn conf_text(&self) -> String {
        std::fs::read_to_string(&self.conf_file).unwrap_or_default()
    }

    /// Change the vhosts/global config (e.g. before `graceful()`), rewrite.
    pub fn reconfigure(&mut self, f: impl FnOnce(&mut ApacheConfig)) {
        f(&mut self.cfg);
        self.write_conf();
    }

    fn subst(&self, text: &str) -> String {
        text.replace("@PORT@", &self.port.to_string())
            .replace("@ROOT@", &self.root.display().to_string())
            .replace("@DOCROOT@", &self.docroot.display().to_string())
    }

    fn write_conf(&self) {
        let c = &self.cfg;
        let m = MODULES_DIR;
        let mut s = String::new();
        s.push_str("# generated by tests/common/apache.rs\n");
        s.push_str("ServerRoot \"@ROOT@\"\n");
        s.push_str("DefaultRuntimeDir @ROOT@/run\nPidFile @ROOT@/run/httpd.pid\nMutex file:@ROOT@/run default\n");
        s.push_str("ErrorLog @ROOT@/logs/error.log\n");
        s.push_str(&format!("LoadModule mpm_{0}_module {m}/mod_mpm_{0}.so\n", c.mpm.name()));
        if let (Some(module), true) = (&c.module, c.module_first) {
            s.push_str(&format!("LoadModule hsm_ssl_module {}\n", module.display()));
        }
        // (mod_log_config is compiled into Debian's apache2.)
        for (name, file) in [
            ("authz_core", "mod_authz_core.so"),
            ("mime", "mod_mime.so"),
            ("dir", "mod_dir.so"),
            ("socache_shmcb", "mod_socache_shmcb.so"),
            ("ssl", "mod_ssl.so"),
        ] {
            s.push_str(&format!("LoadModule {name}_module {m}/{file}\n"));
        }
        if let (Some(module), false) = (&c.module, c.module_first) {
            s.push_str(&format!("LoadModule hsm_ssl_module {}\n", module.display()));
        }
        let level =
            c.log_level.clone().unwrap_or_else(|| if c.module.is_some() { "info ssl:info hsm_ssl:debug" } else { "info ssl:info" }.to_string());
        s.push_str(&format!("LogLevel {level}\n"));
        s.push_str(&format!("User {0}\nGroup {0}\n", c.user));
        s.push_str("ServerName localhost\nListen 127.0.0.1:@PORT@\n");
        s.push_str("Timeout 30\nKeepAlive Off\nGracefulShutdownTimeout 5\nHostnameLookups Off\n");
        match c.mpm {
            Mpm::Prefork => s.push_str("StartServers 2\nMinSpareServers 2\nMaxSpareServers 4\nMaxRequestWorkers 16\n"),
            Mpm::Event | Mpm::Worker => s.push_str(
                "StartServers 2\nServerLimit 4\nThreadsPerChild 4\nMaxRequestWorkers 16\n\
                 MinSpareThreads 4\nMaxSpareThreads 16\n",
            ),
        }
        s.push_str("TypesConfig /etc/mime.types\nDocumentRoot \"@DOCROOT@\"\nDirectoryIndex index.html\n");
        s.push_str("<Directory />\n    Require all denied\n</Directory>\n");
        s.push_str("<Directory \"@DOCROOT@\">\n    Require all granted\n</Directory>\n");
        s.push_str("LogFormat \"%h %l %u %t \\\"%r\\\" %>s %b %{SSL_PROTOCOL}x %{SSL_CIPHER}x\" hsm\n");
        s.push_str("CustomLog @ROOT@/logs/access.log hsm\n");
        // As in Debian's mods-available/ssl.conf.
        s.push_str("SSLRandomSeed startup builtin\nSSLRandomSeed connect builtin\n");
        s.push_str("SSLSessionCache shmcb:@ROOT@/run/ssl_scache(512000)\nSSLSessionCacheTimeout 300\n");
        s.push_str("SSLCipherSuite HIGH:!aNULL\nSSLProtocol all -SSLv3\n");
        // HSM_TEST_KEY_SERVICE=On|Off runs the tests with that key service
        // setting (scripts/test.sh runs some tests again with Off); a
        // test's own HSMSSLKeyService line below overrides it.
        if let (Some(_), Ok(v)) = (&c.module, std::env::var("HSM_TEST_KEY_SERVICE")) {
            s.push_str(&format!("HSMSSLKeyService {v}\n"));
        }
        s.push_str("\n# --- test global lines ---\n");
        s.push_str(&c.global);
        s.push_str("\n# --- test vhosts ---\n");
        for v in &c.vhosts {
            s.push_str(v);
            s.push('\n');
        }
        std::fs::write(&self.conf_file, self.subst(&s)).expect("write httpd.conf");
        chmod(&self.conf_file, 0o644);
    }

    fn command(&self) -> Command {
        let bin = std::env::var_os("HSM_TEST_APACHE_BIN").unwrap_or_else(|| APACHE_BIN.into());
        let mut cmd = Command::new(bin);
        cmd.arg("-d").arg(&self.root).arg("-f").arg(&self.conf_file);
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        cmd.env("LANG", "C");
        // Which way mod_ssl gets the keys (src/tls/loader.rs): by default no
        // engine directory, so no `pkcs11` engine exists and mod_ssl opens
        // the URIs with OSSL_STORE, through the module's provider store, as
        // it must with OpenSSL 4.0. HSM_TEST_KEY_LOADING=engine keeps
        // OpenSSL's own engines directory, where libp11's engine is
        // installed, so the module's ENGINE shadows it (the OpenSSL 3.x
        // path with libp11 present). A test's own OPENSSL_ENGINES wins.
        if std::env::var("HSM_TEST_KEY_LOADING").as_deref() != Ok("engine") {
            cmd.env("OPENSSL_ENGINES", self.root.join("no-engines"));
        }
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Run `apache2 -k <action>`, stdout/stderr to a file (the daemon
    /// inherits no pipe of ours, so this cannot hang on EOF).
    fn run_k(&self, action: &str) -> (Option<i32>, String) {
        let out_path = self.root.join(format!("logs/k-{action}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        let mut child = self.command().args(["-k", action]).stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("run apache2");
        self.control.lock().unwrap_or_else(|e| e.into_inner()).push(child.id() as i32);
        let status = child.wait().expect("wait for apache2");
        (status.code(), std::fs::read_to_string(&out_path).unwrap_or_default())
    }

    /// `apache2 -t` on this config: (exit code, output).
    /// `apache2 -L`: the directives httpd knows, with their help texts.
    pub fn list_directives(&self) -> (i32, String) {
        run_status(self.command().arg("-L"))
    }

    pub fn configtest(&self) -> (i32, String) {
        run_status(self.command().arg("-t"))
    }

    /// Start the daemon (`apache2 -k start`) and wait until the master is up
    /// ([`READY_MARK`] logged, pidfile written; the port then accepts). If the port
    /// turned out to be taken, retries with another one (`@PORT@` is
    /// re-substituted, so read `self.port` after starting).
    pub fn start(&mut self) -> Result<(), StartError> {
        assert!(!self.started, "already started");
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.start_once() {
                Err(e) if attempts < 4 && is_bind_failure(&e) => {
                    self.port = free_port();
                    self.write_conf();
                    let _ = std::fs::remove_file(self.error_log_path());
                }
                r => return r,
            }
        }
    }

    /// Starts httpd in the foreground (`apache2 -DFOREGROUND`, as systemd
    /// units with `Type=notify` do): both configuration passes run in the
    /// master's own pid. Waits until it is ready, like [`Apache::start`].
    pub fn start_foreground(&mut self) -> Result<(), StartError> {
        assert!(!self.started, "already started");
        let marks = self.error_log_count(READY_MARK);
        let out_path = self.root.join("logs/foreground.out");
        let out = std::fs::File::create(&out_path).unwrap();
        let child = self.command().arg("-DFOREGROUND").stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("run apache2");
        self.foreground = Some(child);
        self.started = true;
        self.until_ready(marks, || std::fs::read_to_string(&out_path).unwrap_or_default())
    }

    /// After a start: waits for the master (see `wait_ready`); kills what
    /// runs if it does not come up, with `output` in the error.
    fn until_ready(&mut self, marks: usize, output: impl FnOnce() -> String) -> Result<(), StartError> {
        match self.wait_ready(marks, None) {
            Ok(master) => {
                self.master = Some(master);
                Ok(())
            }
            Err(reason) => {
                self.kill_all();
                self.started = false;
                Err(self.err(None, output(), &reason))
            }
        }
    }

    fn start_once(&mut self) -> Result<(), StartError> {
        let marks = self.error_log_count(READY_MARK);
        let (code, output) = self.run_k("start");
        if code != Some(0) {
            self.kill_all();
            return Err(self.err(code, output, "apache2 -k start failed"));
        }
        self.started = true;
        self.until_ready(marks, || output)
    }

    fn err(&self, exit_code: Option<i32>, output: String, reason: &str) -> StartError {
        StartError { exit_code, output, error_log: self.error_log(), reason: reason.to_string() }
    }

    fn read_pidfile(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
    }

    /// Wait until READY_MARK occurs more than `marks` times and the master
    /// (from the pidfile) is alive. Fails early when no
    /// apache2 process of this config is left, or `old_master` died.
    fn wait_ready(&self, marks: usize, old_master: Option<i32>) -> Result<i32, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let master = self.read_pidfile().filter(|p| pid_alive(*p));
            // The listening socket is bound (in the first config pass) before
            // the master logs READY_MARK, so no TCP probe is needed (a probe
            // would also show up as an aborted handshake in the error log).
            if let Some(m) = master {
                if self.error_log_count(READY_MARK) > marks {
                    return Ok(m);
                }
            }
            if let Some(old) = old_master {
                if !pid_alive(old) {
                    return Err(format!("master {old} exited"));
                }
            } else if master.is_none() && self.config_pids().is_empty() {
                // Give the daemon a moment to appear / write its pidfile.
                std::thread::sleep(Duration::from_millis(100));
                if self.read_pidfile().filter(|p| pid_alive(*p)).is_none() && self.config_pids().is_empty() {
                    return Err("apache2 daemon exited during startup".into());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All live processes started with this config file (master, children,
    /// a daemon still starting).
    fn config_pids(&self) -> Vec<i32> {
        pids_with_arg(self.conf_file.as_os_str())
    }

    /// Master pid (from the pidfile at start/restart).
    pub fn master_pid(&self) -> Option<i32> {
        self.master
    }

    /// Pids of the `apache2 -k start|graceful|restart|stop` commands the
    /// harness ran. `-k start` does httpd's first configuration pass (module
    /// post_config hooks included) in its own pid before it forks the
    /// daemon, so per-process call logs have entries for it.
    pub fn control_pids(&self) -> Vec<i32> {
        self.control.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Master first, then its live children.
    pub fn pids(&self) -> Vec<i32> {
        let Some(master) = self.master.filter(|p| pid_alive(*p)) else { return Vec::new() };
        let mut v = vec![master];
        v.extend(self.child_pids());
        v
    }

    /// Live children of the master that serve requests (the key service,
    /// `HSMSSLKeyService On`, is not one: see `key_service_pids`).
    pub fn child_pids(&self) -> Vec<i32> {
        self.all_child_pids().into_iter().filter(|p| !is_key_service(*p)).collect()
    }

    /// Live key-service processes of this server (normally one).
    pub fn key_service_pids(&self) -> Vec<i32> {
        self.all_child_pids().into_iter().filter(|p| is_key_service(*p)).collect()
    }

    fn all_child_pids(&self) -> Vec<i32> {
        let Some(master) = self.master else { return Vec::new() };
        self.config_pids().into_iter().filter(|p| ppid_of(*p) == Some(master)).collect()
    }

    pub fn is_running(&self) -> bool {
        self.master.map(pid_alive).unwrap_or(false)
    }

    /// `apache2 -k graceful` and wait for the new generation to be ready.
    ///
    /// Note: `apache2 -k graceful|restart|stop` first parses the whole
    /// config in the signalling process (mod_ssl checks that cert files
    /// exist, module directive handlers run) and exits 1 without signalling
    /// if that fails — like `apachectl graceful` refusing a broken config.
    /// Use [`Apache::graceful_signal`] to make the running master reload
    /// a config regardless.
    pub fn graceful(&mut self) -> Result<(), StartError> {
        self.signal_restart("graceful", None)
    }

    /// `apache2 -k restart` and wait for the new generation to be ready.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.signal_restart("restart", None)
    }

    /// SIGUSR1 to the master (no config check first), wait for readiness.
    /// If the new config fails, the master exits: Err.
    pub fn graceful_signal(&mut self) -> Result<(), StartError> {
        self.signal_restart("graceful", Some(libc::SIGUSR1))
    }

    /// SIGHUP to the master (no config check first), wait for readiness.
    pub fn restart_signal(&mut self) -> Result<(), StartError> {
        self.signal_restart("restart", Some(libc::SIGHUP))
    }

    fn signal_restart(&mut self, action: &str, signal: Option<i32>) -> Result<(), StartError> {
        let old = self.master.expect("not started");
        let marks = self.error_log_count(READY_MARK);
        let output = match signal {
            Some(sig) => {
                kill(old, sig);
                String::new()
            }
            None => {
                let (code, output) = self.run_k(action);
                if code != Some(0) {
                    return Err(self.err(code, output, &format!("apache2 -k {action} failed")));
                }
                output
            }
        };
        match self.wait_ready(marks, Some(old)) {
            Ok(m) => {
                self.master = Some(m);
                Ok(())
            }
            Err(reason) => Err(self.err(None, output, &format!("{action}: {reason}"))),
        }
    }

    /// Wait until the master has exactly `n` live children (e.g. after a
    /// graceful restart, when old-generation children linger), or timeout.
    pub fn wait_children(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child_pids().len() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `apache2 -k stop` (SIGTERM to the master directly if that fails, e.g.
    /// because the config no longer parses), wait for every process of this
    /// instance to exit, SIGKILL stragglers. Returns false if anything had to
    /// be killed.
    pub fn stop(&mut self) -> bool {
        if !self.started {
            return true;
        }
        self.started = false;
        // A process that is exiting has no command line in /proc any more
        // but is not a zombie yet: wait for the ones seen now to be gone too.
        let mut seen = self.config_pids();
        seen.extend(self.master);
        let (code, _out) = self.run_k("stop");
        if code != Some(0) {
            if let Some(m) = self.master.or_else(|| self.read_pidfile()) {
                kill(m, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(c) = self.foreground.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    self.foreground = None;
                }
            }
            if self.config_pids().is_empty() && !seen.iter().any(|p| pid_alive(*p)) {
                self.master = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_all();
        self.master = None;
        false
    }

    fn kill_all(&self) {
        for _ in 0..3 {
            let pids = self.config_pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                kill(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The test directory (ServerRoot).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn is_bind_failure(e: &StartError) -> bool {
    let t = format!("{}{}", e.output, e.error_log);
    t.contains("Address already in use") || t.contains("could not bind to address")
}

impl Drop for Apache {
    fn drop(&mut self) {
        let clean = self.stop();
        if std::thread::panicking() {
            eprintln!("[harness] apache2 ({}) error_log:\n{}\n[harness] end of error_log", self.root.display(), self.error_log());
        } else if !clean {
            eprintln!("[harness] apache2 ({}) had to be SIGKILLed on stop", self.root.display());
        }
    }
}

/// Whether `pid` is a key service (its process name is `hsm_ssl-keys`).
fn is_key_service(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == "hsm_ssl-keys").unwrap_or(false)
}
