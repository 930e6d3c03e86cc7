//! CRI devices → `linux.devices` plus device-cgroup allow rules; privileged containers get
//! every host device and an allow-all rule.

use std::path::{Path, PathBuf};

use berth_proto::runtime::v1::Device;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::{Ctx, HostDevice, HostDeviceKind, HostLookup, SpecError};

/// Devices and cgroup rules for a container.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    pub nodes: Vec<LinuxDevice>,
    pub rules: Vec<LinuxDeviceCgroup>,
}

fn kind(k: HostDeviceKind) -> LinuxDeviceType {
    match k {
        HostDeviceKind::Char => LinuxDeviceType::C,
        HostDeviceKind::Block => LinuxDeviceType::B,
        HostDeviceKind::Fifo => LinuxDeviceType::P,
    }
}

/// The spec's device node for a host device seen at `path` in the container.
pub(crate) fn node(path: PathBuf, d: &HostDevice) -> LinuxDevice {
    let mut n = LinuxDevice::default();
    n.set_path(path);
    n.set_typ(kind(d.kind));
    n.set_major(d.major);
    n.set_minor(d.minor);
    n.set_file_mode(Some(d.mode));
    n.set_uid(Some(d.uid));
    n.set_gid(Some(d.gid));
    n
}

pub(crate) fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_owned()));
    r
}

/// Checks a CRI permissions string ("" means "rwm").
fn permissions(ctx: &Ctx, field: &str, p: &str) -> Result<String, SpecError> {
    if p.is_empty() {
        return Ok("rwm".into());
    }
    if !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(ctx.invalid(field, format!("{p:?} is not made of r, w and m")));
    }
    Ok(p.to_owned())
}

/// Pure part: CRI device `d` (the `i`th), whose host path resolved to `found`.
pub(crate) fn from_found(ctx: &Ctx, i: usize, d: &Device, found: &[HostDevice]) -> Result<Devices, SpecError> {
    let field = format!("devices[{i}]");
    let access = permissions(ctx, &format!("{field}.permissions"), &d.permissions)?;
    let base = if d.container_path.is_empty() { &d.host_path } else { &d.container_path };
    if !base.starts_with('/') {
        return Err(ctx.invalid(&format!("{field}.container_path"), format!("{base:?} must be an absolute path")));
    }
    let mut out = Devices::default();
    for dev in found {
        let path =
            if dev.relative.as_os_str().is_empty() { PathBuf::from(base) } else { Path::new(base).join(&dev.relative) };
        out.nodes.push(node(path, dev));
        out.rules.push(rule(true, Some(kind(dev.kind)), Some(dev.major), Some(dev.minor), &access));
    }
    Ok(out)
}

