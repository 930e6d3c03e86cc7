//! A cluster of three "hosts" for end-to-end tests: network namespaces on a shared underlay
//! bridge, each with berth-shim and berth-agent (VXLAN or host-gw networking), the first also with
//! berth-control; a registry on each host's loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::spawn_logged;
use crate::netns::NetNs;
use crate::registry::Registry;
use crate::shim::{ShimOptions, ShimProcess};

pub const HOSTS: usize = 3;

pub fn ip(n: usize) -> String {
    format!("192.168.{}.{}", 77, n + 1)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct Host {
    pub ns: NetNs,
    pub shim: Option<ShimProcess>,
    pub agent: Option<Child>,
    pub agent_args: Vec<String>,
    pub dir: PathBuf,
}

pub struct Multi {
    pub hosts: Vec<Host>,
    _underlay: NetNs,
    _registries: Vec<Registry>,
    pub control: Option<Child>,
    pub control_args: Vec<String>,
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Multi {
    /// Brings up the three hosts with `mode` networking (`vxlan` or `host-gw`); `tag` keeps
    /// names apart from other tests'.
    pub fn start(mode: &str, tag: &str) -> Multi {
        let tmp = crate::cri::short_tempdir();
        let dir = tmp.path().to_path_buf();
        let underlay = NetNs::new(&format!("mu{tag}")).unwrap();
        sh(underlay.command("ip").args(["link", "add", "br0", "type", "bridge"]));
        sh(underlay.command("ip").args(["link", "set", "br0", "up"]));
        // The CNI plugins this repository builds, where shims and agents look for them.
        let cni_bin = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin).unwrap();
        for p in ["berth-bridge", "berth-host-local", "berth-portmap", "berth-vxlan", "berth-host-gw"] {
            std::os::unix::fs::symlink(crate::bin_path(p).expect("CNI plugin built"), cni_bin.join(p)).unwrap();
        }
        let mut hosts = Vec::new();
        for n in 0..HOSTS {
            let ns = NetNs::new(&format!("m{tag}{n}")).unwrap();
            let (a, b) = (format!("u{tag}{n}"), format!("h{tag}{n}"));
            sh(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
            sh(Command::new("ip").args(["link", "set", &a, "netns", &underlay.name]));
            sh(Command::new("ip").args(["link", "set", &b, "netns", &ns.name]));
            sh(underlay.command("ip").args(["link", "set", &a, "master", "br0", "up"]));
            sh(ns.command("ip").args(["link", "set", &b, "name", "eth0"]));
            sh(ns.command("ip").args(["addr", "add", &format!("{}/24", ip(n)), "dev", "eth0"]));
            sh(ns.command("ip").args(["link", "set", "eth0", "up"]));
            hosts.push(Host { ns, shim: None, agent: None, agent_args: Vec::new(), dir: dir.join(format!("h{n}")) });
        }
        // A registry on each host's loopback (a node pulls from its own mirror).
        let registries: Vec<Registry> = hosts
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let r = Registry::start(&h.ns, &dir.join(format!("reg{n}")), 5000).unwrap();
                r.push_busybox(&h.ns, "library/busybox:1.36", &["sh"]).unwrap();
                r
            })
            .collect();
        let reg_addr = "127.0.0.1:5000".to_string();

        let control_dir = dir.join("control");
        let control_args: Vec<String> = [
            "--data-dir",
            &control_dir.display().to_string(),
            "--listen",
            &format!("{}:6443", ip(0)),
            "--tls-san",
            &ip(0),
            "--node-monitor-grace-period",
            "15",
            "--cluster-cidr",
            "10.244.0.0/16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut control = hosts[0].ns.command(crate::bin_path("berth-control").unwrap());
        control.args(&control_args);
        let control = Some(spawn_logged(control, &dir.join("control.log")).expect("start berth-control"));
        let kubeconfig = control_dir.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "berth-control did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        for (n, h) in hosts.iter_mut().enumerate() {
            let shim_dir = h.dir.join("s");
            ShimProcess::configure(
                &shim_dir,
                &ShimOptions {
                    name: &format!("m{tag}{n}"),
                    registry: &reg_addr,
                    subnet: "10.0.0.0/8",
                    with_cni: false,
                },
            )
            .unwrap();
            let toml = std::fs::read_to_string(shim_dir.join("shim.toml"))
                .unwrap()
                .replace("bin_dirs = [\"/usr/lib/cni\"]", &format!("bin_dirs = [\"{}\"]", cni_bin.display()));
            std::fs::write(shim_dir.join("shim.toml"), toml).unwrap();
            h.shim = Some(ShimProcess::start(&h.ns, &shim_dir).unwrap());
            let node = format!("node-{tag}{n}");
            let out = Command::new(crate::bin_path("berth-control").unwrap())
                .arg("--data-dir")
                .arg(&control_dir)
                .args([
                    "kubeconfig",
                    "--user",
                    &format!("system:node:{node}"),
                    "--group",
                    "system:nodes",
                    "--server",
                    &format!("https://{}:6443", ip(0)),
                ])
                .output()
                .unwrap();
            std::fs::write(h.dir.join("node.kubeconfig"), &out.stdout).unwrap();
            let config = format!(
                "nodeName: {node}\nkubeconfig: {d}/node.kubeconfig\ncontainerRuntimeEndpoint: unix://{d}/s/cri.sock\nrootDir: {d}/agent\npodLogsDir: {d}/logs\ncgroupRoot: /berth-mn-{tag}{n}-{pid}\nsyncFrequency: 2s\nnodeStatusUpdateFrequency: 3s\nnodeLeaseDurationSeconds: 8\nnodeIP: {ip}\nnetwork:\n  mode: {mode}\n  clusterCIDR: 10.244.0.0/16\n  cniConfDir: {d}/s/net.d\n  cniBinDir: {bin}\n  peersFile: {d}/peers.json\n  stateDir: {d}/cni-state\n  underlayDevice: eth0\n  bridge: mb{tag}{n}\n",
                d = h.dir.display(),
                pid = std::process::id(),
                ip = ip(n),
                bin = cni_bin.display(),
            );
            std::fs::write(h.dir.join("agent.yaml"), config).unwrap();
            h.agent_args = vec!["--config".into(), h.dir.join("agent.yaml").display().to_string()];
        }
        let mut m = Multi {
            hosts,
            _underlay: underlay,
            _registries: registries,
            control,
            control_args,
            kubeconfig,
            dir,
            _tmp: tmp,
        };
        for n in 0..HOSTS {
            m.start_agent(n);
        }
        m
    }

    pub fn start_agent(&mut self, n: usize) {
        let h = &mut self.hosts[n];
        let mut cmd = h.ns.command(crate::bin_path("berth-agent").unwrap());
        cmd.args(&h.agent_args);
        h.agent = Some(spawn_logged(cmd, &h.dir.join("agent.log")).expect("start berth-agent"));
    }

    /// SIGKILL berth-control (its store must survive), then start it again on the same data.
    pub fn kill9_and_restart_control(&mut self) {
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut control = self.hosts[0].ns.command(crate::bin_path("berth-control").unwrap());
        control.args(&self.control_args);
        self.control = Some(spawn_logged(control, &self.dir.join("control.log")).expect("restart berth-control"));
    }

    /// SIGKILL the agent of host `n` (stop_agent) — start_agent brings it back.
    pub fn stop_agent(&mut self, n: usize) {
        if let Some(mut a) = self.hosts[n].agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out =
            self.hosts[0].ns.command("kubectl").arg("--kubeconfig").arg(&self.kubeconfig).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn apply(&self, yaml: &str) {
        let mut child = self.hosts[0]
            .ns
            .command("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&Multi) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let logs: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                let t = std::fs::read_to_string(h.dir.join("agent.log")).unwrap_or_default();
                let l: Vec<&str> = t.lines().collect();
                l[l.len().saturating_sub(15)..].join("\n")
            })
            .collect();
        panic!(
            "timed out waiting for {what}\npods:\n{}\nnodes:\n{}\n{}",
            self.kubectl(&["get", "pods", "-o", "wide"]),
            self.kubectl(&["get", "nodes", "-o", "wide"]),
            logs.join("\n---\n")
        );
    }

    pub fn ready_nodes(&self) -> usize {
        self.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}"])
            .split_whitespace()
            .filter(|s| *s == "True")
            .count()
    }

    pub fn pod_field(&self, name: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", name, "-o", &format!("jsonpath={{{path}}}")])
    }

    /// Runs `cmd` in the pod's container through the shim of host `n`.
    pub fn exec(&self, n: usize, pod: &str, cmd: &[&str]) -> (i32, String) {
        let id = self.pod_field(pod, ".status.containerStatuses[0].containerID");
        let id = id.split("://").nth(1).unwrap_or_default().to_string();
        let socket = self.hosts[n].shim.as_ref().unwrap().socket.clone();
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let (mut rt, _) = crate::cri::connect(&socket).await.unwrap();
            let r = rt
                .exec_sync(berth_proto::runtime::v1::ExecSyncRequest { container_id: id, cmd, timeout: 10 })
                .await
                .unwrap()
                .into_inner();
            (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr))
        })
    }
}

impl Drop for Multi {
    fn drop(&mut self) {
        let _ = self.kubectl(&["delete", "deployment", "--all", "--wait=false"]);
        let _ = self.kubectl(&["delete", "pods", "--all", "--grace-period=0", "--force"]);
        std::thread::sleep(Duration::from_secs(2));
        for n in 0..HOSTS {
            self.stop_agent(n);
            if let Some(s) = self.hosts[n].shim.take() {
                drop(s);
            }
        }
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(self.dir.join("unused"));
        for h in &self.hosts {
            let config = std::fs::read_to_string(h.dir.join("agent.yaml")).unwrap_or_default();
            if let Some(root) = config.lines().find_map(|l| l.strip_prefix("cgroupRoot: ")) {
                berth_agent::agent::remove_cgroup_everywhere(root);
            }
        }
    }
}
