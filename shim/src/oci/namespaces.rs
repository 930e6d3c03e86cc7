//! Which namespaces a container joins (the pod infra process's network/IPC/UTS/PID, a target
//! container's PID) or creates, the infra process's own namespaces, and the pod's sysctls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_proto::runtime::v1::{NamespaceMode, NamespaceOption};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::{Ctx, SpecError};

/// Namespace files of the pod's infra process, for containers to join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
    /// Joined only when the pod has a user namespace of its own.
    pub user: Option<PathBuf>,
}

impl PodNamespaces {
    /// The namespaces of process `pid` (/proc/<pid>/ns/...).
    pub fn of_pid(pid: u32) -> Self {
        let p = |n: &str| Some(PathBuf::from(format!("/proc/{pid}/ns/{n}")));
        PodNamespaces { network: p("net"), ipc: p("ipc"), uts: p("uts"), pid: p("pid"), user: p("user") }
    }
}

/// One id range of a pod's user namespace: container ids 0..length are host ids
/// host_id..host_id+length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host_id: u32,
    pub length: u32,
}

/// A pod's own user namespace (userns_options mode POD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNs {
    pub uids: IdRange,
    pub gids: IdRange,
}

impl UserNs {
    pub fn uid_mappings(&self) -> Vec<oci_spec::runtime::LinuxIdMapping> {
        vec![id_mapping(self.uids)]
    }

    pub fn gid_mappings(&self) -> Vec<oci_spec::runtime::LinuxIdMapping> {
        vec![id_mapping(self.gids)]
    }
}

fn id_mapping(r: IdRange) -> oci_spec::runtime::LinuxIdMapping {
    oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(r.host_id)
        .size(r.length)
        .build()
        .expect("every field is set")
}

pub(crate) fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path.map(Path::to_path_buf));
    n
}

/// The modes in `opts`, checked: network and IPC are POD or NODE; the user namespace is the
/// host's (NODE) or the pod's own (POD, with exactly one uid and one gid range from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Modes {
    pub network: NamespaceMode,
    pub ipc: NamespaceMode,
    pub pid: NamespaceMode,
    pub user: Option<UserNs>,
}

pub(crate) fn modes(ctx: &Ctx, opts: Option<&NamespaceOption>) -> Result<Modes, SpecError> {
    let field = "linux.security_context.namespace_options";
    let default = NamespaceOption::default();
    let opts = opts.unwrap_or(&default);
    let mode = |name: &str, v: i32| {
        NamespaceMode::try_from(v)
            .map_err(|_| ctx.invalid(&format!("{field}.{name}"), format!("unknown namespace mode {v}")))
    };
    let network = mode("network", opts.network)?;
    let ipc = mode("ipc", opts.ipc)?;
    let pid = mode("pid", opts.pid)?;
    for (name, m) in [("network", network), ("ipc", ipc)] {
        if !matches!(m, NamespaceMode::Pod | NamespaceMode::Node) {
            return Err(
                ctx.invalid(&format!("{field}.{name}"), format!("{} is not supported (POD or NODE)", m.as_str_name()))
            );
        }
    }
    let user = match &opts.userns_options {
        None => None,
        Some(u) => match NamespaceMode::try_from(u.mode) {
            Ok(NamespaceMode::Node) => None,
            Ok(NamespaceMode::Pod) => Some(UserNs {
                uids: id_range(ctx, &format!("{field}.userns_options.uids"), &u.uids)?,
                gids: id_range(ctx, &format!("{field}.userns_options.gids"), &u.gids)?,
            }),
            Ok(m) => {
                return Err(ctx.invalid(
                    &format!("{field}.userns_options.mode"),
                    format!("{} is not supported (POD or NODE)", m.as_str_name()),
                ))
            }
            Err(_) => {
                return Err(
                    ctx.invalid(&format!("{field}.userns_options.mode"), format!("unknown namespace mode {}", u.mode))
                )
            }
        },
    };
    if user.is_some() && [network, ipc, pid].contains(&NamespaceMode::Node) {
        return Err(ctx.invalid(
            &format!("{field}.userns_options"),
            "a pod user namespace cannot be combined with the host's network, IPC or PID namespace",
        ));
    }
    Ok(Modes { network, ipc, pid, user })
}

/// The single id range of a pod user namespace: container id 0 upwards, not empty, not
/// wrapping, and not giving the pod the host's root.
fn id_range(ctx: &Ctx, field: &str, maps: &[berth_proto::runtime::v1::IdMapping]) -> Result<IdRange, SpecError> {
    let [m] = maps else {
        return Err(ctx.invalid(field, format!("exactly one mapping is supported, got {}", maps.len())));
    };
    if m.container_id != 0 {
        return Err(ctx.invalid(field, format!("must map container id 0 (starts at {})", m.container_id)));
    }
    if m.length == 0 || m.host_id.checked_add(m.length).is_none() {
        return Err(ctx.invalid(field, format!("invalid range of {} ids from host id {}", m.length, m.host_id)));
    }
    if m.host_id == 0 {
        return Err(ctx.invalid(field, "host id 0 (the host's root) cannot be mapped into a pod"));
    }
    Ok(IdRange { host_id: m.host_id, length: m.length })
}