/// All devices of a container: deny-all then each CRI device (unprivileged), or every host
/// device and allow-all (privileged). The runtime adds the OCI default devices itself.
pub(crate) fn container_devices(
    ctx: &Ctx,
    devices: &[Device],
    privileged: bool,
    lookup: &dyn HostLookup,
) -> Result<Devices, SpecError> {
    let mut out = Devices::default();
    out.rules.push(rule(false, None, None, None, "rwm"));
    for (i, d) in devices.iter().enumerate() {
        if d.host_path.is_empty() {
            return Err(ctx.invalid(&format!("devices[{i}].host_path"), "is empty"));
        }
        let host = Path::new(&d.host_path);
        let found = lookup.devices(host).map_err(|e| ctx.lookup(&format!("devices[{i}].host_path"), host, e))?;
        let one = from_found(ctx, i, d, &found)?;
        out.nodes.extend(one.nodes);
        out.rules.extend(one.rules);
    }
    if privileged {
        let host =
            lookup.host_devices().map_err(|e| ctx.lookup("linux.security_context.privileged", Path::new("/dev"), e))?;
        for d in &host {
            let path = Path::new("/dev").join(&d.relative);
            if !out.nodes.iter().any(|n| n.path() == &path) {
                out.nodes.push(node(path, d));
            }
        }
        out.rules = vec![rule(true, None, None, None, "rwm")];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::FakeLookup;

    fn dev(rel: &str, kind: HostDeviceKind, major: i64, minor: i64) -> HostDevice {
        HostDevice { relative: rel.into(), kind, major, minor, mode: 0o660, uid: 0, gid: 6 }
    }

    fn cri(host: &str, ctr: &str, perms: &str) -> Device {
        Device { host_path: host.into(), container_path: ctr.into(), permissions: perms.into() }
    }

    fn ctx() -> Ctx {
        Ctx::new("containers[web]")
    }

    #[test]
    fn a_device_becomes_a_node_and_an_allow_rule_after_deny_all() {
        let mut lookup = FakeLookup::default();
        lookup.devices.insert("/dev/fuse".into(), vec![dev("", HostDeviceKind::Char, 10, 229)]);
        let got = container_devices(&ctx(), &[cri("/dev/fuse", "/dev/myfuse", "rw")], false, &lookup).unwrap();
        assert_eq!(got.nodes.len(), 1);
        let n = &got.nodes[0];
        assert_eq!(
            (n.path().as_path(), n.typ(), n.major(), n.minor()),
            (Path::new("/dev/myfuse"), LinuxDeviceType::C, 10, 229)
        );
        assert_eq!((n.file_mode(), n.uid(), n.gid()), (Some(0o660), Some(0), Some(6)));
        assert_eq!(got.rules.len(), 2);
        assert!(!got.rules[0].allow());
        assert_eq!(got.rules[0].access().as_deref(), Some("rwm"));
        let r = &got.rules[1];
        assert!(r.allow());
        assert_eq!(
            (r.typ(), r.major(), r.minor(), r.access().as_deref()),
            (Some(LinuxDeviceType::C), Some(10), Some(229), Some("rw"))
        );
    }

    #[test]
    fn empty_container_path_and_permissions_default() {
        let found = [dev("", HostDeviceKind::Block, 8, 0)];
        let got = from_found(&ctx(), 0, &cri("/dev/sda", "", ""), &found).unwrap();
        assert_eq!(got.nodes[0].path(), Path::new("/dev/sda"));
        assert_eq!(got.nodes[0].typ(), LinuxDeviceType::B);
        assert_eq!(got.rules[0].access().as_deref(), Some("rwm"));
    }

    #[test]
    fn a_directory_adds_every_node_below_it() {
        let found = [dev("card0", HostDeviceKind::Char, 226, 0), dev("renderD128", HostDeviceKind::Char, 226, 128)];
        let got = from_found(&ctx(), 0, &cri("/dev/dri", "/dev/dri", "rw"), &found).unwrap();
        let paths: Vec<_> = got.nodes.iter().map(|n| n.path().clone()).collect();
        assert_eq!(paths, vec![PathBuf::from("/dev/dri/card0"), PathBuf::from("/dev/dri/renderD128")]);
    }

    #[test]
    fn bad_permissions_and_missing_devices_name_the_field() {
        let err = from_found(&ctx(), 2, &cri("/dev/x", "", "rwx"), &[]).unwrap_err();
        assert_eq!(err.field(), "containers[web].devices[2].permissions");
        let err = container_devices(&ctx(), &[cri("/dev/nope", "", "r")], false, &FakeLookup::default()).unwrap_err();
        assert_eq!(err.field(), "containers[web].devices[0].host_path");
        assert!(matches!(err, SpecError::Lookup { .. }));
        let err = from_found(&ctx(), 0, &cri("/dev/x", "dev/x", "r"), &[]).unwrap_err();
        assert_eq!(err.field(), "containers[web].devices[0].container_path");
    }

    #[test]
    fn privileged_gets_host_devices_and_allow_all() {
        let mut lookup = FakeLookup {
            host_devices: vec![dev("null", HostDeviceKind::Char, 1, 3), dev("fuse", HostDeviceKind::Char, 10, 229)],
            ..Default::default()
        };
        lookup.devices.insert("/dev/fuse".into(), vec![dev("", HostDeviceKind::Char, 10, 229)]);
        let got = container_devices(&ctx(), &[cri("/dev/fuse", "/dev/fuse", "r")], true, &lookup).unwrap();
        let paths: Vec<_> = got.nodes.iter().map(|n| n.path().clone()).collect();
        assert_eq!(paths, vec![PathBuf::from("/dev/fuse"), PathBuf::from("/dev/null")]);
        assert_eq!(got.rules.len(), 1);
        assert!(got.rules[0].allow() && got.rules[0].typ().is_none());
    }
}
