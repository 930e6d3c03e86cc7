//! `berth-vxlan` and `berth-host-gw`: flannel-style node overlays. Pods sit on the node's
//! bridge exactly as with berth-bridge (whose code does the per-pod work); these plugins add
//! the node-level part — the VXLAN device (VNI, port, MTU = underlay − 50) or nothing, and
//! the per-peer routes/neighbours/FDB from the config's `peers` plus a `peersFile` that a daemon
//! (Berth's agent) may keep current. `berth-vxlan sync` / `berth-host-gw sync` re-apply the
//! peer list without a pod.

pub mod sync;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::bridge::Bridge;
use crate::cidr::Cidr;
use crate::error::{CniError, ErrorCode, KernelContext, CODE_PEER};
use crate::netlink::{Link, NewLink, Socket, Vxlan};
use crate::result::CniResult;
use crate::skel::{CmdArgs, Plugin};
use sync::{sync_host_gw, sync_vxlan, vtep_ip, vtep_mac, Peer, SyncError, SyncReport};

/// VXLAN's encapsulation overhead on an IPv4 underlay.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Vxlan,
    HostGw,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    peers: Vec<Peer>,
    peers_file: Option<PathBuf>,
    underlay_device: Option<String>,
    #[serde(rename = "underlayIP")]
    underlay_ip: Option<IpAddr>,
    vni: Option<u32>,
    port: Option<u16>,
    vxlan_device: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<Cidr>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<Cidr>,
}

/// A validated overlay configuration.
#[derive(Debug, Clone)]
pub struct OverlayConf {
    pub peers: Vec<Peer>,
    pub underlay_device: Option<String>,
    pub underlay_ip: Option<IpAddr>,
    pub vni: u32,
    pub port: u16,
    pub vxlan_device: String,
    pub cluster_cidr: Option<Cidr>,
    pub pod_cidr: Option<Cidr>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

/// Reads a peers file: `{"peers": [...]}` or a bare list. A missing file means no peers.
pub fn read_peers_file(path: &std::path::Path) -> Result<Vec<Peer>, CniError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::new(ErrorCode::Io, format!("cannot read peers file {}", path.display()))
                .with_details(e.to_string()))
        }
    };
    let v: Value = serde_json::from_slice(&text).map_err(|e| invalid(format!("peers file {}: {e}", path.display())))?;
    let list = v.get("peers").cloned().unwrap_or(v);
    serde_json::from_value(list).map_err(|e| invalid(format!("peers file {}: {e}", path.display())))
}

impl OverlayConf {
    pub fn parse(args: &CmdArgs) -> Result<OverlayConf, CniError> {
        let raw: Raw = serde_json::from_value(Value::Object(args.conf.plugin.clone()))
            .map_err(|e| invalid(format!("invalid overlay configuration: {e}")))?;
        let mut peers = raw.peers;
        if let Some(f) = &raw.peers_file {
            peers.extend(read_peers_file(f)?);
        }
        let vni = raw.vni.unwrap_or(1);
        if vni == 0 || vni > 0xff_ffff {
            return Err(invalid(format!("vni {vni} is outside 1..16777215")));
        }
        let ipam_subnet = args.conf.ipam.as_ref().and_then(|i| {
            let f = &i.fields;
            f.get("subnet")
                .or_else(|| f.get("ranges")?.get(0)?.get(0)?.get("subnet"))
                .and_then(Value::as_str)?
                .parse()
                .ok()
        });
        let vxlan_device = raw.vxlan_device.unwrap_or_else(|| format!("berth.{vni}"));
        if !crate::bridge::config::valid_ifname(&vxlan_device) {
            return Err(invalid(format!("vxlanDevice {vxlan_device:?} is not a valid interface name")));
        }
        Ok(OverlayConf {
            peers,
            underlay_device: raw.underlay_device,
            underlay_ip: raw.underlay_ip,
            vni,
            port: raw.port.unwrap_or(4789),
            vxlan_device,
            cluster_cidr: raw.cluster_cidr,
            pod_cidr: raw.pod_cidr.or(ipam_subnet).map(|c: Cidr| c.masked()),
        })
    }
}

fn sync_err(e: SyncError) -> CniError {
    let code = match &e {
        SyncError::Peer { source: None, .. } => CODE_PEER,
        _ => crate::error::CODE_KERNEL,
    };
    CniError::new(ErrorCode::Plugin(code), e.to_string()).with_details(crate::error::source_chain(&e))
}

/// The underlay device and this node's address on it.
fn underlay(host: &mut Socket, conf: &OverlayConf) -> Result<(Link, IpAddr), CniError> {
    let link = match &conf.underlay_device {
        Some(name) => host.link_by_name(name).kernel(|| format!("cannot look up {name}"))?,
        None => {
            let routes =
                host.routes(false, crate::netlink::addr::RT_TABLE_MAIN).kernel(|| "cannot list routes".into())?;
            let oif = routes.iter().find(|r| r.dst.prefix == 0).and_then(|r| r.oif);
            match oif {
                Some(i) => host.link_by_index(i).kernel(|| "cannot look up the default route's device".into())?,
                None => None,
            }
        }
    }
    .ok_or_else(|| invalid("no underlay device: set underlayDevice (no default route to infer it from)".into()))?;
    let ip = match conf.underlay_ip {
        Some(ip) => ip,
        None => host
            .addrs(Some(link.index))
            .kernel(|| format!("cannot list addresses of {}", link.name))?
            .iter()
            .map(|a| a.cidr.addr)
            .find(IpAddr::is_ipv4)
            .ok_or_else(|| invalid(format!("underlay device {} has no IPv4 address", link.name)))?,
    };
    Ok((link, ip))
}

