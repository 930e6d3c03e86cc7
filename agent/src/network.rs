//! Node networking: from the Nodes in the API, this node's CNI conflist (berth-bridge, or
//! berth-vxlan / berth-host-gw on its podCIDR) and the overlay's peers file (every other node's
//! podCIDR and InternalIP), re-applied with `berth-vxlan sync` / `berth-host-gw sync` whenever
//! a node comes, goes or changes — so routes and FDB entries follow the cluster.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The agent leaves CNI configuration alone.
    #[default]
    None,
    Bridge,
    Vxlan,
    HostGw,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub mode: Mode,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub peers_file: PathBuf,
    /// The plugins' records (`stateDir`) and IPAM allocations (`<stateDir>/networks`): under
    /// /run, so a reboot frees them.
    pub state_dir: PathBuf,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub underlay_device: Option<String>,
    pub bridge: String,
    pub vni: u32,
    pub ip_masq: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: Mode::None,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            peers_file: "/run/berth/peers.json".into(),
            state_dir: "/run/berth/cni".into(),
            cluster_cidr: None,
            underlay_device: None,
            bridge: "berth0".into(),
            vni: 1,
            ip_masq: true,
        }
    }
}

/// The InternalIP of a node, if it reported one.
pub fn internal_ip(n: &Node) -> Option<String> {
    n.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())
}

fn pod_cidr(n: &Node) -> Option<String> {
    n.spec.as_ref()?.pod_cidr.clone().filter(|c| !c.is_empty())
}

/// Every other node with a podCIDR and an InternalIP, as the overlay plugins' peers.
pub fn peers(nodes: &[Node], me: &str) -> Vec<Value> {
    let mut out: Vec<Value> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| Some(json!({ "podCIDR": pod_cidr(n)?, "underlayIP": internal_ip(n)? })))
        .collect();
    out.sort_by_key(|v| v["podCIDR"].as_str().unwrap_or_default().to_string());
    out
}

