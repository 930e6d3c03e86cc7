//! Liveness, readiness and startup probes: exec (through CRI ExecSync, which berth-shim runs by
//! forking straight into the container), httpGet, tcpSocket and grpc (grpc.health.v1), with
//! every timing field (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold,
//! failureThreshold). One task per probe per container instance; results go to the pod's
//! [`ProbeState`], and a liveness (or startup) failure asks the pod worker to restart the
//! container.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cri::Runtime;
use crate::pod::ProbeState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Resolves a probe's port: a number, or the name of one of the container's ports.
pub fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("no port named {name:?}"))
        }
    }
}

async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Outcome {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut buf = vec![0u8; 1024];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.map_err(|e| format!("reading from {addr}: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string();
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad HTTP answer {line:?}"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!("HTTP GET {path} on {addr}: timed out after {timeout:?}")),
    }
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: timed out")),
    }
}

/// grpc.health.v1.Health/Check with a hand-written message pair (two fields).
mod health {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        pub service: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HealthCheckResponse {
        /// 1 = SERVING.
        #[prost(int32, tag = "1")]
        pub status: i32,
    }
}

async fn grpc(addr: SocketAddr, service: &str, timeout: Duration) -> Outcome {
    let work = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.map_err(|e| e.to_string())?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let codec = tonic_prost::ProstCodec::<health::HealthCheckRequest, health::HealthCheckResponse>::default();
        let resp = client
            .unary(tonic::Request::new(health::HealthCheckRequest { service: service.to_string() }), path, codec)
            .await
            .map_err(|s| format!("health check: {}", s.message()))?;
        match resp.into_inner().status {
            1 => Ok(()),
            s => Err(format!("service unhealthy (responded with status {s})")),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!("gRPC health check on {addr}: timed out")),
    }
}

/// Runs `probe` once against container `id` (pod IP `ip`).
pub async fn run_once<R: Runtime>(rt: &R, c: &Container, probe: &Probe, id: &str, ip: &str) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let addr = |host: Option<&str>, p: u16| -> Result<SocketAddr, String> {
        let h = host.filter(|h| !h.is_empty()).unwrap_or(ip);
        format!("{h}:{p}")
            .parse()
            .or_else(|_| format!("[{h}]:{p}").parse())
            .map_err(|_| format!("no usable address for host {h:?}"))
    };
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return match rt.exec_sync(id, cmd, timeout.as_secs() as i64).await {
            Ok(r) if r.exit_code == 0 => Outcome::Success,
            Ok(r) => Outcome::Failure(format!(
                "command exited with {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).trim()
            )),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    if let Some(h) = &probe.http_get {
        let target = port(c, &h.port).and_then(|p| addr(h.host.as_deref(), p));
        let headers: Vec<(String, String)> =
            h.http_headers.iter().flatten().map(|x| (x.name.clone(), x.value.clone())).collect();
        return match target {
            Ok(a) => {
                http_get(a, h.host.as_deref().unwrap_or(ip), h.path.as_deref().unwrap_or("/"), &headers, timeout).await
            }
            Err(e) => Outcome::Failure(e),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        return match port(c, &t.port).and_then(|p| addr(t.host.as_deref(), p)) {
            Ok(a) => tcp(a, timeout).await,
            Err(e) => Outcome::Failure(e),
        };
    }
    if let Some(g) = &probe.grpc {
        return match u16::try_from(g.port)
            .map_err(|_| format!("port {} out of range", g.port))
            .and_then(|p| addr(None, p))
        {
            Ok(a) => grpc(a, g.service.as_deref().unwrap_or(""), timeout).await,
            Err(e) => Outcome::Failure(e),
        };
    }
    Outcome::Failure("the probe has no handler".into())
}

/// Runs a lifecycle hook (postStart / preStop): exec, httpGet or sleep, within `limit`.
pub async fn run_hook<R: Runtime>(
    rt: &R,
    c: &Container,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    id: &str,
    ip: &str,
    limit: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(limit)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        timeout_seconds: Some(limit.as_secs().max(1) as i32),
        ..Default::default()
    };
    match run_once(rt, c, &probe, id, ip).await {
        Outcome::Success => Ok(()),
        Outcome::Failure(e) => Err(e),
    }
}

