//! The per-pod monitor: a small synchronous process (binary `berth-monitor`) that creates a pod's
//! containers through the runtime library, stays their parent and reaper (child subreaper), copies
//! their output into CRI log files and records each exit in `exit.json` before anyone is told.
//! The shim talks to it over `<pod dir>/monitor.sock` (its client lives in berth-shim);
//! containers outlive a restart of the shim. It lives in this crate because it is the one
//! that forks containers, and so that it ships as a small static binary like berth-runtime.

mod attach;
pub mod daemon;
mod exec;
pub mod fdpass;
mod fds;
pub mod logs;
pub mod proto;
mod vfork;

use std::path::{Path, PathBuf};

pub use proto::{Exit, Request, Response};

pub const SOCKET: &str = "monitor.sock";

/// Where a container's exit record lives inside a pod directory.
pub fn exit_path(pod_dir: &Path, container_id: &str) -> PathBuf {
    pod_dir.join("exits").join(format!("{container_id}.json"))
}

/// Reads an exit record, if the container has exited.
pub fn read_exit(pod_dir: &Path, container_id: &str) -> Option<Exit> {
    let bytes = std::fs::read(exit_path(pod_dir, container_id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_replace(path, bytes, true)
}

/// Like [`write_atomic`], with the fsync only when `durable`: for files whose loss in a power
/// cut is harmless (per-boot bundles, data that only completes a durable record).
///
/// The temporary file and the destination are swapped (`RENAME_EXCHANGE`), so the previous
/// version stays behind as the temporary file and is rewritten by the next update: a record
/// updated again and again allocates two inodes once and frees none. (A plain rename frees
/// the old inode each time; on ext4 without a journal, each allocation then scans past every
/// inode freed in the last minute, which made a burst of pod starts quadratic.)
pub fn write_replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    match exchange(&tmp, path) {
        Ok(()) => Ok(()),
        // No destination yet (the first write), or a filesystem that cannot exchange.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS)) => {
            std::fs::rename(&tmp, path)
        }
        Err(e) => Err(e),
    }
}

/// Atomically swaps the directory entries `a` and `b`.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let (a, b) = (crate::syscall::cstr(a)?, crate::syscall::cstr(b)?);
    // SAFETY: two valid C strings; renameat2 only reads them.
    crate::syscall::cvt(unsafe {
        libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn replacing_swaps_two_inodes_instead_of_allocating() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("record.json");
        write_replace(&path, b"one", true).unwrap();
        write_replace(&path, b"two", true).unwrap();
        let tmp = d.path().join(".record.json.tmp");
        let inodes = (std::fs::metadata(&path).unwrap().ino(), std::fs::metadata(&tmp).unwrap().ino());
        assert_eq!(
            (std::fs::read(&path).unwrap(), std::fs::read(&tmp).unwrap()),
            (b"two".to_vec(), b"one".to_vec()),
            "the previous version stays as the temporary file"
        );
        write_replace(&path, b"three", false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert_eq!(
            (std::fs::metadata(&path).unwrap().ino(), std::fs::metadata(&tmp).unwrap().ino()),
            (inodes.1, inodes.0),
            "the same two inodes, swapped"
        );
    }
}
