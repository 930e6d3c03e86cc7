//! Capabilities, seccomp, masked/readonly paths and the security profiles Berth ignores
//! (AppArmor, SELinux) for a container or pod infra process.

use std::collections::HashSet;
use std::path::PathBuf;

use berth_proto::runtime::v1::{security_profile::ProfileType, Capability as CriCapability, SecurityProfile};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};

use super::{Ctx, HostLookup, SpecError};

/// containerd's (and Docker's) default capability set for containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths masked in unprivileged containers unless the request lists its own (containerd's and
/// the kubelet's default ProcMount list).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths made read-only in unprivileged containers unless the request lists its own.
pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A capability name as CRI sends it ("NET_ADMIN", "CAP_NET_ADMIN", any case).
pub(crate) fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    serde_json::from_value(serde_json::Value::String(format!("CAP_{bare}"))).ok()
}

/// Every capability the kernel knows (numbers 0..=last_cap).
pub(crate) fn all_capabilities(last_cap: u32) -> Capabilities {
    berth_runtime::capabilities::NAMES.iter().take(last_cap as usize + 1).filter_map(|n| parse_capability(n)).collect()
}

/// The five capability sets: default ± CRI add/drop ("ALL" first, so that individual entries
/// still apply after it); ambient additions go into every set. Privileged gets everything.
pub(crate) fn container_capabilities(
    ctx: &Ctx,
    caps: Option<&CriCapability>,
    privileged: bool,
    last_cap: u32,
) -> Result<LinuxCapabilities, SpecError> {
    let field = "linux.security_context.capabilities";
    let mut main: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut ambient = Capabilities::new();
    let default_caps = CriCapability::default();
    let caps = caps.unwrap_or(&default_caps);
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    if privileged || caps.add_capabilities.iter().any(is_all) {
        main = all_capabilities(last_cap);
    }
    if !privileged && caps.drop_capabilities.iter().any(is_all) {
        main.clear();
    }
    let parse = |list: &[String], name: &str| -> Result<Vec<Capability>, SpecError> {
        list.iter()
            .enumerate()
            .filter(|(_, c)| !is_all(c))
            .map(|(i, c)| {
                parse_capability(c)
                    .ok_or_else(|| ctx.invalid(&format!("{field}.{name}[{i}]"), format!("unknown capability {c:?}")))
            })
            .collect()
    };
    let add = parse(&caps.add_capabilities, "add_capabilities")?;
    let drop = parse(&caps.drop_capabilities, "drop_capabilities")?;
    for (i, c) in caps.add_ambient_capabilities.iter().enumerate() {
        let cap = parse_capability(c).ok_or_else(|| {
            ctx.invalid(&format!("{field}.add_ambient_capabilities[{i}]"), format!("unknown capability {c:?}"))
        })?;
        ambient.insert(cap);
    }
    if !privileged {
        main.extend(add);
        for c in &drop {
            main.remove(c);
            ambient.remove(c);
        }
    }
    main.extend(ambient.iter().copied());
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(main.clone()));
    out.set_effective(Some(main.clone()));
    out.set_permitted(Some(main));
    out.set_inheritable(Some(ambient.clone()));
    out.set_ambient(Some(ambient));
    Ok(out)
}

/// No capability at all (the pod infra process).
pub(crate) fn no_capabilities() -> LinuxCapabilities {
    let mut out = LinuxCapabilities::default();
    for set in [
        LinuxCapabilities::set_bounding,
        LinuxCapabilities::set_effective,
        LinuxCapabilities::set_permitted,
        LinuxCapabilities::set_inheritable,
        LinuxCapabilities::set_ambient,
    ] {
        set(&mut out, Some(HashSet::new()));
    }
    out
}

/// Which seccomp profile applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seccomp {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

