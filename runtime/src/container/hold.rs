//! A pod's namespaces held by the calling process instead of by an infra container.
//!
//! A pod whose containers each have their own PID namespace needs no process of its own: its
//! network namespace is pinned by a bind mount, and its UTS and IPC namespaces only need a
//! holder that outlives the containers. The pod's monitor is that holder (as CRI-O's pinned
//! namespaces replace its infra container): it unshares them itself, names the host and writes
//! the pod's sysctls, and the containers join them through `/proc/<monitor>/ns/*`. That saves
//! each pod an infra process — its cgroup in every hierarchy, its seccomp filter, a clone and
//! an exec.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{os, ContainerError};
use crate::namespaces;
use crate::syscall::{Linux, Syscall};

/// Moves the calling process into new UTS and IPC namespaces as `spec` asks (each only when
/// listed without a path), sets the hostname and domainname, and writes the sysctls — net.*
/// ones from inside the spec's network namespace, which must be given by path.
///
/// The caller must be single-threaded: unshare changes only the calling thread, and every
/// thread started later must start from the held namespaces.
pub fn hold(spec: &Spec, bundle: &Path) -> Result<(), ContainerError> {
    crate::spec::validate(spec, bundle)?;
    let mut flags = 0;
    let mut netns: Option<PathBuf> = None;
    for ns in crate::spec::namespaces(spec) {
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::Uts, None) => flags |= libc::CLONE_NEWUTS,
            (LinuxNamespaceType::Ipc, None) => flags |= libc::CLONE_NEWIPC,
            (LinuxNamespaceType::Network, Some(path)) => netns = Some(path.clone()),
            (typ, None) => return Err(ContainerError::Invalid(format!("linux.namespaces: a new {typ} namespace needs an infra process; only UTS and IPC namespaces can be held"))),
            (typ, Some(path)) => return Err(ContainerError::Invalid(format!("linux.namespaces: {typ} namespace {}: only a network namespace can be joined by a holder", path.display()))),
        }
    }
    // Opened before anything changes: a bad path fails with nothing done.
    let netns = netns
        .map(|p| {
            std::fs::File::open(&p).map(OwnedFd::from).map_err(os(format!("opening network namespace {}", p.display())))
        })
        .transpose()?;
    if flags != 0 {
        namespaces::unshare(flags).map_err(os("unsharing the pod's UTS and IPC namespaces"))?;
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        Linux.sethostname(h).map_err(os("sethostname"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        Linux.setdomainname(d).map_err(os("setdomainname"))?;
    }
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().clone()).unwrap_or_default();
    let (net, other): (Vec<_>, Vec<_>) = sysctls.iter().partition(|(k, _)| k.starts_with("net."));
    // /proc/sys shows the writer's IPC and UTS namespaces: now the held ones.
    write_sysctls(&other)?;
    if !net.is_empty() {
        let Some(target) = &netns else {
            return Err(ContainerError::Invalid(
                "linux.sysctl: net.* sysctls need the pod's network namespace (by path)".into(),
            ));
        };
        let own = std::fs::File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(os("opening this thread's network namespace"))?;
        namespaces::setns(target, LinuxNamespaceType::Network).map_err(os("entering the pod's network namespace"))?;
        let written = write_sysctls(&net);
        namespaces::setns(&own, LinuxNamespaceType::Network).map_err(os("returning to the host network namespace"))?;
        written?;
    }
    Ok(())
}

fn write_sysctls(list: &[(&String, &String)]) -> Result<(), ContainerError> {
    for (key, value) in list {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(os(format!("writing sysctl {key}")))?;
    }
    Ok(())
}
