//! berth-runtime, as root, on this host's cgroups: containers whose confinement is checked
//! from inside by `berth-check` against what the spec asked for.

mod common;

use common::{assert_ok, namespaces, CHECK, T};
use serde_json::json;

const DEFAULT_CAPS: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

#[test]
#[ignore = "needs root"]
fn default_spec_confinement() {
    let t = T::new("default");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["hostname"] = json!("berth-test");
    spec["process"]["env"] = json!(["PATH=/bin", "GREETING=hello world"]);
    spec["process"]["oomScoreAdj"] = json!(100);
    t.expect(&json!({
        "namespaces": namespaces(&["pid", "net", "ipc", "uts", "mnt", "cgroup"]),
        "hostname": "berth-test",
        "uid": 0, "gid": 0, "cwd": "/", "umask": 18,
        "env": ["PATH=/bin", "GREETING=hello world"],
        "capabilities": { "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS, "inheritable": [], "ambient": [] },
        "no_new_privs": true,
        "seccomp_mode": 0,
        "oom_score_adj": 100,
        "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024 }],
        "mounts": [
            { "destination": "/", "options": ["ro"] },
            { "destination": "/proc", "fstype": "proc" },
            { "destination": "/dev", "fstype": "tmpfs", "options": ["nosuid"] },
            { "destination": "/dev/pts", "fstype": "devpts", "options": ["nosuid", "noexec"] },
            { "destination": "/dev/shm", "fstype": "tmpfs", "options": ["nosuid", "nodev", "noexec"] },
            { "destination": "/dev/mqueue", "fstype": "mqueue" },
            { "destination": "/sys", "fstype": "sysfs", "options": ["ro", "nosuid", "nodev", "noexec"] },
            { "destination": "/sys/fs/cgroup", "options": ["ro"] }
        ],
        "rootfs_readonly": true,
        "masked_paths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi", "/proc/acpi"],
        "readonly_paths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        "devices": [
            { "path": "/dev/null", "type": "c", "major": 1, "minor": 3, "mode": 438 },
            { "path": "/dev/zero", "type": "c", "major": 1, "minor": 5, "mode": 438 },
            { "path": "/dev/urandom", "type": "c", "major": 1, "minor": 9, "mode": 438 },
            { "path": "/dev/tty", "type": "c", "major": 5, "minor": 0, "mode": 438 }
        ]
    }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn user_identity_capabilities_and_rlimits() {
    let t = T::new("identity");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63 });
    spec["process"]["cwd"] = json!("/tmp");
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["process"]["capabilities"] = json!({
        "bounding": ["CAP_NET_RAW", "CAP_KILL", "CAP_CHOWN"],
        "effective": ["CAP_NET_RAW"], "permitted": ["CAP_NET_RAW", "CAP_KILL"],
        "inheritable": ["CAP_NET_RAW"], "ambient": ["CAP_NET_RAW"]
    });
    spec["process"]["rlimits"] = json!([
        { "type": "RLIMIT_NOFILE", "soft": 256, "hard": 512 },
        { "type": "RLIMIT_CORE", "soft": 0, "hard": 0 }
    ]);
    t.expect(&json!({
        "uid": 1000, "gid": 1000, "additional_gids": [10, 20], "umask": 63, "cwd": "/tmp",
        "capabilities": {
            "bounding": ["CAP_NET_RAW", "CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_NET_RAW"],
            // execve as a non-root user without file capabilities keeps only the ambient set
            // in permitted (capabilities(7)); CAP_KILL was permitted until exec.
            "permitted": ["CAP_NET_RAW"], "inheritable": ["CAP_NET_RAW"], "ambient": ["CAP_NET_RAW"]
        },
        "no_new_privs": false,
        "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": 256, "hard": 512 }, { "type": "RLIMIT_CORE", "soft": 0, "hard": 0 }]
    }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn user_namespace_with_mappings() {
    let t = T::new("userns");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({ "type": "user" }));
    spec["linux"]["uidMappings"] = json!([{ "containerID": 0, "hostID": 200000, "size": 65536 }]);
    spec["linux"]["gidMappings"] = json!([{ "containerID": 0, "hostID": 200000, "size": 65536 }]);
    t.expect(&json!({
        "namespaces": namespaces(&["pid", "net", "ipc", "uts", "mnt", "cgroup", "user"]),
        "uid": 0, "gid": 0,
        "uid_map": [{ "container_id": 0, "host_id": 200000, "size": 65536 }],
        "gid_map": [{ "container_id": 0, "host_id": 200000, "size": 65536 }],
        "devices": [{ "path": "/dev/null", "type": "c", "major": 1, "minor": 3 }]
    }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn seccomp_profile_is_enforced() {
    let t = T::new("seccomp");
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 },
            { "names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
              "args": [{ "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
            { "names": ["syslog"], "action": "SCMP_ACT_ERRNO" }
        ]
    });
    t.expect(&json!({
        "seccomp_mode": 2,
        "no_new_privs": true,
        "syscalls": [
            { "name": "mkdir", "errno": "EPERM" },
            { "name": "getcwd" },
            { "name": "syslog", "errno": "EPERM" }
        ]
    }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn mounts_sysctls_devices_and_names() {
    let t = T::new("mounts");
    let shared = t.tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "hi").unwrap();
    // Mounts on this host are private; slave propagation needs a shared source mount.
    let _shared_mount = SharedMount::new(&shared);
    let mut spec = t.spec(&[CHECK, "/check.json"]);
    spec["hostname"] = json!("mounts");
    spec["linux"]["rootfsPropagation"] = json!("unbindable");
    spec["domainname"] = json!("example.org");
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(
        json!({ "destination": "/data", "type": "bind", "source": shared, "options": ["rbind", "rw", "rslave"] }),
    );
    mounts.push(json!({ "destination": "/ro", "type": "bind", "source": shared, "options": ["bind", "ro", "nosuid", "nodev", "noexec", "private"] }));
    mounts.push(json!({ "destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=700"] }));
    spec["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1", "kernel.shmmni": "2048" });
    spec["linux"]["devices"] = json!([{ "path": "/dev/berth-null", "type": "c", "major": 1, "minor": 3, "fileMode": 384, "uid": 1000, "gid": 1000 }]);
    t.expect(&json!({
        "hostname": "mounts", "domainname": "example.org",
        "mounts": [
            { "destination": "/", "propagation": "unbindable" },
            { "destination": "/data", "options": ["rw"], "propagation": "slave" },
            { "destination": "/ro", "options": ["ro", "nosuid", "nodev", "noexec"], "propagation": "private" },
            { "destination": "/scratch", "fstype": "tmpfs", "options": ["nosuid", "size=1024k", "mode=700"] }
        ],
        "readonly_paths": ["/ro/hello"],
        "sysctls": { "net.ipv4.ip_forward": "1", "kernel.shmmni": "2048" },
        "devices": [{ "path": "/dev/berth-null", "type": "c", "major": 1, "minor": 3, "mode": 384, "uid": 1000, "gid": 1000 }]
    }));
    assert_ok(&t.run(&spec));
}

#[test]
#[ignore = "needs root"]
fn symlinked_mount_target_stays_inside_rootfs() {
    let t = T::new("escape");
    // A hostile image: /evil points at the host's /etc. The mount must land inside the rootfs.
    std::os::unix::fs::symlink("/etc", t.bundle.rootfs().join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../../tmp", t.bundle.rootfs().join("evil2")).unwrap();
    let mut spec = t.spec(&["sh", "-c", "test -d /etc/berth-escape && test -d /tmp/x"]);
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({ "destination": "/evil/berth-escape", "type": "tmpfs", "source": "tmpfs" }));
    mounts.push(json!({ "destination": "/evil2/x", "type": "tmpfs", "source": "tmpfs" }));
    spec["root"]["readonly"] = json!(false);
    assert_ok(&t.run(&spec));
    assert!(!std::path::Path::new("/etc/berth-escape").exists(), "mount escaped into the host's /etc");
    assert!(t.bundle.rootfs().join("etc/berth-escape").is_dir());
}

/// Bind-mounts a directory on itself with shared propagation; unmounts on drop.
struct SharedMount(std::path::PathBuf);

impl SharedMount {
    fn new(dir: &std::path::Path) -> SharedMount {
        for args in
            [vec!["--bind", dir.to_str().unwrap(), dir.to_str().unwrap()], vec!["--make-shared", dir.to_str().unwrap()]]
        {
            let st = std::process::Command::new("mount").args(&args).status().expect("mount");
            assert!(st.success(), "mount {args:?}");
        }
        SharedMount(dir.to_path_buf())
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
