//! The Node this agent registers and keeps current: capacity and allocatable from the machine
//! and the reservations, addresses, node info, and conditions measured from the host
//! (MemoryPressure, DiskPressure, PIDPressure against the eviction thresholds; Ready from the
//! runtime). Gathering facts does the I/O; composing the objects is pure.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};

use crate::config::AgentConfig;
use crate::quantity::Quantity;

/// What the host looks like right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub internal_ip: Option<String>,
    pub cpus: u32,
    pub memory_total: i64,
    pub memory_available: i64,
    pub fs_total: i64,
    pub fs_available: i64,
    pub pids_max: i64,
    pub pids_used: i64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    /// `<runtime>://<version>` from CRI Version.
    pub runtime_version: String,
    /// Why the node is not ready (CRI Status conditions), None when it is.
    pub not_ready: Option<String>,
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn meminfo(key: &str, text: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<i64>().ok()))
        .unwrap_or(0)
        * 1024
}

/// The IPv4 address of the interface holding the default route, if any.
pub fn default_route_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
    })?;
    interface_ip(&iface)
}

fn interface_ip(iface: &str) -> Option<String> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned; fields are valid for its lifetime.
        unsafe {
            let a = &*cur;
            let name = std::ffi::CStr::from_ptr(a.ifa_name).to_string_lossy();
            if name == iface && !a.ifa_addr.is_null() && (*a.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
                found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string());
                break;
            }
            cur = a.ifa_next;
        }
    }
    // SAFETY: freeing the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(addrs) };
    found
}

impl HostFacts {
    /// Reads the machine (the runtime facts are filled in by the caller).
    pub fn gather(cfg: &AgentConfig) -> HostFacts {
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let (fs_total, fs_available) = statvfs(&cfg.root_dir).unwrap_or((0, 0));
        let os_image = read_trim("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            .unwrap_or_else(|| "Linux".into());
        let pids_used = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count()
                    as i64
            })
            .unwrap_or(0);
        HostFacts {
            hostname: read_trim("/proc/sys/kernel/hostname"),
            internal_ip: cfg.node_ip.clone().or_else(default_route_ip),
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            memory_total: meminfo("MemTotal:", &mem),
            memory_available: meminfo("MemAvailable:", &mem),
            fs_total,
            fs_available,
            pids_max: read_trim("/proc/sys/kernel/pid_max").parse().unwrap_or(32768),
            pids_used,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            runtime_version: String::new(),
            not_ready: Some("the container runtime has not been checked yet".into()),
        }
    }
}

