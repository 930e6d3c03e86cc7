//! Berth's node agent (the kubelet): pods from the API server and static manifests, run through
//! any CRI runtime. See `docs/architecture.md`.

pub mod agent;
pub mod authn;
pub mod bootstrap;
pub mod config;
pub mod cri;
pub mod image_gc;
pub mod network;
pub mod node;
pub mod pod;
pub mod probes;
pub mod quantity;
pub mod sa_tokens;
pub mod server;
pub mod spec;
pub mod static_pods;
pub mod stats;
pub mod volumes;
pub mod x509;
