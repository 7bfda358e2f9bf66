//! Packaging and installation scripts:
//! (a) shellcheck on every shell script of the repository;
//! (b) rpm/install-amazon-linux.sh with stub dnf/systemctl/apachectl/curl/
//!     hsm-ssl-keytool, with --dry-run (nothing runs) and for real under a
//!     temporary root (calls in order, PIN file 0600, PIN never printed);
//! (c) apxs/install.sh for real into this Debian machine's apache2, then
//!     a2enmod hsm_ssl and apache2ctl configtest; the machine is restored
//!     afterwards.
//!
//! Run as root on Debian 12 with apache2, apache2-dev and shellcheck.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("packaging-{}-{}-{}", tag, std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_exec(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------
// (a) shellcheck

/// Every tracked `*.sh` file plus every tracked file whose first line is a
/// bash (or sh) shebang.
fn shell_scripts() -> Vec<String> {
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(repo()).output().expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed: {}", text(&out));
    let mut set = BTreeSet::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let path = repo().join(&name);
        if !path.is_file() {
            continue; // deleted in the work tree
        }
        if name.ends_with(".sh") {
            set.insert(name);
            continue;
        }
        let mut head = [0u8; 128];
        let n = fs::File::open(&path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
        let first = String::from_utf8_lossy(&head[..n]);
        let first = first.lines().next().unwrap_or("");
        if first.starts_with("#!") && (first.contains("bash") || first.ends_with("/sh") || first.ends_with(" sh")) {
            set.insert(name);
        }
    }
    set.into_iter().collect()
}

#[test]
fn shellcheck_passes_on_every_shell_script() {
    let version = Command::new("shellcheck").arg("--version").output();
    match version {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "shellcheck is not installed (or does not run): install it with \
             'apt-get install -y shellcheck' (Debian) or 'dnf install -y ShellCheck'"
        ),
    }
    let scripts = shell_scripts();
    for mine in ["apxs/install.sh", "rpm/install-amazon-linux.sh"] {
        assert!(scripts.iter().any(|s| s == mine), "{mine} is not among the tracked shell scripts {scripts:?} (not committed?)");
    }
    let out = Command::new("shellcheck").arg("--external-sources").args(&scripts).current_dir(repo()).output().unwrap();
    assert!(out.status.success(), "shellcheck found problems in {scripts:?}:\n{}", text(&out));
}

// ---------------------------------------------------------------------------
// (b) rpm/install-amazon-linux.sh with stubs

const PIN: &str = "cu_web:Sekr1t pa55";

/// Stubs for the commands the installer runs. Each appends its name and
/// arguments to `calls.log`, and to `pinenv.log` whether CLOUDHSM_PIN was
/// set (never its value) and the CREDENTIALS_DIRECTORY it got. hsm-ssl-keytool answers like the real one enough
/// for the script: `list --json` shows the key once `generate` made it,
/// `selfsign --out F` creates F, `config` prints the Apache lines.
struct Stubs {
    dir: TempDir,
}

