//! Container root filesystems as overlayfs snapshots of an image's unpacked layers, and the
//! store's filesystem usage for CRI's ImageFsInfo.

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use super::error::IoContext;
use super::meta::{write_atomic, Layout};
use super::store::resolve;
use super::{ImageError, ImageStore};

/// Used bytes and inodes of the store's filesystem tree, for CRI `FilesystemUsage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The store root (CRI's image filesystem mountpoint).
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// When measured, nanoseconds since the epoch.
    pub timestamp_nanos: i64,
}

/// The overlay option string length limit (one page).
const MAX_MOUNT_DATA: usize = 4095;

fn check_key(key: &str) -> Result<(), ImageError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key != "."
        && key != ".."
        && key.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Snapshot {
            key: key.to_string(),
            reason: "key must be 1-128 characters of [A-Za-z0-9._-]".into(),
        })
    }
}

/// Layer digests that existing snapshots are built on.
pub(super) fn layers_in_use(layout: &Layout) -> Result<Vec<String>, ImageError> {
    let dir = layout.snapshots();
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).ctx("read", &dir)? {
        let p = e.ctx("read", &dir)?.path().join("layers");
        if let Ok(bytes) = fs::read(&p) {
            let layers: Vec<String> =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Metadata { path: p, source })?;
            out.extend(layers);
        }
    }
    Ok(out)
}

/// The mount at `target` if it is an overlay whose upper dir is `upper`.
fn our_overlay_mounted(target: &Path, upper: &Path) -> bool {
    // An overlay has a device of its own: a target on its parent's device is no overlay
    // mount, and mountinfo (long on a busy node) need not be read.
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(target), target.parent().and_then(dev)) {
        (None, _) => return false,
        (Some(a), Some(b)) if a == b => return false,
        _ => {}
    }
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = target.to_string_lossy();
    let upper = format!("upperdir={}", upper.to_string_lossy());
    info.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (pre, post) = (halves.next().unwrap_or(""), halves.next().unwrap_or(""));
        pre.split(' ').nth(4) == Some(target.as_ref())
            && post.starts_with("overlay ")
            && post.split(',').any(|o| o == upper || o.ends_with(&format!(" {upper}")))
    })
}

/// How a user namespace pod sees its root filesystem: the layers through idmapped mounts of
/// its user namespace, and the writable layer's root owned by the pod's root.
#[derive(Debug, Clone)]
pub struct RootfsIdMap {
    /// The pod's user namespace (/proc/PID/ns/user of its infra process).
    pub userns: PathBuf,
    /// Host ids of the pod's uid 0 and gid 0.
    pub root_uid: u32,
    pub root_gid: u32,
}

impl ImageStore {
    /// Mounts an overlay at `target`: the image's layers (top first) as lower dirs, upper and work
    /// dirs in `snapshots/<key>`. Calling it again for the same key and image re-mounts the same
    /// upper dir if needed (a no-op when already mounted). With `idmap`, the layers are seen
    /// through the pod's user namespace (shared layers stay owned by host ids on disk).
    pub fn prepare_rootfs(
        &self,
        image: &str,
        key: &str,
        target: &Path,
        idmap: Option<&RootfsIdMap>,
    ) -> Result<(), ImageError> {
        check_key(key)?;
        let layout = &self.inner.layout;
        let dir = layout.snapshots().join(key);
        let (layers, created) = {
            let st = self.inner.state();
            let id = resolve(&self.inner.registries, &st.images, image)
                .ok_or_else(|| ImageError::NotFound { name: image.to_string() })?;
            let layers: Vec<String> = st.images[&id].layers.iter().rev().map(|l| l.digest.clone()).collect();
            let record = dir.join("layers");
            let created = match fs::read(&record) {
                Ok(existing) => {
                    if serde_json::from_slice::<Vec<String>>(&existing).ok().as_ref() != Some(&layers) {
                        return Err(ImageError::Snapshot {
                            key: key.to_string(),
                            reason: "exists for another image".into(),
                        });
                    }
                    false
                }
                Err(_) => {
                    // `empty` stands in for the lower dir of an image without layers only.
                    let empty = layers.is_empty().then(|| dir.join("empty"));
                    for d in [dir.join("upper"), dir.join("work")].into_iter().chain(empty) {
                        fs::create_dir_all(&d).ctx("create", &d)?;
                    }
                    let bytes = serde_json::to_vec(&layers).unwrap_or_default();
                    // The temporary file beside the record: in the snapshot's own block group.
                    write_atomic(&dir.join(".layers.tmp"), &record, &bytes)?;
                    true
                }
            };
            (layers, created)
        };
        let upper = dir.join("upper");
        if our_overlay_mounted(target, &upper) {
            return Ok(());
        }
        if let (Some(m), true) = (idmap, created) {
            let upper = dir.join("upper");
            rustix::fs::chown(
                &upper,
                Some(rustix::process::Uid::from_raw(m.root_uid)),
                Some(rustix::process::Gid::from_raw(m.root_gid)),
            )
            .map_err(|e| ImageError::io("chown", &upper, e.into()))?;
        }
        self.mount_overlay(&layers, &dir, target, idmap).inspect_err(|_| {
            if created {
                let _ = fs::remove_dir_all(&dir);
            }
        })
    }

