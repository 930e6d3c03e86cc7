//! The agent's configuration: a KubeletConfiguration-style YAML file (camelCase keys, every
//! field optional) overridden by flags. Defaults are what a kubelet operator expects.
//!
//! ```yaml
//! nodeName: node-1                 # default: the host name
//! kubeconfig: /etc/berth/agent.kubeconfig
//! bootstrapKubeconfig: /etc/berth/bootstrap.kubeconfig   # TLS bootstrap when kubeconfig has no client cert
//! containerRuntimeEndpoint: unix:///run/berth/cri.sock
//! rootDir: /var/lib/berth/agent     # pod volumes, plugin state
//! podLogsDir: /var/log/pods
//! staticPodPath: /etc/berth/manifests
//! clusterDNS: [10.96.0.10]
//! clusterDomain: cluster.local
//! cgroupRoot: /kubepods             # pods' cgroup parent
//! maxPods: 110
//! systemReserved: {cpu: 100m, memory: 256Mi}
//! kubeReserved: {}
//! evictionHard: {memory.available: 100Mi, nodefs.available: 1Gi}   # "10%" style works too
//! nodeLabels: {zone: a}
//! registerWithTaints: [{key: dedicated, value: infra, effect: NoSchedule}]
//! nodeStatusUpdateFrequency: 10s
//! nodeLeaseDurationSeconds: 40
//! syncFrequency: 10s
//! address: 0.0.0.0                  # kubelet server
//! port: 10250
//! nodeIP: 192.168.1.10             # default: the default route's interface address
//! authorization: {mode: Webhook}    # Webhook (SubjectAccessReview for bearer tokens) | AlwaysAllow
//! imageGCHighThresholdPercent: 85   # image GC starts when the image filesystem is this full
//! imageGCLowThresholdPercent: 80    # ... and frees images (LRU, unused) down to this
//! imageMinimumGCAge: 2m             # an image is never collected younger than this
//! network:                          # the conflist and overlay peers the agent keeps
//!   mode: vxlan                     # none (default) | bridge | vxlan | host-gw
//!   clusterCIDR: 10.244.0.0/16
//!   cniConfDir: /etc/cni/net.d
//!   cniBinDir: /opt/cni/bin
//!   peersFile: /run/berth/peers.json
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub effect: String,
}

