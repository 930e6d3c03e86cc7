//! `berth up` and `berth join`: write a node's configuration, start the local image registry,
//! berth-control (up only), berth-shim and berth-agent as children (the agent keeps the pod
//! network of the podCIDR the control plane allocated), wait until it is Ready, then stay in
//! the foreground restarting what dies until SIGINT/SIGTERM (`berth down`), which stops
//! everything and removes what the node made, keeping its data.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::daemon::{pid_from_file, Daemon};
use crate::layout::{Binaries, Layout};
use crate::render::{self, Network};
use crate::teardown::{self, Made};

/// Everything `berth up` / `berth join` is told.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub network: Network,
    pub listen: SocketAddr,
    pub node_name: Option<String>,
    pub node_ip: Option<String>,
    pub cluster_cidr: String,
    pub registry: String,
    pub cgroup_root: String,
    pub bin_dir: Option<PathBuf>,
    pub busybox: PathBuf,
    pub bridge: String,
    pub underlay_device: Option<String>,
    /// `berth join`: the node kubeconfig of a remote control plane (no berth-control here).
    pub join_kubeconfig: Option<PathBuf>,
    /// `berth join --token`: berth-agent gets the node certificate by TLS bootstrap.
    pub join_token: Option<crate::join::TokenJoin>,
    pub timeout: Duration,
}

impl UpOptions {
    /// Joining a remote control plane (no berth-control here).
    fn joining(&self) -> bool {
        self.join_kubeconfig.is_some() || self.join_token.is_some()
    }
}

/// The state of a running node.
struct Node {
    layout: Layout,
    made: Made,
    daemons: Vec<Daemon>,
    stop: Arc<AtomicBool>,
}

pub async fn run(o: UpOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let layout = Layout::new(&o.data_dir, &o.run_dir, &o.cgroup_root);
    if let Some(pid) = pid_from_file(&layout.up_pid(), "berth") {
        bail!("a node is already up from {} (pid {pid}); run `berth down` first", layout.data.display());
    }
    let bins = Binaries::locate(o.bin_dir.as_deref())?;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watch(stop.clone());
    let vxlan_device = (o.network == Network::Vxlan).then(|| "berth.1".to_string());
    let made = Made {
        run_dir: layout.run.clone(),
        cgroup_root: o.cgroup_root.clone(),
        bridge: o.bridge.clone(),
        vxlan_device,
    };
    prepare(&o, &layout, &bins, &made)?;
    let mut node = Node { layout, made, daemons: Vec::new(), stop };
    let result = start(&o, &bins, &mut node, started).await;
    if let Err(e) = &result {
        eprintln!("berth: {e:#}\nberth: stopping what was started");
    } else {
        supervise(&mut node).await;
    }
    shut_down(&mut node).await;
    result
}

fn spawn_signal_watch(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("berth: stopping the node (data is kept; `berth down --purge` deletes it)");
        stop.store(true, Ordering::SeqCst);
    });
}

