//! The packets the latency methods send, built and parsed without I/O: ICMP echo and a
//! DNS query. Parsers take arbitrary bytes and never panic.
//!
//! # Examples
//!
//! ```
//! use udn_probe::wire::{dns_query, dns_reply_code, echo_request, parse_echo_reply};
//! let q = dns_query(0x1234, "example.com.").unwrap();
//! // A server that refuses still answers with our id: the path is timed.
//! let mut refused = q.clone();
//! refused[2] |= 0x80; // QR
//! refused[3] = (refused[3] & 0xf0) | 5; // REFUSED
//! assert_eq!(dns_reply_code(&refused, 0x1234), Some(5));
//! assert_eq!(dns_reply_code(&q, 0x1234), None, "a query is not a reply");
//!
//! let mut echo = echo_request(7, 1, b"udn");
//! echo[0] = 0; // type 0: echo reply
//! assert_eq!(parse_echo_reply(&echo, Some(7)), Some(1));
//! ```

use crate::Error;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::IpAddr;

/// A DNS query (`A`, recursion desired) for `name` with id `id`, in wire form.
pub fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, Error> {
    dns_query_type(id, name, RecordType::A)
}

/// A DNS query (recursion desired) for `name`'s `qtype` records with id `id`.
pub fn dns_query_type(id: u16, name: &str, qtype: RecordType) -> Result<Vec<u8>, Error> {
    let bad = |source| Error::BadDnsName {
        name: name.chars().take(255).collect(),
        source,
    };
    let n = Name::from_ascii(name).map_err(bad)?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n, qtype));
    m.to_vec().map_err(bad)
}

/// The response code of a DNS reply to query `id`, or `None` when `buf` is not such a
/// reply. Only the header is read, so any answer (REFUSED included) times the path.
pub fn dns_reply_code(buf: &[u8], id: u16) -> Option<u16> {
    if buf.len() < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id || buf[2] & 0x80 == 0 {
        return None;
    }
    Some(u16::from(buf[3] & 0x0f))
}

/// The response code of a full DNS message, parsed (for DNS service tests).
pub fn dns_message_code(buf: &[u8], id: u16) -> Option<u16> {
    let m = Message::from_vec(buf).ok()?;
    (m.metadata.id == id && m.metadata.message_type == MessageType::Response)
        .then(|| u16::from(m.metadata.response_code))
}

