//! `hsm_test_p11wrap`: a counting, fault-injecting PKCS#11 shim for tests.
//!
//! It exports `C_GetFunctionList` only (PKCS#11 2.40 style, so consumers such
//! as `cryptoki` fall back from `C_GetInterface` to it). On first use it
//! `dlopen`s the real library named by `HSM_P11WRAP_TARGET` (default
//! `/usr/lib/softhsm/libsofthsm2.so`), copies its `CK_FUNCTION_LIST` and
//! replaces a set of entries with wrappers that:
//!
//! 1. **count**: if env `HSM_P11WRAP_LOG` names a file, append one line
//!    `<function name>\n` to it with a single `write(2)` on an `O_APPEND`
//!    descriptor (atomic across processes and threads for such short lines).
//!    Every call is logged, including size-query calls (e.g. `C_Sign` with a
//!    NULL output buffer) and calls that the fault knob makes fail.
//! 2. **inject faults**: if env `HSM_P11WRAP_CONTROL` names a file that exists
//!    and has a line `fail <function name> <rv>` (rv: a `CKR_*` name, or hex
//!    with or without `0x`), that function returns `rv` without forwarding.
//!    The file is re-read on every call, so a test can change behaviour of a
//!    running server by rewriting it. Lines starting with `#` are ignored.
//!    A faulted C_Sign / C_Decrypt / C_SignFinal still completes the real
//!    operation into a scratch buffer (result discarded), so the session is
//!    left without an active operation, as after a real failure.
//!    A line `failclass C_CreateObject <class> <rv>` (class: `CKO_*` name or
//!    hex) fails only the C_CreateObject calls whose template's CKA_CLASS is
//!    that class, e.g. to make a token refuse plaintext private keys while
//!    it still takes public and secret keys.
//!    Answers of C_Decrypt that depend on the data (see
//!    [`decrypt_with_answer_knobs`]):
//!    - `oracle C_Decrypt <rv>`: after the real call, the wrapper decrypts
//!      the same ciphertext raw (CKM_RSA_X_509, same key and session, not
//!      logged) and returns `rv` only when the plaintext's PKCS#1 v1.5
//!      type 2 padding is bad: a token whose error codes are a
//!      Bleichenbacher oracle, whatever mechanism the caller used. Each such
//!      answer logs `C_Decrypt oracle`.
//!    - `faildata C_Decrypt <rv>`: `rv` only for ciphertexts whose last
//!      byte is odd (about half of them), logged as `C_Decrypt faildata`.
//!    - `failmech C_DecryptInit <mechanism hex> <rv>`: C_DecryptInit with
//!      that mechanism fails with `rv` (logged `C_DecryptInit failmech`),
//!      e.g. a token that lists CKM_RSA_X_509 (0x3) but refuses it.
//!    - `decryptlen <n>`: a successful C_Decrypt reports `n` bytes (the
//!      real output cut short, or followed by zero bytes), e.g. 47 or 49
//!      for a TLS premaster, or the modulus size + 1.
//!
//!    Lengths a broken or hostile token might answer with (`<fn>` is
//!    `C_Sign` or `C_Decrypt`, `<n>` a decimal byte count up to 2^64-1):
//!    - `outlen <fn> <n>`: exactly n bytes of output (the real result cut or
//!      zero-padded), e.g. ECDSA signatures of 2n±1 bytes or a 47-byte
//!      premaster; a size query answers n, a smaller buffer gets
//!      CKR_BUFFER_TOO_SMALL.
//!    - `lieoutlen <fn> <n>`: the real call, then CKR_OK with `*pulLen = n`,
//!      more than the buffer holds and than was written.
//!    - `toosmall <fn> <n>`: CKR_BUFFER_TOO_SMALL with `*pulLen = n` for any
//!      buffer, the real operation left active.
//!    - `attrlen <CKA hex> <n>`: C_GetAttributeValue says that attribute of
//!      any object is n bytes long; a buffer that large is filled (the real
//!      value, then 0xa5 bytes), a smaller one gets CKR_BUFFER_TOO_SMALL.
//!      E.g. `attrlen 0x120 4294967296`: a 4 GiB CKA_MODULUS.
//!
//!    A line `corrupt C_Sign` flips one byte (the middle one) of every
//!    signature a successful C_Sign returns: a token whose signatures are
//!    wrong (a faulty RSA-CRT half, a broken ECDSA), which the module must
//!    catch before anything is sent.
//!
//! 3. **benchmark mode**: if env `HSM_P11WRAP_SHM` names a file of at least
//!    4096 bytes whose first word holds the magic (layout in [`shm_layout`]),
//!    the wrapper maps it `MAP_SHARED` at its first call and, per wrapped
//!    call, adds 1 to that function's counter in the page (a relaxed atomic
//!    add) and sleeps the microseconds in the page's latency word (if not 0)
//!    before going on. The mapping is inherited by `fork()`ed children, and
//!    every process maps the same file, so the counters are totals over all
//!    processes (e.g. Apache's parent and children). A missing, short or
//!    magic-less file is ignored silently. This mode opens, reads and writes
//!    no file per call, so with only `HSM_P11WRAP_SHM` set a call costs no
//!    system call but the optional sleep. It combines with the two above:
//!    the shm count and latency come first, then the log line, the fault
//!    knob and its `delay`. Counted are the calls that would be logged
//!    (faulted ones too), except that C_Sign / C_Decrypt size queries (NULL
//!    output buffer) are counted only under `C_Sign(size query)` /
//!    `C_Decrypt(size query)`.
//!
//! The environment variables are read once per process, at the first call
//! that needs them (the control file itself is still re-read on every call).
//!
//! Nothing here may unwind into C: every exported/wrapped function runs its
//! body under `catch_unwind` and returns `CKR_GENERAL_ERROR` on panic.

#![allow(non_snake_case)]

use std::ffi::{c_void, CStr, OsStr, OsString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use cryptoki_sys::*;

pub mod shm_layout;

const DEFAULT_TARGET: &str = "/usr/lib/softhsm/libsofthsm2.so";
const ENV_TARGET: &str = "HSM_P11WRAP_TARGET";
const ENV_LOG: &str = "HSM_P11WRAP_LOG";
const ENV_CONTROL: &str = "HSM_P11WRAP_CONTROL";

/// The real library's function list (never freed: the library is never
/// `dlclose`d) and our patched copy.
struct Lists {
    real: &'static CK_FUNCTION_LIST,
    wrapped: &'static CK_FUNCTION_LIST,
}

static LISTS: OnceLock<Result<Lists, String>> = OnceLock::new();

fn lists() -> Result<&'static Lists, &'static str> {
    LISTS.get_or_init(load).as_ref().map_err(|e| e.as_str())
}

fn real() -> Option<&'static CK_FUNCTION_LIST> {
    lists().ok().map(|l| l.real)
}

