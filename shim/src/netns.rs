//! Pinned network namespaces: made on a dedicated OS thread (never on a tokio worker), bind
//! mounted to a file so they outlive their processes until the sandbox is removed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Creates a new network namespace pinned at `path`, with its loopback up.
pub fn create(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || create_on_this_thread(&path))
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

fn create_on_this_thread(path: &PathBuf) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    // SAFETY: unshare affects only this short-lived thread (CLONE_NEWNET is per-thread).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let src = c"/proc/thread-self/ns/net";
    let dst = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated; a bind mount with no data.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    loopback_up()
}

/// Pins an existing network namespace (`src`, e.g. /proc/PID/ns/net) at `path` and brings its
/// loopback up.
pub fn pin(src: &Path, path: &Path) -> io::Result<()> {
    let (src, path) = (src.to_path_buf(), path.to_path_buf());
    std::thread::spawn(move || pin_on_this_thread(&src, &path))
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

fn pin_on_this_thread(src: &Path, path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other);
    let (s, d) = (c(src)?, c(path)?);
    // SAFETY: both strings are NUL-terminated; a bind mount with no data.
    if unsafe { libc::mount(s.as_ptr(), d.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns on this dedicated, short-lived thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the interface ioctls below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; the ioctls read/write it in place.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unpins and removes a namespace file; a missing one is success.
pub fn remove(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated path; a failed unmount of a non-mount is ignored below.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
