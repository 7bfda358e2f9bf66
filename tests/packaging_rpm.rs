//! The RPM package (rpm/): built with rpm/build.sh on this (Debian) machine,
//! checked with rpmlint, its file list, dependencies and installed layout, and
//! the module from the RPM loaded by Debian's apache2 (`apache2 -t`).
//!
//! Takes a few minutes: rpmbuild compiles the crate in release mode from the
//! vendored tarball. Needs rpm, rpmbuild, rpmlint, rpm2cpio, cpio, shellcheck
//! (apt-get install rpm rpmlint shellcheck cpio, see scripts/install-deps.sh),
//! apache2 and SoftHSM2. A missing tool fails the test; it never skips.
//! `HSM_TEST_KEEP=1` keeps the scratch directory.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const APACHE_BIN: &str = "/usr/sbin/apache2";
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
const SOFTHSM_LIB: &str = "/usr/lib/softhsm/libsofthsm2.so";

const MODULE: &str = "/usr/lib64/httpd/modules/mod_hsm_ssl.so";
const MODCONF: &str = "/etc/httpd/conf.modules.d/10-hsm_ssl.conf";
const EXAMPLE: &str = "/etc/httpd/conf.d/hsm_ssl.conf.example";
const KEYTOOL: &str = "/usr/bin/hsm-ssl-keytool";
const DROPIN: &str = "/usr/lib/systemd/system/httpd.service.d/hsm_ssl.conf";
const SYSCONFIG: &str = "/etc/sysconfig/httpd-hsm-ssl";
const CRED_DIR: &str = "/etc/httpd/hsm-ssl";
const PIN_FILE: &str = "/etc/httpd/hsm-ssl/hsm-ssl-pin";
const DOC: &str = "/usr/share/doc/mod_hsm_ssl/README.md";
const LICENSE: &str = "/usr/share/licenses/mod_hsm_ssl/LICENSE";

/// Files the package ships (plus the directories rpm lists for %doc and
/// %license, and the /usr/lib/.build-id links rpm adds for the binaries).
const FILES: &[&str] = &[MODULE, MODCONF, EXAMPLE, KEYTOOL, DROPIN, SYSCONFIG, PIN_FILE, DOC, LICENSE];
const DIRS: &[&str] = &["/usr/share/doc/mod_hsm_ssl", "/usr/share/licenses/mod_hsm_ssl", CRED_DIR, SHARE, SHARE_DOCS, SHARE_CONF];
/// The docs, example configurations and installer the package ships.
const SHARE: &str = "/usr/share/mod_hsm_ssl";
const SHARE_DOCS: &str = "/usr/share/mod_hsm_ssl/docs";
const SHARE_CONF: &str = "/usr/share/mod_hsm_ssl/httpd-conf";
const INSTALLER: &str = "/usr/share/mod_hsm_ssl/install-amazon-linux.sh";
const COMPLETION: &str = "/usr/share/bash-completion/completions/hsm-ssl-keytool";
/// The manual pages (rpm may compress them: .8 or .8.gz).
const MAN_PAGES: [&str; 2] = ["/usr/share/man/man8/hsm-ssl-keytool.8", "/usr/share/man/man8/mod_hsm_ssl.8"];

/// What the package ships from the checkout: every file of docs/ and
/// httpd-conf/, and the installer.
fn shipped_from_checkout() -> Vec<String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = vec![INSTALLER.to_string(), COMPLETION.to_string()];
    for (dir, to) in [("docs", SHARE_DOCS), ("httpd-conf", SHARE_CONF)] {
        for e in std::fs::read_dir(repo.join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            if dir == "httpd-conf" || name.ends_with(".md") {
                v.push(format!("{to}/{name}"));
            }
        }
    }
    v
}
const BUILD_ID_DIR: &str = "/usr/lib/.build-id";

fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "packaging_rpm: required tool '{name}' not found on PATH. Install it: \
         apt-get install rpm rpmlint shellcheck cpio (or run scripts/install-deps.sh)"
    );
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run, return the output; panic with everything it printed unless it exits 0.
fn run(what: &str, cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{what} failed: {cmd:?}\n{}", show(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// Scratch directory; removed at the end unless the test failed or
/// HSM_TEST_KEEP is set.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("HSM_TEST_KEEP").is_some() {
            eprintln!("[packaging_rpm] keeping {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).permissions().mode() & 0o7777
}

/// All paths under `root` (as absolute paths inside root), files, symlinks
/// and directories, skipping `skip` (relative to root) and its contents.
fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let p = entry.unwrap().path();
        let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
        if skip.iter().any(|s| rel == *s) {
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&p).unwrap().is_dir();
        if is_dir {
            walk(root, &p, skip, out);
        }
        out.insert(rel);
    }
}