fn load() -> Result<Lists, String> {
    let target = std::env::var(ENV_TARGET).unwrap_or_else(|_| DEFAULT_TARGET.to_string());
    let c_target = std::ffi::CString::new(target.clone()).map_err(|_| format!("{ENV_TARGET} contains a NUL byte"))?;
    // SAFETY: c_target is a valid NUL-terminated string; dlopen has no other
    // preconditions. The handle is intentionally leaked (never dlclose'd) so
    // that the function pointers we copy stay valid for the process lifetime.
    let handle = unsafe { libc::dlopen(c_target.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a valid C string owned by libc.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated, valid until the next dl* call.
            unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned()
        };
        return Err(format!("dlopen({target}) failed: {msg}"));
    }
    // SAFETY: handle is a valid dlopen handle, the symbol name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
    if sym.is_null() {
        return Err(format!("{target} has no C_GetFunctionList"));
    }
    // SAFETY: the PKCS#11 spec defines C_GetFunctionList with exactly this
    // signature; sym is non-null.
    let get_list: unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV = unsafe { std::mem::transmute(sym) };
    let mut real_ptr: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: we pass a valid out-pointer.
    let rv = unsafe { get_list(&mut real_ptr) };
    if rv != CKR_OK || real_ptr.is_null() {
        return Err(format!("{target}: C_GetFunctionList returned {rv:#x}"));
    }
    // SAFETY: the library guarantees the list it returns stays valid while the
    // library is loaded, which is forever (we never dlclose).
    let real: &'static CK_FUNCTION_LIST = unsafe { &*real_ptr };
    let mut copy = Box::new(CK_FUNCTION_LIST { ..*real });
    patch(&mut copy, real);
    // Our own C_GetFunctionList must be the one in the list we hand out.
    copy.C_GetFunctionList = Some(C_GetFunctionList);
    if real.C_GetTokenInfo.is_some() {
        copy.C_GetTokenInfo = Some(get_token_info_with_flags);
    }
    if real.C_Initialize.is_some() {
        copy.C_Initialize = Some(initialize_logging_flags);
    }
    if real.C_GetMechanismList.is_some() {
        copy.C_GetMechanismList = Some(get_mechanism_list_hiding);
    }
    if real.C_CreateObject.is_some() {
        copy.C_CreateObject = Some(create_object_failing_class);
    }
    if real.C_Sign.is_some() {
        // `corrupt` acts on what the length shapes let through.
        copy.C_Sign = Some(sign_corrupting);
    }
    // The data-dependent knobs first, then the length shapes.
    if real.C_DecryptInit.is_some() && real.C_Decrypt.is_some() {
        copy.C_DecryptInit = Some(decrypt_init_noting_key);
        copy.C_Decrypt = Some(decrypt_with_answer_knobs);
    }
    if real.C_GetAttributeValue.is_some() {
        copy.C_GetAttributeValue = Some(get_attribute_value_sized);
    }
    Ok(Lists { real, wrapped: Box::leak(copy) })
}

// ---------------------------------------------------------------------------
// Logging and the fault knob
// ---------------------------------------------------------------------------

static LOG_PATH: OnceLock<Option<OsString>> = OnceLock::new();
static CONTROL_PATH: OnceLock<Option<OsString>> = OnceLock::new();

/// `HSM_P11WRAP_LOG`, read at the first call (the environment of a process
/// using the wrapper is set before it; `var_os` per call would lock and copy).
fn log_path() -> Option<&'static OsStr> {
    LOG_PATH.get_or_init(|| std::env::var_os(ENV_LOG)).as_deref()
}

/// `HSM_P11WRAP_CONTROL`, read once like [`log_path`].
fn control_path() -> Option<&'static OsStr> {
    CONTROL_PATH.get_or_init(|| std::env::var_os(ENV_CONTROL)).as_deref()
}

fn log_call(name: &str) {
    let Some(path) = log_path() else { return };
    append_line(path, name);
    // The same line in `<log>.<pid>`, so tests can see which process did what.
    let mut per_pid = path.to_os_string();
    per_pid.push(format!(".{}", std::process::id()));
    append_line(&per_pid, name);
}

fn append_line(path: &std::ffi::OsStr, name: &str) {
    let Ok(c_path) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path)) else {
        return;
    };
    let mut line = Vec::with_capacity(name.len() + 1);
    line.extend_from_slice(name.as_bytes());
    line.push(b'\n');
    // SAFETY: c_path is a valid C string; flags/mode are plain integers.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC, 0o666 as libc::c_uint) };
    if fd < 0 {
        return;
    }
    // SAFETY: fd is open, line is a valid buffer of line.len() bytes. A single
    // write(2) on an O_APPEND fd is what makes concurrent appends atomic.
    unsafe {
        libc::write(fd, line.as_ptr().cast(), line.len());
        libc::close(fd);
    }
}

/// A one-shot fault: the file `<control>.once` holding `<function> <rv>`.
/// The first call of that function in any process renames the file away
/// (rename is atomic, so exactly one call fails) and returns the rv.
fn one_shot_fault(name: &str) -> Option<CK_RV> {
    let mut once = control_path()?.to_os_string();
    once.push(".once");
    let text = std::fs::read_to_string(&once).ok()?;
    let mut words = text.split_whitespace();
    if words.next() != Some(name) {
        return None;
    }
    let rv = words.next().and_then(parse_rv)?;
    let mut taken = once.clone();
    taken.push(format!(".taken.{}", std::process::id()));
    std::fs::rename(&once, &taken).ok()?;
    Some(rv)
}

/// If the control file asks `name` to fail, the CK_RV to return.
fn fault_for(name: &str) -> Option<CK_RV> {
    if let Some(rv) = one_shot_fault(name) {
        return Some(rv);
    }
    let path = control_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some("fail") || words.next() != Some(name) {
            continue;
        }
        if let Some(rv) = words.next().and_then(parse_rv) {
            return Some(rv);
        }
    }
    None
}

fn parse_rv(s: &str) -> Option<CK_RV> {
    if let Some(rv) = ckr_by_name(s) {
        return Some(rv);
    }
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    CK_RV::from_str_radix(hex, 16).ok()
}

