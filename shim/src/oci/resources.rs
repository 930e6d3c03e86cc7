//! CRI `LinuxContainerResources` → OCI `linux.resources` (for CreateContainer and
//! UpdateContainerResources alike), and the cgroupfs-style cgroups path.

use std::collections::HashMap;
use std::path::PathBuf;

use berth_proto::runtime::v1::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::{Ctx, SpecError};

/// Converts CRI resources (0 / "" mean "not set"). With `swap_controller`, memory+swap is set
/// equal to the memory limit unless the request gives its own swap limit, so containers do
/// not swap by default (containerd's rule). `field` names the resources object in errors,
/// e.g. `containers[web].linux.resources`.
pub fn linux_resources(
    field: &str,
    r: &LinuxContainerResources,
    swap_controller: bool,
) -> Result<LinuxResources, SpecError> {
    let ctx = Ctx::new(field);
    let non_negative = |name: &str, v: i64| -> Result<Option<u64>, SpecError> {
        match v {
            0 => Ok(None),
            v if v < 0 => Err(ctx.invalid(name, format!("{v} is negative"))),
            v => Ok(Some(v as u64)),
        }
    };
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(non_negative("cpu_shares", r.cpu_shares)?);
    cpu.set_period(non_negative("cpu_period", r.cpu_period)?);
    // A negative quota means "no limit" to the kernel (-1); pass it through.
    cpu.set_quota((r.cpu_quota != 0).then_some(r.cpu_quota));
    cpu.set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()));
    cpu.set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));

    let limit = non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?.map(|v| v as i64);
    let swap = non_negative("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)?.map(|v| v as i64);
    let mut memory = LinuxMemory::default();
    memory.set_limit(limit);
    if swap_controller {
        memory.set_swap(swap.or(limit));
    }

    let mut hugepages = Vec::with_capacity(r.hugepage_limits.len());
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if h.page_size.is_empty() {
            return Err(ctx.invalid(&format!("hugepage_limits[{i}].page_size"), "is empty"));
        }
        let mut l = LinuxHugepageLimit::default();
        l.set_page_size(h.page_size.clone());
        l.set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
        hugepages.push(l);
    }

    let mut out = LinuxResources::default();
    let cpu_set = cpu.shares().is_some()
        || cpu.period().is_some()
        || cpu.quota().is_some()
        || cpu.cpus().is_some()
        || cpu.mems().is_some();
    out.set_cpu(cpu_set.then_some(cpu));
    out.set_memory((memory.limit().is_some() || memory.swap().is_some()).then_some(memory));
    out.set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages));
    out.set_unified(
        (!r.unified.is_empty())
            .then(|| r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>()),
    );
    Ok(out)
}

/// `<parent>/<id>` (cgroupfs driver); an empty parent means `default_parent`.
pub fn cgroups_path(parent: &str, id: &str, default_parent: &str) -> PathBuf {
    let parent = if parent.is_empty() { default_parent } else { parent };
    let parent = parent.trim_end_matches('/');
    if parent.is_empty() {
        PathBuf::from(format!("/{id}"))
    } else {
        PathBuf::from(format!("{parent}/{id}"))
    }
}

/// oom_score_adj must be within the kernel's range.
pub(crate) fn oom_score_adj(ctx: &Ctx, r: &LinuxContainerResources) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(
            ctx.invalid("linux.resources.oom_score_adj", format!("{} is outside -1000..=1000", r.oom_score_adj))
        );
    }
    Ok(r.oom_score_adj as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::runtime::v1::HugepageLimit;

    const F: &str = "containers[web].linux.resources";

    #[test]
    fn empty_request_sets_nothing() {
        let r = linux_resources(F, &LinuxContainerResources::default(), true).unwrap();
        assert_eq!(r, LinuxResources::default());
    }

    #[test]
    fn cpu_fields_map_one_to_one() {
        let req = LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            ..Default::default()
        };
        let cpu = linux_resources(F, &req, false).unwrap().cpu().clone().unwrap();
        assert_eq!((cpu.shares(), cpu.quota(), cpu.period()), (Some(512), Some(50_000), Some(100_000)));
        assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0-1"), Some("0")));
    }

    #[test]
    fn swap_equals_limit_by_default_when_the_controller_exists() {
        let req = LinuxContainerResources { memory_limit_in_bytes: 1 << 30, ..Default::default() };
        let mem = linux_resources(F, &req, true).unwrap().memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(1 << 30), Some(1 << 30)));
        let mem = linux_resources(F, &req, false).unwrap().memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(1 << 30), None));
        let req = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 30,
            memory_swap_limit_in_bytes: 2 << 30,
            ..Default::default()
        };
        let mem = linux_resources(F, &req, true).unwrap().memory().unwrap();
        assert_eq!(mem.swap(), Some(2 << 30));
    }

    #[test]
    fn hugepages_and_unified_pass_through() {
        let req = LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 }],
            unified: [("memory.high".to_string(), "1G".to_string())].into(),
            ..Default::default()
        };
        let r = linux_resources(F, &req, false).unwrap();
        let h = &r.hugepage_limits().as_ref().unwrap()[0];
        assert_eq!((h.page_size().as_str(), h.limit()), ("2MB", 4 << 20));
        assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "1G");
    }

    #[test]
    fn negative_values_name_the_field() {
        let req = LinuxContainerResources { cpu_shares: -2, ..Default::default() };
        assert_eq!(linux_resources(F, &req, false).unwrap_err().field(), "containers[web].linux.resources.cpu_shares");
        let req = LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() };
        assert_eq!(
            linux_resources(F, &req, false).unwrap_err().field(),
            "containers[web].linux.resources.memory_limit_in_bytes"
        );
        let req = LinuxContainerResources { cpu_quota: -1, ..Default::default() };
        assert_eq!(linux_resources(F, &req, false).unwrap().cpu().as_ref().unwrap().quota(), Some(-1));
    }

    #[test]
    fn oom_score_adj_range() {
        let c = Ctx::new("containers[web]");
        let r = |v| LinuxContainerResources { oom_score_adj: v, ..Default::default() };
        assert_eq!(oom_score_adj(&c, &r(-999)).unwrap(), -999);
        assert_eq!(oom_score_adj(&c, &r(1001)).unwrap_err().field(), "containers[web].linux.resources.oom_score_adj");
    }

    #[test]
    fn cgroups_path_joins_parent_and_id() {
        assert_eq!(
            cgroups_path("/kubepods/burstable/pod1", "abc", "/berth"),
            PathBuf::from("/kubepods/burstable/pod1/abc")
        );
        assert_eq!(cgroups_path("/kubepods/", "abc", "/berth"), PathBuf::from("/kubepods/abc"));
        assert_eq!(cgroups_path("", "abc", "/berth"), PathBuf::from("/berth/abc"));
        assert_eq!(cgroups_path("", "abc", "/"), PathBuf::from("/abc"));
    }
}
