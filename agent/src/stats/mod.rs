//! The kubelet's resource APIs: `/stats/summary` (the Summary API's JSON: node cpu, memory,
//! network, fs, runtime.imageFs, rlimit; per pod its containers' cpu, memory, rootfs and logs,
//! and the pod's cpu, memory, volumes and ephemeral storage) and `/metrics/resource`
//! (`prometheus`). Pods and containers come from CRI ListPodSandboxStats/ListContainerStats,
//! the node from the host (`host`). A [`Snapshot`] is gathered once per request; rendering it is
//! pure. `usageNanoCores` needs two readings: the previous one is kept in [`Rates`].

pub mod host;
pub mod prometheus;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_proto::runtime::v1 as cri;
use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::cri::Runtime;
use crate::spec;

/// One running container's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSample {
    pub name: String,
    pub start_ns: i64,
    pub ts_ns: i64,
    pub cpu_ns: u64,
    pub working_set: u64,
    pub usage: u64,
    pub rootfs_used: u64,
    pub rootfs_inodes: u64,
    pub logs_used: u64,
    pub logs_inodes: u64,
}

/// One pod's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSample {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub start_time: Option<String>,
    pub ts_ns: i64,
    pub cpu_ns: u64,
    pub working_set: u64,
    pub usage: u64,
    pub processes: Option<u64>,
    pub containers: Vec<ContainerSample>,
    /// (volume name, bytes, inodes)
    pub volumes: Vec<(String, u64, u64)>,
}

/// Everything one request reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub node_name: String,
    pub ts_ns: i64,
    pub boot_time: Option<String>,
    pub cpu_ns: Option<u64>,
    pub memory: Option<host::Memory>,
    pub interfaces: Vec<host::Interface>,
    pub fs: Option<host::Fs>,
    /// The image filesystem: statvfs of its mount point, used bytes and inodes from CRI.
    pub image_fs: Option<host::Fs>,
    pub image_fs_used: Option<(u64, u64)>,
    pub rlimit: (Option<u64>, Option<u64>),
    pub pods: Vec<PodSample>,
    /// A CRI stats call failed (`resource_scrape_error`).
    pub scrape_error: bool,
}

/// Where to look on the host.
pub struct Paths<'a> {
    pub proc_root: &'a Path,
    pub root_dir: &'a Path,
    pub log_root: &'a Path,
}

fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn rfc3339_ns(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn u(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map_or(0, |v| v.value)
}

/// Gathers the node's and its pods' figures now.
pub async fn collect<R: Runtime>(
    rt: &R,
    node_name: &str,
    pods: &[k8s_openapi::api::core::v1::Pod],
    paths: &Paths<'_>,
) -> Snapshot {
    let mut snap = Snapshot { node_name: node_name.to_string(), ts_ns: now_ns(), ..Default::default() };
    snap.cpu_ns = host::cpu_usage_nanos(paths.proc_root);
    snap.memory = host::memory(paths.proc_root);
    snap.interfaces = host::interfaces(paths.proc_root);
    snap.fs = host::statvfs(paths.root_dir);
    snap.rlimit = host::rlimit(paths.proc_root);
    snap.boot_time = std::fs::read_to_string(paths.proc_root.join("stat"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<i64>().ok()))
        .map(|s| rfc3339_ns(s * 1_000_000_000));
    match rt.image_fs_info().await {
        Ok(info) => {
            if let Some(f) = info.image_filesystems.first() {
                snap.image_fs_used = Some((u(&f.used_bytes), u(&f.inodes_used)));
                snap.image_fs = f.fs_id.as_ref().and_then(|id| host::statvfs(Path::new(&id.mountpoint)));
            }
        }
        Err(e) => tracing::debug!(error = %e, "ImageFsInfo"),
    }
    let (containers, sandboxes, listed) =
        (rt.list_container_stats().await, rt.list_pod_sandbox_stats().await, rt.list_containers(HashMap::new()).await);
    snap.scrape_error = containers.is_err() || listed.is_err();
    let (containers, sandboxes, listed) =
        (containers.unwrap_or_default(), sandboxes.unwrap_or_default(), listed.unwrap_or_default());
    let running: HashMap<&str, &cri::Container> = listed
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| (c.id.as_str(), c))
        .collect();
    for pod in pods {
        snap.pods.push(pod_sample(pod, &containers, &sandboxes, &running, paths));
    }
    snap
}

