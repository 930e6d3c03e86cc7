//! Links: look-up, veth pairs born with their peer in another netns, bridges, VXLAN and VLAN
//! devices, flags, master, MTU, bridge-port options and per-port VLANs.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::msg::{Attrs, Msg, NLM_F_CREATE, NLM_F_EXCL};
use super::{NlError, Socket};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_VXLAN_LOCAL6: u16 = 17;
const IFLA_BRIDGE_FLAGS: u16 = 0;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const BRIDGE_FLAGS_SELF: u16 = 2;
const BRIDGE_VLAN_INFO_PVID: u16 = 2;
const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 4;

pub const IFF_UP: u32 = 0x1;
pub const IFF_PROMISC: u32 = 0x100;

/// What the kernel reports about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: u32,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// The bridge (or bond) this link is enslaved to.
    pub master: Option<u32>,
    /// `veth`, `bridge`, `vxlan` … (`None` for physical devices).
    pub kind: Option<String>,
    /// Bridge port hairpin mode, when the kernel reports it.
    pub hairpin: Option<bool>,
    /// IFLA_LINK: a veth's peer index (in the peer's namespace), a VLAN's parent.
    pub link: Option<u32>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(|m| format_mac(&m))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// An ifinfomsg: family, type, index, flags, change.
fn ifinfo(family: u8, index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn parse_link(body: &[u8]) -> Option<Link> {
    let index = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
    let flags = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?);
    let attrs = Attrs::after(body, 16);
    let info = attrs.get(IFLA_LINKINFO).map(Attrs::new);
    let hairpin = attrs.get(IFLA_PROTINFO).and_then(|p| Attrs::new(p).get_u8(IFLA_BRPORT_MODE)).map(|m| m != 0);
    Some(Link {
        index,
        name: attrs.get_str(IFLA_IFNAME)?,
        flags,
        mtu: attrs.get_u32(IFLA_MTU).unwrap_or(0),
        mac: attrs.get(IFLA_ADDRESS).and_then(|m| <[u8; 6]>::try_from(m).ok()),
        master: attrs.get_u32(IFLA_MASTER).filter(|m| *m != 0),
        kind: info.and_then(|i| i.get_str(IFLA_INFO_KIND)),
        hairpin,
        link: attrs.get_u32(IFLA_LINK).filter(|l| *l != 0),
    })
}

/// A new link's common attributes.
#[derive(Debug, Clone, Default)]
pub struct NewLink<'a> {
    pub name: &'a str,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    pub master: Option<u32>,
}

impl NewLink<'_> {
    fn msg(&self, flags: u16) -> Msg {
        let up = if self.up { IFF_UP } else { 0 };
        Msg::new(RTM_NEWLINK, flags)
            .header(&ifinfo(0, 0, up, up))
            .str(IFLA_IFNAME, self.name)
            .when(self.mtu.is_some(), |m| m.u32(IFLA_MTU, self.mtu.unwrap_or(0)))
            .when(self.mac.is_some(), |m| m.attr(IFLA_ADDRESS, &self.mac.unwrap_or_default()))
            .when(self.master.is_some(), |m| m.u32(IFLA_MASTER, self.master.unwrap_or(0)))
    }
}

/// VXLAN device parameters.
#[derive(Debug, Clone)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    /// The underlay device index.
    pub underlay: Option<u32>,
}

/// The request behind [`Socket::set_flags`], for [`Socket::request_all`] batches.
pub fn set_flags_msg(index: u32, flags: u32, mask: u32) -> Msg {
    Msg::new(RTM_NEWLINK, 0).header(&ifinfo(0, index, flags, mask))
}

/// The request behind [`Socket::add_veth`].
///
/// Both ends are created with one TX and one RX queue, which is what a veth ends up with anyway
/// when none is asked for: the kernel then allocates one queue per CPU and cuts them back to
/// one after registration, and each cut waits for an expedited RCU grace period (two per pair,
/// seen in `perf record -e sched:sched_switch -g` of an ADD).
fn veth_msg(link: &NewLink, peer: &NewLink, peer_ns: BorrowedFd<'_>) -> Msg {
    let peer_up = if peer.up { IFF_UP } else { 0 };
    link.msg(NLM_F_CREATE | NLM_F_EXCL)
        .u32(IFLA_NUM_TX_QUEUES, 1)
        .u32(IFLA_NUM_RX_QUEUES, 1)
        .nest(IFLA_LINKINFO)
        .str(IFLA_INFO_KIND, "veth")
        .nest(IFLA_INFO_DATA)
        .nest(VETH_INFO_PEER)
        .header(&ifinfo(0, 0, peer_up, peer_up))
        .str(IFLA_IFNAME, peer.name)
        .u32(IFLA_NET_NS_FD, peer_ns.as_raw_fd() as u32)
        .u32(IFLA_NUM_TX_QUEUES, 1)
        .u32(IFLA_NUM_RX_QUEUES, 1)
        .when(peer.mtu.is_some(), |m| m.u32(IFLA_MTU, peer.mtu.unwrap_or(0)))
        .when(peer.mac.is_some(), |m| m.attr(IFLA_ADDRESS, &peer.mac.unwrap_or_default()))
        .end()
        .end()
        .end()
}

