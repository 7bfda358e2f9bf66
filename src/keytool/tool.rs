//! What every key tool command needs: options, the token and PIN (from the
//! command line or, like httpd, from the HSMSSL* lines of the Apache
//! configuration), a logged-in session, and errors with exit codes.

use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};

use super::cli::TargetArgs;
use crate::pkcs11::pin::PinSource;
use crate::pkcs11::secret::Secret;
use crate::pkcs11::token::{ck_error_text, find_token, Binding};
use crate::pkcs11::uri::{KeyUri, TokenSelector};

/// Exit codes (documented in `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Bad command line.
    Usage = 1,
    /// Library, token, PIN or login.
    Setup = 2,
    /// The key: not found, label taken, unsupported type or file.
    Key = 3,
    /// Certificate and key do not match.
    Mismatch = 4,
    /// Reading or writing a file; anything else.
    Other = 5,
    /// The user said no.
    Cancelled = 6,
}

#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub msg: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

pub fn fail(code: Code, msg: impl Into<String>) -> Failure {
    Failure { code, msg: msg.into() }
}

pub type Res<T> = Result<T, Failure>;

/// `--id`: the CKA_ID in hex, as `list` prints it.
pub fn parse_id(s: &str) -> Res<Vec<u8>> {
    let bad = || fail(Code::Usage, format!("--id {s}: give the key's CKA_ID in hex, as list prints it (e.g. --id 6e0c14ecf89e4008)"));
    if s.is_empty() || s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad())).collect()
}

/// A `--label` value, checked with [`check_label`].
pub fn label(label: &str) -> Res<&str> {
    check_label(label)?;
    Ok(label)
}

/// HSMSSLLibrary / HSMSSLPin / HSMSSLToken as an Apache configuration
/// states them (the main file and what it includes).
#[derive(Debug, Default)]
pub struct HttpdDefaults {
    pub library: Option<String>,
    pub pin: Option<String>,
    pub token: Option<String>,
    pub source: Option<PathBuf>,
}

pub fn default_httpd_conf() -> Option<PathBuf> {
    ["/etc/httpd/conf/httpd.conf", "/etc/apache2/apache2.conf"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn unquote(s: &str) -> String {
    expand_env(s.trim().trim_matches('"'), |v| std::env::var(v).ok())
}

/// `${VAR}` replaced by VAR's value, as httpd does when it reads its
/// configuration; a variable that is not set stays as written (httpd does
/// the same, and the PIN source then names it). This is how
/// `HSMSSLPin file:${CREDENTIALS_DIRECTORY}/...` works for the tool when
/// the operator exports the directory systemd gives httpd.
fn expand_env(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[i..i + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads `conf` and the files it includes (Include / IncludeOptional, with
/// `*` in the last path component), relative to its ServerRoot.
pub fn read_httpd_defaults(conf: &Path) -> Res<HttpdDefaults> {
    let mut d = HttpdDefaults { source: Some(conf.to_path_buf()), ..Default::default() };
    let root = conf.parent().and_then(|p| if p.ends_with("conf") { p.parent() } else { Some(p) }).unwrap_or(Path::new("/"));
    let mut server_root = root.to_path_buf();
    let mut queue = vec![conf.to_path_buf()];
    let mut seen = 0;
    while let Some(file) = queue.pop() {
        seen += 1;
        if seen > 500 {
            break;
        }
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if file == conf => return Err(fail(Code::Setup, format!("cannot read {}: {e}", file.display()))),
            Err(_) => continue,
        };
        let mut included = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some((word, rest)) = line.split_once(char::is_whitespace) else { continue };
            match word.to_ascii_lowercase().as_str() {
                "serverroot" => server_root = PathBuf::from(unquote(rest)),
                "hsmssllibrary" => d.library = Some(unquote(rest)),
                "hsmsslpin" => d.pin = Some(unquote(rest)),
                "hsmssltoken" => d.token = Some(unquote(rest)),
                "include" | "includeoptional" => included.push(unquote(rest)),
                _ => {}
            }
        }
        for inc in included.into_iter().rev() {
            let p = PathBuf::from(&inc);
            let p = if p.is_absolute() { p } else { server_root.join(p) };
            queue.extend(expand_glob(&p));
        }
    }
    Ok(d)
}

fn expand_glob(p: &Path) -> Vec<PathBuf> {
    let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let Some((pre, post)) = name.split_once('*') else { return vec![p.to_path_buf()] };
    let dir = p.parent().unwrap_or(Path::new("/"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|e| {
            let n = e.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len()
        })
        .collect();
    v.sort();
    v.reverse(); // popped from the end: keep file order
    v
}

/// Reads a line from the terminal without echo.
pub fn prompt_hidden(prompt: &str) -> Res<zeroize::Zeroizing<String>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| fail(Code::Setup, "no PIN source given (--pin, or HSMSSLPin in the Apache configuration) and no terminal to ask on"))?;
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&tty);
    // SAFETY: termios calls on the open terminal fd with a zeroed struct
    // that tcgetattr fills; the old settings are restored below.
    let old = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(fail(Code::Setup, "cannot read the terminal settings"));
        }
        let old = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        old
    };
    let mut w = &tty;
    let _ = write!(w, "{prompt}");
    let _ = w.flush();
    let mut line = zeroize::Zeroizing::new(String::new());
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restoring the settings read above on the same fd.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    r.map_err(|e| fail(Code::Setup, format!("reading from the terminal: {e}")))?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

