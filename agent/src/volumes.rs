//! Pod volumes on the node: emptyDir (disk, or tmpfs with medium Memory and sizeLimit),
//! hostPath with its type checks, and configMap / secret / downwardAPI / projected volumes
//! (serviceAccountToken sources included, the tokens fetched by `crate::sa_tokens`)
//! written the way kubelet's atomic writer does — files in a timestamped directory, `..data`
//! pointing at it, each entry a link through `..data` — so an update swaps one symlink and a
//! reader never sees half of it. Then each container's volumeMounts as CRI mounts (subPath
//! resolved without leaving the volume).
//!
//! Layout: `<root>/pods/<uid>/volumes/<kind>/<volume>`.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_proto::runtime::v1 as cri;
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use crate::spec::{self, EnvSources};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume:?}: {what} {path}: {source}")]
    Io {
        volume: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// ConfigMap and Secret contents as bytes (secrets may be binary).
pub trait VolumeSources: EnvSources {
    fn config_map_bytes(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.config_map(namespace, name).map(|m| m.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
    }
    fn secret_bytes(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// The pod's current service-account token for a projection (None: not obtained).
    fn service_account_token(&self, _audience: Option<&str>, _expiration_secs: i64) -> Option<String> {
        None
    }
}

/// A pod's prepared volumes: name → host path.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    pub paths: BTreeMap<String, PathBuf>,
}

pub fn pod_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join("pods").join(spec::ids(pod).2)
}

fn io(volume: &str, what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (volume, path) = (volume.to_string(), path.to_path_buf());
    move |source| VolumeError::Io { volume, what, path, source }
}

fn invalid(volume: &str, message: impl Into<String>) -> VolumeError {
    VolumeError::Invalid { volume: volume.into(), message: message.into() }
}

/// A relative path that stays inside its directory (no `..`, not absolute).
fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Makes (or refreshes) every volume of the pod.
pub fn prepare(root: &Path, pod: &Pod, src: &dyn VolumeSources) -> Result<PodVolumes, VolumeError> {
    let base = pod_dir(root, pod).join("volumes");
    let mut out = PodVolumes::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(&base, pod, v, src)?;
        out.paths.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

fn mount_tmpfs(volume: &str, dir: &Path, size: Option<i64>, mode: &str) -> Result<(), VolumeError> {
    if is_mounted(dir) {
        return Ok(());
    }
    let mut data = format!("mode={mode}");
    if let Some(s) = size.filter(|s| *s > 0) {
        data.push_str(&format!(",size={s}"));
    }
    let c = |p: &str| std::ffi::CString::new(p).expect("no NUL");
    let target = c(&dir.to_string_lossy());
    let (tmpfs, opts) = (c("tmpfs"), c(&data));
    // SAFETY: valid C strings; a tmpfs mount on our own directory.
    let r = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            target.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io(volume, "mounting tmpfs at", dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn prepare_one(base: &Path, pod: &Pod, v: &Volume, src: &dyn VolumeSources) -> Result<PathBuf, VolumeError> {
    let (ns, _, _) = spec::ids(pod);
    let name = &v.name;
    let dir = |kind: &str| base.join(kind).join(name);
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(io(name, "creating", p));
    if let Some(e) = &v.empty_dir {
        let d = dir("empty-dir");
        mkdir(&d)?;
        if e.medium.as_deref() == Some("Memory") {
            let size =
                e.size_limit.as_ref().and_then(|q| crate::quantity::Quantity::parse(&q.0).ok()).map(|q| q.units());
            mount_tmpfs(name, &d, size, "1777")?;
        } else {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).map_err(io(name, "chmod", &d))?;
        }
        return Ok(d);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        check_host_path(name, &p, h.type_.as_deref().unwrap_or(""))?;
        return Ok(p);
    }
    if let Some(cm) = &v.config_map {
        let d = dir("configmap");
        let data = src.config_map_bytes(ns, &cm.name);
        let files = match data {
            Some(data) => select(name, &data, cm.items.as_deref(), cm.default_mode)?,
            None if cm.optional == Some(true) => Vec::new(),
            None => return Err(invalid(name, format!("configMap {:?} not found", cm.name))),
        };
        mkdir(&d)?;
        write_atomic(name, &d, &files)?;
        return Ok(d);
    }
    if let Some(s) = &v.secret {
        let d = dir("secret");
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let files = match src.secret_bytes(ns, &secret_name) {
            Some(data) => select(name, &data, s.items.as_deref(), s.default_mode)?,
            None if s.optional == Some(true) => Vec::new(),
            None => return Err(invalid(name, format!("secret {secret_name:?} not found"))),
        };
        mkdir(&d)?;
        // Secrets never touch the node's disk.
        mount_tmpfs(name, &d, None, "0755")?;
        write_atomic(name, &d, &files)?;
        return Ok(d);
    }
    if let Some(d_api) = &v.downward_api {
        let d = dir("downward-api");
        let files = downward_files(name, pod, d_api.items.as_deref().unwrap_or_default(), d_api.default_mode, src)?;
        mkdir(&d)?;
        write_atomic(name, &d, &files)?;
        return Ok(d);
    }
    if let Some(p) = &v.projected {
        let d = dir("projected");
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                match src.config_map_bytes(ns, &cm.name) {
                    Some(data) => files.extend(select(name, &data, cm.items.as_deref(), p.default_mode)?),
                    None if cm.optional == Some(true) => {}
                    None => return Err(invalid(name, format!("configMap {:?} not found", cm.name))),
                }
            }
            if let Some(s) = &source.secret {
                match src.secret_bytes(ns, &s.name) {
                    Some(data) => files.extend(select(name, &data, s.items.as_deref(), p.default_mode)?),
                    None if s.optional == Some(true) => {}
                    None => return Err(invalid(name, format!("secret {:?} not found", s.name))),
                }
            }
            if let Some(dapi) = &source.downward_api {
                files.extend(downward_files(
                    name,
                    pod,
                    dapi.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                    src,
                )?);
            }
            if let Some(t) = &source.service_account_token {
                files.push(token_file(name, t, p.default_mode, src)?);
            }
        }
        mkdir(&d)?;
        write_atomic(name, &d, &files)?;
        return Ok(d);
    }
    Err(invalid(name, "unsupported volume type (emptyDir, hostPath, configMap, secret, downwardAPI and projected are)"))
}

/// A serviceAccountToken projection's file.
fn token_file(
    volume: &str,
    t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    default_mode: Option<i32>,
    src: &dyn VolumeSources,
) -> Result<File, VolumeError> {
    if !safe_relative(&t.path) {
        return Err(invalid(
            volume,
            format!("serviceAccountToken path {:?} must be relative and without '..'", t.path),
        ));
    }
    let secs = t.expiration_seconds.unwrap_or(crate::sa_tokens::DEFAULT_EXPIRATION_SECS);
    if secs < crate::sa_tokens::MIN_EXPIRATION_SECS {
        return Err(invalid(
            volume,
            format!("serviceAccountToken expirationSeconds {secs} is below the minimum of 600"),
        ));
    }
    let audience = t.audience.as_deref().filter(|a| !a.is_empty());
    let token = src.service_account_token(audience, secs).ok_or_else(|| {
        invalid(
            volume,
            format!("no service-account token for audience {:?} (TokenRequest failed)", audience.unwrap_or("<API>")),
        )
    })?;
    Ok((t.path.clone(), token.into_bytes(), default_mode.unwrap_or(0o644) as u32 & 0o777))
}

/// hostPath `type` checks, creating what *OrCreate asks for.
fn check_host_path(volume: &str, p: &Path, kind: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    if !p.is_absolute() {
        return Err(invalid(volume, format!("hostPath {} must be absolute", p.display())));
    }
    let meta = std::fs::metadata(p);
    let is = |f: fn(&std::fs::FileType) -> bool| meta.as_ref().is_ok_and(|m| f(&m.file_type()));
    let ok = match kind {
        "" => true,
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(io(volume, "creating", p))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(io(volume, "chmod", p))?;
            }
            std::fs::metadata(p).is_ok_and(|m| m.is_dir())
        }
        "Directory" => is(|t| t.is_dir()),
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io(volume, "creating", parent))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o644)
                    .open(p)
                    .map_err(io(volume, "creating", p))?;
            }
            std::fs::metadata(p).is_ok_and(|m| m.is_file())
        }
        "File" => is(|t| t.is_file()),
        "Socket" => is(|t| t.is_socket()),
        "CharDevice" => is(|t| t.is_char_device()),
        "BlockDevice" => is(|t| t.is_block_device()),
        other => return Err(invalid(volume, format!("unknown hostPath type {other:?}"))),
    };
    if !ok {
        return Err(invalid(volume, format!("hostPath {} is not a {kind}", p.display())));
    }
    Ok(())
}

