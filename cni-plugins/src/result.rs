//! The ADD result, and its encoding for each spec version a runtime may ask for.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::cidr::Cidr;
use crate::netconf::Dns;
use crate::version::at_least;

/// An interface created or configured by the plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    pub pci_id: Option<String>,
}

/// An address assigned to an interface (`interface` indexes `CniResult::interfaces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub interface: Option<usize>,
    pub address: Cidr,
    pub gateway: Option<IpAddr>,
}

/// A route to install in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
    /// The following are 1.1.0 only.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: Cidr, gw: Option<IpAddr>) -> Self {
        Self { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

/// The success result of ADD, independent of the wire version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn put<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        map.insert(key.to_string(), v.into());
    }
}

fn interface_json(i: &Interface, v11: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), i.name.clone().into());
    put(&mut m, "mac", i.mac.clone());
    put(&mut m, "sandbox", i.sandbox.clone());
    if v11 {
        put(&mut m, "mtu", i.mtu);
        put(&mut m, "socketPath", i.socket_path.clone());
        put(&mut m, "pciID", i.pci_id.clone());
    }
    Value::Object(m)
}

fn route_json(r: &Route, v11: bool) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), r.dst.to_string().into());
    put(&mut m, "gw", r.gw.map(|g| g.to_string()));
    if v11 {
        put(&mut m, "mtu", r.mtu);
        put(&mut m, "advmss", r.advmss);
        put(&mut m, "priority", r.priority);
        put(&mut m, "table", r.table);
        put(&mut m, "scope", r.scope);
    }
    Value::Object(m)
}

fn ip_json(ip: &IpConfig, with_version: bool) -> Value {
    let mut m = Map::new();
    if with_version {
        let v = if ip.address.addr.is_ipv4() { "4" } else { "6" };
        m.insert("version".into(), v.into());
    }
    m.insert("address".into(), ip.address.to_string().into());
    put(&mut m, "gateway", ip.gateway.map(|g| g.to_string()));
    put(&mut m, "interface", ip.interface);
    Value::Object(m)
}

impl CniResult {
    /// The result JSON in the shape of spec version `version` (already negotiated).
    pub fn to_json(&self, version: &str) -> Value {
        if !at_least(version, "0.3.0") {
            return self.legacy_json(version);
        }
        let v1 = at_least(version, "1.0.0");
        let v11 = at_least(version, "1.1.0");
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| interface_json(i, v11)).collect();
            m.insert("interfaces".into(), Value::Array(list));
        }
        if !self.ips.is_empty() {
            let list = self.ips.iter().map(|i| ip_json(i, !v1)).collect();
            m.insert("ips".into(), Value::Array(list));
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| route_json(r, v11)).collect();
            m.insert("routes".into(), Value::Array(list));
        }
        if !self.dns.is_empty() {
            m.insert("dns".into(), json!(self.dns));
        }
        Value::Object(m)
    }

    /// The 0.1.0/0.2.0 shape: one `ip4` and one `ip6` object, routes inside them.
    fn legacy_json(&self, version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.into());
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|i| i.address.addr.is_ipv4() == v4) else {
                continue;
            };
            let mut o = Map::new();
            o.insert("ip".into(), ip.address.to_string().into());
            put(&mut o, "gateway", ip.gateway.map(|g| g.to_string()));
            let routes: Vec<Value> =
                self.routes.iter().filter(|r| r.dst.addr.is_ipv4() == v4).map(|r| route_json(r, false)).collect();
            if !routes.is_empty() {
                o.insert("routes".into(), Value::Array(routes));
            }
            m.insert(key.into(), Value::Object(o));
        }
        if !self.dns.is_empty() {
            m.insert("dns".into(), json!(self.dns));
        }
        Value::Object(m)
    }
}

/// A result (or prevResult) that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the CNI result: {what}")]
pub struct ResultError {
    pub what: String,
}

fn bad(what: impl Into<String>) -> ResultError {
    ResultError { what: what.into() }
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn opt_u32(v: &Value, key: &str) -> Option<u32> {
    v.get(key).and_then(Value::as_u64).map(|n| n as u32)
}

fn cidr_field(v: &Value, key: &str) -> Result<Cidr, ResultError> {
    let text = v.get(key).and_then(Value::as_str).ok_or_else(|| bad(format!("missing {key}")))?;
    text.parse().map_err(|_| bad(format!("{key} {text:?} is not a CIDR")))
}

fn ip_field(v: &Value, key: &str) -> Result<Option<IpAddr>, ResultError> {
    match v.get(key).and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| bad(format!("{key} {t:?} is not an address"))),
    }
}

