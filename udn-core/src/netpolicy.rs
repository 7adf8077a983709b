//! Which addresses a customer-given destination may reach.
//!
//! Origins, GTM addresses, monitor targets and page checks are named by customers, but
//! the connection is made from inside the provider's network (an edge, a probe). A
//! [`TargetPolicy`] refuses the ranges that lead back into it: loopback, private
//! (RFC 1918, IPv6 unique-local), link-local (with the cloud-metadata address
//! `169.254.169.254`), CGNAT (`100.64.0.0/10`), multicast, reserved and unspecified
//! addresses. IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by
//! the IPv4 address they carry, so `::ffff:127.0.0.1` is loopback.
//!
//! An operator lists ranges to allow anyway (`[security] allow_target_ranges`); an
//! allowed range wins over the deny list. The policy is pure: callers check literal
//! addresses when a configuration is accepted and every resolved address before they
//! connect.
//!
//! # Examples
//!
//! ```
//! use udn_core::netpolicy::{Denied, TargetPolicy};
//! let strict = TargetPolicy::default();
//! assert_eq!(strict.check("127.0.0.1".parse()?), Err(Denied::Loopback));
//! assert_eq!(strict.check("::ffff:169.254.169.254".parse()?), Err(Denied::Metadata));
//! assert_eq!(strict.check("192.0.2.10".parse()?), Ok(()));
//!
//! let demo = TargetPolicy::new(vec!["127.0.0.0/8".parse()?]);
//! assert_eq!(demo.check("127.0.0.21".parse()?), Ok(()));
//! assert_eq!(demo.check("10.0.0.1".parse()?), Err(Denied::Private));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::net::Cidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused: the kind of range it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denied {
    /// `0.0.0.0/8`, `::`: "this host".
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// Shared address space (carrier-grade NAT), `100.64.0.0/10`.
    Cgnat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// The cloud instance-metadata address `169.254.169.254`.
    Metadata,
    /// IPv6 unique-local `fc00::/7` (and the deprecated site-local `fec0::/10`).
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `240.0.0.0/4` (reserved), `255.255.255.255` (broadcast), `64:ff9b:1::/48`
    /// (local-use NAT64), IETF protocol assignments `192.0.0.0/24`.
    Reserved,
}

impl Denied {
    /// A short name for logs, headers and API errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Unspecified => "unspecified",
            Denied::Loopback => "loopback",
            Denied::Private => "private",
            Denied::Cgnat => "cgnat",
            Denied::LinkLocal => "link-local",
            Denied::Metadata => "cloud-metadata",
            Denied::UniqueLocal => "unique-local",
            Denied::Multicast => "multicast",
            Denied::Reserved => "reserved",
        }
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The deny list with an operator's allow list on top. The default allows nothing
/// extra.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    allow: Vec<Cidr>,
    unrestricted: bool,
}

impl TargetPolicy {
    /// The deny list, except the ranges in `allow`.
    pub fn new(allow: Vec<Cidr>) -> TargetPolicy {
        TargetPolicy {
            allow,
            unrestricted: false,
        }
    }

    /// A policy that allows every address: for destinations an operator gives on a
    /// command line (`udn edge --origin URL`), never for customer input.
    pub fn unrestricted() -> TargetPolicy {
        TargetPolicy {
            allow: Vec::new(),
            unrestricted: true,
        }
    }

    /// The operator's allowed ranges.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allow
    }

    /// `Ok` when a customer-given destination may connect to `ip`; otherwise the kind
    /// of range it lies in. An address is judged by the IPv4 address it carries, if
    /// any ([`embedded_v4`]); the allow list is checked against both forms.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.unrestricted {
            return Ok(());
        }
        let v4 = match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => embedded_v4(a),
        };
        let Some(kind) = classify(ip) else {
            return Ok(());
        };
        let allowed = self
            .allow
            .iter()
            .any(|c| c.contains(ip) || v4.is_some_and(|a| c.contains(IpAddr::V4(a))));
        if allowed { Ok(()) } else { Err(kind) }
    }

    /// Whether [`check`](Self::check) passes.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }
}