/// Reads a line from the terminal (for confirmations).
pub fn prompt_visible(prompt: &str) -> Res<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| fail(Code::Cancelled, "no terminal to confirm on; add --yes"))?;
    let mut w = &tty;
    let _ = write!(w, "{prompt}");
    let _ = w.flush();
    let mut line = String::new();
    std::io::BufReader::new(&tty).read_line(&mut line).map_err(|e| fail(Code::Other, format!("reading from the terminal: {e}")))?;
    Ok(line)
}

/// The library, token and PIN a command works with.
pub struct Target {
    pub library: PathBuf,
    pub token: TokenSelector,
    pub pin_source: Option<PinSource>,
}

impl Target {
    pub fn from_args(o: &TargetArgs) -> Res<Target> {
        let conf = match &o.httpd_conf {
            Some(p) => Some(PathBuf::from(p)),
            None => default_httpd_conf(),
        };
        let d = match &conf {
            Some(c) if c.exists() || o.httpd_conf.is_some() => read_httpd_defaults(c)?,
            _ => HttpdDefaults::default(),
        };
        let library = o.library.clone().or(d.library).ok_or_else(|| {
            fail(
                Code::Setup,
                "no PKCS#11 library: give --library /path/to/vendor-pkcs11.so (or HSMSSLLibrary in the Apache configuration, --httpd-conf)",
            )
        })?;
        let token = match o.token.clone().or(d.token) {
            Some(t) => TokenSelector::parse_directive(&t).map_err(|e| fail(Code::Usage, super::messages::token(&e)))?,
            None => TokenSelector::default(),
        };
        let pin_source = match o.pin.clone().or(d.pin) {
            Some(p) => Some(PinSource::parse(&p).map_err(|e| fail(Code::Usage, super::messages::pin("--pin", &e)))?),
            None => None,
        };
        Ok(Target { library: PathBuf::from(library), token, pin_source })
    }

    pub fn pin(&self) -> Res<Secret> {
        match &self.pin_source {
            Some(s) => s.read().map_err(|e| fail(Code::Setup, super::messages::pin("--pin", &e))),
            None => {
                let p = prompt_hidden("Token user PIN (CloudHSM: user:password): ")?;
                if p.is_empty() {
                    return Err(fail(Code::Setup, "empty PIN"));
                }
                Ok(Secret::new(p.as_bytes().to_vec()))
            }
        }
    }