/// What a DNS reply to query `id` says about the name asked: its addresses (the A and
/// AAAA records of the answer section, in order, CNAME chains followed by the server),
/// or the server's error code (`Err(3)` for NXDOMAIN, `Err(5)` for REFUSED). `None` when
/// `buf` is not a reply to `id` (or does not parse). Never panics.
///
/// ```
/// use udn_probe::wire::{dns_query, dns_reply_addrs};
/// let q = dns_query(7, "www.example.").unwrap();
/// assert_eq!(dns_reply_addrs(&q, 7), None, "a query is not a reply");
/// let mut nx = q.clone();
/// nx[2] |= 0x80;
/// nx[3] = (nx[3] & 0xf0) | 3;
/// assert_eq!(dns_reply_addrs(&nx, 7), Some(Err(3)));
/// ```
pub fn dns_reply_addrs(buf: &[u8], id: u16) -> Option<Result<Vec<IpAddr>, u16>> {
    let m = Message::from_vec(buf).ok()?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return None;
    }
    let code = u16::from(m.metadata.response_code);
    if code != 0 {
        return Some(Err(code));
    }
    Some(Ok(m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()))
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMPv4 echo request with identifier `id`, sequence `seq` and `payload`.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let c = inet_checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The sequence number of an ICMPv4 echo reply. `buf` may start with an IPv4 header (a
/// raw socket delivers one; a datagram socket does not). With `want_id`, a reply with
/// another identifier is not ours (`None`); datagram sockets rewrite the identifier, so
/// they pass `None`.
pub fn parse_echo_reply(buf: &[u8], want_id: Option<u16>) -> Option<u16> {
    let icmp = match buf.first() {
        Some(v) if v >> 4 == 4 => {
            let ihl = usize::from(v & 0x0f) * 4;
            if ihl < 20 || buf.get(9) != Some(&1) {
                return None;
            }
            buf.get(ihl..)?
        }
        _ => buf,
    };
    if icmp.len() < 8 || icmp[0] != 0 || icmp[1] != 0 {
        return None;
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    if want_id.is_some_and(|w| w != id) {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn echo_checksum_verifies() {
        let p = echo_request(0xbeef, 42, b"hello udn");
        assert_eq!(
            inet_checksum(&p),
            0,
            "a packet with its checksum sums to zero"
        );
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        let mut reply = p.clone();
        reply[0] = 0;
        ip.extend_from_slice(&reply);
        assert_eq!(parse_echo_reply(&ip, Some(0xbeef)), Some(42));
        assert_eq!(parse_echo_reply(&ip, Some(1)), None);
        assert_eq!(parse_echo_reply(&p, None), None, "a request is not a reply");
    }

    #[test]
    fn dns_roundtrip_by_hickory() {
        let q = dns_query(77, "www.shop.udn.example.").unwrap();
        let m = Message::from_vec(&q).unwrap();
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.queries[0].name().to_ascii(), "www.shop.udn.example.");
        let mut r = Message::new(77, MessageType::Response, OpCode::Query);
        r.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        let rv = r.to_vec().unwrap();
        assert_eq!(dns_message_code(&rv, 77), Some(3));
        assert_eq!(dns_reply_code(&rv, 77), Some(3));
        assert_eq!(dns_message_code(&rv, 78), None);
        assert!(dns_query(1, &"a".repeat(70)).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(buf in prop::collection::vec(any::<u8>(), 0..128), id in any::<u16>()) {
            let _ = dns_reply_code(&buf, id);
            let _ = dns_message_code(&buf, id);
            let _ = dns_reply_addrs(&buf, id);
            let _ = parse_echo_reply(&buf, Some(id));
            let _ = parse_echo_reply(&buf, None);
        }

        #[test]
        fn reply_addresses_round_trip(
            id in any::<u16>(),
            v4 in prop::collection::vec(any::<[u8; 4]>(), 0..6),
            v6 in prop::collection::vec(any::<[u8; 16]>(), 0..3),
            cut in any::<usize>(),
        ) {
            use hickory_proto::rr::rdata::{A, AAAA, CNAME};
            use hickory_proto::rr::Record;
            let name = Name::from_ascii("www.example.").unwrap();
            let target = Name::from_ascii("edge.example.").unwrap();
            let mut m = Message::new(id, MessageType::Response, OpCode::Query);
            m.add_query(Query::query(name.clone(), RecordType::A));
            // A CNAME first, as a server following a chain answers; it is skipped.
            m.add_answer(Record::from_rdata(name, 60, RData::CNAME(CNAME(target.clone()))));
            let mut want = Vec::new();
            for o in &v4 {
                let ip = std::net::Ipv4Addr::from(*o);
                m.add_answer(Record::from_rdata(target.clone(), 60, RData::A(A(ip))));
                want.push(IpAddr::V4(ip));
            }
            for o in &v6 {
                let ip = std::net::Ipv6Addr::from(*o);
                m.add_answer(Record::from_rdata(target.clone(), 60, RData::AAAA(AAAA(ip))));
                want.push(IpAddr::V6(ip));
            }
            let bytes = m.to_vec().unwrap();
            prop_assert_eq!(dns_reply_addrs(&bytes, id), Some(Ok(want)));
            prop_assert_eq!(dns_reply_addrs(&bytes, id.wrapping_add(1)), None);
            // A truncated reply never panics and never invents an address.
            let short = &bytes[..cut % (bytes.len() + 1)];
            if let Some(Ok(addrs)) = dns_reply_addrs(short, id) {
                prop_assert!(addrs.len() <= v4.len() + v6.len());
            }
        }
    }
}
