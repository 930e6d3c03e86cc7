//! ClusterIP allocation for Services, as kube-apiserver does it: addresses come from the
//! service range (`--service-cluster-ip-range`, default 10.96.0.0/12); the first one is the
//! `kubernetes` Service's; a new Service without a clusterIP gets a free one; a requested one
//! must lie in the range and be free; `None` (headless) and ExternalName Services get none.
//!
//! Allocations are the clusterIPs of the stored Services themselves (no separate bitmap to
//! drift from them); one lock serialises the creates of this process. Several berth-control
//! replicas on one etcd could hand out the same address at the same moment.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::status::Cause;

#[derive(Debug)]
pub struct ServiceIps {
    base: u32,
    size: u32,
    pub(super) lock: tokio::sync::Mutex<()>,
}

impl ServiceIps {
    /// An IPv4 CIDR of at least 8 addresses (/29).
    pub fn parse(cidr: &str) -> Result<ServiceIps, String> {
        let (ip, bits) = cidr.split_once('/').ok_or_else(|| format!("{cidr:?}: not a CIDR (address/prefix)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{cidr:?}: {e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("{cidr:?}: prefix: {e}"))?;
        if !(1..=29).contains(&bits) {
            return Err(format!("{cidr:?}: the prefix must be between /1 and /29"));
        }
        let size = 1u32 << (32 - bits);
        Ok(ServiceIps { base: u32::from(ip) & !(size - 1), size, lock: tokio::sync::Mutex::new(()) })
    }

    /// The `kubernetes` Service's address: the first of the range.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn contains(&self, ip: u32) -> bool {
        ip > self.base && ip < self.base + self.size - 1
    }

    /// The range, for messages.
    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), 32 - self.size.trailing_zeros())
    }

    /// Sets `spec.clusterIP` and `spec.clusterIPs` of a new Service, given the addresses the
    /// stored Services hold; a cause naming the field when the requested one cannot be had.
    pub fn assign(&self, svc: &mut Value, used: &HashSet<u32>) -> Result<(), Cause> {
        let spec = &mut svc["spec"];
        if spec["type"] == "ExternalName" {
            return Ok(());
        }
        let requested = spec["clusterIP"].as_str().unwrap_or_default().to_string();
        let ip = match requested.as_str() {
            "None" => "None".to_string(),
            "" => {
                // The first address is reserved for the `kubernetes` Service.
                let free = (self.base + 2..self.base + self.size - 1).find(|ip| !used.contains(ip));
                let ip = free.ok_or_else(|| {
                    Cause::invalid(
                        "spec.clusterIP",
                        "",
                        &format!("no free address is left in the service range {}", self.cidr()),
                    )
                })?;
                Ipv4Addr::from(ip).to_string()
            }
            s => {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| Cause::invalid("spec.clusterIP", s, "must be a valid IP address, (e.g. 10.9.8.7)"))?;
                let n = u32::from(ip);
                if !self.contains(n) {
                    return Err(Cause::invalid(
                        "spec.clusterIP",
                        s,
                        &format!("provided IP is not in the valid range. The range of valid IPs is {}", self.cidr()),
                    ));
                }
                if used.contains(&n) {
                    return Err(Cause::invalid("spec.clusterIP", s, "provided IP is already allocated"));
                }
                s.to_string()
            }
        };
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        Ok(())
    }
}

/// The addresses the given Services hold.
pub fn in_use(services: &[Value]) -> HashSet<u32> {
    services.iter().filter_map(|s| s["spec"]["clusterIP"].as_str()?.parse::<Ipv4Addr>().ok()).map(u32::from).collect()
}

/// An update keeps the Service's address: unset fields take the stored ones, a change is a cause.
pub fn keep_on_update(new: &mut Value, old: &Value) -> Option<Cause> {
    let old_ip = old["spec"]["clusterIP"].clone();
    if old_ip.is_null() {
        return None;
    }
    let new_ip = new["spec"]["clusterIP"].as_str().unwrap_or_default();
    if new_ip.is_empty() {
        new["spec"]["clusterIP"] = old_ip;
        new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
        return None;
    }
    (Some(new_ip) != old_ip.as_str()).then(|| Cause::invalid("spec.clusterIP", new_ip, "field is immutable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ip: Option<&str>) -> Value {
        let mut s = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        if let Some(ip) = ip {
            s["spec"]["clusterIP"] = json!(ip);
        }
        s
    }

    #[test]
    fn allocates_free_addresses_and_checks_requested_ones() {
        let ips = ServiceIps::parse("10.96.0.0/12").unwrap();
        assert_eq!((ips.first().to_string(), ips.cidr()), ("10.96.0.1".to_string(), "10.96.0.0/12".to_string()));
        let mut used = HashSet::new();
        let mut a = svc(None);
        ips.assign(&mut a, &used).unwrap();
        assert_eq!(
            (a["spec"]["clusterIP"].as_str(), &a["spec"]["clusterIPs"]),
            (Some("10.96.0.2"), &json!(["10.96.0.2"]))
        );
        used = in_use(&[a]);
        let mut b = svc(None);
        ips.assign(&mut b, &used).unwrap();
        assert_eq!(b["spec"]["clusterIP"], "10.96.0.3");

        let err = |ip: &str| ips.assign(&mut svc(Some(ip)), &used).unwrap_err().message;
        assert!(err("10.96.0.2").contains("already allocated"));
        assert!(err("192.168.0.1").contains("not in the valid range"));
        assert!(err("10.111.255.255").contains("not in the valid range"), "the broadcast address is not handed out");
        assert!(err("nope").contains("valid IP"));
        let mut k = svc(Some("10.96.0.1"));
        ips.assign(&mut k, &used).unwrap();
        let mut headless = svc(Some("None"));
        ips.assign(&mut headless, &used).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let mut ext = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        ips.assign(&mut ext, &used).unwrap();
        assert!(ext["spec"]["clusterIP"].is_null());
    }

    #[test]
    fn a_small_range_runs_out_with_a_clear_message() {
        let ips = ServiceIps::parse("10.0.0.0/29").unwrap();
        let used: HashSet<u32> = (2..7).map(|i| u32::from(Ipv4Addr::new(10, 0, 0, i))).collect();
        let e = ips.assign(&mut svc(None), &used).unwrap_err();
        assert!(e.message.contains("no free address") && e.message.contains("10.0.0.0/29"), "{}", e.message);
        assert!(ServiceIps::parse("10.0.0.0/30").is_err() && ServiceIps::parse("10.0.0.0").is_err());
    }

    #[test]
    fn updates_keep_the_address() {
        let old = json!({"spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]}});
        let mut new = json!({"spec": {"ports": []}});
        assert!(keep_on_update(&mut new, &old).is_none());
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.9");
        let mut changed = json!({"spec": {"clusterIP": "10.96.0.10"}});
        assert!(keep_on_update(&mut changed, &old).unwrap().message.contains("immutable"));
    }
}
