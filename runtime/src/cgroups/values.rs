//! Pure translation of OCI `linux.resources` into cgroup file writes, for whichever version
//! (v1 or v2) holds each controller on this host. No I/O: unit-tested with plain data.

use oci_spec::runtime::LinuxResources;

/// Which cgroup version holds a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// One write into the container's cgroup directory of `controller`'s hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

fn w(controller: &'static str, file: impl Into<String>, value: impl ToString) -> Write {
    Write { controller, file: file.into(), value: value.to_string() }
}

/// Always allowed: mknod of anything, and the default devices (null, zero, full, random,
/// urandom, tty, console, ptmx, pts).
pub const DEFAULT_DEVICE_RULES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// Checks values the kernel would reject with an unhelpful EINVAL. Errors are (field, reason).
pub fn validate(res: &LinuxResources) -> Result<(), (String, String)> {
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares() {
            if shares != 0 && !(2..=262_144).contains(&shares) {
                return Err(("cpu.shares".into(), format!("{shares} is outside 2..=262144")));
            }
        }
        if let Some(period) = cpu.period() {
            if period != 0 && !(1_000..=1_000_000).contains(&period) {
                return Err(("cpu.period".into(), format!("{period} µs is outside 1000..=1000000")));
            }
        }
        if let Some(quota) = cpu.quota() {
            if quota > 0 && quota < 1_000 {
                return Err(("cpu.quota".into(), format!("{quota} µs is below the kernel minimum 1000")));
            }
        }
    }
    if let Some(mem) = res.memory() {
        if let (Some(limit), Some(swap)) = (mem.limit(), mem.swap()) {
            if limit > 0 && swap > 0 && swap < limit {
                return Err((
                    "memory.swap".into(),
                    format!("{swap} is below memory.limit {limit} (swap is memory+swap)"),
                ));
            }
        }
        if let Some(limit) = mem.limit() {
            if limit == 0 || limit < -1 {
                return Err(("memory.limit".into(), format!("{limit} is not a positive byte count or -1")));
            }
        }
    }
    for (key, _) in res.unified().iter().flatten() {
        if key.contains('/') || key.starts_with('.') || !key.contains('.') {
            return Err((format!("unified.{key}"), "is not a cgroup v2 file name".into()));
        }
    }
    for (i, h) in res.hugepage_limits().iter().flatten().enumerate() {
        let size = h.page_size();
        let ok = size.len() > 2
            && size[..size.len() - 2].chars().all(|c| c.is_ascii_digit())
            && ["KB", "MB", "GB"].contains(&&size[size.len() - 2..]);
        if !ok {
            return Err((format!("hugepageLimits[{i}].pageSize"), format!("{size:?} is not like \"2MB\"")));
        }
    }
    Ok(())
}

/// cgroup v1 cpu.shares → cgroup v2 cpu.weight (the conversion Kubernetes and runc use).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9_999) / 262_142
}

