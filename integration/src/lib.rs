//! Shared helpers for Berth end-to-end tests and benchmarks: bundle building, binary lookup, a
//! mount namespace fit for hybrid-cgroup hosts, run measurement for `bench-runtime`, and the
//! in-container checker behind `berth-check`.

pub mod bench;
pub mod binaries;
pub mod bundle;
pub mod check;
pub mod mountns;

pub use binaries::{bin_path, find_in_path, workspace_root, BinaryError};
pub use bundle::{Bundle, BundleError};
pub use check::Expectations;
pub use mountns::{detach_cgroup2_unified, MountNsError};
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod netns;
pub mod registry;
pub mod shim;
pub mod streaming;
pub mod multi;
pub mod startup;

/// Removes the cgroup `name` (e.g. `/berth-it-x-123`, the parent a test gave its runtime or
/// agent) and every cgroup below it, deepest first, in each mounted hierarchy. A cgroup that
/// still holds a process stays (rmdir fails with EBUSY): that is a leak for the leak checks to
/// report, not for this clean-up to hide.
pub fn remove_cgroup_tree(name: &str) {
    fn rmdir_deep(dir: &std::path::Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_deep(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let name = name.trim_matches('/');
    if name.is_empty() {
        return;
    }
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let dir = h.path().join(name);
        if dir.is_dir() {
            rmdir_deep(&dir);
        }
    }
    // A cgroup2-only host: the root itself is the hierarchy.
    let dir = std::path::Path::new("/sys/fs/cgroup").join(name);
    if dir.is_dir() {
        rmdir_deep(&dir);
    }
}
