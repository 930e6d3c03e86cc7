use std::collections::HashSet;
use std::path::Path;

use berth_proto::runtime::v1::{security_profile::ProfileType, Capability as CriCapability, SecurityProfile};
use oci_spec::runtime::Capability;

use super::*;
use crate::oci::testutil::*;
use crate::oci::{HostDevice, HostDeviceKind, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};

#[test]
fn default_capabilities_are_containerds() {
    let spec = Fixture::new().spec();
    let caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
    let want: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    assert_eq!(caps.bounding().as_ref(), Some(&want));
    assert_eq!(caps.permitted().as_ref(), Some(&want));
    assert_eq!(caps.effective().as_ref(), Some(&want));
    assert_eq!(caps.inheritable().as_ref(), Some(&HashSet::new()));
    assert_eq!(caps.ambient().as_ref(), Some(&HashSet::new()));
}

#[test]
fn capabilities_add_drop_and_ambient() {
    let mut fx = Fixture::new();
    fx.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["SYS_ADMIN".into(), "cap_net_admin".into()],
        drop_capabilities: vec!["CAP_CHOWN".into(), "kill".into()],
        add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
    });
    let spec = fx.spec();
    fx.validate(&spec);
    let eff = effective(&spec);
    assert!(eff.contains(&Capability::SysAdmin) && eff.contains(&Capability::NetAdmin));
    assert!(!eff.contains(&Capability::Chown) && !eff.contains(&Capability::Kill));
    let caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
    assert_eq!(caps.ambient().clone().unwrap(), [Capability::NetBindService].into());
    assert_eq!(caps.inheritable().clone().unwrap(), [Capability::NetBindService].into());
}

#[test]
fn capabilities_all() {
    let mut fx = Fixture::new();
    fx.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["ALL".into()],
        drop_capabilities: vec!["CHOWN".into()],
        ..Default::default()
    });
    let eff = effective(&fx.spec());
    assert_eq!(eff.len(), 40, "41 known to a last_cap=40 kernel, minus CHOWN");
    fx.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["NET_RAW".into()],
        drop_capabilities: vec!["all".into()],
        ..Default::default()
    });
    assert_eq!(effective(&fx.spec()), [Capability::NetRaw].into());
    fx.sc().capabilities = Some(CriCapability { add_capabilities: vec!["NOPE".into()], ..Default::default() });
    assert_eq!(
        fx.build().unwrap_err().field(),
        "containers[web].linux.security_context.capabilities.add_capabilities[0]"
    );
}

#[test]
fn privileged_container() {
    let mut fx = Fixture::new();
    fx.sc().privileged = true;
    assert_eq!(fx.build().unwrap_err().field(), "containers[web].linux.security_context.privileged");
    fx.pod_sc().privileged = true;
    fx.sc().seccomp = Some(SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, ..Default::default() });
    fx.sc().capabilities = Some(CriCapability { drop_capabilities: vec!["ALL".into()], ..Default::default() });
    fx.lookup.host_devices = vec![HostDevice {
        relative: "kvm".into(),
        kind: HostDeviceKind::Char,
        major: 10,
        minor: 232,
        mode: 0o660,
        uid: 0,
        gid: 0,
    }];
    let built = fx.build().unwrap();
    let spec = built.spec;
    fx.validate(&spec);
    assert_eq!(effective(&spec).len(), 41);
    assert!(seccomp_mode(&spec).is_none());
    assert!(built.warnings.iter().any(|w| w.contains("seccomp")), "{:?}", built.warnings);
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 0);
    assert_eq!(linux.readonly_paths().as_ref().unwrap().len(), 0);
    assert_eq!(options(mount_at(&spec, "/sys").unwrap()).last().map(String::as_str), Some("rw"));
    assert_eq!(options(mount_at(&spec, "/sys/fs/cgroup").unwrap()).last().map(String::as_str), Some("rw"));
    assert_eq!(linux.devices().as_ref().unwrap()[0].path(), Path::new("/dev/kvm"));
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(rules.len() == 1 && rules[0].allow());
}

