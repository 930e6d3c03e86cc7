//! A one-node Berth cluster for end-to-end tests, all inside a network namespace made for the
//! test: a registry with busybox, the CRI runtime (berth-shim, or containerd 1.6 from Debian,
//! both with the reference bridge CNI), berth-control, and berth-agent joined with a node
//! certificate; `kubectl` drives it with the admin kubeconfig.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::mountns::Tmpfs;
use crate::netns::NetNs;
use crate::registry::Registry;
use crate::shim::{ShimOptions, ShimProcess};

/// Which CRI runtime the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    BerthShim,
    Containerd,
}

pub struct Cluster {
    pub ns: NetNs,
    pub registry: Registry,
    pub shim: ShimProcess,
    /// The CRI socket the agent uses.
    pub cri_socket: PathBuf,
    containerd: Option<Child>,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub node: String,
    /// The busybox image as pods name it.
    pub image: String,
    control: Option<Child>,
    agent: Option<Child>,
    agent_args: Vec<String>,
    /// The agent's cgroupRoot, removed on drop.
    cgroup_root: String,
    /// The runtimes' run directories, on tmpfs as under a node's /run (after `shim`, so
    /// unmounted once the runtimes have stopped).
    _run_tmpfs: Vec<Tmpfs>,
    _tmp: tempfile::TempDir,
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f).spawn()?)
}

impl Cluster {
    /// `name` keeps concurrent clusters apart (netns, bridge, cgroups); `port` is the registry's.
    pub fn start(name: &str, port: u16, subnet: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with(name, port, subnet, Runtime::BerthShim)
    }

    pub fn start_with(name: &str, port: u16, subnet: &str, runtime: Runtime) -> anyhow::Result<Cluster> {
        Cluster::start_custom(name, port, subnet, runtime, "")
    }

    /// `agent_yaml` is appended to the agent's configuration file.
    pub fn start_custom(
        name: &str,
        port: u16,
        subnet: &str,
        runtime: Runtime,
        agent_yaml: &str,
    ) -> anyhow::Result<Cluster> {
        let tmp = crate::cri::short_tempdir();
        let dir = tmp.path().to_path_buf();
        let ns = NetNs::new(&format!("bc-{name}"))?;
        let registry = Registry::start(&ns, &dir.join("reg"), port)?;
        registry.push_busybox(&ns, "library/busybox:1.36", &["sh"])?;
        let shim_dir = dir.join("s");
        let mut run_tmpfs = vec![Tmpfs::mount(&shim_dir.join("run"))?];
        ShimProcess::configure(&shim_dir, &ShimOptions { name, registry: &registry.addr, subnet, with_cni: true })?;
        // Berth's own CNI plugins, as a Berth node runs them (for containerd too, so both
        // runtimes get the same network).
        let cni_bin = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin)?;
        for p in ["berth-bridge", "berth-host-local", "berth-portmap"] {
            std::os::unix::fs::symlink(crate::bin_path(p)?, cni_bin.join(p))?;
        }
        // containerd also runs the reference loopback plugin for every sandbox.
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", cni_bin.join("loopback"))?;
        // The plugins' records and IP allocations live per boot, under the run dir (the agent's
        // default is /run/berth/cni).
        std::fs::write(
            shim_dir.join("net.d/10-berth-test.conflist"),
            berth_conflist(name, subnet, &shim_dir.join("run/cni")).to_string(),
        )?;
        let toml = std::fs::read_to_string(shim_dir.join("shim.toml"))?
            .replace("bin_dirs = [\"/usr/lib/cni\"]", &format!("bin_dirs = [\"{}\"]", cni_bin.display()));
        std::fs::write(shim_dir.join("shim.toml"), toml)?;
        let shim = ShimProcess::start(&ns, &shim_dir)?;
        let (containerd, cri_socket) = match runtime {
            Runtime::BerthShim => (None, shim.socket.clone()),
            Runtime::Containerd => {
                registry.push_pause(&ns, "library/pause:3.9", &crate::bin_path("berth-pause")?)?;
                run_tmpfs.push(Tmpfs::mount(&dir.join("c/state"))?);
                let conflist = berth_conflist(name, subnet, &dir.join("c/state/cni")).to_string();
                let (child, sock) = crate::containerd::start(
                    &ns,
                    &dir.join("c"),
                    &conflist,
                    &cni_bin,
                    &format!("{}/library/pause:3.9", registry.addr),
                    &registry.addr,
                )?;
                (Some(child), sock)
            }
        };

