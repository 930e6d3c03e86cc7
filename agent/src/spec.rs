//! Pure translations from a Pod to what CRI needs: the sandbox config, each container's config,
//! its environment (value, valueFrom, envFrom, `$(VAR)` expansion), its resources as kubelet
//! computes them from requests and limits (CPU shares, quota, memory limit, OOM score by QoS
//! class), and the labels that tie CRI objects back to their pod.

use std::collections::{BTreeMap, HashMap};

use berth_proto::runtime::v1 as cri;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, ResourceRequirements};

use crate::quantity::Quantity;

/// Labels kubelet puts on CRI objects (and what `crictl pods` shows).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotations on containers.
pub const ANN_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const ANN_TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";

/// Where kubelet keeps a pod's logs: `/var/log/pods/<namespace>_<name>_<uid>`.
pub fn pod_log_dir(root: &str, pod: &Pod) -> String {
    let (ns, name, uid) = ids(pod);
    format!("{}/{ns}_{name}_{uid}", root.trim_end_matches('/'))
}

pub fn ids(pod: &Pod) -> (&str, &str, &str) {
    let m = &pod.metadata;
    (m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or(""), m.uid.as_deref().unwrap_or(""))
}

/// The QoS class of a pod, as the API defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
) -> Option<Quantity> {
    map.and_then(|m| m.get(key)).and_then(|q| Quantity::parse(&q.0).ok())
}

/// Requests, defaulted from limits where unset (as the API server defaults them).
fn request(r: Option<&ResourceRequirements>, key: &str) -> Option<Quantity> {
    let r = r?;
    quantity(r.requests.as_ref(), key).or_else(|| quantity(r.limits.as_ref(), key))
}

fn limit(r: Option<&ResourceRequirements>, key: &str) -> Option<Quantity> {
    quantity(r?.limits.as_ref(), key)
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
}