fn ckr_by_name(s: &str) -> Option<CK_RV> {
    Some(match s {
        "CKR_OK" => CKR_OK,
        "CKR_CANCEL" => CKR_CANCEL,
        "CKR_HOST_MEMORY" => CKR_HOST_MEMORY,
        "CKR_SLOT_ID_INVALID" => CKR_SLOT_ID_INVALID,
        "CKR_GENERAL_ERROR" => CKR_GENERAL_ERROR,
        "CKR_FUNCTION_FAILED" => CKR_FUNCTION_FAILED,
        "CKR_ARGUMENTS_BAD" => CKR_ARGUMENTS_BAD,
        "CKR_DEVICE_ERROR" => CKR_DEVICE_ERROR,
        "CKR_DEVICE_MEMORY" => CKR_DEVICE_MEMORY,
        "CKR_DEVICE_REMOVED" => CKR_DEVICE_REMOVED,
        "CKR_FUNCTION_CANCELED" => CKR_FUNCTION_CANCELED,
        "CKR_FUNCTION_NOT_SUPPORTED" => CKR_FUNCTION_NOT_SUPPORTED,
        "CKR_KEY_HANDLE_INVALID" => CKR_KEY_HANDLE_INVALID,
        "CKR_KEY_TYPE_INCONSISTENT" => CKR_KEY_TYPE_INCONSISTENT,
        "CKR_KEY_FUNCTION_NOT_PERMITTED" => CKR_KEY_FUNCTION_NOT_PERMITTED,
        "CKR_MECHANISM_INVALID" => CKR_MECHANISM_INVALID,
        "CKR_MECHANISM_PARAM_INVALID" => CKR_MECHANISM_PARAM_INVALID,
        "CKR_OBJECT_HANDLE_INVALID" => CKR_OBJECT_HANDLE_INVALID,
        "CKR_OPERATION_ACTIVE" => CKR_OPERATION_ACTIVE,
        "CKR_OPERATION_NOT_INITIALIZED" => CKR_OPERATION_NOT_INITIALIZED,
        "CKR_PIN_INCORRECT" => CKR_PIN_INCORRECT,
        "CKR_PIN_LOCKED" => CKR_PIN_LOCKED,
        "CKR_PIN_EXPIRED" => CKR_PIN_EXPIRED,
        "CKR_PIN_INVALID" => CKR_PIN_INVALID,
        "CKR_PIN_LEN_RANGE" => CKR_PIN_LEN_RANGE,
        "CKR_SESSION_CLOSED" => CKR_SESSION_CLOSED,
        "CKR_SESSION_COUNT" => CKR_SESSION_COUNT,
        "CKR_SESSION_HANDLE_INVALID" => CKR_SESSION_HANDLE_INVALID,
        "CKR_TOKEN_NOT_PRESENT" => CKR_TOKEN_NOT_PRESENT,
        "CKR_TOKEN_NOT_RECOGNIZED" => CKR_TOKEN_NOT_RECOGNIZED,
        "CKR_USER_NOT_LOGGED_IN" => CKR_USER_NOT_LOGGED_IN,
        "CKR_USER_ALREADY_LOGGED_IN" => CKR_USER_ALREADY_LOGGED_IN,
        "CKR_BUFFER_TOO_SMALL" => CKR_BUFFER_TOO_SMALL,
        "CKR_CRYPTOKI_NOT_INITIALIZED" => CKR_CRYPTOKI_NOT_INITIALIZED,
        "CKR_CRYPTOKI_ALREADY_INITIALIZED" => CKR_CRYPTOKI_ALREADY_INITIALIZED,
        "CKR_DATA_INVALID" => CKR_DATA_INVALID,
        "CKR_DATA_LEN_RANGE" => CKR_DATA_LEN_RANGE,
        "CKR_ENCRYPTED_DATA_INVALID" => CKR_ENCRYPTED_DATA_INVALID,
        "CKR_ENCRYPTED_DATA_LEN_RANGE" => CKR_ENCRYPTED_DATA_LEN_RANGE,
        "CKR_ATTRIBUTE_READ_ONLY" => CKR_ATTRIBUTE_READ_ONLY,
        "CKR_ATTRIBUTE_TYPE_INVALID" => CKR_ATTRIBUTE_TYPE_INVALID,
        "CKR_ATTRIBUTE_VALUE_INVALID" => CKR_ATTRIBUTE_VALUE_INVALID,
        "CKR_ACTION_PROHIBITED" => CKR_ACTION_PROHIBITED,
        "CKR_KEY_SIZE_RANGE" => CKR_KEY_SIZE_RANGE,
        "CKR_TEMPLATE_INCOMPLETE" => CKR_TEMPLATE_INCOMPLETE,
        "CKR_TEMPLATE_INCONSISTENT" => CKR_TEMPLATE_INCONSISTENT,
        "CKR_UNWRAPPING_KEY_HANDLE_INVALID" => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        "CKR_WRAPPED_KEY_INVALID" => CKR_WRAPPED_KEY_INVALID,
        _ => return None,
    })
}

/// If the control file has `delay <name> <ms>`, the added latency.
fn delay_for(name: &str) -> Option<u64> {
    knob("delay", name)
}

/// The number of the first control line `<verb> <name> <number>`.
fn knob(verb: &str, name: &str) -> Option<u64> {
    let path = control_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut w = line.split_whitespace();
        (w.next() == Some(verb) && w.next() == Some(name)).then(|| w.next()?.parse().ok()).flatten()
    })
}

/// Calls of delayed functions under way in this process right now.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Common prologue of every wrapper: count in the shared page and log (see
/// [`note_call`]), then maybe return an injected fault, or wait the
/// configured latency. While delayed calls overlap, each logs
/// `inflight <name> <n>` (n: delayed calls under way in this process), which
/// shows whether the caller issues calls in parallel.
fn prologue(name: &str, word: usize) -> Option<CK_RV> {
    note_call(name, word);
    if let Some(rv) = fault_for(name) {
        return Some(rv);
    }
    if let Some(ms) = delay_for(name) {
        use std::sync::atomic::Ordering::SeqCst;
        let n = IN_FLIGHT.fetch_add(1, SeqCst) + 1;
        log_call(&format!("inflight {name} {n}"));
        std::thread::sleep(std::time::Duration::from_millis(ms));
        IN_FLIGHT.fetch_sub(1, SeqCst);
    }
    None
}

// ---------------------------------------------------------------------------
// Benchmark mode: counters and latency in a shared page
// ---------------------------------------------------------------------------

/// The page of `HSM_P11WRAP_SHM`, mapped for the rest of the process.
struct Shm {
    words: &'static [AtomicU64; shm_layout::WORDS],
}

static SHM: OnceLock<Option<Shm>> = OnceLock::new();

/// The shared page, mapped at the first call (or `None` for good when
/// `HSM_P11WRAP_SHM` is unset or its file unusable). A mapping made before
/// `fork()` is the child's too.
fn shm() -> Option<&'static Shm> {
    SHM.get_or_init(|| Shm::map(std::path::Path::new(&std::env::var_os(shm_layout::ENV)?))).as_ref()
}

impl Shm {
    /// Maps the first `SIZE` bytes of `path` shared, read/write. `None`,
    /// without a word logged, if the file cannot be opened read/write, is
    /// shorter than `SIZE` or does not start with `MAGIC`.
    fn map(path: &std::path::Path) -> Option<Shm> {
        use shm_layout::{MAGIC, MAGIC_WORD, SIZE, WORDS};
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).ok()?;
        if file.metadata().ok()?.len() < SIZE as u64 {
            return None;
        }
        // SAFETY: a fresh mapping (NULL hint) of SIZE bytes of an open file
        // that has at least SIZE bytes; no existing memory is affected. The
        // mapping outlives the descriptor, which `file` closes on return.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: p is page-aligned (mmap), so aligned for AtomicU64, and
        // SIZE = WORDS * 8 bytes are readable and writable. AtomicU64 has the
        // size and layout of u64, and every bit pattern is a valid u64. The
        // memory is never unmapped once accepted, so 'static holds. Other
        // processes change it concurrently, which is fine because every
        // access here is atomic (and the benchmark's must be too).
        let words = unsafe { &*(p as *const [AtomicU64; WORDS]) };
        if words[MAGIC_WORD].load(Ordering::Acquire) != MAGIC {
            // SAFETY: p/SIZE is exactly the mapping made above, and `words`,
            // the only reference into it, is not used after this.
            unsafe { libc::munmap(p, SIZE) };
            return None;
        }
        Some(Shm { words })
    }

    /// One call of the function whose counter is word `word`: count it,
    /// then sleep the configured latency, if any.
    fn enter(&self, word: usize) {
        self.words[word].fetch_add(1, Ordering::Relaxed);
        let us = self.words[shm_layout::LATENCY_US_WORD].load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
    }
}

/// The counter word of `name`; a compile error (in the `const` that calls
/// it) when `name` is missing from `shm_layout::FUNCTIONS`.
const fn counted(name: &str) -> usize {
    match shm_layout::counter_word(name) {
        Some(w) => w,
        None => panic!("a wrapped function is missing from shm_layout::FUNCTIONS"),
    }
}

/// A call of `name` (counter word `word`): counted in the shared page (with
/// its latency), then logged. Neither does anything in a process without
/// `HSM_P11WRAP_SHM` / `HSM_P11WRAP_LOG`.
fn note_call(name: &str, word: usize) {
    if let Some(shm) = shm() {
        shm.enter(word);
    }
    log_call(name);
}

// ---------------------------------------------------------------------------
// Ending the real operation when a fault is injected
// ---------------------------------------------------------------------------
//
// In PKCS#11, C_Sign / C_Decrypt / C_SignFinal returning anything but
// CKR_OK or CKR_BUFFER_TOO_SMALL terminates the active operation. When we
// fake such an error the real library still has the operation open, and the
// next C_SignInit on that session would get CKR_OPERATION_ACTIVE, which a real
// HSM would not return. So we complete the real operation into a scratch
// buffer and throw the result away.

