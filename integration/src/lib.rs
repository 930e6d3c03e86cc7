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
pub mod multi;
pub mod netns;
pub mod registry;
pub mod shim;
pub mod startup;
pub mod streaming;