    /// What the module's token layer needs, for commands that resolve a
    /// key like httpd does (csr, selfsign, check, config).
    pub fn binding(&self) -> Res<Arc<Binding>> {
        Ok(Arc::new(Binding {
            library: self.library.clone(),
            pin: Arc::new(self.pin()?),
            default_token: self.token.clone(),
            max_sessions: 2,
            session_wait: Duration::from_secs(30),
            direct_calls: false,
            op_timeout: Duration::from_secs(30),
        }))
    }

    /// The PKCS#11 library, loaded and initialized (no session, no login).
    pub fn context(&self) -> Res<Pkcs11> {
        let lib = &self.library;
        log::info!("HSM00720: loading the PKCS#11 library {}", lib.display());
        let ctx = Pkcs11::new(lib).map_err(|e| fail(Code::Setup, format!("{}: {}", lib.display(), ck_error_text(&e))))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
            Err(e) => Err(fail(Code::Setup, format!("{}: {}", lib.display(), ck_error_text(&e)))),
        }
    }

    /// The token the options (or the configuration) select.
    pub fn slot(&self, ctx: &Pkcs11) -> Res<(cryptoki::slot::Slot, cryptoki::slot::TokenInfo)> {
        find_token(ctx, &self.token, &self.library).map_err(|e| fail(Code::Setup, e))
    }

    /// A logged-in R/W session, for commands that create or delete objects.
    pub fn session(&self) -> Res<(Pkcs11, Session, String)> {
        let ctx = self.context()?;
        let (slot, info) = self.slot(&ctx)?;
        let label = info.label().trim().to_string();
        if info.user_pin_locked() {
            return Err(fail(Code::Setup, format!("token '{label}': the user PIN is locked; not trying to log in")));
        }
        if info.user_pin_final_try() {
            return Err(fail(Code::Setup, format!("token '{label}': the next wrong PIN would lock the user; not trying to log in")));
        }
        log::info!("HSM00721: token '{label}' (slot {}): opening a session and logging in", slot.id());
        let session = ctx.open_rw_session(slot).map_err(|e| fail(Code::Setup, format!("token '{label}': {}", ck_error_text(&e))))?;
        let pin = self.pin()?;
        match session.login_with_raw(UserType::User, &pin.to_raw_auth_pin()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(fail(Code::Setup, format!("token '{label}': wrong PIN (CKR_PIN_INCORRECT); tried once")))
            }
            Err(e) => return Err(fail(Code::Setup, format!("token '{label}': login failed: {}", ck_error_text(&e)))),
        }
        pin.wipe();
        log::info!("HSM00722: logged in to token '{label}'");
        Ok((ctx, session, label))
    }
}

/// Why `path` may not be written as `--out`: a symbolic link (never written
/// through, even with `--force`), not a regular file, or an existing file
/// without `replace`. Checked before the token is used and again, atomically,
/// by [`write_out_file`].
pub fn check_out_path(path: &Path, replace: bool) -> Res<()> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(fail(Code::Other, format!("--out {shown} is a symbolic link; not writing through it: give the path of the file itself")))
        }
        Ok(m) if !m.is_file() => Err(fail(Code::Other, format!("--out {shown} exists and is not a regular file"))),
        Ok(_) if !replace => Err(fail(Code::Other, format!("--out {shown} already exists; add --force to replace it"))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(Code::Other, format!("--out {shown}: {e}"))),
    }
}

/// Writes `data` (a certificate or request: mode 0644 less the umask) to
/// `path` so that nothing is ever lost or half written: into a new
/// temporary file in the same directory (O_CREAT|O_EXCL|O_NOFOLLOW),
/// fsynced, then renamed to `path`. Without `replace` the rename refuses an
/// existing `path` itself (RENAME_NOREPLACE, or link(2) where the file
/// system lacks it), so a file that appeared after [`check_out_path`] is
/// not replaced either; with `replace` the old file is swapped for the new
/// one in one step. A rename never follows a symbolic link at `path`.
pub fn write_out_file(path: &Path, data: &[u8], replace: bool) -> Res<()> {
    check_out_path(path, replace)?;
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temp_beside(path, dir)?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    drop(file);
    let moved = written.and_then(|()| if replace { std::fs::rename(&tmp, path) } else { rename_noreplace(&tmp, path) });
    if let Err(e) = moved {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists => fail(Code::Other, format!("--out {shown} already exists; add --force to replace it")),
            _ => fail(Code::Other, format!("writing {shown}: {e}")),
        });
    }
    // The rename is on disk once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new, empty file `.<name>.<random>.tmp` in `dir`.
