//! Scratch directories and paths of the build artifacts under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::util::chmod;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory under `$TMPDIR/hsm-ssl-tests/`, unique per process and call,
/// mode 0755 (apache2 children, running as www-data, must traverse it).
/// Removed on drop unless the thread is panicking (test failed) or
/// `HSM_TEST_KEEP` is set; the path is printed when kept.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let base = std::env::temp_dir().join("hsm-ssl-tests");
        std::fs::create_dir_all(&base).expect("create test base dir");
        // The base is shared by all tests/users: world-traversable, sticky.
        let _ = std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o1777));
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        let path = base.join(format!("{safe}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("create test dir");
        chmod(&path, 0o755);
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory (created, 0755).
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create subdir");
        chmod(&p, 0o755);
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("HSM_TEST_KEEP").is_some() {
            eprintln!("[harness] keeping test dir {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The workspace root (this file is tests/common/dirs.rs of the root package).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo profile output dir the running test binary lives in
/// (e.g. `target/debug`): the test exe is `<that>/deps/<name>-<hash>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe dir");
    if deps.file_name().map(|n| n == "deps").unwrap_or(false) {
        deps.parent().unwrap().to_path_buf()
    } else {
        // Fallback: $CARGO_TARGET_DIR or <workspace>/target, debug profile.
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug")
    }
}

/// The module under test, as built by cargo for this profile
/// (`target/debug/libmod_hsm_ssl.so`; cargo builds the cdylib together with
/// the rlib the integration tests link against).
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HSM_TEST_MODULE") {
        return PathBuf::from(p);
    }
    // `cargo test` / `cargo bench` build the cdylib into deps/ and copy it
    // up only on `cargo build`; take whichever is newer, so a test never
    // loads a module older than the code it was built with.
    let top = profile_dir().join("libmod_hsm_ssl.so");
    let deps = profile_dir().join("deps/libmod_hsm_ssl.so");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(&top), mtime(&deps)) {
        (Some(t), Some(d)) if d > t => deps,
        (None, Some(_)) => deps,
        _ => top,
    }
}

/// The real SoftHSM2 PKCS#11 library.
pub const SOFTHSM_LIB: &str = "/usr/lib/softhsm/libsofthsm2.so";

static WRAP_BUILD: Mutex<bool> = Mutex::new(false);

/// `libhsm_test_p11wrap.so` for this profile, built with
/// `cargo build -p hsm_test_p11wrap` (once per test process) if it is missing
/// or older than its sources. CI should build it up front
/// (`cargo build -p hsm_test_p11wrap`) so this is a no-op.
pub fn p11wrap_path() -> PathBuf {
    let lib = profile_dir().join("libhsm_test_p11wrap.so");
    let mut built = WRAP_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !*built && is_stale(&lib) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args(["build", "-p", "hsm_test_p11wrap"]);
        if profile_dir().file_name().map(|n| n == "release").unwrap_or(false) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p hsm_test_p11wrap");
        assert!(status.success(), "cargo build -p hsm_test_p11wrap failed");
    }
    *built = true;
    assert!(lib.exists(), "{} missing after build", lib.display());
    lib
}

fn is_stale(lib: &Path) -> bool {
    let Ok(lib_time) = std::fs::metadata(lib).and_then(|m| m.modified()) else {
        return true;
    };
    fn newest(p: &Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(p).ok()?;
        let mut t = meta.modified().ok()?;
        if meta.is_dir() {
            for e in std::fs::read_dir(p).ok()?.flatten() {
                if let Some(child) = newest(&e.path()) {
                    t = t.max(child);
                }
            }
        }
        Some(t)
    }
    let src = workspace_root().join("tests/p11wrap");
    let newest_src = [src.join("Cargo.toml"), src.join("src")].iter().filter_map(|p| newest(p)).max();
    newest_src.map(|t| t > lib_time).unwrap_or(false)
}
