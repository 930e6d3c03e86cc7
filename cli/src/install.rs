//! `berth install --root DIR`: a node laid out for systemd under DIR (`/` on a real host, a
//! staging directory for packaging and tests) — binaries in usr/local/bin, CNI plugins in
//! opt/cni/bin, configuration in etc/berth, units in etc/systemd/system — plus the helper a
//! control-plane host's agent unit runs, `berth node-kubeconfig`. berth-agent writes the CNI
//! conflist in etc/cni/net.d once the control plane has given the node its podCIDR.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::layout::{Binaries, CNI_PLUGINS};
use crate::render::{self, Network};
use crate::units::{self, UnitSettings, DATA, ETC};

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub root: PathBuf,
    pub control: bool,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub node_ip: Option<String>,
    pub listen: String,
    pub cluster_cidr: String,
    pub network: Network,
    pub registry: String,
    pub cgroup_root: String,
    pub bin_dir: Option<PathBuf>,
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

pub fn run(o: &InstallOptions) -> anyhow::Result<()> {
    let node_name = match (&o.kubeconfig, o.control) {
        (Some(k), _) => crate::api::node_name_of(k)?,
        (None, true) => o.node_name.clone().unwrap_or_else(crate::up::hostname),
        (None, false) => bail!("a worker needs --kubeconfig (a node kubeconfig: `berth-control kubeconfig --user system:node:NAME --group system:nodes --server URL` on the control-plane host); a control-plane host: --control"),
    };
    let bins = Binaries::locate(o.bin_dir.as_deref())?;
    let bin = under(&o.root, units::BIN);
    let cni_bin = under(&o.root, "/opt/cni/bin");
    let etc = under(&o.root, ETC);
    let net_d = under(&o.root, "/etc/cni/net.d");
    let systemd = under(&o.root, "/etc/systemd/system");
    for d in [&bin, &cni_bin, &etc, &etc.join("manifests"), &net_d, &systemd] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for (src, name) in [
        (&bins.berth, "berth"),
        (&bins.control, "berth-control"),
        (&bins.shim, "berth-shim"),
        (&bins.agent, "berth-agent"),
        (&bins.monitor, "berth-monitor"),
        (&bins.pause, "berth-pause"),
    ] {
        install_file(src, &bin.join(name), 0o755)?;
    }
    for p in CNI_PLUGINS {
        install_file(&bins.cni_dir.join(p), &cni_bin.join(p), 0o755)?;
    }
    write_configs(o, &etc, &node_name)?;
    if let Some(k) = &o.kubeconfig {
        install_file(k, &etc.join("agent.kubeconfig"), 0o600)?;
    }
    let settings = UnitSettings {
        control: o.control,
        node_name: node_name.clone(),
        listen: o.listen.clone(),
        cluster_cidr: o.cluster_cidr.clone(),
        registry: o.registry.clone(),
    };
    // What `berth down` sweeps on this host once the services are stopped.
    let made = crate::teardown::Made {
        run_dir: "/run/berth".into(),
        cgroup_root: o.cgroup_root.clone(),
        bridge: "berth0".into(),
        vxlan_device: (o.network == Network::Vxlan).then(|| "berth.1".into()),
    };
    let data_etc = under(&o.root, DATA).join("etc");
    std::fs::create_dir_all(&data_etc)?;
    std::fs::write(data_etc.join("up.json"), serde_json::to_vec_pretty(&made)?)?;
    let names: Vec<String> = units::units(&settings)
        .into_iter()
        .map(|(name, text)| std::fs::write(systemd.join(&name), text).map(|_| name))
        .collect::<Result<_, _>>()?;
    println!("berth: installed node {node_name} under {}", o.root.display());
    println!(
        "Start it with:\n    systemctl daemon-reload\n    systemctl enable --now {}",
        names.iter().map(|n| n.trim_end_matches(".service")).collect::<Vec<_>>().join(" ")
    );
    if o.control {
        println!("then: export KUBECONFIG={DATA}/control/admin.kubeconfig");
    }
    Ok(())
}

fn write_configs(o: &InstallOptions, etc: &Path, node_name: &str) -> anyhow::Result<()> {
    let shim = render::ShimSettings {
        listen: "/run/berth/cri.sock".into(),
        state_dir: format!("{DATA}/shim").into(),
        run_dir: "/run/berth/shim".into(),
        image_dir: format!("{DATA}/images").into(),
        registries: format!("{ETC}/registries.conf").into(),
        cgroup_parent: o.cgroup_root.clone(),
        monitor: PathBuf::new(),
        pause: PathBuf::new(),
        cni_conf_dir: "/etc/cni/net.d".into(),
        cni_bin_dir: "/opt/cni/bin".into(),
        cni_cache_dir: format!("{DATA}/cni").into(),
    };
    std::fs::write(etc.join("shim.toml"), render::shim_toml(&shim))?;
    let agent = render::AgentSettings {
        bootstrap_kubeconfig: None,
        node_name: node_name.into(),
        kubeconfig: format!("{ETC}/agent.kubeconfig").into(),
        socket: "/run/berth/cri.sock".into(),
        root_dir: format!("{DATA}/agent").into(),
        pod_logs_dir: "/var/log/pods".into(),
        static_pod_path: format!("{ETC}/manifests").into(),
        cgroup_root: o.cgroup_root.clone(),
        node_ip: o.node_ip.clone(),
        network: render::AgentNetwork {
            mode: o.network,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            peers_file: "/run/berth/peers.json".into(),
            state_dir: "/run/berth/cni".into(),
            cluster_cidr: o.cluster_cidr.clone(),
            bridge: "berth0".into(),
            underlay_device: None,
        },
    };
    std::fs::write(etc.join("agent.yaml"), render::agent_yaml(&agent))?;
    std::fs::write(etc.join("registries.conf"), render::registries_conf(&o.registry))?;
    Ok(())
}

/// Copies through a temporary name and renames, so a running binary is replaced, not rewritten.
fn install_file(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dst.with_extension("berth-new");
    std::fs::copy(src, &tmp).with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("installing {}", dst.display()))
}

/// `berth node-kubeconfig`: this control-plane host's node credential, made once from the
/// local CA after berth-control has created it.
pub fn node_kubeconfig(control_dir: &Path, out: &Path, node: &str, server: &str) -> anyhow::Result<()> {
    if out.exists() && crate::api::node_name_of(out).ok().as_deref() == Some(node) {
        return Ok(());
    }
    let admin = control_dir.join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear in 60s: is berth-control running?", admin.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let control = std::env::current_exe()?.with_file_name("berth-control");
    let output = std::process::Command::new(&control)
        .arg("--data-dir")
        .arg(control_dir)
        .args(["kubeconfig", "--user", &format!("system:node:{node}"), "--group", "system:nodes", "--server", server])
        .output()
        .with_context(|| format!("running {}", control.display()))?;
    if !output.status.success() {
        bail!("berth-control kubeconfig: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    crate::image::write_atomic(out, &output.stdout).with_context(|| format!("writing {}", out.display()))
}