        let control_dir = dir.join("control");
        let mut control = ns.command(crate::bin_path("berth-control")?);
        control.arg("--data-dir").arg(&control_dir).args([
            "--listen",
            "127.0.0.1:6443",
            "--node-monitor-grace-period",
            "20",
        ]);
        let control = spawn_logged(control, &dir.join("control.log"))?;
        let kubeconfig = control_dir.join("admin.kubeconfig");
        wait_until(Duration::from_secs(20), || kubeconfig.exists())
            .with_context(|| format!("berth-control did not start: {}", tail(&dir.join("control.log"))))?;

        let node = format!("node-{name}");
        let out = Command::new(crate::bin_path("berth-control")?)
            .arg("--data-dir")
            .arg(&control_dir)
            .args([
                "kubeconfig",
                "--user",
                &format!("system:node:{node}"),
                "--group",
                "system:nodes",
                "--server",
                "https://127.0.0.1:6443",
            ])
            .output()?;
        if !out.status.success() {
            bail!("node kubeconfig: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(dir.join("node.kubeconfig"), &out.stdout)?;
        std::fs::create_dir_all(dir.join("manifests"))?;
        let cgroup_root = format!("/berth-it-{name}-{}-pods", std::process::id());
        let agent_config = format!(
            "nodeName: {node}\nkubeconfig: {d}/node.kubeconfig\ncontainerRuntimeEndpoint: unix://{sock}\nrootDir: {d}/agent\npodLogsDir: {d}/logs\nstaticPodPath: {d}/manifests\ncgroupRoot: {cg}\nsyncFrequency: 2s\nnodeStatusUpdateFrequency: 5s\nnodeIP: 127.0.0.1\n",
            d = dir.display(),
            sock = cri_socket.display(),
            cg = cgroup_root,
        );
        std::fs::write(dir.join("agent.yaml"), agent_config + agent_yaml)?;
        let agent_args = vec![
            "--config".to_string(),
            dir.join("agent.yaml").display().to_string(),
            "--log-level".into(),
            "debug".into(),
        ];
        let mut cluster = Cluster {
            ns,
            registry,
            shim,
            cri_socket,
            containerd,
            dir,
            kubeconfig,
            node,
            image: "busybox:1.36".into(),
            control: Some(control),
            agent: None,
            agent_args,
            cgroup_root,
            _run_tmpfs: run_tmpfs,
            _tmp: tmp,
        };
        cluster.start_agent()?;
        cluster.wait_for(Duration::from_secs(30), "the node to be Ready", |c| {
            c.kubectl(&["get", "node", &c.node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"])
                .map(|o| o == "True")
                .unwrap_or(false)
        })?;
        Ok(cluster)
    }

    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.ns.command(crate::bin_path("berth-agent")?);
        cmd.args(&self.agent_args);
        self.agent = Some(spawn_logged(cmd, &self.dir.join("agent.log"))?);
        Ok(())
    }

    /// SIGKILL the agent (its pods must keep running).
    pub fn kill9_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Runs kubectl in the cluster's namespace; stdout on success, an error with stderr otherwise.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_output(args, None)?;
        if !out.status.success() {
            bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut cmd = self.ns.command("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        match stdin {
            None => Ok(cmd.stdin(Stdio::null()).output()?),
            Some(text) => {
                let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
                std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())?;
                drop(child.stdin.take());
                Ok(child.wait_with_output()?)
            }
        }
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let out = self.kubectl_output(&["apply", "-f", "-"], Some(yaml))?;
        if !out.status.success() {
            bail!("kubectl apply: {}\n{yaml}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// The pod as JSON.
    pub fn pod(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.kubectl(&["get", "pod", name, "-o", "json"])?)?)
    }

    /// Polls `ok` every 200 ms until it holds or `timeout` passes (then the agent's log tail is
    /// in the error).
    pub fn wait_for(&self, timeout: Duration, what: &str, mut ok: impl FnMut(&Cluster) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "timed out waiting for {what}\n--- agent log ---\n{}\n--- shim log ---\n{}",
            tail(&self.dir.join("agent.log")),
            self.shim.log_tail()
        )
    }

    /// The text a container wrote (its CRI log files, all restarts, in order).
    pub fn container_output(&self, pod: &str, container: &str) -> String {
        let Ok(rd) = std::fs::read_dir(self.dir.join("logs")) else { return String::new() };
        let mut out = String::new();
        for d in rd.flatten().filter(|d| d.file_name().to_string_lossy().starts_with(&format!("default_{pod}_"))) {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(d.path().join(container)).into_iter().flatten().flatten().map(|e| e.path()).collect();
            files.sort_by_key(|p| {
                p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0)
            });
            for f in files {
                for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
                    if let Some(msg) = line.splitn(4, ' ').nth(3) {
                        out.push_str(msg);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    pub fn agent_log(&self) -> String {
        tail(&self.dir.join("agent.log"))
    }
}

/// berth-bridge (host-local IPAM and host ports in-process) on bridge `bt-<name>`, its
/// records and allocations under `state`.
fn berth_conflist(name: &str, subnet: &str, state: &Path) -> serde_json::Value {
    serde_json::json!({
        // 1.0.0: containerd 1.6's libcni knows no later version.
        "cniVersion": "1.0.0",
        "name": "berth-test",
        "plugins": [
            { "type": "berth-bridge", "bridge": format!("bt-{name}"), "isGateway": true, "ipMasq": false, "stateDir": state,
              "capabilities": { "portMappings": true },
              "ipam": { "type": "berth-host-local", "ranges": [[{ "subnet": subnet }]], "dataDir": state.join("networks"), "routes": [{ "dst": "0.0.0.0/0" }] } }
        ]
    })
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Pods first (their containers and network), then the daemons.
        let _ = self.kubectl(&["delete", "pods", "--all", "--grace-period=0", "--force", "--wait=false"]);
        for _ in 0..50 {
            if self.kubectl(&["get", "pods", "-o", "name"]).map(|o| o.is_empty()).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        // The agent first (so it recreates nothing), then whatever pods are left — e.g. a
        // static pod of a failed test — straight through CRI, before the runtime stops.
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let socket = self.cri_socket.clone();
        if let Ok(rt) = tokio::runtime::Runtime::new() {
            rt.block_on(async move {
                let Ok((mut client, _)) = crate::cri::connect(&socket).await else { return };
                let Ok(list) =
                    client.list_pod_sandbox(berth_proto::runtime::v1::ListPodSandboxRequest::default()).await
                else {
                    return;
                };
                for sb in list.into_inner().items {
                    let _ = client
                        .stop_pod_sandbox(berth_proto::runtime::v1::StopPodSandboxRequest {
                            pod_sandbox_id: sb.id.clone(),
                        })
                        .await;
                    let _ = client
                        .remove_pod_sandbox(berth_proto::runtime::v1::RemovePodSandboxRequest { pod_sandbox_id: sb.id })
                        .await;
                }
            });
        }
        for child in [self.agent.take(), self.control.take(), self.containerd.take()].into_iter().flatten() {
            let mut child = child;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        berth_agent::agent::remove_cgroup_everywhere(&self.cgroup_root);
    }
}