/// kubelet's `authorization` block (the webhook cache settings are not configurable here).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Authorization {
    pub mode: crate::authn::AuthorizationMode,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Accepted for KubeletConfiguration files; ignored.
    pub kind: Option<String>,
    pub api_version: Option<String>,
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    /// TLS bootstrap (kubelet's `--bootstrap-kubeconfig`): when `kubeconfig` is missing or holds
    /// no usable client certificate, these credentials (a bootstrap token) request one through
    /// a CertificateSigningRequest and `kubeconfig` is written with it.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub container_runtime_endpoint: String,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub static_pod_path: Option<PathBuf>,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub cgroup_root: String,
    pub max_pods: u32,
    pub system_reserved: BTreeMap<String, String>,
    pub kube_reserved: BTreeMap<String, String>,
    pub eviction_hard: BTreeMap<String, String>,
    pub node_labels: BTreeMap<String, String>,
    pub register_with_taints: Vec<Taint>,
    #[serde(with = "duration")]
    pub node_status_update_frequency: Duration,
    pub node_lease_duration_seconds: i32,
    #[serde(with = "duration")]
    pub sync_frequency: Duration,
    pub address: String,
    pub port: u16,
    /// Node networking: the CNI conflist and overlay peers the agent keeps (mode none: left alone).
    pub network: crate::network::NetworkConfig,
    /// The node's InternalIP (default: the address of the default route's interface).
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<String>,
    /// How many pods may be setting up their sandbox and first containers at once (0: twice
    /// the CPUs). The rest queue in arrival order, so that a burst of pods starts them
    /// first-come first-served instead of all sharing the CPUs and all finishing late.
    pub parallel_pod_starts: usize,
    /// How bearer-token callers of the kubelet API are authorised.
    pub authorization: Authorization,
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: u8,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: u8,
    #[serde(rename = "imageMinimumGCAge", with = "duration")]
    pub image_minimum_gc_age: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kind: None,
            api_version: None,
            node_name: None,
            kubeconfig: None,
            bootstrap_kubeconfig: None,
            container_runtime_endpoint: "unix:///run/berth/cri.sock".into(),
            root_dir: "/var/lib/berth/agent".into(),
            pod_logs_dir: "/var/log/pods".into(),
            static_pod_path: None,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            cgroup_root: "/kubepods".into(),
            max_pods: 110,
            system_reserved: BTreeMap::new(),
            kube_reserved: BTreeMap::new(),
            // kubelet's memory default; for the disk an absolute floor rather than kubelet's 10%,
            // which on a large, well-used disk evicts every pod with many gigabytes still free.
            eviction_hard: BTreeMap::from([
                ("memory.available".into(), "100Mi".into()),
                ("nodefs.available".into(), "1Gi".into()),
            ]),
            node_labels: BTreeMap::new(),
            register_with_taints: Vec::new(),
            node_status_update_frequency: Duration::from_secs(10),
            node_lease_duration_seconds: 40,
            sync_frequency: Duration::from_secs(10),
            address: "0.0.0.0".into(),
            port: 10250,
            network: crate::network::NetworkConfig::default(),
            node_ip: None,
            parallel_pod_starts: 0,
            authorization: Authorization::default(),
            image_gc_high_threshold_percent: 85,
            image_gc_low_threshold_percent: 80,
            image_minimum_gc_age: Duration::from_secs(120),
        }
    }
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Go-style durations: "10s", "1m30s", "500ms", "2h".
    pub fn parse(s: &str) -> Result<Duration, String> {
        let mut total = Duration::ZERO;
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        while !rest.is_empty() {
            let n_end =
                rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| format!("{s:?}: missing unit"))?;
            let n: f64 = rest[..n_end].parse().map_err(|_| format!("{s:?}: bad number"))?;
            let unit_end = rest[n_end..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| n_end + i);
            let secs = match &rest[n_end..unit_end] {
                "ms" => n / 1000.0,
                "s" => n,
                "m" => n * 60.0,
                "h" => n * 3600.0,
                u => return Err(format!("{s:?}: unknown unit {u:?}")),
            };
            total += Duration::from_secs_f64(secs);
            rest = &rest[unit_end..];
        }
        Ok(total)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

pub use duration::parse as parse_duration;

