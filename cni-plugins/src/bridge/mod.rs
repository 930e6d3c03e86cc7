//! `berth-bridge`: pods on a Linux bridge through veth pairs, IPAM delegated to any plugin.
//!
//! ADD = IPAM → record → bridge → veth (peer born in the pod netns) → pod addresses/routes →
//! nftables (ipMasq, macspoofchk) → host ports (runtimeConfig.portMappings, given to a bridge
//! that declares the capability: berth-portmap's code in-process). Any failure after IPAM runs
//! the same teardown as DEL and gives the addresses back, so nothing is left half-created. DEL and GC are idempotent and
//! best-effort: they try every step and report all failures together.

pub mod config;
pub mod links;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::delegate;
use crate::env::Command;
use crate::error::{all_or_report, CniError, ErrorCode, KernelContext};
use crate::firewall;
use crate::netconf::Attachment;
use crate::netlink::nft::Action;
use crate::netlink::{format_mac, parse_mac, Socket};
use crate::portmap::Portmap;
use crate::result::{CniResult, Interface, IpConfig};
use crate::skel::{CmdArgs, Plugin};
use crate::state::Records;

pub use config::{host_veth_name, BridgeConf};

/// The `berth-bridge` plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct Bridge;

/// What ADD created, kept under the state dir for DEL and GC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRecord {
    pub host_veth: String,
    pub ips: Vec<IpAddr>,
    pub masq: bool,
    /// The pod MAC registered with macspoofchk.
    pub spoof_mac: Option<String>,
}

/// Whether the runtime handed this plugin host ports to map: it passes
/// runtimeConfig.portMappings only to a plugin whose configuration declares the
/// `portMappings` capability (some runtimes strip `capabilities` before the call, so that key
/// itself is no signal). Then berth-portmap's code runs in-process, with the same records and
/// nftables maps: one plugin process per pod ADD and DEL instead of two. DEL and GC always
/// look for such records (none: nothing to do), since runtimes need not pass runtimeConfig
/// to them.
fn maps_ports(args: &CmdArgs) -> bool {
    args.conf.runtime("portMappings").is_some_and(|v| !v.is_null())
}

/// `args` with `result` as its prevResult, as berth-portmap would be invoked after this plugin.
fn chained(args: &CmdArgs, result: &CniResult) -> CmdArgs {
    let mut a = args.clone();
    a.conf.prev_result = Some(result.to_json(&args.conf.cni_version));
    a
}

fn records(conf: &BridgeConf, args: &CmdArgs) -> Records {
    Records::new(&conf.state_dir, "bridge", &args.conf.name)
}

/// Everything after IPAM; on error the caller tears down.
fn attach(conf: &BridgeConf, args: &CmdArgs, ipam: &CniResult, rec: &mut BridgeRecord) -> Result<CniResult, CniError> {
    let ns = args.netns()?;
    let store = records(conf, args);
    let who = args.attachment();
    let pod_mac = conf.mac.unwrap_or_else(links::random_mac);
    // Everything ADD may create is recorded before any of it exists, in one write: undoing what
    // was never made is harmless (a missing link or set element is success), while rewriting
    // the record (a rename over it) makes ext4 start writeback of the new file.
    rec.masq = conf.ip_masq && !rec.ips.is_empty();
    rec.spoof_mac = conf.macspoofchk.then(|| format_mac(&pod_mac));
    store.write(&who, rec)?;
    let mut host = Socket::route().kernel(|| "cannot open a netlink socket".into())?;
    let bridge = links::ensure_bridge(&mut host, conf)?;
    if conf.is_gateway {
        for ip in &ipam.ips {
            links::ensure_gateway(&mut host, &bridge, links::gateway_of(ip), conf.force_address)?;
        }
        links::enable_forwarding(&ipam.ips)?;
    }
    let veth = links::create_veth(&mut host, &ns, conf, &bridge, &rec.host_veth, &args.env.ifname, pod_mac)?;
    let mut pod = ns.route_socket().kernel(|| format!("cannot open netlink in {}", args.env.netns))?;
    let eth = match veth.pod.index {
        0 => pod_link(&mut pod, &args.env.ifname)?, // a kernel without IFLA_LINK for veths
        _ => veth.pod.clone(),
    };
    let veth = veth.host;
    let routes = links::pod_routes(ipam, conf);
    let ips = pod_ips(ipam, conf);
    links::configure_pod(&mut pod, eth.index, &ips, &routes)?;
    add_firewall(conf, args, rec, &ips, pod_mac)?;
    Ok(CniResult {
        interfaces: vec![
            Interface { name: bridge.name.clone(), mac: bridge.mac_string(), ..Default::default() },
            Interface { name: veth.name.clone(), mac: veth.mac_string(), ..Default::default() },
            Interface {
                name: eth.name.clone(),
                mac: eth.mac_string(),
                mtu: Some(eth.mtu),
                sandbox: Some(args.env.netns.clone()),
                ..Default::default()
            },
        ],
        ips,
        routes,
        dns: args.conf.dns.clone().unwrap_or_else(|| ipam.dns.clone()),
    })
}

