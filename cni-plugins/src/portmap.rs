//! `berth-portmap`: the portMappings capability as nftables DNAT, chained after a plugin that
//! made the interface (prevResult).
//!
//! One table (`inet berth-portmap`) holds verdict-free DNAT maps keyed by protocol and host port
//! (and host IP, when a mapping names one); a pod's mappings are map elements, added in one
//! nfnetlink transaction with "exclusive" semantics, so a host port already mapped by another
//! pod is refused instead of silently stolen. Traffic to a local address is DNATed from outside
//! (prerouting) and from the host itself (output); connections from 127.0.0.0/8 and hairpin
//! connections (a pod reaching a host port that leads back to its own bridge) are masqueraded,
//! with `route_localnet` set on the host-side interfaces so localhost can be DNATed at all.
//! Hairpin traffic is recognised in prerouting (input interface is a pod bridge) and marked,
//! because postrouting does not know the input interface.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{all_or_report, CniError, ErrorCode, KernelContext, CODE_PORT_IN_USE};
use crate::netlink::nft::{apply_with_setup, Action, Elem, Key, NftError, SetOp, FAMILY_INET};
use crate::netlink::NlError;
use crate::netns::sysctl;
use crate::result::CniResult;
use crate::skel::{CmdArgs, Plugin};
use crate::state::{Records, DEFAULT_STATE_DIR};

pub const TABLE: &str = "berth-portmap";
/// Marks connections from a pod's bridge to a host port (postrouting has no input interface).
pub const HAIRPIN_MARK: u32 = 0x2000;

/// One entry of runtimeConfig.portMappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

/// What ADD installed for one attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortmapRecord {
    pub mappings: Vec<PortMapping>,
    pub ips: Vec<IpAddr>,
}

fn proto_number(p: &str) -> Result<u8, CniError> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" | "" => Ok(6),
        "udp" => Ok(17),
        "sctp" => Ok(132),
        other => {
            Err(CniError::new(ErrorCode::InvalidNetworkConfig, format!("unknown port mapping protocol {other:?}")))
        }
    }
}

/// The entries of runtimeConfig.portMappings with their keys spelled as the CNI conventions
/// spell them. Runtimes written in Go may send other cases: containerd 1.6 (go-cni) marshals
/// a struct without JSON tags, `{"HostPort": 80, "ContainerPort": 8080, "Protocol": "tcp",
/// "HostIP": ""}`, which Go plugins read because encoding/json matches keys without regard to
/// case. So does this.
fn canonical_keys(raw: &Value) -> Value {
    const KEYS: [&str; 4] = ["hostPort", "containerPort", "protocol", "hostIP"];
    let entry = |v: &Value| match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let known = KEYS.iter().find(|c| c.eq_ignore_ascii_case(k));
                    (known.map_or_else(|| k.clone(), |c| c.to_string()), v.clone())
                })
                .collect(),
        ),
        other => other.clone(),
    };
    match raw {
        Value::Array(list) => Value::Array(list.iter().map(entry).collect()),
        other => other.clone(),
    }
}

/// Parses and checks runtimeConfig.portMappings.
pub fn mappings(args: &CmdArgs) -> Result<Vec<PortMapping>, CniError> {
    // A Go runtime with no mappings may send `null` (a nil slice): none, as Go plugins read it.
    let Some(raw) = args.conf.runtime("portMappings").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list: Vec<PortMapping> = serde_json::from_value(canonical_keys(raw)).map_err(|e| {
        CniError::new(ErrorCode::InvalidNetworkConfig, format!("invalid runtimeConfig.portMappings: {e}"))
    })?;
    for m in &list {
        proto_number(&m.protocol)?;
        if m.host_port == 0 || m.container_port == 0 {
            let msg = format!("port mapping {}:{} has a zero port", m.host_port, m.container_port);
            return Err(CniError::new(ErrorCode::InvalidNetworkConfig, msg));
        }
        if let Some(ip) = m.host_ip.as_deref().filter(|s| !s.is_empty()) {
            ip.parse::<IpAddr>().map_err(|_| {
                CniError::new(ErrorCode::InvalidNetworkConfig, format!("port mapping hostIP {ip:?} is not an address"))
            })?;
        }
    }
    Ok(list)
}