const SCRATCH: usize = 16 * 1024;

fn finish_sign(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) {
    let Some(f) = real().and_then(|l| l.C_Sign) else { return };
    let mut buf = vec![0u8; SCRATCH];
    let mut out_len = SCRATCH as CK_ULONG;
    // SAFETY: data/len are the caller's (valid per the C_Sign contract); buf
    // is a writable buffer of out_len bytes.
    unsafe { f(session, data, len, buf.as_mut_ptr(), &mut out_len) };
}

fn finish_decrypt(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) {
    let Some(f) = real().and_then(|l| l.C_Decrypt) else { return };
    let mut buf = vec![0u8; SCRATCH];
    let mut out_len = SCRATCH as CK_ULONG;
    // SAFETY: as in finish_sign.
    unsafe { f(session, data, len, buf.as_mut_ptr(), &mut out_len) };
}

fn finish_sign_final(session: CK_SESSION_HANDLE) {
    let Some(f) = real().and_then(|l| l.C_SignFinal) else { return };
    let mut buf = vec![0u8; SCRATCH];
    let mut out_len = SCRATCH as CK_ULONG;
    // SAFETY: buf is a writable buffer of out_len bytes.
    unsafe { f(session, buf.as_mut_ptr(), &mut out_len) };
}

// ---------------------------------------------------------------------------
// Wrappers
// ---------------------------------------------------------------------------

/// `wrap!(C_Name(arg: Type, ...));` defines `unsafe extern "C" fn C_Name` in
/// module `w` that counts, logs, consults the fault knob, then forwards to
/// the real library. `patch` installs it only where the real library has the
/// entry. `C_Name(...) size_query(out)` counts the calls with a NULL `out`
/// under `"C_Name(size query)"` instead of `"C_Name"`.
macro_rules! wraps {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) $(size_query($out:ident))? $(=> $on_fault:expr)? ; )*) => {
        mod w {
            use super::*;
            $(
                /// Counting / logging / fault-injecting wrapper around the
                /// real entry.
                ///
                /// # Safety
                /// Same contract as the PKCS#11 function of the same name;
                /// arguments are passed through untouched.
                pub unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                    const WORD: usize = counted(stringify!($name));
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        // `if out.is_null() { <size query word> } else { WORD }`
                        // with size_query(out), else just `WORD`.
                        let word = $( if $out.is_null() {
                            const { counted(concat!(stringify!($name), "(size query)")) }
                        } else )? { WORD };
                        if let Some(rv) = prologue(stringify!($name), word) {
                            $( $on_fault; )?
                            return rv;
                        }
                        match real().and_then(|l| l.$name) {
                            // SAFETY: forwarding the caller's arguments
                            // unchanged to the real implementation, whose
                            // contract is the one our caller already honours.
                            Some(f) => unsafe { f($($arg),*) },
                            None => CKR_FUNCTION_NOT_SUPPORTED,
                        }
                    }));
                    r.unwrap_or(CKR_GENERAL_ERROR)
                }
            )*
        }

        fn patch(list: &mut CK_FUNCTION_LIST, real: &CK_FUNCTION_LIST) {
            $(
                if real.$name.is_some() {
                    list.$name = Some(w::$name);
                }
            )*
        }

        /// The functions `wraps!` wraps, in order.
        #[cfg(test)]
        const WRAPPED: &[&str] = &[$(stringify!($name)),*];
    };
}

wraps! {
    C_Initialize(args: *mut c_void);
    C_Finalize(reserved: *mut c_void);
    C_GetInfo(info: *mut CK_INFO);
    C_GetSlotList(present: CK_BBOOL, slots: *mut CK_SLOT_ID, count: *mut CK_ULONG);
    C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO);
    C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO);
    C_GetMechanismList(slot: CK_SLOT_ID, mechs: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG);
    C_GetMechanismInfo(slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO);
    C_OpenSession(slot: CK_SLOT_ID, flags: CK_FLAGS, app: *mut c_void, notify: CK_NOTIFY,
                  session: *mut CK_SESSION_HANDLE);
    C_CloseSession(session: CK_SESSION_HANDLE);
    C_CloseAllSessions(slot: CK_SLOT_ID);
    C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO);
    C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG);
    C_Logout(session: CK_SESSION_HANDLE);
    C_GetAttributeValue(session: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE,
                        tmpl: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_FindObjectsInit(session: CK_SESSION_HANDLE, tmpl: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_FindObjects(session: CK_SESSION_HANDLE, objs: *mut CK_OBJECT_HANDLE, max: CK_ULONG,
                  count: *mut CK_ULONG);
    C_FindObjectsFinal(session: CK_SESSION_HANDLE);
    C_DecryptInit(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Decrypt(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE,
              out_len: *mut CK_ULONG) size_query(out) => finish_decrypt(session, data, len);
    C_SignInit(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Sign(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, sig: *mut CK_BYTE,
           sig_len: *mut CK_ULONG) size_query(sig) => finish_sign(session, data, len);
    C_SignUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG);
    C_SignFinal(session: CK_SESSION_HANDLE, sig: *mut CK_BYTE, sig_len: *mut CK_ULONG)
        => finish_sign_final(session);
    C_GenerateKeyPair(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM,
                      pub_tmpl: *mut CK_ATTRIBUTE, pub_count: CK_ULONG,
                      priv_tmpl: *mut CK_ATTRIBUTE, priv_count: CK_ULONG,
                      pub_key: *mut CK_OBJECT_HANDLE, priv_key: *mut CK_OBJECT_HANDLE);
    C_CreateObject(session: CK_SESSION_HANDLE, tmpl: *mut CK_ATTRIBUTE, count: CK_ULONG,
                   obj: *mut CK_OBJECT_HANDLE);
    C_DestroyObject(session: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE);
    C_GenerateKey(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, tmpl: *mut CK_ATTRIBUTE,
                  count: CK_ULONG, key: *mut CK_OBJECT_HANDLE);
    C_UnwrapKey(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, unwrapping_key: CK_OBJECT_HANDLE,
                wrapped: *mut CK_BYTE, wrapped_len: CK_ULONG, tmpl: *mut CK_ATTRIBUTE, count: CK_ULONG,
                key: *mut CK_OBJECT_HANDLE);
}

/// `failclass <function> <class> <rv>` lines in the control file (class: a
/// `CKO_*` name or hex): the rv for a call of `name` whose template has
/// CKA_CLASS `class`, if such a line matches.
fn class_fault(name: &str, class: CK_OBJECT_CLASS) -> Option<CK_RV> {
    let path = control_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut w = line.split_whitespace();
        if w.next() != Some("failclass") || w.next() != Some(name) {
            return None;
        }
        (parse_class(w.next()?)? == class).then(|| parse_rv(w.next()?)).flatten()
    })
}

fn parse_class(s: &str) -> Option<CK_OBJECT_CLASS> {
    Some(match s {
        "CKO_DATA" => CKO_DATA,
        "CKO_CERTIFICATE" => CKO_CERTIFICATE,
        "CKO_PUBLIC_KEY" => CKO_PUBLIC_KEY,
        "CKO_PRIVATE_KEY" => CKO_PRIVATE_KEY,
        "CKO_SECRET_KEY" => CKO_SECRET_KEY,
        _ => {
            let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
            return CK_OBJECT_CLASS::from_str_radix(hex, 16).ok();
        }
    })
}

