//! A fake node agent for the proxy tests: the kubelet API over HTTPS with a self-signed serving
//! certificate, requiring a client certificate signed by the cluster CA. It records who called
//! what, serves container logs (following on request), a minimal `v5.channel.k8s.io` WebSocket
//! exec that echoes stdin to stdout, and, for any other upgrade, greets and then echoes
//! upper-cased bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const LOGS: &str = "hello from the fake kubelet\nline 2\n";
pub const GREETING: &[u8] = b"kubelet-says-hi\n";

/// One request the fake served.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub client_cn: String,
    pub client_orgs: Vec<String>,
    pub headers: Vec<(String, String)>,
}

pub struct FakeKubelet {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
    _rt: tokio::runtime::Runtime,
}

type Body = BoxBody<Bytes, std::convert::Infallible>;

impl FakeKubelet {
    /// Starts on a free loopback port, trusting client certificates signed by `ca_pem_path`.
    pub fn start(ca_pem_path: &Path) -> FakeKubelet {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca_pem_path).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let (acceptor, s, r) = (acceptor.clone(), s.clone(), r.clone());
                tokio::spawn(async move { connection(acceptor, tcp, peer, s, r).await });
            }
        });
        FakeKubelet { port, seen, release, _rt: rt }
    }

    /// Lets a following log stream send its second line and end.
    pub fn release_follow(&self) {
        self.release.notify_one();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    _peer: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else { return };
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let (cn, orgs) = berth_control::auth::cert_subject(&der).unwrap_or_default();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (seen, release, cn, orgs) = (seen.clone(), release.clone(), cn.clone(), orgs.clone());
        async move {
            seen.lock().unwrap().push(Seen {
                method: req.method().to_string(),
                path_and_query: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                client_cn: cn.clone(),
                client_orgs: orgs.clone(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                    .collect(),
            });
            Ok::<_, std::convert::Infallible>(serve(req, &cn, release).await)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).with_upgrades().await;
}

fn full(code: u16, s: &str) -> Response<Body> {
    Response::builder().status(code).body(Full::new(Bytes::from(s.to_string())).boxed()).unwrap()
}

async fn serve(mut req: Request<Incoming>, cn: &str, release: Arc<tokio::sync::Notify>) -> Response<Body> {
    if cn != "berth-control:kubelet-client" {
        return full(403, "unexpected client");
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let upgrade = h("upgrade");
    if path == "/healthz" {
        return full(200, "ok");
    }
    if path.starts_with("/containerLogs/") {
        if !query.contains("follow=true") {
            return full(200, LOGS);
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first line\n")).await;
            release.notified().await;
            let _ = tx.send(Bytes::from_static(b"second line\n")).await;
        });
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(hyper::body::Frame::data(b)), rx))
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap();
    }
    if upgrade.is_empty() {
        return full(404, "not found");
    }
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, &upgrade);
    let websocket = upgrade.eq_ignore_ascii_case("websocket");
    let offered: Vec<String> = h(if websocket { "sec-websocket-protocol" } else { "x-stream-protocol-version" })
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let chosen =
        offered.iter().find(|p| p.as_str() == "v5.channel.k8s.io").or(offered.first()).cloned().unwrap_or_default();
    if websocket {
        let key = h("sec-websocket-key");
        let accept = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
        ));
        resp = resp.header("sec-websocket-accept", accept).header("sec-websocket-protocol", &chosen);
    } else {
        resp = resp.header("x-stream-protocol-version", &chosen);
    }
    let exec_v5 = websocket && path.starts_with("/exec/") && chosen == "v5.channel.k8s.io";
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = on.await else { return };
        let io = TokioIo::new(io);
        if exec_v5 {
            let _ = ws_exec_echo(io).await;
        } else {
            let _ = raw_echo(io).await;
        }
    });
    resp.body(Full::new(Bytes::new()).boxed()).unwrap()
}

/// Greets, then echoes upper-cased bytes until EOF.
async fn raw_echo(mut io: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    io.write_all(GREETING).await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        io.write_all(&buf[..n].to_ascii_uppercase()).await?;
    }
}

/// v5.channel.k8s.io: stdin (channel 0) comes back on stdout (1); when the client closes stdin
/// (channel 255 CLOSE of stream 0) the exec ends with a Success status on channel 3.
async fn ws_exec_echo(mut io: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    loop {
        let (opcode, payload) = read_frame(&mut io).await?;
        match (opcode, payload.first()) {
            (2, Some(0)) => write_frame(&mut io, 2, &[&[1u8][..], &payload[1..]].concat()).await?,
            (2, Some(255)) if payload.get(1) == Some(&0) => {
                write_frame(&mut io, 2, b"\x03{\"metadata\":{},\"status\":\"Success\"}").await?;
                write_frame(&mut io, 8, &[0x03, 0xe8]).await?;
                return Ok(());
            }
            (8, _) => return Ok(()),
            (9, _) => write_frame(&mut io, 10, &payload).await?,
            _ => {}
        }
    }
}

async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    io.read_exact(&mut h).await?;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => io.read_u16().await? as usize,
        127 => io.read_u64().await? as usize,
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut p = vec![0u8; len];
    io.read_exact(&mut p).await?;
    if masked {
        p.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    Ok((h[0] & 0x0f, p))
}

async fn write_frame(io: &mut (impl AsyncWrite + Unpin), opcode: u8, p: &[u8]) -> std::io::Result<()> {
    let mut f = vec![0x80 | opcode];
    match p.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(p);
    io.write_all(&f).await?;
    io.flush().await
}
