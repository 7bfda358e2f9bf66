//! The benchmark's side of the wrapper's shared page (layout in
//! tests/p11wrap/src/shm_layout.rs): creates the file, maps it, sets the
//! added latency and reads the call counters that every Apache process
//! using the wrapper adds to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../p11wrap/src/shm_layout.rs"]
mod layout;

pub use layout::ENV;

pub struct Shm {
    pub path: PathBuf,
    base: *const AtomicU64,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it
// stays mapped for the life of the Shm.
unsafe impl Send for Shm {}
// SAFETY: as for Send; every access to the mapping is an atomic operation.
unsafe impl Sync for Shm {}

/// Call counts per function at one moment.
pub type Counts = BTreeMap<&'static str, u64>;

impl Shm {
    pub fn create(path: &Path) -> Shm {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, vec![0u8; layout::SIZE]).expect("create the wrapper's shared page");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod shared page");
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open shared page");
        // SAFETY: a fresh MAP_SHARED mapping of a file of exactly SIZE bytes;
        // the kernel picks the (page-aligned) address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::unix::io::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of the shared page failed");
        let shm = Shm { path: path.to_path_buf(), base: p as *const AtomicU64 };
        shm.word(layout::MAGIC_WORD).store(layout::MAGIC, Ordering::SeqCst);
        shm
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < layout::WORDS);
        // SAFETY: i is within the SIZE-byte page-aligned mapping, which
        // outlives &self; u64 words there are only used atomically.
        unsafe { &*self.base.add(i) }
    }

    /// Added latency per wrapped call, from the next call on.
    pub fn set_latency_us(&self, us: u64) {
        self.word(layout::LATENCY_US_WORD).store(us, Ordering::SeqCst);
    }

    pub fn counts(&self) -> Counts {
        layout::FUNCTIONS.iter().enumerate().map(|(i, name)| (*name, self.word(layout::COUNTERS_WORD + i).load(Ordering::SeqCst))).collect()
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: base/SIZE are exactly what mmap returned and took.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, layout::SIZE);
        }
    }
}

/// `after - before` per function.
pub fn diff(before: &Counts, after: &Counts) -> Counts {
    after.iter().map(|(k, v)| (*k, v.saturating_sub(*before.get(k).unwrap_or(&0)))).collect()
}

/// Private-key operations: one C_SignInit or C_DecryptInit each.
pub fn key_ops(c: &Counts) -> u64 {
    c.get("C_SignInit").copied().unwrap_or(0) + c.get("C_DecryptInit").copied().unwrap_or(0)
}

/// Every PKCS#11 call (round trips to a network HSM).
pub fn calls(c: &Counts) -> u64 {
    c.values().sum()
}
