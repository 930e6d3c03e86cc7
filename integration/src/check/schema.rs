//! The expectations file `berth-check` reads: what the container's confinement should look like.
//!
//! Every field is optional; an absent field (or empty list/map) is not checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything `berth-check` can verify from inside a container.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expectations {
    /// Namespace kind (`pid`, `net`/`network`, `ipc`, `uts`, `mnt`/`mount`, `user`, `cgroup`,
    /// `time`) to the inode it is compared with.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceExpectation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// Real and effective user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Real and effective group id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Supplementary groups, compared as a set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_gids: Option<Vec<u32>>,
    /// Exact lines of `/proc/self/uid_map`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_map: Option<Vec<IdMapping>>,
    /// Exact lines of `/proc/self/gid_map`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid_map: Option<Vec<IdMapping>>,
    /// Process umask (JSON has no octal: 0o022 is 18).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `KEY=VALUE` (exact value) or `KEY` (must be set).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilityExpectation>,
    /// `NoNewPrivs` in `/proc/self/status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_new_privs: Option<bool>,
    /// `Seccomp` in `/proc/self/status`: 0 disabled, 1 strict, 2 filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp_mode: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallExpectation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<RlimitExpectation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountExpectation>,
    /// Each must read empty (file) or be an empty tmpfs (directory); absent paths pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Writing (file) or creating inside (directory) must fail with EROFS; absent paths pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    /// Whether creating a file in `/` fails with EROFS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_readonly: Option<bool>,
    /// `net.ipv4.ip_forward` style keys to values (whitespace-normalised).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceExpectation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cgroup: Vec<CgroupExpectation>,
    /// Fork this many children that sleep, then kill them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork_count: Option<u32>,
    /// With `fork_count`: at most this many forks may succeed (a pids limit). Without it, all
    /// `fork_count` forks must succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork_max_ok: Option<u32>,
    /// Touch this many MiB of anonymous memory, last of all (to trigger a memory limit's OOM kill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_mb: Option<u64>,
}

/// How a namespace relates to a reference namespace (usually the host's).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceExpectation {
    /// Inode of the reference namespace (`stat -L /proc/self/ns/<kind>` on the host).
    pub host_inode: u64,
    /// `true`: the container must be in that namespace; `false`: in a different one.
    pub shared: bool,
}

/// One line of a uid/gid map.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// Exact capability sets, by name (`CAP_KILL`; the `CAP_` prefix and case are optional).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilityExpectation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounding: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inheritable: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permitted: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ambient: Option<Vec<String>>,
}

/// Call a syscall with harmless arguments and check its result.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyscallExpectation {
    /// One of the names in [`crate::check::syscalls::SUPPORTED`].
    pub name: String,
    /// Expected errno name (`EPERM`) or number (`"1"`); absent means the call must succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// Path argument for `mkdir`/`rmdir`/`chdir` (default `/tmp/.berth-check-syscall`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Soft and hard limit of one resource; `18446744073709551615` is unlimited.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlimitExpectation {
    /// `RLIMIT_NOFILE` etc.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard: Option<u64>,
}

/// A mount that must be present (the topmost one at `destination` is checked).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountExpectation {
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Each must appear in the mount or superblock options; `ro` holds if either is read-only,
    /// `rw` if neither is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// `shared`, `slave`, `private` or `unbindable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
}

/// A device node that must exist.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceExpectation {
    pub path: String,
    /// `c` (or `u`), `b` or `p`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<u64>,
    /// Permission bits (0o666 is 438).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A cgroup limit as the container sees it; the first candidate file that exists decides.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupExpectation {
    /// Candidates, e.g. `memory.max` (v2) and `memory/memory.limit_in_bytes` (v1: the first
    /// component names the controller). Each is looked up under the process's own cgroup
    /// (from `/proc/self/cgroup`) below `/sys/fs/cgroup`, then directly below it.
    pub any_of: Vec<CgroupFile>,
    /// Pass when no candidate file is visible.
    pub optional: bool,
}

/// A cgroup file and its expected (trimmed) content.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupFile {
    pub path: String,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_valid_and_round_trips() {
        let e: Expectations = serde_json::from_str("{}").unwrap();
        assert_eq!(e, Expectations::default());
        assert_eq!(serde_json::to_string(&e).unwrap(), "{}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Expectations>(r#"{"hostnme": "x"}"#).is_err());
    }

    #[test]
    fn parses_a_full_example() {
        let json = r#"{
            "namespaces": {"pid": {"host_inode": 4026531836}, "cgroup": {"host_inode": 1, "shared": true}},
            "hostname": "berth", "uid": 0, "umask": 18,
            "capabilities": {"effective": ["CAP_KILL"]},
            "syscalls": [{"name": "mkdir", "errno": "EPERM"}],
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
            "mounts": [{"destination": "/proc", "fstype": "proc", "options": ["nosuid"]}],
            "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "mode": 438}],
            "cgroup": [{"any_of": [{"path": "pids.max", "value": "10"}]}],
            "fork_count": 20, "fork_max_ok": 9, "alloc_mb": 64
        }"#;
        let e: Expectations = serde_json::from_str(json).unwrap();
        assert!(!e.namespaces["pid"].shared);
        assert!(e.namespaces["cgroup"].shared);
        assert_eq!(e.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(e.devices[0].kind.as_deref(), Some("c"));
        assert_eq!(e.fork_max_ok, Some(9));
    }
}
