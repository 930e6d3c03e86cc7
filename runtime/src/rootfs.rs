//! The container's root filesystem: mount-option parsing, safe path resolution inside the
//! rootfs, the spec's mounts, pivot_root, and the masked/readonly paths applied after it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use libc::c_ulong;
use oci_spec::runtime::{Mount, Spec};

use crate::devices;
use crate::syscall::Syscall;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("preparing mount point {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pivot_root into {rootfs}")]
    Pivot {
        rootfs: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("chroot into {rootfs}")]
    Chroot {
        rootfs: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resolving {path} inside the rootfs")]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating device {path}")]
    Device {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Parsed `mounts[].options`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountFlags {
    pub flags: c_ulong,
    pub propagation: Vec<c_ulong>,
    pub data: Vec<String>,
    /// `rro`: the whole bind mount tree read-only (mount_setattr with AT_RECURSIVE).
    pub recursive_ro: bool,
}

impl MountFlags {
    /// Splits OCI mount options into mount(2) flags, propagation changes and fs data.
    pub fn parse(options: &[String]) -> Result<MountFlags, String> {
        let mut out = MountFlags::default();
        for opt in options {
            if let Some(flag) = propagation_flag(opt) {
                out.propagation.push(flag);
                continue;
            }
            if opt == "rro" {
                out.recursive_ro = true;
                continue;
            }
            let (set, clear): (c_ulong, c_ulong) = match opt.as_str() {
                "defaults" => (0, 0),
                "ro" => (libc::MS_RDONLY, 0),
                "rw" => (0, libc::MS_RDONLY),
                "suid" => (0, libc::MS_NOSUID),
                "nosuid" => (libc::MS_NOSUID, 0),
                "dev" => (0, libc::MS_NODEV),
                "nodev" => (libc::MS_NODEV, 0),
                "exec" => (0, libc::MS_NOEXEC),
                "noexec" => (libc::MS_NOEXEC, 0),
                "sync" => (libc::MS_SYNCHRONOUS, 0),
                "async" => (0, libc::MS_SYNCHRONOUS),
                "dirsync" => (libc::MS_DIRSYNC, 0),
                "remount" => (libc::MS_REMOUNT, 0),
                "mand" => (libc::MS_MANDLOCK, 0),
                "nomand" => (0, libc::MS_MANDLOCK),
                "atime" => (0, libc::MS_NOATIME),
                "noatime" => (libc::MS_NOATIME, 0),
                "diratime" => (0, libc::MS_NODIRATIME),
                "nodiratime" => (libc::MS_NODIRATIME, 0),
                "bind" => (libc::MS_BIND, 0),
                "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
                "relatime" => (libc::MS_RELATIME, 0),
                "norelatime" => (0, libc::MS_RELATIME),
                "strictatime" => (libc::MS_STRICTATIME, 0),
                "nostrictatime" => (0, libc::MS_STRICTATIME),
                "silent" => (libc::MS_SILENT, 0),
                "loud" => (0, libc::MS_SILENT),
                "tmpcopyup" | "idmap" | "ridmap" => return Err(format!("option {opt:?} is not supported")),
                o if o.starts_with('r')
                    && matches!(&o[1..], "ro" | "rw" | "nosuid" | "nodev" | "noexec" | "noatime") =>
                {
                    return Err(format!("recursive option {opt:?} is not supported"))
                }
                "" => return Err("empty option".into()),
                data => {
                    out.data.push(data.to_owned());
                    continue;
                }
            };
            out.flags = (out.flags | set) & !clear;
        }
        Ok(out)
    }

    pub fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// The mount(2) flag for a propagation name (`shared`, `rslave`, ...).
pub fn propagation_flag(name: &str) -> Option<c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind") || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind")
}

/// Resolves `unsafe_path` as if `root` were `/`: symlinks are followed inside the root, `..`
/// never climbs above it. The result may not exist yet.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = unsafe_path.components().rev().filter_map(component_name).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(target.components().rev().filter_map(component_name));
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved))
}

fn component_name(c: Component<'_>) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

/// A host cgroup directory to expose at the container's cgroup mount.
#[derive(Debug, Clone)]
pub struct CgroupBind {
    pub host_dir: PathBuf,
    /// Sub-directory name under the mount (`memory`, `cpu,cpuacct`, `unified`); empty for a pure v2 host.
    pub name: String,
}

/// What the rootfs setup needs to know beyond the spec.
pub struct Context<'a> {
    pub rootfs: &'a Path,
    pub cgroup_binds: &'a [CgroupBind],
    /// The container has its own user namespace: device nodes are bind-mounted, not created.
    pub in_user_ns: bool,
}

