//! The bridge plugin's nftables state: ipMasq (per-network pod-address sets feeding one
//! masquerade rule) and macspoofchk (allowed interface/MAC pairs). Rule text is built by pure
//! functions; per-pod changes are set elements (see `netlink::nft`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use crate::cidr::Cidr;
use crate::netlink::nft::{apply_with_setup, nft_script, Action, Elem, Key, NftError, SetOp};
use crate::netlink::nft::{FAMILY_BRIDGE, FAMILY_INET};
use crate::state::fnv1a;

pub const MASQ_TABLE: &str = "berth-masq";
pub const SPOOF_TABLE: &str = "berth-macspoof";

/// The per-network identifier used in set and chain names.
pub fn masq_tag(network: &str) -> String {
    format!("n{:08x}", fnv1a(&[network]) as u32)
}

/// Drops prefixes contained in others (nft refuses overlapping anonymous-set intervals).
pub fn minimal(cidrs: &[Cidr]) -> Vec<Cidr> {
    let set: BTreeSet<String> = cidrs.iter().map(|c| c.masked().to_string()).collect();
    let all: Vec<Cidr> = set.iter().filter_map(|s| s.parse().ok()).collect();
    all.iter().filter(|c| !all.iter().any(|o| o != *c && o.prefix < c.prefix && o.contains(c.addr))).copied().collect()
}

/// The `nft -f` script creating (or refreshing) one network's masquerade chain.
pub fn masq_script(tag: &str, exclude: &[Cidr]) -> String {
    let list = |v4: bool, extra: &str| {
        let mut items: Vec<String> =
            minimal(exclude).iter().filter(|c| c.addr.is_ipv4() == v4).map(Cidr::to_string).collect();
        items.push(extra.to_string());
        items.join(", ")
    };
    format!(
        "add table inet {MASQ_TABLE}\n\
         add set inet {MASQ_TABLE} {tag}-4 {{ type ipv4_addr; }}\n\
         add set inet {MASQ_TABLE} {tag}-6 {{ type ipv6_addr; }}\n\
         add chain inet {MASQ_TABLE} {tag} {{ type nat hook postrouting priority srcnat; }}\n\
         flush chain inet {MASQ_TABLE} {tag}\n\
         add rule inet {MASQ_TABLE} {tag} ip saddr @{tag}-4 ip daddr != {{ {} }} masquerade\n\
         add rule inet {MASQ_TABLE} {tag} ip6 saddr @{tag}-6 ip6 daddr != {{ {} }} masquerade\n",
        list(true, "224.0.0.0/4"),
        list(false, "ff00::/8"),
    )
}

fn masq_ops<'a>(sets: &'a [String; 2], ips: &[IpAddr], action: Action) -> Vec<SetOp<'a>> {
    [true, false]
        .iter()
        .zip(sets.iter())
        .map(|(v4, set)| SetOp {
            family: FAMILY_INET,
            table: MASQ_TABLE,
            set,
            elems: ips
                .iter()
                .filter(|ip| ip.is_ipv4() == *v4)
                .map(|ip| Elem { key: Key::new().ip(*ip), data: None })
                .collect(),
            action,
        })
        .collect()
}

/// Masquerades traffic from `ips` leaving for anything outside `exclude` (pod subnets, cluster
/// CIDR). The chain is (re)built when `exclude` grows beyond what the marker under `state`
/// records, or when the table is missing.
pub fn masq_add(state: &Path, network: &str, ips: &[IpAddr], exclude: &[Cidr]) -> Result<(), NftError> {
    let tag = masq_tag(network);
    let marker = state.join("masq").join(&tag);
    let baked: Vec<Cidr> =
        std::fs::read_to_string(&marker).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect();
    let mut want = baked.clone();
    want.extend(exclude.iter().map(Cidr::masked));
    let want = minimal(&want);
    if want != minimal(&baked) {
        nft_script(&masq_script(&tag, &want))?;
        let text: Vec<String> = want.iter().map(Cidr::to_string).collect();
        let _ = std::fs::create_dir_all(marker.parent().unwrap_or(state));
        let _ = std::fs::write(&marker, text.join("\n"));
    }
    let sets = [format!("{tag}-4"), format!("{tag}-6")];
    apply_with_setup(&masq_ops(&sets, ips, Action::Add), &|| masq_script(&tag, &want))
}

pub fn masq_del(network: &str, ips: &[IpAddr]) -> Result<(), NftError> {
    let tag = masq_tag(network);
    let sets = [format!("{tag}-4"), format!("{tag}-6")];
    apply_with_setup(&masq_ops(&sets, ips, Action::Remove), &String::new)
}

/// Whether every address of `ips` is in the network's masquerade sets.
pub fn masq_has(network: &str, ips: &[IpAddr]) -> Result<bool, crate::netlink::NlError> {
    let tag = masq_tag(network);
    let mut sock = crate::netlink::Socket::netfilter()?;
    for ip in ips {
        let set = format!("{tag}-{}", if ip.is_ipv4() { 4 } else { 6 });
        if !sock.nft_has(FAMILY_INET, MASQ_TABLE, &set, &Key::new().ip(*ip))? {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn spoof_script() -> String {
    format!(
        "add table bridge {SPOOF_TABLE}\n\
         add set bridge {SPOOF_TABLE} ports {{ type ifname; }}\n\
         add set bridge {SPOOF_TABLE} allowed {{ type ifname . ether_addr; }}\n\
         add chain bridge {SPOOF_TABLE} pre {{ type filter hook prerouting priority -300; }}\n\
         flush chain bridge {SPOOF_TABLE} pre\n\
         add rule bridge {SPOOF_TABLE} pre iifname @ports iifname . ether saddr != @allowed drop\n"
    )
}

/// Drops frames entering the bridge from `port` unless their source MAC is `mac`.
pub fn spoof_update(port: &str, mac: [u8; 6], action: Action) -> Result<(), NftError> {
    let ops = [
        SetOp {
            family: FAMILY_BRIDGE,
            table: SPOOF_TABLE,
            set: "allowed",
            elems: vec![Elem { key: Key::new().ifname(port).mac(mac), data: None }],
            action,
        },
        SetOp {
            family: FAMILY_BRIDGE,
            table: SPOOF_TABLE,
            set: "ports",
            elems: vec![Elem { key: Key::new().ifname(port), data: None }],
            action,
        },
    ];
    apply_with_setup(&ops, &spoof_script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masq_rule_excludes_subnets_and_multicast() {
        let ex: Vec<Cidr> = ["10.1.0.0/16", "10.1.2.0/24", "fd00::/64"].iter().map(|s| s.parse().unwrap()).collect();
        let s = masq_script("nabc", &ex);
        assert!(s.contains("ip saddr @nabc-4 ip daddr != { 10.1.0.0/16, 224.0.0.0/4 } masquerade"), "{s}");
        assert!(s.contains("ip6 daddr != { fd00::/64, ff00::/8 }"), "{s}");
        assert!(s.contains("flush chain inet berth-masq nabc"));
        assert_eq!(masq_tag("a"), masq_tag("a"));
        assert_ne!(masq_tag("a"), masq_tag("b"));
    }

    #[test]
    fn spoof_rule() {
        assert!(spoof_script().contains("iifname @ports iifname . ether saddr != @allowed drop"));
    }
}