impl Socket {
    /// The link called `name`, or `None`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let msg = Msg::new(RTM_GETLINK, 0).header(&ifinfo(0, 0, 0, 0)).str(IFLA_IFNAME, name);
        let body = self.get(msg, &[libc::ENODEV])?;
        Ok(body.as_deref().and_then(parse_link))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NlError> {
        let msg = Msg::new(RTM_GETLINK, 0).header(&ifinfo(0, index, 0, 0));
        let body = self.get(msg, &[libc::ENODEV])?;
        Ok(body.as_deref().and_then(parse_link))
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let msg = Msg::new(RTM_GETLINK, 0).header(&ifinfo(0, 0, 0, 0));
        Ok(self.dump(msg)?.iter().filter_map(|b| parse_link(b)).collect())
    }

    /// Bridge ports with their hairpin mode (AF_BRIDGE dump).
    pub fn bridge_ports(&mut self) -> Result<Vec<Link>, NlError> {
        let msg = Msg::new(RTM_GETLINK, 0).header(&ifinfo(libc::AF_BRIDGE as u8, 0, 0, 0));
        Ok(self.dump(msg)?.iter().filter_map(|b| parse_link(b)).collect())
    }

    /// Creates a bridge; `EEXIST` when the name is taken. VLAN filtering is only mentioned when
    /// wanted: kernels built without it refuse the attribute even when it is 0.
    pub fn add_bridge(&mut self, link: &NewLink, vlan_filtering: bool) -> Result<(), NlError> {
        let msg = link
            .msg(NLM_F_CREATE | NLM_F_EXCL)
            .nest(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "bridge")
            .when(vlan_filtering, |m| m.nest(IFLA_INFO_DATA).u8(IFLA_BR_VLAN_FILTERING, 1).end())
            .end();
        self.request(msg)
    }

    /// Creates a veth pair here whose peer `peer` is born directly in the namespace `peer_ns`
    /// (no create-then-move).
    pub fn add_veth(&mut self, link: &NewLink, peer: &NewLink, peer_ns: BorrowedFd<'_>) -> Result<(), NlError> {
        self.request(veth_msg(link, peer, peer_ns))
    }

    /// [`Socket::add_veth`], returning the host end as the kernel echoed it (after a failed
    /// creation, or on kernels that echo nothing: whatever holds the name, looked up).
    ///
    /// Not a GETLINK after the creation: on a link with a pending carrier change, GETLINK first
    /// runs the link-watch work synchronously, and for a veth whose peer is still down that
    /// waits for an expedited RCU grace period; the echo is built without it.
    pub fn add_veth_and_get(
        &mut self,
        link: &NewLink,
        peer: &NewLink,
        peer_ns: BorrowedFd<'_>,
    ) -> Result<(Result<(), NlError>, Option<Link>), NlError> {
        let (outcome, echoed) = self.request_echo(veth_msg(link, peer, peer_ns))?;
        let host = echoed.iter().rev().filter_map(|b| parse_link(b)).find(|l| l.name == link.name);
        match (outcome, host) {
            (Ok(()), Some(host)) => Ok((Ok(()), Some(host))),
            (outcome, _) => Ok((outcome, self.link_by_name(link.name)?)),
        }
    }

    /// Creates a VXLAN device without learning (FDB and neighbours are programmed).
    pub fn add_vxlan(&mut self, link: &NewLink, vx: &Vxlan) -> Result<(), NlError> {
        let msg = link
            .msg(NLM_F_CREATE | NLM_F_EXCL)
            .nest(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "vxlan")
            .nest(IFLA_INFO_DATA)
            .u32(IFLA_VXLAN_ID, vx.vni)
            .attr(IFLA_VXLAN_PORT, &vx.port.to_be_bytes())
            .u8(IFLA_VXLAN_LEARNING, 0)
            .when(vx.underlay.is_some(), |m| m.u32(IFLA_VXLAN_LINK, vx.underlay.unwrap_or(0)));
        let msg = match vx.local {
            Some(IpAddr::V4(a)) => msg.attr(IFLA_VXLAN_LOCAL, &a.octets()),
            Some(IpAddr::V6(a)) => msg.attr(IFLA_VXLAN_LOCAL6, &a.octets()),
            None => msg,
        };
        self.request(msg.end().end())
    }

