//! `berth-shim`: the CRI runtime server (RuntimeService + ImageService on a unix socket), its
//! sandbox/container stores, the per-pod monitor that parents containers, image store, CNI
//! invocation and the streaming server for exec/attach/port-forward.
pub mod monitor;
pub mod cni;
pub mod config;
pub mod store;

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
pub mod netns;
pub mod podfiles;
