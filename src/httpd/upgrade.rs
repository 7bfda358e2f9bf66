//! Whether the module file on disk is the one running.
//!
//! The module pins itself in memory (`module::pin_self`), so a graceful
//! restart after a package upgrade keeps running the old code: httpd
//! dlopens the path again and gets the loaded object back. This compares
//! the file the process mapped (device and inode, from /proc/self/maps)
//! with what the path names now. A reload in a running httpd says so
//! (HSM00118); `apachectl configtest`, a new process that loads the new
//! file, looks at the running server's maps through its PidFile (HSM00119).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A mapped file: its path as the kernel shows it, device and inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub path: PathBuf,
    pub dev: (u64, u64),
    pub inode: u64,
}

/// The module file this process loaded: the mapping the kernel shows, and
/// what `stat` said of its path then (on overlayfs, as in containers, the
/// two disagree on device and inode, so each is compared with its like).
struct Loaded {
    mapped: Mapped,
    stat: Option<Stat>,
}

/// Device, inode, size and modification time of a path, from `stat`.
type Stat = (u64, u64, u64, i64, i64);

/// Read once, at the module's first load in the process.
static LOADED: OnceLock<Option<Loaded>> = OnceLock::new();

/// Reads the mapping that holds `addr` from a /proc/PID/maps text.
fn mapping_at(maps: &str, addr: usize) -> Option<Mapped> {
    maps.lines().find_map(|l| {
        let m = parse_line(l)?;
        let (range, _) = l.split_once(' ')?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?);
        (lo <= addr && addr < hi).then_some(m)
    })
}

/// `start-end perms offset major:minor inode path`, for a file mapping.
/// A path the kernel marks ` (deleted)` is given without the mark.
fn parse_line(line: &str) -> Option<Mapped> {
    let mut f = line.splitn(6, ' ');
    let (_, _, _, dev, inode) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let path = f.next()?.trim_start();
    if !path.starts_with('/') {
        return None;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let (major, minor) = dev.split_once(':')?;
    let inode: u64 = inode.parse().ok()?;
    let dev = (u64::from_str_radix(major, 16).ok()?, u64::from_str_radix(minor, 16).ok()?);
    (inode != 0).then(|| Mapped { path: PathBuf::from(path), dev, inode })
}

fn stat(path: &Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Notes which file this process runs the module from. Called at every
/// load of the module; the first one counts.
pub fn remember() {
    LOADED.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let mapped = mapping_at(&maps, remember as *const () as usize)?;
        let stat = stat(&mapped.path);
        Some(Loaded { mapped, stat })
    });
}

/// Why the file at the running module's path is not the running module,
/// if it is not.
pub fn replaced() -> Option<String> {
    let l = LOADED.get()?.as_ref()?;
    let path = l.mapped.path.display();
    match (stat(&l.mapped.path), &l.stat) {
        (Some(now), Some(then)) if now == *then => None,
        (Some(_), _) => Some(format!("{path} was replaced since this httpd started")),
        (None, _) => Some(format!("{path} was removed since this httpd started")),
    }
}

/// For configtest: whether the httpd whose pid is in `pid_file` runs this
/// module from another file than the one at its path now (the one this
/// process loaded): its pid when so.
pub fn running_is_older(pid_file: &Path) -> Option<i32> {
    let mine = &LOADED.get()?.as_ref()?.mapped;
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let theirs = maps.lines().filter_map(parse_line).find(|m| m.path == mine.path)?;
    (theirs != *mine).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 fe:01 1311 /usr/sbin/apache2
7f1000000000-7f1000100000 r-xp 00010000 fe:01 4242 /usr/lib/apache2/modules/mod_hsm_ssl.so (deleted)
7f1000100000-7f1000200000 rw-p 00000000 00:00 0 
7f1000200000-7f1000300000 r-xp 00000000 08:11 99 /opt/lib with space/x.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn finds_the_mapping_of_an_address_and_drops_the_deleted_mark() {
        let m = mapping_at(MAPS, 0x7f1000000100).unwrap();
        assert_eq!(m, Mapped { path: "/usr/lib/apache2/modules/mod_hsm_ssl.so".into(), dev: (0xfe, 1), inode: 4242 });
        assert_eq!(mapping_at(MAPS, 0x7f1000200000).unwrap().path, PathBuf::from("/opt/lib with space/x.so"));
        assert_eq!(mapping_at(MAPS, 0x7f1000100010), None, "an anonymous mapping is no file");
        assert_eq!(mapping_at(MAPS, 0x7ffd00000010), None);
        assert_eq!(mapping_at(MAPS, 0x1000), None);
    }

    #[test]
    fn the_test_binary_finds_its_own_file() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let me = mapping_at(&maps, the_test_binary_finds_its_own_file as *const () as usize).unwrap();
        assert!(me.path.exists(), "{me:?}");
        assert!(stat(&me.path).is_some());
        assert_eq!(stat(Path::new("/nonexistent/mod_hsm_ssl.so")), None);
    }
}
