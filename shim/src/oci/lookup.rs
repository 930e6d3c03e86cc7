//! The one door from spec building to the host: [`HostLookup`] (profile files, device nodes,
//! mount sources and their propagation, image volumes), its real implementation [`FsLookup`]
//! and, for unit tests, a recording fake.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A device node found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Path below the looked-up path ("" when the looked-up path is the node itself).
    pub relative: PathBuf,
    pub kind: HostDeviceKind,
    pub major: i64,
    pub minor: i64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDeviceKind {
    Char,
    Block,
    Fifo,
}

/// How the mount holding a path propagates (from /proc/self/mountinfo's optional fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    pub shared: bool,
    pub slave: bool,
}

/// What spec building needs to know from the host. Errors are plain io errors; the caller of
/// the spec functions gets them wrapped with the request field they concern.
pub trait HostLookup {
    /// Contents of a Localhost seccomp profile file.
    fn read_seccomp_profile(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The device node at `path` (symlinks followed), or every node below it if it is a directory.
    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>>;
    /// Every device of the host's /dev, for privileged containers.
    fn host_devices(&self) -> io::Result<Vec<HostDevice>>;
    /// A mount source with symlinks resolved; an error if it does not exist.
    fn resolve_host_path(&self, path: &Path) -> io::Result<PathBuf>;
    /// Propagation of the mount that holds `path`.
    fn mount_sharing(&self, path: &Path) -> io::Result<Sharing>;
    /// Host directory holding image `image` (at `sub_path` inside it) for an image volume.
    fn image_volume(&self, image: &str, sub_path: &str) -> io::Result<PathBuf>;
}

/// The real lookups, on this host's filesystem. Image volumes need the image store, which this
/// type does not have: wrap it in a lookup of your own to support them.
#[derive(Debug, Clone, Default)]
pub struct FsLookup;

/// /dev entries a privileged container does not take from the host (runc's list): the runtime
/// makes its own pts, shm, mqueue, console and ptmx.
const SKIP_DEV: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console", "ptmx"];

impl HostLookup for FsLookup {
    fn read_seccomp_profile(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            let mut out = Vec::new();
            walk(path, Path::new(""), &[], &mut out)?;
            return Ok(out);
        }
        match device_of(&meta, PathBuf::new()) {
            Some(d) => Ok(vec![d]),
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a device node")),
        }
    }

    fn host_devices(&self) -> io::Result<Vec<HostDevice>> {
        let mut out = Vec::new();
        walk(Path::new("/dev"), Path::new(""), SKIP_DEV, &mut out)?;
        Ok(out)
    }

    fn resolve_host_path(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }

    fn mount_sharing(&self, path: &Path) -> io::Result<Sharing> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let path = std::fs::canonicalize(path)?;
        mount_sharing(&info, &path).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no mount holds this path"))
    }

    fn image_volume(&self, _image: &str, _sub_path: &str) -> io::Result<PathBuf> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "image volumes are not supported by this lookup"))
    }
}

impl super::Host {
    /// Reads the node's facts: hostname, cgroup layout, swap accounting, cap_last_cap.
    /// `rro_mounts` stays false and the default cgroup parent is "/berth"; the shim sets both.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let swap_controller = if cgroup_v2 {
            let own = read("/proc/self/cgroup").unwrap_or_default();
            let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/').to_owned();
            Path::new("/sys/fs/cgroup").join(rel).join("memory.swap.max").exists()
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        super::Host {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            cgroup_v2,
            swap_controller,
            last_cap: berth_runtime::capabilities::last_cap(),
            ..Default::default()
        }
    }
}

