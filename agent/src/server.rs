//! The kubelet API on :10250 (HTTPS): `/healthz`, `/pods`, `/containerLogs` (follow, tail,
//! since, previous, timestamps, limitBytes), `/exec`, `/attach` and `/portForward` (the
//! upgraded connection spliced to the CRI runtime's streaming server, so SPDY and WebSocket
//! clients both work), `/metrics`, `/stats/summary` and `/metrics/resource` (`crate::stats`).
//! Clients authenticate with a certificate signed by the cluster CA — node identities
//! (`system:nodes`) are refused, so one node cannot reach into another's pods — or with a
//! bearer token the control plane vouches for (`crate::authn`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tokio_rustls::TlsAcceptor;

use crate::cri::Runtime;
use crate::spec;

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(text.into()).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// What the server needs from the agent.
pub trait Node: Send + Sync + 'static {
    type Rt: Runtime;
    fn runtime(&self) -> &Self::Rt;
    /// The pods this node runs now.
    fn pods(&self) -> Vec<Pod>;
    fn log_root(&self) -> &Path;
    fn node_name(&self) -> &str;
    /// The agent's state directory (pod volumes live under it; its filesystem is nodefs).
    fn root_dir(&self) -> &Path;
}

/// The server's own state: who may call, and the previous CPU readings for rates.
pub struct ApiState {
    pub auth: crate::authn::KubeletAuth,
    pub rates: crate::stats::Rates,
}

/// Who may call: CA-signed client certificates that are not another node's.
pub fn authorize(peer: Option<&[u8]>) -> Result<String, (StatusCode, String)> {
    let der = peer
        .ok_or((StatusCode::UNAUTHORIZED, "a client certificate signed by the cluster CA is required".to_string()))?;
    let (cn, groups) =
        crate::x509::subject(der).ok_or((StatusCode::UNAUTHORIZED, "unreadable client certificate".to_string()))?;
    if groups.iter().any(|g| g == "system:nodes") || cn.starts_with("system:node:") {
        return Err((
            StatusCode::FORBIDDEN,
            format!("{cn} is a node identity: nodes may not use another node's kubelet API"),
        ));
    }
    Ok(cn)
}

