use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_proto::runtime::v1::{
    Device, ImageSpec, Int64Value, KeyValue, LinuxContainerResources, Mount as CriMount, MountPropagation,
    NamespaceMode,
};
use oci_spec::runtime::LinuxNamespaceType as T;

use super::*;
use crate::oci::lookup::Sharing;
use crate::oci::testutil::*;
use crate::oci::{HostDevice, HostDeviceKind};

fn cri_mount(fx: &mut Fixture, name: &str, dst: &str) -> CriMount {
    let src = fx.dir.path().join(name);
    std::fs::create_dir_all(&src).unwrap();
    fx.lookup.paths.insert(src.clone());
    CriMount { container_path: dst.into(), host_path: src.to_string_lossy().into(), ..Default::default() }
}

#[test]
fn default_spec_is_accepted_by_the_runtime() {
    let fx = Fixture::new();
    let built = fx.build().unwrap();
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    let spec = built.spec;
    fx.validate(&spec);
    assert_eq!(spec.version(), OCI_VERSION);
    assert_eq!(spec.root().as_ref().unwrap().path(), &fx.rootfs);
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    assert_eq!(spec.hostname(), &None, "the pod's UTS namespace already has the hostname");
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &vec!["/bin/sh".to_string()]);
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(p.terminal(), Some(false));
    assert_eq!(p.no_new_privileges(), Some(false));
    assert_eq!(p.rlimits(), &None);
    assert!(p.env().as_ref().unwrap().contains(&"HOSTNAME=pod-host".to_string()));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/kubepods/podUID/c0ffee")));
    assert!(linux.sysctl().is_none());
}

#[test]
fn annotations_follow_containerd() {
    let spec = Fixture::new().spec();
    let a = spec.annotations().as_ref().unwrap();
    assert_eq!(a[crate::oci::annotations::CONTAINER_TYPE], "container");
    assert_eq!(a[crate::oci::annotations::SANDBOX_ID], "5a4d");
    assert_eq!(a[crate::oci::annotations::SANDBOX_NAME], "pod");
    assert_eq!(a[crate::oci::annotations::SANDBOX_NAMESPACE], "ns");
    assert_eq!(a[crate::oci::annotations::SANDBOX_UID], "uid-1");
    assert_eq!(a[crate::oci::annotations::CONTAINER_NAME], "web");
    assert_eq!(a[crate::oci::annotations::IMAGE_NAME], "docker.io/library/busybox:1");
}