fn device_of(meta: &std::fs::Metadata, relative: PathBuf) -> Option<HostDevice> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        HostDeviceKind::Char
    } else if ft.is_block_device() {
        HostDeviceKind::Block
    } else if ft.is_fifo() {
        HostDeviceKind::Fifo
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(HostDevice {
        relative,
        kind,
        major: i64::from(libc::major(rdev)),
        minor: i64::from(libc::minor(rdev)),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Collects device nodes below `root/rel`, not following symlinks (as runc's HostDevices).
fn walk(root: &Path, rel: &Path, skip: &[&str], out: &mut Vec<HostDevice>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && skip.iter().any(|s| name == *s) {
            continue;
        }
        let child = rel.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&child))?;
        if meta.is_dir() {
            walk(root, &child, skip, out)?;
        } else if let Some(d) = device_of(&meta, child) {
            out.push(d);
        }
    }
    Ok(())
}

/// Propagation of the mount in `mountinfo` (proc(5) format) with the longest mount point that
/// holds `path` (the last such line wins: later mounts shadow earlier ones).
pub fn mount_sharing(mountinfo: &str, path: &Path) -> Option<Sharing> {
    let mut best: Option<(usize, Sharing)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if sep < 6 {
            continue;
        }
        let mount_point = unescape(fields[4]);
        if !path.starts_with(&mount_point) {
            continue;
        }
        let depth = Path::new(&mount_point).components().count();
        let optional = &fields[6..sep];
        let sharing = Sharing {
            shared: optional.iter().any(|o| o.starts_with("shared:")),
            slave: optional.iter().any(|o| o.starts_with("master:")),
        };
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, sharing));
        }
    }
    best.map(|(_, s)| s)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fake [`HostLookup`] for unit tests: canned answers, and every call recorded.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeLookup {
    pub profiles: std::collections::HashMap<PathBuf, Vec<u8>>,
    pub devices: std::collections::HashMap<PathBuf, Vec<HostDevice>>,
    pub host_devices: Vec<HostDevice>,
    /// Mount sources that exist (resolved to themselves unless in `symlinks`).
    pub paths: std::collections::HashSet<PathBuf>,
    pub symlinks: std::collections::HashMap<PathBuf, PathBuf>,
    pub sharing: std::collections::HashMap<PathBuf, Sharing>,
    pub image_volumes: std::collections::HashMap<String, PathBuf>,
    pub calls: std::cell::RefCell<Vec<Call>>,
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ReadSeccompProfile(PathBuf),
    Devices(PathBuf),
    HostDevices,
    ResolveHostPath(PathBuf),
    MountSharing(PathBuf),
    ImageVolume(String, String),
}

#[cfg(test)]
impl HostLookup for FakeLookup {
    fn read_seccomp_profile(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.calls.borrow_mut().push(Call::ReadSeccompProfile(path.into()));
        self.profiles.get(path).cloned().ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn devices(&self, path: &Path) -> io::Result<Vec<HostDevice>> {
        self.calls.borrow_mut().push(Call::Devices(path.into()));
        self.devices.get(path).cloned().ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn host_devices(&self) -> io::Result<Vec<HostDevice>> {
        self.calls.borrow_mut().push(Call::HostDevices);
        Ok(self.host_devices.clone())
    }

    fn resolve_host_path(&self, path: &Path) -> io::Result<PathBuf> {
        self.calls.borrow_mut().push(Call::ResolveHostPath(path.into()));
        if let Some(target) = self.symlinks.get(path) {
            return Ok(target.clone());
        }
        if self.paths.contains(path) {
            Ok(path.into())
        } else {
            Err(io::ErrorKind::NotFound.into())
        }
    }

    fn mount_sharing(&self, path: &Path) -> io::Result<Sharing> {
        self.calls.borrow_mut().push(Call::MountSharing(path.into()));
        Ok(self.sharing.get(path).copied().unwrap_or_default())
    }

    fn image_volume(&self, image: &str, sub_path: &str) -> io::Result<PathBuf> {
        self.calls.borrow_mut().push(Call::ImageVolume(image.into(), sub_path.into()));
        let base = self.image_volumes.get(image).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(if sub_path.is_empty() { base.clone() } else { base.join(sub_path) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /mnt rw,relatime - tmpfs tmpfs rw
31 30 0:27 / /mnt/shared rw,relatime shared:7 - tmpfs tmpfs rw
32 30 0:28 / /mnt/slave rw,relatime master:7 - tmpfs tmpfs rw
33 22 0:29 / /with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mount_sharing_uses_the_deepest_mount() {
        let s = |p: &str| mount_sharing(MOUNTINFO, Path::new(p)).unwrap();
        assert_eq!(s("/etc"), Sharing { shared: true, slave: false });
        assert_eq!(s("/mnt/x"), Sharing::default());
        assert_eq!(s("/mnt/shared/a/b"), Sharing { shared: true, slave: false });
        assert_eq!(s("/mnt/slave"), Sharing { shared: false, slave: true });
        assert_eq!(s("/with space/f"), Sharing::default());
        assert!(mount_sharing("", Path::new("/")).is_none());
    }

    #[test]
    fn fs_lookup_finds_dev_null() {
        let devs = FsLookup.devices(Path::new("/dev/null")).unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!((devs[0].kind, devs[0].major, devs[0].minor), (HostDeviceKind::Char, 1, 3));
        assert_eq!(devs[0].relative, PathBuf::new());
        assert!(FsLookup.devices(Path::new("/etc/hostname")).is_err());
    }

    #[test]
    fn host_detect_reads_this_node() {
        let host = crate::oci::Host::detect();
        assert!(!host.hostname.is_empty());
        assert!(host.last_cap >= 36, "{}", host.last_cap);
        assert!(!host.rro_mounts);
    }

    #[test]
    fn fs_lookup_host_devices_skip_pts() {
        let devs = FsLookup.host_devices().unwrap();
        assert!(devs.iter().any(|d| d.relative == Path::new("null")));
        assert!(devs.iter().all(|d| !d.relative.starts_with("pts") && d.relative != Path::new("ptmx")));
    }
}
