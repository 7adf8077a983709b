//! The pure responder: query bytes in, response bytes out.
//!
//! [`Responder::respond`] takes the query, the client's address, the transport and
//! `now`, reads the [`Authority`] and asks a [`Decider`] for GTM and CDN answers. It owns
//! no socket and reads no clock; it reuses one output buffer across queries.

use crate::authority::{Authority, Zone};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use std::collections::HashMap;
use std::net::IpAddr;
use udn_core::{Cidr, ClientPrefix, Decision, Engine, Family, HostId, Query, Timestamp};

/// The UDP payload size this server advertises and never exceeds (DNS Flag Day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The EDNS option code (from the local/experimental range, RFC 6891) a UDN server puts
/// on a query it forwards to the owning peer, so the peer answers itself and never
/// forwards again.
pub const PROXIED_OPTION: u16 = 65_001;

/// How many CNAMEs inside our zones are followed.
const MAX_CHAIN: usize = 8;

/// The transport a query came over: UDP answers are size-limited and may be truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (length-prefixed).
    Tcp,
}

/// One query to answer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The DNS message as received.
    pub bytes: &'a [u8],
    /// The address it came from (a resolver).
    pub client: IpAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The current time.
    pub now: Timestamp,
}

/// Where GTM and CDN answers come from. [`Engine`] implements it; a server implements
/// it over its shared state.
pub trait Decider {
    /// The decision for `q` at `now` (see [`udn_core::decide()`]).
    fn decide(&self, q: &Query, now: Timestamp) -> Decision;
}

impl Decider for Engine {
    fn decide(&self, q: &Query, now: Timestamp) -> Decision {
        Engine::decide(self, q, now)
    }
}

/// A GTM or CDN decision made for a query: what the server logs, which persistence entry
/// it records and which latency measurements it asks the probes for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtmAnswer {
    /// The hostname decided.
    pub host: HostId,
    /// A or AAAA.
    pub family: Family,
    /// The query's source address.
    pub client: IpAddr,
    /// The EDNS Client Subnet of the query, if any.
    pub ecs: Option<Cidr>,
    /// For a query a peer proxied here: the resolver that sent it to the peer, and
    /// whether the ECS is that resolver's own (else the peer added it). Claimed by the
    /// sender: the observer believes it only from a configured peer's address.
    pub proxied_for: Option<(IpAddr, bool)>,
    /// The decision.
    pub decision: Decision,
}

/// The payload of the proxied marker ([`PROXIED_OPTION`]): the address of the resolver
/// that asked (4 or 16 bytes), then 1 if the ECS is that resolver's own, else 0.
pub fn proxied_payload(resolver: IpAddr, own_ecs: bool) -> Vec<u8> {
    let mut v = match resolver {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.push(own_ecs as u8);
    v
}

/// Reads a [`proxied_payload`]; `None` for any other length (an empty marker included).
pub fn parse_proxied_payload(data: &[u8]) -> Option<(IpAddr, bool)> {
    let (addr, flag) = data.split_last().map(|(f, a)| (a, *f))?;
    let ip = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    (flag <= 1).then_some((ip, flag == 1))
}

/// A response ready to send.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The response message.
    pub bytes: &'a [u8],
    /// Its response code.
    pub rcode: ResponseCode,
    /// Whether it was truncated (TC) to fit the client's UDP size.
    pub truncated: bool,
    /// The decision, if the query was for a GTM or CDN hostname.
    pub gtm: Option<GtmAnswer>,
}

/// What to do with a query.
#[derive(Debug)]
#[must_use]
// Returned once per query by value; boxing the decision would allocate on every answer.
#[allow(clippy::large_enum_variant)]
pub enum Outcome<'a> {
    /// Send this response.
    Reply(Reply<'a>),
    /// The client prefix belongs to another DNS server: send `query` (the original with
    /// the client's subnet and the proxied marker added) to peer `peer`, relay its answer
    /// with [`Responder::relay`], or answer locally on timeout.
    Forward {
        /// Index of the owning peer (as the shard function returned it).
        peer: usize,
        /// The query to send to it.
        query: &'a [u8],
    },
    /// Send nothing (not a query, or too short to answer).
    Drop,
}

