//! Processes run inside a running container by the monitor: ExecSync (output collected, with a
//! timeout) and streaming Exec (stdio handed to the shim over SCM_RIGHTS). Each runs in a
//! forked child in its own process group, so a timeout or a vanished caller kills all of it.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::Process;

use super::daemon::{read_exec_output, respond, ExecJob, Monitor};
use super::fdpass;
use super::fds::{child_stdio, null, pipe, set_nonblocking};
use super::proto::Response;
use crate::container::{self, ExecOptions};

/// How long a terminal exec may take to hand over its pty.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

impl Monitor {
    /// Forks a child running `process` in container `id` with the given stdio (or a terminal
    /// through `console`); returns its pid and the pipe its error message arrives on.
    fn fork_exec(
        &self,
        id: &str,
        process: Process,
        stdio: [&OwnedFd; 3],
        console: Option<&Path>,
    ) -> Result<(i32, OwnedFd), String> {
        if self.containers.get(id).is_none_or(|c| c.exit.is_some()) {
            return Err(format!("container {id} is not running"));
        }
        let (e_r, e_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: single-threaded monitor; the child calls the runtime library and exits.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if child == 0 {
            // SAFETY: own process group, so a timeout can kill the whole exec.
            unsafe { libc::setpgid(0, 0) };
            let e_w = child_stdio(stdio[0], stdio[1], stdio[2], e_w);
            let opts =
                ExecOptions { root: &self.root, id, process, console_socket: console, pid_file: None, detach: false };
            let code = match container::exec(opts) {
                Ok(code) => code,
                Err(e) => {
                    let _ = std::fs::File::from(e_w).write_all(crate::spec::error_chain(&e).as_bytes());
                    255
                }
            };
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(code) };
        }
        Ok((child, e_r))
    }

    pub(super) fn exec_sync(&mut self, id: &str, process: Process, timeout_ms: u64, conn: UnixStream) {
        let pipes = (|| -> std::io::Result<_> { Ok((pipe()?, pipe()?, null()?)) })();
        let ((out_r, out_w), (err_r, err_w), null) = match pipes {
            Ok(p) => p,
            Err(e) => return respond(conn, &Response::Error { message: format!("pipe: {e}") }),
        };
        match self.fork_exec(id, process, [&null, &out_w, &err_w], None) {
            Ok((pid, error)) => {
                drop((out_w, err_w));
                set_nonblocking(&out_r);
                set_nonblocking(&err_r);
                let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
                let out = [(Some(out_r), Vec::new()), (Some(err_r), Vec::new())];
                self.execs.insert(pid, ExecJob { conn, error, out, deadline, streaming: false });
            }
            Err(message) => respond(conn, &Response::Error { message }),
        }
    }

