//! The shim's side of the pod monitor (`berth_runtime::monitor`, binary `berth-monitor`):
//! spawn a pod's monitor, send it requests.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use berth_runtime::monitor::{proto, read_exit, write_atomic, write_replace, Exit, Request, Response, SOCKET};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("starting the pod monitor {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod monitor did not start: {0}")]
    NotReady(String),
    #[error("talking to the pod monitor at {socket}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod monitor answered badly: {0}")]
    Protocol(String),
    #[error("{0}")]
    Failed(String),
}

/// A handle on one pod's monitor (it holds nothing open: each request is a connection).
#[derive(Debug, Clone)]
pub struct MonitorClient {
    socket: PathBuf,
}

impl MonitorClient {
    pub fn new(pod_dir: &Path) -> MonitorClient {
        MonitorClient { socket: pod_dir.join(SOCKET) }
    }

    /// Starts `berth-monitor` for a pod directory and waits until it listens. The monitor is
    /// the shim's child only until the shim exits; containers are the monitor's children.
    pub async fn spawn(
        binary: &Path,
        pod_dir: &Path,
        runtime_root: &Path,
    ) -> Result<(MonitorClient, tokio::process::Child), MonitorError> {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("--dir").arg(pod_dir).arg("--runtime-root").arg(runtime_root);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        // The cgroup layout this shim already knows: a monitor spares itself a read of the
        // node's mountinfo, which grows with every pod.
        if let Some(layout) = berth_runtime::cgroups::Layout::cached().ok().and_then(|l| serde_json::to_string(&l).ok())
        {
            cmd.env(berth_runtime::cgroups::LAYOUT_ENV, layout);
        }
        // No pre_exec hook: std then spawns with posix_spawn (vfork) instead of a fork of the
        // whole shim. The monitor starts its own session itself, first thing, so signals meant
        // for the shim's process group do not reach pods.
        let mut child = cmd.spawn().map_err(|source| MonitorError::Spawn { binary: binary.to_path_buf(), source })?;
        let stdout = child.stdout.take().ok_or_else(|| MonitorError::NotReady("no stdout".into()))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .map_err(|source| MonitorError::Io { socket: pod_dir.join(SOCKET), source })?;
        if line.trim() != "ready" {
            let _ = child.start_kill();
            return Err(MonitorError::NotReady(if line.is_empty() {
                "it exited before listening".into()
            } else {
                line.trim().to_string()
            }));
        }
        Ok((MonitorClient::new(pod_dir), child))
    }

    pub async fn call(&self, req: &Request) -> Result<Response, MonitorError> {
        let io = |source| MonitorError::Io { socket: self.socket.clone(), source };
        let mut conn = UnixStream::connect(&self.socket).await.map_err(io)?;
        let mut line = serde_json::to_vec(req).map_err(|e| MonitorError::Protocol(e.to_string()))?;
        line.push(b'\n');
        conn.write_all(&line).await.map_err(io)?;
        let mut reader = BufReader::new(conn);
        let mut answer = Vec::new();
        reader.read_until(b'\n', &mut answer).await.map_err(io)?;
        if answer.is_empty() {
            return Err(MonitorError::Protocol("connection closed without an answer".into()));
        }
        match serde_json::from_slice(&answer).map_err(|e| MonitorError::Protocol(e.to_string()))? {
            Response::Error { message } => Err(MonitorError::Failed(message)),
            other => Ok(other),
        }
    }

    pub fn is_alive(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }
}

impl MonitorClient {
    /// Sends a request whose answer carries file descriptors ([`Response::Stdio`]); returns the
    /// connection (still open: an exec's exit code comes on it) and the named fds.
    pub async fn call_stdio(
        &self,
        req: &Request,
    ) -> Result<(std::os::unix::net::UnixStream, Vec<(String, std::os::fd::OwnedFd)>), MonitorError> {
        let socket = self.socket.clone();
        let req = req.clone();
        tokio::task::spawn_blocking(move || -> Result<_, MonitorError> {
            use std::io::Write;
            let io = |source| MonitorError::Io { socket: socket.clone(), source };
            let mut conn = std::os::unix::net::UnixStream::connect(&socket).map_err(io)?;
            let mut line = serde_json::to_vec(&req).map_err(|e| MonitorError::Protocol(e.to_string()))?;
            line.push(b'\n');
            conn.write_all(&line).map_err(io)?;
            let mut buf = vec![0u8; 64 * 1024];
            let (n, fds) = berth_runtime::monitor::fdpass::recv(&conn, &mut buf).map_err(io)?;
            let text = &buf[..n];
            let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
            match serde_json::from_slice(&text[..end]).map_err(|e| MonitorError::Protocol(e.to_string()))? {
                Response::Stdio { fds: names } if names.len() == fds.len() => {
                    Ok((conn, names.into_iter().zip(fds).collect()))
                }
                Response::Error { message } => Err(MonitorError::Failed(message)),
                other => Err(MonitorError::Protocol(format!("expected stdio, got {other:?} with {} fds", fds.len()))),
            }
        })
        .await
        .map_err(|e| MonitorError::Protocol(e.to_string()))?
    }
}
