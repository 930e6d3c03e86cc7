//! The container's terminal: a pty pair made inside the container's devpts, whose master is
//! sent to the caller's `--console-socket` (SCM_RIGHTS) and whose slave becomes stdio.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::syscall::cvt;

/// Connects to the console socket (a host path: do this before pivot_root).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    Ok(OwnedFd::from(stream))
}

/// Makes a pty, hands the master to `socket`, and makes the slave our controlling terminal
/// and stdin/stdout/stderr.
pub fn setup(socket: &OwnedFd, size: Option<(u16, u16)>) -> io::Result<()> {
    // SAFETY: the path is a valid C string; flags are plain integers.
    let master = cvt(unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: open succeeded, so we own the descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: master is an open pty master.
    cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: name is a valid buffer of the given length.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r NUL-terminated the buffer.
    let slave = cvt(unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) })?;
    // SAFETY: open succeeded, so we own the descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: ws is a valid winsize for TIOCSWINSZ.
        cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    }
    // SAFETY: name is NUL-terminated (above).
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_bytes().to_vec();
    send_fd(socket, &master, &path)?;
    drop(master);
    // SAFETY: plain syscalls on descriptors we own.
    unsafe {
        cvt(libc::setsid())?;
        cvt(libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0))?;
        for target in 0..3 {
            cvt(libc::dup2(slave.as_raw_fd(), target))?;
        }
    }
    Ok(())
}

/// Sends `fd` with `payload` as the message body over a unix socket.
pub fn send_fd(socket: &OwnedFd, fd: &OwnedFd, payload: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at a buffer large enough for one cmsg with one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: msg is fully initialised and its buffers outlive the call.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
