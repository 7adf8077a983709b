//! Networks and client prefixes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`); a bare address is
/// a host route (`/32` or `/128`). Host bits are cleared on parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The network containing `addr` with prefix length `len` (clamped to the family's
    /// maximum), host bits cleared.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let len = len.min(max_len(addr));
        Cidr {
            addr: mask(addr, len),
            len,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is the whole address space of its family (`/0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.len) == self.addr
            }
            _ => false,
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with all bits after the first `len` cleared.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32) as u32)
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128) as u32)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a network in CIDR notation: {0:?}")]
pub struct CidrParseError(pub String);

impl FromStr for Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.to_owned());
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| err())?;
        let len = match l {
            Some(l) => l.trim().parse::<u8>().map_err(|_| err())?,
            None => max_len(addr),
        };
        if len > max_len(addr) {
            return Err(err());
        }
        Ok(Cidr::new(addr, len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The unit of client identity for latency measurements and persistence: the client's
/// `/24` (IPv4) or `/48` (IPv6), the granularity resolvers commonly send in EDNS Client
/// Subnet. Packed into a `u64` so tables keyed by it are cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientPrefix(u64);

/// Prefix length of an IPv4 [`ClientPrefix`].
pub const V4_PREFIX_LEN: u8 = 24;
/// Prefix length of an IPv6 [`ClientPrefix`].
pub const V6_PREFIX_LEN: u8 = 48;

const V4_TAG: u64 = 1 << 63;

impl ClientPrefix {
    /// The prefix that contains `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => ClientPrefix(V4_TAG | (u32::from(a) >> 8) as u64),
            IpAddr::V6(a) => ClientPrefix((u128::from(a) >> 80) as u64),
        }
    }

    /// The prefix length this prefix stands for (24 or 48).
    pub fn len(self) -> u8 {
        if self.0 & V4_TAG != 0 {
            V4_PREFIX_LEN
        } else {
            V6_PREFIX_LEN
        }
    }

    /// Always false: a client prefix is never the empty network.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The network this prefix stands for.
    pub fn network(self) -> Cidr {
        if self.0 & V4_TAG != 0 {
            let a = Ipv4Addr::from(((self.0 & 0x00ff_ffff) as u32) << 8);
            Cidr::new(IpAddr::V4(a), V4_PREFIX_LEN)
        } else {
            let a = Ipv6Addr::from(((self.0 & 0xffff_ffff_ffff) as u128) << 80);
            Cidr::new(IpAddr::V6(a), V6_PREFIX_LEN)
        }
    }

    /// The packed representation (stable; safe to store and send).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// A prefix from its packed representation.
    pub const fn from_bits(bits: u64) -> Self {
        ClientPrefix(bits)
    }
}

impl fmt::Display for ClientPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.network().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let h: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(h.len(), 128);
    }

    #[test]
    fn client_prefix_round_trip() {
        let p = ClientPrefix::of("192.0.2.77".parse().unwrap());
        assert_eq!(p.network().to_string(), "192.0.2.0/24");
        let q = ClientPrefix::of("2001:db8:1:2::9".parse().unwrap());
        assert_eq!(q.network().to_string(), "2001:db8:1::/48");
        assert_ne!(p, q);
        assert_eq!(ClientPrefix::from_bits(p.to_bits()), p);
    }
}
