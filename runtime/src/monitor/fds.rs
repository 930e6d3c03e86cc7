//! Descriptor plumbing shared by the monitor's loop, execs and attaches: pipes, non-blocking
//! mode, the standard descriptors of forked children, poll entries.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub(super) fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

pub(super) fn drain_signalfd(fd: &OwnedFd) {
    let mut buf = [0u8; 128 * 8];
    // SAFETY: reading signalfd_siginfo records into a local buffer.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

pub(super) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `/dev/null`, open for reading and writing (stdio of processes without a stream).
pub(super) fn null() -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?))
}

pub(super) fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// In a forked child: stdio onto the given fds, signals back to defaults and unblocked, and
/// every other descriptor closed except `keep` (moved to fd 3, close-on-exec), which is
/// returned. Without this, a long-lived exec child would hold other containers' stdin and
/// pipes open (stdin_once could never reach end-of-file).
pub(super) fn child_stdio(stdin: &OwnedFd, stdout: &OwnedFd, stderr: &OwnedFd, keep: OwnedFd) -> OwnedFd {
    // SAFETY: dup2/fcntl/close_range on our own descriptors and resetting signal state, in the
    // single-threaded forked child; fd 3 is owned by the returned OwnedFd alone.
    unsafe {
        libc::dup2(stdin.as_raw_fd(), 0);
        libc::dup2(stdout.as_raw_fd(), 1);
        libc::dup2(stderr.as_raw_fd(), 2);
        let raw = keep.as_raw_fd();
        if raw != 3 {
            libc::dup2(raw, 3);
        }
        // Its number is 3 now, or closed by close_range below: never close it by the old one.
        std::mem::forget(keep);
        libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        OwnedFd::from_raw_fd(3)
    }
}