/// IPAM's addresses as the result reports them: on the pod interface (index 2 of the result's
/// interfaces), with the bridge as gateway when it is one.
fn pod_ips(ipam: &CniResult, conf: &BridgeConf) -> Vec<IpConfig> {
    ipam.ips
        .iter()
        .map(|i| IpConfig {
            interface: Some(2),
            gateway: if conf.is_gateway { Some(links::gateway_of(i).addr) } else { i.gateway },
            ..i.clone()
        })
        .collect()
}

/// The nftables entries of an attachment: its addresses in the ipMasq sets, its port and MAC
/// in the macspoofchk set.
fn add_firewall(
    conf: &BridgeConf,
    args: &CmdArgs,
    rec: &BridgeRecord,
    ips: &[IpConfig],
    pod_mac: [u8; 6],
) -> Result<(), CniError> {
    if rec.masq {
        let mut exclude: Vec<_> = ips.iter().map(|i| i.address.masked()).collect();
        exclude.extend(conf.ip_masq_exclude.iter().copied());
        firewall::masq_add(&conf.state_dir, &args.conf.name, &rec.ips, &exclude)
            .kernel(|| format!("cannot add {:?} to the ipMasq set", rec.ips))?;
    }
    if conf.macspoofchk {
        firewall::spoof_update(&rec.host_veth, pod_mac, Action::Add)
            .kernel(|| format!("cannot add the macspoofchk entry for {}", rec.host_veth))?;
    }
    Ok(())
}

/// The pod end looked up inside the pod.
fn pod_link(pod: &mut Socket, ifname: &str) -> Result<crate::netlink::Link, CniError> {
    pod.link_by_name(ifname)
        .kernel(|| format!("cannot look up {ifname} in the pod"))?
        .ok_or_else(|| CniError::new(ErrorCode::Plugin(crate::error::CODE_KERNEL), "pod interface vanished"))
}

/// Undoes an attachment as far as it exists: links, nftables entries, record. Every step runs;
/// the failures are returned together.
fn teardown(
    conf: &BridgeConf,
    args: &CmdArgs,
    who: &Attachment,
    rec: &BridgeRecord,
    netns: Option<&str>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |r: Result<(), CniError>| {
        if let Err(e) = r {
            errors.push(format!("{}: {}", e.msg, e.details));
        }
    };
    note(delete_links(&rec.host_veth, &who.ifname, netns));
    if rec.masq && !rec.ips.is_empty() {
        note(firewall::masq_del(&args.conf.name, &rec.ips).kernel(|| "cannot remove ipMasq entries".into()));
    }
    if let Some(mac) = rec.spoof_mac.as_deref().and_then(parse_mac) {
        note(
            firewall::spoof_update(&rec.host_veth, mac, Action::Remove)
                .kernel(|| "cannot remove macspoofchk entries".into()),
        );
    }
    note(records(conf, args).remove(who).map_err(CniError::from));
    errors
}

