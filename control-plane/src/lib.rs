//! berth-control: a Kubernetes API subset, scheduler and node controllers in one process.

pub mod store;
pub mod auth;
pub mod pki;
pub mod kubelet;
pub mod api;
pub mod controllers;
pub mod server;
pub mod tokens;
