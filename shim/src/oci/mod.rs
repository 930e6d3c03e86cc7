//! OCI runtime specs for CRI containers and pod infra processes: pure functions from a CRI
//! `ContainerConfig` / `PodSandboxConfig` plus the image config (and facts the caller gathered
//! about the host) to an [`oci_spec::runtime::Spec`], following Kubernetes/containerd semantics.
//!
//! Nothing here touches the filesystem except [`FsLookup`], the real [`HostLookup`]: everything
//! a spec needs from the host (seccomp profile files, device nodes, mount propagation, image
//! volumes) comes through that trait, and the image's users come in as a parsed [`UserDb`].

mod container;
mod devices;
mod lookup;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod sandbox;
mod security;
mod users;

#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

pub use container::{container_spec, ContainerInput};
#[cfg(test)]
pub use lookup::FakeLookup;
pub use lookup::{mount_sharing, FsLookup, HostDevice, HostDeviceKind, HostLookup, Sharing};
pub use namespaces::PodNamespaces;
pub use resources::{cgroups_path, linux_resources};
pub use sandbox::{sandbox_spec, SandboxInput, SANDBOX_CPU_SHARES, SANDBOX_OOM_SCORE_ADJ};
pub use security::{parse_seccomp_profile, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
pub use users::{parse_group, parse_passwd, GroupEntry, PasswdEntry, UserDb};

/// The OCI runtime-spec version written into every spec.
pub const OCI_VERSION: &str = "1.2.0";

/// `PATH` for processes whose image does not set one (containerd's and Docker's default).
pub const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotation keys, the same as containerd's CRI plugin writes (tools read them from config.json).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const SANDBOX_IMAGE_NAME: &str = "io.kubernetes.cri.podsandbox.image-name";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// What the image config contributes (OCI image-spec `config`), already parsed by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `User`: "", "uid", "uid:gid", "name", "name:group" (or mixed).
    pub user: String,
    /// `Env`: NAME=value entries.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `StopSignal` (not part of the spec; kept here for StopContainer).
    pub stop_signal: String,
}

/// Host files the sandbox prepared for its containers; `None` leaves the image's own file (or,
/// for `shm`, a private tmpfs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxFiles<'a> {
    pub hosts: Option<&'a Path>,
    pub resolv_conf: Option<&'a Path>,
    pub hostname: Option<&'a Path>,
    /// The pod's shared /dev/shm directory (used when the pod's IPC namespace is POD; with host
    /// IPC the host's /dev/shm is bound instead).
    pub shm: Option<&'a Path>,
}

/// The host file the kubelet's termination message goes to, and where the container sees it.
#[derive(Debug, Clone, Copy)]
pub struct TerminationLog<'a> {
    pub host_path: &'a Path,
    pub container_path: &'a str,
}

/// Facts about this node that change the spec; gathered once by the caller.
#[derive(Debug, Clone)]
pub struct Host {
    /// The node's hostname (HOSTNAME for host-network pods).
    pub hostname: String,
    /// cgroup v2 (unified) host: unprivileged containers get a cgroup namespace.
    pub cgroup_v2: bool,
    /// The memory controller accounts swap: memory.swap is set equal to the limit by default.
    pub swap_controller: bool,
    /// The runtime supports `rro` (recursive read-only) bind mounts.
    pub rro_mounts: bool,
    /// The highest capability number the kernel knows (/proc/sys/kernel/cap_last_cap).
    pub last_cap: u32,
    /// Parent cgroup for pods whose config gives none (cgroupfs style, e.g. "/berth").
    pub default_cgroup_parent: String,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            hostname: String::new(),
            cgroup_v2: false,
            swap_controller: false,
            rro_mounts: false,
            last_cap: 40,
            default_cgroup_parent: "/berth".into(),
        }
    }
}

/// A built spec and the warnings the caller should log (settings that were ignored).
#[derive(Debug, Clone)]
pub struct Built {
    pub spec: oci_spec::runtime::Spec,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request asks for something invalid or unsupported; `field` names it, e.g.
    /// `containers[web].linux.security_context.run_as_group`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A host lookup the request needs failed (a profile file, a device, a mount source).
    #[error("{field}: {path}")]
    Lookup {
        field: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    /// The field the error is about.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Invalid { field, .. } | SpecError::Lookup { field, .. } => field,
        }
    }
}

/// Names fields under one object, e.g. `containers[web]`.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    prefix: String,
}

impl Ctx {
    pub(crate) fn new(prefix: impl Into<String>) -> Self {
        Ctx { prefix: prefix.into() }
    }

    pub(crate) fn field(&self, rest: &str) -> String {
        if rest.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{rest}", self.prefix)
        }
    }

    pub(crate) fn invalid(&self, rest: &str, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid { field: self.field(rest), reason: reason.into() }
    }

    pub(crate) fn lookup(&self, rest: &str, path: &Path, source: std::io::Error) -> SpecError {
        SpecError::Lookup { field: self.field(rest), path: path.to_path_buf(), source }
    }
}
