//! DNS Cookies (RFC 7873) with interoperable server cookies (RFC 9018), and the other
//! EDNS options the server adds to responses: NSID (RFC 5001).
//!
//! The server handles both around the responder: before it, the COOKIE option is read
//! and taken out of the query (so the answer, its cache entry and the fast path are the
//! same with or without a cookie); after it, the options are appended to the
//! response's OPT record:
//!
//! * no COOKIE option: nothing happens;
//! * a malformed one (not 8 or 16 to 40 bytes): FORMERR (RFC 7873 section 5.2.2);
//! * a client cookie alone, or with a valid server cookie: the normal answer with the
//!   client cookie and a fresh server cookie (a query without a question, the way to
//!   ask only for a cookie, gets NOERROR and the cookie);
//! * a client cookie with a server cookie that is not valid (wrong hash, another
//!   secret, older than an hour or more than 5 minutes ahead): over UDP, BADCOOKIE
//!   with a fresh server cookie and no answer (the client retries with it); over TCP,
//!   the normal answer with a fresh server cookie.
//!
//! A query with a valid server cookie proves the client receives at its address, so
//! the server exempts it from response rate limiting.
//!
//! Server cookie (RFC 9018): version 1, three reserved bytes, a 32-bit timestamp and
//! SipHash-2-4 (keyed with the 16-byte secret) of client cookie | version | reserved |
//! timestamp | client address. Servers sharing the secret accept each other's cookies.

use crate::wire;
use std::net::IpAddr;

/// The 16-byte server secret.
#[derive(Clone)]
pub struct CookieSecret([u8; 16]);

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret(..)")
    }
}

impl CookieSecret {
    /// A secret of these bytes.
    pub fn new(bytes: [u8; 16]) -> Self {
        CookieSecret(bytes)
    }

    /// A random secret from the operating system.
    pub fn generate() -> std::io::Result<Self> {
        use std::io::Read;
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(CookieSecret(b))
    }

    /// Parses 32 hexadecimal digits (surrounding white space ignored), the format of a
    /// secret file.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.len() != 32 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err("a cookie secret is 32 hexadecimal digits (16 bytes)".into());
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(CookieSecret(b))
    }

    /// The RFC 9018 server cookie for `client_cookie` from `ip` at `ts` (Unix seconds).
    pub fn server_cookie(&self, client_cookie: &[u8; 8], ip: IpAddr, ts: u32) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0] = 1;
        out[4..8].copy_from_slice(&ts.to_be_bytes());
        #[allow(deprecated)] // std's SipHasher is SipHash-2-4, the function RFC 9018 names
        let mut h = std::hash::SipHasher::new_with_keys(
            u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(self.0[8..].try_into().unwrap_or_default()),
        );
        let mut msg = [0u8; 8 + 8 + 16];
        msg[..8].copy_from_slice(client_cookie);
        msg[8..16].copy_from_slice(&out[..8]);
        let n = match ip {
            IpAddr::V4(v4) => {
                msg[16..20].copy_from_slice(&v4.octets());
                20
            }
            IpAddr::V6(v6) => {
                msg[16..32].copy_from_slice(&v6.octets());
                32
            }
        };
        std::hash::Hasher::write(&mut h, &msg[..n]);
        out[8..].copy_from_slice(&std::hash::Hasher::finish(&h).to_le_bytes());
        out
    }

    /// Whether `server` is a valid server cookie of ours for `client_cookie` and `ip`
    /// at `now` (Unix seconds): made in the last hour and at most 5 minutes ahead.
    pub fn valid(&self, client_cookie: &[u8; 8], server: &[u8], ip: IpAddr, now: u64) -> bool {
        if server.len() != 16 || server[0] != 1 {
            return false;
        }
        let ts = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
        // Serial-number arithmetic on the 32-bit timestamp (RFC 9018 section 4.3).
        let age = (now as u32).wrapping_sub(ts) as i32;
        if !(-300..=3600).contains(&age) {
            return false;
        }
        let expect = self.server_cookie(client_cookie, ip, ts);
        // Compare without an early exit.
        expect.iter().zip(server).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// The EDNS options this server adds: cookies and NSID.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Answer DNS Cookies with this secret (`None`: cookies ignored).
    pub cookies: Option<CookieSecret>,
    /// The NSID payload sent to clients that ask for it (`None`: NSID off).
    pub nsid: Option<Vec<u8>>,
}