/// The CKA_CLASS a template asks for, if it has a well-formed one.
///
/// # Safety
/// `tmpl` must be NULL or point to `count` valid CK_ATTRIBUTEs whose
/// non-NULL `pValue`s point to `ulValueLen` readable bytes (the C_CreateObject
/// contract).
unsafe fn template_class(tmpl: *const CK_ATTRIBUTE, count: CK_ULONG) -> Option<CK_OBJECT_CLASS> {
    if tmpl.is_null() {
        return None;
    }
    // SAFETY: non-null, and per our contract valid for `count` entries.
    let attrs = unsafe { std::slice::from_raw_parts(tmpl, count as usize) };
    let a = attrs.iter().find(|a| a.type_ == CKA_CLASS)?;
    if a.pValue.is_null() || a.ulValueLen as usize != std::mem::size_of::<CK_OBJECT_CLASS>() {
        return None;
    }
    // SAFETY: pValue is non-null and holds exactly one CK_OBJECT_CLASS;
    // the caller's buffer need not be aligned, hence read_unaligned.
    Some(unsafe { std::ptr::read_unaligned(a.pValue as *const CK_OBJECT_CLASS) })
}

/// C_CreateObject, counted, logged, faultable, and failing with the rv of a
/// matching `failclass C_CreateObject <class> <rv>` line.
///
/// # Safety
/// Same contract as C_CreateObject.
unsafe extern "C" fn create_object_failing_class(
    session: CK_SESSION_HANDLE,
    tmpl: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    obj: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let fault = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller honours the C_CreateObject contract for tmpl/count.
        let class = unsafe { template_class(tmpl, count) }?;
        class_fault("C_CreateObject", class)
    }))
    .unwrap_or(None);
    if let Some(rv) = fault {
        let _ = catch_unwind(|| note_call("C_CreateObject", const { counted("C_CreateObject") }));
        return rv;
    }
    // SAFETY: forwarding the caller's arguments to the wrapped function.
    unsafe { w::C_CreateObject(session, tmpl, count, obj) }
}

/// The words after `<keyword> C_Decrypt` on the control file's first such
/// line.
fn decrypt_knob(keyword: &str) -> Option<String> {
    let text = std::fs::read_to_string(control_path()?).ok()?;
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(keyword)?.trim_start().strip_prefix("C_Decrypt ")?;
        Some(rest.trim().to_string())
    })
}

/// `decryptlen <n>` in the control file.
fn decrypt_len() -> Option<usize> {
    let text = std::fs::read_to_string(control_path()?).ok()?;
    text.lines().find_map(|l| l.trim().strip_prefix("decryptlen ")?.trim().parse().ok())
}

/// The key of the decrypt operation started on each session, for the
/// `oracle` knob's own raw decryption.
static DECRYPT_KEYS: std::sync::Mutex<Vec<(CK_SESSION_HANDLE, CK_OBJECT_HANDLE)>> = std::sync::Mutex::new(Vec::new());

/// C_DecryptInit, counted, logged, faultable, noting the session's key.
///
/// # Safety
/// Same contract as C_DecryptInit.
unsafe extern "C" fn decrypt_init_noting_key(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    // SAFETY: a non-null mech is the caller's valid CK_MECHANISM.
    let ty = (!mech.is_null()).then(|| unsafe { (*mech).mechanism });
    if let Some(rv) = ty.and_then(|t| catch_unwind(|| mechanism_fault("C_DecryptInit", t)).ok().flatten()) {
        let _ = catch_unwind(|| log_call("C_DecryptInit failmech"));
        return rv;
    }
    // SAFETY: forwarding the caller's arguments to the wrapped function.
    let rv = unsafe { w::C_DecryptInit(session, mech, key) };
    if rv == CKR_OK {
        let _ = catch_unwind(|| {
            let mut keys = DECRYPT_KEYS.lock().unwrap_or_else(|e| e.into_inner());
            keys.retain(|(s, _)| *s != session);
            keys.push((session, key));
        });
    }
    rv
}

/// Whether the control file has the line `corrupt <name>`.
fn corrupts(name: &str) -> bool {
    let Some(path) = control_path() else { return false };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("corrupt") && w.next() == Some(name) && w.next().is_none()
    })
}

/// C_Sign, counted, logged, faultable, and with `corrupt C_Sign` the middle
/// byte of a successful signature flipped.
///
/// # Safety
/// Same contract as C_Sign.
unsafe extern "C" fn sign_corrupting(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarding the caller's arguments to the shaped wrapper.
    let rv = unsafe { sign_shaped(session, data, len, sig, sig_len) };
    if rv == CKR_OK && !sig.is_null() && !sig_len.is_null() && catch_unwind(|| corrupts("C_Sign")).unwrap_or(false) {
        // SAFETY: on CKR_OK with a buffer, the library wrote *sig_len bytes
        // of signature to sig (the C_Sign contract).
        unsafe {
            let n = *sig_len as usize;
            if n > 0 {
                *sig.add(n / 2) ^= 0x01;
            }
        }
    }
    rv
}

/// `failmech <function> <mechanism hex> <rv>` in the control file: the rv
/// for a call of `function` with that mechanism.
fn mechanism_fault(name: &str, mech: CK_MECHANISM_TYPE) -> Option<CK_RV> {
    let text = std::fs::read_to_string(control_path()?).ok()?;
    text.lines().find_map(|line| {
        let mut w = line.split_whitespace();
        if w.next() != Some("failmech") || w.next() != Some(name) {
            return None;
        }
        let m = CK_MECHANISM_TYPE::from_str_radix(w.next()?.trim_start_matches("0x"), 16).ok()?;
        (m == mech).then(|| parse_rv(w.next()?)).flatten()
    })
}

/// Whether `em` (a raw RSA block) is PKCS#1 v1.5 type 2: 00 02, at least
/// eight non-zero bytes, a zero separator. Not constant time: a test aid.
fn pkcs1_type2_ok(em: &[u8]) -> bool {
    em.len() >= 11 && em[0] == 0 && em[1] == 2 && em[2..].iter().position(|b| *b == 0).is_some_and(|i| i >= 8)
}

