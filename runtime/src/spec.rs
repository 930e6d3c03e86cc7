//! Loading and validating a bundle's `config.json` before anything is created.
//!
//! Validation is pure: it runs on the parsed [`Spec`] and names the offending field, so a bad
//! bundle is rejected before a cgroup, mount or process exists.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid { field: field.into(), reason: reason.into() }
}

/// Reads and parses `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| SpecError::Read { path: path.clone(), source })?;
    parse(&bytes).map_err(|message| SpecError::Parse { path, message })
}

/// Parses a config.json document.
pub fn parse(bytes: &[u8]) -> Result<Spec, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The root filesystem path, resolved against the bundle when relative.
pub fn rootfs(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// Whether the spec asks for a new (not joined) or joined namespace of this type.
pub fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    namespaces(spec).iter().any(|ns| ns.typ() == typ)
}

pub fn namespaces(spec: &Spec) -> &[oci_spec::runtime::LinuxNamespace] {
    spec.linux().as_ref().and_then(|l| l.namespaces().as_deref()).unwrap_or(&[])
}

/// Checks everything that can be checked without touching the kernel.
pub fn validate(spec: &Spec, bundle: &Path) -> Result<(), SpecError> {
    validate_version(spec)?;
    let root = rootfs(spec, bundle);
    if spec.root().is_none() {
        return Err(invalid("root", "is required"));
    }
    if !root.is_dir() {
        return Err(invalid("root.path", format!("{} is not a directory", root.display())));
    }
    validate_process(spec)?;
    validate_namespaces(spec)?;
    validate_mounts(spec)?;
    validate_linux(spec)?;
    Ok(())
}

fn validate_version(spec: &Spec) -> Result<(), SpecError> {
    let version = spec.version();
    if version.is_empty() {
        return Err(invalid("ociVersion", "is required"));
    }
    if !version.starts_with("1.") {
        return Err(invalid("ociVersion", format!("{version:?} is not supported (need 1.x)")));
    }
    Ok(())
}

fn validate_process(spec: &Spec) -> Result<(), SpecError> {
    let Some(process) = spec.process() else {
        return Err(invalid("process", "is required to create a container"));
    };
    validate_process_fields(process, "process")
}

/// Checks a process definition (used for `create` and for `exec --process`).
pub fn validate_process_fields(process: &oci_spec::runtime::Process, field: &str) -> Result<(), SpecError> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(invalid(format!("{field}.args"), "must name the program to run")),
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!("{field}.cwd"), format!("{:?} must be an absolute path", process.cwd())));
    }
    for (i, var) in process.env().iter().flatten().enumerate() {
        if !var.contains('=') {
            return Err(invalid(format!("{field}.env[{i}]"), format!("{var:?} is not NAME=value")));
        }
    }
    let mut seen = HashSet::new();
    for (i, rlimit) in process.rlimits().iter().flatten().enumerate() {
        if rlimit.soft() > rlimit.hard() {
            return Err(invalid(
                format!("{field}.rlimits[{i}]"),
                format!("soft limit {} exceeds hard limit {}", rlimit.soft(), rlimit.hard()),
            ));
        }
        if !seen.insert(format!("{:?}", rlimit.typ())) {
            return Err(invalid(format!("{field}.rlimits[{i}]"), format!("{:?} is listed twice", rlimit.typ())));
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(format!("{field}.oomScoreAdj"), format!("{adj} is outside -1000..=1000")));
        }
    }
    if process.scheduler().is_some() {
        return Err(invalid(format!("{field}.scheduler"), "is not supported by berth-runtime"));
    }
    if process.exec_cpu_affinity().is_some() {
        return Err(invalid(format!("{field}.execCPUAffinity"), "is not supported by berth-runtime"));
    }
    if let Some(io) = process.io_priority() {
        if !(0..=7).contains(&io.priority()) {
            return Err(invalid(format!("{field}.ioPriority.priority"), format!("{} is outside 0..=7", io.priority())));
        }
    }
    if let Some(true) = process.terminal() {
        if process.console_size().is_some_and(|b| b.height() > u16::MAX as u64 || b.width() > u16::MAX as u64) {
            return Err(invalid(format!("{field}.consoleSize"), "is larger than 65535"));
        }
    }
    Ok(())
}

