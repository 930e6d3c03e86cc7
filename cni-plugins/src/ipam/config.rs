//! host-local configuration: parse the `ipam` section and validate it into ranges before any I/O.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cidr::{family_bits, from_u128, to_u128, Cidr};
use crate::result::Route;

/// Where allocations live unless `dataDir` says otherwise: under /run, so a reboot frees them.
pub const DEFAULT_DATA_DIR: &str = "/run/berth/cni/networks";

/// An invalid host-local configuration (reported as code 7).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot decode the ipam section")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    #[error("no address ranges: set ipam.ranges or ipam.subnet")]
    NoRanges,
    #[error("network name {name:?} is not usable as a directory name")]
    BadName { name: String },
    #[error("subnet {subnet} is too small to allocate from")]
    TooSmall { subnet: Cidr },
    #[error("{field} {ip} is not inside subnet {subnet}")]
    OutsideSubnet { field: &'static str, ip: IpAddr, subnet: Cidr },
    #[error("rangeStart {start} is after rangeEnd {end} in subnet {subnet}")]
    Inverted { start: IpAddr, end: IpAddr, subnet: Cidr },
    #[error("range set {set} mixes IPv4 and IPv6 subnets ({a} and {b})")]
    MixedFamilies { set: usize, a: Cidr, b: Cidr },
    #[error("ranges overlap: {a} (range set {set_a}) and {b} (range set {set_b})")]
    Overlap { a: Cidr, set_a: usize, b: Cidr, set_b: usize },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Cidr,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    dst: Cidr,
    gw: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    subnet: Option<Cidr>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    data_dir: Option<PathBuf>,
}

/// One validated range: allocate from `start..=end` inside `subnet`, never the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet with host bits cleared.
    pub subnet: Cidr,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

/// A validated host-local configuration. One address is allocated from each range set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
}

impl Range {
    fn validate(raw: RawRange) -> Result<Range, ConfigError> {
        let subnet = raw.subnet.masked();
        let v4 = subnet.addr.is_ipv4();
        if subnet.prefix + 2 > family_bits(subnet.addr) {
            return Err(ConfigError::TooSmall { subnet });
        }
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.last());
        let start = raw.range_start.unwrap_or(from_u128(net + 1, subnet.addr));
        let end = raw.range_end.unwrap_or(from_u128(if v4 { last - 1 } else { last }, subnet.addr));
        let gateway = Some(raw.gateway.unwrap_or(from_u128(net + 1, subnet.addr)));
        let fields = [("rangeStart", Some(start)), ("rangeEnd", Some(end)), ("gateway", gateway)];
        for (field, ip) in fields {
            match ip {
                Some(ip) if !subnet.contains(ip) => return Err(ConfigError::OutsideSubnet { field, ip, subnet }),
                _ => {}
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(ConfigError::Inverted { start, end, subnet });
        }
        Ok(Range { subnet, start, end, gateway })
    }

    /// Whether `ip` lies in `start..=end`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(ip) && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }
}

fn check_sets(sets: &[Vec<Range>]) -> Result<(), ConfigError> {
    for (i, set) in sets.iter().enumerate() {
        if let Some(first) = set.first() {
            if let Some(other) = set.iter().find(|r| r.subnet.addr.is_ipv4() != first.subnet.addr.is_ipv4()) {
                return Err(ConfigError::MixedFamilies { set: i, a: first.subnet, b: other.subnet });
            }
        }
    }
    let all: Vec<(usize, &Range)> = sets.iter().enumerate().flat_map(|(i, s)| s.iter().map(move |r| (i, r))).collect();
    for (n, (set_a, a)) in all.iter().enumerate() {
        for (set_b, b) in &all[n + 1..] {
            let same_family = a.start.is_ipv4() == b.start.is_ipv4();
            let disjoint = to_u128(a.end) < to_u128(b.start) || to_u128(b.end) < to_u128(a.start);
            if same_family && !disjoint {
                return Err(ConfigError::Overlap { a: a.subnet, set_a: *set_a, b: b.subnet, set_b: *set_b });
            }
        }
    }
    Ok(())
}

impl IpamConfig {
    /// Validates the `ipam` fields of a network called `name`.
    pub fn parse(name: &str, fields: &Map<String, Value>) -> Result<IpamConfig, ConfigError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(ConfigError::BadName { name: name.to_string() });
        }
        let raw: RawIpam =
            serde_json::from_value(Value::Object(fields.clone())).map_err(|source| ConfigError::Decode { source })?;
        let mut raw_sets = raw.ranges;
        if let Some(subnet) = raw.subnet {
            let (range_start, range_end, gateway) = (raw.range_start, raw.range_end, raw.gateway);
            raw_sets.insert(0, vec![RawRange { subnet, range_start, range_end, gateway }]);
        }
        raw_sets.retain(|s| !s.is_empty());
        if raw_sets.is_empty() {
            return Err(ConfigError::NoRanges);
        }
        let range_sets = raw_sets
            .into_iter()
            .map(|set| set.into_iter().map(Range::validate).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()?;
        check_sets(&range_sets)?;
        Ok(IpamConfig {
            range_sets,
            routes: raw.routes.into_iter().map(|r| Route::new(r.dst, r.gw)).collect(),
            data_dir: raw.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }

    /// The per-network directory holding the allocations.
    pub fn network_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<IpamConfig, ConfigError> {
        IpamConfig::parse("net", v.as_object().unwrap())
    }

    #[test]
    fn legacy_subnet_defaults() {
        let c = parse(json!({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]})).unwrap();
        let r = &c.range_sets[0][0];
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.unwrap().to_string(), "10.1.0.1");
        assert_eq!(c.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn ranges_v4_and_v6() {
        let c = parse(json!({
            "dataDir": "/tmp/x",
            "ranges": [
                [{"subnet": "10.1.0.0/16", "rangeStart": "10.1.5.10", "rangeEnd": "10.1.5.20", "gateway": "10.1.0.254"}],
                [{"subnet": "fd00:1::/64"}]
            ]
        }))
        .unwrap();
        assert_eq!(c.range_sets.len(), 2);
        assert!(c.range_sets[0][0].contains("10.1.5.15".parse().unwrap()));
        assert!(!c.range_sets[0][0].contains("10.1.5.21".parse().unwrap()));
        assert_eq!(c.range_sets[1][0].end.to_string(), "fd00:1::ffff:ffff:ffff:ffff");
        assert_eq!(c.network_dir("net"), PathBuf::from("/tmp/x/net"));
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(matches!(parse(json!({})), Err(ConfigError::NoRanges)));
        assert!(matches!(parse(json!({"subnet": "10.0.0.0/31"})), Err(ConfigError::TooSmall { .. })));
        assert!(matches!(
            parse(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"})),
            Err(ConfigError::OutsideSubnet { field: "rangeStart", .. })
        ));
        assert!(matches!(
            parse(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"})),
            Err(ConfigError::Inverted { .. })
        ));
        assert!(matches!(
            parse(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]})),
            Err(ConfigError::MixedFamilies { .. })
        ));
        assert!(matches!(parse(json!({"subnet": 5})), Err(ConfigError::Decode { .. })));
        assert!(matches!(
            IpamConfig::parse("../x", json!({"subnet": "10.0.0.0/24"}).as_object().unwrap()),
            Err(ConfigError::BadName { .. })
        ));
    }

    #[test]
    fn overlap_names_both() {
        let err = parse(json!({"ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.3.0/24"}]]})).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("10.0.0.0/16") && msg.contains("10.0.3.0/24"), "{msg}");
        let ok = parse(json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.1.0/24"}]]}));
        assert!(ok.is_ok());
    }
}
