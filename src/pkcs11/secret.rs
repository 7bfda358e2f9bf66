//! A PIN in memory: never printed, kept out of core dumps and swap, wiped
//! when dropped.

use std::fmt;

use parking_lot::Mutex;
use zeroize::Zeroize;

/// The user PIN (CloudHSM: `crypto-user:password`). `Debug` prints a
/// placeholder; the bytes are zeroed by [`Secret::wipe`] (at process exit)
/// or when the last owner drops it.
///
/// The bytes live in pages of their own (an anonymous mapping), marked
/// `MADV_DONTDUMP` so a core dump of httpd does not carry them, and locked
/// with `mlock` so they are never written to swap. A heap buffer would
/// share its pages with anything else and could be copied by the allocator.
pub struct Secret(Mutex<Pages>);

impl Secret {
    /// Takes the PIN out of `bytes`, which is zeroed.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        let s = Secret(Mutex::new(Pages::holding(&bytes)));
        bytes.zeroize();
        s
    }

    /// A copy in pages of its own: wiping one leaves the other intact.
    pub fn duplicate(&self) -> Secret {
        Secret(Mutex::new(Pages::holding(self.0.lock().bytes())))
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> Vec<u8> {
        self.0.lock().bytes().to_vec()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().len == 0
    }

    /// Runs `f` with the secret bytes (no copy escapes unless `f` makes one).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.0.lock().bytes())
    }

    /// Zeroes the PIN now; later logins fail instead of using stale bytes.
    pub fn wipe(&self) {
        self.0.lock().wipe();
    }

    /// The PIN in the form cryptoki's `login_with_raw` takes; that copy is
    /// itself wiped on drop (secrecy's `SecretBox`).
    pub fn to_raw_auth_pin(&self) -> cryptoki::types::RawAuthPin {
        cryptoki::types::RawAuthPin::new(Box::new(self.0.lock().bytes().to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Page-aligned anonymous memory holding `len` secret bytes (`cap` mapped;
/// null when the mapping failed and nothing could be kept).
struct Pages {
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone and only reached
// through the Secret's mutex.
unsafe impl Send for Pages {}

impl Pages {
    fn holding(bytes: &[u8]) -> Pages {
        let page = page_size();
        let cap = bytes.len().max(1).div_ceil(page) * page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if ptr == libc::MAP_FAILED {
            // Out of address space: refuse to hold the PIN rather than keep
            // it somewhere unprotected; the login then fails with an empty PIN.
            log::error!("HSM00485: cannot map memory for the PIN: {}", std::io::Error::last_os_error());
            return Pages { ptr: std::ptr::null_mut(), cap: 0, len: 0 };
        }
        // SAFETY: ptr..ptr+cap is the mapping just made.
        unsafe {
            if libc::madvise(ptr, cap, libc::MADV_DONTDUMP) != 0 {
                log::debug!("HSM00486: madvise(MADV_DONTDUMP) on the PIN's page failed: {}", std::io::Error::last_os_error());
            }
            if libc::mlock(ptr, cap) != 0 {
                // RLIMIT_MEMLOCK is often 64 KiB or less; the PIN still works.
                log::debug!("HSM00487: mlock on the PIN's page failed (it may be swapped out): {}", std::io::Error::last_os_error());
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr as *mut u8, bytes.len());
        }
        Pages { ptr: ptr as *mut u8, cap, len: bytes.len() }
    }

    fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: ptr holds len initialized bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn wipe(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the whole mapping is ours and writable.
            let all = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.cap) };
            all.zeroize();
        }
        self.len = 0;
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.wipe();
        if !self.ptr.is_null() {
            // SAFETY: unmapping the mapping made in `holding`, no longer
            // referenced (bytes() borrows self).
            unsafe {
                libc::munlock(self.ptr as *const libc::c_void, self.cap);
                libc::munmap(self.ptr as *mut libc::c_void, self.cap);
            }
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_pin() {
        let s = Secret::new(b"crypto-user:hunter2".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.as_bytes(), b"crypto-user:hunter2");
        s.wipe();
        assert!(s.is_empty());
    }

    #[test]
    fn a_duplicate_survives_wiping_the_original() {
        let s = Secret::new(b"cu:pw".to_vec());
        let d = s.duplicate();
        s.wipe();
        assert_eq!(d.as_bytes(), b"cu:pw");
    }

    /// The smaps entry of the mapping that holds `addr`. (The kernel merges
    /// adjacent anonymous mappings with the same flags, so another Secret's
    /// pages, made by a test running beside this one, may share the entry.)
    fn smaps_entry(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut entry = String::new();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
                let range = usize::from_str_radix(start, 16).ok().zip(usize::from_str_radix(end, 16).ok());
                inside = range.is_some_and(|(s, e)| s <= addr && addr < e);
            }
            if inside {
                entry.push_str(line);
                entry.push('\n');
            }
        }
        entry
    }

    #[test]
    fn the_pin_lives_in_pages_kept_out_of_core_dumps_and_locked_when_allowed() {
        let s = Secret::new(b"cu:pw".to_vec());
        let addr = s.0.lock().ptr as usize;
        assert!(addr != 0 && addr % page_size() == 0, "not in pages of its own");
        let entry = smaps_entry(addr);
        let flags = entry.lines().find(|l| l.starts_with("VmFlags:")).unwrap_or_else(|| panic!("no VmFlags:\n{entry}"));
        assert!(flags.split_whitespace().any(|f| f == "dd"), "not MADV_DONTDUMP: {flags}");
        // mlock succeeds as root or within RLIMIT_MEMLOCK; where it does,
        // the mapping is locked.
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit.
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            assert!(flags.split_whitespace().any(|f| f == "lo"), "not locked: {flags}");
        }
    }
}
