use std::collections::HashSet;

use berth_proto::runtime::v1::{
    security_profile::ProfileType, Int64Value, LinuxPodSandboxConfig, NamespaceOption, PodSandboxMetadata,
    SecurityProfile,
};
use oci_spec::runtime::LinuxNamespaceType as T;

use super::*;
use crate::oci::testutil::{namespace, seccomp_mode};
use crate::oci::FakeLookup;

struct Fx {
    dir: tempfile::TempDir,
    config: PodSandboxConfig,
    host: Host,
    lookup: FakeLookup,
    netns: Option<std::path::PathBuf>,
}

impl Fx {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "pod".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 1,
            }),
            hostname: "pod-host".into(),
            log_directory: "/var/log/pods/x".into(),
            linux: Some(LinuxPodSandboxConfig { cgroup_parent: "/kubepods/podu".into(), ..Default::default() }),
            ..Default::default()
        };
        Fx { dir, config, host: Host::default(), lookup: FakeLookup::default(), netns: None }
    }

    fn sc(&mut self) -> &mut LinuxSandboxSecurityContext {
        self.config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default)
    }

    fn ns(&mut self) -> &mut NamespaceOption {
        self.sc().namespace_options.get_or_insert_with(Default::default)
    }

    fn build(&self) -> Result<Spec, SpecError> {
        sandbox_spec(&SandboxInput {
            id: "sb1",
            config: &self.config,
            pause_path: "/pause",
            rootfs: &self.dir.path().join("rootfs"),
            netns: self.netns.as_deref(),
            image_name: "registry.k8s.io/pause:3.10",
            unprivileged_ports: false,
            unprivileged_icmp: false,
            host: &self.host,
            lookup: &self.lookup,
        })
    }

    fn spec(&self) -> Spec {
        let spec = self.build().unwrap();
        berth_runtime::spec::validate(&spec, self.dir.path())
            .unwrap_or_else(|e| panic!("runtime rejects the spec: {e}"));
        spec
    }
}

#[test]
fn pause_spec_defaults() {
    let spec = Fx::new().spec();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().clone().unwrap(), vec!["/pause"]);
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(p.oom_score_adj(), Some(SANDBOX_OOM_SCORE_ADJ));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    let caps = p.capabilities().clone().unwrap();
    for set in [caps.bounding(), caps.effective(), caps.permitted(), caps.inheritable(), caps.ambient()] {
        assert_eq!(set.as_ref(), Some(&HashSet::new()));
    }
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(spec.hostname().as_deref(), Some("pod-host"));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.cgroups_path().as_deref(), Some(std::path::Path::new("/kubepods/podu/sb1")));
    assert_eq!(linux.resources().as_ref().unwrap().cpu().as_ref().unwrap().shares(), Some(SANDBOX_CPU_SHARES));
    assert_eq!(seccomp_mode(&spec), Some(&berth_runtime::seccomp::default_profile()));
    for t in [T::Network, T::Uts, T::Ipc, T::Pid] {
        assert!(namespace(&spec, t).unwrap().path().is_none(), "{t:?}");
    }
    // No mount namespace, so nothing to mount: the runtime chroots the infra.
    assert!(namespace(&spec, T::Mount).is_none());
    assert_eq!(spec.mounts().as_deref(), Some(&[][..]));
    let a = spec.annotations().as_ref().unwrap();
    assert_eq!(a[crate::oci::annotations::CONTAINER_TYPE], "sandbox");
    assert_eq!(a[crate::oci::annotations::SANDBOX_ID], "sb1");
    assert_eq!(a[crate::oci::annotations::SANDBOX_LOG_DIR], "/var/log/pods/x");
    assert_eq!(a[crate::oci::annotations::SANDBOX_IMAGE_NAME], "registry.k8s.io/pause:3.10");
}

#[test]
fn host_namespaces_and_prepared_netns() {
    let mut fx = Fx::new();
    fx.netns = Some("/proc/self/ns/net".into());
    let spec = fx.spec();
    assert_eq!(
        namespace(&spec, T::Network).unwrap().path().as_deref(),
        Some(std::path::Path::new("/proc/self/ns/net"))
    );
    fx.ns().network = NamespaceMode::Node as i32;
    fx.ns().ipc = NamespaceMode::Node as i32;
    fx.ns().pid = NamespaceMode::Node as i32;
    let spec = fx.spec();
    assert_eq!(spec.hostname(), &None);
    for t in [T::Network, T::Uts, T::Ipc, T::Pid] {
        assert!(namespace(&spec, t).is_none(), "{t:?}");
    }
}

#[test]
fn sysctls_and_user() {
    let mut fx = Fx::new();
    fx.config.linux.as_mut().unwrap().sysctls = [("net.ipv4.ip_forward".to_string(), "1".to_string())].into();
    fx.sc().run_as_user = Some(Int64Value { value: 65535 });
    let spec = fx.spec();
    assert_eq!(spec.linux().as_ref().unwrap().sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
    assert_eq!(spec.process().as_ref().unwrap().user().uid(), 65535);
    fx.config.linux.as_mut().unwrap().sysctls = [("kernel.panic".to_string(), "1".to_string())].into();
    assert_eq!(fx.build().unwrap_err().field(), "sandbox[pod].linux.sysctls[kernel.panic]");
}

#[test]
fn seccomp_follows_the_pod_request() {
    let mut fx = Fx::new();
    fx.sc().seccomp = Some(SecurityProfile { profile_type: ProfileType::Unconfined as i32, ..Default::default() });
    assert!(seccomp_mode(&fx.spec()).is_none());
    fx.sc().seccomp = None;
    fx.sc().privileged = true;
    assert!(seccomp_mode(&fx.spec()).is_none());
}

#[test]
fn pause_path_must_be_absolute() {
    let fx = Fx::new();
    let err = sandbox_spec(&SandboxInput {
        id: "sb1",
        config: &fx.config,
        pause_path: "pause",
        rootfs: fx.dir.path(),
        netns: None,
        image_name: "",
        unprivileged_ports: false,
        unprivileged_icmp: false,
        host: &fx.host,
        lookup: &fx.lookup,
    })
    .unwrap_err();
    assert_eq!(err.field(), "sandbox[pod].pause_path");
}