/// Plans the writes for `res`. `version_of` says where each controller lives (None: absent).
/// Settings for an absent controller are returned as warnings, not silently dropped.
pub fn plan(res: &LinuxResources, version_of: &dyn Fn(&str) -> Option<Version>) -> (Vec<Write>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut missing =
        |what: &str| warnings.push(format!("{what} requested but the controller is not available on this host"));
    if let Some(mem) = res.memory() {
        match version_of("memory") {
            Some(Version::V1) => {
                if let Some(swap) = mem.swap() {
                    out.push(w("memory", "memory.memsw.limit_in_bytes", swap));
                }
                if let Some(limit) = mem.limit() {
                    out.push(w("memory", "memory.limit_in_bytes", limit));
                }
                if let Some(r) = mem.reservation() {
                    out.push(w("memory", "memory.soft_limit_in_bytes", r));
                }
                if let Some(s) = mem.swappiness() {
                    out.push(w("memory", "memory.swappiness", s));
                }
                if mem.disable_oom_killer() == Some(true) {
                    out.push(w("memory", "memory.oom_control", 1));
                }
            }
            Some(Version::V2) => {
                let max = |v: i64| if v < 0 { "max".to_string() } else { v.to_string() };
                if let Some(limit) = mem.limit() {
                    out.push(w("memory", "memory.max", max(limit)));
                }
                if let Some(r) = mem.reservation() {
                    out.push(w("memory", "memory.low", max(r)));
                }
                match (mem.swap(), mem.limit()) {
                    (Some(swap), _) if swap < 0 => out.push(w("memory", "memory.swap.max", "max")),
                    (Some(swap), Some(limit)) if limit > 0 => {
                        out.push(w("memory", "memory.swap.max", (swap - limit).max(0)))
                    }
                    _ => {}
                }
            }
            None => missing("memory"),
        }
    }
    if let Some(cpu) = res.cpu() {
        match version_of("cpu") {
            Some(Version::V1) => {
                if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                    out.push(w("cpu", "cpu.shares", s));
                }
                if let Some(p) = cpu.period().filter(|p| *p > 0) {
                    out.push(w("cpu", "cpu.cfs_period_us", p));
                }
                if let Some(q) = cpu.quota().filter(|q| *q != 0) {
                    out.push(w("cpu", "cpu.cfs_quota_us", if q < 0 { -1 } else { q }));
                }
                if let Some(b) = cpu.burst() {
                    out.push(w("cpu", "cpu.cfs_burst_us", b));
                }
                if let Some(p) = cpu.realtime_period() {
                    out.push(w("cpu", "cpu.rt_period_us", p));
                }
                if let Some(r) = cpu.realtime_runtime() {
                    out.push(w("cpu", "cpu.rt_runtime_us", r));
                }
                if let Some(i) = cpu.idle() {
                    out.push(w("cpu", "cpu.idle", i));
                }
            }
            Some(Version::V2) => {
                if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                    out.push(w("cpu", "cpu.weight", shares_to_weight(s)));
                }
                if cpu.quota().is_some() || cpu.period().is_some() {
                    let period = cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
                    let quota = match cpu.quota() {
                        Some(q) if q > 0 => q.to_string(),
                        _ => "max".to_string(),
                    };
                    out.push(w("cpu", "cpu.max", format!("{quota} {period}")));
                }
                if let Some(b) = cpu.burst() {
                    out.push(w("cpu", "cpu.max.burst", b));
                }
                if let Some(i) = cpu.idle() {
                    out.push(w("cpu", "cpu.idle", i));
                }
            }
            None if cpu.shares().is_some() || cpu.quota().is_some() => missing("cpu"),
            None => {}
        }
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            if version_of("cpuset").is_some() {
                if let Some(c) = cpu.cpus().as_ref().filter(|c| !c.is_empty()) {
                    out.push(w("cpuset", "cpuset.cpus", c));
                }
                if let Some(m) = cpu.mems().as_ref().filter(|m| !m.is_empty()) {
                    out.push(w("cpuset", "cpuset.mems", m));
                }
            } else {
                missing("cpuset");
            }
        }
    }
    if let Some(pids) = res.pids() {
        match version_of("pids") {
            Some(_) => {
                out.push(w("pids", "pids.max", if pids.limit() > 0 { pids.limit().to_string() } else { "max".into() }))
            }
            None => missing("pids"),
        }
    }
    for h in res.hugepage_limits().iter().flatten() {
        match version_of("hugetlb") {
            Some(Version::V1) => out.push(w("hugetlb", format!("hugetlb.{}.limit_in_bytes", h.page_size()), h.limit())),
            Some(Version::V2) => out.push(w("hugetlb", format!("hugetlb.{}.max", h.page_size()), h.limit())),
            None => missing("hugetlb"),
        }
    }
    if let Some(io) = res.block_io() {
        plan_io(io, version_of("blkio").or(version_of("io")), &mut out, &mut missing);
    }
    if let Some(devices) = res.devices() {
        if version_of("devices") == Some(Version::V1) && !devices.is_empty() {
            for rule in devices {
                let file = if rule.allow() { "devices.allow" } else { "devices.deny" };
                out.push(w("devices", file, rule.to_string()));
            }
            // The devices every container gets stay usable whatever the rules said (as runc does).
            for rule in DEFAULT_DEVICE_RULES {
                out.push(w("devices", "devices.allow", rule));
            }
        }
    }
    for (key, value) in res.unified().iter().flatten() {
        let controller = key.split('.').next().unwrap_or_default();
        if version_of(controller) == Some(Version::V2) || controller == "cgroup" {
            out.push(Write { controller: "unified", file: key.clone(), value: value.clone() });
        } else {
            warnings.push(format!("unified.{key}: controller {controller:?} is not on cgroup v2 here"));
        }
    }
    (out, warnings)
}

