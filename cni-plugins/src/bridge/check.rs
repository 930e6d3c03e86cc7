//! CHECK for berth-bridge: the bridge, the host veth on it, the pod interface with prevResult's
//! MAC, addresses and routes, and the ipMasq entries are all still there.

use crate::bridge::config::{host_veth_name, BridgeConf};
use crate::error::{CniError, ErrorCode, KernelContext};
use crate::firewall;
use crate::netlink::Socket;
use crate::result::CniResult;
use crate::skel::CmdArgs;

fn missing(msg: String) -> CniError {
    CniError::new(ErrorCode::Plugin(crate::error::CODE_KERNEL), msg)
}

pub fn verify(conf: &BridgeConf, args: &CmdArgs, prev: &CniResult) -> Result<(), CniError> {
    let mut host = Socket::route().kernel(|| "cannot open a netlink socket".into())?;
    let bridge = host
        .link_by_name(&conf.bridge)
        .kernel(|| format!("cannot look up {}", conf.bridge))?
        .ok_or_else(|| missing(format!("bridge {} does not exist", conf.bridge)))?;
    let veth_name = host_veth_name(&args.conf.name, &args.env.container_id, &args.env.ifname);
    let veth = host
        .link_by_name(&veth_name)
        .kernel(|| format!("cannot look up {veth_name}"))?
        .ok_or_else(|| missing(format!("host veth {veth_name} does not exist")))?;
    if veth.master != Some(bridge.index) {
        return Err(missing(format!("host veth {veth_name} is not attached to {}", conf.bridge)));
    }
    let ns = args.netns()?;
    let mut pod = ns.route_socket().kernel(|| format!("cannot open netlink in {}", args.env.netns))?;
    let ifname = &args.env.ifname;
    let eth = pod
        .link_by_name(ifname)
        .kernel(|| format!("cannot look up {ifname}"))?
        .ok_or_else(|| missing(format!("interface {ifname} does not exist in {}", args.env.netns)))?;
    let want_mac =
        prev.interfaces.iter().find(|i| &i.name == ifname && i.sandbox.is_some()).and_then(|i| i.mac.clone());
    if let (Some(want), Some(have)) = (want_mac, eth.mac_string()) {
        if !want.eq_ignore_ascii_case(&have) {
            return Err(missing(format!("{ifname} has MAC {have}, prevResult says {want}")));
        }
    }
    let addrs = pod.addrs(Some(eth.index)).kernel(|| format!("cannot list addresses of {ifname}"))?;
    for ip in &prev.ips {
        if !addrs.iter().any(|a| a.cidr == ip.address) {
            return Err(missing(format!("{ifname} lacks address {}", ip.address)));
        }
    }
    for r in &prev.routes {
        let table = pod.routes(r.dst.addr.is_ipv6(), r.table.unwrap_or(254)).kernel(|| "cannot list routes".into())?;
        if !table.iter().any(|t| t.dst == r.dst.masked() && (r.gw.is_none() || t.gw == r.gw)) {
            return Err(missing(format!("route to {} is missing in the pod", r.dst)));
        }
    }
    if conf.ip_masq {
        let ips: Vec<_> = prev.ips.iter().map(|i| i.address.addr).collect();
        if !firewall::masq_has(&args.conf.name, &ips).kernel(|| "cannot read the ipMasq sets".into())? {
            return Err(missing(format!("ipMasq entries for {ips:?} are missing")));
        }
    }
    Ok(())
}