/// A container's namespaces. Network and IPC follow the sandbox's modes (what the infra process
/// was created with), PID the container's own; UTS is the pod's unless the pod uses the host
/// network. The cgroup namespace is new when `cgroup_ns` (cgroup v2 and not privileged).
pub(crate) fn container_namespaces(
    ctx: &Ctx,
    pod: Modes,
    pid_mode: NamespaceMode,
    target_id: &str,
    paths: &PodNamespaces,
    target_pid_ns: Option<&Path>,
    cgroup_ns: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let field = "linux.security_context.namespace_options";
    let need = |name: &str, p: &Option<PathBuf>| -> Result<PathBuf, SpecError> {
        p.clone().ok_or_else(|| ctx.invalid(&format!("{field}.{name}"), "the pod has no such namespace to join"))
    };
    let mut out = vec![ns(LinuxNamespaceType::Mount, None)];
    if pod.user.is_some() {
        out.push(ns(LinuxNamespaceType::User, Some(&need("userns_options", &paths.user)?)));
    }
    if pod.network == NamespaceMode::Pod {
        out.push(ns(LinuxNamespaceType::Network, Some(&need("network", &paths.network)?)));
        out.push(ns(LinuxNamespaceType::Uts, Some(&need("network", &paths.uts)?)));
    }
    if pod.ipc == NamespaceMode::Pod {
        out.push(ns(LinuxNamespaceType::Ipc, Some(&need("ipc", &paths.ipc)?)));
    }
    match pid_mode {
        NamespaceMode::Pod => out.push(ns(LinuxNamespaceType::Pid, Some(&need("pid", &paths.pid)?))),
        NamespaceMode::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            if target_id.is_empty() {
                return Err(ctx.invalid(&format!("{field}.target_id"), "is required with pid mode TARGET"));
            }
            let path = target_pid_ns.ok_or_else(|| {
                ctx.invalid(
                    &format!("{field}.target_id"),
                    format!("container {target_id:?} has no PID namespace to join"),
                )
            })?;
            out.push(ns(LinuxNamespaceType::Pid, Some(path)));
        }
    }
    if cgroup_ns {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// The infra process's namespaces: network (or `netns` when given), UTS and IPC unless the
/// pod uses the host's, and a new PID namespace unless the pod uses the host's. No mount
/// namespace: the infra mounts nothing and is chrooted into its read-only root, which spares
/// each pod a copy of the host's mount table and a pivot_root (see [`super::sandbox_spec`]).
/// A pod with its own user namespace gets a new one and a mount namespace, and a new network
/// namespace owned by it (`netns` is ignored: the shim pins the infra's afterwards).
pub(crate) fn sandbox_namespaces(m: Modes, netns: Option<&Path>) -> Vec<LinuxNamespace> {
    let mut out = Vec::new();
    let netns = if m.user.is_some() {
        out.push(ns(LinuxNamespaceType::Mount, None));
        out.push(ns(LinuxNamespaceType::User, None));
        None
    } else {
        netns
    };
    if m.network != NamespaceMode::Node {
        out.push(ns(LinuxNamespaceType::Network, netns));
        out.push(ns(LinuxNamespaceType::Uts, None));
    }
    if m.ipc != NamespaceMode::Node {
        out.push(ns(LinuxNamespaceType::Ipc, None));
    }
    if m.pid != NamespaceMode::Node {
        out.push(ns(LinuxNamespaceType::Pid, None));
    }
    out
}

/// Sysctls the kernel scopes to the IPC namespace.
fn is_ipc_sysctl(key: &str) -> bool {
    matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.")
}

/// The pod's sysctls, checked: only namespaced ones, and only for namespaces the pod owns.
/// Without host networking, unprivileged ports and ICMP are opened unless the pod sets them.
pub(crate) fn sandbox_sysctls(
    ctx: &Ctx,
    sysctls: &HashMap<String, String>,
    m: Modes,
    unprivileged_ports: bool,
    unprivileged_icmp: bool,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    for (key, value) in sysctls {
        let key_norm = key.replace('/', ".");
        let field = format!("linux.sysctls[{key}]");
        if key_norm.starts_with("net.") {
            if m.network == NamespaceMode::Node {
                return Err(ctx.invalid(&field, "network sysctls cannot be set on a pod that uses the host network"));
            }
        } else if is_ipc_sysctl(&key_norm) {
            if m.ipc == NamespaceMode::Node {
                return Err(ctx.invalid(&field, "IPC sysctls cannot be set on a pod that uses the host IPC namespace"));
            }
        } else if matches!(key_norm.as_str(), "kernel.hostname" | "kernel.domainname") {
            if m.network == NamespaceMode::Node {
                return Err(ctx.invalid(&field, "UTS sysctls cannot be set on a pod that uses the host network"));
            }
        } else {
            return Err(ctx.invalid(&field, "is not namespaced: setting it would change the host"));
        }
        out.insert(key_norm, value.clone());
    }
    if m.network != NamespaceMode::Node {
        if unprivileged_ports {
            out.entry("net.ipv4.ip_unprivileged_port_start".into()).or_insert_with(|| "0".into());
        }
        if unprivileged_icmp {
            // Inside a pod user namespace the range must consist of mapped group ids.
            let last = m.user.map_or(2147483647, |u| u.gids.length - 1);
            out.entry("net.ipv4.ping_group_range".into()).or_insert_with(|| format!("0 {last}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "namespaces_tests.rs"]
mod tests;