/// A file to write: relative path, content, mode.
type File = (String, Vec<u8>, u32);

fn select(
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<Vec<File>, VolumeError> {
    let mode = default_mode.unwrap_or(0o644) as u32 & 0o777;
    match items {
        None => Ok(data.iter().map(|(k, v)| (k.clone(), v.clone(), mode)).collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                if !safe_relative(&i.path) {
                    return Err(invalid(volume, format!("item path {:?} must be relative and without '..'", i.path)));
                }
                let v = data.get(&i.key).ok_or_else(|| invalid(volume, format!("key {:?} not found", i.key)))?;
                Ok((i.path.clone(), v.clone(), i.mode.map_or(mode, |m| m as u32 & 0o777)))
            })
            .collect(),
    }
}

fn downward_files(
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    src: &dyn VolumeSources,
) -> Result<Vec<File>, VolumeError> {
    let mode = default_mode.unwrap_or(0o644) as u32 & 0o777;
    let m = &pod.metadata;
    let render = |map: Option<&BTreeMap<String, String>>| {
        map.iter().flat_map(|m| m.iter()).map(|(k, v)| format!("{k}={v:?}\n")).collect::<String>()
    };
    items
        .iter()
        .map(|i| {
            if !safe_relative(&i.path) {
                return Err(invalid(volume, format!("item path {:?} must be relative and without '..'", i.path)));
            }
            let value = if let Some(f) = &i.field_ref {
                match f.field_path.as_str() {
                    "metadata.labels" => render(m.labels.as_ref()),
                    "metadata.annotations" => render(m.annotations.as_ref()),
                    path => spec::field_ref(pod, src, volume, path).map_err(|e| invalid(volume, e.to_string()))?,
                }
            } else if i.resource_field_ref.is_some() {
                return Err(invalid(volume, "resourceFieldRef items are not supported yet"));
            } else {
                String::new()
            };
            Ok((i.path.clone(), value.into_bytes(), i.mode.map_or(mode, |m| m as u32 & 0o777)))
        })
        .collect()
}

