//! The streaming server behind CRI Exec, Attach and PortForward: single-use URLs, and the
//! Kubernetes remote-command and port-forward protocols over SPDY/3.1 and WebSocket.
//!
//! The CRI handlers call [`Server::exec_url`], [`Server::attach_url`] or
//! [`Server::port_forward_url`] and hand the URL back to the client (kubelet, crictl, critest).
//! The client connects to it and upgrades the HTTP/1.1 connection:
//!
//! - `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version` (remote-command `v5.channel.k8s.io`,
//!   `v4.channel.k8s.io`, `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io`;
//!   port-forward `portforward.k8s.io`): one SPDY stream per stdin/stdout/stderr/error/resize, or
//!   an error and a data stream per forwarded connection.
//! - `Upgrade: websocket` with `Sec-WebSocket-Protocol`: remote-command channels
//!   (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `channel.k8s.io`,
//!   `base64.channel.k8s.io`); port-forward either SPDY tunnelled in binary messages
//!   (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.31+ and `crictl --transport websocket` use) or
//!   the older channel protocol (`v4.channel.k8s.io`, one data and one error channel per port).
//!
//! The work itself is done by a [`Backend`] the shim implements: run a command, attach to a
//! container, or open a TCP connection inside a pod's network namespace.

mod handler;
mod io;
mod portforward;
mod remotecommand;
mod server;
mod spdy;
mod tokens;
mod ws;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use berth_proto::runtime::v1::{AttachRequest, ExecRequest, PortForwardRequest};
pub use server::Server;

/// A boxed, sendable future: what [`Backend`] methods return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A bidirectional byte stream (a TCP connection into a pod, for port-forward).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// What the streaming server asks of the runtime.
///
/// The server drops a returned future when its client goes away (connection closed or reset),
/// so a backend must stop what it started when its future is dropped (e.g. kill an exec'd
/// process, detach from a container's output).
pub trait Backend: Send + Sync + 'static {
    /// Runs `req.cmd` in container `req.container_id` with `io` as its standard streams and
    /// returns its exit code. The server closes stdout/stderr when the future completes.
    fn exec(&self, req: ExecRequest, io: StreamIo) -> BoxFuture<Result<i32, BackendError>>;
    /// Attaches `io` to the running container `req.container_id` until it exits or stdin ends.
    fn attach(&self, req: AttachRequest, io: StreamIo) -> BoxFuture<Result<(), BackendError>>;
    /// Opens a connection to `port` on the loopback of the sandbox's network namespace.
    fn port_forward(&self, sandbox_id: String, port: u16) -> BoxFuture<Result<Box<dyn AsyncReadWrite>, BackendError>>;
}

/// The client's streams, as the request asked for them. With `tty`, there is no stderr: the
/// terminal carries both.
pub struct StreamIo {
    /// Bytes the client types or pipes; EOF when the client closes its stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal size changes (only with `tty`); the first one usually arrives at once.
    pub resize: Option<mpsc::Receiver<TermSize>>,
    pub tty: bool,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .field("tty", &self.tty)
            .finish()
    }
}

/// A terminal size, as the client's resize messages carry it (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// A backend's failure; its text goes to the client's error stream.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Failed { message: String },
}

impl BackendError {
    /// The error and its sources in one line, for the client.
    fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            text.push_str(": ");
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }
}

/// Where the server listens and how long things may take.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; port 0 picks a free port (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Base of the URLs handed out (`http://host:port`); default `http://<bound address>`.
    pub base_url: Option<String>,
    /// How long a URL stays valid before its first (and only) use.
    pub token_ttl: Duration,
    /// How long a SPDY client may take to open the streams it announced.
    pub stream_creation_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            token_ttl: Duration::from_secs(60),
            stream_creation_timeout: Duration::from_secs(30),
        }
    }
}

/// Failures of the streaming server's own API (not of a stream session, which are logged).
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("binding the streaming server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid streaming request: {reason}")]
    InvalidRequest { reason: &'static str },
    #[error("too many streaming requests in flight ({limit})")]
    TooManyRequests { limit: usize },
    #[error("reading random bytes for a token")]
    Random {
        #[source]
        source: std::io::Error,
    },
}
