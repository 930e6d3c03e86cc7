//! A test backend on the host: exec runs the command with pipes (tty merges stderr into stdout
//! and records resizes), attach greets and echoes stdin, port-forward dials 127.0.0.1.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::streaming::{
    AsyncReadWrite, AttachRequest, Backend, BackendError, BoxFuture, ExecRequest, StreamIo, TermSize,
};

#[derive(Default, Clone)]
pub(super) struct HostBackend {
    pub(super) resizes: Arc<Mutex<Vec<TermSize>>>,
}

async fn copy_to<R>(mut from: R, to: Option<Box<dyn AsyncWrite + Send + Unpin>>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    match to {
        Some(mut to) => {
            let _ = tokio::io::copy(&mut from, &mut to).await;
        }
        None => {
            let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
        }
    }
}

impl Backend for HostBackend {
    fn exec(&self, req: ExecRequest, io: StreamIo) -> BoxFuture<Result<i32, BackendError>> {
        let resizes = self.resizes.clone();
        Box::pin(async move {
            let StreamIo { stdin, stdout, stderr, resize, tty } = io;
            let mut cmd = if tty {
                // One terminal stream: fold the command's stderr into its stdout.
                let mut sh = tokio::process::Command::new("/bin/sh");
                sh.args(["-c", "exec \"$@\" 2>&1", "sh"]).args(&req.cmd);
                sh
            } else {
                let mut direct = tokio::process::Command::new(&req.cmd[0]);
                direct.args(&req.cmd[1..]);
                direct
            };
            cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|source| BackendError::Io { context: format!("spawning {:?}", req.cmd), source })?;
            if let Some(mut rx) = resize {
                tokio::spawn(async move {
                    while let Some(size) = rx.recv().await {
                        resizes.lock().expect("resizes").push(size);
                    }
                });
            }
            let feeder = match (stdin, child.stdin.take()) {
                (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.shutdown().await;
                })),
                _ => None,
            };
            let out = copy_to(child.stdout.take().expect("piped"), stdout);
            let err = copy_to(child.stderr.take().expect("piped"), stderr);
            tokio::join!(out, err);
            let status = child
                .wait()
                .await
                .map_err(|source| BackendError::Io { context: "waiting for the command".into(), source })?;
            if let Some(feeder) = feeder {
                feeder.abort();
            }
            Ok(status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
        })
    }

    fn attach(&self, req: AttachRequest, io: StreamIo) -> BoxFuture<Result<(), BackendError>> {
        Box::pin(async move {
            if req.container_id == "missing" {
                return Err(BackendError::NotFound { what: format!("container {}", req.container_id) });
            }
            let StreamIo { stdin, stdout, .. } = io;
            let Some(mut stdout) = stdout else {
                return Ok(());
            };
            let greeting = format!("attached to {}\n", req.container_id);
            let io_err = |source| BackendError::Io { context: "writing to stdout".into(), source };
            stdout.write_all(greeting.as_bytes()).await.map_err(io_err)?;
            if let Some(mut stdin) = stdin {
                tokio::io::copy(&mut stdin, &mut stdout).await.map_err(io_err)?;
            }
            Ok(())
        })
    }

    fn port_forward(&self, sandbox_id: String, port: u16) -> BoxFuture<Result<Box<dyn AsyncReadWrite>, BackendError>> {
        Box::pin(async move {
            let conn = TcpStream::connect(("127.0.0.1", port)).await.map_err(|source| BackendError::Io {
                context: format!("connecting to port {port} of sandbox {sandbox_id}"),
                source,
            })?;
            Ok(Box::new(conn) as Box<dyn AsyncReadWrite>)
        })
    }
}
