//! The configuration files a node runs on, as pure functions of their settings: berth-shim's
//! shim.toml, berth-agent's agent.yaml, the registries.conf that mirrors docker.io to the local
//! image registry. `berth up`, `berth join` and `berth install` write the same files with
//! different paths. The CNI conflist is berth-agent's to write (its `network` section): only
//! it learns the node's podCIDR and the other nodes' overlay peers.

use std::path::PathBuf;

/// TOML and YAML both read a JSON string literal as a string: one quoting for both.
fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("strings serialise")
}

fn p(path: &std::path::Path) -> String {
    q(path.to_string_lossy())
}

/// berth-shim's settings (see shim/src/config.rs for their meaning).
#[derive(Debug, Clone)]
pub struct ShimSettings {
    pub listen: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub image_dir: PathBuf,
    pub registries: PathBuf,
    pub cgroup_parent: String,
    /// Empty: next to berth-shim.
    pub monitor: PathBuf,
    pub pause: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_cache_dir: PathBuf,
}

pub fn shim_toml(s: &ShimSettings) -> String {
    format!(
        "# berth-shim configuration (every key: shim/src/config.rs)\nlisten = {}\nstate_dir = {}\nrun_dir = {}\nimage_dir = {}\nregistries = {}\ncgroup_parent = {}\nmonitor = {}\npause = {}\n\n[cni]\nconf_dir = {}\nbin_dirs = [{}]\ncache_dir = {}\n",
        p(&s.listen),
        p(&s.state_dir),
        p(&s.run_dir),
        p(&s.image_dir),
        p(&s.registries),
        q(&s.cgroup_parent),
        p(&s.monitor),
        p(&s.pause),
        p(&s.cni_conf_dir),
        p(&s.cni_bin_dir),
        p(&s.cni_cache_dir),
    )
}

/// berth-agent's settings (see agent/src/config.rs).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    pub kubeconfig: PathBuf,
    /// `berth join --token`: TLS bootstrap writes `kubeconfig` from these credentials.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub socket: PathBuf,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub static_pod_path: PathBuf,
    pub cgroup_root: String,
    pub node_ip: Option<String>,
    pub network: AgentNetwork,
}

/// berth-agent's `network` section: the pod network it keeps (agent/src/network.rs).
#[derive(Debug, Clone)]
pub struct AgentNetwork {
    pub mode: Network,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub peers_file: PathBuf,
    /// The plugins' records; their IPAM allocations go to `<state_dir>/networks`.
    pub state_dir: PathBuf,
    pub cluster_cidr: String,
    pub bridge: String,
    /// VXLAN only: the underlay interface (None: the node's InternalIP).
    pub underlay_device: Option<String>,
}

pub fn agent_yaml(a: &AgentSettings) -> String {
    let mut y = format!(
        "# berth-agent configuration (every key: agent/src/config.rs)\nnodeName: {}\nkubeconfig: {}\ncontainerRuntimeEndpoint: {}\nrootDir: {}\npodLogsDir: {}\nstaticPodPath: {}\ncgroupRoot: {}\n",
        q(&a.node_name),
        p(&a.kubeconfig),
        q(format!("unix://{}", a.socket.display())),
        p(&a.root_dir),
        p(&a.pod_logs_dir),
        p(&a.static_pod_path),
        q(&a.cgroup_root),
    );
    if let Some(b) = &a.bootstrap_kubeconfig {
        y.push_str(&format!("bootstrapKubeconfig: {}\n", p(b)));
    }
    if let Some(ip) = &a.node_ip {
        y.push_str(&format!("nodeIP: {}\n", q(ip)));
    }
    let n = &a.network;
    y.push_str(&format!(
        "network:\n  mode: {}\n  cniConfDir: {}\n  cniBinDir: {}\n  peersFile: {}\n  stateDir: {}\n  clusterCIDR: {}\n  bridge: {}\n",
        q(n.mode.name()),
        p(&n.cni_conf_dir),
        p(&n.cni_bin_dir),
        p(&n.peers_file),
        p(&n.state_dir),
        q(&n.cluster_cidr),
        q(&n.bridge),
    ));
    if let Some(d) = &n.underlay_device {
        y.push_str(&format!("  underlayDevice: {}\n", q(d)));
    }
    y
}