/// The node's VXLAN device, created if missing (MAC derived from the underlay IP).
fn ensure_vxlan(host: &mut Socket, conf: &OverlayConf, under: &Link, local: IpAddr) -> Result<Link, CniError> {
    let name = conf.vxlan_device.as_str();
    if let Some(l) = host.link_by_name(name).kernel(|| format!("cannot look up {name}"))? {
        return Ok(l);
    }
    let new = NewLink {
        name,
        mtu: Some(under.mtu.saturating_sub(VXLAN_OVERHEAD)),
        mac: Some(vtep_mac(local)),
        up: true,
        master: None,
    };
    let vx = Vxlan { vni: conf.vni, port: conf.port, local: Some(local), underlay: Some(under.index) };
    match host.add_vxlan(&new, &vx) {
        Err(e) if !e.is(libc::EEXIST) => return Err(e).kernel(|| format!("cannot create VXLAN device {name}")),
        _ => {}
    }
    let link = host
        .link_by_name(name)
        .kernel(|| format!("cannot look up {name}"))?
        .ok_or_else(|| invalid(format!("{name} vanished after creation")))?;
    if let Some(pc) = conf.pod_cidr.filter(|c| c.addr.is_ipv4()) {
        let _ = host.add_addr(link.index, Cidr::new(vtep_ip(&pc), 32));
    }
    Ok(link)
}

/// Node-level work: device and peers. Returns the MTU pods should use.
pub fn apply_node(mode: Mode, conf: &OverlayConf) -> Result<(u32, SyncReport), CniError> {
    let mut host = Socket::route().kernel(|| "cannot open a netlink socket".into())?;
    let (under, local) = underlay(&mut host, conf)?;
    match mode {
        Mode::Vxlan => {
            let vx = ensure_vxlan(&mut host, conf, &under, local)?;
            let report = sync_vxlan(&mut host, &vx, local, &conf.peers).map_err(sync_err)?;
            Ok((vx.mtu, report))
        }
        Mode::HostGw => {
            let report = sync_host_gw(&mut host, local, &conf.peers).map_err(sync_err)?;
            Ok((under.mtu, report))
        }
    }
}

/// The arguments for the bridge code: MTU, default gateway and masquerade exclusions filled in.
fn bridge_args(args: &CmdArgs, conf: &OverlayConf, mtu: Option<u32>) -> CmdArgs {
    let mut a = args.clone();
    let p = &mut a.conf.plugin;
    p.entry("bridge").or_insert(json!("berth0"));
    if let Some(mtu) = mtu {
        p.entry("mtu").or_insert(json!(mtu));
    }
    p.entry("isDefaultGateway").or_insert(json!(true));
    let mut exclude: Vec<Value> = p.get("ipMasqExclude").and_then(Value::as_array).cloned().unwrap_or_default();
    exclude
        .extend(conf.cluster_cidr.iter().chain(conf.peers.iter().map(|x| &x.pod_cidr)).map(|c| json!(c.to_string())));
    p.insert("ipMasqExclude".into(), Value::Array(exclude));
    a
}

/// berth-vxlan / berth-host-gw.
#[derive(Debug, Clone, Copy)]
pub struct Overlay(pub Mode);

impl Plugin for Overlay {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = OverlayConf::parse(args)?;
        let (mtu, _) = apply_node(self.0, &conf)?;
        Bridge.add(&bridge_args(args, &conf, Some(mtu)))
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = OverlayConf::parse(args)?;
        Bridge.del(&bridge_args(args, &conf, None))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = OverlayConf::parse(args)?;
        Bridge.check(&bridge_args(args, &conf, None))
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = OverlayConf::parse(args)?;
        let mut host = Socket::route().kernel(|| "cannot open a netlink socket".into())?;
        underlay(&mut host, &conf).map_err(|e| CniError::new(ErrorCode::NotAvailable, e.msg))?;
        Bridge.status(&bridge_args(args, &conf, None))
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = OverlayConf::parse(args)?;
        Bridge.gc(&bridge_args(args, &conf, None))
    }
}

/// `berth-vxlan sync` / `berth-host-gw sync`: the network config on stdin, peers applied,
/// a one-line JSON report on stdout. Returns the exit code.
pub fn sync_command(mode: Mode) -> i32 {
    let mut stdin = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let outcome = serde_json::from_slice::<crate::netconf::NetConf>(&stdin)
        .map_err(|e| CniError::new(ErrorCode::Decode, format!("cannot decode the configuration: {e}")))
        .and_then(|conf| {
            let args = CmdArgs {
                env: crate::env::CniEnv::from_lookup(|k| (k == "CNI_COMMAND").then(|| "STATUS".to_string()))
                    .map_err(|e| CniError::new(ErrorCode::InvalidEnv, e.to_string()))?,
                conf,
                stdin: stdin.clone(),
            };
            apply_node(mode, &OverlayConf::parse(&args)?)
        });
    match outcome {
        Ok((mtu, r)) => {
            println!("{}", json!({"mtu": mtu, "added": r.added, "removed": r.removed}));
            0
        }
        Err(e) => {
            println!("{}", e.to_json(crate::version::CURRENT));
            1
        }
    }
}