fn create_temp_beside(path: &Path, dir: &Path) -> Res<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| fail(Code::Other, format!("--out {}: not a file name", path.display())))?;
    let mut last = None;
    for _ in 0..16 {
        let mut r = [0u8; 6];
        openssl::rand::rand_bytes(&mut r).map_err(|e| fail(Code::Other, format!("no random bytes from OpenSSL: {e}")))?;
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), crate::pkcs11::uri::hex(&r)));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(fail(Code::Other, format!("cannot create a file in {}: {e}", dir.display()))),
        }
    }
    Err(fail(Code::Other, format!("cannot create a temporary file in {}: {}", dir.display(), last.map(|e| e.to_string()).unwrap_or_default())))
}

/// rename(2) that fails with AlreadyExists instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that live until the call returns.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // The file system (or kernel) has no RENAME_NOREPLACE: link(2)
        // refuses an existing name too.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// A token label as it goes into a `pkcs11:` URI.
/// The key URI for `label` (and `id`, when given) on `token`.
pub fn key_uri_id(token: Option<&str>, label: &str, id: Option<&[u8]>) -> String {
    match id {
        Some(id) => format!("{};id={}", key_uri(token, label), pct_bytes(id)),
        None => key_uri(token, label),
    }
}

/// Bytes percent-encoded, every one (a CKA_ID in a key URI's `id=`).
pub fn pct_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("%{x:02x}")).collect()
}

