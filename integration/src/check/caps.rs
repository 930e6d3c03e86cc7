//! Capability numbers and names (linux/capability.h, 0..=40) and `/proc/self/status` masks.

use std::collections::BTreeSet;

/// Capability names indexed by number, as in linux/capability.h.
pub const CAP_NAMES: [&str; 41] = [
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

/// The name of capability `bit`; unknown bits are named `CAP_<bit>`.
pub fn cap_name(bit: u32) -> String {
    CAP_NAMES.get(bit as usize).map(|n| n.to_string()).unwrap_or_else(|| format!("CAP_{bit}"))
}

/// The number of a capability name (`CAP_KILL`, `kill` and `Cap_Kill` all work).
pub fn cap_number(name: &str) -> Option<u32> {
    let name = normalize_cap_name(name);
    CAP_NAMES.iter().position(|n| *n == name).map(|i| i as u32).or_else(|| name.strip_prefix("CAP_")?.parse().ok())
}

/// Upper-cases a name and adds the `CAP_` prefix if missing.
pub fn normalize_cap_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// Parses a hex mask such as `CapEff:\t00000000a80425fb` into capability names.
pub fn parse_cap_mask(hex: &str) -> Result<BTreeSet<String>, String> {
    let mask = u64::from_str_radix(hex.trim(), 16).map_err(|e| format!("bad capability mask {hex:?}: {e}"))?;
    Ok((0..64).filter(|bit| mask & (1u64 << bit) != 0).map(cap_name).collect())
}

/// Normalises a list of names into a set.
pub fn cap_set(names: &[String]) -> BTreeSet<String> {
    names.iter().map(|n| normalize_cap_name(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_capability_h() {
        assert_eq!(CAP_NAMES.len(), 41);
        assert_eq!(cap_number("CAP_CHOWN"), Some(0));
        assert_eq!(cap_number("CAP_KILL"), Some(5));
        assert_eq!(cap_number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(cap_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("CAP_SYS_RESOURCE"), Some(24));
        assert_eq!(cap_number("CAP_AUDIT_WRITE"), Some(29));
        assert_eq!(cap_number("CAP_SETFCAP"), Some(31));
        assert_eq!(cap_number("CAP_AUDIT_READ"), Some(37));
        assert_eq!(cap_number("CAP_PERFMON"), Some(38));
        assert_eq!(cap_number("CAP_BPF"), Some(39));
        assert_eq!(cap_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("kill"), Some(5));
        assert_eq!(cap_number("CAP_NOPE"), None);
    }

    #[test]
    fn default_runc_mask_is_three_caps() {
        let names = parse_cap_mask("0000000020000420").unwrap();
        let expected: BTreeSet<String> =
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"].iter().map(|s| s.to_string()).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn full_mask_names_every_cap_and_unknown_bits() {
        let all = parse_cap_mask("000001ffffffffff").unwrap();
        assert_eq!(all.len(), 41);
        let with_unknown = parse_cap_mask("0000020000000000").unwrap();
        assert_eq!(with_unknown.into_iter().collect::<Vec<_>>(), ["CAP_41"]);
        assert!(parse_cap_mask("").is_err());
        assert!(parse_cap_mask("xyz").is_err());
        assert!(parse_cap_mask("0").unwrap().is_empty());
    }
}
