//! [`sandbox_spec`]: the OCI spec of a pod's infra (pause) process, which only holds the pod's
//! namespaces: no capabilities, read-only root, no_new_privs, RuntimeDefault seccomp unless
//! the pod asks otherwise, the pod's hostname and sysctls, and a low cgroup weight. It has no
//! mount namespace (unless the pod has a user namespace): it is chrooted into its root.

use std::collections::HashMap;
use std::path::Path;

use berth_proto::runtime::v1::{LinuxSandboxSecurityContext, NamespaceMode, PodSandboxConfig};
use oci_spec::runtime::{Linux, LinuxCpu, LinuxResources, Process, Root, Spec, User};

use super::devices::rule;
use super::mounts::mount;
use super::namespaces::{modes, sandbox_namespaces, sandbox_sysctls};
use super::security::{choose_seccomp, no_capabilities, seccomp_spec, Seccomp};
use super::{annotations as ann, resources, users, Ctx, Host, HostLookup, SpecError, DEFAULT_PATH_ENV, OCI_VERSION};

/// cgroup cpu.shares of the infra process (containerd's DefaultSandboxCPUshares).
pub const SANDBOX_CPU_SHARES: u64 = 2;
/// oom_score_adj of the infra process: the last thing the OOM killer picks.
pub const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

/// Everything the infra process's spec depends on.
pub struct SandboxInput<'a> {
    pub id: &'a str,
    pub config: &'a PodSandboxConfig,
    /// The pause program inside `rootfs`, e.g. "/pause".
    pub pause_path: &'a str,
    /// The infra's root filesystem (absolute): a read-only mount, since the infra has no
    /// mount namespace to remount it in (except in a user namespace pod).
    pub rootfs: &'a Path,
    /// An existing network namespace to join (e.g. one prepared for CNI); `None` makes a new one.
    pub netns: Option<&'a Path>,
    /// Image name for the sandbox-image annotation.
    pub image_name: &'a str,
    /// Open ports below 1024 to unprivileged users in the pod's network namespace
    /// (net.ipv4.ip_unprivileged_port_start=0, containerd 2's default).
    pub unprivileged_ports: bool,
    /// Allow unprivileged ICMP echo sockets (net.ipv4.ping_group_range="0 2147483647").
    pub unprivileged_icmp: bool,
    pub host: &'a Host,
    pub lookup: &'a dyn HostLookup,
}

/// Builds the infra process's spec. Pure apart from `input.lookup` (Localhost seccomp only).
pub fn sandbox_spec(input: &SandboxInput) -> Result<Spec, SpecError> {
    let config = input.config;
    let meta = config.metadata.clone().unwrap_or_default();
    let ctx = Ctx::new(format!("sandbox[{}]", if meta.name.is_empty() { input.id } else { meta.name.as_str() }));
    let default_sc = LinuxSandboxSecurityContext::default();
    let linux_cfg = config.linux.as_ref();
    let sc = linux_cfg.and_then(|l| l.security_context.as_ref()).unwrap_or(&default_sc);
    let m = modes(&ctx, sc.namespace_options.as_ref())?;
    let host_network = m.network == NamespaceMode::Node;
    if !input.pause_path.starts_with('/') {
        return Err(ctx.invalid("pause_path", format!("{:?} must be an absolute path", input.pause_path)));
    }

    let identity = users::sandbox_identity(
        &ctx,
        sc.run_as_user.as_ref().map(|v| v.value),
        sc.run_as_group.as_ref().map(|v| v.value),
        &sc.supplemental_groups,
    )?;
    let mut user = User::default();
    user.set_uid(identity.uid);
    user.set_gid(identity.gid);
    user.set_additional_gids(Some(identity.additional_gids));

    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_user(user);
    process.set_args(Some(vec![input.pause_path.to_owned()]));
    process.set_env(Some(vec![DEFAULT_PATH_ENV.to_owned()]));
    process.set_cwd("/".into());
    process.set_capabilities(Some(no_capabilities()));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(true));
    process.set_oom_score_adj(Some(SANDBOX_OOM_SCORE_ADJ));

    let seccomp_field = "linux.security_context.seccomp";
    #[allow(deprecated)] // still sent by older kubelets
    let choice =
        choose_seccomp(&ctx, seccomp_field, sc.seccomp.as_ref(), &sc.seccomp_profile_path, Seccomp::RuntimeDefault)?;
    let seccomp = if sc.privileged {
        None
    } else {
        seccomp_spec(&ctx, seccomp_field, &choice, &Default::default(), input.lookup)?
    };

    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(SANDBOX_CPU_SHARES));
    let mut resources = LinuxResources::default();
    resources.set_cpu(Some(cpu));
    resources.set_devices(Some(vec![rule(false, None, None, None, "rwm")]));
    let parent = linux_cfg.map(|l| l.cgroup_parent.as_str()).unwrap_or("");
    let sysctls = linux_cfg.map(|l| l.sysctls.clone()).unwrap_or_default();

    let mut linux = Linux::default();
    linux.set_uid_mappings(m.user.map(|u| u.uid_mappings()));
    linux.set_gid_mappings(m.user.map(|u| u.gid_mappings()));
    linux.set_sysctl(Some(sandbox_sysctls(&ctx, &sysctls, m, input.unprivileged_ports, input.unprivileged_icmp)?));
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(resources::cgroups_path(parent, input.id, &input.host.default_cgroup_parent)));
    linux.set_namespaces(Some(sandbox_namespaces(m, input.netns)));
    linux.set_devices(None);
    linux.set_seccomp(seccomp);
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(true));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned());
    spec.set_root(Some(root));
    spec.set_process(Some(process));
    spec.set_hostname((!host_network && !config.hostname.is_empty()).then(|| config.hostname.clone()));
    // Without a mount namespace (all but user namespace pods) the infra mounts nothing: pause
    // needs neither /proc nor /dev, and `input.rootfs` must be a read-only mount already.
    let own_mounts = m.user.is_some();
    spec.set_mounts(Some(if own_mounts {
        vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ]
    } else {
        Vec::new()
    }));
    spec.set_annotations(Some(sandbox_annotations(input, &meta)));
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn sandbox_annotations(
    input: &SandboxInput,
    meta: &berth_proto::runtime::v1::PodSandboxMetadata,
) -> HashMap<String, String> {
    [
        (ann::CONTAINER_TYPE, ann::CONTAINER_TYPE_SANDBOX),
        (ann::SANDBOX_ID, input.id),
        (ann::SANDBOX_NAMESPACE, meta.namespace.as_str()),
        (ann::SANDBOX_UID, meta.uid.as_str()),
        (ann::SANDBOX_NAME, meta.name.as_str()),
        (ann::SANDBOX_LOG_DIR, input.config.log_directory.as_str()),
        (ann::SANDBOX_IMAGE_NAME, input.image_name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