/// This node's conflist for `pod_cidr`.
pub fn conflist(cfg: &NetworkConfig, pod_cidr: &str, node_ip: Option<&str>) -> Option<Value> {
    let ipam = json!({ "type": "berth-host-local", "ranges": [[{ "subnet": pod_cidr }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": cfg.state_dir.join("networks") });
    let main = match cfg.mode {
        Mode::None => return None,
        Mode::Bridge => {
            let mut b = json!({ "type": "berth-bridge", "bridge": cfg.bridge, "isDefaultGateway": true, "ipMasq": cfg.ip_masq, "hairpinMode": true, "stateDir": cfg.state_dir, "ipam": ipam });
            // Pod-to-pod traffic within the cluster keeps its source address.
            if let Some(c) = &cfg.cluster_cidr {
                b["ipMasqExclude"] = json!([c]);
            }
            b
        }
        Mode::Vxlan | Mode::HostGw => {
            let mut m = json!({
                "type": if cfg.mode == Mode::Vxlan { "berth-vxlan" } else { "berth-host-gw" },
                "bridge": cfg.bridge, "ipMasq": cfg.ip_masq, "hairpinMode": true,
                "peersFile": cfg.peers_file, "podCIDR": pod_cidr, "stateDir": cfg.state_dir, "ipam": ipam,
            });
            if cfg.mode == Mode::Vxlan {
                m["vni"] = json!(cfg.vni);
            }
            if let Some(c) = &cfg.cluster_cidr {
                m["clusterCIDR"] = json!(c);
            }
            if let Some(d) = &cfg.underlay_device {
                m["underlayDevice"] = json!(d);
            } else if let Some(ip) = node_ip {
                m["underlayIP"] = json!(ip);
            }
            m
        }
    };
    // The main plugin maps host ports itself (berth-portmap's code in-process): one plugin
    // process per pod ADD and DEL instead of two.
    let mut main = main;
    main["capabilities"] = json!({ "portMappings": true });
    Some(json!({
        "cniVersion": "1.1.0",
        "name": "berth",
        "plugins": [main],
    }))
}

/// Writes `bytes` to `path` by rename, unless it already holds them. True when it changed.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// One round: conflist and peers written; the overlay re-synced when either changed (or
/// `force`). Returns whether the network configuration exists.
pub fn apply(cfg: &NetworkConfig, nodes: &[Node], me: &str, force: bool) -> Result<bool, String> {
    let Some(mine) = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(me)) else { return Ok(false) };
    let Some(cidr) = pod_cidr(mine) else { return Ok(false) };
    let Some(list) = conflist(cfg, &cidr, internal_ip(mine).as_deref()) else { return Ok(false) };
    let conf_path = cfg.cni_conf_dir.join("10-berth.conflist");
    let bytes = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
    let mut changed =
        write_if_changed(&conf_path, &bytes).map_err(|e| format!("writing {}: {e}", conf_path.display()))?;
    if matches!(cfg.mode, Mode::Vxlan | Mode::HostGw) {
        let peers = serde_json::to_vec_pretty(&json!({ "peers": peers(nodes, me) })).map_err(|e| e.to_string())?;
        changed |= write_if_changed(&cfg.peers_file, &peers)
            .map_err(|e| format!("writing {}: {e}", cfg.peers_file.display()))?;
        if changed || force {
            let plugin = if cfg.mode == Mode::Vxlan { "berth-vxlan" } else { "berth-host-gw" };
            // The sync takes one network config (the conflist's plugin with cniVersion and name).
            let mut one = list["plugins"][0].clone();
            one["cniVersion"] = list["cniVersion"].clone();
            one["name"] = list["name"].clone();
            let bin = cfg.cni_bin_dir.join(plugin);
            let mut child = std::process::Command::new(&bin)
                .arg("sync")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("running {} sync: {e}", bin.display()))?;
            let _ = std::io::Write::write_all(
                child.stdin.as_mut().expect("stdin"),
                &serde_json::to_vec(&one).unwrap_or_default(),
            );
            drop(child.stdin.take());
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "{plugin} sync: {}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            tracing::info!(report = %String::from_utf8_lossy(&out.stdout).trim(), "overlay peers applied");
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec = Some(NodeSpec { pod_cidr: cidr.map(str::to_string), ..Default::default() });
        n.status = Some(NodeStatus {
            addresses: ip.map(|ip| vec![NodeAddress { type_: "InternalIP".into(), address: ip.into() }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn peers_are_the_other_nodes_with_a_subnet_and_an_address() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("192.168.0.1")),
            node("b", Some("10.244.1.0/24"), Some("192.168.0.2")),
            node("c", None, Some("192.168.0.3")),
            node("d", Some("10.244.3.0/24"), None),
        ];
        assert_eq!(peers(&nodes, "a"), vec![json!({"podCIDR": "10.244.1.0/24", "underlayIP": "192.168.0.2"})]);
    }

    #[test]
    fn conflists_by_mode() {
        let mut cfg =
            NetworkConfig { mode: Mode::Vxlan, cluster_cidr: Some("10.244.0.0/16".into()), ..Default::default() };
        let l = conflist(&cfg, "10.244.2.0/24", Some("192.168.0.9")).unwrap();
        assert_eq!(l["plugins"][0]["type"], "berth-vxlan");
        assert_eq!(l["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
        assert_eq!(l["plugins"][0]["underlayIP"], "192.168.0.9");
        assert_eq!(
            (l["plugins"].as_array().map(Vec::len), &l["plugins"][0]["capabilities"]),
            (Some(1), &json!({"portMappings": true})),
            "host ports mapped by the main plugin"
        );
        cfg.mode = Mode::Bridge;
        let b = conflist(&cfg, "10.88.0.0/24", None).unwrap();
        assert_eq!(
            (&b["plugins"][0]["type"], &b["plugins"][0]["ipMasqExclude"]),
            (&json!("berth-bridge"), &json!(["10.244.0.0/16"]))
        );
        cfg.mode = Mode::None;
        assert!(conflist(&cfg, "10.88.0.0/24", None).is_none());
    }

    #[test]
    fn files_are_rewritten_only_on_change() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/conf");
        assert!(write_if_changed(&p, b"a").unwrap());
        assert!(!write_if_changed(&p, b"a").unwrap());
        assert!(write_if_changed(&p, b"b").unwrap());
    }
}
