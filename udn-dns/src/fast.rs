//! The fast path for the most common query of a GTM server: one A or AAAA question for
//! a GTM/CDN hostname, with or without EDNS(0) and Client Subnet. It parses and writes
//! the wire format directly (no `Message`), and gives up (`None`) on anything else, which
//! the general path then answers. A proptest checks both paths give the same answers.

use crate::authority::Authority;
use crate::responder::{Decider, GtmAnswer, PROXIED_OPTION, Shard};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use udn_core::{Cidr, ClientPrefix, Family, Query, Timestamp};

/// What the fast path needs from the request.
pub(crate) struct FastQuery<'a> {
    pub bytes: &'a [u8],
    pub client: IpAddr,
    pub now: Timestamp,
    /// UDP (size-limited) rather than TCP.
    pub udp: bool,
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Answers `q` into `out` if it is a plain GTM A/AAAA query; returns the decision.
pub(crate) fn answer(
    q: &FastQuery<'_>,
    auth: &Authority,
    decider: &dyn Decider,
    shard: Option<Shard<'_>>,
    max_udp: u16,
    out: &mut Vec<u8>,
) -> Option<GtmAnswer> {
    let b = q.bytes;
    // Header: a standard query with one question and at most one additional (OPT).
    if b.len() < 17 || b[2] & 0xf8 != 0 || be16(b, 4)? != 1 || be16(b, 6)? != 0 || be16(b, 8)? != 0
    {
        return None;
    }
    let arcount = be16(b, 10)?;
    if arcount > 1 {
        return None;
    }
    // The question name: plain labels, lower-cased into a stack buffer.
    let mut wire = [0u8; 256];
    let mut i = 12;
    let mut w = 0;
    loop {
        let len = *b.get(i)? as usize;
        if len > 63 || w + len + 1 > 255 {
            return None;
        }
        wire[w] = len as u8;
        w += 1;
        i += 1;
        if len == 0 {
            break;
        }
        let label = b.get(i..i + len)?;
        for (d, s) in wire[w..w + len].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        w += len;
        i += len;
    }
    let qtype = be16(b, i)?;
    let qclass = be16(b, i + 2)?;
    i += 4;
    let family = match qtype {
        1 => Family::V4,
        28 => Family::V6,
        _ => return None,
    };
    if qclass != 1 {
        return None;
    }
    let host = auth.gtm_by_wire(&wire[..w])?;
    let question_end = i;

    // EDNS(0).
    let mut edns = false;
    let mut limit = 512usize;
    let mut ecs: Option<Cidr> = None;
    let mut proxied = false;
    let mut proxied_for = None;
    let mut dnssec_ok = 0u8;
    if arcount == 1 {
        if *b.get(i)? != 0 || be16(b, i + 1)? != 41 {
            return None;
        }
        let payload = be16(b, i + 3)?;
        let version = *b.get(i + 6)?;
        if version != 0 {
            return None;
        }
        dnssec_ok = *b.get(i + 7)? & 0x80;
        let rdlen = be16(b, i + 9)? as usize;
        let mut o = i + 11;
        if o + rdlen != b.len() {
            return None;
        }
        while o < b.len() {
            let code = be16(b, o)?;
            let olen = be16(b, o + 2)? as usize;
            let data = b.get(o + 4..o + 4 + olen)?;
            match code {
                8 => {
                    if ecs.is_some() || data.len() < 4 {
                        return None;
                    }
                    let fam = be16(data, 0)?;
                    let source = data[2];
                    let addr_bytes = &data[4..];
                    if addr_bytes.len() != (source as usize).div_ceil(8) || data[3] != 0 {
                        return None;
                    }
                    let addr = match fam {
                        1 if source <= 32 => {
                            let mut a = [0u8; 4];
                            a[..addr_bytes.len()].copy_from_slice(addr_bytes);
                            IpAddr::V4(Ipv4Addr::from(a))
                        }
                        2 if source <= 128 => {
                            let mut a = [0u8; 16];
                            a[..addr_bytes.len()].copy_from_slice(addr_bytes);
                            IpAddr::V6(Ipv6Addr::from(a))
                        }
                        _ => return None,
                    };
                    let c = Cidr::new(addr, source);
                    if c.addr() != addr {
                        // Bits beyond the source prefix: FORMERR from the general path.
                        return None;
                    }
                    ecs = Some(c);
                }
                PROXIED_OPTION => {
                    proxied = true;
                    proxied_for = crate::responder::parse_proxied_payload(data);
                }
                _ => {}
            }
            o += 4 + olen;
        }
        edns = true;
        limit = payload.clamp(512, max_udp) as usize;
    } else if question_end != b.len() {
        return None;
    }
    if !q.udp {
        limit = u16::MAX as usize;
    }

    if let Some(shard) = shard
        && !proxied
    {
        let client_ip = ecs
            .filter(|c| !c.is_empty())
            .map(|c| c.addr())
            .unwrap_or(q.client);
        if shard(ClientPrefix::of(client_ip)).is_some() {
            return None;
        }
    }

    let query = Query {
        host,
        client: q.client,
        ecs,
        family,
        seed: be16(b, 0)? as u64,
    };
    let d = decider.decide(&query, q.now);
    if d.addrs.is_empty() {
        // NODATA needs the SOA: the general path writes it.
        return None;
    }

    out.clear();
    out.extend_from_slice(&b[..2]);
    // QR, AA, RD copied; CD copied; RA, AD clear; NOERROR.
    out.push(0x84 | (b[2] & 0x01));
    out.push(b[3] & 0x10);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(d.addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(edns as u16).to_be_bytes());
    out.extend_from_slice(&b[12..question_end]);
    for a in d.addrs.as_slice() {
        out.extend_from_slice(&[0xc0, 0x0c]);
        match a {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 1, 0, 1]);
                out.extend_from_slice(&d.ttl.to_be_bytes());
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 28, 0, 1]);
                out.extend_from_slice(&d.ttl.to_be_bytes());
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    if edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&max_udp.to_be_bytes());
        // Extended RCODE 0, version 0, the DO bit copied (RFC 3225).
        out.extend_from_slice(&[0, 0, dnssec_ok, 0]);
        match ecs {
            Some(c) => {
                let n = (c.len() as usize).div_ceil(8);
                let scope = if c.is_empty() { 0 } else { d.ecs_scope };
                out.extend_from_slice(&((8 + n) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 8]);
                out.extend_from_slice(&((4 + n) as u16).to_be_bytes());
                let (fam, bytes): (u16, [u8; 16]) = match c.addr() {
                    IpAddr::V4(v4) => {
                        let mut a = [0u8; 16];
                        a[..4].copy_from_slice(&v4.octets());
                        (1, a)
                    }
                    IpAddr::V6(v6) => (2, v6.octets()),
                };
                out.extend_from_slice(&fam.to_be_bytes());
                out.push(c.len());
                out.push(scope);
                out.extend_from_slice(&bytes[..n]);
            }
            None => out.extend_from_slice(&[0, 0]),
        }
    }
    if out.len() > limit {
        return None;
    }
    Some(GtmAnswer {
        host,
        family,
        client: q.client,
        ecs,
        proxied_for,
        decision: d,
    })
}