impl Stubs {
    fn new() -> Stubs {
        let dir = TempDir::new("stubs");
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(dir.path().join("root")).unwrap();
        fs::write(dir.path().join("libcloudhsm_pkcs11.so"), b"not a real library").unwrap();
        fs::write(dir.path().join("mod_hsm_ssl-0.1.0-1.amzn2023.x86_64.rpm"), b"fake rpm").unwrap();
        let state = dir.path().display().to_string();
        for name in ["dnf", "systemctl", "apachectl", "curl", "hsm-ssl-keytool"] {
            let mut body = format!(
                "#!/bin/sh\n\
                 echo \"{name} $*\" >> '{state}/calls.log'\n\
                 if [ -n \"${{CLOUDHSM_PIN:-}}\" ]; then echo \"{name} $1 pin-set\" >> '{state}/pinenv.log'; fi\n\
                 if [ -n \"${{CREDENTIALS_DIRECTORY:-}}\" ]; then echo \"{name} $1 credentials=$CREDENTIALS_DIRECTORY\" >> '{state}/pinenv.log'; fi\n"
            );
            if name == "hsm-ssl-keytool" {
                body.push_str(&format!(
                    "case \"$1\" in\n\
                     list) if [ -f '{state}/generated' ]; then echo '{{\"token\":\"t\",\"keys\":[{{\"label\":\"www-rsa\",\"id\":\"01\"}}]}}'; \
                     else echo '{{\"token\":\"t\",\"keys\":[]}}'; fi ;;\n\
                     generate) touch '{state}/generated'; echo \"generated key\" ;;\n\
                     selfsign) out=; prev=; for a in \"$@\"; do [ \"$prev\" = --out ] && out=$a; prev=$a; done; echo cert > \"$out\" ;;\n\
                     config) printf '%s\\n' '# mod_hsm_ssl: key www-rsa on token t' 'HSMSSLLibrary /opt/cloudhsm/lib/libcloudhsm_pkcs11.so' \
                     'HSMSSLPin     env:CLOUDHSM_PIN' '' '<VirtualHost *:443>' '    ServerName www.example.com' '    SSLEngine on' \
                     '    SSLCertificateFile    /etc/pki/tls/certs/www-rsa.crt' '    SSLCertificateKeyFile \"pkcs11:token=t;object=www-rsa\"' '</VirtualHost>' ;;\n\
                     esac\n"
                ));
            }
            if name == "curl" {
                body.push_str("printf 403\n");
            }
            body.push_str("exit 0\n");
            write_exec(&bin.join(name), &body);
        }
        Stubs { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn pin_env(&self) -> String {
        fs::read_to_string(self.dir.path().join("pinenv.log")).unwrap_or_default()
    }

    /// Runs the installer with the stubs first in PATH, `stdin` fed to it.
    fn run(&self, extra: &[&str], stdin: &str) -> Output {
        let path = format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let mut child = Command::new("bash")
            .arg(repo().join("rpm/install-amazon-linux.sh"))
            .arg("mod_hsm_ssl-0.1.0-1.amzn2023.x86_64.rpm")
            .args(extra)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("CLOUDHSM_PKCS11_LIB", self.dir.path().join("libcloudhsm_pkcs11.so"))
            .env("HSM_SSL_ROOT", self.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }
}

const GENERATE: &[&str] = &["--generate", "www-rsa", "--type", "rsa:2048", "--subject", "CN=www.example.com,O=Example"];

/// The output mentions each step, in this order.
fn assert_steps_in_order(out: &str, steps: &[&str]) {
    let mut from = 0;
    for s in steps {
        match out[from..].find(s) {
            Some(i) => from += i + s.len(),
            None => panic!("step '{s}' missing (or out of order) in the output:\n{out}"),
        }
    }
}

#[test]
fn amazon_installer_dry_run_lists_every_step_and_runs_nothing() {
    let stubs = Stubs::new();
    let out = stubs.run(&[&["--dry-run"], GENERATE].concat(), &format!("{PIN}\n"));
    let all = text(&out);
    assert!(out.status.success(), "dry run failed:\n{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_steps_in_order(
        &stdout,
        &[
            "would run: dnf install -y httpd mod_ssl",
            "checking the CloudHSM PKCS#11 client library",
            "found ",
            "would run: dnf install -y ./mod_hsm_ssl-0.1.0-1.amzn2023.x86_64.rpm",
            "etc/httpd/hsm-ssl/hsm-ssl-pin",
            "would write the PIN (hidden)",
            "LoadCredential=hsm-ssl-pin:/etc/httpd/hsm-ssl/hsm-ssl-pin",
            "hsm-ssl-keytool list --json",
            "hsm-ssl-keytool generate",
            "--label www-rsa --type rsa:2048",
            "hsm-ssl-keytool selfsign",
            "hsm-ssl-keytool config",
            "etc/httpd/conf.d/hsm_ssl.conf (unless a file sets HSMSSLLibrary)",
            "etc/httpd/conf.d/hsm_ssl-vhost.conf",
            "would run: CREDENTIALS_DIRECTORY=",
            "etc/httpd/hsm-ssl apachectl configtest",
            "would run: systemctl restart httpd",
            "would run: curl -k",
            "https://www.example.com/",
            "dry run: nothing was changed",
        ],
    );
    assert!(stubs.calls().is_empty(), "--dry-run ran commands: {:?}", stubs.calls());
    assert!(!stubs.root().join("etc").exists(), "--dry-run wrote files under the root");
    assert!(!all.contains("Sekr1t"), "the PIN appeared in the output:\n{all}");
}

#[test]
fn amazon_installer_dry_run_without_the_cloudhsm_client_says_how_to_install_it() {
    let stubs = Stubs::new();
    let path = format!("{}:{}", stubs.dir.path().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    // Dry run: reports and goes on.
    let out = Command::new("bash")
        .arg(repo().join("rpm/install-amazon-linux.sh"))
        .arg("--dry-run")
        .current_dir(stubs.dir.path())
        .env("PATH", &path)
        .env("CLOUDHSM_PKCS11_LIB", stubs.dir.path().join("missing.so"))
        .env("HSM_SSL_ROOT", stubs.root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("configure-pkcs11 -a <HSM IP>"), "{all}");
    // A real run stops there, with what to do, before installing the RPM.
    let out = Command::new("bash")
        .arg(repo().join("rpm/install-amazon-linux.sh"))
        .arg("mod_hsm_ssl-0.1.0-1.amzn2023.x86_64.rpm")
        .current_dir(stubs.dir.path())
        .env("PATH", &path)
        .env("CLOUDHSM_PKCS11_LIB", stubs.dir.path().join("missing.so"))
        .env("HSM_SSL_ROOT", stubs.root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("is missing") && all.contains("configure-pkcs11 -a <HSM IP>"), "{all}");
    assert_eq!(stubs.calls(), vec!["dnf install -y httpd mod_ssl".to_string()], "{all}");
}

#[test]
fn amazon_installer_runs_the_steps_in_order_and_keeps_the_pin_secret() {
    let stubs = Stubs::new();
    let out = stubs.run(GENERATE, &format!("{PIN}\n"));
    let all = text(&out);
    assert!(out.status.success(), "installer failed:\n{all}");
    assert!(!all.contains("Sekr1t"), "the PIN appeared in the output:\n{all}");

    let calls = stubs.calls();
    let root = stubs.root().display().to_string();
    let lib = stubs.dir.path().join("libcloudhsm_pkcs11.so").display().to_string();
    let kt = format!("--library {lib} --pin file:{root}/etc/httpd/hsm-ssl/hsm-ssl-pin");
    let cert = format!("{root}/etc/pki/tls/certs/www-rsa.crt");
    let expected = vec![
        "dnf install -y httpd mod_ssl".to_string(),
        "dnf install -y ./mod_hsm_ssl-0.1.0-1.amzn2023.x86_64.rpm".to_string(),
        format!("hsm-ssl-keytool list --json {kt}"),
        format!("hsm-ssl-keytool generate {kt} --label www-rsa --type rsa:2048"),
        format!("hsm-ssl-keytool selfsign {kt} --label www-rsa --subject CN=www.example.com,O=Example --days 365 --out {cert}"),
        format!("hsm-ssl-keytool config {kt} --label www-rsa --cert {cert}"),
        "apachectl configtest".to_string(),
        "systemctl daemon-reload".to_string(),
        "systemctl enable httpd".to_string(),
        "systemctl restart httpd".to_string(),
        "curl -k -sS -o /dev/null -w %{http_code} --retry 5 --retry-delay 1 --retry-connrefused \
         --resolve www.example.com:443:127.0.0.1 https://www.example.com/"
            .to_string(),
    ];
    assert_eq!(calls, expected, "{all}");
    for c in &calls {
        assert!(!c.contains("Sekr1t"), "the PIN was passed as an argument: {c}");
    }
    // No command got the PIN in its environment; configtest got the
    // credentials directory systemd gives httpd.service.
    let env = stubs.pin_env();
    assert!(!env.contains("pin-set"), "a command got CLOUDHSM_PIN: {env:?}");
    assert_eq!(env.trim(), format!("apachectl configtest credentials={root}/etc/httpd/hsm-ssl"), "{env:?}");

    // The PIN file: just the PIN, mode 0600 in a 0700 directory (what
    // mod_hsm_ssl's file: checks require).
    let pin_file = stubs.root().join("etc/httpd/hsm-ssl/hsm-ssl-pin");
    let meta = fs::metadata(&pin_file).expect("PIN file written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "PIN file mode");
    assert_eq!(fs::metadata(pin_file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700, "PIN directory mode");
    assert_eq!(fs::read_to_string(&pin_file).unwrap(), format!("{PIN}\n"));

    // The drop-in (no RPM-provided one under the test root; the same name
    // as the RPM's, so one in /etc takes its place), the global lines in
    // the one file the docs name, reading the PIN from the credential, and
    // the vhost without them.
    let dropin = fs::read_to_string(stubs.root().join("etc/systemd/system/httpd.service.d/hsm_ssl.conf")).unwrap();
    assert!(dropin.contains("LoadCredential=hsm-ssl-pin:/etc/httpd/hsm-ssl/hsm-ssl-pin"), "{dropin}");
    let global = fs::read_to_string(stubs.root().join("etc/httpd/conf.d/hsm_ssl.conf")).unwrap();
    assert!(global.contains("HSMSSLLibrary"), "{global}");
    assert!(global.lines().any(|l| l == "HSMSSLPin file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin"), "{global}");
    assert!(!global.contains("env:CLOUDHSM_PIN") && !global.contains("VirtualHost"), "{global}");
    let vhost = fs::read_to_string(stubs.root().join("etc/httpd/conf.d/hsm_ssl-vhost.conf")).unwrap();
    assert!(vhost.contains("SSLCertificateKeyFile \"pkcs11:token=t;object=www-rsa\""), "{vhost}");
    assert!(!vhost.contains("HSMSSL"), "the global lines are in hsm_ssl.conf: {vhost}");

    // Second run: idempotent. The PIN is reused (nothing on stdin), the key
    // and certificate are kept; hsm_ssl.conf, which the operator may have
    // edited since, is kept as it is.
    let edited = format!("{global}HSMSSLOperationTimeout 3\n");
    fs::write(stubs.root().join("etc/httpd/conf.d/hsm_ssl.conf"), &edited).unwrap();
    fs::remove_file(stubs.dir.path().join("calls.log")).unwrap();
    let out = stubs.run(GENERATE, "");
    let all = text(&out);
    assert!(out.status.success(), "second run failed:\n{all}");
    assert!(!all.contains("Sekr1t"), "the PIN appeared in the output:\n{all}");
    assert!(all.contains("already has a PIN: keeping it"), "{all}");
    assert!(all.contains("already has a key labelled 'www-rsa': keeping it"), "{all}");
    let calls = stubs.calls();
    assert!(!calls.iter().any(|c| c.contains(" generate ") || c.contains(" selfsign ")), "{calls:?}");
    assert!(calls.iter().any(|c| c == "systemctl restart httpd"), "{calls:?}");
    let vhost = fs::read_to_string(stubs.root().join("etc/httpd/conf.d/hsm_ssl-vhost.conf")).unwrap();
    assert!(!vhost.contains("HSMSSLLibrary") && vhost.contains("<VirtualHost *:443>"), "{vhost}");
    assert_eq!(fs::read_to_string(stubs.root().join("etc/httpd/conf.d/hsm_ssl.conf")).unwrap(), edited, "hsm_ssl.conf was rewritten");
    assert!(all.contains("HSMSSLLibrary is already set in"), "{all}");
    assert_eq!(fs::metadata(&pin_file).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn amazon_installer_moves_a_pin_from_the_old_environment_file() {
    let stubs = Stubs::new();
    let legacy = stubs.root().join("etc/sysconfig/httpd-hsm-ssl");
    fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    fs::write(&legacy, format!("# old\nCLOUDHSM_PIN='{PIN}'\n")).unwrap();
    let out = stubs.run(&[], "");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("Sekr1t"), "the PIN appeared in the output:\n{all}");
    assert!(all.contains("taking the PIN from CLOUDHSM_PIN"), "{all}");
    let pin_file = stubs.root().join("etc/httpd/hsm-ssl/hsm-ssl-pin");
    assert_eq!(fs::read_to_string(&pin_file).unwrap(), format!("{PIN}\n"));
}

#[test]
fn amazon_installer_help() {
    let out = Command::new("bash").arg(repo().join("rpm/install-amazon-linux.sh")).arg("--help").output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for want in ["--generate LABEL", "--import LABEL", "--dry-run", "CLOUDHSM_PKCS11_LIB", "HSM_SSL_ROOT"] {
        assert!(all.contains(want), "--help lacks {want}:\n{all}");
    }
}

// ---------------------------------------------------------------------------
// (c) apxs/install.sh into this machine's apache2

/// Files the apxs test may create or change, saved before and put back
/// (or removed) on drop, also when the test fails. The a2enmod state
/// (mods-enabled links, /var/lib/apache2/module markers) is restored too.
struct MachineGuard {
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    enabled_before: BTreeSet<String>,
    state_before: BTreeSet<PathBuf>,
}

const MODS_ENABLED: &str = "/etc/apache2/mods-enabled";
const MODULE_STATE: &str = "/var/lib/apache2/module";

fn list_dir(dir: &str) -> BTreeSet<String> {
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

fn walk_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk_files(&p, out);
            } else {
                out.insert(p);
            }
        }
    }
}

impl MachineGuard {
    fn new(files: &[PathBuf]) -> MachineGuard {
        let mut state_before = BTreeSet::new();
        walk_files(Path::new(MODULE_STATE), &mut state_before);
        MachineGuard { saved: files.iter().map(|f| (f.clone(), fs::read(f).ok())).collect(), enabled_before: list_dir(MODS_ENABLED), state_before }
    }
}

impl Drop for MachineGuard {
    fn drop(&mut self) {
        // Disable what was enabled during the test: hsm_ssl first (it
        // depends on ssl), then the rest.
        let now = list_dir(MODS_ENABLED);
        let mut added: Vec<String> = now.difference(&self.enabled_before).filter_map(|f| f.strip_suffix(".load").map(str::to_owned)).collect();
        added.sort_by_key(|m| m != "hsm_ssl");
        for m in &added {
            let _ = Command::new("a2dismod").args(["-q", "-f", m]).output();
        }
        // Any leftover link made during the test.
        for f in list_dir(MODS_ENABLED).difference(&self.enabled_before) {
            let _ = fs::remove_file(Path::new(MODS_ENABLED).join(f));
        }
        // a2enmod/a2dismod markers made during the test.
        let mut state_now = BTreeSet::new();
        walk_files(Path::new(MODULE_STATE), &mut state_now);
        for p in state_now.difference(&self.state_before) {
            let _ = fs::remove_file(p);
        }
        for d in ["enabled_by_admin", "disabled_by_admin"] {
            let _ = fs::remove_dir(Path::new(MODULE_STATE).join(d)); // only if empty
        }
        for (path, content) in &self.saved {
            match content {
                Some(bytes) => {
                    let _ = fs::write(path, bytes);
                }
                None => {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }
}

static APACHE_LOCK: Mutex<()> = Mutex::new(());

#[test]
fn apxs_install_into_debian_apache_then_a2enmod_and_configtest() {
    let _lock = APACHE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(Path::new("/etc/apache2/mods-available").is_dir(), "this test needs Debian's apache2 (/etc/apache2/mods-available)");
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test installs into the system's apache2 and must run as root");
    let libexec = {
        let o = Command::new("apxs").args(["-q", "LIBEXECDIR"]).output().expect("apxs (apache2-dev) installed");
        assert!(o.status.success(), "{}", text(&o));
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
    };
    let module = libexec.join("mod_hsm_ssl.so");
    let load = PathBuf::from("/etc/apache2/mods-available/hsm_ssl.load");
    let conf = PathBuf::from("/etc/apache2/mods-available/hsm_ssl.conf");
    let prefix = TempDir::new("prefix");
    let guard = MachineGuard::new(&[module.clone(), load.clone(), conf.clone()]);
    // The script keeps an existing hsm_ssl.conf; start without one to test
    // the file it writes (the guard puts any previous one back).
    let _ = fs::remove_file(&conf);

    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("apxs/install.sh"))
        .arg("--prefix")
        .arg(prefix.path())
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "apxs/install.sh failed:\n{all}");
    eprintln!("apxs/install.sh took {:.1?}", started.elapsed());
    for want in ["cargo build --release", "apxs -i -n hsm_ssl", "hsm_ssl.load", "a2enmod hsm_ssl"] {
        assert!(all.contains(want), "output lacks '{want}':\n{all}");
    }

    // The module landed in LIBEXECDIR, byte for byte the build.
    let built = fs::read(repo().join("target/release/libmod_hsm_ssl.so")).unwrap();
    assert!(fs::read(&module).unwrap() == built, "{} differs from the build", module.display());
    let tool = prefix.path().join("bin/hsm-ssl-keytool");
    assert!(fs::metadata(&tool).unwrap().permissions().mode() & 0o111 != 0, "keytool not executable");
    for page in ["hsm-ssl-keytool.8", "mod_hsm_ssl.8"] {
        let p = prefix.path().join("share/man/man8").join(page);
        let out = Command::new("man").arg("-l").arg(&p).output().unwrap();
        assert!(out.status.success() && text(&out).contains("SYNOPSIS"), "man -l {}: {}", p.display(), text(&out));
    }

    let load_text = fs::read_to_string(&load).unwrap();
    assert_eq!(load_text.lines().next(), Some("# Depends: ssl"), "{load_text}");
    assert!(load_text.contains(&format!("LoadModule hsm_ssl_module {}", module.display())), "{load_text}");
    let conf_text = fs::read_to_string(&conf).unwrap();
    assert!(conf_text.contains("#HSMSSLLibrary") && conf_text.contains("#HSMSSLPin"), "{conf_text}");
    assert!(!conf_text.lines().any(|l| l.trim_start().starts_with("HSMSSL")), "an active HSMSSL* directive in {}:\n{conf_text}", conf.display());

    // a2enmod enables ssl too, and the configuration is valid with the
    // module loaded (hsm_ssl.load sorts before ssl.load).
    let out = Command::new("a2enmod").arg("hsm_ssl").output().unwrap();
    assert!(out.status.success(), "a2enmod hsm_ssl failed:\n{}", text(&out));
    assert!(Path::new(MODS_ENABLED).join("hsm_ssl.load").exists());
    assert!(Path::new(MODS_ENABLED).join("ssl.load").exists(), "a2enmod did not enable ssl (Depends:)");
    let out = Command::new("apache2ctl").arg("configtest").output().unwrap();
    assert!(out.status.success(), "apache2ctl configtest failed:\n{}", text(&out));
    let out = Command::new("apache2ctl").arg("-M").output().unwrap();
    let mods = text(&out);
    assert!(out.status.success() && mods.contains("hsm_ssl_module") && mods.contains("ssl_module"), "{mods}");

    drop(guard);
    // Restored: no hsm_ssl or newly enabled module, no installed files left.
    assert!(!Path::new(MODS_ENABLED).join("hsm_ssl.load").exists());
    let out = Command::new("apache2ctl").arg("configtest").output().unwrap();
    assert!(out.status.success(), "configtest after cleanup:\n{}", text(&out));
}