/// Deletes the veth pair through its host end, or through the pod end when only that is left.
fn delete_links(host_veth: &str, ifname: &str, netns: Option<&str>) -> Result<(), CniError> {
    let mut host = Socket::route().kernel(|| "cannot open a netlink socket".into())?;
    if host.del_link_by_name(host_veth).kernel(|| format!("cannot delete {host_veth}"))? {
        return Ok(());
    }
    let Some(path) = netns.filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let Ok(ns) = crate::netns::NetNs::open(std::path::Path::new(path)) else {
        return Ok(()); // no netns: the kernel removed the pair with it
    };
    let mut pod = ns.route_socket().kernel(|| format!("cannot open netlink in {path}"))?;
    match pod.link_by_name(ifname).kernel(|| format!("cannot look up {ifname} in {path}"))? {
        Some(l) if l.kind.as_deref() == Some("veth") => {
            pod.del_link(l.index).kernel(|| format!("cannot delete {ifname} in {path}"))
        }
        _ => Ok(()),
    }
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = BridgeConf::parse(args)?;
        args.netns()?;
        let ipam = match &conf.ipam {
            Some(t) => delegate::ipam_add(t, args)?,
            None => CniResult::default(),
        };
        let mut rec = BridgeRecord {
            host_veth: host_veth_name(&args.conf.name, &args.env.container_id, &args.env.ifname),
            ips: ipam.ips.iter().map(|i| i.address.addr).collect(),
            ..Default::default()
        };
        let result = attach(&conf, args, &ipam, &mut rec).and_then(|result| {
            if maps_ports(args) {
                Portmap.add(&chained(args, &result))?;
            }
            Ok(result)
        });
        result.inspect_err(|_| {
            // The pod end is ours only if the host end was created: delete via the host end.
            let _ = teardown(&conf, args, &args.attachment(), &rec, None);
            if let Some(t) = &conf.ipam {
                let _ = delegate::ipam(t, Command::Del, args);
            }
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(args)?;
        let who = args.attachment();
        let rec = records(&conf, args).read::<BridgeRecord>(&who).unwrap_or_else(|| {
            let prev = args.prev_result().ok().flatten().unwrap_or_default();
            BridgeRecord {
                host_veth: host_veth_name(&args.conf.name, &who.container_id, &who.ifname),
                ips: prev.ips.iter().map(|i| i.address.addr).collect(),
                masq: conf.ip_masq,
                spoof_mac: None,
            }
        });
        let mut errors = Vec::new();
        if let Err(e) = Portmap.del(args) {
            errors.push(format!("{}: {}", e.msg, e.details));
        }
        errors.extend(teardown(&conf, args, &who, &rec, Some(&args.env.netns)));
        if let Some(t) = &conf.ipam {
            if let Err(e) = delegate::ipam(t, Command::Del, args) {
                errors.push(e.msg);
            }
        }
        all_or_report(errors, ErrorCode::Plugin(crate::error::CODE_KERNEL), "DEL could not remove everything")
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(args)?;
        let prev = args
            .prev_result()?
            .ok_or_else(|| CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK needs prevResult"))?;
        if let Some(t) = &conf.ipam {
            delegate::ipam(t, Command::Check, args)?;
        }
        check::verify(&conf, args, &prev)?;
        if maps_ports(args) {
            Portmap.check(args)?;
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(args)?;
        match &conf.ipam {
            Some(t) => delegate::ipam(t, Command::Status, args).map(drop),
            None => Ok(()),
        }
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(args)?;
        let valid = args.conf.valid_attachments.clone().unwrap_or_default();
        let mut errors = Vec::new();
        let store = records(&conf, args);
        store.sweep();
        for (who, rec) in store.list::<BridgeRecord>() {
            if !valid.contains(&who) {
                errors.extend(teardown(&conf, args, &who, &rec, None));
            }
        }
        // Host ports first (as DEL does), then IPAM frees the addresses they led to.
        if let Err(e) = Portmap.gc(args) {
            errors.push(format!("{}: {}", e.msg, e.details));
        }
        if let Some(t) = &conf.ipam {
            if let Err(e) = delegate::ipam(t, Command::Gc, args) {
                errors.push(e.msg);
            }
        }
        all_or_report(errors, ErrorCode::CannotGc, "GC could not remove everything")
    }
}

mod check;
