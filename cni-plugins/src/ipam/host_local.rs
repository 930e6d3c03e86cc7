//! The host-local IPAM plugin: ADD/DEL/CHECK/STATUS/GC over the config, allocator and store.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::Value;

use crate::cidr::Cidr;
use crate::error::{all_or_report, source_chain, CniError, ErrorCode, CODE_RANGE_EXHAUSTED, CODE_REQUESTED_IP};
use crate::ipam::allocator::{is_allocatable, next_free};
use crate::ipam::config::{IpamConfig, Range};
use crate::ipam::store::{Store, StoreError};
use crate::netconf::{Attachment, NetConf};
use crate::result::{CniResult, IpConfig};
use crate::skel::{CmdArgs, Plugin};

/// The `berth-host-local` plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLocal;

fn config(conf: &NetConf) -> Result<IpamConfig, CniError> {
    let fields = conf.ipam.as_ref().map(|i| i.fields.clone()).unwrap_or_default();
    IpamConfig::parse(&conf.name, &fields)
        .map_err(|e| CniError::new(ErrorCode::InvalidNetworkConfig, e.to_string()).with_details(source_chain(&e)))
}

fn io_error(e: StoreError) -> CniError {
    CniError::new(ErrorCode::Io, e.to_string()).with_details(source_chain(&e))
}

fn open(conf: &NetConf, cfg: &IpamConfig) -> Result<Store, CniError> {
    Store::open(&cfg.network_dir(&conf.name)).map_err(io_error)
}