/// Chooses the profile from the typed field, else the deprecated path string ("runtime/default",
/// "docker/default", "unconfined", "localhost/<path>"); nothing set means `unset`.
pub(crate) fn choose_seccomp(
    ctx: &Ctx,
    field: &str,
    profile: Option<&SecurityProfile>,
    deprecated_path: &str,
    unset: Seccomp,
) -> Result<Seccomp, SpecError> {
    let Some(p) = profile else {
        let f = format!("{field}_profile_path");
        return match deprecated_path {
            "" => Ok(unset),
            "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
            "unconfined" => Ok(Seccomp::Unconfined),
            other => match other.strip_prefix("localhost/") {
                Some(path) => localhost(ctx, &f, path),
                None => {
                    Err(ctx.invalid(&f, format!("{other:?} is not runtime/default, unconfined or localhost/<path>")))
                }
            },
        };
    };
    let typ = ProfileType::try_from(p.profile_type).map_err(|_| {
        ctx.invalid(&format!("{field}.profile_type"), format!("unknown profile type {}", p.profile_type))
    })?;
    if typ != ProfileType::Localhost && !p.localhost_ref.is_empty() {
        return Err(ctx.invalid(&format!("{field}.localhost_ref"), "must only be set when profile_type is Localhost"));
    }
    match typ {
        ProfileType::RuntimeDefault => Ok(Seccomp::RuntimeDefault),
        ProfileType::Unconfined => Ok(Seccomp::Unconfined),
        ProfileType::Localhost => {
            let path = p.localhost_ref.strip_prefix("localhost/").unwrap_or(&p.localhost_ref);
            localhost(ctx, &format!("{field}.localhost_ref"), path)
        }
    }
}

fn localhost(ctx: &Ctx, field: &str, path: &str) -> Result<Seccomp, SpecError> {
    if !path.starts_with('/') {
        return Err(ctx.invalid(field, format!("{path:?} must be an absolute path to a profile file")));
    }
    Ok(Seccomp::Localhost(PathBuf::from(path)))
}

/// The `linux.seccomp` for a chosen profile; Localhost profiles are read through `lookup`.
pub(crate) fn seccomp_spec(
    ctx: &Ctx,
    field: &str,
    choice: &Seccomp,
    caps: &Capabilities,
    lookup: &dyn HostLookup,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    match choice {
        Seccomp::Unconfined => Ok(None),
        Seccomp::RuntimeDefault => Ok(Some(runtime_default(caps))),
        Seccomp::Localhost(path) => {
            let bytes = lookup.read_seccomp_profile(path).map_err(|e| ctx.lookup(field, path, e))?;
            let profile = parse_seccomp_profile(&bytes, caps)
                .map_err(|reason| ctx.invalid(field, format!("profile {}: {reason}", path.display())))?;
            Ok(Some(profile))
        }
    }
}

/// Syscalls Docker's default profile allows only with a capability (moby's default.json).
const CAP_SYSCALLS: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::SysNice, &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// berth-runtime's RuntimeDefault profile, widened like Docker's for the capabilities the
/// process holds (a container given CAP_SYS_PTRACE may ptrace). Syscalls the base profile
/// already has a rule for (clone, clone3) keep that rule.
pub(crate) fn runtime_default(caps: &Capabilities) -> LinuxSeccomp {
    let mut profile = berth_runtime::seccomp::default_profile();
    let mut syscalls = profile.syscalls().clone().unwrap_or_default();
    let known: HashSet<String> = syscalls.iter().flat_map(|s| s.names().iter().cloned()).collect();
    let mut extra: Vec<String> = Vec::new();
    for (cap, names) in CAP_SYSCALLS {
        if caps.contains(cap) {
            for n in names.iter().map(|n| n.to_string()) {
                if !known.contains(&n) && !extra.contains(&n) {
                    extra.push(n);
                }
            }
        }
    }
    if !extra.is_empty() {
        let mut rule = oci_spec::runtime::LinuxSyscall::default();
        rule.set_names(extra);
        rule.set_action(oci_spec::runtime::LinuxSeccompAction::ScmpActAllow);
        syscalls.push(rule);
        profile.set_syscalls(Some(syscalls));
    }
    profile
}

