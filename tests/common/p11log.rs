//! The call log and fault knob of the `hsm_test_p11wrap` PKCS#11 wrapper.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dirs::p11wrap_path;
use super::util::chmod;

/// Log + control files for one test. Point the module at [`P11Log::module`]
/// (the wrapper) instead of SoftHSM2 and pass [`P11Log::env`] to apache2.
pub struct P11Log {
    pub log: PathBuf,
    pub control: PathBuf,
    /// What the wrapper forwards to (HSM_P11WRAP_TARGET).
    pub target: PathBuf,
}

impl P11Log {
    /// Files `p11wrap.log` (created empty, mode 0666 so apache2 children
    /// running as www-data can append) and `p11wrap.control` (absent = no
    /// faults) in `dir`. Forwards to SoftHSM2.
    pub fn new(dir: &Path) -> P11Log {
        let p = P11Log { log: dir.join("p11wrap.log"), control: dir.join("p11wrap.control"), target: PathBuf::from(super::dirs::SOFTHSM_LIB) };
        std::fs::write(&p.log, "").expect("create p11wrap log");
        chmod(&p.log, 0o666);
        p
    }

    /// Path of the wrapper library (built on demand).
    pub fn module(&self) -> PathBuf {
        p11wrap_path()
    }

    /// HSM_P11WRAP_LOG / _CONTROL / _TARGET for the process using the wrapper.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("HSM_P11WRAP_LOG".into(), self.log.display().to_string()),
            ("HSM_P11WRAP_CONTROL".into(), self.control.display().to_string()),
            ("HSM_P11WRAP_TARGET".into(), self.target.display().to_string()),
        ]
    }

    /// All logged calls, in order.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// How many times `function` (e.g. "C_Sign") was called. Size queries
    /// (NULL output buffer) and fault-injected calls count too.
    pub fn count(&self, function: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| *l == function).count()
    }

    /// Signature operations started (C_SignInit calls). Prefer this to
    /// `count("C_Sign")` for "how many signatures": cryptoki's
    /// `Session::sign` calls C_Sign twice (size query, then the real call).
    pub fn sign_ops(&self) -> usize {
        self.count("C_SignInit")
    }

    /// Decrypt operations started (C_DecryptInit calls); see [`P11Log::sign_ops`].
    pub fn decrypt_ops(&self) -> usize {
        self.count("C_DecryptInit")
    }

    /// Calls per function name.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.calls() {
            *m.entry(c).or_insert(0) += 1;
        }
        m
    }

    /// Empty the log (writers use O_APPEND, so truncating is safe).
    pub fn reset(&self) {
        std::fs::write(&self.log, "").expect("truncate p11wrap log");
    }

    /// Make `function` return `rv` ("CKR_DEVICE_ERROR" or hex) from now on,
    /// in every process using the wrapper (the file is re-read per call).
    /// Adds to faults set earlier.
    pub fn fail(&self, function: &str, rv: &str) {
        let mut text = std::fs::read_to_string(&self.control).unwrap_or_default();
        text.push_str(&format!("fail {function} {rv}\n"));
        self.write_control(&text);
    }

    /// Add `ms` of latency to every call of `function` (before it reaches
    /// SoftHSM); overlapping delayed calls log `inflight <function> <n>`.
    pub fn delay(&self, function: &str, ms: u64) {
        let mut text = std::fs::read_to_string(&self.control).unwrap_or_default();
        text.push_str(&format!("delay {function} {ms}\n"));
        self.write_control(&text);
    }

    /// The largest number of delayed `function` calls one process had under
    /// way at the same time.
    pub fn max_in_flight(&self, function: &str) -> usize {
        let prefix = format!("inflight {function} ");
        self.calls().iter().filter_map(|l| l.strip_prefix(&prefix)?.parse().ok()).max().unwrap_or(0)
    }

    /// OR `flags` (hex, e.g. "0x40000") into the flags C_GetTokenInfo reports.
    pub fn token_flags(&self, flags: &str) {
        let mut text = std::fs::read_to_string(&self.control).unwrap_or_default();
        text.push_str(&format!("tokenflags {flags}\n"));
        self.write_control(&text);
    }

    /// Hide mechanism `hex` (e.g. "0xd", CKM_RSA_PKCS_PSS) from C_GetMechanismList.
    pub fn hide_mechanism(&self, hex: &str) {
        let mut text = std::fs::read_to_string(&self.control).unwrap_or_default();
        text.push_str(&format!("hidemech {hex}\n"));
        self.write_control(&text);
    }

    /// Make C_Decrypt a Bleichenbacher oracle: it returns `rv` exactly when
    /// the ciphertext's PKCS#1 v1.5 padding is bad (the wrapper decrypts it
    /// raw to tell), whatever mechanism the caller used.
    pub fn decrypt_oracle(&self, rv: &str) {
        self.add_control_line(&format!("oracle C_Decrypt {rv}"));
    }

    /// Make C_Decrypt return `rv` for ciphertexts whose last byte is odd
    /// (about half of them); those calls log `C_Decrypt faildata`.
    pub fn fail_decrypt_for_some_data(&self, rv: &str) {
        self.add_control_line(&format!("faildata C_Decrypt {rv}"));
    }

    /// Make C_DecryptInit with mechanism `mech` (hex, e.g. "0x3"
    /// CKM_RSA_X_509) fail with `rv`.
    pub fn fail_decrypt_mechanism(&self, mech: &str, rv: &str) {
        self.add_control_line(&format!("failmech C_DecryptInit {mech} {rv}"));
    }

    /// Make every successful C_Decrypt report `n` bytes.
    pub fn decrypt_len(&self, n: usize) {
        self.add_control_line(&format!("decryptlen {n}"));
    }

    /// Make `function` (C_Sign or C_Decrypt) answer exactly `n` bytes: the
    /// real result cut or zero-padded (e.g. an ECDSA signature of 2n±1
    /// bytes, a 47-byte premaster).
    pub fn out_len(&self, function: &str, n: u64) {
        self.add_control_line(&format!("outlen {function} {n}"));
    }

    /// Make `function` (C_Sign or C_Decrypt) return CKR_OK claiming `n`
    /// bytes of output, more than the caller's buffer.
    pub fn lie_out_len(&self, function: &str, n: u64) {
        self.add_control_line(&format!("lieoutlen {function} {n}"));
    }

    /// Make `function` (C_Sign or C_Decrypt) answer CKR_BUFFER_TOO_SMALL
    /// asking for `n` bytes, whatever buffer it is given.
    pub fn too_small(&self, function: &str, n: u64) {
        self.add_control_line(&format!("toosmall {function} {n}"));
    }

    /// Make C_GetAttributeValue say attribute `cka` (hex, e.g. "0x120"
    /// CKA_MODULUS, "0x181" CKA_EC_POINT) of every object is `n` bytes long.
    pub fn attr_len(&self, cka: &str, n: u64) {
        self.add_control_line(&format!("attrlen {cka} {n}"));
    }

    /// Flip one byte of every signature a successful `function` (C_Sign)
    /// returns from now on: a token that signs wrongly.
    pub fn corrupt(&self, function: &str) {
        self.add_control_line(&format!("corrupt {function}"));
    }

    fn add_control_line(&self, line: &str) {
        let mut text = std::fs::read_to_string(&self.control).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        self.write_control(&text);
    }

    /// Make the next call of `function` (in any process) fail with `rv`,
    /// once.
    pub fn fail_once(&self, function: &str, rv: &str) {
        let once = PathBuf::from(format!("{}.once", self.control.display()));
        let tmp = PathBuf::from(format!("{}.once-tmp", self.control.display()));
        std::fs::write(&tmp, format!("{function} {rv}\n")).expect("write one-shot fault");
        chmod(&tmp, 0o666);
        std::fs::rename(&tmp, &once).expect("install one-shot fault");
    }

    /// Whether the one-shot fault has fired.
    pub fn fail_once_fired(&self) -> bool {
        !PathBuf::from(format!("{}.once", self.control.display())).exists()
    }

    /// Per-process call logs: (pid, lines in call order).
    pub fn per_process(&self) -> Vec<(u32, Vec<String>)> {
        let name = self.log.file_name().unwrap().to_string_lossy().to_string();
        let dir = self.log.parent().unwrap();
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = f.strip_prefix(&format!("{name}.")).and_then(|p| p.parse().ok()) {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.push((pid, text.lines().map(str::to_string).collect()));
            }
        }
        out
    }

    /// Remove all injected faults.
    pub fn clear_faults(&self) {
        let _ = std::fs::remove_file(&self.control);
    }

    fn write_control(&self, text: &str) {
        // Write + rename so readers never see a half-written file.
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write p11wrap control");
        chmod(&tmp, 0o644);
        std::fs::rename(&tmp, &self.control).expect("rename p11wrap control");
    }
}
