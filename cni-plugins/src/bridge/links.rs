//! The bridge plugin's kernel steps: the bridge and its gateway addresses on the host, the veth
//! pair born with its peer in the pod netns, and the pod side's addresses and routes.

use std::net::IpAddr;

use crate::bridge::config::BridgeConf;
use crate::cidr::{from_u128, to_u128, Cidr};
use crate::error::{CniError, ErrorCode, KernelContext, CODE_KERNEL, CODE_LINK_EXISTS};
use crate::netlink::addr::add_addr_msg;
use crate::netlink::link::{set_flags_msg, IFF_UP};
use crate::netlink::{Link, NewLink, RouteSpec, Socket};
use crate::netns::{sysctl, NetNs};
use crate::result::{CniResult, IpConfig, Route};

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: mac is writable for 6 bytes; getrandom writes at most that many.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != 6 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ^ u128::from(std::process::id());
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The bridge, created (up, fixed MAC, MTU, VLAN filtering) if it does not exist yet.
pub fn ensure_bridge(host: &mut Socket, conf: &BridgeConf) -> Result<Link, CniError> {
    let name = conf.bridge.as_str();
    let lookup = |host: &mut Socket| host.link_by_name(name).kernel(|| format!("cannot look up bridge {name}"));
    let link = match lookup(host)? {
        Some(l) => l,
        None => {
            let new = NewLink { name, mtu: conf.mtu, mac: Some(random_mac()), up: true, master: None };
            match host.add_bridge(&new, conf.vlan.is_some()) {
                Err(e) if !e.is(libc::EEXIST) => return Err(e).kernel(|| format!("cannot create bridge {name}")),
                _ => {}
            }
            lookup(host)?.ok_or_else(|| {
                CniError::new(ErrorCode::Plugin(CODE_KERNEL), format!("bridge {name} vanished after creation"))
            })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        let msg = format!("{name} exists and is not a bridge (it is {})", link.kind.as_deref().unwrap_or("a device"));
        return Err(CniError::new(ErrorCode::InvalidNetworkConfig, msg));
    }
    if !link.is_up() {
        host.set_up(link.index).kernel(|| format!("cannot set bridge {name} up"))?;
    }
    if conf.promisc && link.flags & crate::netlink::link::IFF_PROMISC == 0 {
        let p = crate::netlink::link::IFF_PROMISC;
        host.set_flags(link.index, p, p).kernel(|| format!("cannot set bridge {name} promiscuous"))?;
    }
    Ok(link)
}

/// The gateway address of an allocated address: its configured one, or the subnet's first host.
pub fn gateway_of(ip: &IpConfig) -> Cidr {
    let gw = ip.gateway.unwrap_or_else(|| {
        let net = ip.address.network();
        from_u128(to_u128(net) + 1, net)
    });
    Cidr::new(gw, ip.address.prefix)
}

/// Puts gateway address `gw` on the bridge. Another address of the same subnet is an error
/// unless `forceAddress`, which replaces it.
pub fn ensure_gateway(host: &mut Socket, bridge: &Link, gw: Cidr, force: bool) -> Result<(), CniError> {
    let addrs = host.addrs(Some(bridge.index)).kernel(|| format!("cannot list addresses of {}", bridge.name))?;
    if addrs.iter().any(|a| a.cidr.addr == gw.addr) {
        return Ok(());
    }
    for old in addrs.iter().filter(|a| a.cidr.addr.is_ipv4() == gw.addr.is_ipv4()) {
        let link_local = matches!(old.cidr.addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
        if link_local || !(old.cidr.overlaps(&gw) || gw.overlaps(&old.cidr)) {
            continue;
        }
        if !force {
            let msg = format!(
                "bridge {} already has address {} in the gateway's subnet; set forceAddress to replace it with {gw}",
                bridge.name, old.cidr
            );
            return Err(CniError::new(ErrorCode::InvalidNetworkConfig, msg));
        }
        host.del_addr(bridge.index, old.cidr).kernel(|| format!("cannot remove {} from {}", old.cidr, bridge.name))?;
    }
    match host.add_addr(bridge.index, gw) {
        Err(e) if !e.is(libc::EEXIST) => Err(e).kernel(|| format!("cannot add {gw} to bridge {}", bridge.name)),
        _ => Ok(()),
    }
}

/// Turns on forwarding for the families of `ips` (host side, when the bridge is a gateway).
pub fn enable_forwarding(ips: &[IpConfig]) -> Result<(), CniError> {
    if ips.iter().any(|i| i.address.addr.is_ipv4()) {
        sysctl(&["net", "ipv4", "ip_forward"], "1").kernel(|| "cannot enable IPv4 forwarding".into())?;
    }
    if ips.iter().any(|i| i.address.addr.is_ipv6()) {
        sysctl(&["net", "ipv6", "conf", "all", "forwarding"], "1").kernel(|| "cannot enable IPv6 forwarding".into())?;
    }
    Ok(())
}

/// The two ends of a new veth pair.
#[derive(Debug, Clone)]
pub struct Veth {
    /// The end on the bridge, as the kernel reported it right after creation.
    pub host: Link,
    /// The end in the pod: its index there (from the host end's IFLA_LINK) and the MAC and
    /// MTU it was created with, so ADD needs no look-up inside the pod.
    pub pod: Link,
}

/// Creates the veth pair: `host_name` on the bridge here, `ifname` with MAC `pod_mac` born
/// inside `ns`. A stale host end of the same name (an interrupted ADD) is replaced.
pub fn create_veth(
    host: &mut Socket,
    ns: &NetNs,
    conf: &BridgeConf,
    bridge: &Link,
    host_name: &str,
    ifname: &str,
    pod_mac: [u8; 6],
) -> Result<Veth, CniError> {
    let host_end = NewLink {
        name: host_name,
        mtu: conf.mtu.or(Some(bridge.mtu)).filter(|m| *m > 0),
        mac: None,
        up: true,
        master: Some(bridge.index),
    };
    let pod_end = NewLink {
        name: ifname,
        mtu: host_end.mtu,
        mac: Some(pod_mac),
        // The kernel refuses IFF_UP on a peer born in another netns (ENOTCONN): set it up later.
        up: false,
        master: None,
    };
    let created = || format!("cannot create veth {host_name} with peer {ifname} in {}", ns.path().display());
    let mut made = None;
    for attempt in 0..2 {
        let (outcome, link) = host.add_veth_and_get(&host_end, &pod_end, ns.fd()).kernel(created)?;
        match outcome {
            Ok(()) => {
                made = link;
                break;
            }
            Err(e) if e.is(libc::EEXIST) && attempt == 0 => {
                if let Some(stale) = link {
                    host.del_link(stale.index).kernel(|| format!("cannot remove stale {host_name}"))?;
                    continue;
                }
                let msg = format!("interface {ifname} already exists in network namespace {}", ns.path().display());
                return Err(CniError::new(ErrorCode::Plugin(CODE_LINK_EXISTS), msg));
            }
            Err(e) => return Err(e).kernel(created),
        }
    }
    let link = made
        .ok_or_else(|| CniError::new(ErrorCode::Plugin(CODE_KERNEL), format!("{host_name} vanished after creation")))?;
    configure_port(host, conf, &link)?;
    let pod = Link {
        index: link.link.unwrap_or(0),
        name: ifname.to_string(),
        flags: 0,
        mtu: link.mtu,
        mac: Some(pod_mac),
        master: None,
        kind: Some("veth".into()),
        hairpin: None,
        link: Some(link.index),
    };
    Ok(Veth { host: link, pod })
}

/// The bridge-port options of the host end: hairpin mode and the VLAN (as its native VLAN).
fn configure_port(host: &mut Socket, conf: &BridgeConf, port: &Link) -> Result<(), CniError> {
    let name = &port.name;
    if conf.hairpin {
        host.set_hairpin(port.index, true).kernel(|| format!("cannot set hairpin mode on {name}"))?;
    }
    if let Some(vid) = conf.vlan {
        host.add_port_vlan(port.index, vid, true, false).kernel(|| format!("cannot put {name} in VLAN {vid}"))?;
        let _ = host.del_port_vlan(port.index, 1);
    }
    Ok(())
}

/// The routes ADD installs in the pod: IPAM's (a missing gateway is the family's gateway) plus
/// a default route per family when the bridge is the default gateway.
pub fn pod_routes(ipam: &CniResult, conf: &BridgeConf) -> Vec<Route> {
    let gw_for = |v4: bool| ipam.ips.iter().find(|i| i.address.addr.is_ipv4() == v4).map(|i| gateway_of(i).addr);
    let mut routes: Vec<Route> =
        ipam.routes.iter().map(|r| Route { gw: r.gw.or_else(|| gw_for(r.dst.addr.is_ipv4())), ..r.clone() }).collect();
    if conf.is_default_gateway {
        for v4 in [true, false] {
            let Some(gw) = gw_for(v4) else { continue };
            let any: Cidr = if v4 { "0.0.0.0/0" } else { "::/0" }.parse().unwrap_or(Cidr::new(gw, 0));
            if !routes.iter().any(|r| r.dst == any) {
                routes.push(Route::new(any, Some(gw)));
            }
        }
    }
    routes
}

/// Up, addresses and routes on the pod's interface (via a socket opened in its netns), sent as
/// one batch: the kernel applies them in order, so each route finds its address in place.
pub fn configure_pod(pod: &mut Socket, index: u32, ips: &[IpConfig], routes: &[Route]) -> Result<(), CniError> {
    let specs: Vec<RouteSpec> = routes
        .iter()
        .map(|r| {
            let mut spec = RouteSpec::new(r.dst, r.gw, Some(index));
            spec.metric = r.priority;
            spec.mtu = r.mtu;
            spec.advmss = r.advmss;
            if let Some(t) = r.table {
                spec.table = t;
            }
            spec
        })
        .collect();
    let mut msgs = vec![set_flags_msg(index, IFF_UP, IFF_UP)];
    msgs.extend(ips.iter().map(|ip| add_addr_msg(index, ip.address)));
    msgs.extend(specs.iter().map(|s| s.add_msg(false)));
    let outcomes = pod.request_all(msgs).kernel(|| "cannot configure the pod interface".into())?;
    let mut outcomes = outcomes.into_iter();
    if let Some(Err(e)) = outcomes.next() {
        return Err(e).kernel(|| "cannot set the pod interface up".into());
    }
    let what = ips
        .iter()
        .map(|ip| format!("cannot add {} to the pod interface", ip.address))
        .chain(routes.iter().map(|r| format!("cannot add route {} via {:?} in the pod", r.dst, r.gw)));
    for (outcome, what) in outcomes.zip(what) {
        match outcome {
            Err(e) if !e.is(libc::EEXIST) => return Err(e).kernel(|| what),
            _ => {}
        }
    }
    Ok(())
}