pub fn qos_class(pod: &Pod) -> QosClass {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(pod) {
        let r = c.resources.as_ref();
        for key in ["cpu", "memory"] {
            let (req, lim) = (request(r, key), limit(r, key));
            if req.is_some_and(|q| q.units() != 0 || q.millis() != 0) || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (Some(rq), Some(l)) if rq == l || rq.millis() == l.millis() => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
const CPU_PERIOD: i64 = 100_000;
const MIN_QUOTA: i64 = 1000;

/// A container's Linux resources, as kubelet derives them: shares from the CPU request, a CFS
/// quota from the CPU limit, the memory limit, and an OOM score by QoS class.
pub fn container_resources(c: &Container, qos: QosClass, memory_capacity: i64) -> cri::LinuxContainerResources {
    let r = c.resources.as_ref();
    let cpu_request = request(r, "cpu").map(|q| q.millis());
    let cpu_shares = cpu_request.map_or(MIN_SHARES, |m| (m * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES));
    let (cpu_period, cpu_quota) = match limit(r, "cpu").map(|q| q.millis()) {
        Some(m) => (CPU_PERIOD, (m * CPU_PERIOD / 1000).max(MIN_QUOTA)),
        None => (0, 0),
    };
    let memory_limit_in_bytes = limit(r, "memory").map_or(0, |q| q.units());
    let oom_score_adj = match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let req = request(r, "memory").map_or(0, |q| q.units());
            let adj = if memory_capacity > 0 { 1000 - (1000 * req) / memory_capacity } else { 1000 };
            adj.clamp(3, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes,
        oom_score_adj,
        ..Default::default()
    }
}

/// What environment sources say (configMaps, secrets) and the pod's runtime facts.
pub trait EnvSources: Send + Sync {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    fn pod_ip(&self) -> Option<String>;
    fn host_ip(&self) -> Option<String>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("env {var}: {source_kind} {name:?} not found")]
    MissingSource { var: String, source_kind: &'static str, name: String },
    #[error("env {var}: key {key:?} not found in {source_kind} {name:?}")]
    MissingKey { var: String, source_kind: &'static str, name: String, key: String },
    #[error("env {var}: unsupported field path {path:?}")]
    FieldPath { var: String, path: String },
    #[error("env {var}: unsupported resource {resource:?}")]
    Resource { var: String, resource: String },
}

/// `$(VAR)` references replaced from `env`; `$$` is a literal `$`; unknown references stay.
pub fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if env.contains_key(&inner[..end]) => {
                    out.push_str(&env[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 2 + end + 1]);
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a fieldRef path (`metadata.name`, `status.podIP`, `metadata.labels['k']`…);
/// `var` names the requester in errors.
pub(crate) fn field_ref(pod: &Pod, src: &dyn EnvSources, var: &str, path: &str) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let v = match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => src.pod_ip().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => src.host_ip().unwrap_or_default(),
        p => keyed("metadata.labels['", m.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", m.annotations.as_ref()))
            .ok_or_else(|| EnvError::FieldPath { var: var.into(), path: p.into() })?,
    };
    Ok(v)
}

fn resource_ref(c: &Container, var: &str, resource: &str, divisor: Option<&str>) -> Result<String, EnvError> {
    let r = c.resources.as_ref();
    let bad = || EnvError::Resource { var: var.into(), resource: resource.into() };
    let (kind, key) = resource.split_once('.').ok_or_else(bad)?;
    let q = match kind {
        "limits" => limit(r, key),
        "requests" => request(r, key),
        _ => return Err(bad()),
    };
    let divisor = divisor.and_then(|d| Quantity::parse(d).ok());
    // Unset limits fall back to the node's allocatable in kubelet; report 0 here rather than guess.
    let Some(q) = q else { return Ok("0".into()) };
    Ok(match (key, divisor) {
        ("cpu", Some(d)) => ((q.millis() + d.millis() - 1) / d.millis().max(1)).to_string(),
        ("cpu", None) => ((q.millis() + 999) / 1000).to_string(),
        (_, Some(d)) => ((q.units() + d.units() - 1) / d.units().max(1)).to_string(),
        (_, None) => q.units().to_string(),
    })
}

/// The container's environment in order: envFrom sources first, then env (later names win),
/// each value expanded against what came before.
pub fn container_env(pod: &Pod, c: &Container, src: &dyn EnvSources) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let set = |k: String, v: String, order: &mut Vec<String>, values: &mut HashMap<String, String>| {
        if !values.contains_key(&k) {
            order.push(k.clone());
        }
        values.insert(k, v);
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(cm) = &from.config_map_ref {
            ("configMap", cm.name.clone(), cm.optional.unwrap_or(false), src.config_map(ns, &cm.name))
        } else if let Some(s) = &from.secret_ref {
            ("secret", s.name.clone(), s.optional.unwrap_or(false), src.secret(ns, &s.name))
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(format!("{prefix}{k}"), v, &mut order, &mut values);
                }
            }
            None if optional => {}
            None => return Err(EnvError::MissingSource { var: "envFrom".into(), source_kind: kind, name }),
        }
    }
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &values),
            (None, None) => String::new(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, src, name, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_ref(c, name, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))?
                } else if let Some(k) = &from.config_map_key_ref {
                    match keyed(src.config_map(ns, &k.name), name, "configMap", &k.name, &k.key, k.optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(k) = &from.secret_key_ref {
                    match keyed(src.secret(ns, &k.name), name, "secret", &k.name, &k.key, k.optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    String::new()
                }
            }
        };
        set(name.clone(), v, &mut order, &mut values);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = values.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect())
}

fn keyed(
    data: Option<BTreeMap<String, String>>,
    var: &str,
    kind: &'static str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, EnvError> {
    let optional = optional.unwrap_or(false);
    match data {
        None if optional => Ok(None),
        None => Err(EnvError::MissingSource { var: var.into(), source_kind: kind, name: name.into() }),
        Some(d) => match d.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => {
                Err(EnvError::MissingKey { var: var.into(), source_kind: kind, name: name.into(), key: key.into() })
            }
        },
    }
}