/// Everything before pivot_root: propagation, the rootfs bind, the spec's mounts and /dev.
pub fn prepare(sys: &dyn Syscall, spec: &Spec, ctx: &Context<'_>) -> Result<(), RootfsError> {
    let prop = spec.linux().as_ref().and_then(|l| l.rootfs_propagation().as_deref()).and_then(propagation_flag);
    let shared = prop.is_some_and(|p| p & libc::MS_SHARED != 0);
    let propagation = |flags, target: &Path| {
        sys.mount(None, target, None, flags, None).map_err(|source| RootfsError::Mount {
            what: "propagation".into(),
            target: target.into(),
            source,
        })
    };
    if shared {
        // Bidirectional volumes need the host's peer groups kept: "/" stays as it is and only
        // the rootfs mount and its bind become private (pivot_root refuses shared ones).
        propagation(libc::MS_PRIVATE, ctx.rootfs)?;
    } else {
        // An unbindable root cannot be bind-mounted, so it starts as slave; finalize() applies
        // the requested propagation after the pivot.
        let initial = match prop {
            Some(p) if p & libc::MS_UNBINDABLE == 0 => p | libc::MS_REC,
            _ => libc::MS_SLAVE | libc::MS_REC,
        };
        propagation(initial, Path::new("/"))?;
    }
    sys.mount(Some(ctx.rootfs), ctx.rootfs, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(|source| RootfsError::Mount { what: "rootfs bind".into(), target: ctx.rootfs.into(), source })?;
    if shared {
        propagation(libc::MS_PRIVATE, ctx.rootfs)?;
    }
    let mut dev_from_host = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && is_bind(m) {
            dev_from_host = true;
        }
        mount_one(sys, m, ctx)?;
    }
    if !dev_from_host {
        devices::create_all(sys, spec, ctx.rootfs, ctx.in_user_ns)?;
    }
    Ok(())
}

fn resolve(ctx: &Context<'_>, dest: &Path) -> Result<PathBuf, RootfsError> {
    secure_join(ctx.rootfs, dest).map_err(|source| RootfsError::Resolve { path: dest.into(), source })
}

fn mount_one(sys: &dyn Syscall, m: &Mount, ctx: &Context<'_>) -> Result<(), RootfsError> {
    let opts = MountFlags::parse(m.options().as_deref().unwrap_or(&[])).unwrap_or_default();
    let dest = resolve(ctx, m.destination())?;
    let typ = m.typ().as_deref().unwrap_or("none");
    let prepare_err = |source| RootfsError::Prepare { path: dest.clone(), source };
    let mount_err = |what: &str, source| RootfsError::Mount { what: what.into(), target: dest.clone(), source };
    if is_bind(m) {
        let source = m.source().clone().unwrap_or_default();
        if source.is_dir() { sys.create_dir_all(&dest) } else { sys.create_file(&dest) }.map_err(prepare_err)?;
        sys.mount(Some(&source), &dest, None, libc::MS_BIND | (opts.flags & libc::MS_REC), None)
            .map_err(|e| mount_err(&source.display().to_string(), e))?;
        let extra = opts.flags & !(libc::MS_BIND | libc::MS_REC);
        if extra != 0 {
            remount(sys, &dest, libc::MS_BIND | extra).map_err(|e| mount_err("bind remount", e))?;
        }
        if opts.recursive_ro {
            sys.readonly_recursive(&dest).map_err(|e| mount_err("recursive read-only (rro)", e))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(sys, &dest, &opts, ctx)?;
    } else {
        sys.create_dir_all(&dest).map_err(prepare_err)?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let data = opts.data();
        let res = sys.mount(Some(&source), &dest, Some(typ), opts.flags, data.as_deref());
        match res {
            // sysfs and mqueue cannot be mounted fresh from a user namespace that does not own
            // the network/IPC namespace: fall back to the host's, read-only as runc does.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && (typ == "sysfs" || typ == "mqueue") => {
                let host = if typ == "sysfs" { "/sys" } else { "/dev/mqueue" };
                sys.mount(Some(Path::new(host)), &dest, None, libc::MS_BIND | libc::MS_REC, None)
                    .map_err(|e| mount_err(host, e))?;
                remount(sys, &dest, libc::MS_BIND | opts.flags).map_err(|e| mount_err(host, e))?;
            }
            other => other.map_err(|e| mount_err(typ, e))?,
        }
    }
    for flag in &opts.propagation {
        sys.mount(None, &dest, None, *flag, None).map_err(|e| mount_err("propagation", e))?;
    }
    Ok(())
}

/// Remounts with `flags`; if the kernel refuses because the mount has locked flags (as in a
/// user namespace), retries keeping them.
fn remount(sys: &dyn Syscall, target: &Path, flags: c_ulong) -> io::Result<()> {
    match sys.mount(None, target, None, flags | libc::MS_REMOUNT, None) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let locked = sys.mount_flags(target)?;
            sys.mount(None, target, None, flags | libc::MS_REMOUNT | locked, None)
        }
        other => other,
    }
}