#[test]
fn masked_and_readonly_paths() {
    let mut fx = Fixture::new();
    let linux = fx.spec().linux().clone().unwrap();
    assert_eq!(linux.masked_paths().clone().unwrap(), DEFAULT_MASKED_PATHS.map(String::from).to_vec());
    assert_eq!(linux.readonly_paths().clone().unwrap(), DEFAULT_READONLY_PATHS.map(String::from).to_vec());
    fx.sc().masked_paths = vec!["/bin/ls".into()];
    fx.sc().readonly_paths = vec!["/tmp".into()];
    let linux = fx.spec().linux().clone().unwrap();
    assert_eq!(linux.masked_paths().clone().unwrap(), vec!["/bin/ls"]);
    assert_eq!(linux.readonly_paths().clone().unwrap(), vec!["/tmp"]);
}

#[test]
fn seccomp_profiles() {
    let mut fx = Fixture::new();
    assert!(seccomp_mode(&fx.spec()).is_none(), "nil profile is unconfined (critest)");
    fx.sc().seccomp = Some(SecurityProfile::default());
    assert_eq!(seccomp_mode(&fx.spec()), Some(&berth_runtime::seccomp::default_profile()), "RuntimeDefault");
    fx.sc().seccomp = Some(SecurityProfile { profile_type: ProfileType::Unconfined as i32, ..Default::default() });
    assert!(seccomp_mode(&fx.spec()).is_none());
    let profile =
        br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}"#;
    fx.lookup.profiles.insert("/profiles/block.json".into(), profile.to_vec());
    fx.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/profiles/block.json".into(),
    });
    let spec = fx.spec();
    fx.validate(&spec);
    assert_eq!(seccomp_mode(&spec).unwrap().syscalls().as_ref().unwrap()[0].names(), &vec!["sethostname".to_string()]);
    fx.sc().seccomp.as_mut().unwrap().localhost_ref = "/profiles/missing.json".into();
    let err = fx.build().unwrap_err();
    assert!(matches!(err, SpecError::Lookup { .. }));
    assert_eq!(err.field(), "containers[web].linux.security_context.seccomp");
}

#[test]
#[allow(deprecated)]
fn deprecated_seccomp_profile_path() {
    let mut fx = Fixture::new();
    for (path, confined) in [("runtime/default", true), ("docker/default", true), ("unconfined", false), ("", false)] {
        fx.sc().seccomp_profile_path = path.into();
        assert_eq!(seccomp_mode(&fx.spec()).is_some(), confined, "{path:?}");
    }
    fx.lookup.profiles.insert("/p.json".into(), br#"{"defaultAction": "SCMP_ACT_ALLOW"}"#.to_vec());
    fx.sc().seccomp_profile_path = "localhost//p.json".into();
    assert!(seccomp_mode(&fx.spec()).is_some());
    fx.sc().seccomp_profile_path = "bogus".into();
    assert_eq!(fx.build().unwrap_err().field(), "containers[web].linux.security_context.seccomp_profile_path");
}

#[test]
fn apparmor_and_selinux_are_ignored_with_warnings() {
    let mut fx = Fixture::new();
    fx.sc().apparmor =
        Some(SecurityProfile { profile_type: ProfileType::Localhost as i32, localhost_ref: "k8s-deny".into() });
    fx.sc().selinux_options = Some(Default::default());
    let w = fx.build().unwrap().warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("AppArmor") && w[0].contains("k8s-deny"));
    fx.sc().apparmor = Some(SecurityProfile { profile_type: ProfileType::Unconfined as i32, ..Default::default() });
    fx.sc().selinux_options = None;
    assert!(fx.build().unwrap().warnings.is_empty());
}

#[test]
fn no_new_privs_only_when_asked() {
    let mut fx = Fixture::new();
    fx.sc().no_new_privs = true;
    assert_eq!(fx.spec().process().as_ref().unwrap().no_new_privileges(), Some(true));
}
