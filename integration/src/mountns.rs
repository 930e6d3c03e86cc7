//! Gives the calling thread a private mount namespace without `/sys/fs/cgroup/unified`, so that
//! runtimes which refuse hybrid cgroup hosts (Debian's crun 1.8) see a plain cgroup v1 host.

use std::ffi::CStr;
use std::io;

/// The cgroup2 mount of a hybrid host.
pub const UNIFIED: &CStr = c"/sys/fs/cgroup/unified";

/// Errors while preparing the mount namespace.
#[derive(Debug, thiserror::Error)]
pub enum MountNsError {
    #[error("unshare(CLONE_NEWNS) failed (needs root)")]
    Unshare(#[source] io::Error),
    #[error("cannot make / rprivate")]
    MakePrivate(#[source] io::Error),
    #[error("cannot detach /sys/fs/cgroup/unified")]
    Detach(#[source] io::Error),
}

/// Unshares the mount namespace, makes `/` recursively private and lazily unmounts
/// `/sys/fs/cgroup/unified` if it is mounted. Returns whether it was mounted.
///
/// Mount namespaces belong to the calling thread's fs context: call this from a single-threaded
/// process (or the thread that will spawn the runtimes) before spawning them.
pub fn detach_cgroup2_unified() -> Result<bool, MountNsError> {
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(MountNsError::Unshare(io::Error::last_os_error()));
    }
    // SAFETY: all pointers are NUL-terminated literals or null, as mount(2) allows for a
    // propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(MountNsError::MakePrivate(io::Error::last_os_error()));
    }
    // SAFETY: UNIFIED is a NUL-terminated path.
    if unsafe { libc::umount2(UNIFIED.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Not a mount point, or absent: nothing to detach.
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => Err(MountNsError::Detach(err)),
    }
}

/// A tmpfs mounted on a test directory, lazily unmounted when dropped. A node keeps its
/// runtimes' run directories (`/run/berth`, `/run/containerd`) on the tmpfs systemd mounts on
/// /run; the harness gives its runtimes the same, wherever its temp dir lives.
#[derive(Debug)]
pub struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    /// Creates `dir` if needed and mounts a private tmpfs (mode 0700) on it.
    pub fn mount(dir: &std::path::Path) -> io::Result<Tmpfs> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir)?;
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: valid NUL-terminated strings; tmpfs takes no source.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mounting a tmpfs on {}: {e}", dir.display())));
        }
        Ok(Tmpfs(target))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: a valid path; MNT_DETACH also takes the mounts a runtime left below it.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}
