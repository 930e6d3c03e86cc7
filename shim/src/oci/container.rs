//! [`container_spec`]: a CRI container's OCI spec, assembled from the per-concern builders.

use std::collections::HashMap;
use std::path::Path;

use berth_proto::runtime::v1::{ContainerConfig, LinuxContainerSecurityContext, NamespaceMode, PodSandboxConfig};
use oci_spec::runtime::{Linux, LinuxCapabilities, LinuxResources, LinuxSeccomp, Process, Root, Spec, User};

use super::mounts::{container_mounts, MountInput};
use super::namespaces::{container_namespaces, modes};
use super::security::{
    choose_seccomp, container_capabilities, ignored_profiles, masked_and_readonly, seccomp_spec, Seccomp,
};
use super::{
    annotations as ann, devices, process, resources, users, Built, Ctx, Host, HostLookup, ImageDefaults, PodNamespaces,
    SandboxFiles, SpecError, TerminationLog, UserDb, OCI_VERSION,
};

/// Everything a container's spec depends on, gathered by the caller.
pub struct ContainerInput<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    pub image: &'a ImageDefaults,
    /// The image reference for the image-name annotation.
    pub image_name: &'a str,
    /// The container's root filesystem (absolute; usually the bundle's mounted overlay).
    pub rootfs: &'a Path,
    pub files: SandboxFiles<'a>,
    /// The infra process's namespaces.
    pub namespaces: &'a PodNamespaces,
    /// The PID namespace of `namespace_options.target_id` (pid mode TARGET).
    pub target_pid_ns: Option<&'a Path>,
    /// The image's /etc/passwd and /etc/group.
    pub users: &'a UserDb,
    pub termination_log: Option<TerminationLog<'a>>,
    pub host: &'a Host,
    pub lookup: &'a dyn HostLookup,
}

/// Builds the OCI spec of a CRI container. Pure apart from `input.lookup`.
pub fn container_spec(input: &ContainerInput) -> Result<Built, SpecError> {
    let config = input.config;
    let name = config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    let ctx = Ctx::new(format!("containers[{}]", if name.is_empty() { input.id } else { name }));
    let linux = config.linux.as_ref();
    let default_sc = LinuxContainerSecurityContext::default();
    let sc = linux.and_then(|l| l.security_context.as_ref()).unwrap_or(&default_sc);
    let sandbox_sc = input.sandbox.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.privileged;
    if privileged && !sandbox_sc.is_some_and(|s| s.privileged) {
        return Err(ctx.invalid("linux.security_context.privileged", "the pod sandbox is not privileged"));
    }

    if let Some(cdi) = config.cdi_devices.first() {
        return Err(ctx.invalid("CDI_devices[0]", format!("CDI device {:?}: CDI is not supported by berth", cdi.name)));
    }

    let pod =
        modes(&Ctx::new(format!("{}.sandbox", ctx.field(""))), sandbox_sc.and_then(|s| s.namespace_options.as_ref()))?;
    let own = modes(&ctx, sc.namespace_options.as_ref())?;
    let own_userns = sc.namespace_options.as_ref().and_then(|n| n.userns_options.as_ref());
    if own_userns.is_some() && own.user != pod.user {
        return Err(ctx.invalid(
            "linux.security_context.namespace_options.userns_options",
            "must be the pod's (a container shares its pod's user namespace)",
        ));
    }
    // HOSTNAME: the pod's hostname; a host-network pod may leave it empty (the node's then).
    let hostname =
        if input.sandbox.hostname.is_empty() { input.host.hostname.as_str() } else { input.sandbox.hostname.as_str() };

    let (caps, seccomp, warnings) = security(&ctx, sc, input)?;

    let res = linux.and_then(|l| l.resources.as_ref());
    let process = container_process(&ctx, input, sc, caps, hostname)?;

    let mounts = container_mounts(
        &ctx,
        &MountInput {
            mounts: &config.mounts,
            files: input.files,
            host_ipc: pod.ipc == NamespaceMode::Node,
            readonly_rootfs: sc.readonly_rootfs,
            privileged,
            termination_log: input.termination_log,
            rro_supported: input.host.rro_mounts,
        },
        input.lookup,
    )?;

    let devs = devices::container_devices(&ctx, &config.devices, privileged, input.lookup)?;
    let mut resources = match res {
        Some(r) => resources::linux_resources(&ctx.field("linux.resources"), r, input.host.swap_controller)?,
        None => LinuxResources::default(),
    };
    resources.set_devices(Some(devs.rules));

    let ns_opts = sc.namespace_options.as_ref();
    let target_id = ns_opts.map(|o| o.target_id.as_str()).unwrap_or("");
    let cgroup_ns = input.host.cgroup_v2 && !privileged;
    let namespaces =
        container_namespaces(&ctx, pod, own.pid, target_id, input.namespaces, input.target_pid_ns, cgroup_ns)?;
    let (masked, readonly) = masked_and_readonly(&sc.masked_paths, &sc.readonly_paths, privileged);
    let parent = input.sandbox.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or("");

    let mut linux = Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(None);
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(resources::cgroups_path(parent, input.id, &input.host.default_cgroup_parent)));
    linux.set_namespaces(Some(namespaces));
    linux.set_devices(Some(devs.nodes));
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(mounts.rootfs_propagation);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned());
    spec.set_root(Some(root));
    spec.set_process(Some(process));
    // The container joins the pod's UTS namespace, whose hostname the infra process set.
    spec.set_hostname(None);
    spec.set_mounts(Some(mounts.mounts));
    spec.set_annotations(Some(container_annotations(input, name)));
    spec.set_linux(Some(linux));
    Ok(Built { spec, warnings })
}

