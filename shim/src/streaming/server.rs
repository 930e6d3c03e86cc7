//! The streaming server: the listener and its accept loop, and the URLs the CRI handlers hand out.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::handler::{self, Shared};
use super::tokens::{Pending, TokenCache};
use super::{AttachRequest, Backend, Config, ExecRequest, PortForwardRequest, StreamingError};

/// A running streaming server. Dropping it (or [`Server::shutdown`]) stops accepting
/// connections; sessions already running finish on their own.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    base_url: String,
    stop: CancellationToken,
}

impl Server {
    /// Binds `config.listen` and starts serving on the current tokio runtime.
    pub async fn start(config: Config, backend: Arc<dyn Backend>) -> Result<Server, StreamingError> {
        let bind_err = |source| StreamingError::Bind { addr: config.listen, source };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let base_url = match &config.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{local_addr}"),
        };
        let shared = Arc::new(Shared {
            backend,
            tokens: TokenCache::new(config.token_ttl),
            creation_timeout: config.stream_creation_timeout,
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        tracing::info!(addr = %local_addr, %base_url, "streaming server listening");
        Ok(Server { shared, local_addr, base_url, stop })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A single-use URL for `req` (ExecResponse.url). Refuses what the CRI forbids: no
    /// container, tty with stderr, or no stream at all.
    pub fn exec_url(&self, req: ExecRequest) -> Result<String, StreamingError> {
        check_streams(&req.container_id, req.stdin, req.stdout, req.stderr, req.tty)?;
        self.url("exec", Pending::Exec(req))
    }

    /// A single-use URL for `req` (AttachResponse.url), checked like [`Server::exec_url`].
    pub fn attach_url(&self, req: AttachRequest) -> Result<String, StreamingError> {
        check_streams(&req.container_id, req.stdin, req.stdout, req.stderr, req.tty)?;
        self.url("attach", Pending::Attach(req))
    }

    /// A single-use URL for `req` (PortForwardResponse.url).
    pub fn port_forward_url(&self, req: PortForwardRequest) -> Result<String, StreamingError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(StreamingError::InvalidRequest { reason: "missing required pod_sandbox_id" });
        }
        self.url("portforward", Pending::PortForward(req))
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    fn url(&self, kind: &str, pending: Pending) -> Result<String, StreamingError> {
        let token = self.shared.tokens.insert(pending)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn check_streams(container_id: &str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), StreamingError> {
    let reason = if container_id.is_empty() {
        "missing required container_id"
    } else if tty && stderr {
        "tty and stderr cannot both be true"
    } else if !(stdin || stdout || stderr) {
        "one of stdin, stdout, or stderr must be set"
    } else {
        return Ok(());
    };
    Err(StreamingError::InvalidRequest { reason })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "streaming server accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handler::handle(shared.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
            if let Err(err) = conn.await {
                tracing::debug!(%peer, error = %err, "streaming HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_the_cri_forbids_are_refused() {
        assert!(check_streams("", true, true, false, false).is_err());
        assert!(check_streams("c", false, true, true, true).is_err());
        assert!(check_streams("c", false, false, false, false).is_err());
        assert!(check_streams("c", true, true, false, true).is_ok());
        assert!(check_streams("c", false, true, true, false).is_ok());
    }
}