/// What [`Extras::pre`] found in a query.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    client_cookie: Option<[u8; 8]>,
    /// The query carried a valid server cookie.
    pub valid_cookie: bool,
    nsid: bool,
    payload: u16,
}

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pre {
    /// Answer the query as received.
    AsIs,
    /// Answer the rewritten query (the cookie taken out) left in the scratch buffer.
    Rewritten,
    /// Send the reply left in the scratch buffer (FORMERR or BADCOOKIE).
    Reply,
}

const COOKIE: u16 = 10;
const NSID: u16 = 3;

impl Extras {
    /// Whether anything is on.
    pub fn any(&self) -> bool {
        self.cookies.is_some() || self.nsid.is_some()
    }

    /// Reads the options of `query` from `ip` at `now` (Unix seconds); see the module
    /// documentation. `scratch` receives the rewritten query or the reply.
    pub(crate) fn pre(
        &self,
        query: &[u8],
        ip: IpAddr,
        udp: bool,
        now: u64,
        scratch: &mut Vec<u8>,
    ) -> (Seen, Pre) {
        let mut seen = Seen::default();
        if !self.any() || query.len() < 12 || crate::wire::be16(query, 10) == Some(0) {
            return (seen, Pre::AsIs);
        }
        let Some(opt) = wire::find_opt(query) else {
            return (seen, Pre::AsIs);
        };
        seen.payload = opt.payload(query);
        let mut cookie_at = None;
        for (code, data, at) in opt.options(query) {
            match code {
                NSID if data.is_empty() => seen.nsid = self.nsid.is_some(),
                COOKIE if self.cookies.is_some() && cookie_at.is_none() => {
                    cookie_at = Some((at, data));
                }
                _ => {}
            }
        }
        let (Some(secret), Some((at, data))) = (&self.cookies, cookie_at) else {
            return (seen, Pre::AsIs);
        };
        if !(data.len() == 8 || (16..=40).contains(&data.len())) {
            if error_reply(query, opt, 1, None, scratch).is_none() {
                scratch.clear();
            }
            return (seen, Pre::Reply);
        }
        let mut cc = [0u8; 8];
        cc.copy_from_slice(&data[..8]);
        seen.client_cookie = Some(cc);
        if data.len() > 8 {
            seen.valid_cookie = secret.valid(&cc, &data[8..], ip, now);
            if !seen.valid_cookie && udp {
                let fresh = secret.server_cookie(&cc, ip, now as u32);
                let mut opt_data = Vec::with_capacity(28);
                push_cookie(&mut opt_data, &cc, &fresh);
                if error_reply(query, opt, 23, Some(&opt_data), scratch).is_none() {
                    scratch.clear();
                }
                return (seen, Pre::Reply);
            }
        }
        // A query with no question asks only for a server cookie (RFC 7873 5.4).
        if wire::be16(query, 4) == Some(0) {
            let fresh = secret.server_cookie(&cc, ip, now as u32);
            let mut opt_data = Vec::with_capacity(28);
            push_cookie(&mut opt_data, &cc, &fresh);
            if error_reply(query, opt, 0, Some(&opt_data), scratch).is_none() {
                scratch.clear();
            }
            return (seen, Pre::Reply);
        }
        // Take the option out of the query.
        scratch.clear();
        scratch.extend_from_slice(&query[..at]);
        scratch.extend_from_slice(&query[at + 4 + data.len()..]);
        let rdlen = (opt.end - opt.rdata - 4 - data.len()) as u16;
        scratch[opt.rdata - 2..opt.rdata].copy_from_slice(&rdlen.to_be_bytes());
        (seen, Pre::Rewritten)
    }

