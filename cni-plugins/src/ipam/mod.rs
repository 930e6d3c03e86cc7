//! host-local IPAM: configuration, the pure allocator, the flock-protected disk store, the plugin.

pub mod allocator;
pub mod config;
pub mod host_local;
pub mod store;

pub use host_local::HostLocal;
