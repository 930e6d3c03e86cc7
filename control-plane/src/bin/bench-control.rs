//! bench-control: starts a real berth-control (embedded store, or etcd it also starts) on a
//! temp dir, registers fake Ready nodes, creates N pods from C concurrent HTTPS clients (one
//! keep-alive connection each) while a watch on all pods is open, then lists them. Reports
//! create throughput and latency, watch-event latency (create sent → ADDED received), how long
//! until the scheduler bound every pod, list times, and berth-control's RSS.
//!
//!     bench-control [--pods 10000] [--clients 32] [--nodes 10] [--backend embedded|etcd|both]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

use berth_control::pki::Pki;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// embedded, etcd or both.
    #[arg(long, default_value = "both")]
    backend: String,
    /// The berth-control binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let (c, p) = (free_port()?, free_port()?);
    let (url, peer) = (format!("http://127.0.0.1:{c}"), format!("http://127.0.0.1:{p}"));
    let child = Command::new("etcd")
        .args(["--name", "b", "--data-dir", &dir.join("etcd").to_string_lossy()])
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url, "--listen-peer-urls", &peer])
        .args([
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("b={peer}"),
            "--log-level",
            "error",
        ])
        .args(["--quota-backend-bytes", "8589934592"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd (apt-get install etcd-server)")?;
    Ok((Proc(child), url))
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Client {
    tls: tokio_rustls::TlsConnector,
    port: u16,
}

impl Client {
    async fn conn(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let tls = self.tls.connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(send)
    }
}

async fn call(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Bytes)> {
    let b = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(b))?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let code = resp.status().as_u16();
    Ok((code, resp.into_body().collect().await?.to_bytes()))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let f = |k: &str| {
        s.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    };
    (f("VmRSS:"), f("VmHWM:"))
}

#[derive(Default)]
struct WatchLog {
    added: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

async fn run(args: &Args, backend: &str, server: &Path) -> anyhow::Result<()> {
    let dir = TempDir(std::env::temp_dir().join(format!("bench-control-{}-{backend}", std::process::id())));
    std::fs::create_dir_all(dir.path())?;
    let _etcd;
    let mut flags: Vec<String> =
        vec!["--node-monitor-grace-period".into(), "3600".into(), "--log-level".into(), "warn".into()];
    if backend == "etcd" {
        let (p, url) = start_etcd(dir.path())?;
        _etcd = Some(p);
        flags.extend(["--etcd-servers".into(), url]);
    }
    let port = free_port()?;
    let child = Command::new(server)
        .args(["--data-dir", &dir.path().to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")])
        .args(&flags)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", server.display()))?;
    let pid = child.id();
    let _server = Proc(child);
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        if Instant::now() > deadline {
            bail!("berth-control did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pki = Pki::load_or_create(&dir.path().join("pki"), &[])?;
    let id = pki.issue_client("bench", &["system:masters"])?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let certs = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    let client = Arc::new(Client { tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)), port });
    let mut c0 = loop {
        if let Ok(mut c) = client.conn().await {
            if call(&mut c, "GET", "/readyz", None).await.is_ok_and(|r| r.0 == 200) {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (rss0, _) = rss_kib(pid);
    for i in 0..args.nodes {
        let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}")},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": chrono::Utc::now().to_rfc3339()}],
                       "allocatable": {"cpu": "1000", "memory": "4000Gi", "pods": "5000"}, "capacity": {"cpu": "1000", "memory": "4000Gi", "pods": "5000"}}});
        let (code, b) = call(&mut c0, "POST", "/api/v1/nodes", Some(&n)).await?;
        if code != 201 {
            bail!("creating a node: {code} {}", String::from_utf8_lossy(&b));
        }
    }
    let (_, b) = call(&mut c0, "GET", "/api/v1/pods?limit=1", None).await?;
    let rv = serde_json::from_slice::<Value>(&b)?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();

    // The watch, on its own connection.
    let log = Arc::new(Mutex::new(WatchLog::default()));
    let mut wc = client.conn().await?;
    let req = http::Request::builder()
        .uri(format!("/api/v1/pods?watch=true&resourceVersion={rv}"))
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let mut body = wc.send_request(req).await?.into_body();
    let wlog = log.clone();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(f)) = body.frame().await {
            let Ok(d) = f.into_data() else { continue };
            let now = Instant::now();
            buf.extend_from_slice(&d);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                let name = ev["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let mut l = wlog.lock().unwrap();
                if ev["type"] == "ADDED" {
                    l.added.entry(name.clone()).or_insert(now);
                }
                if ev["object"]["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                    l.bound.entry(name).or_insert(now);
                }
            }
        }
    });

    let sent: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::new(Mutex::new(HashMap::with_capacity(args.pods)));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, sent, next, total) = (client.clone(), sent.clone(), next.clone(), args.pods);
        tasks.push(tokio::spawn(async move {
            let mut c = client.conn().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let name = format!("bench-{i:05}");
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench", "shard": (i % 16).to_string()}},
                    "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "infinity"], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                let t0 = Instant::now();
                let (code, b) = call(&mut c, "POST", "/api/v1/namespaces/default/pods", Some(&pod)).await?;
                if code != 201 {
                    bail!("create {name}: {code} {}", String::from_utf8_lossy(&b));
                }
                sent.lock().unwrap().insert(name, (t0, Instant::now()));
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let create_secs = started.elapsed().as_secs_f64();
    let (rss_created, _) = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (a, bd) = {
            let l = log.lock().unwrap();
            (l.added.len(), l.bound.len())
        };
        if a >= args.pods && (bd >= args.pods || args.nodes == 0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("watch saw {a} ADDED and {bd} bound of {}", args.pods);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_bound_secs = started.elapsed().as_secs_f64();
    let (mut create_ms, mut watch_ms, mut bind_ms) = (Vec::new(), Vec::new(), Vec::new());
    {
        let (s, l) = (sent.lock().unwrap(), log.lock().unwrap());
        for (name, (t0, t1)) in s.iter() {
            create_ms.push((*t1 - *t0).as_secs_f64() * 1e3);
            if let Some(a) = l.added.get(name) {
                watch_ms.push(a.saturating_duration_since(*t0).as_secs_f64() * 1e3);
            }
            if let Some(b) = l.bound.get(name) {
                bind_ms.push(b.saturating_duration_since(*t0).as_secs_f64() * 1e3);
            }
        }
    }
    let t = Instant::now();
    let (code, full) = call(&mut c0, "GET", "/api/v1/pods", None).await?;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    let n = serde_json::from_slice::<Value>(&full)?["items"].as_array().map_or(0, Vec::len);
    if code != 200 || n < args.pods {
        bail!("list returned {code} with {n} items");
    }
    let t = Instant::now();
    let (mut cont, mut pages) = (String::new(), 0);
    loop {
        let (_, b) = call(&mut c0, "GET", &format!("/api/v1/pods?limit=500&continue={cont}"), None).await?;
        pages += 1;
        let v: Value = serde_json::from_slice(&b)?;
        match v["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = form_urlencoded::byte_serialize(c.as_bytes()).collect(),
            _ => break,
        }
    }
    let paged_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let (_, sel) = call(&mut c0, "GET", "/api/v1/pods?labelSelector=shard%3D3", None).await?;
    let sel_ms = t.elapsed().as_secs_f64() * 1e3;
    let sel_n = serde_json::from_slice::<Value>(&sel)?["items"].as_array().map_or(0, Vec::len);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_end, hwm) = rss_kib(pid);
    println!("## backend: {backend} — {} pods, {} clients, {} nodes", args.pods, args.clients, args.nodes);
    println!(
        "create: {create_secs:.2} s, {:.0} pods/s; request latency p50 {:.1} ms, p99 {:.1} ms",
        args.pods as f64 / create_secs,
        pct(&mut create_ms, 0.5),
        pct(&mut create_ms, 0.99)
    );
    println!(
        "watch: create sent → ADDED received p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut watch_ms, 0.5),
        pct(&mut watch_ms, 0.99)
    );
    println!("scheduler: create sent → bound p50 {:.0} ms, p99 {:.0} ms; all bound {all_bound_secs:.2} s after the first create", pct(&mut bind_ms, 0.5), pct(&mut bind_ms, 0.99));
    println!("list all: {list_ms:.0} ms ({:.1} MiB); paged by 500: {paged_ms:.0} ms ({pages} pages); labelSelector ({sel_n} items): {sel_ms:.0} ms", full.len() as f64 / 1048576.0);
    println!(
        "berth-control RSS: {:.1} MiB idle, {:.1} MiB after creates, {:.1} MiB at end (peak {:.1} MiB)\n",
        rss0 as f64 / 1024.0,
        rss_created as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = match &args.server {
        Some(s) => s.clone(),
        None => std::env::current_exe()?.with_file_name("berth-control"),
    };
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["embedded", "etcd"],
        b => vec![b],
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    for b in backends {
        rt.block_on(run(&args, b, &server))?;
    }
    Ok(())
}