/// `data` decrypted with CKM_RSA_X_509 on the real library (a whole
/// operation on `session`, which must have none active).
///
/// # Safety
/// `data` must be valid for `len` bytes.
unsafe fn raw_decrypt(session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) -> Option<Vec<u8>> {
    let l = real()?;
    let (init, dec) = (l.C_DecryptInit?, l.C_Decrypt?);
    let mut mech = CK_MECHANISM { mechanism: CKM_RSA_X_509, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
    // SAFETY: mech is a valid mechanism without parameters.
    if unsafe { init(session, &mut mech, key) } != CKR_OK {
        return None;
    }
    let mut out = vec![0u8; SCRATCH];
    let mut out_len = SCRATCH as CK_ULONG;
    // SAFETY: data/len per our contract; out has out_len writable bytes.
    if unsafe { dec(session, data, len, out.as_mut_ptr(), &mut out_len) } != CKR_OK {
        return None;
    }
    out.truncate(out_len as usize);
    Some(out)
}

/// C_Decrypt with the data-dependent knobs `faildata`, `oracle` and
/// `decryptlen` (see the crate docs); otherwise the wrapped C_Decrypt.
///
/// # Safety
/// Same contract as C_Decrypt.
unsafe extern "C" fn decrypt_with_answer_knobs(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    if out.is_null() || out_len.is_null() || data.is_null() || len == 0 {
        // SAFETY: forwarding the caller's arguments to the shaped wrapper.
        return unsafe { decrypt_shaped(session, data, len, out, out_len) };
    }
    let knobs =
        catch_unwind(|| (decrypt_knob("faildata").and_then(|v| parse_rv(&v)), decrypt_knob("oracle").and_then(|v| parse_rv(&v)), decrypt_len()));
    let Ok((faildata, oracle, length)) = knobs else { return CKR_GENERAL_ERROR };
    // SAFETY: data is non-null and valid for len bytes (C_Decrypt contract).
    let last_odd = unsafe { *data.add(len as usize - 1) } & 1 == 1;
    if let (Some(rv), true) = (faildata, last_odd) {
        let _ = catch_unwind(|| log_call("C_Decrypt faildata"));
        finish_decrypt(session, data, len);
        return rv;
    }
    // SAFETY: out_len is non-null: the caller's buffer size.
    let room = unsafe { *out_len } as usize;
    // SAFETY: forwarding the caller's arguments to the shaped wrapper.
    let rv = unsafe { decrypt_shaped(session, data, len, out, out_len) };
    if rv == CKR_BUFFER_TOO_SMALL {
        return rv;
    }
    if let Some(code) = oracle {
        let key = DECRYPT_KEYS.lock().ok().and_then(|k| k.iter().find(|(s, _)| *s == session).map(|(_, k)| *k));
        // SAFETY: data is valid for len bytes; the real operation has ended.
        let plain = key.and_then(|k| unsafe { raw_decrypt(session, k, data, len) });
        if plain.is_some_and(|p| !pkcs1_type2_ok(&p)) {
            let _ = catch_unwind(|| log_call("C_Decrypt oracle"));
            return code;
        }
    }
    match length {
        Some(n) if rv == CKR_OK && n <= room => {
            // SAFETY: out has room >= n bytes; out_len is valid.
            unsafe {
                let got = (*out_len as usize).min(n);
                std::ptr::write_bytes(out.add(got), 0, n - got);
                *out_len = n as CK_ULONG;
            }
            rv
        }
        _ => rv,
    }
}

/// `tokenflags <hex>` in the control file: flags OR-ed into what
/// C_GetTokenInfo reports (e.g. 0x40000 CKF_USER_PIN_LOCKED, 0x20000
/// CKF_USER_PIN_FINAL_TRY), to test how the module treats a PIN at risk.
fn extra_token_flags() -> CK_FLAGS {
    let Some(path) = control_path() else { return 0 };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tokenflags "))
        .filter_map(|v| CK_FLAGS::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .fold(0, |a, b| a | b)
}

/// C_GetTokenInfo, logged, faultable, with `tokenflags` applied.
///
/// # Safety
/// Same contract as C_GetTokenInfo.
unsafe extern "C" fn get_token_info_with_flags(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    // SAFETY: forwarding the caller's arguments to the wrapped function.
    let rv = unsafe { w::C_GetTokenInfo(slot, info) };
    if rv == CKR_OK && !info.is_null() {
        let extra = catch_unwind(extra_token_flags).unwrap_or(0);
        // SAFETY: info is non-null and was just filled by the library.
        unsafe { (*info).flags |= extra };
    }
    rv
}

/// C_Initialize, also logging `C_Initialize flags <hex>` (0x2 is
/// CKF_OS_LOCKING_OK) so tests can see how the caller initialized, and
/// taking the `delay` of the control file.
///
/// # Safety
/// Same contract as C_Initialize.
unsafe extern "C" fn initialize_logging_flags(args: *mut c_void) -> CK_RV {
    let flags = if args.is_null() {
        0
    } else {
        // SAFETY: a non-null argument is a CK_C_INITIALIZE_ARGS per PKCS#11.
        unsafe { (*(args as *const CK_C_INITIALIZE_ARGS)).flags }
    };
    let _ = catch_unwind(|| log_call(&format!("C_Initialize flags {flags:#x}")));
    // `delay C_Initialize <ms>`: a library slow to initialize (a network
    // HSM's client connecting).
    if let Ok(Some(ms)) = catch_unwind(|| delay_for("C_Initialize")) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    // SAFETY: forwarding the caller's argument to the wrapped function.
    unsafe { w::C_Initialize(args) }
}

/// `hidemech <hex>` lines in the control file: mechanisms C_GetMechanismList
/// leaves out, to test tokens that lack them (e.g. 0xd CKM_RSA_PKCS_PSS).
fn hidden_mechanisms() -> Vec<CK_MECHANISM_TYPE> {
    let Some(path) = control_path() else { return Vec::new() };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("hidemech "))
        .filter_map(|v| CK_MECHANISM_TYPE::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .collect()
}

/// C_GetMechanismList, logged, faultable, without the `hidemech` ones.
///
/// # Safety
/// Same contract as C_GetMechanismList.
unsafe extern "C" fn get_mechanism_list_hiding(slot: CK_SLOT_ID, mechs: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG) -> CK_RV {
    let hidden = catch_unwind(hidden_mechanisms).unwrap_or_default();
    if hidden.is_empty() || count.is_null() {
        // SAFETY: forwarding the caller's arguments to the wrapped function.
        return unsafe { w::C_GetMechanismList(slot, mechs, count) };
    }
    // Ask for the full list into our own buffer, then filter.
    let mut n: CK_ULONG = 0;
    // SAFETY: size query with a valid out-pointer.
    let rv = unsafe { w::C_GetMechanismList(slot, std::ptr::null_mut(), &mut n) };
    if rv != CKR_OK {
        return rv;
    }
    let mut all = vec![0 as CK_MECHANISM_TYPE; n as usize];
    // SAFETY: all has room for n entries.
    let rv = unsafe { w::C_GetMechanismList(slot, all.as_mut_ptr(), &mut n) };
    if rv != CKR_OK {
        return rv;
    }
    all.truncate(n as usize);
    all.retain(|m| !hidden.contains(m));
    // SAFETY: count is non-null (checked); mechs, when non-null, has room
    // for *count entries per the PKCS#11 contract.
    unsafe {
        if mechs.is_null() {
            *count = all.len() as CK_ULONG;
            return CKR_OK;
        }
        if (*count as usize) < all.len() {
            *count = all.len() as CK_ULONG;
            return CKR_BUFFER_TOO_SMALL;
        }
        std::ptr::copy_nonoverlapping(all.as_ptr(), mechs, all.len());
        *count = all.len() as CK_ULONG;
    }
    CKR_OK
}

// ---------------------------------------------------------------------------
// A token that answers with wrong lengths
// ---------------------------------------------------------------------------

/// How `outlen`, `lieoutlen` and `toosmall` lines make C_Sign / C_Decrypt
/// answer (the first of them that names the function wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `outlen <fn> <n>`: an honest-looking answer of exactly n bytes (the
    /// real result cut or zero-padded to n), e.g. an ECDSA signature of
    /// 2n±1 bytes or a 47-byte premaster. A size query answers n; a buffer
    /// under n gets CKR_BUFFER_TOO_SMALL with the operation left active.
    Exact(CK_ULONG),
    /// `lieoutlen <fn> <n>`: the real call into the caller's buffer, then
    /// CKR_OK with *pulLen = n (more than was written, up to 2^64-1).
    Lie(CK_ULONG),
    /// `toosmall <fn> <n>`: CKR_BUFFER_TOO_SMALL with *pulLen = n whatever
    /// the buffer (a size query gets CKR_OK and n), never forwarded, so the
    /// real operation stays active as the standard says.
    TooSmall(CK_ULONG),
}

fn shape_for(name: &str) -> Option<Shape> {
    let path = control_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut w = line.split_whitespace();
        let shape: fn(CK_ULONG) -> Shape = match w.next()? {
            "outlen" => Shape::Exact,
            "lieoutlen" => Shape::Lie,
            "toosmall" => Shape::TooSmall,
            _ => return None,
        };
        (w.next()? == name).then(|| Some(shape(w.next()?.parse().ok()?))).flatten()
    })
}

