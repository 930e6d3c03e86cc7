//! Netavark's requests in Berth's terms, with no I/O: a network definition checked and completed
//! for `create`, the berth-bridge (and berth-portmap) CNI configuration that `setup` and
//! `teardown` run, and the status block made from the CNI result.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::bridge::config::valid_ifname;
use crate::cidr::{from_u128, to_u128, Cidr};
use crate::netavark::types::{NetAddress, NetInterface, Network, PluginExec, StatusBlock};
use crate::result::CniResult;

/// A network definition or request that berth-bridge cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("network {network:?} has no subnet: create it with --subnet")]
    NoSubnet { network: String },
    #[error("subnet {subnet:?} is not an address/prefix")]
    BadSubnet { subnet: String },
    #[error("subnets {a} and {b} overlap")]
    Overlap { a: Cidr, b: Cidr },
    #[error("gateway {gateway} is not inside subnet {subnet}")]
    GatewayOutside { gateway: IpAddr, subnet: Cidr },
    #[error("lease range bound {ip:?} is not an address inside subnet {subnet}")]
    BadLease { ip: String, subnet: Cidr },
    #[error("option {key:?} is not supported by berth-bridge (it knows mtu and vlan)")]
    UnknownOption { key: String },
    #[error("option {key}={value:?}: {why}")]
    BadOption { key: String, value: String, why: &'static str },
    #[error("IPAM driver {driver:?} is not supported by berth-bridge (host-local or none)")]
    IpamDriver { driver: String },
    #[error("interface name {name:?} is not a valid Linux interface name")]
    BadIfname { name: String },
    #[error("route to {destination:?}: {why}")]
    BadRoute { destination: String, why: &'static str },
    #[error("port mapping {host_port}->{container_port}: {why}")]
    BadPort { host_port: u16, container_port: u16, why: &'static str },
}

const NO_IPAM: &str = "none";
const HOST_LOCAL: &str = "host-local";

fn ipam_driver(net: &Network) -> &str {
    net.ipam_options
        .as_ref()
        .and_then(|o| o.get("driver"))
        .map(String::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or(HOST_LOCAL)
}

fn check_options(net: &Network) -> Result<(), TranslateError> {
    for (key, value) in net.options.iter().flatten() {
        let bad = |why| TranslateError::BadOption { key: key.clone(), value: value.clone(), why };
        match key.as_str() {
            "mtu" => match value.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => {}
                _ => return Err(bad("an MTU is a number in 68..65535")),
            },
            "vlan" => match value.parse::<u16>() {
                Ok(v) if (1..=4094).contains(&v) => {}
                _ => return Err(bad("a VLAN ID is a number in 1..4094")),
            },
            _ => return Err(TranslateError::UnknownOption { key: key.clone() }),
        }
    }
    Ok(())
}

fn check_lease(bound: Option<&String>, subnet: Cidr) -> Result<(), TranslateError> {
    let Some(text) = bound else { return Ok(()) };
    match text.parse::<IpAddr>() {
        Ok(ip) if subnet.contains(ip) => Ok(()),
        _ => Err(TranslateError::BadLease { ip: text.clone(), subnet }),
    }
}

/// Checks the subnets and fills in what is missing: the canonical (masked) subnet, the
/// gateway (the first host) and `ipv6_enabled`.
fn complete_subnets(net: &mut Network) -> Result<(), TranslateError> {
    let mut seen: Vec<Cidr> = Vec::new();
    for s in net.subnets.iter_mut().flatten() {
        let cidr =
            s.subnet.parse::<Cidr>().map_err(|_| TranslateError::BadSubnet { subnet: s.subnet.clone() })?.masked();
        if let Some(other) = seen.iter().find(|o| o.overlaps(&cidr) || cidr.overlaps(o)) {
            return Err(TranslateError::Overlap { a: *other, b: cidr });
        }
        seen.push(cidr);
        s.subnet = cidr.to_string();
        let gateway = s.gateway.unwrap_or_else(|| from_u128(to_u128(cidr.addr) + 1, cidr.addr));
        if !cidr.contains(gateway) {
            return Err(TranslateError::GatewayOutside { gateway, subnet: cidr });
        }
        s.gateway = Some(gateway);
        if let Some(l) = &s.lease_range {
            check_lease(l.start_ip.as_ref(), cidr)?;
            check_lease(l.end_ip.as_ref(), cidr)?;
        }
    }
    if seen.is_empty() && ipam_driver(net) != NO_IPAM {
        return Err(TranslateError::NoSubnet { network: net.name.clone() });
    }
    net.ipv6_enabled = seen.iter().any(|c| c.addr.is_ipv6());
    Ok(())
}

fn check_routes(net: &Network) -> Result<(), TranslateError> {
    for r in net.routes.iter().flatten() {
        let bad = |why| TranslateError::BadRoute { destination: r.destination.clone(), why };
        if r.destination.parse::<Cidr>().is_err() {
            return Err(bad("not an address/prefix"));
        }
        if r.route_type.as_deref().is_some_and(|t| t != "unicast") {
            return Err(bad("berth-bridge installs unicast routes only"));
        }
    }
    Ok(())
}

/// `create`: the network definition checked and completed. The bridge is named after the
/// network ID when none is given; DNS stays off (berth-bridge runs no aardvark-dns).
pub fn complete(mut net: Network) -> Result<Network, TranslateError> {
    check_options(&net)?;
    match ipam_driver(&net) {
        HOST_LOCAL | NO_IPAM => {}
        other => return Err(TranslateError::IpamDriver { driver: other.to_string() }),
    }
    complete_subnets(&mut net)?;
    check_routes(&net)?;
    let bridge = match net.network_interface.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => {
            let id: String = net.id.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
            format!("bn{id}")
        }
    };
    if !valid_ifname(&bridge) {
        return Err(TranslateError::BadIfname { name: bridge });
    }
    net.network_interface = Some(bridge);
    let driver = ipam_driver(&net).to_string();
    net.ipam_options.get_or_insert_with(Default::default).insert("driver".into(), driver);
    net.dns_enabled = false;
    Ok(net)
}

fn ipam_section(net: &Network) -> Option<Value> {
    if ipam_driver(net) == NO_IPAM {
        return None;
    }
    let ranges: Vec<Value> = net
        .subnets
        .iter()
        .flatten()
        .map(|s| {
            let mut r = Map::new();
            r.insert("subnet".into(), s.subnet.clone().into());
            if let Some(g) = s.gateway {
                r.insert("gateway".into(), g.to_string().into());
            }
            if let Some(l) = &s.lease_range {
                if let Some(a) = &l.start_ip {
                    r.insert("rangeStart".into(), a.clone().into());
                }
                if let Some(b) = &l.end_ip {
                    r.insert("rangeEnd".into(), b.clone().into());
                }
            }
            json!([r])
        })
        .collect();
    let routes: Vec<Value> = net
        .routes
        .iter()
        .flatten()
        .map(|r| match r.gateway {
            Some(gw) => json!({"dst": r.destination, "gw": gw.to_string()}),
            None => json!({"dst": r.destination}),
        })
        .collect();
    Some(json!({"type": crate::delegate::IN_PROCESS_IPAM, "ranges": ranges, "routes": routes}))
}

/// The berth-bridge CNI configuration for `setup`/`teardown` of `exec`: the bridge is the
/// gateway, and unless the network is internal also the default route, with masquerading.
/// Podman's own IPAM passes its choice as `static_ips`, which berth-host-local records.
pub fn bridge_conf(exec: &PluginExec) -> Result<Value, TranslateError> {
    let net = complete(exec.network.clone())?;
    let opt = |k: &str| net.options.as_ref().and_then(|o| o.get(k)).and_then(|v| v.parse::<u32>().ok());
    let mut conf = json!({
        "cniVersion": crate::version::CURRENT,
        "name": net.name,
        "type": "berth-bridge",
        "bridge": net.network_interface,
        "isGateway": true,
        "isDefaultGateway": !net.internal,
        "ipMasq": !net.internal,
        "hairpinMode": true,
    });
    if let Some(mtu) = opt("mtu") {
        conf["mtu"] = mtu.into();
    }
    if let Some(vlan) = opt("vlan") {
        conf["vlan"] = vlan.into();
    }
    if let Some(ipam) = ipam_section(&net) {
        conf["ipam"] = ipam;
    }
    let o = &exec.network_options;
    let mut runtime = Map::new();
    if let Some(ips) = o.static_ips.as_ref().filter(|v| !v.is_empty()) {
        let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        runtime.insert("ips".into(), ips.into());
    }
    if let Some(mac) = o.static_mac.as_ref().filter(|m| !m.is_empty()) {
        runtime.insert("mac".into(), mac.clone().into());
    }
    if !runtime.is_empty() {
        conf["runtimeConfig"] = Value::Object(runtime);
    }
    Ok(conf)
}

/// The berth-portmap configuration chained after the bridge (`prev`: its result), or `None`
/// without port mappings. Each mapping's `range` and comma-separated protocols are expanded.
pub fn portmap_conf(exec: &PluginExec, prev: &Value) -> Result<Option<Value>, TranslateError> {
    let mut out = Vec::new();
    for m in exec.port_mappings.iter().flatten() {
        let bad = |why| TranslateError::BadPort { host_port: m.host_port, container_port: m.container_port, why };
        let count = m.range.max(1);
        if m.host_port == 0 || m.container_port == 0 {
            return Err(bad("ports must be set (non-zero)"));
        }
        if u32::from(m.host_port) + u32::from(count) > 65536 || u32::from(m.container_port) + u32::from(count) > 65536 {
            return Err(bad("the range runs past port 65535"));
        }
        let protocols = if m.protocol.is_empty() { "tcp" } else { &m.protocol };
        for proto in protocols.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            for i in 0..count {
                let mut e = json!({"hostPort": m.host_port + i, "containerPort": m.container_port + i,
                                   "protocol": proto});
                if !m.host_ip.is_empty() {
                    e["hostIP"] = m.host_ip.clone().into();
                }
                out.push(e);
            }
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({
        "cniVersion": crate::version::CURRENT,
        "name": exec.network.name,
        "type": "berth-portmap",
        "prevResult": prev,
        "runtimeConfig": {"portMappings": out},
    })))
}

/// `setup`'s answer: the container interface (`ifname`) with its MAC and addresses.
pub fn status_block(result: &CniResult, ifname: &str) -> StatusBlock {
    let mac = result
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_some() && i.name == ifname)
        .and_then(|i| i.mac.clone())
        .unwrap_or_default();
    let subnets =
        result.ips.iter().map(|ip| NetAddress { ipnet: ip.address.to_string(), gateway: ip.gateway }).collect();
    let mut block = StatusBlock {
        dns_search_domains: result.dns.search.clone(),
        dns_server_ips: result.dns.nameservers.iter().filter_map(|s| s.parse().ok()).collect(),
        ..Default::default()
    };
    block.interfaces.insert(ifname.to_string(), NetInterface { mac_address: mac, subnets });
    block
}

#[cfg(test)]
mod tests;
