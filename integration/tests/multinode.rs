//! Three "hosts" (network namespaces on a shared underlay bridge), each with berth-shim and
//! berth-agent, the first also with berth-control and the registry. The agents keep the VXLAN
//! (or host-gw) conflist and peers; pods on different hosts talk over the overlay; a Deployment
//! spreads; a host whose agent stops turns NotReady, its pods move, and it rejoins.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_integration::cluster::spawn_logged;
use berth_integration::netns::NetNs;
use berth_integration::registry::Registry;
use berth_integration::shim::{ShimOptions, ShimProcess};

const HOSTS: usize = 3;

fn ip(n: usize) -> String {
    format!("192.168.{}.{}", 77, n + 1)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

struct Host {
    ns: NetNs,
    shim: Option<ShimProcess>,
    agent: Option<Child>,
    agent_args: Vec<String>,
    dir: PathBuf,
}

struct Multi {
    hosts: Vec<Host>,
    _underlay: NetNs,
    _registries: Vec<Registry>,
    control: Child,
    kubeconfig: PathBuf,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Multi {
    fn start(mode: &str, tag: &str) -> Multi {
        let tmp = berth_integration::cri::short_tempdir();
        let dir = tmp.path().to_path_buf();
        let underlay = NetNs::new(&format!("mu{tag}")).unwrap();
        sh(underlay.command("ip").args(["link", "add", "br0", "type", "bridge"]));
        sh(underlay.command("ip").args(["link", "set", "br0", "up"]));
        // The CNI plugins this repository builds, where shims and agents look for them.
        let cni_bin = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin).unwrap();
        for p in ["berth-bridge", "berth-host-local", "berth-portmap", "berth-vxlan", "berth-host-gw"] {
            std::os::unix::fs::symlink(berth_integration::bin_path(p).expect("CNI plugin built"), cni_bin.join(p)).unwrap();
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
        let mut control = hosts[0].ns.command(berth_integration::bin_path("berth-control").unwrap());
        control.arg("--data-dir").arg(&control_dir).args(["--listen", &format!("{}:6443", ip(0)), "--tls-san", &ip(0), "--node-monitor-grace-period", "15", "--cluster-cidr", "10.244.0.0/16"]);
        let control = spawn_logged(control, &dir.join("control.log")).expect("start berth-control");
        let kubeconfig = control_dir.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "berth-control did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        for (n, h) in hosts.iter_mut().enumerate() {
            let shim_dir = h.dir.join("s");
            ShimProcess::configure(&shim_dir, &ShimOptions { name: &format!("m{tag}{n}"), registry: &reg_addr, subnet: "10.0.0.0/8", with_cni: false }).unwrap();
            let toml = std::fs::read_to_string(shim_dir.join("shim.toml")).unwrap().replace("bin_dirs = [\"/usr/lib/cni\"]", &format!("bin_dirs = [\"{}\"]", cni_bin.display()));
            std::fs::write(shim_dir.join("shim.toml"), toml).unwrap();
            h.shim = Some(ShimProcess::start(&h.ns, &shim_dir).unwrap());
            let node = format!("node-{tag}{n}");
            let out = Command::new(berth_integration::bin_path("berth-control").unwrap())
                .arg("--data-dir")
                .arg(&control_dir)
                .args(["kubeconfig", "--user", &format!("system:node:{node}"), "--group", "system:nodes", "--server", &format!("https://{}:6443", ip(0))])
                .output()
                .unwrap();
            std::fs::write(h.dir.join("node.kubeconfig"), &out.stdout).unwrap();
            let config = format!(
                "nodeName: {node}\nkubeconfig: {d}/node.kubeconfig\ncontainerRuntimeEndpoint: unix://{d}/s/cri.sock\nrootDir: {d}/agent\npodLogsDir: {d}/logs\ncgroupRoot: /berth-mn-{tag}{n}-{pid}\nsyncFrequency: 2s\nnodeStatusUpdateFrequency: 3s\nnodeLeaseDurationSeconds: 8\nnodeIP: {ip}\nnetwork:\n  mode: {mode}\n  clusterCIDR: 10.244.0.0/16\n  cniConfDir: {d}/s/net.d\n  cniBinDir: {bin}\n  peersFile: {d}/peers.json\n  underlayDevice: eth0\n  bridge: mb{tag}{n}\n",
                d = h.dir.display(),
                pid = std::process::id(),
                ip = ip(n),
                bin = cni_bin.display(),
            );
            std::fs::write(h.dir.join("agent.yaml"), config).unwrap();
            h.agent_args = vec!["--config".into(), h.dir.join("agent.yaml").display().to_string()];
        }
        let mut m = Multi { hosts, _underlay: underlay, _registries: registries, control, kubeconfig, dir, _tmp: tmp };
        for n in 0..HOSTS {
            m.start_agent(n);
        }
        m
    }

    fn start_agent(&mut self, n: usize) {
        let h = &mut self.hosts[n];
        let mut cmd = h.ns.command(berth_integration::bin_path("berth-agent").unwrap());
        cmd.args(&h.agent_args);
        h.agent = Some(spawn_logged(cmd, &h.dir.join("agent.log")).expect("start berth-agent"));
    }

    fn stop_agent(&mut self, n: usize) {
        if let Some(mut a) = self.hosts[n].agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.hosts[0].ns.command("kubectl").arg("--kubeconfig").arg(&self.kubeconfig).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn apply(&self, yaml: &str) {
        let mut child = self.hosts[0].ns.command("kubectl").arg("--kubeconfig").arg(&self.kubeconfig).args(["apply", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&Multi) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let logs: Vec<String> = self.hosts.iter().map(|h| {
            let t = std::fs::read_to_string(h.dir.join("agent.log")).unwrap_or_default();
            let l: Vec<&str> = t.lines().collect();
            l[l.len().saturating_sub(15)..].join("\n")
        }).collect();
        panic!("timed out waiting for {what}\npods:\n{}\nnodes:\n{}\n{}", self.kubectl(&["get", "pods", "-o", "wide"]), self.kubectl(&["get", "nodes", "-o", "wide"]), logs.join("\n---\n"));
    }

    fn ready_nodes(&self) -> usize {
        self.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}"]).split_whitespace().filter(|s| *s == "True").count()
    }

    fn pod_field(&self, name: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", name, "-o", &format!("jsonpath={{{path}}}")])
    }

    /// Runs `cmd` in the pod's container through the shim of host `n`.
    fn exec(&self, n: usize, pod: &str, cmd: &[&str]) -> (i32, String) {
        let id = self.pod_field(pod, ".status.containerStatuses[0].containerID");
        let id = id.split("://").nth(1).unwrap_or_default().to_string();
        let socket = self.hosts[n].shim.as_ref().unwrap().socket.clone();
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let (mut rt, _) = berth_integration::cri::connect(&socket).await.unwrap();
            let r = rt.exec_sync(berth_proto::runtime::v1::ExecSyncRequest { container_id: id, cmd, timeout: 10 }).await.unwrap().into_inner();
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
        let _ = self.control.kill();
        let _ = self.control.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("unused"));
    }
}

fn echo_pod(name: &str, node: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [nc, -ll, -p, \"8080\", -e, /bin/cat]\n")
}

fn cross_host_traffic_and_failover(mode: &str, tag: &str) {
    let mut m = Multi::start(mode, tag);
    m.wait("three Ready nodes", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS);
    let nodes: Vec<String> = (0..HOSTS).map(|n| format!("node-{tag}{n}")).collect();
    for (n, node) in nodes.iter().enumerate() {
        m.apply(&echo_pod(&format!("echo{n}"), node));
    }
    m.wait("the echo pods", Duration::from_secs(90), |m| (0..HOSTS).all(|n| m.pod_field(&format!("echo{n}"), ".status.phase") == "Running"));
    let ips: Vec<String> = (0..HOSTS).map(|n| m.pod_field(&format!("echo{n}"), ".status.podIP")).collect();
    let subnets: std::collections::HashSet<String> = ips.iter().map(|ip| ip.rsplit_once('.').unwrap().0.to_string()).collect();
    assert_eq!(subnets.len(), HOSTS, "each node has its own pod subnet: {ips:?}");
    // From the pod on host 0 to the pods on hosts 1 and 2: a TCP round trip through the overlay.
    for (n, target) in ips.iter().enumerate().skip(1) {
        let payload = format!("hello-from-0-to-{n}");
        let mut got = (0, String::new());
        for _ in 0..20 {
            got = m.exec(0, "echo0", &["sh", "-c", &format!("echo {payload} | nc -w 2 {target} 8080")]);
            if got.1.contains(&payload) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(got.1.contains(&payload), "{mode}: TCP to {target} on host {n}: {got:?}");
    }
    // A larger transfer back from host 2 to host 0.
    let (code, out) = m.exec(2, "echo2", &["sh", "-c", &format!("dd if=/dev/zero bs=1k count=512 2>/dev/null | nc -w 3 {} 8080 | wc -c", ips[0])]);
    assert_eq!((code, out.trim()), (0, "524288"), "512 KiB echoed across hosts");

    // A Deployment of 6 spreads over the nodes; stopping one agent moves its pods.
    m.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      tolerations:\n      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      containers: [{name: c, image: busybox:1.36, command: [sleep, \"100000\"]}]\n");
    let running_on = |m: &Multi| -> Vec<String> {
        m.kubectl(&["get", "pods", "-l", "app=web", "--field-selector", "status.phase=Running", "-o", "jsonpath={.items[*].spec.nodeName}"]).split_whitespace().map(str::to_string).collect()
    };
    m.wait("6 replicas running", Duration::from_secs(90), |m| running_on(m).len() == 6);
    let spread: std::collections::HashSet<String> = running_on(&m).into_iter().collect();
    assert!(spread.len() >= 2, "replicas spread over nodes: {spread:?}");
    let victim = 2;
    m.stop_agent(victim);
    m.wait("the stopped node to turn NotReady", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS - 1);
    m.wait("its pods to move", Duration::from_secs(90), |m| {
        let on = running_on(m);
        on.len() == 6 && !on.contains(&nodes[victim])
    });
    m.start_agent(victim);
    m.wait("the node to rejoin", Duration::from_secs(60), |m| m.ready_nodes() == HOSTS);
}

#[test]
#[ignore = "needs root"]
fn three_hosts_over_vxlan() {
    cross_host_traffic_and_failover("vxlan", "v");
}

#[test]
#[ignore = "needs root"]
fn three_hosts_over_host_gw() {
    cross_host_traffic_and_failover("host-gw", "g");
}
