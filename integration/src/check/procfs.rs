//! Parsers for `/proc/self/status`, uid/gid maps and `/proc/self/cgroup`.

use std::collections::BTreeMap;

use super::schema::IdMapping;

/// Parses `Key:\tvalue` lines of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Parses `/proc/self/uid_map` or `gid_map` (`container_id host_id size` per line).
pub fn parse_id_map(text: &str) -> Result<Vec<IdMapping>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let nums: Vec<u32> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad id map line {line:?}: {e}"))?;
            match nums[..] {
                [container_id, host_id, size] => Ok(IdMapping { container_id, host_id, size }),
                _ => Err(format!("bad id map line {line:?}")),
            }
        })
        .collect()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: u32,
    /// Empty for the cgroup v2 line; `name=systemd` style names are kept as written.
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?.split(',').filter(|c| !c.is_empty()).map(String::from).collect();
            let path = parts.next()?.to_string();
            Some(CgroupLine { hierarchy, controllers, path })
        })
        .collect()
}

/// Formats a number as octal with a leading zero, like `/proc/self/status` shows umasks.
pub fn octal(value: u32) -> String {
    format!("{value:04o}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\n\
        CapInh:\t0000000000000000\nCapEff:\t0000000020000420\nNoNewPrivs:\t1\nSeccomp:\t2\n";

    #[test]
    fn status_fields() {
        let s = parse_status(STATUS);
        assert_eq!(s["Umask"], "0022");
        assert_eq!(s["CapEff"], "0000000020000420");
        assert_eq!(s["NoNewPrivs"], "1");
        assert_eq!(s["Seccomp"], "2");
        assert_eq!(s["State"], "R (running)");
    }

    #[test]
    fn id_maps() {
        let m = parse_id_map("         0          0 4294967295\n").unwrap();
        assert_eq!(m, vec![IdMapping { container_id: 0, host_id: 0, size: u32::MAX }]);
        let m = parse_id_map("0 100000 1\n1 100001 65535\n").unwrap();
        assert_eq!(m[1], IdMapping { container_id: 1, host_id: 100001, size: 65535 });
        assert!(parse_id_map("0 1\n").is_err());
        assert!(parse_id_map("").unwrap().is_empty());
    }

    #[test]
    fn proc_cgroup_v1_and_v2_lines() {
        let lines = parse_proc_cgroup("4:memory:/berth/c1\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(lines[0].controllers, ["memory"]);
        assert_eq!(lines[0].path, "/berth/c1");
        assert_eq!(lines[1].controllers, ["cpu", "cpuacct"]);
        assert!(lines[2].controllers.is_empty());
        assert_eq!(lines[2].hierarchy, 0);
    }

    #[test]
    fn octal_formatting() {
        assert_eq!(octal(0o022), "0022");
        assert_eq!(octal(0o7777), "7777");
    }
}