/// Decides which peer owns a client prefix: `Some(i)` when peer `i`, not this server,
/// should answer for it.
pub type Shard<'a> = &'a dyn Fn(ClientPrefix) -> Option<usize>;

/// The responder. Keep one per thread or task: it reuses its buffers.
///
/// # Examples
///
/// ```
/// use std::{collections::HashMap, sync::Arc};
/// use hickory_proto::op::{Message, Query};
/// use hickory_proto::rr::{Name, RecordType};
/// use udn_core::{Config, Engine, Timestamp, config::SAMPLE};
/// use udn_dns::{Authority, Outcome, Request, Responder, Transport};
///
/// let net = Arc::new(Config::from_toml(SAMPLE)?.compile()?);
/// let auth = Authority::new(net.clone(), &HashMap::new())?;
/// let engine = Engine::new(net);
/// let mut q = Message::query();
/// q.add_query(Query::query(Name::from_ascii("www.shop.udn.example.")?, RecordType::A));
/// let bytes = q.to_vec()?;
/// let mut r = Responder::new();
/// let req = Request {
///     bytes: &bytes,
///     client: "192.0.2.1".parse()?,
///     transport: Transport::Udp,
///     now: Timestamp::from_secs(1_700_000_000),
/// };
/// let Outcome::Reply(reply) = r.respond(&req, &auth, &engine, None) else { panic!() };
/// let m = Message::from_vec(reply.bytes)?;
/// assert!(m.authoritative);
/// assert_eq!(m.answers.len(), 1);
/// assert!(reply.gtm.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Responder {
    buf: Vec<u8>,
    max_udp: u16,
    /// Answers that depend only on the query bytes and the authority (everything but
    /// GTM/CDN decisions and forwards), keyed by transport + the query without its id.
    cache: HashMap<Vec<u8>, Cached>,
    cache_generation: u64,
    /// Bytes the cache holds (see [`CACHE_ENTRY_OVERHEAD`]) and may hold.
    cache_bytes: usize,
    cache_budget: usize,
    key: Vec<u8>,
}

#[derive(Debug)]
struct Cached {
    bytes: Vec<u8>,
    rcode: ResponseCode,
    truncated: bool,
}

/// What one cached answer costs besides its key and answer bytes: the hash-table slot
/// (two `Vec` headers, the response code, the control byte, with the table's load
/// factor and growth slack) and the allocator's overhead of the two heap blocks.
pub const CACHE_ENTRY_OVERHEAD: usize = 192;

/// The answer-cache budget of a [`Responder::new`], bytes.
pub const DEFAULT_CACHE_BYTES: usize = 4 << 20;

impl Default for Responder {
    fn default() -> Self {
        Self::new()
    }
}

/// What the lookup found.
struct Found {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    gtm: Option<GtmAnswer>,
}

impl Responder {
    /// A responder advertising [`MAX_UDP_PAYLOAD`].
    pub fn new() -> Self {
        Responder {
            buf: Vec::with_capacity(4096),
            max_udp: MAX_UDP_PAYLOAD,
            cache: HashMap::new(),
            cache_generation: 0,
            cache_bytes: 0,
            cache_budget: DEFAULT_CACHE_BYTES,
            key: Vec::with_capacity(512),
        }
    }

    /// A responder whose answer cache holds at most `bytes` (key + answer +
    /// [`CACHE_ENTRY_OVERHEAD`] per entry; 0: no cache). When an answer would not fit,
    /// the cache is emptied first.
    pub fn with_cache_bytes(bytes: usize) -> Self {
        Responder {
            cache_budget: bytes,
            ..Self::new()
        }
    }

    /// Bytes the answer cache holds now (as counted against its budget).
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// A responder with a different UDP payload cap (at least 512).
    pub fn with_max_udp(max_udp: u16) -> Self {
        Responder {
            max_udp: max_udp.max(512),
            ..Self::new()
        }
    }