pub fn pct(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The key URI the tool prints for `label` (on `token` if given): every URI
/// the tool shows or resolves is built here, so [`check_label`] can test
/// exactly that form.
pub fn key_uri(token: Option<&str>, label: &str) -> String {
    match token {
        Some(t) => format!("pkcs11:token={};object={}", pct(t), pct(label)),
        None => format!("pkcs11:object={}", pct(label)),
    }
}

/// Refuses a key label httpd could not find the key by: empty (the URI
/// would end in `object=`, and an empty label matches every unlabelled
/// object), with control characters (invisible in listings and logs), or
/// one whose `pkcs11:` URI does not parse back, with the module's own
/// parser, to the same label.
pub fn check_label(label: &str) -> Res<()> {
    if label.is_empty() {
        return Err(fail(
            Code::Usage,
            "--label is empty: give the key a name, e.g. --label www-rsa (httpd finds the key by it: pkcs11:object=<label>)",
        ));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(fail(Code::Usage, format!("--label {label:?} contains the control character U+{:04X}: use printable characters only", c as u32)));
    }
    let uri = key_uri(None, label);
    match KeyUri::parse(&uri) {
        Ok(parsed) if parsed.object.as_deref() == Some(label) => Ok(()),
        Ok(parsed) => Err(fail(Code::Usage, format!("--label {label:?}: its key URI {uri} reads back as {:?}; choose another label", parsed.object))),
        Err(e) => Err(fail(Code::Usage, format!("--label {label:?}: its key URI {uri} does not parse ({e}); choose another label"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn httpd_defaults_come_from_the_main_file_and_its_includes() {
        let d = std::env::temp_dir().join(format!("keytool-conf-{}", std::process::id()));
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        std::fs::write(d.join("httpd.conf"), format!("ServerRoot {}\nHSMSSLLibrary /lib/p11.so\nIncludeOptional conf.d/*.conf\n", d.display()))
            .unwrap();
        std::fs::write(d.join("conf.d/hsm.conf"), "HSMSSLPin \"env:CLOUDHSM_PIN\"\nHSMSSLToken web\n").unwrap();
        let x = read_httpd_defaults(&d.join("httpd.conf")).unwrap();
        assert_eq!(x.library.as_deref(), Some("/lib/p11.so"));
        assert_eq!(x.pin.as_deref(), Some("env:CLOUDHSM_PIN"));
        assert_eq!(x.token.as_deref(), Some("web"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn set_variables_are_expanded_and_unset_ones_kept() {
        let env = |v: &str| (v == "CREDENTIALS_DIRECTORY").then(|| "/etc/httpd/hsm-ssl".to_string());
        assert_eq!(expand_env("file:${CREDENTIALS_DIRECTORY}/hsm-ssl-pin", env), "file:/etc/httpd/hsm-ssl/hsm-ssl-pin");
        assert_eq!(expand_env("file:${NOPE}/pin", env), "file:${NOPE}/pin");
        assert_eq!(expand_env("a${CREDENTIALS_DIRECTORY}b${", env), "a/etc/httpd/hsm-sslb${");
        assert_eq!(expand_env("plain", env), "plain");
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keytool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn out_files_are_never_written_through_a_symlink_or_over_a_file_without_force() {
        let d = scratch("out");
        let target = d.join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = d.join("www.csr");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for force in [false, true] {
            let f = write_out_file(&link, b"new", force).unwrap_err();
            assert!(f.code == Code::Other && f.msg.contains("symbolic link"), "{}", f.msg);
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

        let f = write_out_file(&target, b"new", false).unwrap_err();
        assert!(f.msg.contains("already exists; add --force"), "{}", f.msg);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        let f = write_out_file(&d, b"new", true).unwrap_err();
        assert!(f.msg.contains("not a regular file"), "{}", f.msg);

        write_out_file(&target, b"replaced", true).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "replaced");
        let fresh = d.join("fresh.crt");
        write_out_file(&fresh, b"cert", false).unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "cert");
        // No temporary file is left behind.
        assert_eq!(entries(&d), ["fresh.crt", "precious", "www.csr"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_final_rename_refuses_a_file_that_appeared_after_the_check() {
        let d = scratch("race");
        let (from, to) = (d.join("tmp"), d.join("target"));
        std::fs::write(&from, "new").unwrap();
        std::fs::write(&to, "appeared meanwhile").unwrap();
        assert_eq!(rename_noreplace(&from, &to).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "appeared meanwhile");
        // A dangling symlink is a name that exists, too.
        std::fs::remove_file(&to).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), &to).unwrap();
        assert_eq!(rename_noreplace(&from, &to).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!d.join("nowhere").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn labels_are_percent_encoded_for_uris() {
        assert_eq!(pct("www rsa;1"), "www%20rsa%3B1");
        assert_eq!(key_uri(Some("web tier"), "www;rsa"), "pkcs11:token=web%20tier;object=www%3Brsa");
    }

    #[test]
    fn labels_that_cannot_name_a_key_are_refused_as_usage_errors() {
        for (label, needle) in [("", "--label is empty"), ("www\nrsa", "U+000A"), ("www\u{1b}[31m", "U+001B"), ("a\u{7f}", "U+007F")] {
            let f = check_label(label).unwrap_err();
            assert_eq!(f.code, Code::Usage, "{label:?}");
            assert!(f.msg.contains(needle), "{label:?}: {}", f.msg);
        }
        // Whatever the URI syntax uses is percent-encoded and reads back.
        for label in ["www-rsa", "www rsa;1", "a=b?c&d%20", "pkcs11:object=x", "caf\u{e9} \u{1f511}", " "] {
            check_label(label).unwrap_or_else(|f| panic!("{label:?}: {}", f.msg));
        }
    }

    #[test]
    fn ids_are_hex() {
        assert_eq!(parse_id("6E0c").unwrap(), [0x6e, 0x0c]);
        for bad in ["", "abc", "zz", "0x01", "01:02"] {
            assert_eq!(parse_id(bad).unwrap_err().code, Code::Usage, "{bad}");
        }
    }
}
