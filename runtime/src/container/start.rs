//! `start`: release a created container's init (it is blocked opening the exec fifo), then
//! run the poststart hooks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{os, ContainerError, Loaded};
use crate::state::{self, Root, Status};

pub fn start(root: &Root, id: &str) -> Result<(), ContainerError> {
    let mut c = Loaded::load(root, id)?;
    c.require(&[Status::Created], "start")?;
    let fifo = c.dir.join(state::EXEC_FIFO);
    let path = crate::syscall::cstr(&fifo).map_err(os("fifo path"))?;
    // Non-blocking open: if the init died there is no writer and a blocking open would hang.
    // SAFETY: path is a valid C string.
    let fd =
        crate::syscall::cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) })
            .map_err(os(format!("opening {}", fifo.display())))?;
    // SAFETY: open succeeded, so we own the descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: pfd is a valid pollfd array of length 1.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n > 0 {
            let mut byte = [0u8; 1];
            // SAFETY: byte is a valid 1-byte buffer.
            let r = unsafe { libc::read(fd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            if r == 1 {
                break;
            }
        }
        if !state::process_alive(c.record.pid, c.record.pid_start) {
            return Err(ContainerError::Init("the container init exited before start".into()));
        }
        if Instant::now() > deadline {
            return Err(ContainerError::Init("the container init did not answer start within 30 s".into()));
        }
    }
    std::fs::remove_file(&fifo).map_err(os(format!("removing {}", fifo.display())))?;
    c.record.status = Status::Running;
    state::save(&c.dir, &c.record)?;
    c.status = Status::Running;
    run_poststart(&c);
    Ok(())
}

/// Poststart hook failures are logged, not fatal (the process is already running).
pub fn run_poststart(c: &Loaded) {
    let Some(list) = c.record.config.hooks().as_ref().and_then(|h| h.poststart().clone()) else { return };
    if let Err(e) = crate::hooks::run_all("poststart", &list, &c.state_json()) {
        tracing::warn!(error = %crate::spec::error_chain(&e), "poststart hook failed");
    }
}
