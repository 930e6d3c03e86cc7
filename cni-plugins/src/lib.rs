//! Berth CNI plugins: the CNI 1.1 skeleton shared by every plugin, host-local IPAM,
//! bridge, portmap, VXLAN and host-gw, and the netlink/nftables client they (and the agent) use.
//!
//! Kernel access lives in `netlink`, `netns` and `firewall`; config, results, allocation and
//! rule text are pure and unit-tested.

pub mod bridge;
pub mod cidr;
pub mod delegate;
pub mod env;
pub mod error;
pub mod firewall;
pub mod ipam;
pub mod netavark;
pub mod netconf;
pub mod netlink;
pub mod netns;
pub mod overlay;
pub mod portmap;
pub mod result;
pub mod skel;
pub mod state;
pub mod version;

pub use error::{CniError, ErrorCode};
pub use skel::{run, CmdArgs, Plugin};
