use super::*;
use crate::oci::FakeLookup;

#[test]
fn clean_normalises_destinations() {
    assert_eq!(clean("/etc/hosts/"), "/etc/hosts");
    assert_eq!(clean("//etc/./hosts"), "/etc/hosts");
    assert_eq!(clean("/"), "/");
    assert_eq!(clean("/a/../b"), "/a/../b", "'..' is kept for the runtime to refuse");
}

#[test]
fn defaults_are_read_only_unless_privileged() {
    let last = |m: &Mount| m.options().as_ref().unwrap().last().unwrap().clone();
    let unpriv = default_mounts(false);
    let sys = unpriv.iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
    assert_eq!(last(sys), "ro");
    let priv_ = default_mounts(true);
    let cg = priv_.iter().find(|m| m.destination() == Path::new("/sys/fs/cgroup")).unwrap();
    assert_eq!(last(cg), "rw");
}

fn input<'a>(mounts: &'a [CriMount]) -> MountInput<'a> {
    MountInput {
        mounts,
        files: SandboxFiles::default(),
        host_ipc: false,
        readonly_rootfs: false,
        privileged: false,
        termination_log: None,
        rro_supported: false,
    }
}

#[test]
fn idmapped_and_empty_sources_are_refused() {
    let ctx = Ctx::new("containers[c]");
    let lookup = FakeLookup::default();
    let m = [CriMount { container_path: "/x".into(), ..Default::default() }];
    assert_eq!(container_mounts(&ctx, &input(&m), &lookup).err().unwrap().field(), "containers[c].mounts[0].host_path");
    let m = [CriMount {
        container_path: "/x".into(),
        host_path: "/y".into(),
        uid_mappings: vec![Default::default()],
        ..Default::default()
    }];
    assert_eq!(
        container_mounts(&ctx, &input(&m), &lookup).err().unwrap().field(),
        "containers[c].mounts[0].uidMappings"
    );
    let m = [CriMount { container_path: "/x".into(), host_path: "/y".into(), propagation: 7, ..Default::default() }];
    assert_eq!(
        container_mounts(&ctx, &input(&m), &lookup).err().unwrap().field(),
        "containers[c].mounts[0].propagation"
    );
    let m = [CriMount {
        container_path: "/x".into(),
        host_path: "/y".into(),
        mount_options: vec!["a,b".into()],
        ..Default::default()
    }];
    let mut lookup = FakeLookup::default();
    lookup.paths.insert("/y".into());
    assert_eq!(
        container_mounts(&ctx, &input(&m), &lookup).err().unwrap().field(),
        "containers[c].mounts[0].mount_options[0]"
    );
}

#[test]
fn without_sandbox_files_shm_stays_a_private_tmpfs() {
    let ctx = Ctx::new("containers[c]");
    let got = container_mounts(&ctx, &input(&[]), &FakeLookup::default()).unwrap();
    let shm = got.mounts.iter().find(|m| m.destination() == Path::new("/dev/shm")).unwrap();
    assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
    assert!(got.rootfs_propagation.is_none());
}

#[test]
fn private_mounts_do_not_ask_for_propagation() {
    let ctx = Ctx::new("containers[c]");
    let mut lookup = FakeLookup::default();
    lookup.paths.insert("/y".into());
    let m = [CriMount { container_path: "/x".into(), host_path: "/y".into(), ..Default::default() }];
    container_mounts(&ctx, &input(&m), &lookup).unwrap();
    let calls = lookup.calls.borrow();
    assert_eq!(*calls, vec![crate::oci::lookup::Call::ResolveHostPath("/y".into())]);
}