#[test]
fn default_mounts_match_runc_spec() {
    let mut fx = Fixture::new();
    fx.with_files = false;
    let spec = fx.build().unwrap().spec;
    let got: Vec<(String, String, String, Vec<String>)> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() != Path::new("/dev/termination-log"))
        .map(|m| {
            let src = m.source().as_ref().unwrap().to_string_lossy().into_owned();
            (m.destination().to_string_lossy().into_owned(), m.typ().clone().unwrap(), src, options(m))
        })
        .collect();
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // `runc spec` output, plus containerd's options on /proc; sorted parents first.
    let want = vec![
        ("/proc", "proc", "proc", v(&["nosuid", "noexec", "nodev"])),
        ("/dev", "tmpfs", "tmpfs", v(&["nosuid", "strictatime", "mode=755", "size=65536k"])),
        ("/sys", "sysfs", "sysfs", v(&["nosuid", "noexec", "nodev", "ro"])),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            v(&["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        ),
        ("/dev/shm", "tmpfs", "shm", v(&["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])),
        ("/dev/mqueue", "mqueue", "mqueue", v(&["nosuid", "noexec", "nodev"])),
        ("/sys/fs/cgroup", "cgroup", "cgroup", v(&["nosuid", "noexec", "nodev", "relatime", "ro"])),
    ];
    let want: Vec<_> = want.into_iter().map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d)).collect();
    assert_eq!(got, want);
}

#[test]
fn sandbox_files_and_termination_log_are_bound() {
    let fx = Fixture::new();
    let spec = fx.spec();
    for (dst, src) in [
        ("/etc/hosts", &fx.hosts),
        ("/etc/resolv.conf", &fx.resolv),
        ("/etc/hostname", &fx.hostname),
        ("/dev/shm", &fx.shm),
    ] {
        let m = mount_at(&spec, dst).unwrap_or_else(|| panic!("{dst} is not mounted"));
        assert_eq!(m.source().as_ref(), Some(src));
        assert_eq!(options(m), vec!["rbind", "rprivate", "rw"], "{dst}");
    }
    let t = mount_at(&spec, "/dev/termination-log").unwrap();
    assert_eq!(t.source().as_ref(), Some(&fx.termlog));
    assert_eq!(options(t), vec!["rbind", "rprivate", "rw"]);
    assert_eq!(spec.mounts().as_ref().unwrap().iter().filter(|m| m.destination() == Path::new("/dev/shm")).count(), 1);
}

#[test]
fn readonly_rootfs_makes_etc_files_read_only() {
    let mut fx = Fixture::new();
    fx.sc().readonly_rootfs = true;
    let spec = fx.spec();
    fx.validate(&spec);
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(options(mount_at(&spec, "/etc/hosts").unwrap()), vec!["rbind", "rprivate", "ro"]);
    assert_eq!(options(mount_at(&spec, "/dev/shm").unwrap()), vec!["rbind", "rprivate", "rw"]);
    assert_eq!(options(mount_at(&spec, "/dev/termination-log").unwrap()), vec!["rbind", "rprivate", "rw"]);
}

#[test]
fn user_mounts_replace_defaults_and_sandbox_files() {
    let mut fx = Fixture::new();
    let hosts = cri_mount(&mut fx, "myhosts", "/etc/hosts/");
    let sys = cri_mount(&mut fx, "mysys", "/sys");
    fx.config.mounts = vec![hosts, sys];
    let spec = fx.spec();
    fx.validate(&spec);
    let h = mount_at(&spec, "/etc/hosts").unwrap();
    assert_eq!(h.source().as_ref(), Some(&fx.dir.path().join("myhosts")));
    assert_eq!(mount_at(&spec, "/sys").unwrap().typ().as_deref(), Some("bind"));
    assert_eq!(spec.mounts().as_ref().unwrap().iter().filter(|m| m.destination() == Path::new("/sys")).count(), 1);
}

#[test]
fn a_dev_mount_drops_every_default_under_dev() {
    let mut fx = Fixture::new();
    let dev = cri_mount(&mut fx, "mydev", "/dev");
    fx.config.mounts = vec![dev];
    let spec = fx.spec();
    let under_dev: Vec<_> =
        spec.mounts().as_ref().unwrap().iter().filter(|m| m.destination().starts_with("/dev")).collect();
    let dsts: HashSet<_> = under_dev.iter().map(|m| m.destination().clone()).collect();
    // The sandbox's /dev/shm and the termination log are user mounts too, and stay.
    assert_eq!(dsts, ["/dev", "/dev/shm", "/dev/termination-log"].iter().map(PathBuf::from).collect());
    assert!(under_dev.iter().all(|m| m.typ().as_deref() == Some("bind")));
}

#[test]
fn mounts_are_sorted_parents_first() {
    let mut fx = Fixture::new();
    let child = cri_mount(&mut fx, "child", "/data/sub/dir");
    let parent = cri_mount(&mut fx, "parent", "/data");
    fx.config.mounts = vec![child, parent];
    let spec = fx.spec();
    let dsts: Vec<_> = spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().clone()).collect();
    let pos = |p: &str| dsts.iter().position(|d| d == Path::new(p)).unwrap();
    assert!(pos("/data") < pos("/data/sub/dir"));
    for w in dsts.windows(2) {
        assert!(w[0].components().count() <= w[1].components().count(), "{dsts:?}");
    }
}

#[test]
fn cri_mount_options_and_propagation() {
    let mut fx = Fixture::new();
    let mut ro = cri_mount(&mut fx, "ro", "/ro");
    ro.readonly = true;
    ro.mount_options = vec!["noexec".into()];
    let mut slave = cri_mount(&mut fx, "slave", "/slave");
    slave.propagation = MountPropagation::PropagationHostToContainer as i32;
    fx.lookup.sharing.insert(fx.dir.path().join("slave"), Sharing { shared: false, slave: true });
    fx.config.mounts = vec![ro, slave];
    let spec = fx.spec();
    fx.validate(&spec);
    assert_eq!(options(mount_at(&spec, "/ro").unwrap()), vec!["rbind", "rprivate", "ro", "noexec"]);
    assert_eq!(options(mount_at(&spec, "/slave").unwrap()), vec!["rbind", "rslave", "rw"]);
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rslave"));
}

#[test]
fn bidirectional_needs_a_shared_source_and_makes_root_rshared() {
    let mut fx = Fixture::new();
    let mut m = cri_mount(&mut fx, "shared", "/shared");
    m.propagation = MountPropagation::PropagationBidirectional as i32;
    fx.config.mounts = vec![m];
    let err = fx.build().unwrap_err();
    assert_eq!(err.field(), "containers[web].mounts[0]");
    fx.lookup.sharing.insert(fx.dir.path().join("shared"), Sharing { shared: true, slave: false });
    let spec = fx.spec();
    assert_eq!(options(mount_at(&spec, "/shared").unwrap()), vec!["rbind", "rshared", "rw"]);
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rshared"));
}

#[test]
fn recursive_read_only_rules() {
    let mut fx = Fixture::new();
    let mut m = cri_mount(&mut fx, "rro", "/rro");
    m.readonly = true;
    m.recursive_read_only = true;
    fx.config.mounts = vec![m.clone()];
    let field = "containers[web].mounts[0].recursive_read_only";
    assert_eq!(fx.build().unwrap_err().field(), field, "runtime without rro support");
    fx.host.rro_mounts = true;
    assert_eq!(options(mount_at(&fx.spec(), "/rro").unwrap()), vec!["rbind", "rprivate", "rro"]);
    fx.config.mounts[0].readonly = false;
    assert_eq!(fx.build().unwrap_err().field(), field);
    fx.config.mounts[0].readonly = true;
    fx.config.mounts[0].propagation = MountPropagation::PropagationHostToContainer as i32;
    assert_eq!(fx.build().unwrap_err().field(), field);
}

#[test]
fn mount_sources_are_resolved_and_must_exist() {
    let mut fx = Fixture::new();
    let m = cri_mount(&mut fx, "link", "/link");
    fx.lookup.symlinks.insert(PathBuf::from(&m.host_path), PathBuf::from("/real/target"));
    fx.config.mounts =
        vec![m, CriMount { container_path: "/x".into(), host_path: "/missing".into(), ..Default::default() }];
    let err = fx.build().unwrap_err();
    assert!(matches!(&err, SpecError::Lookup { path, .. } if path == Path::new("/missing")), "{err:?}");
    assert_eq!(err.field(), "containers[web].mounts[1].host_path");
    fx.config.mounts.pop();
    assert_eq!(mount_at(&fx.spec(), "/link").unwrap().source().as_deref(), Some(Path::new("/real/target")));
    fx.config.mounts[0].container_path = "relative".into();
    assert_eq!(fx.build().unwrap_err().field(), "containers[web].mounts[0].container_path");
}

#[test]
fn image_volumes_are_read_only_binds_of_the_image() {
    let mut fx = Fixture::new();
    fx.lookup.image_volumes.insert("sha256:abc".into(), "/var/lib/berth/images/abc".into());
    fx.config.mounts = vec![CriMount {
        container_path: "/vol".into(),
        image: Some(ImageSpec { image: "sha256:abc".into(), ..Default::default() }),
        image_sub_path: "data".into(),
        ..Default::default()
    }];
    let spec = fx.spec();
    let m = mount_at(&spec, "/vol").unwrap();
    assert_eq!(m.source().as_deref(), Some(Path::new("/var/lib/berth/images/abc/data")));
    assert_eq!(options(m), vec!["rbind", "rprivate", "ro"]);
}

#[test]
fn pod_namespaces_are_joined() {
    let fx = Fixture::new();
    let spec = fx.spec();
    let pid = std::process::id();
    for (typ, name) in [(T::Network, "net"), (T::Ipc, "ipc"), (T::Uts, "uts"), (T::Pid, "pid")] {
        let n = namespace(&spec, typ).unwrap_or_else(|| panic!("{typ:?} missing"));
        assert_eq!(n.path().as_deref(), Some(Path::new(&format!("/proc/{pid}/ns/{name}"))));
    }
    assert!(namespace(&spec, T::Mount).unwrap().path().is_none());
    assert!(namespace(&spec, T::Cgroup).is_none());
    assert!(namespace(&spec, T::User).is_none());
}

#[test]
fn pid_modes() {
    let mut fx = Fixture::new();
    fx.ns().pid = NamespaceMode::Container as i32;
    assert!(namespace(&fx.spec(), T::Pid).unwrap().path().is_none());
    fx.ns().pid = NamespaceMode::Node as i32;
    assert!(namespace(&fx.spec(), T::Pid).is_none());
    fx.ns().pid = NamespaceMode::Target as i32;
    fx.ns().target_id = "other".into();
    assert_eq!(fx.build().unwrap_err().field(), "containers[web].linux.security_context.namespace_options.target_id");
    fx.target_pid_ns = Some("/proc/self/ns/pid".into());
    let spec = fx.spec();
    fx.validate(&spec);
    assert_eq!(namespace(&spec, T::Pid).unwrap().path().as_deref(), Some(Path::new("/proc/self/ns/pid")));
}

#[test]
fn host_network_and_ipc_leave_those_namespaces_out() {
    let mut fx = Fixture::new();
    fx.pod_ns().network = NamespaceMode::Node as i32;
    fx.pod_ns().ipc = NamespaceMode::Node as i32;
    fx.sandbox.hostname = String::new();
    let spec = fx.spec();
    fx.validate(&spec);
    for t in [T::Network, T::Uts, T::Ipc] {
        assert!(namespace(&spec, t).is_none(), "{t:?}");
    }
    assert_eq!(mount_at(&spec, "/dev/shm").unwrap().source().as_deref(), Some(Path::new("/dev/shm")));
    assert!(spec.process().as_ref().unwrap().env().as_ref().unwrap().contains(&"HOSTNAME=node-1".to_string()));
}

fn pod_userns() -> berth_proto::runtime::v1::UserNamespace {
    let range = vec![berth_proto::runtime::v1::IdMapping { container_id: 0, host_id: 100_000, length: 65_536 }];
    berth_proto::runtime::v1::UserNamespace { mode: NamespaceMode::Pod as i32, uids: range.clone(), gids: range }
}

#[test]
fn containers_join_their_pods_user_namespace() {
    let mut fx = Fixture::new();
    fx.pod_ns().userns_options = Some(pod_userns());
    fx.ns().userns_options = Some(pod_userns());
    let spec = fx.build().unwrap().spec;
    let linux = spec.linux().as_ref().unwrap();
    let user = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        .expect("user namespace");
    assert_eq!(user.path().as_deref(), fx.namespaces.user.as_deref(), "joined, not created");
    assert!(linux.uid_mappings().is_none(), "a joined user namespace has its maps already");
    // A container cannot ask for another user namespace than its pod's.
    let mut other = pod_userns();
    other.uids[0].host_id = 200_000;
    fx.ns().userns_options = Some(other);
    assert_eq!(
        fx.build().unwrap_err().field(),
        "containers[web].linux.security_context.namespace_options.userns_options"
    );
}

#[test]
fn cgroup_namespace_on_cgroup_v2_unless_privileged() {
    let mut fx = Fixture::new();
    fx.host.cgroup_v2 = true;
    assert!(namespace(&fx.spec(), T::Cgroup).unwrap().path().is_none());
    fx.pod_sc().privileged = true;
    fx.sc().privileged = true;
    assert!(namespace(&fx.spec(), T::Cgroup).is_none());
}

#[test]
fn tty_sets_terminal() {
    let mut fx = Fixture::new();
    fx.config.tty = true;
    fx.config.stdin = true;
    assert_eq!(fx.spec().process().as_ref().unwrap().terminal(), Some(true));
}

#[test]
fn process_from_request_and_image() {
    let mut fx = Fixture::new();
    fx.image = ImageDefaults {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["default".into()],
        env: vec!["A=1".into()],
        working_dir: "/app".into(),
        ..Default::default()
    };
    fx.config.args = vec!["run".into()];
    fx.config.envs = vec![KeyValue { key: "A".into(), value: b"2".to_vec() }];
    let spec = fx.spec();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().clone().unwrap(), vec!["/entry", "run"]);
    assert_eq!(p.cwd(), Path::new("/app"));
    assert!(p.env().as_ref().unwrap().contains(&"A=2".to_string()));
    fx.image = ImageDefaults::default();
    fx.config.args.clear();
    let err = fx.build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "containers[web].command: neither the container config nor the image gives a command to run"
    );
}

