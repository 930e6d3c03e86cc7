//! Level-triggered peer sync for the overlays: make the kernel's per-peer state equal the
//! peer list. Used by berth-vxlan/berth-host-gw on every ADD and `sync`, and by Berth's agent
//! whenever the node list changes (call it from a thread inside the host netns).
//!
//! VXLAN, per peer: route `podCIDR via VTEP dev vx onlink`, neighbour `VTEP → VTEP MAC`, FDB
//! `VTEP MAC → underlay IP`. host-gw, per peer: route `podCIDR via underlay IP`. Only state we
//! own is touched: routes carry protocol [`RTPROT_BERTH`], and the VXLAN device is ours.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::netlink::addr::{RouteSpec, RTPROT_BERTH, RT_SCOPE_UNIVERSE};
use crate::netlink::{format_mac, Link, NlError, Socket};

/// Another node: its pod subnet, its underlay address, and (VXLAN) its VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Cidr,
    #[serde(rename = "underlayIP")]
    pub underlay_ip: IpAddr,
    /// Default: derived from the underlay IP by [`vtep_mac`], which is what Berth's VXLAN
    /// devices use, so static peer lists need not carry it.
    #[serde(rename = "vtepMAC", default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

/// A failed sync step, naming the peer.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("peer {pod_cidr}: {what}")]
    Peer {
        pod_cidr: Cidr,
        what: String,
        #[source]
        source: Option<NlError>,
    },
    #[error("cannot read the current {what}")]
    List {
        what: &'static str,
        #[source]
        source: NlError,
    },
}

/// What a sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
}

/// The VTEP MAC Berth gives a node's VXLAN device: 0e:be + the IPv4 underlay address.
pub fn vtep_mac(underlay: IpAddr) -> [u8; 6] {
    let o = match underlay {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let s = a.octets();
            [s[12], s[13], s[14], s[15]]
        }
    };
    [0x0e, 0xbe, o[0], o[1], o[2], o[3]]
}

/// The VTEP address of a node: the network address of its IPv4 pod subnet (flannel's choice).
pub fn vtep_ip(pod_cidr: &Cidr) -> IpAddr {
    pod_cidr.network()
}

fn peer_mac(p: &Peer) -> Result<[u8; 6], SyncError> {
    match &p.vtep_mac {
        None => Ok(vtep_mac(p.underlay_ip)),
        Some(s) => crate::netlink::parse_mac(s).ok_or_else(|| SyncError::Peer {
            pod_cidr: p.pod_cidr,
            what: format!("invalid vtepMAC {s:?}"),
            source: None,
        }),
    }
}

fn peer_err(p: &Peer, what: String) -> impl FnOnce(NlError) -> SyncError {
    let pod_cidr = p.pod_cidr;
    move |e| SyncError::Peer { pod_cidr, what, source: Some(e) }
}

fn list_err(what: &'static str) -> impl FnOnce(NlError) -> SyncError {
    move |source| SyncError::List { what, source }
}

fn owned_routes(sock: &mut Socket, oif: Option<u32>) -> Result<Vec<RouteSpec>, SyncError> {
    let mut out = sock.routes(false, crate::netlink::addr::RT_TABLE_MAIN).map_err(list_err("routes"))?;
    out.retain(|r| r.protocol == RTPROT_BERTH && oif.is_none_or(|o| r.oif == Some(o)));
    Ok(out)
}

fn berth_route(dst: Cidr, gw: IpAddr, oif: u32, onlink: bool) -> RouteSpec {
    RouteSpec { onlink, protocol: RTPROT_BERTH, scope: RT_SCOPE_UNIVERSE, ..RouteSpec::new(dst, Some(gw), Some(oif)) }
}