    /// Streaming exec: pipes (or a pty) whose caller ends go to the shim with the answer.
    pub(super) fn exec_stream(&mut self, id: &str, process: Process, tty: bool, want_stdin: bool, conn: UnixStream) {
        let result = if tty { self.exec_tty(id, process) } else { self.exec_pipes(id, process, want_stdin) };
        match result {
            Ok((pid, error, names, fds)) => {
                let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
                let mut line = serde_json::to_vec(&Response::Stdio { fds: names }).unwrap_or_default();
                line.push(b'\n');
                if let Err(e) = fdpass::send(&conn, &line, &raw) {
                    tracing::warn!(id, error = %e, "handing exec stdio to the shim");
                    // SAFETY: killing the exec's process group (our child).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                drop(fds);
                let _ = conn.set_nonblocking(true);
                self.execs.insert(
                    pid,
                    ExecJob {
                        conn,
                        error,
                        out: [(None, Vec::new()), (None, Vec::new())],
                        deadline: None,
                        streaming: true,
                    },
                );
            }
            Err(message) => respond(conn, &Response::Error { message }),
        }
    }

    #[allow(clippy::type_complexity)]
    fn exec_pipes(
        &mut self,
        id: &str,
        process: Process,
        want_stdin: bool,
    ) -> Result<(i32, OwnedFd, Vec<String>, Vec<OwnedFd>), String> {
        let e = |e: std::io::Error| format!("pipe: {e}");
        let (out_r, out_w) = pipe().map_err(e)?;
        let (err_r, err_w) = pipe().map_err(e)?;
        let (in_r, in_w) = if want_stdin {
            let (r, w) = pipe().map_err(e)?;
            (r, Some(w))
        } else {
            (null().map_err(e)?, None)
        };
        let (pid, error) = self.fork_exec(id, process, [&in_r, &out_w, &err_w], None)?;
        let mut names = Vec::new();
        let mut fds = Vec::new();
        if let Some(w) = in_w {
            names.push("stdin".to_string());
            fds.push(w);
        }
        names.extend(["stdout".to_string(), "stderr".to_string()]);
        fds.extend([out_r, err_r]);
        Ok((pid, error, names, fds))
    }

    #[allow(clippy::type_complexity)]
    fn exec_tty(&mut self, id: &str, process: Process) -> Result<(i32, OwnedFd, Vec<String>, Vec<OwnedFd>), String> {
        self.counter += 1;
        let path = self.dir.join(format!("c{}.sock", self.counter));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| format!("console socket {}: {e}", path.display()))?;
        let null = null().map_err(|e| format!("/dev/null: {e}"))?;
        let forked = self.fork_exec(id, process, [&null, &null, &null], Some(&path));
        let master = forked.as_ref().map_err(Clone::clone).and_then(|_| receive_pty(&listener));
        let _ = std::fs::remove_file(&path);
        let (pid, error) = forked?;
        match master {
            Ok(master) => Ok((pid, error, vec!["pty".into()], vec![master])),
            Err(e) => {
                // SAFETY: killing our own child's process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                Err(e)
            }
        }
    }

    pub(super) fn expire_execs(&mut self) {
        let now = Instant::now();
        let expired: Vec<i32> =
            self.execs.iter().filter(|(_, j)| j.deadline.is_some_and(|d| d <= now)).map(|(p, _)| *p).collect();
        for pid in expired {
            // SAFETY: killing the exec's own process group (our child and what it started).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
            if let Some(mut job) = self.execs.remove(&pid) {
                job.out.iter_mut().for_each(read_exec_output);
                let [(_, stdout), (_, stderr)] = job.out;
                respond(job.conn, &Response::ExecResult { exit_code: -1, stdout, stderr, timed_out: true });
            }
        }
    }

    /// The shim closed a streaming exec's connection (the client went away): kill the exec.
    pub(super) fn exec_caller_gone(&mut self, pid: i32) {
        let Some(job) = self.execs.get(&pid) else { return };
        let mut buf = [0u8; 64];
        // SAFETY: a non-blocking read into a local buffer.
        let n = unsafe { libc::read(job.conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock) {
            tracing::info!(pid, "exec caller went away: killing the exec");
            // SAFETY: killing the exec's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            if let Some(job) = self.execs.get_mut(&pid) {
                // Stop polling a dead connection; the reap still answers (into the void).
                job.streaming = false;
            }
        }
    }
}

/// Waits for the runtime to connect to the console socket and send the pty master.
pub(super) fn receive_pty(listener: &UnixListener) -> Result<OwnedFd, String> {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, CONSOLE_TIMEOUT.as_millis() as i32) } <= 0 {
        return Err("the exec did not hand over its terminal".into());
    }
    let (conn, _) = listener.accept().map_err(|e| format!("console socket accept: {e}"))?;
    let mut buf = [0u8; 256];
    let (_, mut fds) = fdpass::recv(&conn, &mut buf).map_err(|e| format!("receiving the pty: {e}"))?;
    fds.pop().ok_or_else(|| "no pty received on the console socket".to_string())
}