/// C_Sign / C_Decrypt (`name`) under the `Shape` the control file asks for.
/// `forward(out, out_len)` is the logged, faultable wrapper of the real
/// call with the caller's session and input.
///
/// # Safety
/// `out` and `out_len` as in the C_Sign contract: `out_len` valid, `out`
/// NULL or writable for `*out_len` bytes.
unsafe fn shaped(name: &str, out: *mut CK_BYTE, out_len: *mut CK_ULONG, forward: impl Fn(*mut CK_BYTE, *mut CK_ULONG) -> CK_RV) -> CK_RV {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let shape = shape_for(name);
        if shape.is_none() || out_len.is_null() {
            return forward(out, out_len);
        }
        // SAFETY (block): out_len is non-null and valid, out is NULL or has
        // *out_len writable bytes (our contract).
        unsafe {
            match shape {
                Some(Shape::TooSmall(n)) => {
                    log_call(name);
                    *out_len = n;
                    if out.is_null() {
                        CKR_OK
                    } else {
                        CKR_BUFFER_TOO_SMALL
                    }
                }
                Some(Shape::Lie(n)) => {
                    let rv = forward(out, out_len);
                    if rv == CKR_OK && !out.is_null() {
                        *out_len = n;
                    }
                    rv
                }
                Some(Shape::Exact(n)) => {
                    if out.is_null() || *out_len < n {
                        log_call(name);
                        let rv = if out.is_null() { CKR_OK } else { CKR_BUFFER_TOO_SMALL };
                        *out_len = n;
                        return rv;
                    }
                    let mut buf = vec![0u8; SCRATCH];
                    let mut got = SCRATCH as CK_ULONG;
                    let rv = forward(buf.as_mut_ptr(), &mut got);
                    if rv != CKR_OK {
                        return rv;
                    }
                    let n_bytes = n as usize;
                    buf.resize(n_bytes.max(SCRATCH), 0);
                    buf[(got as usize).min(n_bytes)..n_bytes].fill(0);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), out, n_bytes);
                    *out_len = n;
                    CKR_OK
                }
                None => unreachable!("checked above"),
            }
        }
    }));
    r.unwrap_or(CKR_GENERAL_ERROR)
}

/// C_Sign, logged, faultable, and shaped by `outlen` / `lieoutlen` /
/// `toosmall`.
///
/// # Safety
/// Same contract as C_Sign.
unsafe extern "C" fn sign_shaped(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, sig: *mut CK_BYTE, sig_len: *mut CK_ULONG) -> CK_RV {
    // SAFETY: the caller honours the C_Sign contract, which `shaped` and
    // the forwarded call need.
    unsafe { shaped("C_Sign", sig, sig_len, |o, l| w::C_Sign(session, data, len, o, l)) }
}

/// C_Decrypt, as [`sign_shaped`].
///
/// # Safety
/// Same contract as C_Decrypt.
unsafe extern "C" fn decrypt_shaped(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: as in sign_shaped, for C_Decrypt.
    unsafe { shaped("C_Decrypt", out, out_len, |o, l| w::C_Decrypt(session, data, len, o, l)) }
}

