//! Interface addresses, routes, neighbours and bridge/VXLAN FDB entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::msg::{Attrs, Msg, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use super::{NlError, Socket};
use crate::cidr::Cidr;

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RTAX_ADVMSS: u16 = 8;
pub const RT_TABLE_MAIN: u32 = 254;
const RTPROT_BOOT: u8 = 3;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_IFINDEX: u16 = 8;
const NUD_PERMANENT: u16 = 0x80;
const NTF_SELF: u8 = 0x02;

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))),
        _ => None,
    }
}

fn ifaddr(fam: u8, prefix: u8, index: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = fam;
    h[1] = prefix;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub cidr: Cidr,
}

/// A route as written to or read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub scope: u8,
    /// Next hop reachable on the device even if no address covers it (VXLAN host-routes).
    pub onlink: bool,
    /// Who installed it (`RTPROT_*`); Berth's overlay routes carry [`RTPROT_BERTH`].
    pub protocol: u8,
}

/// The route protocol number marking routes that Berth's overlay sync owns.
pub const RTPROT_BERTH: u8 = 0xbe;

impl RouteSpec {
    pub fn new(dst: Cidr, gw: Option<IpAddr>, oif: Option<u32>) -> RouteSpec {
        RouteSpec {
            dst: dst.masked(),
            gw,
            oif,
            table: RT_TABLE_MAIN,
            metric: None,
            mtu: None,
            advmss: None,
            scope: if gw.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK },
            onlink: false,
            protocol: RTPROT_BOOT,
        }
    }

    /// The request behind [`Socket::add_route`], for [`Socket::request_all`] batches.
    pub fn add_msg(&self, replace: bool) -> Msg {
        let flags = if replace { NLM_F_CREATE | NLM_F_REPLACE } else { NLM_F_CREATE | NLM_F_EXCL };
        self.msg(RTM_NEWROUTE, flags)
    }

    fn msg(&self, ty: u16, flags: u16) -> Msg {
        let fam = family(self.dst.addr);
        let mut h = [0u8; 12];
        h[0] = fam;
        h[1] = self.dst.prefix;
        h[4] = if self.table < 256 { self.table as u8 } else { 252 };
        h[5] = self.protocol;
        h[6] = self.scope;
        h[7] = RTN_UNICAST;
        let rflags = if self.onlink { RTNH_F_ONLINK } else { 0 };
        h[8..12].copy_from_slice(&rflags.to_ne_bytes());
        let metrics = self.mtu.is_some() || self.advmss.is_some();
        Msg::new(ty, flags)
            .header(&h)
            .attr(RTA_DST, &octets(self.dst.addr))
            .u32(RTA_TABLE, self.table)
            .when(self.gw.is_some(), |m| m.attr(RTA_GATEWAY, &self.gw.map(octets).unwrap_or_default()))
            .when(self.oif.is_some(), |m| m.u32(RTA_OIF, self.oif.unwrap_or(0)))
            .when(self.metric.is_some(), |m| m.u32(RTA_PRIORITY, self.metric.unwrap_or(0)))
            .when(metrics, |m| {
                m.nest(RTA_METRICS)
                    .when(self.mtu.is_some(), |m| m.u32(RTAX_MTU, self.mtu.unwrap_or(0)))
                    .when(self.advmss.is_some(), |m| m.u32(RTAX_ADVMSS, self.advmss.unwrap_or(0)))
                    .end()
            })
    }
}

fn parse_route(body: &[u8]) -> Option<RouteSpec> {
    let fam = *body.first()?;
    let prefix = *body.get(1)?;
    let table = u32::from(*body.get(4)?);
    let scope = *body.get(6)?;
    let protocol = *body.get(5)?;
    let kind = *body.get(7)?;
    if kind != RTN_UNICAST {
        return None;
    }
    let attrs = Attrs::after(body, 12);
    let zero =
        if fam == libc::AF_INET as u8 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let dst = attrs.get(RTA_DST).and_then(parse_ip).unwrap_or(zero);
    Some(RouteSpec {
        dst: Cidr::new(dst, prefix),
        gw: attrs.get(RTA_GATEWAY).and_then(parse_ip),
        oif: attrs.get_u32(RTA_OIF),
        table: attrs.get_u32(RTA_TABLE).unwrap_or(table),
        metric: attrs.get_u32(RTA_PRIORITY),
        mtu: None,
        advmss: None,
        scope,
        onlink: false,
        protocol,
    })
}

/// A neighbour (ARP/NDP) or FDB entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: Option<IpAddr>,
    pub mac: Option<[u8; 6]>,
}

fn ndmsg(fam: u8, index: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = fam;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..10].copy_from_slice(&state.to_ne_bytes());
    h[10] = flags;
    h
}

fn parse_neigh(body: &[u8]) -> Option<Neighbour> {
    let index = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
    let attrs = Attrs::after(body, 12);
    Some(Neighbour {
        index,
        ip: attrs.get(NDA_DST).and_then(parse_ip),
        mac: attrs.get(NDA_LLADDR).and_then(|m| <[u8; 6]>::try_from(m).ok()),
    })
}

/// The request behind [`Socket::add_addr`], for [`Socket::request_all`] batches.
pub fn add_addr_msg(index: u32, cidr: Cidr) -> Msg {
    let fam = family(cidr.addr);
    let msg = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
        .header(&ifaddr(fam, cidr.prefix, index))
        .attr(IFA_LOCAL, &octets(cidr.addr))
        .attr(IFA_ADDRESS, &octets(cidr.addr))
        .u32(IFA_FLAGS, IFA_F_NODAD);
    if cidr.addr.is_ipv4() && cidr.prefix < 31 {
        msg.attr(IFA_BROADCAST, &octets(cidr.last()))
    } else {
        msg
    }
}

