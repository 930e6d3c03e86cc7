//! `berth-runtime`: turns an OCI bundle into a running, confined process.
//!
//! Synchronous by design (no async runtime): the container init is cloned from the calling
//! thread, so callers must be single-threaded when they call [`container::create`] or
//! [`container::exec`] — the CLI is; daemons run the CLI or fork a helper first.

pub mod capabilities;
pub mod cgroups;
pub mod channel;
pub mod container;
pub mod devices;
pub mod features;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod monitor;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod syscall;
pub mod tty;
