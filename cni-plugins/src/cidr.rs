//! An address with a prefix length (`10.0.0.5/24`) and the integer arithmetic IPAM needs on it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors parsing a CIDR string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("invalid CIDR {input:?}: expected ADDRESS/PREFIX")]
    Syntax { input: String },
    #[error("invalid CIDR {input:?}: prefix length {prefix} is too long for the address family")]
    Prefix { input: String, prefix: u32 },
}

/// `addr/prefix`; `addr` may have host bits set (an interface address) or not (a subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Number of bits in an address of this family.
pub fn family_bits(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The address as an integer (IPv4 in the low 32 bits).
pub fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The integer back as an address of the same family as `like`.
pub fn from_u128(value: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    fn host_mask(&self) -> u128 {
        let bits = u32::from(family_bits(self.addr));
        let host_bits = bits - u32::from(self.prefix);
        if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    /// The first address of the subnet (host bits cleared).
    pub fn network(&self) -> IpAddr {
        from_u128(to_u128(self.addr) & !self.host_mask(), self.addr)
    }

    /// The last address of the subnet (the IPv4 broadcast).
    pub fn last(&self) -> IpAddr {
        from_u128(to_u128(self.addr) | self.host_mask(), self.addr)
    }

    /// This prefix with host bits cleared.
    pub fn masked(&self) -> Cidr {
        Cidr::new(self.network(), self.prefix)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && to_u128(ip) & !self.host_mask() == to_u128(self.addr) & !self.host_mask()
    }

    /// Whether two subnets share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax { input: input.to_string() };
        let (addr, prefix) = input.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix: u32 = prefix.parse().map_err(|_| syntax())?;
        if prefix > u32::from(family_bits(addr)) {
            return Err(CidrError::Prefix { input: input.to_string(), prefix });
        }
        Ok(Cidr::new(addr, prefix as u8))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let c: Cidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.1.2.0");
        assert_eq!(c.last().to_string(), "10.1.2.255");
        assert_eq!(c.masked().to_string(), "10.1.2.0/24");
        assert!(c.contains("10.1.2.200".parse().unwrap()));
        assert!(!c.contains("10.1.3.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
    }

    #[test]
    fn ipv6_and_errors() {
        let c: Cidr = "fd00::1/64".parse().unwrap();
        assert_eq!(c.network().to_string(), "fd00::");
        assert_eq!(c.last().to_string(), "fd00::ffff:ffff:ffff:ffff");
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix { .. })));
        assert!(matches!("10.0.0.0".parse::<Cidr>(), Err(CidrError::Syntax { .. })));
    }

    #[test]
    fn overlap() {
        let a: Cidr = "10.0.0.0/16".parse().unwrap();
        let b: Cidr = "10.0.5.0/24".parse().unwrap();
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
