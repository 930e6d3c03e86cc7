//! The container's mounts: the default /proc, /dev, /sys set, the sandbox's /etc files and
//! /dev/shm, the termination log, and the CRI mounts (propagation, read-only, recursive
//! read-only, image volumes), user mounts replacing defaults at the same destination, parents
//! sorted before children.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use berth_proto::runtime::v1::{Mount as CriMount, MountPropagation};
use oci_spec::runtime::Mount;

use super::{Ctx, HostLookup, SandboxFiles, SpecError, TerminationLog};

pub(crate) fn mount(dst: &str, typ: &str, src: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dst));
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(PathBuf::from(src)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The mounts every container gets (containerd's defaults without /run); /sys and the cgroup
/// filesystem are writable only for privileged containers.
pub(crate) fn default_mounts(privileged: bool) -> Vec<Mount> {
    let mode = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", mode]),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", mode]),
    ]
}

/// A destination made canonical for comparison: no repeated slashes, no "." parts, no trailing '/'.
pub(crate) fn clean(dst: &str) -> String {
    let mut out = String::new();
    for c in Path::new(dst).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(&n.to_string_lossy());
            }
            Component::ParentDir => out.push_str("/.."),
            Component::Prefix(_) => {}
        }
    }
    if out.is_empty() {
        "/".to_owned()
    } else {
        out
    }
}

fn depth(dst: &Path) -> usize {
    dst.components().filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir)).count()
}

/// One bind mount to add, from a CRI mount or from the sandbox.
#[derive(Debug, Clone)]
struct Bind {
    field: String,
    dst: String,
    src: PathBuf,
    readonly: bool,
    rro: bool,
    propagation: MountPropagation,
    extra: Vec<String>,
}

/// Everything the mount list depends on.
pub(crate) struct MountInput<'a> {
    pub mounts: &'a [CriMount],
    pub files: SandboxFiles<'a>,
    pub host_ipc: bool,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub termination_log: Option<TerminationLog<'a>>,
    pub rro_supported: bool,
}

/// The mounts, and the rootfs propagation they need (rshared / rslave) if any.
pub(crate) struct Mounts {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

pub(crate) fn container_mounts(ctx: &Ctx, input: &MountInput, lookup: &dyn HostLookup) -> Result<Mounts, SpecError> {
    let mut binds = Vec::new();
    for (i, m) in input.mounts.iter().enumerate() {
        binds.push(cri_bind(ctx, &format!("mounts[{i}]"), m, input.rro_supported, lookup)?);
    }
    let mut taken: HashSet<String> = binds.iter().map(|b| b.dst.clone()).collect();
    for b in sandbox_binds(input) {
        if taken.insert(b.dst.clone()) {
            binds.push(b);
        }
    }
    let dev_replaced = taken.contains("/dev");
    let mut out: Vec<Mount> = default_mounts(input.privileged)
        .into_iter()
        .filter(|m| {
            let dst = clean(&m.destination().to_string_lossy());
            let under_replaced_dev = dev_replaced && dst.starts_with("/dev/");
            !taken.contains(&dst) && !under_replaced_dev
        })
        .collect();
    let mut rootfs_propagation: Option<String> = None;
    for b in &binds {
        let prop = match b.propagation {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationHostToContainer => {
                let s = lookup.mount_sharing(&b.src).map_err(|e| ctx.lookup(&b.field, &b.src, e))?;
                if !s.shared && !s.slave {
                    return Err(ctx.invalid(&b.field, format!("{} is not on a shared or slave mount", b.src.display())));
                }
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("rslave".into());
                }
                "rslave"
            }
            MountPropagation::PropagationBidirectional => {
                let s = lookup.mount_sharing(&b.src).map_err(|e| ctx.lookup(&b.field, &b.src, e))?;
                if !s.shared {
                    return Err(ctx.invalid(&b.field, format!("{} is not on a shared mount", b.src.display())));
                }
                rootfs_propagation = Some("rshared".into());
                "rshared"
            }
        };
        let access = if b.rro {
            "rro"
        } else if b.readonly {
            "ro"
        } else {
            "rw"
        };
        let mut options = vec!["rbind".to_owned(), prop.to_owned(), access.to_owned()];
        options.extend(b.extra.iter().cloned());
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(&b.dst));
        m.set_typ(Some("bind".into()));
        m.set_source(Some(b.src.clone()));
        m.set_options(Some(options));
        out.push(m);
    }
    out.sort_by_key(|m| depth(m.destination()));
    Ok(Mounts { mounts: out, rootfs_propagation })
}

