//! The HTTPS listener: rustls (ring provider) with optional client certificates verified
//! against the cluster CA, HTTP/1.1 (with upgrades, for exec/attach/port-forward) and HTTP/2
//! (ALPN), one task per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::Api;
use crate::pki::Pki;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading PEM for {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The TLS server configuration: serving cert from the PKI, client certs optional.
pub fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        let c = c.map_err(|source| ServerError::Pem { what: "the CA", source })?;
        roots.add(c).map_err(ServerError::Tls)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(ServerError::Verifier)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| ServerError::Pem { what: "the serving certificate", source })?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())
        .map_err(|source| ServerError::Pem { what: "the serving key", source })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(ServerError::Tls)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts connections until the process ends.
pub async fn serve(api: Arc<Api>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (api, acceptor) = (api.clone(), acceptor.clone());
        tokio::spawn(async move { connection(api, acceptor, tcp, peer).await });
    }
}

async fn connection(api: Arc<Api>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    let svc = hyper::service::service_fn(move |req| {
        let (api, cert) = (api.clone(), cert.clone());
        async move { Ok::<_, std::convert::Infallible>(api.handle(req, cert).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
