//! Test harness: the real berth-control binary on a free loopback port with a temp data dir,
//! driven by the real kubectl; a "node" played by the test with node credentials.
#![allow(dead_code)]

pub mod etcd;
pub mod fake_kubelet;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub kubeconfig: PathBuf,
    pub extra: Vec<String>,
    /// The etcd this cluster stores in (outlives berth-control restarts), if any.
    pub etcd: Option<etcd::EtcdServer>,
}

/// Where berth-control keeps its state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Embedded,
    Etcd,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth-control")
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::on_with(Backend::Embedded, &[])
    }

    pub fn on(b: Backend) -> Cluster {
        Cluster::on_with(b, &[])
    }

    /// Starts on a backend with extra server flags.
    pub fn on_with(b: Backend, extra: &[&str]) -> Cluster {
        assert!(
            Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success()),
            "kubectl must be installed for these tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let etcd = (b == Backend::Etcd).then(etcd::EtcdServer::start);
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(e) = &etcd {
            extra.extend(["--etcd-servers".to_string(), e.url.clone()]);
        }
        let mut c = Cluster { dir, port: free_port(), child: None, kubeconfig, extra, etcd };
        c.spawn();
        c
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server on the same port and data dir.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(bin())
            .args(["--data-dir", self.dir.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--node-monitor-grace-period", "3", "--bookmark-interval", "1", "--log-level", "info"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start berth-control");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.kubeconfig.exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "berth-control did not become ready; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(&self.kubeconfig, args, None)
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(o.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(!o.status.success(), "kubectl {args:?} unexpectedly succeeded: {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8(o.stderr).unwrap()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let o = kubectl_with(&self.kubeconfig, &["apply", "-f", "-"], Some(yaml));
        assert!(o.status.success(), "apply failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// A kubeconfig with a node's client certificate.
    pub fn node(&self, name: &str) -> Node {
        let out = Command::new(bin())
            .args([
                "--data-dir",
                self.dir.path().to_str().unwrap(),
                "kubeconfig",
                "--user",
                &format!("system:node:{name}"),
                "--group",
                "system:nodes",
                "--server",
                &self.url(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, out.stdout).unwrap();
        Node { name: name.to_string(), kubeconfig: path }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Waits until `f` returns Some, or panics after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A node played by the test, with its own credentials.
pub struct Node {
    pub name: String,
    pub kubeconfig: PathBuf,
}

impl Node {
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(&self.kubeconfig, args, None)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "node {} kubectl {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn stdin(&self, args: &[&str], input: &str) -> String {
        let o = kubectl_with(&self.kubeconfig, args, Some(input));
        assert!(
            o.status.success(),
            "node {} kubectl {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Registers the Node (Ready, 4 CPUs, 8Gi) and its Lease.
    pub fn register(&self) {
        let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                       "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "nodeInfo": {"kubeletVersion": "v1.32.0-berth"}}});
        self.stdin(&["create", "-f", "-"], &node.to_string());
        let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": now()}});
        self.stdin(&["create", "-f", "-"], &lease.to_string());
    }

    pub fn renew(&self) {
        let p = serde_json::json!({"spec": {"renewTime": now()}}).to_string();
        self.ok(&["-n", "kube-node-lease", "patch", "lease", &self.name, "--type=merge", "-p", &p]);
    }

    /// This node's pods (through the field selector a kubelet uses).
    pub fn pods(&self) -> Vec<serde_json::Value> {
        let sel = format!("spec.nodeName={}", self.name);
        let out = self.ok(&["get", "pods", "-A", "--field-selector", &sel, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// One kubelet-ish pass: renew the lease; running pods become Running+Ready (or Succeeded
    /// when `finish` says so); terminating pods are deleted with grace 0.
    pub fn sync(&self, finish: impl Fn(&serde_json::Value) -> bool) {
        self.renew();
        for p in self.pods() {
            let (ns, name) = (p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap());
            if !p["metadata"]["deletionTimestamp"].is_null() {
                let _ = self.kubectl(&["-n", ns, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false"]);
                continue;
            }
            let phase = p["status"]["phase"].as_str().unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let cs: Vec<serde_json::Value> = p["spec"]["containers"].as_array().unwrap().iter().map(|c| serde_json::json!({
                "name": c["name"], "image": c["image"], "imageID": "", "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": now()}}})).collect();
            let status = if finish(&p) {
                serde_json::json!({"status": {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]}})
            } else if phase == "Running" {
                continue;
            } else {
                serde_json::json!({"status": {"phase": "Running", "podIP": "10.244.0.10", "startTime": now(), "containerStatuses": cs,
                    "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}, {"type": "Initialized", "status": "True"}]}})
            };
            self.ok(&[
                "-n",
                ns,
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ]);
        }
    }
}

/// Runs `node.sync` every 500 ms on a thread until the returned guard is dropped.
pub struct Kubelet {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(node: Node, finish: fn(&serde_json::Value) -> bool) -> Kubelet {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                node.sync(finish);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Kubelet { stop, handle: Some(handle) }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