fn validate_namespaces(spec: &Spec) -> Result<(), SpecError> {
    let mut seen = HashSet::new();
    for (i, ns) in namespaces(spec).iter().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        if !seen.insert(ns.typ()) {
            return Err(invalid(field, format!("namespace type {} is listed twice", ns.typ())));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(invalid(field, "time namespaces are not supported"));
        }
        if let Some(path) = ns.path() {
            if !path.exists() {
                return Err(invalid(format!("{field}.path"), format!("{} does not exist", path.display())));
            }
        }
    }
    let linux = spec.linux().as_ref();
    let has_maps = linux.is_some_and(|l| l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()));
    let new_user = namespaces(spec).iter().any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_none());
    if has_maps && !has_namespace(spec, LinuxNamespaceType::User) {
        return Err(invalid("linux.uidMappings", "is set but there is no user namespace"));
    }
    if new_user && !has_maps {
        return Err(invalid("linux.uidMappings", "a new user namespace needs uid and gid mappings"));
    }
    if new_user {
        let gid = linux.and_then(|l| l.gid_mappings().as_ref()).is_some_and(|m| !m.is_empty());
        if !gid {
            return Err(invalid("linux.gidMappings", "a new user namespace needs gid mappings"));
        }
    }
    let uts = namespaces(spec).iter().any(|ns| ns.typ() == LinuxNamespaceType::Uts && ns.path().is_none());
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !uts {
        return Err(invalid("hostname", "setting a hostname needs a new UTS namespace"));
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !uts {
        return Err(invalid("domainname", "setting a domainname needs a new UTS namespace"));
    }
    if !has_namespace(spec, LinuxNamespaceType::Mount) {
        validate_without_mount_ns(spec)?;
    }
    Ok(())
}

/// A container without a mount namespace of its own shares the runtime's, and is confined to
/// its root by chroot (CAP_SYS_CHROOT is not in any default set; a read-only root is a
/// detached read-only clone of it). Nothing may be mounted for it, since that would change
/// the host: this is for pods' infra processes, which need no filesystem but their binary.
fn validate_without_mount_ns(spec: &Spec) -> Result<(), SpecError> {
    let why = "needs a mount namespace (linux.namespaces has none)";
    if spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(invalid("mounts", why));
    }
    let linux = spec.linux().as_ref();
    if linux.and_then(|l| l.devices().as_ref()).is_some_and(|d| !d.is_empty()) {
        return Err(invalid("linux.devices", why));
    }
    if linux.and_then(|l| l.masked_paths().as_ref()).is_some_and(|p| !p.is_empty()) {
        return Err(invalid("linux.maskedPaths", why));
    }
    if linux.and_then(|l| l.readonly_paths().as_ref()).is_some_and(|p| !p.is_empty()) {
        return Err(invalid("linux.readonlyPaths", why));
    }
    if linux.and_then(|l| l.rootfs_propagation().as_ref()).is_some() {
        return Err(invalid("linux.rootfsPropagation", why));
    }
    if namespaces(spec).iter().any(|ns| ns.typ() == LinuxNamespaceType::User) {
        return Err(invalid("linux.namespaces", "a user namespace needs a mount namespace too"));
    }
    Ok(())
}

fn validate_mounts(spec: &Spec) -> Result<(), SpecError> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        if m.destination().as_os_str().is_empty() {
            return Err(invalid(format!("{field}.destination"), "is empty"));
        }
        if m.destination().components().any(|c| c == std::path::Component::ParentDir) {
            return Err(invalid(
                format!("{field}.destination"),
                format!("{} contains '..'", m.destination().display()),
            ));
        }
        crate::rootfs::MountFlags::parse(m.options().as_deref().unwrap_or(&[]))
            .map_err(|reason| invalid(format!("{field}.options"), reason))?;
        let is_bind = crate::rootfs::is_bind(m);
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(invalid(format!("{field}.uidMappings"), "idmapped mounts are not supported"));
        }
        if is_bind {
            match m.source() {
                Some(src) if src.exists() => {}
                Some(src) => {
                    return Err(invalid(format!("{field}.source"), format!("{} does not exist", src.display())))
                }
                None => return Err(invalid(format!("{field}.source"), "a bind mount needs a source")),
            }
        }
    }
    Ok(())
}