/// kubelet's atomic writer: a new `..<timestamp>` directory with the files, `..data` swapped
/// to it by rename, top-level links through `..data`, the old directory removed. Unchanged
/// contents leave everything as it is.
fn write_atomic(volume: &str, dir: &Path, files: &[File]) -> Result<(), VolumeError> {
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(&current);
        let same = files.iter().all(|(p, v, mode)| {
            std::fs::read(cur.join(p)).is_ok_and(|old| &old == v)
                && std::fs::metadata(cur.join(p)).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode)
        }) && count_files(&cur) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let ts_name = format!("..{stamp}");
    let ts_dir = dir.join(&ts_name);
    std::fs::create_dir_all(&ts_dir).map_err(io(volume, "creating", &ts_dir))?;
    for (rel, content, mode) in files {
        let p = ts_dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(volume, "creating", parent))?;
        }
        std::fs::write(&p, content).map_err(io(volume, "writing", &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).map_err(io(volume, "chmod", &p))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&ts_name, &tmp_link).map_err(io(volume, "linking", &tmp_link))?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link).map_err(io(volume, "swapping", &data_link))?;
    // Top-level entries: links through ..data; stale ones removed.
    let mut tops: Vec<String> = files.iter().map(|(p, _, _)| p.split('/').next().unwrap_or(p).to_string()).collect();
    tops.sort();
    tops.dedup();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link).map_err(io(volume, "linking", &link))?;
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with("..") && !tops.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

/// The container's volumeMounts as CRI mounts.
pub fn container_mounts(volumes: &PodVolumes, c: &Container) -> Result<Vec<cri::Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base =
            volumes.paths.get(&m.name).ok_or_else(|| format!("volumeMount {:?}: no volume of that name", m.name))?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => base.clone(),
            Some(sub) => {
                if !safe_relative(sub) {
                    return Err(format!("volumeMount {:?}: subPath {sub:?} must be relative and without '..'", m.name));
                }
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| format!("volumeMount {:?}: creating subPath {}: {e}", m.name, p.display()))?;
                }
                // A link inside the volume must not lead out of it.
                let real = p.canonicalize().map_err(|e| format!("volumeMount {:?}: {}: {e}", m.name, p.display()))?;
                let real_base =
                    base.canonicalize().map_err(|e| format!("volumeMount {:?}: {}: {e}", m.name, base.display()))?;
                if !real.starts_with(&real_base) {
                    return Err(format!("volumeMount {:?}: subPath {sub:?} leads outside the volume", m.name));
                }
                real
            }
        };
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
            _ => cri::MountPropagation::PropagationPrivate,
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(out)
}

/// Unmounts and removes the pod's volume directories (never a hostPath's contents).
pub fn cleanup(root: &Path, pod: &Pod) -> std::io::Result<()> {
    let dir = pod_dir(root, pod);
    for kind in ["empty-dir", "secret"] {
        if let Ok(rd) = std::fs::read_dir(dir.join("volumes").join(kind)) {
            for e in rd.flatten() {
                let c = std::ffi::CString::new(e.path().to_string_lossy().as_bytes()).expect("no NUL");
                // SAFETY: a valid C path; unmounting what may be our tmpfs (EINVAL otherwise).
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