/// The registry host of an image reference, as Docker names it (`docker.io` for short names).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((host, _)) if host.contains('.') || host.contains(':') || host == "localhost" => host.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// Credentials for `image` from `.dockerconfigjson` / `.dockercfg` secret payloads, matching
/// the registry host (docker.io also as index.docker.io).
pub fn pull_auth(secrets: &[Vec<u8>], image: &str) -> Option<cri::AuthConfig> {
    let host = registry_of(image);
    let same = |key: &str| {
        let k = key.trim_start_matches("https://").trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        k == host || (host == "docker.io" && (k == "index.docker.io" || k == "registry-1.docker.io"))
    };
    for data in secrets {
        let v: serde_json::Value = serde_json::from_slice(data).ok()?;
        let auths = v.get("auths").unwrap_or(&v);
        let Some(obj) = auths.as_object() else { continue };
        for (key, entry) in obj {
            if !same(key) {
                continue;
            }
            let s = |f: &str| entry.get(f).and_then(|x| x.as_str()).unwrap_or_default().to_string();
            return Some(cri::AuthConfig {
                username: s("username"),
                password: s("password"),
                auth: s("auth"),
                server_address: key.clone(),
                identity_token: s("identitytoken"),
                registry_token: s("registrytoken"),
            });
        }
    }
    None
}

/// Command and args with `$(VAR)` expanded from the container's environment.
pub fn command_and_args(c: &Container, env: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let map: HashMap<String, String> = env.iter().cloned().collect();
    let ex = |v: &Option<Vec<String>>| v.iter().flatten().map(|s| expand(s, &map)).collect::<Vec<_>>();
    (ex(&c.command), ex(&c.args))
}

/// Labels identifying the pod on its CRI sandbox (pod labels plus kubelet's).
pub fn sandbox_labels(pod: &Pod) -> HashMap<String, String> {
    let (ns, name, uid) = ids(pod);
    let mut labels: HashMap<String, String> = pod.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    labels.insert(LABEL_POD_NAME.into(), name.into());
    labels.insert(LABEL_POD_NAMESPACE.into(), ns.into());
    labels.insert(LABEL_POD_UID.into(), uid.into());
    labels
}

/// Node-level inputs of the sandbox config.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Root of pod log directories (kubelet: /var/log/pods).
    pub log_root: String,
    /// Cluster DNS servers and search domain for dnsPolicy ClusterFirst.
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The pod cgroup parent (QoS hierarchy decided by the caller).
    pub cgroup_parent: String,
}

pub fn sandbox_config(pod: &Pod, attempt: u32, node: &NodeFacts) -> cri::PodSandboxConfig {
    let (ns, name, uid) = ids(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.chars().take(63).collect());
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0) || host_network)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let dns_config = dns_config(&spec, ns, node);
    let psc = spec.security_context.clone().unwrap_or_default();
    let mode = |host: Option<bool>| if host.unwrap_or(false) { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    let namespace_options = cri::NamespaceOption {
        network: mode(spec.host_network),
        pid: if spec.host_pid.unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else if spec.share_process_namespace.unwrap_or(false) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: mode(spec.host_ipc),
        ..Default::default()
    };
    let sysctls = psc.sysctls.iter().flatten().map(|s| (s.name.clone(), s.value.clone())).collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid: uid.into(), namespace: ns.into(), attempt }),
        hostname: if host_network { String::new() } else { hostname },
        log_directory: pod_log_dir(&node.log_root, pod),
        dns_config,
        port_mappings,
        labels: sandbox_labels(pod),
        annotations: pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(pod, &node.cgroup_parent),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options),
                run_as_user: psc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                seccomp: Some(seccomp(psc.seccomp_profile.as_ref())),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's cgroup under the QoS hierarchy, as kubelet's cgroupfs driver lays it out:
/// `<root>/pod<uid>` (Guaranteed), `<root>/burstable/pod<uid>`, `<root>/besteffort/pod<uid>`.
pub fn pod_cgroup(pod: &Pod, root: &str) -> String {
    if root.is_empty() {
        return String::new();
    }
    let uid = ids(pod).2;
    let root = root.trim_end_matches('/');
    match qos_class(pod) {
        QosClass::Guaranteed => format!("{root}/pod{uid}"),
        QosClass::Burstable => format!("{root}/burstable/pod{uid}"),
        QosClass::BestEffort => format!("{root}/besteffort/pod{uid}"),
    }
}

