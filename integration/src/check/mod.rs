//! The in-container confinement checker behind `berth-check`: an expectations schema, the
//! parsers it needs, and the probes that compare what the process sees with what was expected.

pub mod actions;
pub mod caps;
pub mod cgroup;
pub mod filesystem;
mod from_spec;
pub mod mountinfo;
pub mod process;
pub mod procfs;
pub mod report;
pub mod schema;
pub mod syscalls;

use std::io::Write;

pub use from_spec::{host_namespace_inodes, FromSpecError};
pub use report::Report;
pub use schema::*;

/// Runs every check `e` asks for, in a fixed order: passive checks first, then `fork_count`,
/// then `alloc_mb` last (it may get the process OOM-killed).
pub fn run<W: Write>(e: &Expectations, r: &mut Report<W>) {
    process::check_namespaces(e, r);
    process::check_uts(e, r);
    process::check_ids(e, r);
    process::check_cwd_env(e, r);
    process::check_status(e, r);
    process::check_rlimits(e, r);
    process::check_oom_score_adj(e, r);
    filesystem::check_mounts(e, r);
    filesystem::check_readonly_paths(e, r);
    filesystem::check_rootfs(e, r);
    filesystem::check_sysctls(e, r);
    filesystem::check_devices(e, r);
    cgroup::check_cgroups(e, r);
    process::check_syscalls(e, r);
    actions::check_fork(e, r);
    actions::check_alloc(e, r);
}
