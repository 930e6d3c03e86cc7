//! The pure allocator: the next free address of a range set, round-robin from the last one handed out.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::cidr::{from_u128, to_u128};
use crate::ipam::config::Range;

/// Addresses a range never hands out: the network address, the IPv4 broadcast, the gateway.
pub fn is_reserved(range: &Range, ip: IpAddr) -> bool {
    ip == range.subnet.network() || (ip.is_ipv4() && ip == range.subnet.last()) || range.gateway == Some(ip)
}

/// Whether `ip` may be allocated from `range` (ignoring whether it is in use).
pub fn is_allocatable(range: &Range, ip: IpAddr) -> bool {
    range.contains(ip) && !is_reserved(range, ip)
}

/// The position just after `last` as (range index, address value), or the set's first address.
fn start_position(set: &[Range], last: Option<IpAddr>) -> (usize, u128) {
    let after_last = last.and_then(|ip| {
        let i = set.iter().position(|r| r.contains(ip))?;
        let v = to_u128(ip);
        if v < to_u128(set[i].end) {
            Some((i, v + 1))
        } else {
            let n = (i + 1) % set.len();
            Some((n, to_u128(set[n].start)))
        }
    });
    after_last.unwrap_or_else(|| (0, to_u128(set[0].start)))
}

/// Picks the next free address of `set` after `last` (wrapping), with the index of its range.
/// `None` when every address is used or reserved.
pub fn next_free(set: &[Range], used: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<(IpAddr, usize)> {
    if set.is_empty() {
        return None;
    }
    let (mut idx, mut value) = start_position(set, last);
    // Every step either finds a free address or passes a used/reserved one, so after this many
    // steps without success the set is exhausted (and v6 /64s are never walked in full).
    let total: u128 = set.iter().map(|r| to_u128(r.end) - to_u128(r.start) + 1).sum();
    let bound = total.min(used.len() as u128 + 3 * set.len() as u128 + 1);
    let mut steps: u128 = 0;
    while steps < bound {
        let range = &set[idx];
        let ip = from_u128(value, range.start);
        if !is_reserved(range, ip) && !used.contains(&ip) {
            return Some((ip, idx));
        }
        steps += 1;
        if value < to_u128(range.end) {
            value += 1;
        } else {
            idx = (idx + 1) % set.len();
            value = to_u128(set[idx].start);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::config::IpamConfig;
    use serde_json::json;

    fn set(v: serde_json::Value) -> Vec<Range> {
        IpamConfig::parse("n", v.as_object().unwrap()).unwrap().range_sets.remove(0)
    }

    fn ips(list: &[&str]) -> HashSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn pick(s: &[Range], used: &[&str], last: Option<&str>) -> Option<String> {
        next_free(s, &ips(used), last.map(|l| l.parse().unwrap())).map(|(ip, _)| ip.to_string())
    }

    #[test]
    fn skips_gateway_network_and_broadcast() {
        let s = set(json!({"subnet": "10.0.0.0/29"}));
        assert_eq!(pick(&s, &[], None).as_deref(), Some("10.0.0.2"));
        let all = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
        assert_eq!(pick(&s, &all, None).as_deref(), Some("10.0.0.6"));
        let full = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"];
        assert_eq!(pick(&s, &full, None), None);
        let wide = set(json!({"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.7"}));
        assert_eq!(pick(&wide, &full, None), None, "network and broadcast never handed out");
    }

    #[test]
    fn round_robin_from_last_reserved() {
        let s = set(json!({"subnet": "10.0.0.0/24"}));
        assert_eq!(pick(&s, &[], Some("10.0.0.7")).as_deref(), Some("10.0.0.8"));
        // A released address is not reused immediately.
        assert_eq!(pick(&s, &["10.0.0.8"], Some("10.0.0.8")).as_deref(), Some("10.0.0.9"));
        // Wraps after the end.
        assert_eq!(pick(&s, &[], Some("10.0.0.254")).as_deref(), Some("10.0.0.2"));
        // A last address outside the set (config changed) restarts at the beginning.
        assert_eq!(pick(&s, &[], Some("192.168.0.1")).as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn walks_across_ranges_of_a_set() {
        let s = set(json!({"ranges": [[
            {"subnet": "10.0.0.0/30"},
            {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.50", "rangeEnd": "10.0.1.51"}
        ]]}));
        assert_eq!(next_free(&s, &ips(&["10.0.0.2"]), None), Some(("10.0.1.50".parse().unwrap(), 1)));
        assert_eq!(pick(&s, &[], Some("10.0.1.51")).as_deref(), Some("10.0.0.2"));
        assert_eq!(pick(&s, &["10.0.0.2", "10.0.1.50", "10.0.1.51"], Some("10.0.0.2")), None);
    }

    #[test]
    fn ipv6() {
        let s = set(json!({"subnet": "fd00::/120"}));
        assert_eq!(pick(&s, &[], None).as_deref(), Some("fd00::2"));
        assert_eq!(pick(&s, &[], Some("fd00::ff")).as_deref(), Some("fd00::2"));
        let r = &s[0];
        assert!(is_allocatable(r, "fd00::ff".parse().unwrap()), "no broadcast in IPv6");
        assert!(!is_allocatable(r, "fd00::1".parse().unwrap()));
    }
}