fn dns_config(spec: &k8s_openapi::api::core::v1::PodSpec, ns: &str, node: &NodeFacts) -> Option<cri::DnsConfig> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    // ClusterFirst on the host network, or without a cluster DNS, falls back to Default.
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    } && !node.cluster_dns.is_empty();
    let mut cfg = match policy {
        // Default: the node's resolv.conf (the runtime copies it when none is given).
        "Default" => return None,
        "ClusterFirstWithHostNet" | "ClusterFirst" if cluster_first => {
            let d = &node.cluster_domain;
            cri::DnsConfig {
                servers: node.cluster_dns.clone(),
                searches: vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
                options: vec!["ndots:5".into()],
            }
        }
        "None" => cri::DnsConfig::default(),
        _ => return None,
    };
    if let Some(extra) = &spec.dns_config {
        cfg.servers.extend(extra.nameservers.iter().flatten().cloned());
        cfg.searches.extend(extra.searches.iter().flatten().cloned());
        cfg.options.extend(extra.options.iter().flatten().map(|o| match &o.value {
            Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
            None => o.name.clone().unwrap_or_default(),
        }));
    }
    Some(cfg)
}

fn seccomp(p: Option<&k8s_openapi::api::core::v1::SeccompProfile>) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    match p.map(|p| p.type_.as_str()) {
        Some("Unconfined") => {
            cri::SecurityProfile { profile_type: ProfileType::Unconfined as i32, localhost_ref: String::new() }
        }
        Some("Localhost") => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: p.and_then(|p| p.localhost_profile.clone()).unwrap_or_default(),
        },
        // Kubernetes' own default is Unconfined; Berth runs RuntimeDefault unless asked (as
        // kubelet does with SeccompDefault enabled, the default since 1.27).
        _ => cri::SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: String::new() },
    }
}

/// Inputs of one container's config besides the pod.
pub struct ContainerInput<'a> {
    pub container: &'a Container,
    pub restart_count: u32,
    pub env: &'a [(String, String)],
    pub mounts: Vec<cri::Mount>,
    pub image: String,
    pub qos: QosClass,
    pub memory_capacity: i64,
}

pub fn container_config(pod: &Pod, input: &ContainerInput<'_>) -> cri::ContainerConfig {
    let c = input.container;
    let (command, args) = command_and_args(c, input.env);
    let mut labels = HashMap::new();
    let (ns, name, uid) = ids(pod);
    labels.insert(LABEL_POD_NAME.to_string(), name.to_string());
    labels.insert(LABEL_POD_NAMESPACE.to_string(), ns.to_string());
    labels.insert(LABEL_POD_UID.to_string(), uid.to_string());
    labels.insert(LABEL_CONTAINER_NAME.to_string(), c.name.clone());
    let termination_path = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    let annotations = HashMap::from([
        (ANN_RESTART_COUNT.to_string(), input.restart_count.to_string()),
        (ANN_TERMINATION_MESSAGE_PATH.to_string(), termination_path),
    ]);
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let sandbox = sandbox_config(pod, 0, &NodeFacts::default());
    let namespace_options = sandbox.linux.and_then(|l| l.security_context).and_then(|s| s.namespace_options);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt: input.restart_count }),
        image: Some(cri::ImageSpec {
            image: input.image.clone(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: input
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue { key: key.clone(), value: value.clone().into_bytes() })
            .collect(),
        mounts: input.mounts.clone(),
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, input.restart_count),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(container_resources(c, input.qos, input.memory_capacity)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    add_ambient_capabilities: Vec::new(),
                }),
                privileged: sc.privileged.unwrap_or(false),
                namespace_options,
                run_as_user: sc.run_as_user.or(psc.run_as_user).map(|value| cri::Int64Value { value }),
                run_as_group: sc.run_as_group.or(psc.run_as_group).map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                // As kubelet: only an explicit allowPrivilegeEscalation: false sets no_new_privs.
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                seccomp: Some(seccomp(sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()))),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
