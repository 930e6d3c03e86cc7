//! berth-control: a Kubernetes API subset, scheduler and node controllers in one process.

pub mod store;