    /// Adds the options `seen` calls for to `resp`'s OPT record (and truncates it if it
    /// then exceeds the client's UDP size).
    pub(crate) fn post(&self, seen: &Seen, resp: &mut Vec<u8>, ip: IpAddr, udp: bool, now: u64) {
        let mut add = Vec::new();
        if let (Some(secret), Some(cc)) = (&self.cookies, &seen.client_cookie) {
            push_cookie(&mut add, cc, &secret.server_cookie(cc, ip, now as u32));
        }
        if let (true, Some(nsid)) = (seen.nsid, &self.nsid) {
            add.extend_from_slice(&NSID.to_be_bytes());
            add.extend_from_slice(&(nsid.len() as u16).to_be_bytes());
            add.extend_from_slice(nsid);
        }
        if add.is_empty() {
            return;
        }
        let Some(opt) = wire::find_opt(resp) else {
            return;
        };
        let rdlen = opt.end - opt.rdata + add.len();
        let Ok(rdlen16) = u16::try_from(rdlen) else {
            return;
        };
        resp[opt.rdata - 2..opt.rdata].copy_from_slice(&rdlen16.to_be_bytes());
        resp.splice(opt.end..opt.end, add.iter().copied());
        let limit = if udp {
            seen.payload.clamp(512, crate::MAX_UDP_PAYLOAD) as usize
        } else {
            u16::MAX as usize
        };
        if resp.len() > limit {
            let opt_bytes = resp[opt.start..opt.end + add.len()].to_vec();
            let mut out = Vec::with_capacity(512);
            if wire::truncated(resp, Some(&opt_bytes), &mut out).is_some() && out.len() <= limit {
                *resp = out;
            }
        }
    }
}

fn push_cookie(out: &mut Vec<u8>, cc: &[u8; 8], sc: &[u8; 16]) {
    out.extend_from_slice(&COOKIE.to_be_bytes());
    out.extend_from_slice(&24u16.to_be_bytes());
    out.extend_from_slice(cc);
    out.extend_from_slice(sc);
}

/// An error reply to `query` with extended response code `rcode`, its question and an
/// OPT record holding `options`.
fn error_reply(
    query: &[u8],
    opt: wire::Opt,
    rcode: u16,
    options: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Option<()> {
    let q = wire::question_end(query)?;
    out.clear();
    out.extend_from_slice(query.get(..q)?);
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = (rcode & 0x0f) as u8;
    out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 1]);
    let opts = options.unwrap_or(&[]);
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&crate::MAX_UDP_PAYLOAD.to_be_bytes());
    // Extended RCODE (upper 8 bits), version 0, the DO bit copied.
    out.push((rcode >> 4) as u8);
    out.push(0);
    out.push(query.get(opt.start + 7)? & 0x80);
    out.push(0);
    out.extend_from_slice(&(opts.len() as u16).to_be_bytes());
    out.extend_from_slice(opts);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9018 appendix A.1 (the first exchange).
    #[test]
    fn server_cookies_match_rfc_9018_test_vectors() {
        let secret = CookieSecret::from_hex("e5e973e5a6b2a43f48e7dc849e37bfcf").unwrap();
        let cc: [u8; 8] = hex("2464c4abcf10c957").try_into().unwrap();
        let ip: IpAddr = "198.51.100.100".parse().unwrap();
        let sc = secret.server_cookie(&cc, ip, 1559731985);
        assert_eq!(sc.to_vec(), hex("010000005cf79f111f8130c3eee29480"));
        assert!(secret.valid(&cc, &sc, ip, 1559731985 + 100));
        assert!(!secret.valid(&cc, &sc, ip, 1559731985 + 3601));
        assert!(!secret.valid(&cc, &sc, "198.51.100.101".parse().unwrap(), 1559731985));
        let ip6: IpAddr = "2001:db8:220:1:59de:d0f4:8769:82b8".parse().unwrap();
        let sc6 = secret.server_cookie(&cc, ip6, 1559741817);
        assert!(secret.valid(&cc, &sc6, ip6, 1559741817));
        assert!(!secret.valid(&cc, &sc6, ip, 1559741817));
        assert!(CookieSecret::from_hex("xyz").is_err());
    }
}