/// Capabilities, seccomp and the warnings for ignored AppArmor/SELinux/seccomp settings.
fn security(
    ctx: &Ctx,
    sc: &LinuxContainerSecurityContext,
    input: &ContainerInput,
) -> Result<(LinuxCapabilities, Option<LinuxSeccomp>, Vec<String>), SpecError> {
    let privileged = sc.privileged;
    // The deprecated string fields are still sent by older kubelets.
    #[allow(deprecated)]
    let mut warnings = ignored_profiles(sc.apparmor.as_ref(), &sc.apparmor_profile, sc.selinux_options.is_some());
    let caps = container_capabilities(ctx, sc.capabilities.as_ref(), privileged, input.host.last_cap)?;
    let seccomp_field = "linux.security_context.seccomp";
    #[allow(deprecated)]
    let choice =
        choose_seccomp(ctx, seccomp_field, sc.seccomp.as_ref(), &sc.seccomp_profile_path, Seccomp::Unconfined)?;
    let seccomp = if privileged {
        if choice != Seccomp::Unconfined {
            warnings.push("seccomp profile ignored: the container is privileged".into());
        }
        None
    } else {
        let main = caps.effective().clone().unwrap_or_default();
        let field =
            if sc.seccomp.is_some() { seccomp_field.to_owned() } else { format!("{seccomp_field}_profile_path") };
        seccomp_spec(ctx, &field, &choice, &main, input.lookup)?
    };
    Ok((caps, seccomp, warnings))
}

/// The process: argv, env, cwd, identity, terminal, capabilities, no_new_privs, oom_score_adj.
fn container_process(
    ctx: &Ctx,
    input: &ContainerInput,
    sc: &LinuxContainerSecurityContext,
    caps: LinuxCapabilities,
    hostname: &str,
) -> Result<Process, SpecError> {
    let config = input.config;
    let identity = users::container_identity(ctx, Some(sc), &input.image.user, input.users)?;
    let mut user = User::default();
    user.set_uid(identity.uid);
    user.set_gid(identity.gid);
    user.set_additional_gids(Some(identity.additional_gids));

    let res = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_console_size(None);
    process.set_user(user);
    process.set_args(Some(process::args(ctx, config, input.image)?));
    process.set_env(Some(process::env(ctx, config, input.image, hostname)?));
    process.set_cwd(process::cwd(ctx, config, input.image)?);
    process.set_capabilities(Some(caps));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(sc.no_new_privs));
    process.set_oom_score_adj(res.map(|r| resources::oom_score_adj(ctx, r)).transpose()?);
    Ok(process)
}

fn container_annotations(input: &ContainerInput, name: &str) -> HashMap<String, String> {
    let meta = input.sandbox.metadata.clone().unwrap_or_default();
    [
        (ann::CONTAINER_TYPE, ann::CONTAINER_TYPE_CONTAINER),
        (ann::SANDBOX_ID, input.sandbox_id),
        (ann::SANDBOX_NAMESPACE, meta.namespace.as_str()),
        (ann::SANDBOX_UID, meta.uid.as_str()),
        (ann::SANDBOX_NAME, meta.name.as_str()),
        (ann::CONTAINER_NAME, name),
        (ann::IMAGE_NAME, input.image_name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "container_security_tests.rs"]
mod security_tests;