    /// Answers one query. Never panics on any input.
    ///
    /// Answers that do not depend on the client or the engine's state (static records and
    /// negative answers, never errors) are cached per responder within its byte budget,
    /// keyed by the exact query bytes (case included) apart from the id, and dropped when
    /// `auth` is replaced.
    pub fn respond<'s>(
        &'s mut self,
        req: &Request<'_>,
        auth: &Authority,
        decider: &dyn Decider,
        shard: Option<Shard<'_>>,
    ) -> Outcome<'s> {
        let q = req.bytes;
        if q.len() < 12 || q[2] & 0x80 != 0 {
            return Outcome::Drop;
        }
        let fq = crate::fast::FastQuery {
            bytes: q,
            client: req.client,
            now: req.now,
            udp: req.transport == Transport::Udp,
        };
        if let Some(g) = crate::fast::answer(&fq, auth, decider, shard, self.max_udp, &mut self.buf)
        {
            return Outcome::Reply(Reply {
                bytes: &self.buf,
                rcode: ResponseCode::NoError,
                truncated: false,
                gtm: Some(g),
            });
        }
        if self.cache_generation != auth.generation() {
            self.cache.clear();
            self.cache_bytes = 0;
            self.cache_generation = auth.generation();
        }
        self.key.clear();
        self.key.push(req.transport as u8);
        self.key.extend_from_slice(&q[2..]);
        if let Some(c) = self.cache.get(self.key.as_slice()) {
            self.buf.clear();
            self.buf.extend_from_slice(&c.bytes);
            self.buf[..2].copy_from_slice(&q[..2]);
            return Outcome::Reply(Reply {
                bytes: &self.buf,
                rcode: c.rcode,
                truncated: c.truncated,
                gtm: None,
            });
        }
        // The answer (or forwarded query) is in `self.buf`; keep what the outcome says.
        let kind = match self.respond_uncached(req, auth, decider, shard) {
            Outcome::Reply(r) => Ok((r.rcode, r.truncated, r.gtm)),
            Outcome::Forward { peer, .. } => Err(Some(peer)),
            Outcome::Drop => Err(None),
        };
        match kind {
            Ok((rcode, truncated, gtm)) => {
                // Only answers from the data are cached: no error answer (FORMERR,
                // SERVFAIL, REFUSED, NOTIMP, BADVERS to garbage or strangers' names).
                let cost = self.key.len() + self.buf.len() + CACHE_ENTRY_OVERHEAD;
                if gtm.is_none()
                    && matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain)
                    && cost <= self.cache_budget
                {
                    if self.cache_bytes + cost > self.cache_budget {
                        self.cache.clear();
                        self.cache_bytes = 0;
                    }
                    self.cache_bytes += cost;
                    self.cache.insert(
                        self.key.clone(),
                        Cached {
                            bytes: self.buf.clone(),
                            rcode,
                            truncated,
                        },
                    );
                }
                Outcome::Reply(Reply {
                    bytes: &self.buf,
                    rcode,
                    truncated,
                    gtm,
                })
            }
            Err(Some(peer)) => Outcome::Forward {
                peer,
                query: &self.buf,
            },
            Err(None) => Outcome::Drop,
        }
    }

    /// Answers through the general path only (no fast path, no cache): the reference
    /// the fast path is tested against.
    #[doc(hidden)]
    pub fn respond_general<'s>(
        &'s mut self,
        req: &Request<'_>,
        auth: &Authority,
        decider: &dyn Decider,
        shard: Option<Shard<'_>>,
    ) -> Outcome<'s> {
        let q = req.bytes;
        if q.len() < 12 || q[2] & 0x80 != 0 {
            return Outcome::Drop;
        }
        self.respond_uncached(req, auth, decider, shard)
    }

    fn respond_uncached<'s>(
        &'s mut self,
        req: &Request<'_>,
        auth: &Authority,
        decider: &dyn Decider,
        shard: Option<Shard<'_>>,
    ) -> Outcome<'s> {
        let q = req.bytes;
        let msg = match Message::from_vec(q) {
            Ok(m) => m,
            Err(_) => return self.header_only(q, ResponseCode::FormErr),
        };
        if msg.op_code != OpCode::Query {
            return self.header_only(q, ResponseCode::NotImp);
        }
        let mut resp = Message::new(msg.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = msg.recursion_desired;
        resp.metadata.checking_disabled = msg.checking_disabled;
        resp.queries = msg.queries.clone();

        // EDNS(0).
        let mut limit: usize = match req.transport {
            Transport::Udp => 512,
            Transport::Tcp => u16::MAX as usize,
        };
        let mut ecs: Option<Cidr> = None;
        let mut proxied = false;
        let mut proxied_for = None;
        if let Some(e) = &msg.edns {
            let mut out = Edns::new();
            out.set_max_payload(self.max_udp);
            out.set_version(0);
            // RFC 3225: the DO bit is copied into the response.
            out.set_dnssec_ok(e.flags().dnssec_ok);
            if e.version() != 0 {
                resp.edns = Some(out);
                resp.metadata.response_code = ResponseCode::BADVERS;
                return self.finish(resp, limit, None);
            }
            if req.transport == Transport::Udp {
                limit = e.max_payload().clamp(512, self.max_udp) as usize;
            }
            if let Some(EdnsOption::Subnet(cs)) = e.option(EdnsCode::Subnet) {
                let max = if cs.addr().is_ipv4() { 32 } else { 128 };
                // A source prefix beyond the family's length, or address bits set beyond
                // the source prefix: FORMERR (RFC 7871 7.1.2), never silently masked.
                if cs.source_prefix() > max
                    || Cidr::new(cs.addr(), cs.source_prefix()).addr() != cs.addr()
                {
                    resp.edns = Some(out);
                    resp.metadata.response_code = ResponseCode::FormErr;
                    return self.finish(resp, limit, None);
                }
                ecs = Some(Cidr::new(cs.addr(), cs.source_prefix()));
            }
            if let Some(o) = e.option(EdnsCode::Unknown(PROXIED_OPTION)) {
                proxied = true;
                if let EdnsOption::Unknown(_, data) = o {
                    proxied_for = parse_proxied_payload(data);
                }
            }
            resp.edns = Some(out);
        }

        if msg.queries.len() != 1 {
            resp.metadata.response_code = ResponseCode::FormErr;
            return self.finish(resp, limit, ecs.map(|c| (c, 0)));
        }
        let question = &msg.queries[0];
        let qtype = question.query_type();
        if matches!(qtype, RecordType::OPT | RecordType::TSIG) {
            resp.metadata.response_code = ResponseCode::FormErr;
            return self.finish(resp, limit, ecs.map(|c| (c, 0)));
        }
        if question.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            resp.metadata.response_code = ResponseCode::Refused;
            return self.finish(resp, limit, ecs.map(|c| (c, 0)));
        }
        let qname = question.name();
        let Some(zone) = auth.zone_for(qname) else {
            resp.metadata.response_code = ResponseCode::Refused;
            return self.finish(resp, limit, ecs.map(|c| (c, 0)));
        };

        // Peer proxying: only GTM/CDN decisions depend on the client.
        if let Some(shard) = shard
            && !proxied
            && matches!(qtype, RecordType::A | RecordType::AAAA)
            && zone.nodes.get(qname).is_some_and(|n| n.host.is_some())
        {
            // An ECS source prefix of 0 carries no client information.
            let client_ip = ecs
                .filter(|c| !c.is_empty())
                .map(|c| c.addr())
                .unwrap_or(req.client);
            if let Some(peer) = shard(ClientPrefix::of(client_ip)) {
                return self.forward(msg, req.client, ecs, peer);
            }
        }

        let family_ecs = ecs;
        let found = lookup(zone, auth, qname, qtype, req, family_ecs, decider, msg.id);
        resp.metadata.response_code = found.rcode;
        resp.metadata.authoritative = found.authoritative;
        resp.answers = found.answers;
        resp.authorities = found.authorities;
        resp.additionals = found.additionals;
        let scope = found.gtm.map(|g| g.decision.ecs_scope).unwrap_or(0);
        let gtm = found.gtm.map(|g| GtmAnswer { proxied_for, ..g });
        match self.finish(resp, limit, ecs.map(|c| (c, scope))) {
            Outcome::Reply(mut r) => {
                r.gtm = gtm;
                Outcome::Reply(r)
            }
            o => o,
        }
    }

    /// Builds the query forwarded to the owning peer.
    fn forward<'s>(
        &'s mut self,
        mut msg: Message,
        client: IpAddr,
        ecs: Option<Cidr>,
        peer: usize,
    ) -> Outcome<'s> {
        let own_ecs = ecs.is_some_and(|c| !c.is_empty());
        let subnet = match ecs.filter(|c| !c.is_empty()) {
            Some(c) => ClientSubnet::new(c.addr(), c.len(), 0),
            None => {
                let p = ClientPrefix::of(client).network();
                ClientSubnet::new(p.addr(), p.len(), 0)
            }
        };
        let mut edns = msg.edns.take().unwrap_or_else(|| {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP_PAYLOAD);
            e
        });
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
        // The owner measures the resolver that asked, so the marker names it.
        edns.options_mut().insert(EdnsOption::Unknown(
            PROXIED_OPTION,
            proxied_payload(client, own_ecs),
        ));
        msg.edns = Some(edns);
        self.buf.clear();
        let mut enc = BinEncoder::new(&mut self.buf);
        if msg.emit(&mut enc).is_err() {
            return Outcome::Drop;
        }
        Outcome::Forward {
            peer,
            query: &self.buf,
        }
    }

    /// Turns a peer's answer to a forwarded query into the answer to the client's
    /// `original` query: the client's id and question (with its case), its EDNS (no
    /// Client Subnet unless it sent one, no proxied marker) and its UDP size limit.
    /// `None` if the peer's answer does not belong to the query (then answer locally).
    pub fn relay(&mut self, original: &[u8], answer: &[u8], transport: Transport) -> Option<&[u8]> {
        let orig = Message::from_vec(original).ok()?;
        let mut ans = Message::from_vec(answer).ok()?;
        if ans.message_type != MessageType::Response
            || ans.id != orig.id
            || ans.queries.len() != 1
            || orig.queries.len() != 1
            || ans.queries[0] != orig.queries[0]
        {
            return None;
        }
        ans.queries = orig.queries.clone();
        let mut limit = match transport {
            Transport::Udp => 512,
            Transport::Tcp => u16::MAX as usize,
        };
        let mut ecs = None;
        let peer_edns = ans.edns.take();
        if let Some(oe) = &orig.edns {
            if transport == Transport::Udp {
                limit = oe.max_payload().clamp(512, self.max_udp) as usize;
            }
            if let Some(EdnsOption::Subnet(cs)) = oe.option(EdnsCode::Subnet) {
                let scope = peer_edns
                    .as_ref()
                    .and_then(|pe| match pe.option(EdnsCode::Subnet) {
                        Some(EdnsOption::Subnet(ps)) => Some(ps.scope_prefix()),
                        _ => None,
                    })
                    .unwrap_or(0);
                ecs = Some((Cidr::new(cs.addr(), cs.source_prefix()), scope));
            }
            let mut e = Edns::new();
            e.set_max_payload(self.max_udp);
            e.set_dnssec_ok(oe.flags().dnssec_ok);
            ans.edns = Some(e);
        }
        match self.finish(ans, limit, ecs) {
            Outcome::Reply(r) => Some(r.bytes),
            _ => None,
        }
    }

    /// A reply with only the header of `q` (id, opcode, RD) and `rcode`.
    fn header_only<'s>(&'s mut self, q: &[u8], rcode: ResponseCode) -> Outcome<'s> {
        self.buf.clear();
        self.buf.extend_from_slice(&q[..2]);
        // QR, the query's opcode and RD; RCODE.
        self.buf.push(0x80 | (q[2] & 0x79));
        self.buf.push(rcode.low() & 0x0f);
        self.buf.extend_from_slice(&[0; 8]);
        Outcome::Reply(Reply {
            bytes: &self.buf,
            rcode,
            truncated: false,
            gtm: None,
        })
    }

    /// Encodes `resp`, echoing ECS with `scope`, truncating to `limit` if needed.
    fn finish<'s>(
        &'s mut self,
        mut resp: Message,
        limit: usize,
        ecs: Option<(Cidr, u8)>,
    ) -> Outcome<'s> {
        if let (Some(e), Some((c, scope))) = (resp.edns.as_mut(), ecs) {
            let scope = if c.is_empty() { 0 } else { scope };
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                c.addr(),
                c.len(),
                scope,
            )));
        }
        let rcode = resp.response_code;
        self.buf.clear();
        let ok = {
            let mut enc = BinEncoder::new(&mut self.buf);
            resp.emit(&mut enc).is_ok()
        };
        let mut truncated = false;
        if !ok || self.buf.len() > limit {
            if ok {
                truncated = true;
                resp.metadata.truncation = true;
            } else {
                resp.metadata.response_code = ResponseCode::ServFail;
            }
            resp.answers.clear();
            resp.authorities.clear();
            resp.additionals.clear();
            self.buf.clear();
            let mut enc = BinEncoder::new(&mut self.buf);
            if resp.emit(&mut enc).is_err() || self.buf.len() > limit {
                return Outcome::Drop;
            }
        }
        Outcome::Reply(Reply {
            bytes: &self.buf,
            rcode: resp.response_code,
            truncated: truncated && rcode == resp.response_code,
            gtm: None,
        })
    }
}