impl Socket {
    /// Adds `cidr` to interface `index` (no duplicate address detection); `EEXIST` if present.
    pub fn add_addr(&mut self, index: u32, cidr: Cidr) -> Result<(), NlError> {
        self.request(add_addr_msg(index, cidr))
    }

    /// Removes an address; a missing one is success.
    pub fn del_addr(&mut self, index: u32, cidr: Cidr) -> Result<(), NlError> {
        let msg = Msg::new(RTM_DELADDR, 0)
            .header(&ifaddr(family(cidr.addr), cidr.prefix, index))
            .attr(IFA_LOCAL, &octets(cidr.addr));
        match self.request(msg) {
            Err(e) if e.is(libc::EADDRNOTAVAIL) || e.is(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// The addresses of interface `index` (all interfaces when `None`).
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<Address>, NlError> {
        let msg = Msg::new(RTM_GETADDR, 0).header(&ifaddr(0, 0, index.unwrap_or(0)));
        let mut out = Vec::new();
        for body in self.dump(msg)? {
            let (Some(&prefix), Some(idx)) = (body.get(1), body.get(4..8)) else {
                continue;
            };
            let idx = u32::from_ne_bytes(idx.try_into().map_err(|_| NlError::Malformed)?);
            let attrs = Attrs::after(&body, 8);
            let ip = attrs.get(IFA_LOCAL).or_else(|| attrs.get(IFA_ADDRESS));
            if let Some(ip) = ip.and_then(parse_ip) {
                if index.is_none_or(|i| i == idx) {
                    out.push(Address { index: idx, cidr: Cidr::new(ip, prefix) });
                }
            }
        }
        Ok(out)
    }

    /// Adds a route; `replace` overwrites an existing one with the same key.
    pub fn add_route(&mut self, route: &RouteSpec, replace: bool) -> Result<(), NlError> {
        self.request(route.add_msg(replace))
    }

    /// Deletes a route; a missing one is success.
    pub fn del_route(&mut self, route: &RouteSpec) -> Result<(), NlError> {
        match self.request(route.msg(RTM_DELROUTE, 0)) {
            Err(e) if e.is(libc::ESRCH) || e.is(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// The unicast routes of one family in `table`.
    pub fn routes(&mut self, v6: bool, table: u32) -> Result<Vec<RouteSpec>, NlError> {
        let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let mut h = [0u8; 12];
        h[0] = fam;
        let msg = Msg::new(RTM_GETROUTE, 0).header(&h).u32(RTA_TABLE, table);
        let all = self.dump(msg)?;
        Ok(all.iter().filter_map(|b| parse_route(b)).filter(|r| r.table == table).collect())
    }

    /// Sets a permanent neighbour entry `ip → mac` on `index` (replacing an older one).
    pub fn set_neigh(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NlError> {
        let msg = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE)
            .header(&ndmsg(family(ip), index, NUD_PERMANENT, 0))
            .attr(NDA_DST, &octets(ip))
            .attr(NDA_LLADDR, &mac);
        self.request(msg)
    }

    pub fn del_neigh(&mut self, index: u32, ip: IpAddr) -> Result<(), NlError> {
        let msg = Msg::new(RTM_DELNEIGH, 0).header(&ndmsg(family(ip), index, 0, 0)).attr(NDA_DST, &octets(ip));
        match self.request(msg) {
            Err(e) if e.is(libc::ENOENT) || e.is(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Neighbour entries of one family on `index`.
    pub fn neighs(&mut self, index: u32, v6: bool) -> Result<Vec<Neighbour>, NlError> {
        let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        // A strict dump wants the device as NDA_IFINDEX, not in the header.
        let msg = Msg::new(RTM_GETNEIGH, 0).header(&ndmsg(fam, 0, 0, 0)).u32(NDA_IFINDEX, index);
        let all = self.dump(msg)?;
        Ok(all.iter().filter_map(|b| parse_neigh(b)).filter(|n| n.index == index).collect())
    }

    /// Sets a device FDB entry `mac → remote VTEP dst` on a VXLAN device.
    pub fn set_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NlError> {
        let msg = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE)
            .header(&ndmsg(libc::AF_BRIDGE as u8, index, NUD_PERMANENT, NTF_SELF))
            .attr(NDA_LLADDR, &mac)
            .attr(NDA_DST, &octets(dst));
        self.request(msg)
    }

    pub fn del_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NlError> {
        let msg = Msg::new(RTM_DELNEIGH, 0)
            .header(&ndmsg(libc::AF_BRIDGE as u8, index, 0, NTF_SELF))
            .attr(NDA_LLADDR, &mac)
            .attr(NDA_DST, &octets(dst));
        match self.request(msg) {
            Err(e) if e.is(libc::ENOENT) || e.is(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// The FDB entries of device `index` that name a remote (entries with a destination IP).
    pub fn fdb(&mut self, index: u32) -> Result<Vec<Neighbour>, NlError> {
        let msg = Msg::new(RTM_GETNEIGH, 0).header(&ndmsg(libc::AF_BRIDGE as u8, index, 0, 0));
        let all = self.dump(msg)?;
        Ok(all.iter().filter_map(|b| parse_neigh(b)).filter(|n| n.index == index && n.ip.is_some()).collect())
    }
}