fn validate_linux(spec: &Spec) -> Result<(), SpecError> {
    let Some(linux) = spec.linux() else { return Ok(()) };
    let unsupported = [
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
        ("linux.timeOffsets", linux.time_offsets().is_some()),
        ("linux.netDevices", linux.net_devices().as_ref().is_some_and(|d| !d.is_empty())),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(invalid(*field, "is not supported by berth-runtime"));
    }
    if linux.personality().as_ref().is_some_and(|p| p.flags().as_ref().is_some_and(|f| !f.is_empty())) {
        return Err(invalid("linux.personality.flags", "personality flags are not supported"));
    }
    for (key, _) in linux.sysctl().iter().flatten() {
        let net = key.starts_with("net.");
        let ipc = key.starts_with("kernel.msg")
            || key.starts_with("kernel.sem")
            || key.starts_with("kernel.shm")
            || key.starts_with("fs.mqueue.");
        let uts = key == "kernel.hostname" || key == "kernel.domainname";
        if net && !has_namespace(spec, LinuxNamespaceType::Network) {
            return Err(invalid(format!("linux.sysctl.{key}"), "net.* sysctls need a network namespace"));
        }
        if ipc && !has_namespace(spec, LinuxNamespaceType::Ipc) {
            return Err(invalid(format!("linux.sysctl.{key}"), "IPC sysctls need an IPC namespace"));
        }
        if !(net || ipc || uts) {
            return Err(invalid(format!("linux.sysctl.{key}"), "is not namespaced: it would change the host"));
        }
    }
    for (i, dev) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        if !dev.path().is_absolute() {
            return Err(invalid(format!("{field}.path"), format!("{:?} must be absolute", dev.path())));
        }
        if matches!(dev.typ(), oci_spec::runtime::LinuxDeviceType::A) {
            return Err(invalid(format!("{field}.type"), "must be c, b, u or p"));
        }
    }
    for (i, p) in linux.masked_paths().iter().flatten().chain(linux.readonly_paths().iter().flatten()).enumerate() {
        if !p.starts_with('/') {
            return Err(invalid(format!("linux.maskedPaths/readonlyPaths[{i}]"), format!("{p:?} must be absolute")));
        }
    }
    if let Some(prop) = linux.rootfs_propagation() {
        crate::rootfs::propagation_flag(prop).ok_or_else(|| {
            invalid(
                "linux.rootfsPropagation",
                format!("{prop:?} is not one of shared, slave, private, unbindable (r-prefixed allowed)"),
            )
        })?;
    }
    // linux.seccomp is validated by compiling it, once, in create.
    if let Some(res) = linux.resources() {
        crate::cgroups::values::validate(res)
            .map_err(|(field, reason)| invalid(format!("linux.resources.{field}"), reason))?;
    }
    Ok(())
}