fn parse_ip(text: &str) -> Result<IpAddr, CniError> {
    let text = text.trim();
    let ip = match text.parse::<Cidr>() {
        Ok(c) => Ok(c.addr),
        Err(_) => text.parse::<IpAddr>(),
    };
    ip.map_err(|_| CniError::new(ErrorCode::InvalidNetworkConfig, format!("requested IP {text:?} is not an address")))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    let list = v.and_then(Value::as_array).cloned().unwrap_or_default();
    list.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// Addresses asked for through runtimeConfig.ips, args.cni.ips or CNI_ARGS IP=.
fn requested_ips(args: &CmdArgs) -> Result<Vec<IpAddr>, CniError> {
    let mut raw = strings(args.conf.runtime("ips"));
    let cni_args = args.conf.args.as_ref().and_then(|a| a.get("cni"));
    raw.extend(strings(cni_args.and_then(|c| c.get("ips"))));
    if let Some(list) = args.env.arg("IP") {
        raw.extend(list.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for text in raw {
        let ip = parse_ip(&text)?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

fn exhausted(set: &[Range]) -> CniError {
    let names: Vec<String> = set.iter().map(|r| format!("{}-{} ({})", r.start, r.end, r.subnet)).collect();
    let msg = format!("no free IP addresses in range set {}", names.join(", "));
    CniError::new(ErrorCode::Plugin(CODE_RANGE_EXHAUSTED), msg)
}

/// What the store held when ADD began, plus what this ADD reserved since: read once, so an ADD
/// lists the data dir once however many range sets it allocates from.
struct Taken(Vec<(IpAddr, Attachment)>);

impl Taken {
    fn held_by(&self, who: &Attachment) -> impl Iterator<Item = IpAddr> + '_ {
        let who = who.clone();
        self.0.iter().filter(move |(_, a)| *a == who).map(|(ip, _)| *ip)
    }

    fn used(&self) -> HashSet<IpAddr> {
        self.0.iter().map(|(ip, _)| *ip).collect()
    }
}

/// Allocates one address from range set `i`: the caller's existing one, a requested one or the next.
fn allocate_one(
    store: &Store,
    i: usize,
    set: &[Range],
    who: &Attachment,
    requested: &mut Vec<IpAddr>,
    taken: &mut Taken,
) -> Result<(IpAddr, Range, bool), CniError> {
    if let Some((ip, r)) = taken.held_by(who).find_map(|ip| set.iter().find(|r| r.contains(ip)).map(|r| (ip, r))) {
        requested.retain(|x| *x != ip);
        return Ok((ip, r.clone(), false));
    }
    let (ip, range) = if let Some(pos) = requested.iter().position(|ip| set.iter().any(|r| r.contains(*ip))) {
        let ip = requested.remove(pos);
        let range = set.iter().find(|r| is_allocatable(r, ip)).ok_or_else(|| {
            CniError::new(ErrorCode::Plugin(CODE_REQUESTED_IP), format!("requested IP {ip} is reserved"))
        })?;
        if !store.reserve(ip, who, i).map_err(io_error)? {
            let msg = format!("requested IP {ip} is already allocated");
            return Err(CniError::new(ErrorCode::Plugin(CODE_REQUESTED_IP), msg));
        }
        (ip, range.clone())
    } else {
        let last = store.last_reserved(i).map_err(io_error)?;
        let (ip, idx) = next_free(set, &taken.used(), last).ok_or_else(|| exhausted(set))?;
        if !store.reserve(ip, who, i).map_err(io_error)? {
            return Err(CniError::new(ErrorCode::TryAgainLater, format!("IP {ip} was taken concurrently")));
        }
        (ip, set[idx].clone())
    };
    taken.0.push((ip, who.clone()));
    Ok((ip, range, true))
}

fn allocate_all(store: &Store, cfg: &IpamConfig, args: &CmdArgs) -> Result<Vec<IpConfig>, CniError> {
    let who = args.attachment();
    let mut requested = requested_ips(args)?;
    let mut taken = Taken(store.allocations().map_err(io_error)?);
    let mut fresh: Vec<IpAddr> = Vec::new();
    let mut ips = Vec::new();
    let mut outcome = Ok(());
    for (i, set) in cfg.range_sets.iter().enumerate() {
        match allocate_one(store, i, set, &who, &mut requested, &mut taken) {
            Ok((ip, range, new)) => {
                if new {
                    fresh.push(ip);
                }
                ips.push(IpConfig {
                    interface: None,
                    address: Cidr::new(ip, range.subnet.prefix),
                    gateway: range.gateway,
                });
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.is_ok() && !requested.is_empty() {
        let list: Vec<String> = requested.iter().map(IpAddr::to_string).collect();
        let msg = format!("requested IPs {} are in no configured range", list.join(", "));
        outcome = Err(CniError::new(ErrorCode::Plugin(CODE_REQUESTED_IP), msg));
    }
    if let Err(e) = outcome {
        for ip in fresh {
            let _ = store.release(ip);
        }
        return Err(e);
    }
    Ok(ips)
}

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let cfg = config(&args.conf)?;
        let store = open(&args.conf, &cfg)?;
        let ips = allocate_all(&store, &cfg, args)?;
        Ok(CniResult { ips, routes: cfg.routes.clone(), ..Default::default() })
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(&args.conf)?;
        let store = open(&args.conf, &cfg)?;
        for ip in store.find(&args.attachment()).map_err(io_error)? {
            store.release(ip).map_err(io_error)?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(&args.conf)?;
        let store = open(&args.conf, &cfg)?;
        let held = store.find(&args.attachment()).map_err(io_error)?;
        for (i, set) in cfg.range_sets.iter().enumerate() {
            if !held.iter().any(|ip| set.iter().any(|r| r.contains(*ip))) {
                let msg = format!(
                    "container {} ifname {} holds no address in range set {i}",
                    args.env.container_id, args.env.ifname
                );
                return Err(CniError::new(ErrorCode::UnknownContainer, msg));
            }
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(&args.conf)?;
        Store::open(&cfg.network_dir(&args.conf.name))
            .map(drop)
            .map_err(|e| CniError::new(ErrorCode::NotAvailable, e.to_string()).with_details(source_chain(&e)))
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(&args.conf)?;
        let valid: HashSet<&Attachment> = match &args.conf.valid_attachments {
            Some(list) => list.iter().collect(),
            None => {
                let msg = "GC needs cni.dev/valid-attachments in the configuration";
                return Err(CniError::new(ErrorCode::InvalidNetworkConfig, msg));
            }
        };
        let store = open(&args.conf, &cfg)?;
        let mut failed = Vec::new();
        for (ip, who) in store.allocations().map_err(io_error)? {
            if !valid.contains(&who) {
                if let Err(e) = store.release(ip) {
                    failed.push(e.to_string());
                }
            }
        }
        all_or_report(failed, ErrorCode::CannotGc, "some allocations could not be freed")
    }
}