/// Parses a seccomp profile file: the OCI `linux.seccomp` format, or Docker's (with `archMap`,
/// `name`, `comment` and `includes`/`excludes` conditions on capabilities and architectures).
pub fn parse_seccomp_profile(bytes: &[u8], caps: &Capabilities) -> Result<LinuxSeccomp, String> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let obj = doc.as_object_mut().ok_or("is not a JSON object")?;
    obj.remove("comment");
    if let Some(arch_map) = obj.remove("archMap") {
        if !obj.contains_key("architectures") {
            let mut arches = Vec::new();
            for entry in arch_map.as_array().into_iter().flatten() {
                arches.extend(entry.get("architecture").cloned());
                arches.extend(entry.get("subArchitectures").and_then(|s| s.as_array()).into_iter().flatten().cloned());
            }
            obj.insert("architectures".into(), arches.into());
        }
    }
    if let Some(syscalls) = obj.get_mut("syscalls").and_then(|s| s.as_array_mut()) {
        syscalls.retain(|s| applies(s, caps));
        for s in syscalls.iter_mut().filter_map(|s| s.as_object_mut()) {
            for key in ["includes", "excludes", "comment"] {
                s.remove(key);
            }
            if let Some(name) = s.remove("name") {
                s.entry("names").or_insert_with(|| vec![name].into());
            }
        }
    }
    let profile: LinuxSeccomp = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    berth_runtime::seccomp::compile(&profile).map_err(|e| berth_runtime::spec::error_chain(&e))?;
    Ok(profile)
}

/// Docker's rule conditions: `includes` must all hold, no `excludes` may hold.
fn applies(rule: &serde_json::Value, caps: &Capabilities) -> bool {
    let names = |v: Option<&serde_json::Value>, key: &str| -> Vec<String> {
        v.and_then(|c| c.get(key))
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let has_cap = |c: &String| parse_capability(c).is_some_and(|c| caps.contains(&c));
    let on_arch = |a: &String| docker_arch_names().contains(&a.as_str());
    let inc = rule.get("includes");
    let exc = rule.get("excludes");
    let inc_caps = names(inc, "caps");
    let inc_arches = names(inc, "arches");
    (inc_caps.iter().all(has_cap))
        && (inc_arches.is_empty() || inc_arches.iter().any(on_arch))
        && !names(exc, "caps").iter().any(has_cap)
        && !names(exc, "arches").iter().any(on_arch)
}

/// The names Docker profiles use for this machine's architecture.
fn docker_arch_names() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["amd64", "x86_64", "x32"],
        "x86" => &["386", "x86"],
        "aarch64" => &["arm64", "aarch64"],
        "arm" => &["arm"],
        "riscv64" => &["riscv64"],
        "s390x" => &["s390x"],
        "powerpc64" => &["ppc64le", "ppc64"],
        _ => &[],
    }
}

/// Masked and read-only paths: none when privileged; the request's lists when it gives any
/// (CRI cannot tell an explicit empty list from an absent one); else the defaults.
pub(crate) fn masked_and_readonly(
    masked: &[String],
    readonly: &[String],
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |given: &[String], default: &[&str]| -> Vec<String> {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    (pick(masked, &DEFAULT_MASKED_PATHS), pick(readonly, &DEFAULT_READONLY_PATHS))
}

/// Warnings for the AppArmor and SELinux settings Berth does not apply (no AppArmor here).
pub(crate) fn ignored_profiles(
    apparmor: Option<&SecurityProfile>,
    apparmor_profile: &str,
    selinux_set: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let requested = match apparmor {
        Some(p) if p.profile_type == ProfileType::Unconfined as i32 => None,
        Some(p) if p.profile_type == ProfileType::Localhost as i32 => Some(format!("localhost/{}", p.localhost_ref)),
        Some(_) => Some("runtime/default".to_owned()),
        None if apparmor_profile.is_empty() || apparmor_profile == "unconfined" => None,
        None => Some(apparmor_profile.to_owned()),
    };
    if let Some(p) = requested {
        out.push(format!("AppArmor profile {p:?} ignored: AppArmor is not available to berth"));
    }
    if selinux_set {
        out.push("SELinux options ignored: berth does not apply SELinux labels".to_owned());
    }
    out
}

#[cfg(test)]
#[path = "security_tests.rs"]
mod tests;
