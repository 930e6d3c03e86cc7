//! The client berth-control uses to reach a node's agent (the kubelet API on port 10250): TLS
//! with the cluster-issued `berth-control:kubelet-client` certificate, HTTP/1.1 so that
//! exec/attach/port-forward can upgrade.
//!
//! The agent's serving certificate is NOT verified, which is what kube-apiserver does when no
//! `--kubelet-certificate-authority` is given: agents generate self-signed serving
//! certificates, and the node's address comes from the Node object the node itself wrote. The
//! channel is encrypted and the agent authenticates us; we do not authenticate the agent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::pki::ClientCert;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("reading the kubelet client {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("kubelet client TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("dialing {addr}")]
    Dial {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dialing {addr}: timed out")]
    DialTimeout { addr: String },
    #[error("HTTP to {addr}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
}

/// A request body sent to an agent.
pub type OutBody = BoxBody<Bytes, std::convert::Infallible>;

/// Connects to agents; cheap to clone.
#[derive(Clone)]
pub struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
}

impl KubeletClient {
    pub fn new(cert: &ClientCert) -> Result<KubeletClient, KubeletError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|source| KubeletError::Pem { what: "certificate", source })?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
            .map_err(|source| KubeletError::Pem { what: "key", source })?;
        let verifier = Arc::new(UnverifiedServer { algs: provider.signature_verification_algorithms });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(KubeletError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(KubeletError::Tls)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient { tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)) })
    }

    /// Sends one request to the agent at `host:port` on a new connection (with upgrades
    /// enabled, so a 101 answer can be taken over with `hyper::upgrade::on`).
    pub async fn send(&self, host: &str, port: u16, req: Request<OutBody>) -> Result<Response<Incoming>, KubeletError> {
        let addr = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let dial = async {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            self.tls.connect(name, tcp).await
        };
        let tls = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => return Err(KubeletError::Dial { addr, source }),
            Err(_) => return Err(KubeletError::DialTimeout { addr }),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| KubeletError::Http { addr: addr.clone(), source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(|source| KubeletError::Http { addr, source })
    }
}

/// Accepts any serving certificate but still checks the handshake signatures, so the peer
/// holds the key of the certificate it presented.
#[derive(Debug)]
struct UnverifiedServer {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