    /// Creates an 802.1Q device `link.name` on top of `parent`.
    pub fn add_vlan(&mut self, link: &NewLink, parent: u32, vid: u16) -> Result<(), NlError> {
        let msg = link
            .msg(NLM_F_CREATE | NLM_F_EXCL)
            .u32(IFLA_LINK, parent)
            .nest(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "vlan")
            .nest(IFLA_INFO_DATA)
            .u16(IFLA_VLAN_ID, vid)
            .end()
            .end();
        self.request(msg)
    }

    /// Deletes a link; a missing one is success.
    pub fn del_link(&mut self, index: u32) -> Result<(), NlError> {
        let msg = Msg::new(RTM_DELLINK, 0).header(&ifinfo(0, index, 0, 0));
        match self.request(msg) {
            Err(e) if e.is(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Deletes the link called `name`; `false` when there is none. No look-up first: a
    /// GETLINK would also run the link's pending link-watch work synchronously.
    pub fn del_link_by_name(&mut self, name: &str) -> Result<bool, NlError> {
        let msg = Msg::new(RTM_DELLINK, 0).header(&ifinfo(0, 0, 0, 0)).str(IFLA_IFNAME, name);
        match self.request(msg) {
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// Sets the flags in `mask` to their values in `flags` (e.g. IFF_UP).
    pub fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), NlError> {
        self.request(set_flags_msg(index, flags, mask))
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NlError> {
        self.set_flags(index, IFF_UP, IFF_UP)
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NlError> {
        let msg = Msg::new(RTM_NEWLINK, 0).header(&ifinfo(0, index, 0, 0)).u32(IFLA_MASTER, master);
        self.request(msg)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NlError> {
        let msg = Msg::new(RTM_NEWLINK, 0).header(&ifinfo(0, index, 0, 0)).u32(IFLA_MTU, mtu);
        self.request(msg)
    }

    /// Turns a bridge port's hairpin mode on or off.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        let msg = Msg::new(RTM_SETLINK, 0)
            .header(&ifinfo(libc::AF_BRIDGE as u8, index, 0, 0))
            .nest(IFLA_PROTINFO)
            .u8(IFLA_BRPORT_MODE, u8::from(on))
            .end();
        self.request(msg)
    }

    /// Adds VLAN `vid` to a bridge port (or, with `on_bridge_itself`, to the bridge device);
    /// `pvid` makes it the port's untagged native VLAN.
    pub fn add_port_vlan(&mut self, index: u32, vid: u16, pvid: bool, on_bridge_itself: bool) -> Result<(), NlError> {
        let flags = if pvid { BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED } else { 0 };
        let mut info = [0u8; 4];
        info[0..2].copy_from_slice(&flags.to_ne_bytes());
        info[2..4].copy_from_slice(&vid.to_ne_bytes());
        let msg = Msg::new(RTM_SETLINK, 0)
            .header(&ifinfo(libc::AF_BRIDGE as u8, index, 0, 0))
            .nest(IFLA_AF_SPEC)
            .when(on_bridge_itself, |m| m.u16(IFLA_BRIDGE_FLAGS, BRIDGE_FLAGS_SELF))
            .attr(IFLA_BRIDGE_VLAN_INFO, &info)
            .end();
        self.request(msg)
    }

    /// Removes VLAN `vid` (e.g. the default VLAN 1) from a bridge port.
    pub fn del_port_vlan(&mut self, index: u32, vid: u16) -> Result<(), NlError> {
        let mut info = [0u8; 4];
        info[2..4].copy_from_slice(&vid.to_ne_bytes());
        let msg = Msg::new(RTM_DELLINK, 0)
            .header(&ifinfo(libc::AF_BRIDGE as u8, index, 0, 0))
            .nest(IFLA_AF_SPEC)
            .attr(IFLA_BRIDGE_VLAN_INFO, &info)
            .end();
        self.request(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("0a:58:0A:f4:01:02").unwrap();
        assert_eq!(format_mac(&m), "0a:58:0a:f4:01:02");
        assert!(parse_mac("0a:58:0a:f4:01").is_none());
        assert!(parse_mac("zz:58:0a:f4:01:02").is_none());
    }
}
