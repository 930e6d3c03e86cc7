//! Device nodes in the container's /dev: the OCI default set plus `linux.devices`, created with
//! mknod, or bind-mounted from the host inside a user namespace (where mknod is not allowed).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, Spec};

use crate::rootfs::{secure_join, RootfsError};
use crate::syscall::Syscall;

/// One device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub path: PathBuf,
    pub kind: libc::mode_t,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The devices every container gets (OCI runtime spec, "Default Devices").
pub fn defaults() -> Vec<Node> {
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
        .into_iter()
        .map(|(name, major, minor)| Node {
            path: Path::new("/dev").join(name),
            kind: libc::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: None,
            gid: None,
        })
        .collect()
}

/// Defaults plus the spec's devices (the spec's entry wins for the same path).
pub fn plan(spec: &Spec) -> Vec<Node> {
    let mut nodes = defaults();
    for dev in spec.linux().as_ref().and_then(|l| l.devices().as_ref()).into_iter().flatten() {
        let kind = match dev.typ() {
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        let node = Node {
            path: dev.path().clone(),
            kind,
            major: dev.major() as u32,
            minor: dev.minor() as u32,
            mode: dev.file_mode().unwrap_or(0o666) & 0o7777,
            uid: dev.uid(),
            gid: dev.gid(),
        };
        nodes.retain(|n| n.path != node.path);
        nodes.push(node);
    }
    nodes
}

/// Creates every planned node under `rootfs` and the standard /dev symlinks.
pub fn create_all(sys: &dyn Syscall, spec: &Spec, rootfs: &Path, in_user_ns: bool) -> Result<(), RootfsError> {
    for node in plan(spec) {
        let dest = secure_join(rootfs, &node.path)
            .map_err(|source| RootfsError::Resolve { path: node.path.clone(), source })?;
        let err = |source| RootfsError::Device { path: node.path.clone(), source };
        if let Some(parent) = dest.parent() {
            sys.create_dir_all(parent).map_err(err)?;
        }
        if in_user_ns {
            sys.create_file(&dest).map_err(err)?;
            sys.mount(Some(&node.path), &dest, None, libc::MS_BIND, None).map_err(err)?;
            continue;
        }
        match sys.mknod(&dest, node.kind | node.mode, libc::makedev(node.major, node.minor)) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            other => other.map_err(err)?,
        }
        // mknod honours the umask; the spec's mode must hold exactly.
        chmod_chown(&dest, &node).map_err(err)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = rootfs.join("dev").join(link);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        sys.symlink(Path::new(target), &path).map_err(|source| RootfsError::Device { path, source })?;
    }
    Ok(())
}

fn chmod_chown(path: &Path, node: &Node) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !path.exists() {
        return Ok(()); // recording fake in tests
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
    if node.uid.is_some() || node.gid.is_some() {
        std::os::unix::fs::chown(path, node.uid, node.gid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_devices_override_defaults() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"devices":[{"path":"/dev/null","type":"c","major":1,"minor":3,"fileMode":438},{"path":"/dev/fuse","type":"c","major":10,"minor":229,"uid":0,"gid":0}]}}"#,
        )
        .unwrap();
        let nodes = plan(&spec);
        assert_eq!(nodes.iter().filter(|n| n.path == Path::new("/dev/null")).count(), 1);
        let fuse = nodes.iter().find(|n| n.path == Path::new("/dev/fuse")).unwrap();
        assert_eq!((fuse.major, fuse.minor, fuse.kind, fuse.mode), (10, 229, libc::S_IFCHR, 0o666));
        assert_eq!(nodes.len(), 7);
    }
}