/// The map elements for `mappings` towards `ips` (one per family present).
pub fn elements(mappings: &[PortMapping], ips: &[IpAddr]) -> Vec<(&'static str, Elem)> {
    let mut out = Vec::new();
    for m in mappings {
        let Ok(proto) = proto_number(&m.protocol) else {
            continue;
        };
        let host_ip: Option<IpAddr> = m.host_ip.as_deref().and_then(|s| s.parse().ok());
        for v4 in [true, false] {
            let Some(pod) = ips.iter().find(|i| i.is_ipv4() == v4) else {
                continue;
            };
            if host_ip.is_some_and(|h| h.is_ipv4() != v4) {
                continue;
            }
            let (map, key) = match (host_ip, v4) {
                (Some(h), true) => ("dnat4ip", Key::new().ip(h)),
                (Some(h), false) => ("dnat6ip", Key::new().ip(h)),
                (None, true) => ("dnat4", Key::new()),
                (None, false) => ("dnat6", Key::new()),
            };
            let key = key.proto(proto).port(m.host_port);
            let data = Key::new().ip(*pod).port(m.container_port);
            out.push((map, Elem { key, data: Some(data) }));
        }
    }
    out
}

/// The one-time `nft -f` script for the portmap table.
pub fn script() -> String {
    let t = TABLE;
    format!(
        "add table inet {t}\n\
         add map inet {t} dnat4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map inet {t} dnat4ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map inet {t} dnat6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add map inet {t} dnat6ip {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add set inet {t} hairpin {{ type ifname; }}\n\
         add chain inet {t} pre {{ type nat hook prerouting priority dstnat; }}\n\
         add chain inet {t} out {{ type nat hook output priority -100; }}\n\
         add chain inet {t} post {{ type nat hook postrouting priority srcnat; }}\n\
         add chain inet {t} hostports\n\
         flush chain inet {t} pre\n\
         flush chain inet {t} out\n\
         flush chain inet {t} post\n\
         flush chain inet {t} hostports\n\
         add rule inet {t} pre fib daddr type local jump hostports\n\
         add rule inet {t} out fib daddr type local jump hostports\n\
         add rule inet {t} hostports iifname @hairpin meta mark set meta mark | {HAIRPIN_MARK:#x}\n\
         add rule inet {t} hostports dnat ip to ip daddr . meta l4proto . th dport map @dnat4ip\n\
         add rule inet {t} hostports dnat ip to meta l4proto . th dport map @dnat4\n\
         add rule inet {t} hostports dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6ip\n\
         add rule inet {t} hostports dnat ip6 to meta l4proto . th dport map @dnat6\n\
         add rule inet {t} post ct status dnat ip saddr 127.0.0.0/8 masquerade\n\
         add rule inet {t} post ct status dnat meta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} oifname @hairpin masquerade\n"
    )
}

