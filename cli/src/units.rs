//! The systemd units of an installed node, as pure functions: berth-registry (the local image
//! registry), berth-control (control-plane hosts only), berth-shim and berth-agent.

/// How the units are put together.
#[derive(Debug, Clone)]
pub struct UnitSettings {
    /// This host runs berth-control too.
    pub control: bool,
    pub node_name: String,
    pub listen: String,
    pub cluster_cidr: String,
    pub registry: String,
}

pub const BIN: &str = "/usr/local/bin";
pub const ETC: &str = "/etc/berth";
pub const DATA: &str = "/var/lib/berth";

/// (file name, contents) of every unit.
pub fn units(s: &UnitSettings) -> Vec<(String, String)> {
    let mut out = vec![
        ("berth-registry.service".to_string(), registry(s)),
        ("berth-shim.service".to_string(), shim()),
        ("berth-agent.service".to_string(), agent(s)),
    ];
    if s.control {
        out.push(("berth-control.service".to_string(), control(s)));
    }
    out
}

fn registry(s: &UnitSettings) -> String {
    format!(
        "[Unit]\nDescription=Berth local image registry (read-only; serves {DATA}/registry)\nDocumentation=https://github.com/berth/berth\n\n[Service]\nExecStart={BIN}/berth registry --dir {DATA}/registry --listen {}\nRestart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
        s.registry
    )
}

fn control(s: &UnitSettings) -> String {
    format!(
        "[Unit]\nDescription=Berth control plane (Kubernetes API, scheduler, controllers; embedded store)\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nExecStart={BIN}/berth-control --data-dir {DATA}/control --listen {} --cluster-cidr {}\nRestart=always\nRestartSec=2\nLimitNOFILE=1048576\n\n[Install]\nWantedBy=multi-user.target\n",
        s.listen, s.cluster_cidr
    )
}

/// KillMode=process: a stop or restart of the shim signals berth-shim alone; each pod's
/// berth-monitor (the containers' parent, in its own session) keeps running, and the next
/// berth-shim adopts the pods. Delegate=yes: systemd leaves the cgroups below the unit alone.
fn shim() -> String {
    format!(
        "[Unit]\nDescription=Berth CRI runtime (berth-shim)\nAfter=network-online.target berth-registry.service\nWants=network-online.target berth-registry.service\n\n[Service]\nExecStart={BIN}/berth-shim --config {ETC}/shim.toml\nRestart=always\nRestartSec=2\nKillMode=process\nDelegate=yes\nOOMScoreAdjust=-999\nLimitNOFILE=1048576\nTasksMax=infinity\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// The agent needs the shim (Requires + After). On a control-plane host it first makes its own
/// node credential from the local CA. The agent itself writes the CNI conflist for the podCIDR
/// the control plane gives the node (its `network` section).
fn agent(s: &UnitSettings) -> String {
    let (after, pre) = match s.control {
        true => (
            " berth-control.service\nWants=berth-control.service",
            format!("ExecStartPre={BIN}/berth node-kubeconfig --control-dir {DATA}/control --out {ETC}/agent.kubeconfig --node {} --server https://127.0.0.1:{}\n", s.node_name, port_of(&s.listen)),
        ),
        false => ("", String::new()),
    };
    format!(
        "[Unit]\nDescription=Berth node agent (kubelet)\nAfter=berth-shim.service{after}\nRequires=berth-shim.service\n\n[Service]\n{pre}ExecStart={BIN}/berth-agent --config {ETC}/agent.yaml\nRestart=always\nRestartSec=2\nDelegate=yes\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n",
    )
}

fn port_of(listen: &str) -> &str {
    listen.rsplit(':').next().unwrap_or("6443")
}

/// The value of every `Key=` line of a unit, in order.
#[cfg(test)]
pub fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(control: bool) -> UnitSettings {
        UnitSettings {
            control,
            node_name: "n1".into(),
            listen: "0.0.0.0:6443".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            registry: "127.0.0.1:5000".into(),
        }
    }

    fn unit(s: &UnitSettings, name: &str) -> String {
        units(s).into_iter().find(|(n, _)| n == name).map(|(_, u)| u).unwrap()
    }

    #[test]
    fn the_shim_leaves_containers_alive_and_owns_its_cgroups() {
        let u = unit(&settings(true), "berth-shim.service");
        assert_eq!(values(&u, "KillMode"), ["process"]);
        assert_eq!(values(&u, "Delegate"), ["yes"]);
        assert_eq!(values(&u, "Restart"), ["always"]);
        assert_eq!(values(&u, "ExecStart"), ["/usr/local/bin/berth-shim --config /etc/berth/shim.toml"]);
    }

    #[test]
    fn the_agent_requires_the_shim_and_makes_its_credential_on_a_control_host() {
        let u = unit(&settings(true), "berth-agent.service");
        assert_eq!(values(&u, "Requires"), ["berth-shim.service"]);
        assert!(values(&u, "After")[0].contains("berth-control.service"));
        assert!(values(&u, "ExecStartPre")[0].contains("node-kubeconfig"));
        assert!(values(&u, "ExecStartPost").is_empty(), "the agent writes the conflist itself");
        let joined = unit(&settings(false), "berth-agent.service");
        assert!(values(&joined, "ExecStartPre").is_empty());
        assert!(!units(&settings(false)).iter().any(|(n, _)| n == "berth-control.service"));
    }
}
