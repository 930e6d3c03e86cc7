//! `berth-shim`: the CRI runtime server (RuntimeService + ImageService on a unix socket), its
//! sandbox/container stores, the client of the per-pod monitor that parents containers, the
//! image store, CNI invocation and the streaming server for exec/attach/port-forward.

pub mod cni;
pub mod config;
pub mod image;
pub mod monitor;
pub mod oci;
pub mod netns;
pub mod podfiles;
pub mod server;
pub mod store;
pub mod streaming;

/// An error and its sources, joined with ": " (for logs and gRPC status messages).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