/// The host of an `http(s)://` or `ftp://` URL when it is an IP address literal
/// (`127.0.0.1`, `[::1]`); `None` for a name or a string that is not such a URL.
pub fn url_ip(url: &str) -> Option<IpAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("ftp://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host.split(':').next()?,
    };
    host.parse().ok()
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:0:0/96`),
/// IPv4-compatible (`::/96`, except `::` and `::1`), NAT64 (`64:ff9b::/96`) or 6to4
/// (`2002::/16`, bits 16..48).
pub fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(a);
    let low = Ipv4Addr::from(bits as u32);
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    if bits >> 32 == 0 {
        return (bits > 1).then_some(low);
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low);
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// The denied range `ip` lies in, if any (before any allow list).
pub fn classify(ip: IpAddr) -> Option<Denied> {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => match embedded_v4(a) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(a),
        },
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<Denied> {
    let o = a.octets();
    let bits = u32::from(a);
    let within = |net: u32, len: u32| bits >> (32 - len) == net >> (32 - len);
    Some(if o[0] == 0 {
        Denied::Unspecified
    } else if o[0] == 127 {
        Denied::Loopback
    } else if o[0] == 10 || within(0xac10_0000, 12) || within(0xc0a8_0000, 16) {
        Denied::Private
    } else if within(0x6440_0000, 10) {
        Denied::Cgnat
    } else if a == Ipv4Addr::new(169, 254, 169, 254) {
        Denied::Metadata
    } else if within(0xa9fe_0000, 16) {
        Denied::LinkLocal
    } else if within(0xe000_0000, 4) {
        Denied::Multicast
    } else if within(0xf000_0000, 4) || within(0xc000_0000, 24) {
        // 240/4 includes 255.255.255.255.
        Denied::Reserved
    } else {
        return None;
    })
}

fn classify_v6(a: Ipv6Addr) -> Option<Denied> {
    let bits = u128::from(a);
    let within = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    Some(if bits == 0 {
        Denied::Unspecified
    } else if bits == 1 {
        Denied::Loopback
    } else if within(0xfc00 << 112, 7) || within(0xfec0 << 112, 10) {
        Denied::UniqueLocal
    } else if within(0xfe80 << 112, 10) {
        Denied::LinkLocal
    } else if within(0xff00 << 112, 8) {
        Denied::Multicast
    } else if within(0x0064_ff9b_0001 << 80, 48) {
        Denied::Reserved
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_refuses_the_providers_ranges() {
        let p = TargetPolicy::default();
        for (a, kind) in [
            ("0.0.0.0", Denied::Unspecified),
            ("0.1.2.3", Denied::Unspecified),
            ("127.0.0.1", Denied::Loopback),
            ("127.255.1.2", Denied::Loopback),
            ("10.1.2.3", Denied::Private),
            ("172.16.0.1", Denied::Private),
            ("172.31.255.255", Denied::Private),
            ("192.168.1.1", Denied::Private),
            ("100.64.0.1", Denied::Cgnat),
            ("100.127.255.255", Denied::Cgnat),
            ("169.254.169.254", Denied::Metadata),
            ("169.254.1.1", Denied::LinkLocal),
            ("224.0.0.1", Denied::Multicast),
            ("239.255.255.250", Denied::Multicast),
            ("240.0.0.1", Denied::Reserved),
            ("255.255.255.255", Denied::Reserved),
            ("::", Denied::Unspecified),
            ("::1", Denied::Loopback),
            ("fc00::1", Denied::UniqueLocal),
            ("fd00:ec2::254", Denied::UniqueLocal),
            ("fe80::1", Denied::LinkLocal),
            ("ff02::1", Denied::Multicast),
            ("::ffff:127.0.0.1", Denied::Loopback),
            ("::ffff:10.0.0.1", Denied::Private),
            ("::127.0.0.1", Denied::Loopback),
            ("64:ff9b::a9fe:a9fe", Denied::Metadata),
            ("64:ff9b:1::1", Denied::Reserved),
            ("2002:7f00:1::1", Denied::Loopback),
        ] {
            assert_eq!(p.check(ip(a)), Err(kind), "{a}");
        }
        for a in [
            "192.0.2.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn url_ip_finds_literals_only() {
        assert_eq!(url_ip("http://127.0.0.1:8080/x"), Some(ip("127.0.0.1")));
        assert_eq!(
            url_ip("https://[::ffff:10.0.0.1]:443"),
            Some(ip("::ffff:10.0.0.1"))
        );
        assert_eq!(
            url_ip("http://u:p@169.254.169.254/"),
            Some(ip("169.254.169.254"))
        );
        assert_eq!(url_ip("http://origin.example:81"), None);
        assert_eq!(url_ip("ftp://127.0.0.1/"), Some(ip("127.0.0.1")));
        assert_eq!(url_ip("ftp://anonymous:x@[::1]:2121/pub"), Some(ip("::1")));
        assert_eq!(url_ip("gopher://127.0.0.1/"), None);
    }

    #[test]
    fn the_allow_list_wins_and_nothing_else_passes() {
        let p = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(p.allows(ip("127.0.0.21")));
        assert!(p.allows(ip("::ffff:127.0.0.21")));
        assert_eq!(p.check(ip("::1")), Err(Denied::Loopback));
        assert_eq!(p.check(ip("10.0.0.1")), Err(Denied::Private));
        let v6 = TargetPolicy::new(vec!["::1".parse().unwrap()]);
        assert!(v6.allows(ip("::1")));
        assert!(!v6.allows(ip("127.0.0.1")));
        assert!(TargetPolicy::unrestricted().allows(ip("169.254.169.254")));
    }
}