/// The cgroup mount shows the container's own cgroup: a bind of its directory on a pure v2
/// host, or a tmpfs with one bind per hierarchy on v1 and hybrid hosts.
fn mount_cgroup(sys: &dyn Syscall, dest: &Path, opts: &MountFlags, ctx: &Context<'_>) -> Result<(), RootfsError> {
    let err =
        |what: &str, target: &Path, source| RootfsError::Mount { what: what.into(), target: target.into(), source };
    sys.create_dir_all(dest).map_err(|source| RootfsError::Prepare { path: dest.into(), source })?;
    let flags = opts.flags & !libc::MS_RDONLY;
    let bind_flags =
        libc::MS_BIND | (opts.flags & (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC));
    if let [only] = ctx.cgroup_binds {
        if only.name.is_empty() {
            sys.mount(Some(&only.host_dir), dest, None, libc::MS_BIND, None).map_err(|e| err("cgroup2", dest, e))?;
            return remount(sys, dest, bind_flags).map_err(|e| err("cgroup2 remount", dest, e));
        }
    }
    sys.mount(Some(Path::new("tmpfs")), dest, Some("tmpfs"), flags, Some("mode=755"))
        .map_err(|e| err("cgroup tmpfs", dest, e))?;
    for bind in ctx.cgroup_binds {
        let target = dest.join(&bind.name);
        sys.create_dir_all(&target).map_err(|source| RootfsError::Prepare { path: target.clone(), source })?;
        sys.mount(Some(&bind.host_dir), &target, None, libc::MS_BIND, None).map_err(|e| err(&bind.name, &target, e))?;
        remount(sys, &target, bind_flags).map_err(|e| err(&bind.name, &target, e))?;
        if bind.name.contains(',') {
            for part in bind.name.split(',') {
                let link = dest.join(part);
                sys.symlink(Path::new(&bind.name), &link)
                    .map_err(|source| RootfsError::Prepare { path: link, source })?;
            }
        }
    }
    if opts.flags & libc::MS_RDONLY != 0 {
        remount(sys, dest, libc::MS_RDONLY | flags).map_err(|e| err("cgroup tmpfs remount", dest, e))?;
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root(".", ".") then detach the old root stacked beneath.
pub fn pivot(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Pivot { rootfs: rootfs.into(), source };
    let old_root = open_dir(Path::new("/")).map_err(err)?;
    let new_root = open_dir(rootfs).map_err(err)?;
    sys.fchdir(new_root.as_fd()).map_err(err)?;
    sys.pivot_root(Path::new("."), Path::new(".")).map_err(err)?;
    sys.fchdir(old_root.as_fd()).map_err(err)?;
    // Keep unmount events of the old root from propagating back to the host.
    sys.mount(None, Path::new("."), None, libc::MS_SLAVE | libc::MS_REC, None).map_err(err)?;
    sys.umount2(Path::new("."), libc::MNT_DETACH).map_err(err)?;
    sys.chdir(Path::new("/")).map_err(err)
}

/// Confines a container without a mount namespace to `rootfs`: chroot, then cwd inside it.
/// A read-only root is a detached read-only clone of the rootfs mount, entered by fd: the
/// host's mount table does not change.
pub fn chroot(sys: &dyn Syscall, rootfs: &Path, readonly: bool) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Chroot { rootfs: rootfs.into(), source };
    if readonly {
        let tree = crate::idmap::readonly_tree(rootfs).map_err(err)?;
        sys.fchdir(tree.as_fd()).map_err(err)?;
        sys.chroot(Path::new(".")).map_err(err)?;
    } else {
        sys.chroot(rootfs).map_err(err)?;
    }
    sys.chdir(Path::new("/")).map_err(err)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    std::fs::File::open(path).map(OwnedFd::from)
}

/// After pivot_root: readonly and masked paths, the readonly root, root propagation.
pub fn finalize(sys: &dyn Syscall, spec: &Spec) -> Result<(), RootfsError> {
    let linux = spec.linux().as_ref();
    for path in linux.and_then(|l| l.readonly_paths().as_ref()).into_iter().flatten() {
        let p = Path::new(path);
        if !p.exists() {
            continue;
        }
        let err = |source| RootfsError::Mount { what: "readonly path".into(), target: p.into(), source };
        sys.mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None).map_err(err)?;
        remount(sys, p, libc::MS_BIND | libc::MS_RDONLY | libc::MS_REC).map_err(err)?;
    }
    for path in linux.and_then(|l| l.masked_paths().as_ref()).into_iter().flatten() {
        let p = Path::new(path);
        let err = |source| RootfsError::Mount { what: "masked path".into(), target: p.into(), source };
        match std::fs::metadata(p) {
            Ok(meta) if meta.is_dir() => {
                sys.mount(Some(Path::new("tmpfs")), p, Some("tmpfs"), libc::MS_RDONLY, None).map_err(err)?
            }
            Ok(_) => sys.mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None).map_err(err)?,
            Err(_) => continue,
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        remount(sys, Path::new("/"), libc::MS_BIND | libc::MS_RDONLY).map_err(|source| RootfsError::Mount {
            what: "readonly root".into(),
            target: "/".into(),
            source,
        })?;
    }
    if let Some(flag) = linux.and_then(|l| l.rootfs_propagation().as_deref()).and_then(propagation_flag) {
        sys.mount(None, Path::new("/"), None, flag, None).map_err(|source| RootfsError::Mount {
            what: "rootfs propagation".into(),
            target: "/".into(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::fake::{Call, Recorder};

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_propagation_and_data() {
        let f = MountFlags::parse(&opts(&["nosuid", "noexec", "nodev", "rslave", "mode=755", "size=65536k"])).unwrap();
        assert_eq!(f.flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV);
        assert_eq!(f.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        assert_eq!(f.data().as_deref(), Some("mode=755,size=65536k"));
        let f = MountFlags::parse(&opts(&["ro", "rw"])).unwrap();
        assert_eq!(f.flags & libc::MS_RDONLY, 0, "later option wins");
        let f = MountFlags::parse(&opts(&["rbind", "rro"])).unwrap();
        assert!(f.recursive_ro && f.flags & libc::MS_RDONLY == 0);
        assert!(MountFlags::parse(&opts(&["rnosuid"])).unwrap_err().contains("rnosuid"));
    }

    #[test]
    fn secure_join_keeps_symlinks_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(secure_join(r, Path::new("/abs/passwd")).unwrap(), r.join("etc/passwd"));
        assert_eq!(secure_join(r, Path::new("/rel/passwd")).unwrap(), r.join("etc/passwd"));
        assert_eq!(secure_join(r, Path::new("/../../x")).unwrap(), r.join("x"));
        assert_eq!(secure_join(r, Path::new("new/dir")).unwrap(), r.join("new/dir"));
        assert_eq!(secure_join(r, Path::new("/loop")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn bind_mount_with_ro_is_bound_then_remounted() {
        let root = tempfile::tempdir().unwrap();
        let m: Mount = serde_json::from_str(
            r#"{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","ro","nosuid"]}"#,
        )
        .unwrap();
        let sys = Recorder::default();
        let ctx = Context { rootfs: root.path(), cgroup_binds: &[], in_user_ns: false };
        mount_one(&sys, &m, &ctx).unwrap();
        let dest = root.path().join("data");
        assert_eq!(
            sys.calls(),
            vec![
                Call::CreateDir(dest.clone()),
                Call::Mount {
                    source: Some("/tmp".into()),
                    target: dest.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None
                },
                Call::Mount {
                    source: None,
                    target: dest,
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_REMOUNT,
                    data: None
                },
            ]
        );
    }

    #[test]
    fn hybrid_cgroup_mount_is_tmpfs_with_binds() {
        let root = tempfile::tempdir().unwrap();
        let m: Mount = serde_json::from_str(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro","nosuid"]}"#,
        )
        .unwrap();
        let binds = [
            CgroupBind { host_dir: "/sys/fs/cgroup/memory/berth/x".into(), name: "memory".into() },
            CgroupBind { host_dir: "/sys/fs/cgroup/unified/berth/x".into(), name: "unified".into() },
        ];
        let sys = Recorder::default();
        let ctx = Context { rootfs: root.path(), cgroup_binds: &binds, in_user_ns: false };
        mount_one(&sys, &m, &ctx).unwrap();
        let calls = sys.calls();
        let dest = root.path().join("sys/fs/cgroup");
        assert!(matches!(&calls[1], Call::Mount { fstype: Some(t), target, .. } if t == "tmpfs" && *target == dest));
        let binds: Vec<_> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { source: Some(s), flags, .. } if *flags == libc::MS_BIND => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            binds,
            vec![PathBuf::from("/sys/fs/cgroup/memory/berth/x"), PathBuf::from("/sys/fs/cgroup/unified/berth/x")]
        );
        assert!(
            matches!(calls.last().unwrap(), Call::Mount { flags, .. } if flags & libc::MS_RDONLY != 0 && flags & libc::MS_REMOUNT != 0)
        );
    }

    #[test]
    fn pivot_detaches_old_root() {
        let sys = Recorder::default();
        pivot(&sys, Path::new("/")).unwrap();
        let calls = sys.calls();
        assert!(calls.contains(&Call::PivotRoot { new_root: ".".into(), put_old: ".".into() }));
        assert!(calls.contains(&Call::Umount { target: ".".into(), flags: libc::MNT_DETACH }));
        assert_eq!(calls.last(), Some(&Call::Chdir("/".into())));
    }
}
