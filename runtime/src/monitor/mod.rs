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
    std::fs::rename(&tmp, path)
}