fn pod_sample(
    pod: &k8s_openapi::api::core::v1::Pod,
    containers: &[cri::ContainerStats],
    sandboxes: &[cri::PodSandboxStats],
    running: &HashMap<&str, &cri::Container>,
    paths: &Paths<'_>,
) -> PodSample {
    let (ns, name, uid) = spec::ids(pod);
    let mut p =
        PodSample { namespace: ns.into(), name: name.into(), uid: uid.into(), ts_ns: now_ns(), ..Default::default() };
    p.start_time =
        pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_rfc3339_opts(SecondsFormat::Secs, true));
    let log_dir = PathBuf::from(spec::pod_log_dir(&paths.log_root.to_string_lossy(), pod));
    let mut sandbox_ids = HashSet::new();
    for c in containers {
        let Some(a) = &c.attributes else { continue };
        let Some(info) = running.get(a.id.as_str()) else { continue };
        if a.labels.get(spec::LABEL_POD_UID).map(String::as_str) != Some(uid) {
            continue;
        }
        sandbox_ids.insert(info.pod_sandbox_id.clone());
        let cname = a.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let (cpu, mem, rootfs) =
            (c.cpu.unwrap_or_default(), c.memory.unwrap_or_default(), c.writable_layer.clone().unwrap_or_default());
        let (logs_used, logs_inodes) = host::disk_usage(&log_dir.join(&cname));
        p.containers.push(ContainerSample {
            name: cname,
            start_ns: info.created_at,
            ts_ns: if cpu.timestamp > 0 { cpu.timestamp } else { p.ts_ns },
            cpu_ns: u(&cpu.usage_core_nano_seconds),
            working_set: u(&mem.working_set_bytes),
            usage: u(&mem.usage_bytes),
            rootfs_used: u(&rootfs.used_bytes),
            rootfs_inodes: u(&rootfs.inodes_used),
            logs_used,
            logs_inodes,
        });
    }
    p.containers.sort_by(|a, b| a.name.cmp(&b.name));
    let sandbox = sandboxes
        .iter()
        .filter(|s| s.attributes.as_ref().and_then(|a| a.metadata.as_ref()).is_some_and(|m| m.uid == uid))
        .find(|s| sandbox_ids.is_empty() || s.attributes.as_ref().is_some_and(|a| sandbox_ids.contains(&a.id)));
    match sandbox.and_then(|s| s.linux.as_ref()) {
        Some(l) => {
            let (cpu, mem) = (l.cpu.unwrap_or_default(), l.memory.unwrap_or_default());
            (p.cpu_ns, p.working_set, p.usage) =
                (u(&cpu.usage_core_nano_seconds), u(&mem.working_set_bytes), u(&mem.usage_bytes));
            p.processes = l.process.as_ref().map(|x| u(&x.process_count));
        }
        None => {
            p.cpu_ns = p.containers.iter().map(|c| c.cpu_ns).sum();
            p.working_set = p.containers.iter().map(|c| c.working_set).sum();
            p.usage = p.containers.iter().map(|c| c.usage).sum();
        }
    }
    let vol_root = paths.root_dir.join("pods").join(uid).join("volumes");
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter(|v| v.host_path.is_none()) {
        let kind = std::fs::read_dir(&vol_root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|k| k.path().join(&v.name))
            .find(|p| p.exists());
        let (bytes, inodes) = kind.map(|d| host::disk_usage(&d)).unwrap_or((0, 0));
        p.volumes.push((v.name.clone(), bytes, inodes));
    }
    p
}