/// ext2/3/4's "top of directory hierarchies" attribute (`chattr +T`; not in the libc crate).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Creates `dir` and asks ext2/3/4 to place each directory made in it (one per pod) in a
/// block group of its own choosing instead of next to `dir`, so that a burst of pods does not
/// pile its files into one group (see berth-runtime's `spread_subdirectories`: on ext4
/// without a journal every allocation skips the group's inodes freed in the last minute).
/// A hint: other filesystems refuse it, which is only logged.
pub fn spread_pod_directories(dir: &Path) {
    let spread = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let f = std::fs::File::open(dir)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`; FS_IOC_SETFLAGS reads it.
        if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } != 0
            || unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &(flags | FS_TOPDIR_FL)) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(e) = spread() {
        tracing::debug!(dir = %dir.display(), error = %e, "no block-group spreading hint on this filesystem");
    }
}

fn statvfs(p: &Path) -> Option<(i64, i64)> {
    let _ = std::fs::create_dir_all(p);
    let c = std::ffi::CString::new(p.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: statvfs fills a struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(((s.f_blocks * s.f_frsize) as i64, (s.f_bavail * s.f_frsize) as i64))
}

/// A threshold like "100Mi" or "10%" of `total`, in bytes.
fn threshold(spec: Option<&String>, total: i64) -> i64 {
    match spec {
        Some(s) if s.ends_with('%') => {
            s.trim_end_matches('%').parse::<f64>().map(|p| (total as f64 * p / 100.0) as i64).unwrap_or(0)
        }
        Some(s) => Quantity::parse(s).map(|q| q.units()).unwrap_or(0),
        None => 0,
    }
}

fn reserved(cfg: &AgentConfig, key: &str, millis: bool) -> i64 {
    [&cfg.system_reserved, &cfg.kube_reserved]
        .iter()
        .filter_map(|m| m.get(key))
        .filter_map(|v| Quantity::parse(v).ok())
        .map(|q| if millis { q.millis() } else { q.units() })
        .sum()
}

/// The eviction signal that crossed its hard threshold, if any: `memory.available` or
/// `nodefs.available`, with what is left.
pub fn eviction_signal(cfg: &AgentConfig, facts: &HostFacts) -> Option<(&'static str, i64)> {
    if facts.memory_total > 0
        && facts.memory_available < threshold(cfg.eviction_hard.get("memory.available"), facts.memory_total)
    {
        return Some(("memory", facts.memory_available));
    }
    if facts.fs_total > 0 && facts.fs_available < threshold(cfg.eviction_hard.get("nodefs.available"), facts.fs_total) {
        return Some(("ephemeral-storage", facts.fs_available));
    }
    None
}

pub fn node_name(cfg: &AgentConfig, facts: &HostFacts) -> String {
    cfg.node_name.clone().unwrap_or_else(|| facts.hostname.to_lowercase())
}

/// The Node as first registered: labels, taints, and its status.
pub fn node_object(cfg: &AgentConfig, facts: &HostFacts, now: DateTime<Utc>) -> Node {
    let name = node_name(cfg, facts);
    let mut labels: BTreeMap<String, String> = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        ),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    labels.extend(cfg.node_labels.clone());
    let taints: Vec<Taint> = cfg
        .register_with_taints
        .iter()
        .map(|t| Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone(), ..Default::default() })
        .collect();
    let mut node = Node::default();
    node.metadata.name = Some(name);
    node.metadata.labels = Some(labels);
    node.spec = Some(NodeSpec { taints: (!taints.is_empty()).then_some(taints), ..Default::default() });
    node.status = Some(node_status(cfg, facts, now));
    node
}

pub fn node_status(cfg: &AgentConfig, facts: &HostFacts, now: DateTime<Utc>) -> NodeStatus {
    let q = |v: String| Q(v);
    let mem_evict = threshold(cfg.eviction_hard.get("memory.available"), facts.memory_total);
    let fs_evict = threshold(cfg.eviction_hard.get("nodefs.available"), facts.fs_total);
    let capacity = BTreeMap::from([
        ("cpu".to_string(), q(facts.cpus.to_string())),
        ("memory".to_string(), q(format!("{}Ki", facts.memory_total / 1024))),
        ("pods".to_string(), q(cfg.max_pods.to_string())),
        ("ephemeral-storage".to_string(), q(format!("{}Ki", facts.fs_total / 1024))),
    ]);
    let cpu_alloc = (i64::from(facts.cpus) * 1000 - reserved(cfg, "cpu", true)).max(0);
    let mem_alloc = (facts.memory_total - reserved(cfg, "memory", false) - mem_evict).max(0);
    let fs_alloc = (facts.fs_total - reserved(cfg, "ephemeral-storage", false) - fs_evict).max(0);
    let allocatable = BTreeMap::from([
        ("cpu".to_string(), q(format!("{cpu_alloc}m"))),
        ("memory".to_string(), q(format!("{}Ki", mem_alloc / 1024))),
        ("pods".to_string(), q(cfg.max_pods.to_string())),
        ("ephemeral-storage".to_string(), q(format!("{}Ki", fs_alloc / 1024))),
    ]);
    let cond = |kind: &str, pressure: bool, reason_ok: &str, reason_bad: &str, message: String| NodeCondition {
        type_: kind.into(),
        status: if pressure { "True" } else { "False" }.into(),
        reason: Some(if pressure { reason_bad } else { reason_ok }.into()),
        message: Some(message),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    let pid_pressure = facts.pids_max > 0 && facts.pids_used * 10 > facts.pids_max * 9;
    let ready = NodeCondition {
        type_: "Ready".into(),
        status: if facts.not_ready.is_none() { "True" } else { "False" }.into(),
        reason: Some(if facts.not_ready.is_none() { "KubeletReady" } else { "KubeletNotReady" }.into()),
        message: Some(facts.not_ready.clone().unwrap_or_else(|| "berth-agent is posting ready status".into())),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    let conditions = vec![
        cond(
            "MemoryPressure",
            facts.memory_available < mem_evict,
            "KubeletHasSufficientMemory",
            "KubeletHasInsufficientMemory",
            format!("{} bytes available", facts.memory_available),
        ),
        cond(
            "DiskPressure",
            facts.fs_available < fs_evict,
            "KubeletHasNoDiskPressure",
            "KubeletHasDiskPressure",
            format!("{} bytes available", facts.fs_available),
        ),
        cond(
            "PIDPressure",
            pid_pressure,
            "KubeletHasSufficientPID",
            "KubeletHasInsufficientPID",
            format!("{} of {} pids in use", facts.pids_used, facts.pids_max),
        ),
        ready,
    ];
    let mut addresses = Vec::new();
    if let Some(ip) = &facts.internal_ip {
        addresses.push(NodeAddress { type_: "InternalIP".into(), address: ip.clone() });
    }
    addresses.push(NodeAddress { type_: "Hostname".into(), address: facts.hostname.clone() });
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(addresses),
        daemon_endpoints: Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
            kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: i32::from(cfg.port) }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: facts.runtime_version.clone(),
            kernel_version: facts.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            system_uuid: facts.machine_id.clone(),
        }),
        ..Default::default()
    }
}

/// Reported as the kubelet version: the API level the agent implements.
pub const KUBELET_VERSION: &str = "v1.32.0-berth";

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "Node-A".into(),
            internal_ip: Some("192.168.5.10".into()),
            cpus: 4,
            memory_total: 8 << 30,
            memory_available: 4 << 30,
            fs_total: 100 << 30,
            fs_available: 50 << 30,
            pids_max: 1000,
            pids_used: 100,
            runtime_version: "berth://0.1.0".into(),
            not_ready: None,
            ..Default::default()
        }
    }

    fn cond<'a>(st: &'a NodeStatus, kind: &str) -> &'a NodeCondition {
        st.conditions.as_ref().unwrap().iter().find(|c| c.type_ == kind).unwrap()
    }

    #[test]
    fn allocatable_subtracts_reservations_and_eviction() {
        let mut cfg = AgentConfig::default();
        cfg.system_reserved.insert("cpu".into(), "500m".into());
        cfg.kube_reserved.insert("memory".into(), "1Gi".into());
        let node = node_object(&cfg, &facts(), Utc::now());
        assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
        let st = node.status.unwrap();
        let alloc = st.allocatable.as_ref().unwrap();
        assert_eq!(alloc["cpu"].0, "3500m");
        assert_eq!(Quantity::parse(&alloc["memory"].0).unwrap().units(), (7 << 30) - (100 << 20));
        assert_eq!(st.capacity.as_ref().unwrap()["pods"].0, "110");
        assert_eq!(cond(&st, "Ready").status, "True");
        assert_eq!(cond(&st, "MemoryPressure").status, "False");
    }

    #[test]
    fn pressure_and_readiness_follow_the_measurements() {
        let cfg = AgentConfig::default();
        let mut f = facts();
        f.memory_available = 50 << 20;
        f.fs_available = 512 << 20;
        f.pids_used = 950;
        f.not_ready = Some("NetworkReady=false: no CNI config".into());
        let st = node_status(&cfg, &f, Utc::now());
        assert_eq!(cond(&st, "MemoryPressure").status, "True");
        assert_eq!(cond(&st, "DiskPressure").status, "True", "below 1 GiB free");
        assert_eq!(cond(&st, "PIDPressure").status, "True");
        let ready = cond(&st, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.message.as_deref()),
            ("False", Some("NetworkReady=false: no CNI config"))
        );
    }

    #[test]
    fn eviction_signals_follow_the_thresholds() {
        let cfg = AgentConfig::default();
        let mut f = facts();
        assert_eq!(eviction_signal(&cfg, &f), None);
        f.memory_available = 10 << 20;
        assert_eq!(eviction_signal(&cfg, &f), Some(("memory", 10 << 20)));
        f.memory_available = 4 << 30;
        f.fs_available = 100 << 20;
        assert_eq!(eviction_signal(&cfg, &f).map(|s| s.0), Some("ephemeral-storage"));
    }

    #[test]
    fn this_host_has_facts() {
        let f = HostFacts::gather(&AgentConfig { root_dir: std::env::temp_dir(), ..Default::default() });
        assert!(f.cpus >= 1 && f.memory_total > 0 && f.fs_total > 0 && !f.kernel.is_empty());
    }
}