fn ops(elems: &[(&'static str, Elem)], action: Action) -> Vec<SetOp<'static>> {
    ["dnat4", "dnat4ip", "dnat6", "dnat6ip"]
        .into_iter()
        .map(|set| SetOp {
            family: FAMILY_INET,
            table: TABLE,
            set,
            elems: elems.iter().filter(|(s, _)| *s == set).map(|(_, e)| e.clone()).collect(),
            action,
        })
        .collect()
}

fn describe(m: &[PortMapping]) -> String {
    let parts: Vec<String> = m.iter().map(|m| format!("{}/{}", m.host_port, m.protocol)).collect();
    parts.join(", ")
}

/// The `berth-portmap` plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct Portmap;

fn records(args: &CmdArgs) -> Records {
    let dir = args
        .conf
        .plugin
        .get("stateDir")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Records::new(&dir, "portmap", &args.conf.name)
}

/// Removes the record's mappings that point at its pod. An ADD killed between writing its
/// record and mapping its ports leaves a record of mappings it never made; by the time of its
/// DEL or GC another pod may hold those host ports, and its entries (same key, another pod's
/// address as value) stay.
fn remove(rec: &PortmapRecord) -> Result<(), NftError> {
    let mut sock = crate::netlink::Socket::netfilter().map_err(|e| nl_error("*", e))?;
    let ours = ours(&mut sock, rec)?;
    match sock.nft_apply(&ops(&ours, Action::Remove)) {
        Err(e) if e.is(libc::ENOENT) => Ok(()), // the table went away meanwhile
        other => other.map_err(|e| nl_error("*", e)),
    }
}

fn nl_error(set: &str, source: NlError) -> NftError {
    NftError::Netlink { table: TABLE.to_string(), set: set.to_string(), source }
}

/// The record's map elements that are present and lead to its pod.
fn ours(sock: &mut crate::netlink::Socket, rec: &PortmapRecord) -> Result<Vec<(&'static str, Elem)>, NftError> {
    let mut out = Vec::new();
    for (set, e) in elements(&rec.mappings, &rec.ips) {
        match sock.nft_get(FAMILY_INET, TABLE, set, &e.key) {
            Ok(Some(value)) if Some(&value) == e.data.as_ref().map(|d| &d.0) => out.push((set, e)),
            Ok(_) => {}
            Err(err) if err.is(libc::ENOENT) => {} // no table or map: nothing mapped
            Err(err) => return Err(nl_error(set, err)),
        }
    }
    Ok(out)
}

/// Whether this attachment's ports are already mapped exactly as `rec` asks: a repeated ADD,
/// or berth-bridge having mapped them in-process when the list also holds berth-portmap.
/// `recorded` is what the attachment's record holds now.
fn already_mapped(recorded: Option<&PortmapRecord>, rec: &PortmapRecord) -> bool {
    if recorded != Some(rec) {
        return false;
    }
    let Ok(mut sock) = crate::netlink::Socket::netfilter() else {
        return false;
    };
    ours(&mut sock, rec).is_ok_and(|o| o.len() == elements(&rec.mappings, &rec.ips).len())
}

impl Plugin for Portmap {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let prev = args.prev_result()?.ok_or_else(|| {
            CniError::new(ErrorCode::InvalidNetworkConfig, "berth-portmap must be chained: prevResult is missing")
        })?;
        let list = mappings(args)?;
        if list.is_empty() {
            return Ok(prev);
        }
        let ips: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.addr).collect();
        let rec = PortmapRecord { mappings: list, ips };
        // Host-side bridges (not veths: their names come and go with pods).
        let mut rt = crate::netlink::Socket::route().kernel(|| "cannot open a netlink socket".into())?;
        let hosts: Vec<&str> = prev
            .interfaces
            .iter()
            .filter(|i| i.sandbox.is_none())
            .filter(|i| matches!(rt.link_by_name(&i.name), Ok(Some(l)) if l.kind.as_deref() == Some("bridge")))
            .map(|i| i.name.as_str())
            .collect();
        for h in &hosts {
            let _ = sysctl(&["net", "ipv4", "conf", h, "route_localnet"], "1");
        }
        let mut all = ops(&elements(&rec.mappings, &rec.ips), Action::AddExclusive);
        all.push(SetOp {
            family: FAMILY_INET,
            table: TABLE,
            set: "hairpin",
            elems: hosts.iter().map(|h| Elem { key: Key::new().ifname(h), data: None }).collect(),
            action: Action::Add,
        });
        let store = records(args);
        let who = args.attachment();
        let before = store.read::<PortmapRecord>(&who);
        if already_mapped(before.as_ref(), &rec) {
            return Ok(prev);
        }
        // Recorded first, so an ADD killed half-way is still found by DEL and GC.
        store.write(&who, &rec)?;
        let applied = match apply_with_setup(&all, &script) {
            Err(NftError::Netlink { source, .. }) if source.is(libc::EEXIST) => {
                let msg = format!("a host port of {} is already mapped", describe(&rec.mappings));
                Err(CniError::new(ErrorCode::Plugin(CODE_PORT_IN_USE), msg))
            }
            other => other.kernel(|| format!("cannot map host ports {}", describe(&rec.mappings))),
        };
        if applied.is_err() {
            // Back to what was recorded before: an earlier ADD's mappings stay findable.
            let _ = match &before {
                Some(old) => store.write(&who, old),
                None => store.remove(&who),
            };
        }
        applied.map(|()| prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        // Only what our ADD recorded is removed: a port another pod holds is never touched.
        let store = records(args);
        let who = args.attachment();
        if let Some(rec) = store.read::<PortmapRecord>(&who) {
            remove(&rec).kernel(|| format!("cannot unmap host ports {}", describe(&rec.mappings)))?;
        }
        store.remove(&who).map_err(CniError::from)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let prev = args.prev_result()?.unwrap_or_default();
        let ips: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.addr).collect();
        let list = mappings(args)?;
        let mut sock = crate::netlink::Socket::netfilter().kernel(|| "cannot open nfnetlink".into())?;
        for (set, e) in elements(&list, &ips) {
            let value = sock.nft_get(FAMILY_INET, TABLE, set, &e.key);
            let value = value
                .or_else(|e: NlError| if e.is(libc::ENOENT) { Ok(None) } else { Err(e) })
                .kernel(|| "cannot read the portmap maps".into())?;
            // Present, and pointing at this pod (not another pod's mapping of the same port).
            let problem = match value {
                None => "is missing",
                Some(v) if Some(&v) != e.data.as_ref().map(|d| &d.0) => "leads to another pod",
                Some(_) => continue,
            };
            return Err(CniError::new(
                ErrorCode::Plugin(crate::error::CODE_KERNEL),
                format!("a mapping of {} {problem}", describe(&list)),
            ));
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let valid = args.conf.valid_attachments.clone().unwrap_or_default();
        let store = records(args);
        let mut errors = Vec::new();
        store.sweep();
        for (who, rec) in store.list::<PortmapRecord>() {
            if valid.contains(&who) {
                continue;
            }
            match remove(&rec) {
                Ok(()) => {
                    let _ = store.remove(&who);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        all_or_report(errors, ErrorCode::CannotGc, "cannot remove some port mappings")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host: u16, cont: u16, proto: &str, ip: Option<&str>) -> PortMapping {
        PortMapping { host_port: host, container_port: cont, protocol: proto.into(), host_ip: ip.map(str::to_string) }
    }

    #[test]
    fn go_cased_entries_from_containerd_parse_like_camel_case() {
        let go = serde_json::json!([{"HostPort": 18090, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""},
                                    {"hostport": 53, "containerport": 53, "protocol": "udp", "hostIp": "10.0.0.1"}]);
        let list: Vec<PortMapping> = serde_json::from_value(canonical_keys(&go)).unwrap();
        assert_eq!(list, vec![pm(18090, 8080, "tcp", Some("")), pm(53, 53, "udp", Some("10.0.0.1"))]);
        let odd = serde_json::json!([{"hostPort": 1, "containerPort": 2, "Extra": true}]);
        assert_eq!(canonical_keys(&odd)[0]["Extra"], true, "unknown keys are left as they are");
    }

    #[test]
    fn elements_per_family_and_host_ip() {
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let e = elements(&[pm(8080, 80, "tcp", None)], &ips);
        assert_eq!(e.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec!["dnat4", "dnat6"]);
        assert_eq!(e[0].1.key.0, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(e[0].1.data.as_ref().unwrap().0, vec![10, 0, 0, 5, 0, 80, 0, 0]);
        let e = elements(&[pm(53, 53, "udp", Some("192.168.1.1"))], &ips);
        assert_eq!(e.len(), 1, "a v4 host IP maps only the v4 address");
        assert_eq!(e[0].0, "dnat4ip");
        assert_eq!(&e[0].1.key.0[..4], &[192, 168, 1, 1]);
        assert_eq!(e[0].1.key.0[4], 17);
    }

    #[test]
    fn script_has_both_hooks_and_masquerades() {
        let s = script();
        assert!(s.contains("pre fib daddr type local jump hostports"));
        assert!(s.contains("out fib daddr type local jump hostports"));
        assert!(s.contains("ip saddr 127.0.0.0/8 masquerade"));
        assert!(s.contains("iifname @hairpin meta mark set meta mark | 0x2000"), "{s}");
        assert!(s.contains("meta mark & 0x2000 == 0x2000 oifname @hairpin masquerade"), "{s}");
    }
}