/// Makes routes, neighbours and FDB entries of VXLAN device `vx` match `peers` (IPv4 pod
/// subnets; peers whose underlay IP is `local` are this node and skipped).
pub fn sync_vxlan(sock: &mut Socket, vx: &Link, local: IpAddr, peers: &[Peer]) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let peers: Vec<&Peer> = peers.iter().filter(|p| p.underlay_ip != local && p.pod_cidr.addr.is_ipv4()).collect();
    let mut want_routes = Vec::new();
    let mut want_neigh = HashSet::new();
    let mut want_fdb = HashSet::new();
    for p in &peers {
        let mac = peer_mac(p)?;
        let vtep = vtep_ip(&p.pod_cidr);
        want_routes.push(berth_route(p.pod_cidr.masked(), vtep, vx.index, true));
        want_neigh.insert((vtep, mac));
        want_fdb.insert((mac, p.underlay_ip));
    }
    // Remove what no peer wants (or wants differently), then add everything wanted.
    for r in owned_routes(sock, Some(vx.index))? {
        if !want_routes.iter().any(|w| w.dst == r.dst && w.gw == r.gw) {
            sock.del_route(&r).map_err(list_err("routes"))?;
            report.removed += 1;
        }
    }
    for n in sock.neighs(vx.index, false).map_err(list_err("neighbours"))? {
        match (n.ip, n.mac) {
            (Some(ip), Some(mac)) if want_neigh.contains(&(ip, mac)) => {}
            (Some(ip), _) => {
                sock.del_neigh(vx.index, ip).map_err(list_err("neighbours"))?;
                report.removed += 1;
            }
            _ => {}
        }
    }
    for f in sock.fdb(vx.index).map_err(list_err("FDB"))? {
        if let (Some(mac), Some(ip)) = (f.mac, f.ip) {
            if !want_fdb.contains(&(mac, ip)) {
                sock.del_fdb(vx.index, mac, ip).map_err(list_err("FDB"))?;
                report.removed += 1;
            }
        }
    }
    for p in &peers {
        let mac = peer_mac(p)?;
        let vtep = vtep_ip(&p.pod_cidr);
        sock.set_fdb(vx.index, mac, p.underlay_ip)
            .map_err(peer_err(p, format!("cannot add FDB entry {} → {}", format_mac(&mac), p.underlay_ip)))?;
        sock.set_neigh(vx.index, vtep, mac)
            .map_err(peer_err(p, format!("cannot add neighbour {vtep} → {}", format_mac(&mac))))?;
        let route = berth_route(p.pod_cidr.masked(), vtep, vx.index, true);
        sock.add_route(&route, true).map_err(peer_err(p, format!("cannot add route via {vtep}")))?;
        report.added += 1;
    }
    Ok(report)
}

/// Whether `ip` is inside a connected subnet of some address on this host (same L2 segment).
pub fn on_link(sock: &mut Socket, ip: IpAddr) -> Result<Option<u32>, NlError> {
    let addrs = sock.addrs(None)?;
    Ok(addrs.iter().find(|a| a.cidr.prefix < 32 && a.cidr.contains(ip) && a.cidr.addr != ip).map(|a| a.index))
}

/// Makes the host-gw routes match `peers`: `podCIDR via underlay IP`. A peer whose underlay IP
/// is not on a connected subnet is an error naming it (host-gw needs one L2 segment).
pub fn sync_host_gw(sock: &mut Socket, local: IpAddr, peers: &[Peer]) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let peers: Vec<&Peer> = peers.iter().filter(|p| p.underlay_ip != local).collect();
    let mut want = Vec::new();
    for p in &peers {
        let dev = on_link(sock, p.underlay_ip).map_err(list_err("addresses"))?.ok_or_else(|| SyncError::Peer {
            pod_cidr: p.pod_cidr,
            what: format!(
                "underlay IP {} is not on a directly connected network of this node; host-gw needs every node on one L2 segment (use berth-vxlan otherwise)",
                p.underlay_ip
            ),
            source: None,
        })?;
        want.push((p, berth_route(p.pod_cidr.masked(), p.underlay_ip, dev, false)));
    }
    for r in owned_routes(sock, None)? {
        if !want.iter().any(|(_, w)| w.dst == r.dst && w.gw == r.gw) {
            sock.del_route(&r).map_err(list_err("routes"))?;
            report.removed += 1;
        }
    }
    for (p, route) in &want {
        sock.add_route(route, true).map_err(peer_err(p, format!("cannot add route via {}", p.underlay_ip)))?;
        report.added += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_defaults() {
        let ip: IpAddr = "192.168.5.7".parse().unwrap();
        assert_eq!(format_mac(&vtep_mac(ip)), "0e:be:c0:a8:05:07");
        let c: Cidr = "10.244.3.0/24".parse().unwrap();
        assert_eq!(vtep_ip(&c).to_string(), "10.244.3.0");
        let p: Peer = serde_json::from_str(r#"{"podCIDR":"10.244.3.0/24","underlayIP":"192.168.5.7"}"#).unwrap();
        assert_eq!(peer_mac(&p).unwrap(), vtep_mac(ip));
        let bad = Peer { vtep_mac: Some("x".into()), ..p };
        assert!(peer_mac(&bad).unwrap_err().to_string().contains("10.244.3.0/24"));
    }
}