/// Previous CPU readings, for `usageNanoCores`.
#[derive(Default)]
pub struct Rates {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl Rates {
    /// Rates of `readings` (key, time ns, cumulative CPU ns) against the previous call's; the
    /// readings replace the previous ones (so gone pods are forgotten).
    pub fn update(&self, readings: &[(String, i64, u64)]) -> HashMap<String, u64> {
        let mut last = self.last.lock().expect("rates");
        let mut out = HashMap::new();
        for (key, ts, cum) in readings {
            if let Some((pts, pcum)) = last.get(key) {
                if ts > pts && cum >= pcum {
                    out.insert(key.clone(), ((cum - pcum) as u128 * 1_000_000_000 / (ts - pts) as u128) as u64);
                }
            }
        }
        *last = readings.iter().map(|(k, t, c)| (k.clone(), (*t, *c))).collect();
        out
    }
}

fn cpu_json(ts: &str, cum: u64, rate: Option<&u64>) -> Value {
    let mut v = json!({"time": ts, "usageCoreNanoSeconds": cum});
    if let Some(r) = rate {
        v["usageNanoCores"] = json!(r);
    }
    v
}

fn fs_json(ts: &str, fs: Option<&host::Fs>, used: u64, inodes_used: u64) -> Value {
    let mut v = json!({"time": ts, "usedBytes": used, "inodesUsed": inodes_used});
    if let Some(f) = fs {
        v["availableBytes"] = json!(f.available);
        v["capacityBytes"] = json!(f.capacity);
        v["inodesFree"] = json!(f.inodes_free);
        v["inodes"] = json!(f.inodes);
    }
    v
}

/// The Summary API document.
pub fn summary(s: &Snapshot, rates: &Rates) -> Value {
    let mut readings: Vec<(String, i64, u64)> = Vec::new();
    if let Some(c) = s.cpu_ns {
        readings.push(("node".into(), s.ts_ns, c));
    }
    for p in &s.pods {
        readings.push((p.uid.clone(), p.ts_ns, p.cpu_ns));
        readings.extend(p.containers.iter().map(|c| (format!("{}/{}", p.uid, c.name), c.ts_ns, c.cpu_ns)));
    }
    let rate = rates.update(&readings);
    let ts = rfc3339_ns(s.ts_ns);
    json!({"node": node_json(s, &ts, &rate), "pods": s.pods.iter().map(|p| pod_json(s, p, &rate)).collect::<Vec<_>>()})
}

fn node_json(s: &Snapshot, ts: &str, rate: &HashMap<String, u64>) -> Value {
    let mut node = json!({"nodeName": s.node_name, "systemContainers": [], "fs": fs_json(ts, s.fs.as_ref(), s.fs.map_or(0, |f| f.used), s.fs.map_or(0, |f| f.inodes - f.inodes_free))});
    if let Some(b) = &s.boot_time {
        node["startTime"] = json!(b);
    }
    if let Some(c) = s.cpu_ns {
        node["cpu"] = cpu_json(ts, c, rate.get("node"));
    }
    if let Some(m) = s.memory {
        node["memory"] = json!({"time": ts, "availableBytes": m.available, "usageBytes": m.usage, "workingSetBytes": m.working_set, "rssBytes": m.rss, "pageFaults": m.page_faults, "majorPageFaults": m.major_page_faults});
    }
    let ifaces: Vec<Value> = s.interfaces.iter().map(|i| json!({"name": i.name, "rxBytes": i.rx_bytes, "rxErrors": i.rx_errors, "txBytes": i.tx_bytes, "txErrors": i.tx_errors})).collect();
    let mut net = json!({"time": ts, "interfaces": ifaces});
    if let Some(first) = ifaces.first().and_then(Value::as_object) {
        for (k, v) in first {
            net[k] = v.clone();
        }
    }
    node["network"] = net;
    if let Some((used, inodes)) = s.image_fs_used {
        let fs = fs_json(ts, s.image_fs.as_ref(), used, inodes);
        node["runtime"] = json!({"imageFs": fs, "containerFs": fs});
    }
    let mut rl = json!({"time": ts});
    if let Some(m) = s.rlimit.0 {
        rl["maxpid"] = json!(m);
    }
    if let Some(c) = s.rlimit.1 {
        rl["curproc"] = json!(c);
    }
    node["rlimit"] = rl;
    node
}

fn pod_json(s: &Snapshot, p: &PodSample, rate: &HashMap<String, u64>) -> Value {
    let ts = rfc3339_ns(p.ts_ns);
    let avail = s.memory.map(|m| m.available);
    let mem = |ws: u64, usage: u64| {
        let mut v = json!({"time": ts, "workingSetBytes": ws, "usageBytes": usage});
        if let Some(a) = avail {
            v["availableBytes"] = json!(a);
        }
        v
    };
    let image_fs = s.image_fs.as_ref();
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "startTime": rfc3339_ns(c.start_ns),
                "cpu": cpu_json(&rfc3339_ns(c.ts_ns), c.cpu_ns, rate.get(&format!("{}/{}", p.uid, c.name))),
                "memory": mem(c.working_set, c.usage),
                "rootfs": fs_json(&ts, image_fs, c.rootfs_used, c.rootfs_inodes),
                "logs": fs_json(&ts, s.fs.as_ref(), c.logs_used, c.logs_inodes),
            })
        })
        .collect();
    let volumes: Vec<Value> = p
        .volumes
        .iter()
        .map(|(n, b, i)| {
            let mut v = fs_json(&ts, s.fs.as_ref(), *b, *i);
            v["name"] = json!(n);
            v
        })
        .collect();
    let eph_used: u64 = p.containers.iter().map(|c| c.rootfs_used + c.logs_used).sum::<u64>()
        + p.volumes.iter().map(|v| v.1).sum::<u64>();
    let eph_inodes: u64 = p.containers.iter().map(|c| c.rootfs_inodes + c.logs_inodes).sum::<u64>()
        + p.volumes.iter().map(|v| v.2).sum::<u64>();
    let mut v = json!({
        "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
        "containers": containers,
        "cpu": cpu_json(&ts, p.cpu_ns, rate.get(&p.uid)),
        "memory": mem(p.working_set, p.usage),
        "network": {"time": ts, "interfaces": []},
        "volume": volumes,
        "ephemeral-storage": fs_json(&ts, s.fs.as_ref(), eph_used, eph_inodes),
    });
    if let Some(t) = &p.start_time {
        v["startTime"] = json!(t);
    }
    if let Some(n) = p.processes {
        v["process_stats"] = json!({"process_count": n});
    }
    v
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
