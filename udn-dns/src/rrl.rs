//! Response rate limiting (RRL) with slip, in the manner of NSD and Knot.
//!
//! Every UDP response is counted in a bucket chosen by the client's network (the /24
//! of an IPv4 address, the /56 of an IPv6 address, both configurable), the response's
//! class and, for answers that name data, the question name:
//!
//! | class | when | keyed by name |
//! | --- | --- | --- |
//! | positive | NOERROR with answers | yes |
//! | any | a question of type ANY | yes |
//! | nodata | NOERROR, no answer, authoritative | yes |
//! | referral | NOERROR, no answer, not authoritative | yes |
//! | nxdomain | NXDOMAIN | no (all names together, so random names share one bucket) |
//! | error | any other response code | no |
//!
//! A bucket holds up to `rate` tokens and gains `rate` a second; a response takes one.
//! When it is empty the response is *limited*: every `slip`-th limited response is sent
//! truncated (TC=1, question only: a real client retries over TCP, which is never
//! limited), the others are dropped. `slip = 0` drops them all, `slip = 1` truncates
//! them all.
//!
//! The table is a fixed array of `table_size` 64-bit buckets (8 bytes each), allocated
//! at start and never grown: a bucket records a 24-bit tag of its key, the second it
//! was last touched and its tokens, updated with one compare-and-swap. Keys that fall
//! into the same bucket replace each other (a newcomer starts with a full bucket), so
//! a flood of spoofed sources cannot grow memory, only make limiting less precise.
//! The hash is keyed with a random key per process, so the collisions cannot be aimed.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use udn_core::Cidr;

/// RRL settings.
#[derive(Debug, Clone)]
pub struct RrlConfig {
    /// Responses per second per bucket; 0 turns RRL off.
    pub rate: u32,
    /// Every `slip`-th limited response goes out truncated; 0 = drop them all.
    pub slip: u32,
    /// IPv4 clients are grouped by this prefix length.
    pub ipv4_prefix: u8,
    /// IPv6 clients are grouped by this prefix length.
    pub ipv6_prefix: u8,
    /// Buckets in the table (rounded up to a power of two, at least 1024).
    pub table_size: usize,
    /// Clients never limited (e.g. a monitoring host or a load generator).
    pub exempt: Vec<Cidr>,
}

/// The most tokens a bucket can hold (24 bits).
pub const MAX_RATE: u32 = (1 << 24) - 1;

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            rate: 200,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            table_size: 1 << 18,
            exempt: Vec::new(),
        }
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send it truncated (TC=1, question only).
    Slip,
    /// Send nothing.
    Drop,
}

/// The rate limiter, shared by every UDP socket of a server.
#[derive(Debug)]
pub struct Rrl {
    cfg: RrlConfig,
    rate: u64,
    table: Box<[AtomicU64]>,
    mask: u64,
    limited: AtomicU64,
    slipped: AtomicU64,
    dropped: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

/// The response classes of the table above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Class {
    Positive = 1,
    Any = 2,
    NoData = 3,
    Referral = 4,
    NxDomain = 5,
    Error = 6,
}

