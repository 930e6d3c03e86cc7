//! `berth-shim`: the CRI runtime server (RuntimeService + ImageService on a unix socket), its
//! sandbox/container stores, the client of the per-pod monitor that parents containers, the
//! image store, CNI invocation and the streaming server for exec/attach/port-forward.

pub mod cni;
pub mod config;
pub mod image;
pub mod monitor;
pub mod netns;
pub mod oci;
pub mod podfiles;
pub mod server;
pub mod store;
pub mod streaming;

/// The shim SIGKILLs itself when it reaches the point named by `BERTH_SHIM_CRASH_AT`: the
/// crash-recovery tests use it to die exactly between two steps that a real crash could split.
/// Unset (always, outside those tests) it costs one cached lookup.
pub fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("BERTH_SHIM_CRASH_AT").ok()).as_deref() == Some(name) {
        tracing::warn!(point = name, "BERTH_SHIM_CRASH_AT reached: killing this process");
        // SAFETY: signalling this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// [`berth_runtime::syscall::spread_subdirectories`], for a directory whose children are one
/// tree per pod or container; a filesystem without the hint is noted in the debug log.
pub fn spread_subdirectories(dir: &std::path::Path) {
    if let Err(e) = berth_runtime::syscall::spread_subdirectories(dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "no block-group spreading hint on this filesystem");
    }
}

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