fn parse_route(r: &Value) -> Result<Route, ResultError> {
    Ok(Route {
        mtu: opt_u32(r, "mtu"),
        advmss: opt_u32(r, "advmss"),
        priority: opt_u32(r, "priority"),
        table: opt_u32(r, "table"),
        scope: opt_u32(r, "scope"),
        ..Route::new(cidr_field(r, "dst")?, ip_field(r, "gw")?)
    })
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

impl CniResult {
    /// Reads a result of any version (0.1.0 through 1.1.0), e.g. an IPAM plugin's answer or a
    /// prevResult.
    pub fn from_json(v: &Value) -> Result<CniResult, ResultError> {
        let mut out = CniResult {
            dns: v.get("dns").cloned().and_then(|d| serde_json::from_value(d).ok()).unwrap_or_default(),
            ..Default::default()
        };
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            for key in ["ip4", "ip6"] {
                let Some(o) = v.get(key) else { continue };
                out.ips.push(IpConfig {
                    interface: None,
                    address: cidr_field(o, "ip")?,
                    gateway: ip_field(o, "gateway")?,
                });
                for r in list(o, "routes") {
                    out.routes.push(parse_route(r)?);
                }
            }
            return Ok(out);
        }
        for i in list(v, "interfaces") {
            out.interfaces.push(Interface {
                name: opt_str(i, "name").ok_or_else(|| bad("interface without a name"))?,
                mac: opt_str(i, "mac"),
                mtu: opt_u32(i, "mtu"),
                sandbox: opt_str(i, "sandbox"),
                socket_path: opt_str(i, "socketPath"),
                pci_id: opt_str(i, "pciID"),
            });
        }
        for ip in list(v, "ips") {
            out.ips.push(IpConfig {
                interface: ip.get("interface").and_then(Value::as_u64).map(|n| n as usize),
                address: cidr_field(ip, "address")?,
                gateway: ip_field(ip, "gateway")?,
            });
        }
        for r in list(v, "routes") {
            out.routes.push(parse_route(r)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("aa:bb:cc:dd:ee:ff".into()),
                mtu: Some(1450),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    interface: Some(0),
                    address: "10.0.0.5/24".parse().unwrap(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                },
                IpConfig { interface: None, address: "fd00::5/64".parse().unwrap(), gateway: None },
            ],
            routes: vec![Route { mtu: Some(1400), ..Route::new("0.0.0.0/0".parse().unwrap(), None) }],
            dns: Dns { nameservers: vec!["10.96.0.10".into()], ..Default::default() },
        }
    }

    #[test]
    fn v1_shapes() {
        let v = sample().to_json("1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["interface"], 0);
        assert_eq!(v["interfaces"][0]["mtu"], 1450);
        assert_eq!(v["routes"][0]["mtu"], 1400);
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
        let v = sample().to_json("1.0.0");
        assert!(v["interfaces"][0].get("mtu").is_none(), "mtu is 1.1 only");
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["ips"][1].get("version").is_none());
    }

    #[test]
    fn v03_v04_have_ip_version() {
        for ver in ["0.3.0", "0.3.1", "0.4.0"] {
            let v = sample().to_json(ver);
            assert_eq!(v["cniVersion"], ver);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["ips"][1]["address"], "fd00::5/64");
        }
    }

    #[test]
    fn parses_every_shape_back() {
        for ver in ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let back = CniResult::from_json(&sample().to_json(ver)).unwrap();
            assert_eq!(back.ips.len(), 2, "{ver}");
            assert_eq!(back.ips[0].gateway, sample().ips[0].gateway);
            assert_eq!(back.routes[0].dst, sample().routes[0].dst);
            assert_eq!(back.dns, sample().dns);
            if ver != "0.2.0" {
                assert_eq!(back.interfaces[0].mac, sample().interfaces[0].mac);
                assert_eq!(back.interfaces[0].mtu, (ver == "1.1.0").then_some(1450));
            }
        }
        assert!(CniResult::from_json(&json!({"ips": [{"address": "nope"}]})).is_err());
    }

    #[test]
    fn legacy_shape() {
        let v = sample().to_json("0.2.0");
        assert_eq!(v["ip4"]["ip"], "10.0.0.5/24");
        assert_eq!(v["ip4"]["gateway"], "10.0.0.1");
        assert_eq!(v["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["ip6"]["ip"], "fd00::5/64");
        assert!(v.get("ips").is_none());
    }
}