#[test]
fn user_and_groups_from_the_image() {
    let mut fx = Fixture::new();
    fx.users = UserDb::parse("app:x:1000:1000::/home/app:/bin/sh\n", "extra:x:50000:app\n");
    fx.image.user = "app".into();
    fx.sc().supplemental_groups = vec![1234];
    let spec = fx.spec();
    let u = spec.process().as_ref().unwrap().user().clone();
    assert_eq!((u.uid(), u.gid()), (1000, 1000));
    assert_eq!(u.additional_gids().clone().unwrap(), vec![1000, 1234, 50000]);
    fx.sc().run_as_group = Some(Int64Value { value: 5 });
    assert_eq!(fx.build().unwrap_err().field(), "containers[web].linux.security_context.run_as_group");
}

#[test]
fn resources_devices_and_oom_score() {
    let mut fx = Fixture::new();
    fx.config.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        cpu_shares: 1024,
        cpu_quota: 20_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: 500,
        ..Default::default()
    });
    fx.lookup.devices.insert(
        "/dev/fuse".into(),
        vec![HostDevice {
            relative: "".into(),
            kind: HostDeviceKind::Char,
            major: 10,
            minor: 229,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }],
    );
    fx.config.devices =
        vec![Device { host_path: "/dev/fuse".into(), container_path: "/dev/fuse".into(), permissions: "rwm".into() }];
    let spec = fx.spec();
    fx.validate(&spec);
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(500));
    let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(res.cpu().as_ref().unwrap().shares(), Some(1024));
    assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
    let rules = res.devices().clone().unwrap();
    assert_eq!(rules.len(), 2);
    assert!(!rules[0].allow() && rules[1].allow());
    assert_eq!(spec.linux().as_ref().unwrap().devices().as_ref().unwrap().len(), 1);
}

#[test]
fn default_cgroup_parent_when_the_pod_has_none() {
    let mut fx = Fixture::new();
    fx.sandbox.linux.as_mut().unwrap().cgroup_parent.clear();
    assert_eq!(fx.spec().linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("/berth/c0ffee")));
}

#[test]
fn spec_serialises_to_json_the_runtime_parses() {
    let fx = Fixture::new();
    let spec = fx.spec();
    let json = serde_json::to_vec(&spec).unwrap();
    let back = berth_runtime::spec::parse(&json).unwrap();
    fx.validate(&back);
}

#[test]
fn cdi_devices_are_refused() {
    let mut fx = Fixture::new();
    fx.config.cdi_devices = vec![berth_proto::runtime::v1::CdiDevice { name: "vendor.com/gpu=0".into() }];
    assert_eq!(fx.build().unwrap_err().field(), "containers[web].CDI_devices[0]");
}