/// `attrlen <CKA hex> <n>` lines: the length C_GetAttributeValue gives for
/// that attribute type, of any object.
fn attribute_lengths() -> Vec<(CK_ATTRIBUTE_TYPE, CK_ULONG)> {
    let Some(path) = control_path() else { return Vec::new() };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "attrlen" {
                return None;
            }
            let ty = CK_ATTRIBUTE_TYPE::from_str_radix(w.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((ty, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Byte the `attrlen` knob fills a value with beyond the real one.
const ATTR_FILL: u8 = 0xa5;

/// C_GetAttributeValue, logged, faultable, with `attrlen` applied: a size
/// query (NULL pValue) answers n; a buffer of n bytes or more gets the real
/// value followed by `ATTR_FILL` up to n bytes and the length n; a smaller
/// one gets CK_UNAVAILABLE_INFORMATION and CKR_BUFFER_TOO_SMALL. This makes
/// a token with a multi-megabyte (or 2^32-byte) modulus or EC point.
///
/// # Safety
/// Same contract as C_GetAttributeValue.
unsafe extern "C" fn get_attribute_value_sized(session: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE, tmpl: *mut CK_ATTRIBUTE, count: CK_ULONG) -> CK_RV {
    let lengths = catch_unwind(attribute_lengths).unwrap_or_default();
    if lengths.is_empty() || tmpl.is_null() {
        // SAFETY: forwarding the caller's arguments to the wrapped function.
        return unsafe { w::C_GetAttributeValue(session, obj, tmpl, count) };
    }
    // SAFETY: tmpl is non-null and, per the C_GetAttributeValue contract,
    // holds `count` attributes, each pValue NULL or writable for
    // ulValueLen bytes.
    let attrs = unsafe { std::slice::from_raw_parts_mut(tmpl, count as usize) };
    let given: Vec<CK_ULONG> = attrs.iter().map(|a| a.ulValueLen).collect();
    // SAFETY: forwarding the caller's arguments to the wrapped function.
    let mut rv = unsafe { w::C_GetAttributeValue(session, obj, tmpl, count) };
    if !matches!(rv, CKR_OK | CKR_BUFFER_TOO_SMALL | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID) {
        return rv;
    }
    for (a, given) in attrs.iter_mut().zip(given) {
        let Some(&(_, n)) = lengths.iter().find(|(t, _)| *t == a.type_) else { continue };
        if a.pValue.is_null() {
            a.ulValueLen = n;
        } else if given >= n {
            let real = if a.ulValueLen == CK_UNAVAILABLE_INFORMATION { 0 } else { a.ulValueLen.min(n) };
            // SAFETY: pValue has `given` >= n writable bytes (the contract),
            // and real <= n.
            unsafe { std::ptr::write_bytes((a.pValue as *mut u8).add(real as usize), ATTR_FILL, (n - real) as usize) };
            a.ulValueLen = n;
        } else {
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if rv == CKR_OK {
                rv = CKR_BUFFER_TOO_SMALL;
            }
        }
    }
    rv
}

/// The one exported symbol.
///
/// # Safety
/// `list` must be NULL or a valid pointer to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    let r = catch_unwind(|| {
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        match lists() {
            Ok(l) => {
                // SAFETY: list is non-null and, per our contract, writable.
                // The leaked `wrapped` list lives forever; the PKCS#11
                // signature wants a *mut, but callers treat it as read-only.
                unsafe { *list = l.wrapped as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
                CKR_OK
            }
            Err(msg) => {
                eprintln!("hsm_test_p11wrap: {msg}");
                CKR_GENERAL_ERROR
            }
        }
    });
    r.unwrap_or(CKR_GENERAL_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rv_parsing() {
        assert_eq!(parse_rv("CKR_DEVICE_ERROR"), Some(CKR_DEVICE_ERROR));
        assert_eq!(parse_rv("0x30"), Some(0x30));
        assert_eq!(parse_rv("A0"), Some(CKR_PIN_INCORRECT));
        assert_eq!(parse_rv("CKR_NOPE"), None);
        for name in ["CKR_PIN_EXPIRED", "CKR_SESSION_CLOSED", "CKR_TOKEN_NOT_PRESENT", "CKR_FUNCTION_FAILED"] {
            assert!(parse_rv(name).is_some(), "{name} unknown to the fault knob");
        }
        assert_eq!(parse_rv("CKR_TEMPLATE_INCONSISTENT"), Some(0xd1));
        assert_eq!(parse_rv("CKR_ACTION_PROHIBITED"), Some(0x1b));
    }

    #[test]
    fn class_parsing_and_templates() {
        assert_eq!(parse_class("CKO_PRIVATE_KEY"), Some(3));
        assert_eq!(parse_class("0x4"), Some(CKO_SECRET_KEY));
        assert_eq!(parse_class("CKO_NOPE"), None);
        let class: CK_OBJECT_CLASS = CKO_PRIVATE_KEY;
        let token: CK_BBOOL = 1;
        let tmpl = [
            CK_ATTRIBUTE { type_: CKA_TOKEN, pValue: &token as *const CK_BBOOL as *mut c_void, ulValueLen: 1 },
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: &class as *const CK_OBJECT_CLASS as *mut c_void,
                ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
            },
        ];
        // SAFETY: tmpl is a valid array of 2 attributes pointing at live locals.
        assert_eq!(unsafe { template_class(tmpl.as_ptr(), 2) }, Some(CKO_PRIVATE_KEY));
        // SAFETY: as above, only the first attribute (no CKA_CLASS).
        assert_eq!(unsafe { template_class(tmpl.as_ptr(), 1) }, None);
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { template_class(std::ptr::null(), 0) }, None);
    }

    #[test]
    fn the_oracle_knob_tells_pkcs1_blocks_apart() {
        let mut good = vec![0u8, 2];
        good.extend([0x11; 8]);
        good.push(0);
        good.extend([3, 3, 7]);
        assert!(pkcs1_type2_ok(&good));
        for (i, b) in [(0, 1), (1, 1), (5, 0), (10, 5)] {
            let mut bad = good.clone();
            bad[i] = b;
            assert!(!pkcs1_type2_ok(&bad), "byte {i} = {b}");
        }
        assert!(!pkcs1_type2_ok(&good[..10]));
    }

    // --- benchmark mode ----------------------------------------------------

    use shm_layout::{COUNTERS_WORD, FUNCTIONS, LATENCY_US_WORD, MAGIC, SIZE};

    /// A fresh file `len` bytes long in the temp dir, with MAGIC in word 0
    /// if `magic`.
    fn shm_file(tag: &str, magic: bool, len: usize) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("p11wrap-shm-{}-{tag}", std::process::id()));
        let mut bytes = vec![0u8; len];
        if magic {
            bytes[..8].copy_from_slice(&MAGIC.to_ne_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Word `i` of the file, read with read(2), not through a mapping.
    fn file_word(path: &std::path::Path, i: usize) -> u64 {
        let bytes = std::fs::read(path).unwrap();
        u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
    }

    #[test]
    fn layout_names_every_wrapped_function() {
        for name in WRAPPED {
            assert!(shm_layout::index_of(name).is_some(), "{name} has no counter");
        }
        for (i, name) in FUNCTIONS.iter().enumerate() {
            assert_eq!(shm_layout::index_of(name), Some(i), "{name} listed twice");
            let base = name.strip_suffix("(size query)").unwrap_or(name);
            assert!(WRAPPED.contains(&base), "{name} is not wrapped");
        }
        assert_eq!(FUNCTIONS[FUNCTIONS.len() - 2..], ["C_Sign(size query)", "C_Decrypt(size query)"]);
        assert_eq!(counted("C_Initialize"), COUNTERS_WORD);
        assert_eq!(shm_layout::counter_word("C_Nope"), None);
    }

    #[test]
    fn shm_counts_and_sleeps() {
        let path = shm_file("count", true, SIZE);
        let shm = Shm::map(&path).expect("map a file with the magic");
        let sign = counted("C_Sign");
        for _ in 0..3 {
            shm.enter(sign);
        }
        shm.enter(counted("C_SignInit"));
        assert_eq!(file_word(&path, sign), 3);
        assert_eq!(file_word(&path, counted("C_SignInit")), 1);
        assert_eq!(file_word(&path, counted("C_Decrypt")), 0);

        // The latency word is read on every call.
        shm.words[LATENCY_US_WORD].store(30_000, Ordering::Relaxed);
        assert_eq!(file_word(&path, LATENCY_US_WORD), 30_000);
        let t = std::time::Instant::now();
        shm.enter(sign);
        assert!(t.elapsed() >= std::time::Duration::from_millis(30), "slept {:?}", t.elapsed());
        shm.words[LATENCY_US_WORD].store(0, Ordering::Relaxed);
        assert_eq!(file_word(&path, sign), 4);

        // A second mapping of the same file (another process's) sees it all.
        let other = Shm::map(&path).unwrap();
        assert_eq!(other.words[sign].load(Ordering::Relaxed), 4);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn shm_counts_of_a_forked_child_reach_the_parent() {
        let path = shm_file("fork", true, SIZE);
        let shm = Shm::map(&path).unwrap();
        let word = counted("C_Decrypt");
        // SAFETY: the child only does atomic adds on the inherited mapping
        // (latency 0: no sleep, no allocation) and _exits, which is safe
        // after fork() in a multi-threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            for _ in 0..1000 {
                shm.enter(word);
            }
            // SAFETY: ends the child without running the parent's atexit
            // handlers or the test harness.
            unsafe { libc::_exit(0) };
        }
        for _ in 0..1000 {
            shm.enter(word);
        }
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
        assert_eq!(shm.words[word].load(Ordering::Relaxed), 2000);
        assert_eq!(file_word(&path, word), 2000);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn shm_without_magic_or_too_short_is_ignored() {
        let no_magic = shm_file("nomagic", false, SIZE);
        assert!(Shm::map(&no_magic).is_none());
        assert_eq!(std::fs::read(&no_magic).unwrap(), vec![0u8; SIZE], "file changed");
        let short = shm_file("short", true, SIZE - 8);
        assert!(Shm::map(&short).is_none());
        assert_eq!(std::fs::metadata(&short).unwrap().len(), (SIZE - 8) as u64, "file grown");
        assert!(Shm::map(&std::env::temp_dir().join("p11wrap-shm-does-not-exist")).is_none());
        std::fs::remove_file(&no_magic).unwrap();
        std::fs::remove_file(&short).unwrap();
    }

    /// The only test that goes through `shm()` and the exported wrappers
    /// (the mapping is per process): size queries get their own counter.
    #[test]
    fn wrappers_count_sign_and_its_size_queries_apart() {
        let path = shm_file("wrappers", true, SIZE);
        std::env::set_var(shm_layout::ENV, &path);
        let mut len: CK_ULONG = 0;
        let mut data = [0u8; 4];
        let mut sig = [0u8; 16];
        // SAFETY: valid (if meaningless) arguments; whatever the real library
        // returns (not initialized, or not loaded), the call is counted first.
        unsafe {
            w::C_Sign(1, data.as_mut_ptr(), 4, std::ptr::null_mut(), &mut len);
            w::C_Sign(1, data.as_mut_ptr(), 4, std::ptr::null_mut(), &mut len);
            len = 16;
            w::C_Sign(1, data.as_mut_ptr(), 4, sig.as_mut_ptr(), &mut len);
            w::C_Decrypt(1, data.as_mut_ptr(), 4, std::ptr::null_mut(), &mut len);
            w::C_SignInit(1, std::ptr::null_mut(), 0);
        }
        assert_eq!(file_word(&path, counted("C_Sign(size query)")), 2);
        assert_eq!(file_word(&path, counted("C_Sign")), 1);
        assert_eq!(file_word(&path, counted("C_Decrypt(size query)")), 1);
        assert_eq!(file_word(&path, counted("C_Decrypt")), 0);
        assert_eq!(file_word(&path, counted("C_SignInit")), 1);
        std::fs::remove_file(&path).unwrap();
    }
}
