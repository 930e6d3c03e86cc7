//! `berth-runtime`: turns an OCI bundle into a running, confined process.
//!
//! Synchronous by design (no async runtime): the container init is forked from the calling
//! thread, so callers must be single-threaded when they call [`container::create`] — the
//! CLI is; daemons run the CLI or fork a helper first.

pub mod seccomp;