fn with_name(r: &Record, name: &Name) -> Record {
    let mut r = r.clone();
    r.name = name.clone();
    r
}

/// Resolves `qname`/`qtype` inside `zone`, following CNAMEs within our zones.
#[allow(clippy::too_many_arguments)]
fn lookup(
    zone: &Zone,
    auth: &Authority,
    qname: &Name,
    qtype: RecordType,
    req: &Request<'_>,
    ecs: Option<Cidr>,
    decider: &dyn Decider,
    id: u16,
) -> Found {
    let mut f = Found {
        rcode: ResponseCode::NoError,
        authoritative: true,
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
        gtm: None,
    };
    let mut zone = zone;
    let mut name = qname.clone();
    for _ in 0..MAX_CHAIN {
        // A delegation above (or at) the name: refer.
        if zone.has_cuts
            && let Some(ns) = find_cut(zone, &name, qtype == RecordType::DS)
        {
            if f.answers.is_empty() {
                f.authoritative = false;
            }
            f.authorities.extend(ns.iter().cloned());
            add_glue(zone, ns, &mut f.additionals);
            return f;
        }
        let node = match zone.nodes.get(&name) {
            Some(n) => Some(n),
            None if zone.has_wildcards => wildcard(zone, &name),
            None => None,
        };
        let Some(node) = node else {
            // RFC 6672: below a DNAME, the DNAME and a CNAME synthesized from it.
            if zone.has_dnames
                && let Some((dname, target)) = find_dname(zone, &name)
            {
                f.answers.push(dname);
                let Some(cname) = target else {
                    f.rcode = ResponseCode::YXDomain;
                    return f;
                };
                let ttl = f.answers.last().map_or(0, |r| r.ttl);
                let mut r = Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::CNAME(hickory_proto::rr::rdata::CNAME(cname.clone())),
                );
                r.dns_class = DNSClass::IN;
                f.answers.push(r);
                match auth.zone_for(&cname) {
                    Some(z) => {
                        zone = z;
                        name = cname;
                        continue;
                    }
                    None => return f,
                }
            }
            f.rcode = ResponseCode::NXDomain;
            f.authorities.push(zone.negative_soa());
            return f;
        };
        if let Some(host) = node.host
            && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY)
        {
            let family = if qtype == RecordType::AAAA {
                Family::V6
            } else {
                Family::V4
            };
            let q = Query {
                host,
                client: req.client,
                ecs,
                family,
                seed: id as u64,
            };
            let d = decider.decide(&q, req.now);
            for a in d.addrs.as_slice() {
                let data = match a {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                let mut r = Record::from_rdata(name.clone(), d.ttl, data);
                r.dns_class = DNSClass::IN;
                f.answers.push(r);
            }
            f.gtm = Some(GtmAnswer {
                host,
                family,
                client: req.client,
                ecs,
                proxied_for: None,
                decision: d,
            });
            if d.addrs.is_empty() && f.answers.is_empty() {
                f.authorities.push(zone.negative_soa());
            }
            return f;
        }
        if qtype == RecordType::ANY && !node.rrsets.is_empty() {
            // RFC 8482 over UDP: one RRset (the name's first, in zone-file order), so
            // ANY cannot amplify; over TCP, every RRset.
            let n = match req.transport {
                Transport::Udp => 1,
                Transport::Tcp => node.rrsets.len(),
            };
            for (_, rs) in node.rrsets.iter().take(n) {
                f.answers.extend(rs.iter().map(|r| with_name(r, &name)));
            }
            return f;
        }
        if let Some(rs) = node.rrset(qtype) {
            f.answers.extend(rs.iter().map(|r| with_name(r, &name)));
            if matches!(qtype, RecordType::NS | RecordType::MX | RecordType::SRV) {
                add_glue(zone, rs, &mut f.additionals);
            }
            return f;
        }
        if let Some(cn) = node.rrset(RecordType::CNAME)
            && let Some(r) = cn.first()
        {
            f.answers.push(with_name(r, &name));
            let RData::CNAME(target) = &r.data else {
                return f;
            };
            // Follow only inside our zones; a resolver follows the rest.
            match auth.zone_for(&target.0) {
                Some(z) => {
                    zone = z;
                    name = target.0.clone();
                    continue;
                }
                None => return f,
            }
        }
        // The name exists (or is an empty non-terminal) without that type: NODATA.
        f.authorities.push(zone.negative_soa());
        return f;
    }
    // A CNAME loop or an overlong chain: what we have, like other servers.
    f
}

