//! The streaming server's backend: Exec and Attach through the pod's monitor (which hands over
//! the process's stdio or pty), PortForward by connecting from inside the pod's network
//! namespace on a dedicated OS thread. Also the Exec/Attach/PortForward RPCs that mint URLs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_proto::runtime::v1 as cri;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use super::{CriError, CriResult, Shim};
use crate::monitor::{Request, Response};
use crate::streaming::{AsyncReadWrite, Backend, BackendError, BoxFuture, StreamIo};

/// How long output may keep draining after an exec's process has exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub struct StreamBackend(pub Weak<Shim>);

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed { message: e.to_string() }
}

impl Backend for StreamBackend {
    fn exec(&self, req: cri::ExecRequest, io: StreamIo) -> BoxFuture<Result<i32, BackendError>> {
        let shim = self.0.upgrade();
        Box::pin(async move { shim.ok_or_else(|| failed("shutting down"))?.stream_exec(req, io).await })
    }

    fn attach(&self, req: cri::AttachRequest, io: StreamIo) -> BoxFuture<Result<(), BackendError>> {
        let shim = self.0.upgrade();
        Box::pin(async move { shim.ok_or_else(|| failed("shutting down"))?.stream_attach(req, io).await })
    }

    fn port_forward(&self, sandbox_id: String, port: u16) -> BoxFuture<Result<Box<dyn AsyncReadWrite>, BackendError>> {
        let shim = self.0.upgrade();
        Box::pin(async move { shim.ok_or_else(|| failed("shutting down"))?.connect_in_pod(&sandbox_id, port).await })
    }
}

fn receiver(fd: OwnedFd) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>> {
    Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?))
}

fn sender(fd: OwnedFd) -> std::io::Result<Box<dyn AsyncWrite + Send + Unpin>> {
    Ok(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?))
}

/// Copies until end of input; errors (a vanished client, a closed pty) end the copy too.
async fn pump(from: Option<Box<dyn AsyncRead + Send + Unpin>>, to: Option<Box<dyn AsyncWrite + Send + Unpin>>) {
    if let (Some(mut from), Some(mut to)) = (from, to) {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut to).await;
    }
}

fn take(fds: &mut Vec<(String, OwnedFd)>, name: &str) -> Option<OwnedFd> {
    fds.iter().position(|(n, _)| n == name).map(|i| fds.remove(i).1)
}

