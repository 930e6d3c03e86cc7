//! berth-control: a Kubernetes API subset, scheduler and node controllers in one process.

pub mod api;
pub mod auth;
pub mod controllers;
pub mod kubelet;
pub mod pki;
pub mod server;
pub mod store;
pub mod tokens;