/// The DNAME at the closest ancestor of `name` that has one, and the name `name`
/// becomes under it (`None`: too long, YXDOMAIN).
fn find_dname(zone: &Zone, name: &Name) -> Option<(Record, Option<Name>)> {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let apex = crate::authority::labels(&zone.apex);
    let n = crate::authority::labels(name);
    for l in (apex..n).rev() {
        let mut anc = name.trim_to(l);
        anc.set_fqdn(true);
        let Some(rs) = zone
            .nodes
            .get(&anc)
            .and_then(|nd| nd.rrset(RecordType::DNAME))
        else {
            continue;
        };
        let r = rs.first()?;
        let RData::Unknown { rdata, .. } = &r.data else {
            return None;
        };
        let target = Name::read(&mut BinDecoder::new(&rdata.anything)).ok()?;
        let prefix: Vec<&[u8]> = name.iter().take(n - l).collect();
        let synth = Name::from_labels(prefix)
            .ok()
            .and_then(|p| p.append_domain(&target).ok());
        return Some((with_name(r, &anc), synth));
    }
    None
}

/// The NS RRset of the zone cut at or above `name` (below the apex), if any.
/// With `above`, only cuts strictly above `name` count: a DS RRset lives on the parent
/// side of its cut (RFC 4035 section 3.1.4.1).
fn find_cut<'z>(zone: &'z Zone, name: &Name, above: bool) -> Option<&'z [Record]> {
    let apex = crate::authority::labels(&zone.apex);
    let n = crate::authority::labels(name).saturating_sub(usize::from(above));
    for l in (apex + 1)..=n {
        let mut anc = name.trim_to(l);
        anc.set_fqdn(true);
        if let Some(node) = zone.nodes.get(&anc)
            && node.cut
        {
            return node.rrset(RecordType::NS);
        }
    }
    None
}

/// The wildcard node that covers `name` (RFC 4592): `*.` + its closest encloser.
fn wildcard<'z>(zone: &'z Zone, name: &Name) -> Option<&'z crate::authority::Node> {
    let apex = crate::authority::labels(&zone.apex);
    let mut l = crate::authority::labels(name);
    while l > apex {
        l -= 1;
        let mut enc = name.trim_to(l);
        enc.set_fqdn(true);
        if zone.nodes.contains_key(&enc) {
            let wc = Name::from_ascii("*").ok()?.append_domain(&enc).ok()?;
            return zone.nodes.get(&wc);
        }
    }
    None
}

/// Adds in-zone addresses of the names `rs` point to (NS, MX, SRV targets).
fn add_glue(zone: &Zone, rs: &[Record], out: &mut Vec<Record>) {
    for r in rs {
        let target = match &r.data {
            RData::NS(ns) => &ns.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        if let Some(node) = zone.nodes.get(target) {
            for t in [RecordType::A, RecordType::AAAA] {
                if let Some(addrs) = node.rrset(t) {
                    out.extend(addrs.iter().cloned());
                }
            }
        }
    }
}
