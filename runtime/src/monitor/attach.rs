//! Attach: the caller gets the container's stdin (the monitor's own write end when the
//! container is `stdin_once`, a duplicate otherwise) and pipes that receive a copy of its output.
//! For a terminal container the stdin is a duplicate of the pty master, named "pty" so the
//! caller can also resize it; its output is all on "stdout".

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::daemon::{respond, Monitor};
use super::fdpass;
use super::fds::{pipe, set_nonblocking};
use super::logs::Stream;
use super::proto::Response;

impl Monitor {
    pub(super) fn attach(&mut self, id: &str, [want_in, want_out, want_err]: [bool; 3], conn: UnixStream) {
        let Some(c) = self.containers.get_mut(id).filter(|c| c.exit.is_none()) else {
            return respond(conn, &Response::Error { message: format!("container {id} is not running") });
        };
        let mut names = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        if want_in {
            let stdin = if c.stdin_once { c.stdin.take() } else { c.stdin.as_ref().and_then(|f| f.try_clone().ok()) };
            match stdin {
                Some(fd) => {
                    names.push(if c.tty { "pty" } else { "stdin" }.to_string());
                    fds.push(fd);
                }
                None => {
                    return respond(
                        conn,
                        &Response::Error { message: format!("container {id} has no stdin to attach to") },
                    )
                }
            }
        }
        let mut copies: [Option<OwnedFd>; 2] = [None, None];
        let want_err = want_err && !c.tty;
        for (i, (want, name)) in [(want_out, "stdout"), (want_err, "stderr")].into_iter().enumerate() {
            if !want {
                continue;
            }
            match pipe() {
                Ok((r, w)) => {
                    set_nonblocking(&w);
                    names.push(name.to_string());
                    fds.push(r);
                    copies[i] = Some(w);
                }
                Err(e) => return respond(conn, &Response::Error { message: format!("pipe: {e}") }),
            }
        }
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut line = serde_json::to_vec(&Response::Stdio { fds: names }).unwrap_or_default();
        line.push(b'\n');
        match fdpass::send(&conn, &line, &raw) {
            Ok(()) => c.attached.push(copies),
            Err(e) => tracing::warn!(id, error = %e, "handing attach stdio to the shim"),
        }
    }
}

/// Copies container output to every attached caller; a caller that cannot keep up or has gone
/// loses its attachment (the container never blocks on an attach).
pub(super) fn tee(attached: &mut Vec<[Option<OwnedFd>; 2]>, stream: Stream, data: &[u8]) {
    let i = match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    };
    attached.retain_mut(|a| {
        let Some(fd) = &a[i] else { return true };
        let mut rest = data;
        while !rest.is_empty() {
            // SAFETY: writing from a valid slice to a non-blocking pipe we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return false;
            }
            rest = &rest[n as usize..];
        }
        true
    });
}