fn plan_io(
    io: &oci_spec::runtime::LinuxBlockIo,
    version: Option<Version>,
    out: &mut Vec<Write>,
    missing: &mut dyn FnMut(&str),
) {
    let dev = |major: i64, minor: i64| format!("{major}:{minor}");
    match version {
        Some(Version::V1) => {
            if let Some(weight) = io.weight() {
                out.push(w("blkio", "blkio.weight", weight));
            }
            for d in io.weight_device().iter().flatten() {
                if let Some(weight) = d.weight() {
                    out.push(w("blkio", "blkio.weight_device", format!("{} {weight}", dev(d.major(), d.minor()))));
                }
            }
            let throttles = [
                ("blkio.throttle.read_bps_device", io.throttle_read_bps_device()),
                ("blkio.throttle.write_bps_device", io.throttle_write_bps_device()),
                ("blkio.throttle.read_iops_device", io.throttle_read_iops_device()),
                ("blkio.throttle.write_iops_device", io.throttle_write_iops_device()),
            ];
            for (file, list) in throttles {
                for t in list.iter().flatten() {
                    out.push(w("blkio", file, format!("{} {}", dev(t.major(), t.minor()), t.rate())));
                }
            }
        }
        Some(Version::V2) => {
            if let Some(weight) = io.weight() {
                // blkio.weight is 10..1000, io.weight is 1..10000.
                let converted = 1 + (u64::from(weight).saturating_sub(10)) * 9_999 / 990;
                out.push(w("io", "io.weight", format!("default {converted}")));
            }
            let throttles = [
                ("rbps", io.throttle_read_bps_device()),
                ("wbps", io.throttle_write_bps_device()),
                ("riops", io.throttle_read_iops_device()),
                ("wiops", io.throttle_write_iops_device()),
            ];
            for (key, list) in throttles {
                for t in list.iter().flatten() {
                    out.push(w("io", "io.max", format!("{} {key}={}", dev(t.major(), t.minor()), t.rate())));
                }
            }
        }
        None => missing("blkio/io"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn files(writes: &[Write]) -> Vec<(String, String)> {
        writes.iter().map(|w| (w.file.clone(), w.value.clone())).collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn v1_memory_cpu_pids() {
        let r = res(
            r#"{"memory":{"limit":33554432,"swap":67108864,"reservation":1048576},"cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0"},"pids":{"limit":10}}"#,
        );
        let (writes, warnings) = plan(&r, &|_| Some(Version::V1));
        assert!(warnings.is_empty());
        assert_eq!(
            files(&writes),
            vec![
                pair("memory.memsw.limit_in_bytes", "67108864"),
                pair("memory.limit_in_bytes", "33554432"),
                pair("memory.soft_limit_in_bytes", "1048576"),
                pair("cpu.shares", "512"),
                pair("cpu.cfs_period_us", "100000"),
                pair("cpu.cfs_quota_us", "50000"),
                pair("cpuset.cpus", "0"),
                pair("pids.max", "10"),
            ]
        );
    }

    #[test]
    fn v2_memory_cpu_pids() {
        let r =
            res(r#"{"memory":{"limit":33554432,"swap":67108864},"cpu":{"shares":1024,"quota":-1},"pids":{"limit":0}}"#);
        let (writes, _) = plan(&r, &|_| Some(Version::V2));
        assert_eq!(
            files(&writes),
            vec![
                pair("memory.max", "33554432"),
                pair("memory.swap.max", "33554432"),
                pair("cpu.weight", "39"),
                pair("cpu.max", "max 100000"),
                pair("pids.max", "max"),
            ]
        );
    }

    #[test]
    fn hybrid_routes_hugetlb_to_v2_and_warns_for_missing() {
        let r = res(
            r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}],"network":{"classID":1}, "blockIO":{"weight":500}}"#,
        );
        let (writes, warnings) = plan(&r, &|c| match c {
            "hugetlb" => Some(Version::V2),
            "memory" => Some(Version::V1),
            _ => None,
        });
        assert_eq!(files(&writes), vec![pair("hugetlb.2MB.max", "4194304")]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn shares_convert_like_kubernetes() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn validation_names_fields() {
        let err = validate(&res(r#"{"cpu":{"shares":1}}"#)).unwrap_err();
        assert_eq!(err.0, "cpu.shares");
        let err = validate(&res(r#"{"memory":{"limit":100000000,"swap":1000}}"#)).unwrap_err();
        assert_eq!(err.0, "memory.swap");
        let err = validate(&res(r#"{"unified":{"../x":"1"}}"#)).unwrap_err();
        assert_eq!(err.0, "unified.../x");
        assert!(validate(&res(r#"{"hugepageLimits":[{"pageSize":"2XB","limit":1}]}"#)).is_err());
    }
}