    fn mount_overlay(
        &self,
        layers: &[String],
        dir: &Path,
        target: &Path,
        idmap: Option<&RootfsIdMap>,
    ) -> Result<(), ImageError> {
        // Lower dirs are named through /proc/self/fd so the option string stays short.
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut paths = layers.iter().map(|d| self.inner.layout.layer(d)).collect::<Result<Vec<_>, _>>()?;
        if paths.is_empty() {
            paths.push(dir.join("empty"));
        }
        // Idmapped clones of the layers, attached under the snapshot only until the overlay
        // holds them.
        let mapped = match idmap {
            Some(m) => Some(IdmappedLayers::attach(&paths, &dir.join("idmapped"), m)?),
            None => None,
        };
        let paths = mapped.as_ref().map_or(paths.clone(), |m| m.dirs.clone());
        for p in &paths {
            let fd = rustix::fs::open(p, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| ImageError::io("open layer", p, e.into()))?;
            fds.push(fd);
        }
        let lower: Vec<String> = fds.iter().map(|f| format!("/proc/self/fd/{}", f.as_raw_fd())).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        if data.len() > MAX_MOUNT_DATA {
            return Err(ImageError::Snapshot {
                key: dir.display().to_string(),
                reason: format!("{} layers make the overlay options longer than a page", layers.len()),
            });
        }
        let data = std::ffi::CString::new(data)
            .map_err(|_| ImageError::Snapshot { key: dir.display().to_string(), reason: "NUL in a path".into() })?;
        rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), data.as_c_str())
            .map_err(|e| ImageError::Mount { target: target.to_path_buf(), source: e.into() })?;
        tracing::debug!(target = %target.display(), layers = layers.len(), "overlay mounted");
        Ok(())
    }
}

/// Idmapped mounts of a snapshot's layers, detached and removed on drop.
struct IdmappedLayers {
    dirs: Vec<PathBuf>,
}

impl IdmappedLayers {
    fn attach(layers: &[PathBuf], under: &Path, m: &RootfsIdMap) -> Result<IdmappedLayers, ImageError> {
        let userns = fs::File::open(&m.userns).map_err(|e| ImageError::io("open", &m.userns, e))?;
        let mut out = IdmappedLayers { dirs: Vec::new() };
        for (i, layer) in layers.iter().enumerate() {
            let dir = under.join(i.to_string());
            fs::create_dir_all(&dir).ctx("create", &dir)?;
            let tree = berth_runtime::idmap::idmapped_tree(layer, &userns)
                .map_err(|e| ImageError::io("idmapped mount of", layer, e))?;
            berth_runtime::idmap::attach(&tree, &dir)
                .map_err(|e| ImageError::io("attaching an idmapped layer at", &dir, e))?;
            out.dirs.push(dir);
        }
        Ok(out)
    }
}

impl Drop for IdmappedLayers {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = rustix::mount::unmount(d, UnmountFlags::DETACH);
            let _ = fs::remove_dir(d);
        }
        if let Some(parent) = self.dirs.first().and_then(|d| d.parent()) {
            let _ = fs::remove_dir(parent);
        }
    }
}

impl ImageStore {
    /// Bytes and inodes used by the writable (upper) directory of snapshot `key`, counted as
    /// [`ImageStore::fs_info`] counts the store (for CRI writable-layer stats).
    pub fn snapshot_usage(&self, key: &str) -> Option<(u64, u64)> {
        check_key(key).ok()?;
        tree_usage(&self.inner.layout.snapshots().join(key).join("upper")).ok()
    }

    /// Unmounts the snapshot `key` from `target` (only if our overlay is mounted there) and
    /// deletes its upper and work dirs. Missing is success.
    pub fn remove_snapshot(&self, key: &str, target: &Path) -> Result<(), ImageError> {
        check_key(key)?;
        let dir = self.inner.layout.snapshots().join(key);
        let upper = dir.join("upper");
        while our_overlay_mounted(target, &upper) {
            if let Err(e) = rustix::mount::unmount(target, UnmountFlags::empty()) {
                if e == rustix::io::Errno::BUSY {
                    rustix::mount::unmount(target, UnmountFlags::DETACH)
                        .map_err(|e| ImageError::io("unmount", target, e.into()))?;
                } else {
                    return Err(ImageError::io("unmount", target, e.into()));
                }
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io("remove", &dir, e)),
        }
    }

    /// Bytes (allocated blocks) and inodes used under the store root, hard links counted once,
    /// not crossing into other filesystems.
    pub fn fs_info(&self) -> Result<FsUsage, ImageError> {
        let root = &self.inner.layout.root;
        let (bytes, inodes) = tree_usage(root)?;
        let timestamp_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        Ok(FsUsage { mountpoint: root.clone(), used_bytes: bytes, inodes_used: inodes, timestamp_nanos })
    }
}

/// Allocated bytes and inodes under `root` (itself included), hard links counted once, not
/// crossing into other filesystems; entries vanishing during the walk are skipped.
fn tree_usage(root: &Path) -> Result<(u64, u64), ImageError> {
    let dev = fs::symlink_metadata(root).ctx("stat", root)?.dev();
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::io("stat", &p, e)),
        };
        if m.dev() != dev || !seen.insert(m.ino()) {
            continue;
        }
        inodes += 1;
        bytes += m.blocks() * 512;
        if m.is_dir() {
            match fs::read_dir(&p) {
                Ok(rd) => stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("read", &p, e)),
            }
        }
    }
    Ok((bytes, inodes))
}
