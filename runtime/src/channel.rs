//! The typed messages the runtime and the container init exchange over a SEQPACKET
//! socketpair during create (one datagram per message, EOF when the peer dies or execs).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One step of the create handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Runtime → init: id maps written, cgroup joined; go on. Carries the OCI state JSON
    /// that in-container hooks receive.
    Go(String),
    /// Init → runtime: namespaces and mounts exist; run prestart/createRuntime hooks now.
    RunHooks,
    /// Runtime → init: hooks done; go on.
    Continue,
    /// Init → runtime: fully set up, now waiting for `start`.
    Ready,
    /// Either side: setup failed.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::RunHooks => vec![b'H'],
            Msg::Continue => vec![b'C'],
            Msg::Ready => vec![b'R'],
            Msg::Go(m) | Msg::Error(m) => {
                let mut v = vec![if matches!(self, Msg::Go(_)) { b'G' } else { b'E' }];
                v.extend_from_slice(m.as_bytes());
                v
            }
        }
    }

    fn decode(buf: &[u8]) -> io::Result<Msg> {
        Ok(match buf.first() {
            Some(b'G') => Msg::Go(String::from_utf8_lossy(&buf[1..]).into_owned()),
            Some(b'H') => Msg::RunHooks,
            Some(b'C') => Msg::Continue,
            Some(b'R') => Msg::Ready,
            Some(b'E') => Msg::Error(String::from_utf8_lossy(&buf[1..]).into_owned()),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unknown sync message")),
        })
    }
}

/// One end of the socketpair.
#[derive(Debug)]
pub struct Channel(pub OwnedFd);

/// Creates a connected pair (close-on-exec, so the user process never inherits it).
pub fn pair() -> io::Result<(Channel, Channel)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element out-array.
    crate::syscall::cvt(unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by us alone.
    Ok(unsafe { (Channel(OwnedFd::from_raw_fd(fds[0])), Channel(OwnedFd::from_raw_fd(fds[1]))) })
}

impl Channel {
    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let buf = msg.encode();
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Next message, or `None` when the peer has gone (exited, or exec'd the user process).
    pub fn recv(&self) -> io::Result<Option<Msg>> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is valid for buf.len() bytes of writes.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(None);
            }
            return Msg::decode(&buf[..n as usize]).map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_eof() {
        let (a, b) = pair().unwrap();
        for msg in
            [Msg::Go("{}".into()), Msg::RunHooks, Msg::Continue, Msg::Ready, Msg::Error("mount /proc: EPERM".into())]
        {
            a.send(&msg).unwrap();
            assert_eq!(b.recv().unwrap(), Some(msg));
        }
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }
}
