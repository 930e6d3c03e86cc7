//! Checks of cgroup limits as the container sees them under `/sys/fs/cgroup` (v1 or v2).

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::procfs::{parse_proc_cgroup, CgroupLine};
use super::report::Report;
use super::schema::Expectations;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Host paths where a candidate file may be visible, most specific first.
///
/// `memory.max` (v2) is looked for in the process's v2 cgroup, then at the mount root;
/// `memory/memory.limit_in_bytes` (v1) in the process's cgroup of the hierarchy whose
/// controllers include `memory`, then at the root of `/sys/fs/cgroup/memory`.
pub fn candidate_paths(file: &str, cgroups: &[CgroupLine]) -> Vec<PathBuf> {
    let root = PathBuf::from(CGROUP_ROOT);
    let mut paths = Vec::new();
    match file.split_once('/') {
        None => {
            if let Some(v2) = cgroups.iter().find(|l| l.hierarchy == 0 && l.controllers.is_empty()) {
                paths.push(root.join(v2.path.trim_start_matches('/')).join(file));
            }
            paths.push(root.join(file));
        }
        Some((controller_dir, rest)) => {
            let wanted: Vec<&str> = controller_dir.split(',').collect();
            let line = cgroups
                .iter()
                .find(|l| wanted.iter().all(|w| l.controllers.iter().any(|c| c == w || c == &format!("name={w}"))));
            let dir = root.join(controller_dir);
            if let Some(line) = line {
                paths.push(dir.join(line.path.trim_start_matches('/')).join(rest));
            }
            paths.push(dir.join(rest));
        }
    }
    paths.dedup();
    paths
}

pub fn check_cgroups<W: Write>(e: &Expectations, r: &mut Report<W>) {
    if e.cgroup.is_empty() {
        return;
    }
    let cgroups = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    for want in &e.cgroup {
        let label = want.any_of.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join("|");
        let name = format!("cgroup {label}");
        let found = want.any_of.iter().find_map(|candidate| {
            candidate_paths(&candidate.path, &cgroups)
                .into_iter()
                .find_map(|p| fs::read_to_string(&p).ok().map(|v| (candidate, p, v)))
        });
        match found {
            Some((candidate, path, value)) => {
                let got = format!("{} in {}", value.trim(), path.display());
                r.check(&name, value.trim() == candidate.value.trim(), &candidate.value, got);
            }
            None if want.optional => r.ok_note(&name, "not visible, optional"),
            None => r.fail(&name, "a visible cgroup file", "none of the candidates exist"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_candidates() {
        let lines = parse_proc_cgroup("5:memory:/c1\n3:cpu,cpuacct:/c1\n0::/c1\n");
        assert_eq!(
            candidate_paths("memory/memory.limit_in_bytes", &lines),
            [
                PathBuf::from("/sys/fs/cgroup/memory/c1/memory.limit_in_bytes"),
                PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            ]
        );
        assert_eq!(candidate_paths("cpu/cpu.shares", &lines)[0], PathBuf::from("/sys/fs/cgroup/cpu/c1/cpu.shares"));
        assert_eq!(
            candidate_paths("pids.max", &lines),
            [PathBuf::from("/sys/fs/cgroup/c1/pids.max"), PathBuf::from("/sys/fs/cgroup/pids.max")]
        );
        let ns_root = parse_proc_cgroup("0::/\n");
        assert_eq!(candidate_paths("pids.max", &ns_root), [PathBuf::from("/sys/fs/cgroup/pids.max")]);
    }
}