/// TLS for the server: a self-signed serving certificate for the node's names (clients do not
/// verify it, as kube-apiserver does not by default), client certificates checked against `ca`.
pub fn tls_config(ca_der: &[Vec<u8>], names: &[String]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_der {
        roots.add(CertificateDer::from(c.clone()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(names.to_vec())?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key_der)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves until the listener fails.
pub async fn serve<N: Node>(
    node: Arc<N>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<ApiState>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let (acceptor, node, state) = (acceptor.clone(), node.clone(), state.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let cert: Option<Vec<u8>> =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
            let service = hyper::service::service_fn(move |req| {
                let (node, cert, state) = (node.clone(), cert.clone(), state.clone());
                async move { Ok::<_, Infallible>(handle(node, &state, req, cert.as_deref(), peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn flag(q: &[(String, String)], key: &str) -> bool {
    q.iter().any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "True"))
}

fn value<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn handle<N: Node>(
    node: Arc<N>,
    state: &ApiState,
    req: Request<Incoming>,
    cert: Option<&[u8]>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return full(StatusCode::OK, "ok");
    }
    let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let user = match state.auth.check(cert, authorization, req.method(), &path).await {
        Ok(u) => u,
        Err((status, message)) => {
            tracing::info!(%peer, path, "kubelet API refused: {message}");
            return full(status, message);
        }
    };
    tracing::debug!(user, path, "kubelet API");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q = query(&req);
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["pods"]) => {
            let list =
                serde_json::json!({ "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": node.pods() });
            full(StatusCode::OK, serde_json::to_vec(&list).unwrap_or_default())
        }
        (&Method::GET, ["metrics"]) => full(StatusCode::OK, metrics(node.as_ref())),
        (&Method::GET, ["stats", "summary"]) => {
            let snap = snapshot(node.as_ref()).await;
            let body = serde_json::to_vec(&crate::stats::summary(&snap, &state.rates)).unwrap_or_default();
            let mut r = full(StatusCode::OK, body);
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        (&Method::GET, ["metrics", "resource"]) => {
            let mut r =
                full(StatusCode::OK, crate::stats::prometheus::resource_metrics(&snapshot(node.as_ref()).await));
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            container_logs(node.as_ref(), ns, pod, container, &q).await
        }
        (_, ["exec" | "attach", ns, pod, container, ..]) => {
            let exec = parts[0] == "exec";
            stream(node.as_ref(), req, ns, pod, Some(container), if exec { Stream::Exec } else { Stream::Attach }, q)
                .await
        }
        (_, ["portForward", ns, pod, ..]) => stream(node.as_ref(), req, ns, pod, None, Stream::PortForward, q).await,
        _ => full(StatusCode::NOT_FOUND, format!("no such kubelet endpoint: {path}")),
    }
}

async fn snapshot<N: Node>(node: &N) -> crate::stats::Snapshot {
    let paths =
        crate::stats::Paths { proc_root: Path::new("/proc"), root_dir: node.root_dir(), log_root: node.log_root() };
    crate::stats::collect(node.runtime(), node.node_name(), &node.pods(), &paths).await
}

fn find_pod<N: Node>(node: &N, ns: &str, name: &str) -> Option<Pod> {
    node.pods().into_iter().find(|p| spec::ids(p).0 == ns && spec::ids(p).1 == name)
}

fn metrics<N: Node>(node: &N) -> String {
    let pods = node.pods();
    let containers: usize = pods.iter().map(|p| p.spec.as_ref().map_or(0, |s| s.containers.len())).sum();
    format!(
        "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {}\n# HELP kubelet_running_containers Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {containers}\n",
        pods.len()
    )
}

/// Restart-count-numbered log files of a container, newest last.
fn log_files(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
                .map(|n| (n, e.path()))
        })
        .collect();
    files.sort();
    files
}

/// One CRI log line → (timestamp, text to emit) honouring partial lines.
fn parse_line(line: &str, timestamps: bool) -> Option<(DateTime<Utc>, String)> {
    let mut f = line.splitn(4, ' ');
    let ts_text = f.next()?;
    let ts = DateTime::parse_from_rfc3339(ts_text).ok()?.with_timezone(&Utc);
    let _stream = f.next()?;
    let tag = f.next()?;
    let msg = f.next().unwrap_or("");
    let mut out = String::new();
    if timestamps {
        out.push_str(ts_text);
        out.push(' ');
    }
    out.push_str(msg);
    if tag == "F" {
        out.push('\n');
    }
    Some((ts, out))
}

async fn container_logs<N: Node>(
    node: &N,
    ns: &str,
    name: &str,
    container: &str,
    q: &[(String, String)],
) -> Response<Body> {
    let Some(pod) = find_pod(node, ns, name) else {
        return full(StatusCode::NOT_FOUND, format!("pod {ns}/{name} is not on this node"));
    };
    let dir = PathBuf::from(spec::pod_log_dir(&node.log_root().to_string_lossy(), &pod)).join(container);
    let files = log_files(&dir);
    let previous = flag(q, "previous");
    let chosen = if previous { files.len().checked_sub(2).map(|i| files[i].clone()) } else { files.last().cloned() };
    let Some((_, file)) = chosen else {
        let what = if previous { "previous terminated container" } else { "container" };
        return full(StatusCode::BAD_REQUEST, format!("{what} {container:?} in pod {name:?} has no logs"));
    };
    let timestamps = flag(q, "timestamps");
    let tail: Option<usize> = value(q, "tailLines").and_then(|v| v.parse().ok());
    let since: Option<DateTime<Utc>> = value(q, "sinceSeconds")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|s| Utc::now() - k8s_openapi::chrono::Duration::seconds(s))
        .or_else(|| {
            value(q, "sinceTime").and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
        });
    let limit: Option<usize> = value(q, "limitBytes").and_then(|v| v.parse().ok());
    let follow = flag(q, "follow") && !previous;
    let text = tokio::fs::read_to_string(&file).await.unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|l| parse_line(l, timestamps))
        .filter(|(ts, _)| since.is_none_or(|s| *ts >= s))
        .map(|(_, l)| l)
        .collect();
    if let Some(t) = tail {
        let skip = lines.len().saturating_sub(t);
        lines.drain(..skip);
    }
    let mut first: String = lines.concat();
    if let Some(l) = limit {
        first.truncate(l);
    }
    if !follow {
        return full(StatusCode::OK, first);
    }
    // Follow: what is there, then new lines until the container stops writing to this file.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let uid = spec::ids(&pod).2.to_string();
    let container = container.to_string();
    let offset = text.len() as u64;
    let rt_running = container_running_check(node, &uid, &container).await;
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        let Ok(mut f) = tokio::fs::File::open(&file).await else { return };
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut reader = tokio::io::BufReader::new(f);
        let mut idle = 0u32;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) => {
                    idle += 1;
                    // Stop once the container is gone and the file has been quiet a while.
                    if idle > 10 && !rt_running.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(_) if line.ends_with('\n') => {
                    idle = 0;
                    if let Some((_, out)) = parse_line(line.trim_end_matches('\n'), timestamps) {
                        if tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {
                    // A line still being written: wait for its end.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut rest = String::new();
                    let _ = reader.read_line(&mut rest).await;
                    line.push_str(&rest);
                    if let Some((_, out)) = parse_line(line.trim_end_matches('\n'), timestamps) {
                        let _ = tx.send(Ok(Frame::data(Bytes::from(out)))).await;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A flag that tracks whether the pod's container is still running (checked every second).
async fn container_running_check<N: Node>(node: &N, uid: &str, container: &str) -> Arc<std::sync::atomic::AtomicBool> {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let labels = HashMap::from([
        (spec::LABEL_POD_UID.to_string(), uid.to_string()),
        (spec::LABEL_CONTAINER_NAME.to_string(), container.to_string()),
    ]);
    let running = |list: &[berth_proto::runtime::v1::Container]| {
        list.iter().any(|c| c.state == berth_proto::runtime::v1::ContainerState::ContainerRunning as i32)
    };
    let now = node.runtime().list_containers(labels.clone()).await.map(|l| running(&l)).unwrap_or(false);
    flag.store(now, std::sync::atomic::Ordering::Relaxed);
    flag
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Exec,
    Attach,
    PortForward,
}

/// Exec, attach and port-forward: ask the runtime for its streaming URL and splice the
/// client's upgraded connection to it.
async fn stream<N: Node>(
    node: &N,
    req: Request<Incoming>,
    ns: &str,
    name: &str,
    container: Option<&str>,
    kind: Stream,
    q: Vec<(String, String)>,
) -> Response<Body> {
    let Some(pod) = find_pod(node, ns, name) else {
        return full(StatusCode::NOT_FOUND, format!("pod {ns}/{name} is not on this node"));
    };
    let uid = spec::ids(&pod).2.to_string();
    let rt = node.runtime();
    let url = match kind {
        Stream::PortForward => {
            let labels = HashMap::from([(spec::LABEL_POD_UID.to_string(), uid)]);
            let sandboxes = rt.list_pod_sandboxes(labels).await.unwrap_or_default();
            let Some(sb) =
                sandboxes.iter().find(|s| s.state == berth_proto::runtime::v1::PodSandboxState::SandboxReady as i32)
            else {
                return full(StatusCode::NOT_FOUND, format!("pod {ns}/{name} has no running sandbox"));
            };
            let ports: Vec<i32> = q
                .iter()
                .filter(|(k, _)| k == "port" || k == "ports")
                .flat_map(|(_, v)| v.split(',').filter_map(|p| p.trim().parse().ok()).collect::<Vec<_>>())
                .collect();
            rt.port_forward_url(&sb.id, ports).await
        }
        _ => {
            let container = container.unwrap_or_default();
            let labels = HashMap::from([
                (spec::LABEL_POD_UID.to_string(), uid),
                (spec::LABEL_CONTAINER_NAME.to_string(), container.to_string()),
            ]);
            let list = rt.list_containers(labels).await.unwrap_or_default();
            let Some(c) =
                list.iter().find(|c| c.state == berth_proto::runtime::v1::ContainerState::ContainerRunning as i32)
            else {
                return full(
                    StatusCode::NOT_FOUND,
                    format!("container {container:?} of pod {ns}/{name} is not running"),
                );
            };
            let opts = crate::cri::StreamOptions {
                stdin: flag(&q, "stdin") || flag(&q, "input"),
                stdout: flag(&q, "stdout") || flag(&q, "output"),
                stderr: flag(&q, "stderr") || flag(&q, "error"),
                tty: flag(&q, "tty"),
            };
            if kind == Stream::Exec {
                let cmd: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
                if cmd.is_empty() {
                    return full(StatusCode::BAD_REQUEST, "exec needs at least one command parameter");
                }
                rt.exec_url(&c.id, cmd, opts).await
            } else {
                rt.attach_url(&c.id, opts).await
            }
        }
    };
    match url {
        Ok(url) => splice(req, &url).await,
        Err(e) => full(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Forwards the upgrade request to `url` and, once the runtime answers 101, joins the two
/// upgraded connections.
async fn splice(mut req: Request<Incoming>, url: &str) -> Response<Body> {
    let Some(rest) = url.strip_prefix("http://") else {
        return full(StatusCode::BAD_GATEWAY, format!("unsupported streaming URL {url}"));
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let tcp = match tokio::net::TcpStream::connect(host).await {
        Ok(t) => t,
        Err(e) => {
            return full(StatusCode::BAD_GATEWAY, format!("connecting to the runtime's streaming server {host}: {e}"))
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => return full(StatusCode::BAD_GATEWAY, format!("streaming server handshake: {e}")),
    };
    tokio::spawn(conn.with_upgrades());
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(if path.is_empty() { "/" } else { path })
        .header(HOST, host);
    for (k, v) in req.headers() {
        let n = k.as_str();
        if n == "upgrade"
            || n == "connection"
            || n.starts_with("x-stream-protocol")
            || n.starts_with("sec-websocket")
            || n == "origin"
        {
            b = b.header(k, v);
        }
    }
    let breq = match b.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return full(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut bresp = match sender.send_request(breq).await {
        Ok(r) => r,
        Err(e) => return full(StatusCode::BAD_GATEWAY, format!("streaming server: {e}")),
    };
    if bresp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = bresp.status();
        let body = bresp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return full(status, body);
    }
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in bresp.headers() {
        resp.headers_mut().append(k, v.clone());
    }
    resp.headers_mut().entry(CONNECTION).or_insert(HeaderValue::from_static("Upgrade"));
    if let Some(u) = bresp.headers().get(UPGRADE) {
        resp.headers_mut().insert(UPGRADE, u.clone());
    }
    let client_side = hyper::upgrade::on(&mut req);
    let runtime_side = hyper::upgrade::on(&mut bresp);
    tokio::spawn(async move {
        let (Ok(c), Ok(r)) = tokio::join!(client_side, runtime_side) else { return };
        let (mut c, mut r) = (TokioIo::new(c), TokioIo::new(r));
        let _ = tokio::io::copy_bidirectional(&mut c, &mut r).await;
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_become_text() {
        let l = "2026-11-23T10:00:00.123456789Z stdout F hello world";
        assert_eq!(parse_line(l, false).unwrap().1, "hello world\n");
        assert_eq!(parse_line(l, true).unwrap().1, "2026-11-23T10:00:00.123456789Z hello world\n");
        assert_eq!(
            parse_line("2026-11-23T10:00:00Z stderr P part", false).unwrap().1,
            "part",
            "partials join the next line"
        );
        assert!(parse_line("garbage", false).is_none());
    }

    #[test]
    fn node_identities_are_refused() {
        let ca = rcgen::KeyPair::generate().unwrap();
        let issue = |cn: &str, org: Option<&str>| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            if let Some(o) = org {
                p.distinguished_name.push(rcgen::DnType::OrganizationName, o);
            }
            p.self_signed(&ca).unwrap().der().to_vec()
        };
        assert_eq!(
            authorize(Some(&issue("berth-control:kubelet-client", Some("system:masters")))),
            Ok("berth-control:kubelet-client".into())
        );
        assert_eq!(
            authorize(Some(&issue("system:node:n2", Some("system:nodes")))).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(authorize(None).unwrap_err().0, StatusCode::UNAUTHORIZED);
    }
}
