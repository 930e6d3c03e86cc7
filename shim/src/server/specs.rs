//! Gathers what the pure spec builders in [`crate::oci`] need (pod namespaces, pod files, the
//! image's users, host facts) and calls them. The only I/O here is reading the image's
//! /etc/passwd and /etc/group and the host lookups.

use std::path::Path;

use berth_proto::runtime::v1 as cri;
use oci_spec::runtime::Spec;

use super::{CriResult, Shim};
use crate::image::Image;
use crate::oci::{self, ContainerInput, FsLookup, ImageDefaults, PodNamespaces, SandboxFiles, UserDb};
use crate::podfiles::PodFiles;
use crate::store::Sandbox;

fn log_warnings(id: &str, warnings: &[String]) {
    for w in warnings {
        tracing::warn!(id, "{w}");
    }
}

pub(super) fn image_defaults(img: &Image) -> ImageDefaults {
    let c = &img.config;
    ImageDefaults {
        user: c.user.clone(),
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        working_dir: c.working_dir.clone(),
        stop_signal: c.stop_signal.clone(),
    }
}

/// The image's users, read from the container's (mounted) rootfs.
fn users(rootfs: &Path) -> UserDb {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    UserDb::parse(&passwd, &group)
}

pub(super) fn container(
    shim: &Shim,
    id: &str,
    sb: &Sandbox,
    config: &cri::ContainerConfig,
    image: &Image,
    rootfs: &Path,
) -> CriResult<Spec> {
    let pod_dir = shim.pod_dir(&sb.record.id);
    let files = PodFiles::in_dir(&pod_dir);
    let mut namespaces = PodNamespaces::of_pid(sb.record.infra_pid as u32);
    namespaces.network = sb.record.netns.clone();
    if sb.record.held_by_monitor {
        // The monitor holds the pod's UTS and IPC namespaces only; its PID and user namespaces
        // are the host's, so a container asking for the pod's is refused, not given the host's.
        namespaces.pid = None;
        namespaces.user = None;
    }
    let target_pid_ns = target_pid_ns(shim, config)?;
    let users = users(rootfs);
    let defaults = image_defaults(image);
    let image_name = config.image.as_ref().map(|i| i.image.as_str()).unwrap_or_default();
    let input = ContainerInput {
        id,
        sandbox_id: &sb.record.id,
        config,
        sandbox: &sb.config,
        image: &defaults,
        image_name,
        rootfs,
        files: SandboxFiles {
            hosts: Some(&files.hosts),
            resolv_conf: Some(&files.resolv_conf),
            hostname: Some(&files.hostname),
            shm: Some(&files.shm),
        },
        namespaces: &namespaces,
        target_pid_ns: target_pid_ns.as_deref(),
        users: &users,
        termination_log: None,
        host: &shim.host,
        lookup: &FsLookup,
    };
    let built = oci::container_spec(&input)?;
    log_warnings(id, &built.warnings);
    Ok(within_bounding_set(shim, restrict_oom_score_adj(shim, built.spec)))
}

fn target_pid_ns(shim: &Shim, config: &cri::ContainerConfig) -> CriResult<Option<std::path::PathBuf>> {
    let target = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|n| n.target_id.clone())
        .unwrap_or_default();
    if target.is_empty() {
        return Ok(None);
    }
    let c = shim.find_container(&target)?;
    Ok(Some(format!("/proc/{}/ns/pid", c.record.pid).into()))
}

pub(super) fn sandbox(
    shim: &Shim,
    record: &crate::store::SandboxRecord,
    config: &cri::PodSandboxConfig,
    rootfs: &Path,
) -> CriResult<Spec> {
    let input = oci::SandboxInput {
        id: &record.id,
        config,
        pause_path: "/pause",
        rootfs,
        netns: record.netns.as_deref(),
        image_name: "berth-pause",
        unprivileged_ports: true,
        unprivileged_icmp: true,
        host: &shim.host,
        lookup: &FsLookup,
    };
    Ok(restrict_oom_score_adj(shim, oci::sandbox_spec(&input)?))
}

/// Without CAP_SYS_RESOURCE a process cannot lower its oom_score_adj below its parent's: such
/// requests are raised to the shim's own value (containerd's `restrict_oom_score_adj`).
fn restrict_oom_score_adj(shim: &Shim, mut spec: Spec) -> Spec {
    let Some(floor) = shim.oom_score_adj_floor else { return spec };
    if let Some(mut p) = spec.process().clone() {
        if p.oom_score_adj().is_some_and(|v| v < floor) {
            tracing::debug!(requested = ?p.oom_score_adj(), floor, "oom_score_adj raised: no CAP_SYS_RESOURCE");
            p.set_oom_score_adj(Some(floor));
            spec.set_process(Some(p));
        }
    }
    spec
}

/// Capabilities this process cannot hold cannot be given to a container either: "ALL" and
/// privileged mean every capability of the shim's bounding set (as containerd uses the
/// current process's set). Hosts without e.g. CAP_SYS_RESOURCE then still run them.
fn within_bounding_set(shim: &Shim, mut spec: Spec) -> Spec {
    let bounding = shim.bounding_caps;
    let Some(mut process) = spec.process().clone() else { return spec };
    let Some(mut caps) = process.capabilities().clone() else { return spec };
    let keep = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.as_ref().map(|s| {
            s.iter()
                .filter(|c| {
                    berth_runtime::capabilities::number(&c.to_string()).is_some_and(|n| bounding & (1u64 << n) != 0)
                })
                .copied()
                .collect::<oci_spec::runtime::Capabilities>()
        })
    };
    caps.set_bounding(keep(caps.bounding()));
    caps.set_effective(keep(caps.effective()));
    caps.set_permitted(keep(caps.permitted()));
    caps.set_inheritable(keep(caps.inheritable()));
    caps.set_ambient(keep(caps.ambient()));
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));
    spec
}
