//! `HSMSSLPin` sources: `env:NAME`, `file:/path`, `exec:/path/to/program`.
//!
//! The PIN is read by the Apache parent process only; children get it from
//! the parent's memory through fork. Error messages name the source and what
//! to do, never the PIN or any part of it.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::secret::Secret;

/// How long an `exec:` program may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PinSource {
    Env(String),
    File(PathBuf),
    Exec(PathBuf),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::Env(n) => write!(f, "env:{n}"),
            PinSource::File(p) => write!(f, "file:{}", p.display()),
            PinSource::Exec(p) => write!(f, "exec:{}", p.display()),
        }
    }
}

impl PinSource {
    /// Parses the argument of `HSMSSLPin`.
    pub fn parse(s: &str) -> Result<PinSource, String> {
        let bad = || {
            format!(
                "HSMSSLPin '{s}' is not a PIN source: use env:VARIABLE, file:/absolute/path \
                 or exec:/absolute/path/to/program (the PIN itself never goes into the configuration)"
            )
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "env" => {
                if rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    Ok(PinSource::Env(rest.to_string()))
                } else {
                    Err(format!("HSMSSLPin env:{rest}: not a valid environment variable name"))
                }
            }
            "file" | "exec" => {
                let p = PathBuf::from(rest);
                if !p.is_absolute() {
                    return Err(format!("HSMSSLPin {kind}:{rest}: the path must be absolute"));
                }
                Ok(if kind == "file" { PinSource::File(p) } else { PinSource::Exec(p) })
            }
            _ => Err(bad()),
        }
    }

    /// Reads the PIN once. The first line is the PIN (without its line end).
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            PinSource::Env(name) => match std::env::var_os(name) {
                None => Err(format!(
                    "HSMSSLPin env:{name}: the variable is not set in httpd's environment \
                     (set it where the service gets its environment, e.g. /etc/sysconfig/httpd \
                     or /etc/apache2/envvars, then restart)"
                )),
                Some(v) => {
                    let pin = first_line(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
                    if pin.is_empty() {
                        Err(format!("HSMSSLPin env:{name}: the variable is empty"))
                    } else {
                        Ok(pin)
                    }
                }
            },
            PinSource::File(path) => read_file(path),
            PinSource::Exec(path) => run_program(path),
        }
    }
}

fn first_line(bytes: &[u8]) -> Secret {
    let end = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
    let mut line = &bytes[..end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    Secret::new(line.to_vec())
}

fn read_file(path: &PathBuf) -> Result<Secret, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        format!("HSMSSLPin file:{shown}: cannot read the PIN file: {e}")
    })?;
    if !meta.is_file() {
        return Err(format!("HSMSSLPin file:{shown}: not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "HSMSSLPin file:{shown}: the PIN file is accessible by group or others (mode {mode:03o}); \
             run 'chmod 600 {shown}' (owner root)"
        ));
    }
    let mut content = zeroize::Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut content))
        .map_err(|e| format!("HSMSSLPin file:{shown}: cannot read the PIN file: {e}"))?;
    let pin = first_line(&content);
    if pin.is_empty() {
        return Err(format!("HSMSSLPin file:{shown}: the first line of the file is empty"));
    }
    Ok(pin)
}

fn run_program(path: &PathBuf) -> Result<Secret, String> {
    let shown = path.display();
    let mut child = Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("HSMSSLPin exec:{shown}: cannot run the program: {e}"))?;
    let mut out = child.stdout.take().expect("stdout was piped");
    // Read in a thread so that a program that never closes stdout cannot
    // block us past the timeout.
    let reader = std::thread::spawn(move || {
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        let mut chunk = [0u8; 256];
        loop {
            match out.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') || buf.len() > 4096 {
                        break;
                    }
                }
            }
        }
        zeroize::Zeroize::zeroize(&mut chunk);
        buf
    });
    let deadline = Instant::now() + EXEC_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "HSMSSLPin exec:{shown}: the program did not finish within {} s and was killed",
                    EXEC_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("HSMSSLPin exec:{shown}: waiting for the program failed: {e}")),
        }
    };
    let buf = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("HSMSSLPin exec:{shown}: the program failed ({status})"));
    }
    let pin = first_line(&buf);
    if pin.is_empty() {
        return Err(format!("HSMSSLPin exec:{shown}: the program printed no PIN on its first line"));
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hsm-pin-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parse_accepts_the_three_sources_and_rejects_others() {
        assert_eq!(PinSource::parse("env:CLOUDHSM_PIN").unwrap(), PinSource::Env("CLOUDHSM_PIN".into()));
        assert_eq!(PinSource::parse("file:/etc/pin").unwrap(), PinSource::File("/etc/pin".into()));
        assert_eq!(PinSource::parse("exec:/bin/pin").unwrap(), PinSource::Exec("/bin/pin".into()));
        for bad in ["1234", "env:", "file:relative", "exec:", "pass:1234", "env:A-B"] {
            assert!(PinSource::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn env_source_reads_first_line_and_refuses_unset_or_empty() {
        std::env::set_var("HSM_PIN_TEST_SET", "user:pw\nignored");
        std::env::set_var("HSM_PIN_TEST_EMPTY", "");
        assert_eq!(PinSource::Env("HSM_PIN_TEST_SET".into()).read().unwrap().as_bytes(), b"user:pw".to_vec());
        assert!(PinSource::Env("HSM_PIN_TEST_EMPTY".into()).read().unwrap_err().contains("empty"));
        assert!(PinSource::Env("HSM_PIN_TEST_UNSET_X".into()).read().unwrap_err().contains("not set"));
    }

    #[test]
    fn file_source_refuses_group_readable_files_and_never_echoes_the_pin() {
        let d = tmpdir("file");
        let p = d.join("pin");
        std::fs::File::create(&p).unwrap().write_all(b"cu:s3cret-pin\r\nrest\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = PinSource::File(p.clone()).read().unwrap_err();
        assert!(err.contains("chmod 600") && !err.contains("s3cret"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(PinSource::File(p).read().unwrap().as_bytes(), b"cu:s3cret-pin".to_vec());
        assert!(PinSource::File(d.join("missing")).read().is_err());
    }

    #[test]
    fn exec_source_takes_stdout_and_reports_failure_silence_and_absence() {
        let d = tmpdir("exec");
        let mk = |name: &str, body: &str| {
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            p
        };
        assert_eq!(PinSource::Exec(mk("ok", "echo cu:pw")).read().unwrap().as_bytes(), b"cu:pw".to_vec());
        assert!(PinSource::Exec(mk("fails", "echo cu:pw; exit 3")).read().unwrap_err().contains("failed"));
        assert!(PinSource::Exec(mk("silent", "true")).read().unwrap_err().contains("no PIN"));
        assert!(PinSource::Exec(d.join("absent")).read().unwrap_err().contains("cannot run"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn any_source_string_parses_or_errs_never_panics(s in "(env|file|exec|pass)?:?[a-zA-Z0-9_/.:\\- \\x00é]{0,40}") {
            if let Err(e) = PinSource::parse(&s) {
                prop_assert!(e.starts_with("HSMSSLPin"), "{}", e);
            }
        }

        #[test]
        fn arbitrary_unicode_never_panics(s in any::<String>()) {
            let _ = PinSource::parse(&s);
        }

        #[test]
        fn first_line_never_keeps_line_ends(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let got = first_line(&bytes).as_bytes();
            prop_assert!(!got.contains(&b'\n'));
            prop_assert!(bytes.starts_with(&got));
        }
    }
}