fn cri_bind(
    ctx: &Ctx,
    field: &str,
    m: &CriMount,
    rro_supported: bool,
    lookup: &dyn HostLookup,
) -> Result<Bind, SpecError> {
    if !m.container_path.starts_with('/') {
        return Err(
            ctx.invalid(&format!("{field}.container_path"), format!("{:?} must be an absolute path", m.container_path))
        );
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(ctx.invalid(&format!("{field}.uidMappings"), "idmapped mounts are not supported"));
    }
    let propagation = MountPropagation::try_from(m.propagation)
        .map_err(|_| ctx.invalid(&format!("{field}.propagation"), format!("unknown propagation {}", m.propagation)))?;
    let (src, readonly) = match &m.image {
        Some(image) if !image.image.is_empty() => {
            if !m.host_path.is_empty() {
                return Err(ctx.invalid(&format!("{field}.host_path"), "must be empty when image is set"));
            }
            let src = lookup
                .image_volume(&image.image, &m.image_sub_path)
                .map_err(|e| ctx.lookup(&format!("{field}.image"), Path::new(&image.image), e))?;
            (src, true)
        }
        _ => {
            if m.host_path.is_empty() {
                return Err(ctx.invalid(&format!("{field}.host_path"), "is empty"));
            }
            let path = Path::new(&m.host_path);
            let src = lookup.resolve_host_path(path).map_err(|e| ctx.lookup(&format!("{field}.host_path"), path, e))?;
            (src, m.readonly)
        }
    };
    if m.recursive_read_only {
        if !readonly {
            return Err(ctx.invalid(&format!("{field}.recursive_read_only"), "needs readonly: true"));
        }
        if propagation != MountPropagation::PropagationPrivate {
            return Err(ctx.invalid(&format!("{field}.recursive_read_only"), "needs PROPAGATION_PRIVATE"));
        }
        if !rro_supported {
            return Err(ctx.invalid(
                &format!("{field}.recursive_read_only"),
                "recursive read-only mounts are not supported by the runtime",
            ));
        }
    }
    for (i, o) in m.mount_options.iter().enumerate() {
        if o.is_empty() || o.contains(',') {
            return Err(ctx.invalid(&format!("{field}.mount_options[{i}]"), format!("{o:?} is not one mount option")));
        }
    }
    Ok(Bind {
        field: field.to_owned(),
        dst: clean(&m.container_path),
        src,
        readonly,
        rro: m.recursive_read_only,
        propagation,
        extra: m.mount_options.clone(),
    })
}

/// /etc/hostname, /etc/hosts, /etc/resolv.conf (read-only with a read-only rootfs), /dev/shm
/// and the termination log.
fn sandbox_binds(input: &MountInput) -> Vec<Bind> {
    let bind = |field: &str, dst: &str, src: &Path, readonly: bool| Bind {
        field: field.to_owned(),
        dst: clean(dst),
        src: src.to_path_buf(),
        readonly,
        rro: false,
        propagation: MountPropagation::PropagationPrivate,
        extra: Vec::new(),
    };
    let ro = input.readonly_rootfs;
    let mut out = Vec::new();
    if let Some(p) = input.files.hostname {
        out.push(bind("sandbox.hostname", "/etc/hostname", p, ro));
    }
    if let Some(p) = input.files.hosts {
        out.push(bind("sandbox.hosts", "/etc/hosts", p, ro));
    }
    if let Some(p) = input.files.resolv_conf {
        out.push(bind("sandbox.resolv_conf", "/etc/resolv.conf", p, ro));
    }
    let shm = if input.host_ipc { Some(Path::new("/dev/shm")) } else { input.files.shm };
    if let Some(p) = shm {
        out.push(bind("sandbox.shm", "/dev/shm", p, false));
    }
    if let Some(t) = input.termination_log {
        out.push(bind("termination_log", t.container_path, t.host_path, false));
    }
    out
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