fn set_winsize(fd: &OwnedFd, width: u16, height: u16) {
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Applies the client's terminal resizes to the pty; never finishes.
async fn resize_loop(rx: Option<&mut mpsc::Receiver<crate::streaming::TermSize>>, fd: Option<&OwnedFd>) {
    if let (Some(rx), Some(fd)) = (rx, fd) {
        while let Some(size) = rx.recv().await {
            set_winsize(fd, size.width, size.height);
        }
    }
    std::future::pending::<()>().await
}

impl Shim {
    fn running_for_stream(&self, id: &str) -> Result<crate::store::Container, BackendError> {
        self.running_container(id).map_err(|e| match e {
            CriError::NotFound(_) => BackendError::NotFound { what: format!("container {id}") },
            other => failed(crate::error_chain(&other)),
        })
    }

    async fn stream_exec(self: Arc<Self>, req: cri::ExecRequest, mut io: StreamIo) -> Result<i32, BackendError> {
        let c = self.running_for_stream(&req.container_id)?;
        let process =
            self.exec_process(&c.record.id, req.cmd.clone(), req.tty).map_err(|e| failed(crate::error_chain(&e)))?;
        let want_stdin = io.stdin.is_some();
        let request =
            Request::Exec { id: c.record.id.clone(), process: Box::new(process), tty: req.tty, stdin: want_stdin };
        let (conn, mut fds) = self
            .monitor(&c.record.sandbox_id)
            .call_stdio(&request)
            .await
            .map_err(|e| failed(crate::error_chain(&e)))?;
        let io_err = |e: std::io::Error| failed(format!("exec stdio: {e}"));
        let (input, output, errors, resize_fd): (_, _, _, Option<OwnedFd>) = match take(&mut fds, "pty") {
            Some(pty) => {
                let writer = pty.try_clone().map_err(io_err)?;
                let resize = pty.try_clone().map_err(io_err)?;
                let r: Box<dyn AsyncRead + Send + Unpin> =
                    Box::new(tokio::fs::File::from_std(std::fs::File::from(pty)));
                let w: Box<dyn AsyncWrite + Send + Unpin> =
                    Box::new(tokio::fs::File::from_std(std::fs::File::from(writer)));
                (Some(w), Some(r), None, Some(resize))
            }
            None => (
                take(&mut fds, "stdin").map(sender).transpose().map_err(io_err)?,
                take(&mut fds, "stdout").map(receiver).transpose().map_err(io_err)?,
                take(&mut fds, "stderr").map(receiver).transpose().map_err(io_err)?,
                None,
            ),
        };
        let stdin = pump(io.stdin.take(), input);
        let resize = resize_loop(io.resize.as_mut(), resize_fd.as_ref());
        let conn = tokio::net::UnixStream::from_std({
            conn.set_nonblocking(true).map_err(io_err)?;
            conn
        })
        .map_err(io_err)?;
        let exit = async {
            let mut line = String::new();
            BufReader::new(conn).read_line(&mut line).await.map_err(io_err)?;
            match serde_json::from_str::<Response>(&line) {
                Ok(Response::ExecExited { exit_code }) => Ok(exit_code),
                Ok(Response::Error { message }) => Err(failed(message)),
                _ => Err(failed(format!("the pod monitor answered {line:?}"))),
            }
        };
        let outputs = async {
            tokio::join!(pump(output, io.stdout.take()), pump(errors, io.stderr.take()));
        };
        let work = async {
            tokio::pin!(outputs);
            tokio::pin!(exit);
            let mut drained = false;
            let code = loop {
                tokio::select! {
                    code = &mut exit => break code,
                    () = &mut outputs, if !drained => drained = true,
                }
            };
            if !drained {
                // The process is gone; let what it wrote drain (a background child may hold the pipes).
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, outputs).await;
            }
            code
        };
        tokio::select! {
            code = work => code,
            () = async { stdin.await; std::future::pending::<()>().await } => unreachable!(),
            () = resize => unreachable!(),
        }
    }

    async fn stream_attach(self: Arc<Self>, req: cri::AttachRequest, mut io: StreamIo) -> Result<(), BackendError> {
        let c = self.running_for_stream(&req.container_id)?;
        let request = Request::Attach {
            id: c.record.id.clone(),
            stdin: io.stdin.is_some(),
            stdout: io.stdout.is_some(),
            stderr: io.stderr.is_some(),
        };
        let (_conn, mut fds) = self
            .monitor(&c.record.sandbox_id)
            .call_stdio(&request)
            .await
            .map_err(|e| failed(crate::error_chain(&e)))?;
        let io_err = |e: std::io::Error| failed(format!("attach stdio: {e}"));
        // A terminal container's stdin is its pty master: typed into, and resized.
        let pty = take(&mut fds, "pty");
        let resize_fd = pty.as_ref().map(|p| p.try_clone()).transpose().map_err(io_err)?;
        let input: Option<Box<dyn AsyncWrite + Send + Unpin>> = match pty {
            Some(pty) => Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(pty)))),
            None => take(&mut fds, "stdin").map(sender).transpose().map_err(io_err)?,
        };
        // A stdin_once terminal sees end-of-input as the terminal's EOF character.
        let eot = c.config.tty && c.config.stdin_once;
        let output = take(&mut fds, "stdout").map(receiver).transpose().map_err(io_err)?;
        let errors = take(&mut fds, "stderr").map(receiver).transpose().map_err(io_err)?;
        let has_output = output.is_some() || errors.is_some();
        let stdin = async {
            match (io.stdin.take(), input) {
                (Some(mut from), Some(mut to)) if eot => {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut to, b"\x04").await;
                }
                (from, to) => pump(from, to).await,
            }
        };
        let resize = resize_loop(io.resize.as_mut(), resize_fd.as_ref());
        let outputs = async {
            tokio::join!(pump(output, io.stdout.take()), pump(errors, io.stderr.take()));
        };
        let io_done = async {
            if has_output {
                tokio::select! {
                    () = outputs => {}
                    () = async { stdin.await; std::future::pending::<()>().await } => {}
                }
            } else {
                stdin.await;
            }
        };
        tokio::select! {
            () = io_done => {}
            () = resize => unreachable!(),
        }
        Ok(())
    }

    /// A TCP connection to `port` on the pod's loopback, made from a thread that entered the
    /// pod's network namespace (never a tokio worker).
    async fn connect_in_pod(
        self: Arc<Self>,
        sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn AsyncReadWrite>, BackendError> {
        let sb = self
            .store
            .resolve_sandbox(sandbox_id)
            .and_then(|id| self.store.sandbox(&id))
            .ok_or_else(|| BackendError::NotFound { what: format!("pod sandbox {sandbox_id}") })?;
        let netns = sb.record.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = (|| -> std::io::Result<std::net::TcpStream> {
                if let Some(path) = &netns {
                    let f = std::fs::File::open(path)?;
                    // SAFETY: setns on this dedicated thread only; it exits right after.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let s = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(10),
                )?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let _ = tx.send(result);
        });
        let stream = rx
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("connecting to port {port} in pod {}: {e}", sb.record.id)))?;
        Ok(Box::new(tokio::net::TcpStream::from_std(stream).map_err(failed)?))
    }

    fn streaming(&self) -> CriResult<&crate::streaming::Server> {
        self.streaming.get().ok_or_else(|| CriError::FailedPrecondition("the streaming server is not running".into()))
    }

    pub async fn exec_url(self: &Arc<Self>, req: cri::ExecRequest) -> CriResult<cri::ExecResponse> {
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument("cmd: must not be empty".into()));
        }
        self.running_container(&req.container_id).map_err(|e| CriError::NotFound(crate::error_chain(&e)))?;
        let url = self.streaming()?.exec_url(req).map_err(|e| CriError::InvalidArgument(crate::error_chain(&e)))?;
        Ok(cri::ExecResponse { url })
    }

    pub async fn attach_url(self: &Arc<Self>, req: cri::AttachRequest) -> CriResult<cri::AttachResponse> {
        self.running_container(&req.container_id).map_err(|e| CriError::NotFound(crate::error_chain(&e)))?;
        let url = self.streaming()?.attach_url(req).map_err(|e| CriError::InvalidArgument(crate::error_chain(&e)))?;
        Ok(cri::AttachResponse { url })
    }

    pub async fn port_forward_url(
        self: &Arc<Self>,
        req: cri::PortForwardRequest,
    ) -> CriResult<cri::PortForwardResponse> {
        if self.store.resolve_sandbox(&req.pod_sandbox_id).is_none() {
            return Err(CriError::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id)));
        }
        let url =
            self.streaming()?.port_forward_url(req).map_err(|e| CriError::InvalidArgument(crate::error_chain(&e)))?;
        Ok(cri::PortForwardResponse { url })
    }

    /// Starts the streaming server (once, after the shim is shared).
    pub async fn start_streaming(self: &Arc<Self>) -> CriResult<std::net::SocketAddr> {
        let config = crate::streaming::Config { listen: self.cfg.streaming_address, ..Default::default() };
        let server = crate::streaming::Server::start(config, Arc::new(StreamBackend(Arc::downgrade(self))))
            .await
            .map_err(|e| CriError::Internal(crate::error_chain(&e)))?;
        let addr = server.local_addr();
        let _ = self.streaming.set(server);
        Ok(addr)
    }
}