impl Rrl {
    /// A limiter with `cfg` (`None` if its rate is 0: RRL off).
    pub fn new(cfg: RrlConfig) -> Option<Rrl> {
        if cfg.rate == 0 {
            return None;
        }
        let size = cfg.table_size.clamp(1024, 1 << 26).next_power_of_two();
        Some(Rrl {
            rate: cfg.rate.min(MAX_RATE) as u64,
            table: (0..size).map(|_| AtomicU64::new(0)).collect(),
            mask: size as u64 - 1,
            limited: AtomicU64::new(0),
            slipped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            hasher: Default::default(),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RrlConfig {
        &self.cfg
    }

    /// Responses sent truncated and responses dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.slipped.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Bytes the table takes.
    pub fn table_bytes(&self) -> usize {
        self.table.len() * 8
    }

    /// Counts `response` (a UDP response to `client`) at `now_secs` and says whether to
    /// send it.
    pub fn check(&self, client: IpAddr, response: &[u8], now_secs: u64) -> Verdict {
        if self.cfg.exempt.iter().any(|c| c.contains(client)) {
            return Verdict::Send;
        }
        let Some(key) = self.key(client, response) else {
            return Verdict::Send;
        };
        let idx = (key & self.mask) as usize;
        let tag = key >> 40;
        let now = now_secs & 0xffff;
        let bucket = &self.table[idx];
        let mut old = bucket.load(Ordering::Relaxed);
        let limited = loop {
            let (otag, otime, otok) = (old >> 40, (old >> 24) & 0xffff, old & 0xff_ffff);
            let tokens = if otag != tag || old == 0 {
                self.rate
            } else {
                let elapsed = now.wrapping_sub(otime) & 0xffff;
                (otok + elapsed.saturating_mul(self.rate)).min(self.rate)
            };
            let (left, limited) = match tokens.checked_sub(1) {
                Some(l) => (l, false),
                None => (0, true),
            };
            let new = (tag << 40) | (now << 24) | left;
            match bucket.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break limited,
                Err(cur) => old = cur,
            }
        };
        if !limited {
            return Verdict::Send;
        }
        let n = self.limited.fetch_add(1, Ordering::Relaxed);
        if self.cfg.slip > 0 && n.is_multiple_of(self.cfg.slip as u64) {
            self.slipped.fetch_add(1, Ordering::Relaxed);
            Verdict::Slip
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        }
    }

    fn key(&self, client: IpAddr, r: &[u8]) -> Option<u64> {
        let (net, len) = match client {
            IpAddr::V4(v4) => (
                u128::from(u32::from(v4)) << 96,
                self.cfg.ipv4_prefix.min(32),
            ),
            IpAddr::V6(v6) => (u128::from(v6), self.cfg.ipv6_prefix.min(128)),
        };
        let net = if len == 0 {
            0
        } else {
            net & (u128::MAX << (128 - len as u32))
        };
        let rcode = r.get(3)? & 0x0f;
        let ancount = crate::wire::be16(r, 6)?;
        let (qname, qtype) = crate::wire::question(r).unwrap_or((&[], 0));
        let class = match rcode {
            0 if qtype == 255 => Class::Any,
            0 if ancount > 0 => Class::Positive,
            0 if r[2] & 0x04 != 0 => Class::NoData,
            0 => Class::Referral,
            3 => Class::NxDomain,
            _ => Class::Error,
        };
        let mut h = self.hasher.build_hasher();
        h.write_u128(net);
        h.write_u8(client.is_ipv6() as u8);
        h.write_u8(class as u8);
        if !matches!(class, Class::NxDomain | Class::Error) {
            let mut lower = [0u8; 255];
            let n = qname.len().min(255);
            for (d, s) in lower.iter_mut().zip(&qname[..n]) {
                *d = s.to_ascii_lowercase();
            }
            h.write(&lower[..n]);
        }
        Some(h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, rcode: u8, ancount: u16) -> Vec<u8> {
        let mut b = vec![0, 1, 0x84, rcode, 0, 1, 0, ancount as u8, 0, 0, 0, 0];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.extend_from_slice(&[0, 0, 1, 0, 1]);
        b
    }

    #[test]
    fn a_burst_is_limited_and_slipped_per_client_network() {
        let rrl = Rrl::new(RrlConfig {
            rate: 5,
            ..RrlConfig::default()
        })
        .unwrap();
        let a = answer("www.example.com", 0, 1);
        let c1: IpAddr = "192.0.2.1".parse().unwrap();
        let c1b: IpAddr = "192.0.2.200".parse().unwrap();
        let c2: IpAddr = "198.51.100.1".parse().unwrap();
        let v: Vec<Verdict> = (0..20).map(|_| rrl.check(c1, &a, 1000)).collect();
        assert!(v[..5].iter().all(|&x| x == Verdict::Send), "{v:?}");
        assert_eq!(v[5..].iter().filter(|&&x| x == Verdict::Slip).count(), 8);
        assert_eq!(v[5..].iter().filter(|&&x| x == Verdict::Drop).count(), 7);
        // The same /24 shares the bucket; another network does not.
        assert_ne!(rrl.check(c1b, &a, 1000), Verdict::Send);
        assert_eq!(rrl.check(c2, &a, 1000), Verdict::Send);
        // Another name is another bucket; NXDOMAIN for any name shares one.
        assert_eq!(
            rrl.check(c1, &answer("mail.example.com", 0, 1), 1000),
            Verdict::Send
        );
        // A second later the bucket has refilled.
        assert_eq!(rrl.check(c1, &a, 1001), Verdict::Send);
        let nx: Vec<Verdict> = (0..10)
            .map(|i| rrl.check(c1, &answer(&format!("n{i}.example.com"), 3, 0), 2000))
            .collect();
        assert!(nx[5..].iter().all(|&x| x != Verdict::Send), "{nx:?}");
    }

    #[test]
    fn exempt_clients_and_garbage_are_never_limited() {
        let rrl = Rrl::new(RrlConfig {
            rate: 1,
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
            ..RrlConfig::default()
        })
        .unwrap();
        let a = answer("www.example.com", 0, 1);
        for _ in 0..10 {
            assert_eq!(
                rrl.check("192.0.2.9".parse().unwrap(), &a, 5),
                Verdict::Send
            );
            assert_eq!(
                rrl.check("192.0.3.9".parse().unwrap(), &[1, 2], 5),
                Verdict::Send
            );
        }
        assert!(
            Rrl::new(RrlConfig {
                rate: 0,
                ..RrlConfig::default()
            })
            .is_none()
        );
    }
}