impl AgentConfig {
    /// Reads `path`; a missing file at the default path means all defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<AgentConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(AgentConfig::default()),
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        AgentConfig::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        if text.trim().is_empty() {
            return Ok(AgentConfig::default());
        }
        let cfg: AgentConfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, message: String| Err(ConfigError::Invalid { field, message });
        if !self.container_runtime_endpoint.starts_with("unix://") && !self.container_runtime_endpoint.starts_with('/')
        {
            return bad(
                "containerRuntimeEndpoint",
                format!("{:?} is not a unix socket (unix:///path)", self.container_runtime_endpoint),
            );
        }
        if self.max_pods == 0 {
            return bad("maxPods", "must be at least 1".into());
        }
        for (k, v) in self.system_reserved.iter().chain(&self.kube_reserved) {
            crate::quantity::Quantity::parse(v).map_err(|e| ConfigError::Invalid {
                field: "systemReserved/kubeReserved",
                message: format!("{k}: {e}"),
            })?;
        }
        let (hi, lo) = (self.image_gc_high_threshold_percent, self.image_gc_low_threshold_percent);
        if hi > 100 || lo >= hi.max(1) {
            return bad(
                "imageGCLowThresholdPercent",
                format!("low ({lo}) must be below high ({hi}), and high at most 100"),
            );
        }
        for t in &self.register_with_taints {
            if !matches!(t.effect.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return bad(
                    "registerWithTaints",
                    format!("taint {}: effect {:?} is not NoSchedule, PreferNoSchedule or NoExecute", t.key, t.effect),
                );
            }
        }
        Ok(())
    }

    /// TLS bootstrap's (bootstrap kubeconfig, node kubeconfig to write), when configured. Checked
    /// after flags are applied, since either path may come from one.
    pub fn bootstrap_paths(&self) -> Result<Option<(&Path, &Path)>, ConfigError> {
        match (&self.bootstrap_kubeconfig, &self.kubeconfig) {
            (None, _) => Ok(None),
            (Some(b), Some(k)) => Ok(Some((b.as_path(), k.as_path()))),
            (Some(_), None) => Err(ConfigError::Invalid {
                field: "bootstrapKubeconfig",
                message: "needs kubeconfig: the path the node kubeconfig is written to".into(),
            }),
        }
    }

    /// The CRI socket path.
    pub fn runtime_socket(&self) -> PathBuf {
        PathBuf::from(self.container_runtime_endpoint.trim_start_matches("unix://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let cfg = AgentConfig::parse("").unwrap();
        assert_eq!(cfg, AgentConfig::default());
        assert_eq!(cfg.runtime_socket(), PathBuf::from("/run/berth/cri.sock"));
        let cfg = AgentConfig::parse("kind: KubeletConfiguration\nnodeName: n1\nclusterDNS: [10.96.0.10]\nsyncFrequency: 1m30s\nsystemReserved: {memory: 256Mi}\n").unwrap();
        assert_eq!(cfg.node_name.as_deref(), Some("n1"));
        assert_eq!(cfg.cluster_dns, ["10.96.0.10"]);
        assert_eq!(cfg.sync_frequency, Duration::from_secs(90));
        assert_eq!(cfg.max_pods, 110);
    }

    #[test]
    fn bad_config_names_the_field() {
        assert!(AgentConfig::parse("maxPods: 0").unwrap_err().contains("maxPods"));
        let cfg = AgentConfig::parse("bootstrapKubeconfig: /b").unwrap();
        assert!(cfg.bootstrap_paths().unwrap_err().to_string().contains("needs kubeconfig"));
        let cfg = AgentConfig::parse("bootstrapKubeconfig: /b\nkubeconfig: /k").unwrap();
        assert_eq!(cfg.bootstrap_paths().unwrap(), Some((Path::new("/b"), Path::new("/k"))));
        assert_eq!(AgentConfig::default().bootstrap_paths().unwrap(), None);
        assert!(AgentConfig::parse("nodeNmae: x").unwrap_err().contains("nodeNmae"), "unknown keys are refused");
        assert!(AgentConfig::parse("syncFrequency: 10").unwrap_err().contains("missing unit"));
        assert!(AgentConfig::parse("containerRuntimeEndpoint: tcp://x")
            .unwrap_err()
            .contains("containerRuntimeEndpoint"));
        assert!(AgentConfig::parse("registerWithTaints: [{key: a, effect: Sometimes}]")
            .unwrap_err()
            .contains("effect"));
        assert!(AgentConfig::parse("systemReserved: {memory: lots}").unwrap_err().contains("memory"));
        assert!(AgentConfig::parse("imageGCHighThresholdPercent: 50\nimageGCLowThresholdPercent: 60")
            .unwrap_err()
            .contains("imageGCLowThresholdPercent"));
        let cfg = AgentConfig::parse("authorization: {mode: AlwaysAllow}\nimageMinimumGCAge: 0s\nimageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0").unwrap();
        assert_eq!(cfg.authorization.mode, crate::authn::AuthorizationMode::AlwaysAllow);
        assert_eq!(cfg.image_minimum_gc_age, Duration::ZERO);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5x").is_err());
    }
}