/// Parent directories of `paths` up to /, e.g. /usr, /usr/bin, /etc ...
fn parents(paths: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in paths {
        let mut cur = Path::new(p).parent();
        while let Some(d) = cur {
            if d != Path::new("/") {
                out.insert(d.display().to_string());
            }
            cur = d.parent();
        }
    }
    out
}

#[test]
fn rpm_builds_lints_installs_and_loads_in_apache() {
    let t0 = Instant::now();
    let rpmbuild_bin = find_tool("rpmbuild");
    let rpm_bin = find_tool("rpm");
    let rpmlint_bin = find_tool("rpmlint");
    let rpm2cpio_bin = find_tool("rpm2cpio");
    let cpio_bin = find_tool("cpio");
    let shellcheck_bin = find_tool("shellcheck");
    let _ = (find_tool("git"), find_tool("bash"), &rpmbuild_bin);
    assert!(Path::new(APACHE_BIN).is_file(), "{APACHE_BIN} not found: apt-get install apache2");
    assert!(Path::new(&format!("{APACHE_MODULES}/mod_ssl.so")).is_file(), "{APACHE_MODULES}/mod_ssl.so not found: apt-get install apache2");
    assert!(Path::new(SOFTHSM_LIB).is_file(), "{SOFTHSM_LIB} not found: apt-get install softhsm2");

    let scratch_path = std::env::temp_dir().join(format!("hsm-ssl-rpm-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch_path);
    std::fs::create_dir_all(&scratch_path).unwrap();
    let scratch = Scratch(scratch_path);
    let s = &scratch.0;
    let repo = Path::new(REPO);

    // --- build.sh is shellcheck clean --------------------------------------
    run("shellcheck rpm/build.sh", Command::new(&shellcheck_bin).arg(repo.join("rpm/build.sh")));

    // --- build -------------------------------------------------------------
    let work = s.join("work");
    let t_build = Instant::now();
    let out = run(
        "rpm/build.sh",
        Command::new("bash")
            .arg(repo.join("rpm/build.sh"))
            .arg(&work)
            .current_dir(repo)
            // Do not let the test's own cargo settings steer the RPM build.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS"),
    );
    eprintln!("[packaging_rpm] rpm/build.sh took {:.0?}", t_build.elapsed());
    let text = stdout(&out);
    let line_value = |prefix: &str| -> PathBuf {
        let v = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("rpm/build.sh printed no '{prefix}' line\n{}", show(&out)));
        PathBuf::from(v.trim())
    };
    let bin_rpm = line_value("binary rpm: ");
    let src_rpm = line_value("source rpm: ");
    assert!(bin_rpm.is_file(), "binary RPM {} does not exist", bin_rpm.display());
    assert!(src_rpm.is_file(), "source RPM {} does not exist", src_rpm.display());
    assert!(bin_rpm.starts_with(&work) && src_rpm.starts_with(&work), "RPMs are not under the work dir {}", work.display());
    assert!(text.contains("--nodeps"), "on Debian build.sh must say it runs rpmbuild with --nodeps:\n{text}");

    // The tarball carries vendored crates and the cargo source replacement.
    let tarball = work.join("rpmbuild/SOURCES/mod_hsm_ssl-0.1.0.tar.gz");
    let listing = stdout(&run("tar -tzf", Command::new("tar").arg("-tzf").arg(&tarball)));
    for needle in [
        "mod_hsm_ssl-0.1.0/.cargo/config.toml",
        "mod_hsm_ssl-0.1.0/vendor/cryptoki/Cargo.toml",
        "mod_hsm_ssl-0.1.0/Cargo.lock",
        "mod_hsm_ssl-0.1.0/README.md",
    ] {
        assert!(listing.lines().any(|l| l == needle), "{needle} is not in {}", tarball.display());
    }

    // --- rpmlint: no errors ------------------------------------------------
    // Both packages in one run: the filters of rpm/mod_hsm_ssl.rpmlintrc
    // apply to one or the other, and rpmlint reports a filter that matched
    // nothing as an error.
    let rpmlintrc = repo.join("rpm/mod_hsm_ssl.rpmlintrc");
    let out = Command::new(&rpmlint_bin).arg("-r").arg(&rpmlintrc).arg(&bin_rpm).arg(&src_rpm).output().expect("run rpmlint");
    let lint = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[packaging_rpm] rpmlint:\n{lint}");
    let errors: Vec<&str> = lint.lines().filter(|l| l.contains(": E: ")).collect();
    assert!(errors.is_empty(), "rpmlint reports errors:\n{}", errors.join("\n"));
    assert!(lint.contains("2 packages and 0 specfiles checked; 0 errors,"), "rpmlint did not report 0 errors:\n{lint}");
    assert!(out.status.success(), "rpmlint failed:\n{}", show(&out));

    // --- file list ---------------------------------------------------------
    // name, mode, owner, flags (c = %config, n = noreplace, d = %doc, l = %license), link target
    let q = stdout(&run(
        "rpm -qp --qf",
        Command::new(&rpm_bin)
            .arg("-qp")
            .arg("--qf")
            .arg("[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\t%{FILEFLAGS:fflags}\t%{FILELINKTOS}\n]")
            .arg(&bin_rpm),
    ));
    let ql = stdout(&run("rpm -qlp", Command::new(&rpm_bin).arg("-qlp").arg(&bin_rpm)));
    let listed: BTreeSet<String> = ql.lines().map(str::to_string).collect();
    let mut expected: BTreeSet<String> = FILES.iter().chain(DIRS).map(|s| s.to_string()).collect();
    expected.extend(shipped_from_checkout());
    // Each manual page once, compressed or not.
    for page in MAN_PAGES {
        let found: Vec<&str> = ql.lines().filter(|l| *l == page || l.strip_prefix(page).is_some_and(|ext| ext == ".gz")).collect();
        assert_eq!(found.len(), 1, "{page}(.gz) in the RPM: {found:?}\n{ql}");
        expected.insert(found[0].to_string());
    }
    // rpm's /usr/lib/.build-id links: allowed, but only for our two binaries.
    let mut build_ids = BTreeSet::new();
    for line in q.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "unexpected rpm --qf line {line:?}");
        if f[0].starts_with(BUILD_ID_DIR) {
            build_ids.insert(f[0].to_string());
            if !f[4].is_empty() {
                assert!(
                    f[4].ends_with(MODULE) || f[4].ends_with(KEYTOOL),
                    "build-id link {} points at {} (not the module or the key tool)",
                    f[0],
                    f[4]
                );
            }
        }
    }
    expected.extend(build_ids.iter().cloned());
    assert_eq!(listed, expected, "rpm -qlp lists other paths than expected\n{ql}");
    let attrs = |path: &str| -> Vec<String> {
        q.lines()
            .find(|l| l.split('\t').next() == Some(path))
            .unwrap_or_else(|| panic!("{path} not in the RPM"))
            .split('\t')
            .map(str::to_string)
            .collect()
    };
    let a = attrs(SYSCONFIG);
    assert_eq!((a[1].as_str(), a[2].as_str()), ("-rw-------", "root:root"), "{SYSCONFIG}: {a:?}");
    assert!(a[3].contains('c') && a[3].contains('n'), "{SYSCONFIG} must be %config(noreplace): {a:?}");
    let a = attrs(PIN_FILE);
    assert_eq!((a[1].as_str(), a[2].as_str()), ("-rw-------", "root:root"), "{PIN_FILE}: {a:?}");
    assert!(a[3].contains('c') && a[3].contains('n'), "{PIN_FILE} must be %config(noreplace): {a:?}");
    let a = attrs(CRED_DIR);
    assert_eq!((a[1].as_str(), a[2].as_str()), ("drwx------", "root:root"), "{CRED_DIR}: {a:?}");
    let a = attrs(MODCONF);
    assert!(a[3].contains('c') && a[3].contains('n'), "{MODCONF} must be %config(noreplace): {a:?}");
    assert!(attrs(DOC)[3].contains('d'), "{DOC} must be %doc");
    assert!(attrs(LICENSE)[3].contains('l'), "{LICENSE} must be %license");
    for p in [MODULE, KEYTOOL] {
        assert_eq!(attrs(p)[1], "-rwxr-xr-x", "{p} mode");
    }

    // --- requires ----------------------------------------------------------
    let req = stdout(&run("rpm -qp --requires", Command::new(&rpm_bin).arg("-qp").arg("--requires").arg(&bin_rpm)));
    let reqs: BTreeSet<&str> = req.lines().map(str::trim).collect();
    for r in ["httpd", "mod_ssl"] {
        assert!(reqs.contains(r), "the RPM does not require {r}:\n{req}");
    }
    assert!(reqs.iter().any(|r| r.starts_with("libssl.so.3")), "no libssl.so.3 dependency:\n{req}");

    // --- install into a scratch root --------------------------------------
    let root = s.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let dbpath = "/var/lib/rpm";
    run(
        "rpm -i --root",
        Command::new(&rpm_bin).arg("--root").arg(&root).arg("--dbpath").arg(dbpath).args(["-i", "--nodeps", "--noscripts"]).arg(&bin_rpm),
    );
    // rpm -V: every file as packaged (digest, mode, owner).
    run("rpm -V --root", Command::new(&rpm_bin).arg("--root").arg(&root).arg("--dbpath").arg(dbpath).args(["-V", "--nodeps", "mod_hsm_ssl"]));
    let mut on_disk = BTreeSet::new();
    walk(&root, &root, &[dbpath], &mut on_disk);
    let is_dir = |p: &str| std::fs::symlink_metadata(root.join(&p[1..])).map(|m| m.is_dir()).unwrap_or(false);
    // Every path rpm -qlp lists is there (directories as directories) ...
    for p in &expected {
        assert!(root.join(&p[1..]).symlink_metadata().is_ok(), "{p} is listed but was not installed");
    }
    for d in DIRS {
        assert!(is_dir(d), "{d} is not a directory after install");
    }
    // ... no other file, and no directory but the parents of the listed
    // paths (and of the rpm database).
    let files_on_disk: BTreeSet<String> = on_disk.iter().filter(|p| !is_dir(p)).cloned().collect();
    let files_expected: BTreeSet<String> = expected.iter().filter(|p| !is_dir(p)).cloned().collect();
    assert_eq!(files_on_disk, files_expected, "rpm -i --root installed other files than rpm -qlp lists");
    let mut allowed_dirs = parents(&expected);
    allowed_dirs.extend(expected.iter().cloned());
    allowed_dirs.extend(parents(&BTreeSet::from([dbpath.to_string()])));
    for d in on_disk.iter().filter(|p| is_dir(p)) {
        assert!(allowed_dirs.contains(d), "rpm -i --root created an unexpected directory {d}");
    }
    assert_eq!(mode(&root.join(&SYSCONFIG[1..])), 0o600, "{SYSCONFIG} mode after install");
    assert_eq!(std::fs::metadata(root.join(&SYSCONFIG[1..])).unwrap().permissions().mode() & 0o077, 0);
    assert_eq!(mode(&root.join(&PIN_FILE[1..])), 0o600, "{PIN_FILE} mode after install");
    assert_eq!(mode(&root.join(&CRED_DIR[1..])), 0o700, "{CRED_DIR} mode after install");
    assert_eq!(std::fs::metadata(root.join(&PIN_FILE[1..])).unwrap().len(), 0, "{PIN_FILE} must be installed empty");

    // --- contents (rpm2cpio | cpio) ----------------------------------------
    let ex = s.join("extract");
    std::fs::create_dir_all(&ex).unwrap();
    run(
        "rpm2cpio | cpio",
        Command::new("sh")
            .arg("-c")
            .arg(format!("'{}' '{}' | '{}' -idm --quiet --no-absolute-filenames", rpm2cpio_bin.display(), bin_rpm.display(), cpio_bin.display()))
            .current_dir(&ex),
    );
    let read = |p: &str| std::fs::read_to_string(ex.join(&p[1..])).unwrap_or_else(|e| panic!("read {p} from the RPM: {e}"));
    assert!(read(MODCONF).lines().any(|l| l.trim() == "LoadModule hsm_ssl_module modules/mod_hsm_ssl.so"), "{MODCONF}:\n{}", read(MODCONF));
    let example = read(EXAMPLE);
    for needle in [
        "#HSMSSLLibrary /opt/cloudhsm/lib/libcloudhsm_pkcs11.so",
        "#HSMSSLPin file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin",
        "SSLCertificateKeyFile \"pkcs11:object=www-rsa\"",
        "SSLCertificateKeyFile \"pkcs11:object=www-ec\"",
        "SSLSessionCache",
        "SSLSessionTickets",
    ] {
        assert!(example.contains(needle), "{EXAMPLE} lacks {needle:?}");
    }
    assert!(example.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')), "{EXAMPLE} must be all comments");
    let dropin = read(DROPIN);
    assert!(dropin.contains("[Service]") && dropin.contains("EnvironmentFile=-/etc/sysconfig/httpd-hsm-ssl"), "{DROPIN}:\n{dropin}");
    assert!(dropin.lines().any(|l| l == "LoadCredential=hsm-ssl-pin:/etc/httpd/hsm-ssl/hsm-ssl-pin"), "{DROPIN}:\n{dropin}");
    let sysconfig = read(SYSCONFIG);
    assert!(sysconfig.lines().any(|l| l.trim() == "#CLOUDHSM_PIN=crypto-user:password"), "{SYSCONFIG}:\n{sysconfig}");
    assert!(sysconfig.lines().all(|l| l.trim().is_empty() || l.starts_with('#')), "{SYSCONFIG} must set nothing");
    assert!(read(LICENSE).contains("Apache License") && read(LICENSE).contains("Version 2.0"), "{LICENSE}");
    assert!(read(DOC).contains("HSMSSLLibrary"), "{DOC} is not the README");
    // The shipped docs are the checkout's, the installer runs from there.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(read(&format!("{SHARE_DOCS}/messages.md")), std::fs::read_to_string(repo.join("docs/messages.md")).unwrap());
    assert_eq!(attrs(INSTALLER)[1], "-rwxr-xr-x", "{INSTALLER} mode");
    let help = Command::new("bash").arg(ex.join(&INSTALLER[1..])).arg("--help").output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--generate"), "{INSTALLER} --help: {help:?}");
    assert!(read(COMPLETION).contains("complete -F"), "{COMPLETION}");
    // The manual pages render, and say what they must.
    for (page, needles) in [
        (MAN_PAGES[0], &["hsm-ssl-keytool", "COMMAND OPTIONS", "generate", "--label", "Exit codes"][..]),
        (MAN_PAGES[1], &["MOD_HSM_SSL", "DIRECTIVES", "HSMSSLLibrary", "HSMSSLKeyServiceUser", "HSMSSLHealthMaxAge"][..]),
    ] {
        let file = [page.to_string(), format!("{page}.gz")].into_iter().map(|p| ex.join(&p[1..])).find(|p| p.exists()).unwrap();
        let out = Command::new("man").arg("-l").arg(&file).env("MANWIDTH", "100").env_remove("MAN_KEEP_FORMATTING").output().unwrap();
        // Justified text: one space between words, ASCII hyphens.
        let text = String::from_utf8_lossy(&out.stdout).replace('\u{2010}', "-").split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(out.status.success(), "man -l {}: {out:?}", file.display());
        for n in needles {
            assert!(text.contains(n), "{page} lacks {n:?}:\n{text}");
        }
    }

    // --- the extracted module loads in Debian's apache2 --------------------
    let so = ex.join(&MODULE[1..]);
    let ar = s.join("apache");
    for d in ["run", "logs"] {
        std::fs::create_dir_all(ar.join(d)).unwrap();
    }
    let port = free_port();
    let m = APACHE_MODULES;
    let conf = format!(
        "ServerRoot \"{r}\"\n\
         DefaultRuntimeDir {r}/run\nPidFile {r}/run/httpd.pid\nMutex file:{r}/run default\n\
         ErrorLog {r}/logs/error.log\n\
         LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
         LoadModule authz_core_module {m}/mod_authz_core.so\n\
         LoadModule ssl_module {m}/mod_ssl.so\n\
         LoadModule hsm_ssl_module {so}\n\
         HSMSSLLibrary {SOFTHSM_LIB}\n\
         ServerName localhost\nListen 127.0.0.1:{port}\n",
        r = ar.display(),
        so = so.display(),
    );
    let conf_file = ar.join("httpd.conf");
    std::fs::write(&conf_file, conf).unwrap();
    let apache = |args: &[&str]| {
        let mut c = Command::new(APACHE_BIN);
        c.arg("-d").arg(&ar).arg("-f").arg(&conf_file).args(args).env("LANG", "C");
        for k in ["SOFTHSM2_CONF", "OPENSSL_CONF", "HSM_P11WRAP_LOG", "HSM_P11WRAP_CONTROL", "HSM_P11WRAP_TARGET"] {
            c.env_remove(k);
        }
        c
    };
    let out = run("apache2 -t", &mut apache(&["-t"]));
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("Syntax OK"), "apache2 -t did not print Syntax OK:\n{}", show(&out));
    let out = run("apache2 -M", &mut apache(&["-M"]));
    assert!(stdout(&out).contains("hsm_ssl_module (shared)"), "apache2 -M does not list hsm_ssl_module:\n{}", show(&out));

    // --- the key tool from the RPM runs -------------------------------------
    for tool in [ex.join(&KEYTOOL[1..]), root.join(&KEYTOOL[1..])] {
        let out = run("hsm-ssl-keytool --help", Command::new(&tool).arg("--help"));
        let help = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(help.contains("Usage: hsm-ssl-keytool"), "{} --help:\n{help}", tool.display());
    }

    eprintln!("[packaging_rpm] all checks passed in {:.0?}", t0.elapsed());
}