/// Formats an error and its sources on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid spec over a temp-dir rootfs; `mutate` breaks one thing.
    fn check(mutate: impl FnOnce(&mut serde_json::Value)) -> Result<(), SpecError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let mut v = json!({
            "ociVersion": "1.0.2",
            "root": { "path": "rootfs" },
            "process": { "args": ["sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "hostname": "h",
            "linux": { "namespaces": [{ "type": "mount" }, { "type": "uts" }, { "type": "pid" }] }
        });
        mutate(&mut v);
        let spec: Spec = serde_json::from_value(v).unwrap();
        validate(&spec, dir.path())
    }

    fn field_of(r: Result<(), SpecError>) -> String {
        match r {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_minimal_valid_spec() {
        check(|_| {}).unwrap();
    }

    #[test]
    fn without_a_mount_namespace_nothing_may_be_mounted() {
        let no_mnt =
            |v: &mut serde_json::Value| v["linux"]["namespaces"] = json!([{ "type": "uts" }, { "type": "pid" }]);
        check(no_mnt).unwrap();
        let with = |f: fn(&mut serde_json::Value)| {
            check(move |v| {
                no_mnt(v);
                f(v)
            })
        };
        assert_eq!(
            field_of(with(|v| v["mounts"] = json!([{ "destination": "/proc", "type": "proc", "source": "proc" }]))),
            "mounts"
        );
        assert_eq!(field_of(with(|v| v["linux"]["maskedPaths"] = json!(["/proc/kcore"]))), "linux.maskedPaths");
        assert_eq!(field_of(with(|v| v["linux"]["readonlyPaths"] = json!(["/proc/sys"]))), "linux.readonlyPaths");
        assert_eq!(field_of(with(|v| v["linux"]["rootfsPropagation"] = json!("private"))), "linux.rootfsPropagation");
        assert_eq!(
            field_of(with(
                |v| v["linux"]["devices"] = json!([{ "path": "/dev/null", "type": "c", "major": 1, "minor": 3 }])
            )),
            "linux.devices"
        );
        let userns = |v: &mut serde_json::Value| {
            v["linux"]["namespaces"] = json!([{ "type": "user" }, { "type": "uts" }]);
            v["linux"]["uidMappings"] = json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
            v["linux"]["gidMappings"] = json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
        };
        assert_eq!(field_of(check(userns)), "linux.namespaces");
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(field_of(check(|v| v["ociVersion"] = json!("2.0.0"))), "ociVersion");
        assert_eq!(field_of(check(|v| v["root"]["path"] = json!("missing"))), "root.path");
        assert_eq!(field_of(check(|v| v["process"]["args"] = json!([]))), "process.args");
        assert_eq!(field_of(check(|v| v["process"]["cwd"] = json!("rel"))), "process.cwd");
        assert_eq!(field_of(check(|v| v["process"]["env"] = json!(["NOEQUALS"]))), "process.env[0]");
        assert_eq!(
            field_of(check(|v| v["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "soft": 2, "hard": 1 }]))),
            "process.rlimits[0]"
        );
        assert_eq!(field_of(check(|v| v["process"]["oomScoreAdj"] = json!(5000))), "process.oomScoreAdj");
        assert_eq!(
            field_of(check(|v| v["linux"]["namespaces"] = json!([{ "type": "mount" }, { "type": "mount" }]))),
            "linux.namespaces[1]"
        );
        assert_eq!(field_of(check(|v| v["linux"]["namespaces"] = json!([{ "type": "mount" }]))), "hostname");
        assert_eq!(
            field_of(check(|v| v["linux"]["namespaces"].as_array_mut().unwrap().push(json!({ "type": "user" })))),
            "linux.uidMappings"
        );
        assert_eq!(
            field_of(check(|v| v["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1" }))),
            "linux.sysctl.net.ipv4.ip_forward"
        );
        assert_eq!(
            field_of(check(|v| v["linux"]["sysctl"] = json!({ "vm.swappiness": "1" }))),
            "linux.sysctl.vm.swappiness"
        );
        assert_eq!(field_of(check(|v| v["linux"]["rootfsPropagation"] = json!("sideways"))), "linux.rootfsPropagation");
        assert_eq!(
            field_of(check(
                |v| v["linux"]["devices"] = json!([{ "path": "dev/x", "type": "c", "major": 1, "minor": 3 }])
            )),
            "linux.devices[0].path"
        );
        assert_eq!(
            field_of(check(|v| v["linux"]["resources"] = json!({ "cpu": { "period": 10 } }))),
            "linux.resources.cpu.period"
        );
        assert_eq!(field_of(check(|v| v["linux"]["intelRdt"] = json!({ "closID": "x" }))), "linux.intelRdt");
        assert_eq!(
            field_of(check(
                |v| v["mounts"] = json!([{ "destination": "/x/../../etc", "type": "tmpfs", "source": "tmpfs" }])
            )),
            "mounts[0].destination"
        );
        assert_eq!(
            field_of(
                check(|v| v["mounts"] = json!([{ "destination": "/x", "type": "tmpfs", "options": ["rnosuid"] }]))
            ),
            "mounts[0].options"
        );
        assert_eq!(
            field_of(check(
                |v| v["mounts"] = json!([{ "destination": "/x", "type": "bind", "source": "/no/such/path" }])
            )),
            "mounts[0].source"
        );
    }

    #[test]
    fn parse_errors_carry_position() {
        let err = parse(b"{\"ociVersion\": 1}").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
