//! Shared fixtures for the oci module's tests: a pod and container request over a temp-dir
//! rootfs with real sandbox files, and accessors into the built spec.

use std::path::{Path, PathBuf};

use berth_proto::runtime::v1::{
    ContainerConfig, ContainerMetadata, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};
use oci_spec::runtime::{Capabilities, LinuxNamespace, LinuxNamespaceType, Mount, Spec};

use super::*;

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub hostname: PathBuf,
    pub shm: PathBuf,
    pub termlog: PathBuf,
    pub host: Host,
    pub lookup: FakeLookup,
    pub image: ImageDefaults,
    pub users: UserDb,
    pub namespaces: PodNamespaces,
    pub target_pid_ns: Option<PathBuf>,
    pub sandbox: PodSandboxConfig,
    pub config: ContainerConfig,
    pub with_files: bool,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "x").unwrap();
            p
        };
        let (hosts, resolv, hostname, termlog) =
            (file("hosts"), file("resolv.conf"), file("hostname"), file("termination-log"));
        let shm = dir.path().join("shm");
        std::fs::create_dir(&shm).unwrap();
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "pod".into(),
                uid: "uid-1".into(),
                namespace: "ns".into(),
                attempt: 0,
            }),
            hostname: "pod-host".into(),
            log_directory: "/var/log/pods/ns_pod_uid-1".into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/podUID".into(),
                security_context: Some(LinuxSandboxSecurityContext::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "web".into(), attempt: 0 }),
            linux: Some(LinuxContainerConfig { resources: None, security_context: Some(Default::default()) }),
            ..Default::default()
        };
        Fixture {
            rootfs,
            hosts,
            resolv,
            hostname,
            shm,
            termlog,
            host: Host { hostname: "node-1".into(), ..Host::default() },
            lookup: FakeLookup::default(),
            image: ImageDefaults { cmd: vec!["/bin/sh".into()], ..Default::default() },
            users: UserDb::default(),
            namespaces: PodNamespaces::of_pid(std::process::id()),
            target_pid_ns: None,
            sandbox,
            config,
            with_files: true,
            dir,
        }
    }

    pub fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default)
    }

    pub fn pod_sc(&mut self) -> &mut LinuxSandboxSecurityContext {
        self.sandbox.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default)
    }

    pub fn pod_ns(&mut self) -> &mut NamespaceOption {
        self.pod_sc().namespace_options.get_or_insert_with(Default::default)
    }

    pub fn ns(&mut self) -> &mut NamespaceOption {
        self.sc().namespace_options.get_or_insert_with(Default::default)
    }

    pub fn build(&self) -> Result<Built, SpecError> {
        let files = if self.with_files {
            SandboxFiles {
                hosts: Some(&self.hosts),
                resolv_conf: Some(&self.resolv),
                hostname: Some(&self.hostname),
                shm: Some(&self.shm),
            }
        } else {
            SandboxFiles::default()
        };
        container_spec(&ContainerInput {
            id: "c0ffee",
            sandbox_id: "5a4d",
            config: &self.config,
            sandbox: &self.sandbox,
            image: &self.image,
            image_name: "docker.io/library/busybox:1",
            rootfs: &self.rootfs,
            files,
            namespaces: &self.namespaces,
            target_pid_ns: self.target_pid_ns.as_deref(),
            users: &self.users,
            termination_log: Some(TerminationLog { host_path: &self.termlog, container_path: "/dev/termination-log" }),
            host: &self.host,
            lookup: &self.lookup,
        })
    }

    pub fn spec(&self) -> Spec {
        self.build().unwrap().spec
    }

    /// berth-runtime's own validation, with this fixture's directory as the bundle.
    pub fn validate(&self, spec: &Spec) {
        berth_runtime::spec::validate(spec, self.dir.path())
            .unwrap_or_else(|e| panic!("runtime rejects the spec: {e}"));
    }
}

pub(crate) fn mount_at<'s>(spec: &'s Spec, dst: &str) -> Option<&'s Mount> {
    spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dst))
}

pub(crate) fn options(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

pub(crate) fn namespace(spec: &Spec, typ: LinuxNamespaceType) -> Option<&LinuxNamespace> {
    spec.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().find(|n| n.typ() == typ)
}

pub(crate) fn effective(spec: &Spec) -> Capabilities {
    spec.process().as_ref().unwrap().capabilities().as_ref().unwrap().effective().clone().unwrap_or_default()
}

pub(crate) fn seccomp_mode(spec: &Spec) -> Option<&oci_spec::runtime::LinuxSeccomp> {
    spec.linux().as_ref().unwrap().seccomp().as_ref()
}
