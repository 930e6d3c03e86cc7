//! `berth-shim`: the CRI runtime server (RuntimeService + ImageService on a unix socket), its
//! sandbox/container stores, the per-pod monitor that parents containers, image store, CNI
//! invocation and the streaming server for exec/attach/port-forward.
pub mod streaming;
