//! Derives the expectations a correct runtime must meet from an OCI spec, evaluated on the
//! host that will start the container (host namespace inodes and id maps are read here).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxCapabilities, LinuxResources, Mount, Spec};
use serde::Serialize;

use super::procfs::parse_id_map;
use super::schema::*;

/// Namespace kinds as `/proc/self/ns` names them, with their OCI spellings.
const NS_KINDS: [(&str, &str); 8] = [
    ("pid", "pid"),
    ("net", "network"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("mnt", "mount"),
    ("user", "user"),
    ("cgroup", "cgroup"),
    ("time", "time"),
];

/// The devices every Linux container gets (runtime-spec "Default Devices").
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

const PAGE_SIZE: i64 = 4096;

/// Errors while deriving expectations from a spec.
#[derive(Debug, thiserror::Error)]
pub enum FromSpecError {
    #[error("cannot stat namespace {path}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {reason}")]
    IdMap { path: &'static str, reason: String },
}

/// Inodes of the calling process's namespaces, keyed by `/proc/self/ns` name.
pub fn host_namespace_inodes() -> BTreeMap<String, u64> {
    NS_KINDS
        .iter()
        .filter_map(|(kind, _)| {
            let meta = fs::metadata(format!("/proc/self/ns/{kind}")).ok()?;
            Some((kind.to_string(), meta.ino()))
        })
        .collect()
}

/// The serde name of an oci-spec enum value (`CAP_KILL`, `RLIMIT_NOFILE`, `network`).
fn serde_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

impl Expectations {
    /// What `spec` promises, as seen from inside the container. Call it on the host (in the
    /// namespaces the runtime will be started from).
    ///
    /// Capabilities are the sets after the final `execve`: for uid 0 permitted and effective
    /// are bounding ∪ inheritable; for other users they are the ambient set; ambient keeps only
    /// capabilities also in inheritable and permitted. Mount fstypes are omitted for bind and
    /// v1/hybrid cgroup mounts (a tmpfs of hierarchies, whose `ro` applies to the hierarchies).
    pub fn from_spec(spec: &Spec) -> Result<Expectations, FromSpecError> {
        let mut e = Expectations {
            hostname: spec.hostname().clone(),
            domainname: spec.domainname().clone(),
            ..Default::default()
        };
        if let Some(root) = spec.root() {
            e.rootfs_readonly = Some(root.readonly().unwrap_or(false));
        }
        if let Some(mounts) = spec.mounts() {
            e.mounts = mounts.iter().map(mount_expectation).collect();
        }
        if let Some(process) = spec.process() {
            let user = process.user();
            e.uid = Some(user.uid());
            e.gid = Some(user.gid());
            e.umask = user.umask();
            e.additional_gids = Some(user.additional_gids().clone().unwrap_or_default());
            e.cwd = Some(process.cwd().display().to_string());
            e.env = process.env().clone().unwrap_or_default();
            e.no_new_privs = Some(process.no_new_privileges().unwrap_or(false));
            e.oom_score_adj = process.oom_score_adj();
            e.capabilities = process.capabilities().as_ref().map(|caps| exec_capabilities(caps, user.uid() == 0));
            e.rlimits = process
                .rlimits()
                .iter()
                .flatten()
                .map(|l| RlimitExpectation { kind: serde_name(&l.typ()), soft: Some(l.soft()), hard: Some(l.hard()) })
                .collect();
        }
        if let Some(linux) = spec.linux() {
            e.namespaces = namespace_expectations(linux.namespaces().as_deref().unwrap_or(&[]))?;
            let userns = e.namespaces.get("user").is_some_and(|n| !n.shared);
            e.uid_map = Some(id_map(userns, linux.uid_mappings(), "/proc/self/uid_map")?);
            e.gid_map = Some(id_map(userns, linux.gid_mappings(), "/proc/self/gid_map")?);
            e.seccomp_mode = Some(if linux.seccomp().is_some() { 2 } else { 0 });
            e.masked_paths = linux.masked_paths().clone().unwrap_or_default();
            e.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
            e.sysctls = linux.sysctl().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
            e.devices = device_expectations(linux.devices().as_deref().unwrap_or(&[]));
            e.cgroup = linux.resources().as_ref().map(cgroup_expectations).unwrap_or_default();
            if let Some(prop) = linux.rootfs_propagation() {
                e.mounts.push(MountExpectation {
                    destination: "/".into(),
                    propagation: Some(prop.trim_start_matches('r').to_string()),
                    ..Default::default()
                });
            }
        }
        Ok(e)
    }
}

fn namespace_expectations(
    spec_ns: &[oci_spec::runtime::LinuxNamespace],
) -> Result<BTreeMap<String, NamespaceExpectation>, FromSpecError> {
    let host = host_namespace_inodes();
    let mut out = BTreeMap::new();
    for (kind, oci) in NS_KINDS {
        let Some(&host_inode) = host.get(kind) else {
            continue;
        };
        let wanted = spec_ns.iter().find(|n| serde_name(&n.typ()) == oci);
        let expectation = match wanted {
            None => NamespaceExpectation { host_inode, shared: true },
            Some(ns) => match ns.path() {
                None => NamespaceExpectation { host_inode, shared: false },
                Some(path) => {
                    let meta =
                        fs::metadata(path).map_err(|source| FromSpecError::Namespace { path: path.clone(), source })?;
                    NamespaceExpectation { host_inode: meta.ino(), shared: true }
                }
            },
        };
        out.insert(kind.to_string(), expectation);
    }
    Ok(out)
}

fn id_map(
    userns: bool,
    mappings: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>,
    host_file: &'static str,
) -> Result<Vec<IdMapping>, FromSpecError> {
    if userns {
        return Ok(mappings
            .iter()
            .flatten()
            .map(|m| IdMapping { container_id: m.container_id(), host_id: m.host_id(), size: m.size() })
            .collect());
    }
    let text =
        fs::read_to_string(host_file).map_err(|e| FromSpecError::IdMap { path: host_file, reason: e.to_string() })?;
    parse_id_map(&text).map_err(|reason| FromSpecError::IdMap { path: host_file, reason })
}

/// The capability sets after the container process's `execve` (see `capabilities(7)`).
fn exec_capabilities(caps: &LinuxCapabilities, root: bool) -> CapabilityExpectation {
    let set = |s: &Option<oci_spec::runtime::Capabilities>| -> BTreeSet<String> {
        s.iter().flatten().map(serde_name).collect()
    };
    let bounding = set(caps.bounding());
    let inheritable = set(caps.inheritable());
    let permitted = set(caps.permitted());
    let ambient: BTreeSet<String> =
        set(caps.ambient()).into_iter().filter(|c| inheritable.contains(c) && permitted.contains(c)).collect();
    let after_exec: BTreeSet<String> =
        if root { bounding.union(&inheritable).cloned().collect() } else { ambient.clone() };
    let list = |s: &BTreeSet<String>| Some(s.iter().cloned().collect::<Vec<_>>());
    CapabilityExpectation {
        bounding: list(&bounding),
        effective: list(&after_exec),
        inheritable: list(&inheritable),
        permitted: list(&after_exec),
        ambient: list(&ambient),
    }
}

fn mount_expectation(m: &Mount) -> MountExpectation {
    let options = m.options().clone().unwrap_or_default();
    let is_bind = options.iter().any(|o| o == "bind" || o == "rbind");
    let is_cgroup = matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2"));
    let fstype = if is_cgroup && host_is_cgroup2_only() {
        Some("cgroup2".to_string())
    } else {
        m.typ().clone().filter(|t| !is_bind && !is_cgroup && !matches!(t.as_str(), "bind" | "none"))
    };
    // On v1 and hybrid hosts runtimes mount a writable tmpfs at /sys/fs/cgroup and make only
    // the hierarchies below it read-only.
    let keep_ro = !is_cgroup || host_is_cgroup2_only();
    let propagation = options.iter().find_map(|o| match o.as_str() {
        "shared" | "rshared" => Some("shared"),
        "slave" | "rslave" => Some("slave"),
        "private" | "rprivate" => Some("private"),
        "unbindable" | "runbindable" => Some("unbindable"),
        _ => None,
    });
    MountExpectation {
        destination: m.destination().display().to_string(),
        fstype,
        source: None,
        options: options
            .iter()
            .filter(|o| matches!(o.as_str(), "nosuid" | "nodev" | "noexec") || (o.as_str() == "ro" && keep_ro))
            .cloned()
            .collect(),
        propagation: propagation.map(String::from),
    }
}

/// Whether the host runs the unified cgroup v2 hierarchy only (no v1 controllers).
fn host_is_cgroup2_only() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn device_expectations(spec_devices: &[oci_spec::runtime::LinuxDevice]) -> Vec<DeviceExpectation> {
    let mut out: Vec<DeviceExpectation> = DEFAULT_DEVICES
        .iter()
        .map(|&(path, major, minor)| DeviceExpectation {
            path: path.into(),
            kind: Some("c".into()),
            major: Some(major),
            minor: Some(minor),
            mode: Some(0o666),
            ..Default::default()
        })
        .collect();
    for d in spec_devices {
        let path = d.path().display().to_string();
        out.retain(|e| e.path != path);
        out.push(DeviceExpectation {
            path,
            kind: Some(serde_name(&d.typ())),
            major: u64::try_from(d.major()).ok(),
            minor: u64::try_from(d.minor()).ok(),
            mode: d.file_mode().map(|m| m & 0o7777),
            uid: d.uid(),
            gid: d.gid(),
        });
    }
    out
}

fn file(path: &str, value: impl ToString) -> CgroupFile {
    CgroupFile { path: path.into(), value: value.to_string() }
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

fn cgroup_expectations(res: &LinuxResources) -> Vec<CgroupExpectation> {
    let mut out = Vec::new();
    let mut push = |any_of: Vec<CgroupFile>| out.push(CgroupExpectation { any_of, optional: false });
    if let Some(mem) = res.memory().as_ref().and_then(|m| m.limit()).filter(|l| *l > 0) {
        let rounded = mem / PAGE_SIZE * PAGE_SIZE;
        push(vec![file("memory.max", rounded), file("memory/memory.limit_in_bytes", rounded)]);
    }
    if let Some(pids) = res.pids().as_ref().map(|p| p.limit()) {
        let value = if pids > 0 { pids.to_string() } else { "max".into() };
        push(vec![file("pids.max", &value), file("pids/pids.max", &value)]);
    }
    if let Some(cpu) = res.cpu() {
        if let Some(quota) = cpu.quota() {
            let period = cpu.period().unwrap_or(100_000);
            push(vec![file("cpu.max", format!("{} {period}", limit(quota))), file("cpu/cpu.cfs_quota_us", quota)]);
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            let weight = 1 + (shares.saturating_sub(2) * 9999) / 262_142;
            push(vec![file("cpu.weight", weight), file("cpu/cpu.shares", shares)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bundle;

    #[test]
    fn default_spec_expectations() {
        let e = Expectations::from_spec(&Bundle::default_spec(&["/bin/true"])).unwrap();
        assert_eq!(e.hostname.as_deref(), Some("berth"));
        assert_eq!(e.rootfs_readonly, Some(true));
        assert!(!e.namespaces["pid"].shared);
        assert!(!e.namespaces["net"].shared);
        assert!(!e.namespaces["mnt"].shared);
        assert!(e.namespaces["user"].shared);
        let caps = e.capabilities.unwrap();
        let three = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"].map(String::from);
        assert_eq!(caps.effective.unwrap(), three);
        assert_eq!(caps.permitted.unwrap(), three);
        assert_eq!(caps.bounding.unwrap(), three);
        assert_eq!(caps.ambient.unwrap(), Vec::<String>::new(), "no inheritable, so no ambient");
        assert_eq!(e.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(e.additional_gids, Some(vec![]));
        let sys = e.mounts.iter().find(|m| m.destination == "/sys").unwrap();
        assert_eq!(sys.fstype.as_deref(), Some("sysfs"));
        assert!(sys.options.contains(&"ro".to_string()));
        let cg = e.mounts.iter().find(|m| m.destination == "/sys/fs/cgroup").unwrap();
        assert_eq!(cg.fstype, None);
        assert_eq!(e.devices.len(), 6);
        assert_eq!(e.seccomp_mode, Some(0));
        assert_eq!(e.masked_paths.len(), 10);
    }

    #[test]
    fn non_root_gets_only_ambient_caps_after_exec() {
        let caps: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "ambient": ["CAP_KILL", "CAP_CHOWN"]
        }))
        .unwrap();
        let e = exec_capabilities(&caps, false);
        assert_eq!(e.ambient.unwrap(), ["CAP_KILL"]);
        assert_eq!(e.effective.unwrap(), ["CAP_KILL"]);
        let root = exec_capabilities(&caps, true);
        assert_eq!(root.permitted.unwrap(), ["CAP_CHOWN", "CAP_KILL"]);
    }

    #[test]
    fn cgroup_limits_map_to_v1_and_v2_files() {
        let res: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 104857601},
            "pids": {"limit": 10},
            "cpu": {"quota": 50000, "period": 100000, "shares": 1024}
        }))
        .unwrap();
        let out = cgroup_expectations(&res);
        assert_eq!(out[0].any_of[0], file("memory.max", 104857600));
        assert_eq!(out[1].any_of[1], file("pids/pids.max", 10));
        assert_eq!(out[2].any_of[0], file("cpu.max", "50000 100000"));
        assert_eq!(out[3].any_of[0], file("cpu.weight", 39));
    }
}
