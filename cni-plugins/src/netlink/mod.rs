//! A small synchronous rtnetlink/nfnetlink client written for Berth's plugins and agent.
//!
//! Why not the netlink-packet-* crates: the plugins need about twenty message shapes, and each
//! is a few lines over [`msg::Msg`]; our own builder keeps the plugin binaries free of those
//! crates' generated types (and their API churn), and one request is one `sendto` + one `recv`.

pub mod addr;
pub mod link;
pub mod msg;
pub mod nft;
pub mod socket;

pub use addr::{Address, Neighbour, RouteSpec};
pub use link::{format_mac, parse_mac, Link, NewLink, Vxlan};
pub use socket::{NlError, Socket};