/// Directories, configuration files, this process's pid file.
fn prepare(o: &UpOptions, layout: &Layout, bins: &Binaries, made: &Made) -> anyhow::Result<()> {
    for d in [
        layout.etc(),
        layout.net_d(),
        layout.log_dir(),
        layout.pid_dir(),
        layout.registry_dir(),
        layout.data.join("manifests"),
        layout.cni_state(),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(layout.up_pid(), format!("{}\n", std::process::id()))?;
    std::fs::write(layout.etc().join("up.json"), serde_json::to_vec_pretty(made)?)?;
    std::fs::write(layout.registries_conf(), render::registries_conf(&o.registry))?;
    let shim = render::ShimSettings {
        listen: layout.socket(),
        state_dir: layout.data.join("shim"),
        run_dir: layout.shim_run(),
        image_dir: layout.data.join("images"),
        registries: layout.registries_conf(),
        cgroup_parent: o.cgroup_root.clone(),
        monitor: bins.monitor.clone(),
        pause: bins.pause.clone(),
        cni_conf_dir: layout.net_d(),
        cni_bin_dir: bins.cni_dir.clone(),
        cni_cache_dir: layout.data.join("cni"),
    };
    std::fs::write(layout.shim_toml(), render::shim_toml(&shim))?;
    Ok(())
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

async fn start(o: &UpOptions, bins: &Binaries, node: &mut Node, started: Instant) -> anyhow::Result<()> {
    let layout = node.layout.clone();
    let node_ip = o.node_ip.clone().unwrap_or_else(detect_node_ip);
    let mut registry = Daemon::new(
        &layout,
        "registry",
        &bins.berth,
        args(&[&"registry", &"--dir", &layout.registry_dir(), &"--listen", &o.registry, &"--busybox", &o.busybox]),
    );
    registry.start()?;
    node.daemons.push(registry);
    let (name, bootstrap_kubeconfig) = node_identity(o, bins, node, &node_ip).await?;
    // TLS bootstrap still to do: the agent writes the node kubeconfig before anything can use it.
    let bootstrapping = bootstrap_kubeconfig.is_some() && !layout.node_kubeconfig().exists();
    let agent = render::AgentSettings {
        node_name: name.clone(),
        kubeconfig: layout.node_kubeconfig(),
        bootstrap_kubeconfig,
        socket: layout.socket(),
        root_dir: layout.data.join("agent"),
        pod_logs_dir: layout.data.join("pod-logs"),
        static_pod_path: layout.data.join("manifests"),
        cgroup_root: o.cgroup_root.clone(),
        node_ip: Some(node_ip),
        network: render::AgentNetwork {
            mode: o.network,
            cni_conf_dir: layout.net_d(),
            cni_bin_dir: bins.cni_dir.clone(),
            peers_file: layout.peers_file(),
            state_dir: layout.cni_state(),
            cluster_cidr: o.cluster_cidr.clone(),
            bridge: o.bridge.clone(),
            underlay_device: o.underlay_device.clone(),
        },
    };
    std::fs::write(layout.agent_yaml(), render::agent_yaml(&agent))?;
    let _ = std::fs::remove_file(layout.socket());
    let mut shim = Daemon::new(&layout, "shim", &bins.shim, args(&[&"--config", &layout.shim_toml()]));
    shim.start()?;
    node.daemons.push(shim);
    wait(node, o.timeout, "berth-shim's CRI socket", || async { layout.socket().exists() }).await?;
    let since = crate::api::unix_now();
    if !bootstrapping {
        // The Node first, so the control plane has allocated its podCIDR by the time the
        // agent looks: the agent writes the conflist at once and its first status is Ready.
        crate::api::preregister(&crate::api::client(&layout.node_kubeconfig()).await?, &name).await;
    }
    let mut agent_d = Daemon::new(&layout, "agent", &bins.agent, args(&[&"--config", &layout.agent_yaml()]));
    agent_d.start()?;
    node.daemons.push(agent_d);
    if bootstrapping {
        let what = "berth-agent's TLS bootstrap (its CSR approved and the node kubeconfig written)";
        wait(node, o.timeout, what, || async { layout.node_kubeconfig().exists() }).await?;
    }
    let client = crate::api::client(&layout.node_kubeconfig()).await?;
    let Some(pod_cidr) = crate::api::wait_pod_cidr(&client, &name, Duration::from_secs(30), &node.stop).await? else {
        bail!("the control plane gave node {name} no podCIDR within 30 s (berth-control allocates them from its --cluster-cidr; another control plane must allocate node CIDRs)");
    };
    wait(node, o.timeout, &format!("node {name} to be Ready"), || crate::api::node_ready(&client, &name, since))
        .await?;
    print_ready(o, &layout, &name, &pod_cidr, started.elapsed());
    Ok(())
}

async fn start_control(o: &UpOptions, bins: &Binaries, node: &mut Node, node_ip: &str) -> anyhow::Result<()> {
    let layout = node.layout.clone();
    let admin = layout.admin_kubeconfig();
    // Rewritten by every start: its reappearance says the API is about to listen.
    let _ = std::fs::remove_file(&admin);
    let mut a = args(&[
        &"--data-dir",
        &layout.control_dir(),
        &"--listen",
        &o.listen.to_string(),
        &"--cluster-cidr",
        &o.cluster_cidr,
        &"--tls-san",
        &node_ip,
    ]);
    if o.listen.ip().is_unspecified() {
        a.extend(args(&[&"--tls-san", &"127.0.0.1"]));
    }
    let mut control = Daemon::new(&layout, "control", &bins.control, a);
    control.start()?;
    node.daemons.push(control);
    wait(node, o.timeout, "berth-control's admin kubeconfig", || async { admin.exists() }).await?;
    let client = crate::api::client(&admin).await?;
    wait(node, o.timeout, "berth-control to answer", || async { client.apiserver_version().await.is_ok() }).await
}

/// The node's client certificate from the local control plane (made once, kept in DATA/etc).
fn node_credentials(bins: &Binaries, layout: &Layout, name: &str, server: &str) -> anyhow::Result<()> {
    let path = layout.node_kubeconfig();
    if path.exists() && crate::api::node_name_of(&path).ok().as_deref() == Some(name) {
        return Ok(());
    }
    let out = std::process::Command::new(&bins.control)
        .arg("--data-dir")
        .arg(layout.control_dir())
        .args(["kubeconfig", "--user", &format!("system:node:{name}"), "--group", "system:nodes", "--server", server])
        .output()
        .context("running berth-control kubeconfig")?;
    if !out.status.success() {
        bail!("berth-control kubeconfig: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    crate::image::write_atomic(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))
}

/// The node's name and, for a token join, the bootstrap kubeconfig the agent starts from; the
/// node credentials are in place (up, join --kubeconfig) or left to the agent (join --token).
async fn node_identity(
    o: &UpOptions,
    bins: &Binaries,
    node: &mut Node,
    node_ip: &str,
) -> anyhow::Result<(String, Option<PathBuf>)> {
    let layout = node.layout.clone();
    if let Some(k) = &o.join_kubeconfig {
        return Ok((join_credentials(k, &layout)?, None));
    }
    let name = o.node_name.clone().unwrap_or_else(hostname);
    match &o.join_token {
        Some(t) => {
            // A node kubeconfig of another node (an earlier join under another name) is not ours.
            let path = layout.node_kubeconfig();
            if path.exists() && crate::api::node_name_of(&path).ok().as_deref() != Some(name.as_str()) {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            Ok((name, Some(t.write_bootstrap_kubeconfig(&layout.etc().join("bootstrap.kubeconfig"))?)))
        }
        None => {
            start_control(o, bins, node, node_ip).await?;
            node_credentials(bins, &layout, &name, &server_url(o.listen, node_ip))?;
            Ok((name, None))
        }
    }
}

/// `berth join`: the given node kubeconfig becomes this node's; its user names the node.
fn join_credentials(kubeconfig: &Path, layout: &Layout) -> anyhow::Result<String> {
    let name = crate::api::node_name_of(kubeconfig)?;
    let bytes = std::fs::read(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    crate::image::write_atomic(&layout.node_kubeconfig(), &bytes)?;
    Ok(name)
}

fn server_url(listen: SocketAddr, node_ip: &str) -> String {
    match listen.ip().is_unspecified() {
        true => format!("https://{node_ip}:{}", listen.port()),
        false => format!("https://{listen}"),
    }
}

/// Polls `ok` every 200 ms; fails on timeout, on a stop request, or when a daemon exits.
async fn wait<F, Fut>(node: &mut Node, timeout: Duration, what: &str, mut ok: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ok().await {
            return Ok(());
        }
        if node.stop.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        if let Some(msg) = node.daemons.iter_mut().find_map(Daemon::exited_early) {
            bail!("waiting for {what}: {msg}");
        }
        if Instant::now() > deadline {
            let logs: Vec<String> =
                node.daemons.iter().map(|d| format!("--- {} ---\n{}", d.name, d.log_tail(8))).collect();
            bail!("timed out after {timeout:?} waiting for {what}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_ready(o: &UpOptions, layout: &Layout, name: &str, pod_cidr: &str, took: Duration) {
    let kubeconfig = match o.joining() {
        true => layout.node_kubeconfig(),
        false => layout.admin_kubeconfig(),
    };
    println!(
        "berth: node {name} is Ready after {:.1}s (pods on {pod_cidr}, {:?} network)",
        took.as_secs_f64(),
        o.network
    );
    if !o.joining() {
        println!("\nUse it with the kubectl you have:\n\n    export KUBECONFIG={}\n    kubectl get nodes\n    kubectl run hello --image=busybox -- sleep 3600\n    kubectl apply -f examples/deployment.yaml\n", kubeconfig.display());
    }
    println!(
        "Logs: {}/. Images: busybox from the local registry {} ({}).",
        layout.log_dir().display(),
        o.registry,
        layout.registry_dir().display()
    );
    println!(
        "Ctrl-C here (or `berth down` elsewhere) stops the node and keeps its data; `berth down --purge` deletes it."
    );
}

/// Restarts daemons that die, until asked to stop.
async fn supervise(node: &mut Node) {
    while !node.stop.load(Ordering::SeqCst) {
        for d in node.daemons.iter_mut() {
            if let Some(msg) = d.check() {
                eprintln!("berth: {msg}");
            }
            if let Err(e) = d.restart_due() {
                eprintln!("berth: restarting {}: {e:#}", d.name);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The agent first (so it does not recreate pods), the pods through CRI, then the daemons, then
/// the sweep.
async fn shut_down(node: &mut Node) {
    let grace = Duration::from_secs(10);
    if let Some(a) = node.daemons.iter_mut().find(|d| d.name == "agent") {
        a.stop(grace);
    }
    if node.daemons.iter().any(|d| d.name == "shim") {
        match teardown::remove_pods(&node.layout.socket()).await {
            Ok(n) => eprintln!("berth: removed {n} pod sandbox(es)"),
            Err(e) => eprintln!("berth: removing pods through CRI: {e:#}"),
        }
    }
    for name in ["shim", "registry", "control"] {
        if let Some(d) = node.daemons.iter_mut().find(|d| d.name == name) {
            d.stop(grace);
        }
    }
    let errors = teardown::sweep(&node.layout, &node.made);
    for e in &errors {
        eprintln!("berth: cleanup: {e}");
    }
    eprintln!("berth: stopped{}", if errors.is_empty() { "" } else { " (with the cleanup errors above)" });
}

/// The address of the interface the default route leaves by; 127.0.0.1 without one.
pub fn detect_node_ip() -> String {
    let out = std::process::Command::new("ip").args(["-4", "-o", "route", "get", "1.1.1.1"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            if let Some(ip) = words.next() {
                return ip.to_string();
            }
        }
    }
    "127.0.0.1".into()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_uses_the_node_ip_for_a_wildcard_listen() {
        assert_eq!(server_url("0.0.0.0:6443".parse().unwrap(), "10.0.0.5"), "https://10.0.0.5:6443");
        assert_eq!(server_url("127.0.0.1:6443".parse().unwrap(), "10.0.0.5"), "https://127.0.0.1:6443");
    }
}