/// What a probe task reports upward.
pub enum Signal {
    /// A readiness or startup result changed: status needs recomputing.
    Changed,
    /// Liveness or startup failed for good: restart container `id`.
    Restart { container: String, id: String, message: String },
}

/// Probes one container instance until it is gone or `stop` is dropped.
#[allow(clippy::too_many_arguments)]
pub async fn watch_container<R: Runtime>(
    rt: Arc<R>,
    c: Container,
    kind: Kind,
    probe: Probe,
    id: String,
    ip: String,
    state: Arc<Mutex<ProbeState>>,
    signal: tokio::sync::mpsc::UnboundedSender<Signal>,
) {
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64)).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        // A startup probe gates the others.
        let started = state.lock().expect("probe state").started.get(&c.name).copied().unwrap_or(true);
        if kind != Kind::Startup && !started {
            tokio::time::sleep(period).await;
            continue;
        }
        let outcome = run_once(rt.as_ref(), &c, &probe, &id, &ip).await;
        match &outcome {
            Outcome::Success => {
                successes += 1;
                failures = 0;
            }
            Outcome::Failure(_) => {
                failures += 1;
                successes = 0;
            }
        }
        let mut changed = false;
        {
            let mut st = state.lock().expect("probe state");
            match kind {
                Kind::Readiness => {
                    let now = if successes >= success_threshold {
                        Some(true)
                    } else if failures >= failure_threshold {
                        Some(false)
                    } else {
                        None
                    };
                    if let Some(v) = now {
                        changed = st.ready.insert(c.name.clone(), v) != Some(v);
                    }
                }
                Kind::Startup if successes >= 1 => {
                    changed = st.started.insert(c.name.clone(), true) != Some(true);
                }
                _ => {}
            }
        }
        if changed && signal.send(Signal::Changed).is_err() {
            return;
        }
        if let Outcome::Failure(message) = outcome {
            if matches!(kind, Kind::Liveness | Kind::Startup) && failures >= failure_threshold {
                let message = format!("{kind:?} probe failed: {message}");
                let _ = signal.send(Signal::Restart { container: c.name.clone(), id: id.clone(), message });
                return;
            }
        }
        if kind == Kind::Startup && successes >= 1 {
            return;
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            ..Default::default()
        }
    }

    #[test]
    fn named_and_numbered_ports() {
        let c = container();
        assert_eq!(port(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port(&c, &IntOrString::Int(9090)), Ok(9090));
        assert_eq!(port(&c, &IntOrString::String("9000".into())), Ok(9000));
        assert!(port(&c, &IntOrString::String("metrics".into())).unwrap_err().contains("metrics"));
        assert!(port(&c, &IntOrString::Int(70000)).is_err());
    }

    async fn serve_once(answer: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_and_tcp_probes() {
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let bad = serve_once("HTTP/1.1 500 Oops\r\n\r\n").await;
        let http = |port: u16| Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(port as i32),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rt = crate::pod::fake::FakeRuntime::default();
        let c = container();
        assert_eq!(run_once(&rt, &c, &http(ok), "id", "127.0.0.1").await, Outcome::Success);
        assert!(
            matches!(run_once(&rt, &c, &http(bad), "id", "127.0.0.1").await, Outcome::Failure(m) if m.contains("500"))
        );
        let tcp_probe = |port: u16| Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port as i32), host: None }),
            ..Default::default()
        };
        assert_eq!(run_once(&rt, &c, &tcp_probe(ok), "id", "127.0.0.1").await, Outcome::Success);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(matches!(run_once(&rt, &c, &tcp_probe(closed), "id", "127.0.0.1").await, Outcome::Failure(_)));
    }
}