/// docker.io (where `busybox` means `docker.io/library/busybox`) mirrored to the node's local
/// registry over plain http; a name that is not there falls through to docker.io.
pub fn registries_conf(local: &str) -> String {
    format!(
        "# containers-registries.conf(5) v2, read by berth-shim\nunqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = {l}\ninsecure = true\n\n[[registry]]\nlocation = {l}\ninsecure = true\n",
        l = q(local)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// Pods on a Linux bridge; one node (or nodes routed some other way).
    Bridge,
    /// berth-vxlan: the bridge plus a VXLAN overlay to other nodes' pod subnets.
    Vxlan,
}

impl Network {
    /// The name berth-agent's `network.mode` and the units use.
    pub fn name(self) -> &'static str {
        match self {
            Network::Bridge => "bridge",
            Network::Vxlan => "vxlan",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_toml_parses_as_toml_with_quoted_paths() {
        let s = ShimSettings {
            listen: "/run/b \"x\"/cri.sock".into(),
            state_dir: "/s".into(),
            run_dir: "/r".into(),
            image_dir: "/i".into(),
            registries: "/e/registries.conf".into(),
            cgroup_parent: "/berth".into(),
            monitor: "".into(),
            pause: "/bin/berth-pause".into(),
            cni_conf_dir: "/n".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            cni_cache_dir: "/c".into(),
        };
        let text = shim_toml(&s);
        assert!(text.contains("listen = \"/run/b \\\"x\\\"/cri.sock\""), "{text}");
        assert!(text.contains("bin_dirs = [\"/opt/cni/bin\"]"), "{text}");
        assert!(text.contains("monitor = \"\""), "{text}");
    }

    #[test]
    fn agent_yaml_has_the_node_and_endpoint() {
        let a = AgentSettings {
            node_name: "n1".into(),
            kubeconfig: "/k".into(),
            bootstrap_kubeconfig: None,
            socket: "/run/berth/cri.sock".into(),
            root_dir: "/a".into(),
            pod_logs_dir: "/l".into(),
            static_pod_path: "/m".into(),
            cgroup_root: "/berth".into(),
            node_ip: Some("10.0.0.1".into()),
            network: AgentNetwork {
                mode: Network::Vxlan,
                cni_conf_dir: "/n".into(),
                cni_bin_dir: "/opt/cni/bin".into(),
                peers_file: "/run/x/peers.json".into(),
                state_dir: "/run/x/cni".into(),
                cluster_cidr: "10.244.0.0/16".into(),
                bridge: "berth0".into(),
                underlay_device: Some("eth0".into()),
            },
        };
        let y = agent_yaml(&a);
        assert!(y.contains("nodeName: \"n1\"\n"));
        assert!(y.contains("containerRuntimeEndpoint: \"unix:///run/berth/cri.sock\"\n"));
        assert!(y.contains("nodeIP: \"10.0.0.1\"\n"));
        assert!(!y.contains("bootstrapKubeconfig"));
        let cfg = berth_agent::config::AgentConfig::parse(&y).unwrap();
        let n = &cfg.network;
        assert_eq!(n.mode, berth_agent::network::Mode::Vxlan, "{y}");
        assert_eq!(
            (n.cni_conf_dir.to_str(), n.peers_file.to_str(), n.state_dir.to_str()),
            (Some("/n"), Some("/run/x/peers.json"), Some("/run/x/cni"))
        );
        assert_eq!(
            (n.cluster_cidr.as_deref(), n.underlay_device.as_deref(), n.bridge.as_str()),
            (Some("10.244.0.0/16"), Some("eth0"), "berth0")
        );
        let y = agent_yaml(&AgentSettings { bootstrap_kubeconfig: Some("/b.kubeconfig".into()), ..a });
        let cfg = berth_agent::config::AgentConfig::parse(&y).unwrap();
        assert_eq!(
            cfg.bootstrap_paths().unwrap(),
            Some((std::path::Path::new("/b.kubeconfig"), std::path::Path::new("/k"))),
            "{y}"
        );
    }

    #[test]
    fn registries_mirror_docker_io_to_the_local_registry() {
        let r = registries_conf("127.0.0.1:5000");
        assert!(r.contains("[[registry.mirror]]\nlocation = \"127.0.0.1:5000\"\ninsecure = true"));
    }
}
