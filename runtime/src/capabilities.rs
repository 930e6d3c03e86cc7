//! Linux capabilities: names ↔ numbers, and applying the five OCI sets with capset(2) and
//! prctl(2) in the order the kernel requires.

use std::io;

use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::syscall::cvt;

/// Capability names by number (linux/capability.h), 0..=40.
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Number of a capability name such as `CAP_SYS_ADMIN` (the `CAP_` prefix is optional).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// The highest capability this kernel knows.
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
    })
}

/// A set as a 64-bit mask; names the kernel does not know are skipped with a warning.
pub fn mask(set: Option<&Capabilities>) -> u64 {
    let mut m = 0u64;
    for cap in set.into_iter().flatten() {
        let name = format!("CAP_{cap}");
        match number(&name) {
            Some(n) if n <= last_cap() => m |= 1 << n,
            _ => tracing::warn!(capability = %name, "capability is not known to this kernel; ignoring it"),
        }
    }
    m
}

/// The five sets as masks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Masks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl Masks {
    pub fn from_spec(caps: Option<&LinuxCapabilities>) -> Masks {
        let Some(c) = caps else { return Masks::default() };
        Masks {
            bounding: mask(c.bounding().as_ref()),
            effective: mask(c.effective().as_ref()),
            permitted: mask(c.permitted().as_ref()),
            inheritable: mask(c.inheritable().as_ref()),
            ambient: mask(c.ambient().as_ref()),
        }
    }
}

/// Drops every capability outside `bounding` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding(bounding: u64) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if bounding & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable at once, then raises the ambient set.
pub fn apply(m: &Masks) -> io::Result<()> {
    let header = CapHeader { version: CAP_V3, pid: 0 };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(m.effective);
    let (p0, p1) = split(m.permitted);
    let (i0, i1) = split(m.inheritable);
    let data = [
        CapData { effective: e0, permitted: p0, inheritable: i0 },
        CapData { effective: e1, permitted: p1, inheritable: i1 },
    ];
    // SAFETY: header and data are valid for the duration of the call with the v3 layout.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    cvt(ret as libc::c_int)?;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) })?;
    for cap in 0..=last_cap() {
        if m.ambient & (1 << cap) != 0 {
            // The kernel only raises ambient capabilities that are also permitted and
            // inheritable; like runc, warn about the others instead of failing.
            // SAFETY: prctl with integer arguments only.
            if let Err(e) = cvt(unsafe {
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0)
            }) {
                tracing::debug!(capability = NAMES[cap as usize], error = %e, "cannot raise ambient capability (it must be permitted and inheritable)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree() {
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("net_raw"), Some(13));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn masks_from_spec() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"],"ambient":[]}"#,
        )
        .unwrap();
        let m = Masks::from_spec(Some(&caps));
        assert_eq!(m.bounding, (1 << 5) | 1);
        assert_eq!(m.effective, 1 << 5);
        assert_eq!(m.inheritable, 0);
    }
}
