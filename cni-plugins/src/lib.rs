//! Berth CNI plugins (issue 4): the CNI 1.1 skeleton shared by every plugin, and host-local IPAM.
//!
//! Everything here is pure except `ipam::store` (files + flock) and `skel::run` (process I/O).

pub mod cidr;
pub mod env;
pub mod error;
pub mod ipam;
pub mod netconf;
pub mod result;
pub mod skel;
pub mod version;

pub use error::{CniError, ErrorCode};
pub use skel::{run, CmdArgs, Plugin};
