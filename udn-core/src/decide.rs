//! The routing decision: which addresses a client gets for a hostname, and why.
//!
//! [`decide`] is a pure function of the compiled [`Network`], the dynamic [`State`], the
//! [`Query`] and `now`. It does not allocate: the answer and the refresh requests are
//! fixed-capacity inline lists.
//!
//! The steps, in order:
//! 1. the hostname's published targets that have an address of the query's family;
//!    a target is *usable* when its health is up (or unchecked, if the hostname counts
//!    unchecked targets as up); down and stale targets are never usable; standby
//!    servers are usable only while fewer than `min_healthy` published targets are, and
//!    overloaded targets only while no usable target is not (see
//!    [`crate::health::standby_and_overload`]);
//! 2. no usable target: the all-down policy (hidden standby, all published, or NODATA);
//! 3. a static mapping for the client's network (longest prefix first) whose target is
//!    usable wins;
//! 4. persistence: an unexpired sticky server that is still usable is kept;
//! 5. ranking by `latency * rtt_ms + load * load_percent + response_time * response_ms`
//!    (lower is better; unknown latency counts as the configured default and is asked of
//!    the probes; unknown load as 50 %; unknown response time as 100 ms);
//! 6. among targets within `near_equal` points of the best, a pick by weight that is
//!    reproducible from the query's seed and the client prefix; with persistence on,
//!    the pick is recorded, unless a candidate's latency was still unmeasured (such a
//!    provisional pick is not pinned);
//! 7. further answers (up to the hostname's answer count) by ascending score.
//!
//! The ECS scope of the answer is the prefix inside which every client gets the same
//! answer from the same data: a static hit's mapping length, or the client prefix
//! (/24, /48) when the answer read the prefix's latency row or persistence entry or made
//! a weighted pick (which hashes the prefix), else 0; lengthened past every static
//! mapping that would answer this hostname for some clients inside it (a more specific
//! mapping, or any mapping under a non-static answer). An ECS source prefix of 0 carries
//! no client information: the resolver's address is the client and the scope is 0.

// The decision walks several per-target arrays in step; index loops read best here.
#![allow(clippy::needless_range_loop)]

use crate::config::{AllDownPolicy, UncheckedPolicy};
use crate::net::{Cidr, ClientPrefix};
use crate::network::{HostId, MAX_ANSWERS, MAX_TARGETS, Network, PopId, ServerId};
use crate::state::{Health, PersistWrite, State, row_get};
use crate::time::Timestamp;
use std::net::IpAddr;

/// Address family asked for (A or AAAA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (A records).
    V4,
    /// IPv6 (AAAA records).
    V6,
}

impl Family {
    /// Whether `ip` is of this family.
    pub fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// One question to the decision engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// The hostname (see [`Network::host_id`]).
    pub host: HostId,
    /// The address the query came from (the client's resolver).
    pub client: IpAddr,
    /// The EDNS Client Subnet of the query, if any; used instead of `client`.
    pub ecs: Option<Cidr>,
    /// A or AAAA.
    pub family: Family,
    /// Seed for the weighted pick among near-equal targets (for example the DNS message
    /// id, or a counter); the same inputs and seed give the same decision.
    pub seed: u64,
}

/// Why the decision answered what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A static mapping for the client's network.
    Static,
    /// Persistence kept the client on its earlier target.
    Sticky,
    /// The best-ranked target (latency, load and response time), alone in its class.
    Latency,
    /// A weighted pick among near-equal targets.
    Weighted,
    /// Too few published targets are usable: a hidden standby server (or, with every
    /// published target down, the hidden standby addresses).
    Standby,
    /// Every published target is down and there is no standby (or the policy says so):
    /// the published addresses, rather than failing.
    LastResort,
    /// No address to give: every target is down under the `none` policy, or no target
    /// has an address of the asked family.
    NoData,
}

impl Reason {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "static",
            Reason::Sticky => "sticky",
            Reason::Latency => "latency",
            Reason::Weighted => "weighted",
            Reason::Standby => "standby",
            Reason::LastResort => "last-resort",
            Reason::NoData => "nodata",
        }
    }
}

/// The addresses of an answer, best first (at most [`MAX_ANSWERS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrList {
    len: u8,
    items: [IpAddr; MAX_ANSWERS],
}

impl AddrList {
    const EMPTY: AddrList = AddrList {
        len: 0,
        items: [IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED); MAX_ANSWERS],
    };

    fn push(&mut self, ip: IpAddr) -> bool {
        if (self.len as usize) < MAX_ANSWERS && !self.as_slice().contains(&ip) {
            self.items[self.len as usize] = ip;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// The addresses.
    pub fn as_slice(&self) -> &[IpAddr] {
        &self.items[..self.len as usize]
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The most refresh requests one decision carries.
pub const MAX_REFRESH: usize = 8;

/// Latency measurements the probes should make: (client prefix, POP) pairs that were
/// missing or stale when the decision needed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshList {
    len: u8,
    items: [(ClientPrefix, PopId); MAX_REFRESH],
}

impl RefreshList {
    const EMPTY: RefreshList = RefreshList {
        len: 0,
        items: [(ClientPrefix::from_bits(0), PopId(0)); MAX_REFRESH],
    };

    fn push(&mut self, item: (ClientPrefix, PopId)) {
        if (self.len as usize) < MAX_REFRESH && !self.as_slice().contains(&item) {
            self.items[self.len as usize] = item;
            self.len += 1;
        }
    }

    /// The requests.
    pub fn as_slice(&self) -> &[(ClientPrefix, PopId)] {
        &self.items[..self.len as usize]
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Addresses to answer, best first (empty: NODATA).
    pub addrs: AddrList,
    /// TTL of the answer, seconds.
    pub ttl: u32,
    /// The ECS scope prefix length: every client inside `client/ecs_scope` gets this
    /// answer from the same data (0: not client-specific). May exceed a short ECS source
    /// prefix (RFC 7871 7.2.1). Static mappings are searched only for ECS queries.
    pub ecs_scope: u8,
    /// Why.
    pub reason: Reason,
    /// The server behind the first address, if it is a published target.
    pub server: Option<ServerId>,
    /// Latency measurements to request from the probes.
    pub refresh: RefreshList,
    /// A persistence entry to record (see [`State::apply_persist`]).
    pub persist: Option<PersistWrite>,
}

impl Decision {
    fn empty(ttl: u32, reason: Reason) -> Self {
        Decision {
            addrs: AddrList::EMPTY,
            ttl,
            ecs_scope: 0,
            reason,
            server: None,
            refresh: RefreshList::EMPTY,
            persist: None,
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decides the answer for `q` at `now`.
///
/// # Examples
///
/// ```
/// use udn_core::{Config, Family, Query, State, Timestamp, decide, config::SAMPLE};
///
/// let net = Config::from_toml(SAMPLE).unwrap().compile().unwrap();
/// let state = State::new(&net);
/// let q = Query {
///     host: net.host_id("www.shop.udn.example").unwrap(),
///     client: "192.0.2.1".parse().unwrap(),
///     ecs: None,
///     family: Family::V4,
///     seed: 7,
/// };
/// let d = decide(&net, &state, &q, Timestamp::from_secs(1_000));
/// assert_eq!(d.addrs.len(), 1);
/// // Nothing is measured yet, so the engine asks the probes for latencies.
/// assert!(!d.refresh.is_empty());
/// ```
pub fn decide(net: &Network, state: &State, q: &Query, now: Timestamp) -> Decision {
    let Some(host) = net.hosts.get(q.host.index()) else {
        return Decision::empty(0, Reason::NoData);
    };
    // ECS with source prefix 0 carries no client information (RFC 7871 7.1.2): the
    // resolver's own address stands for the client.
    let ecs = q.ecs.filter(|c| !c.is_empty());
    let client_ip = ecs.map(|c| c.addr()).unwrap_or(q.client);
    let prefix = ClientPrefix::of(client_ip);

    // 1. Candidates and their health.
    let n = host.targets.len().min(MAX_TARGETS);
    let mut usable = [false; MAX_TARGETS];
    let mut has_family = [false; MAX_TARGETS];
    let mut n_family = 0usize;
    for (i, t) in host.targets.iter().take(n).enumerate() {
        let srv = &net.servers[t.server.index()];
        if !srv.addrs.iter().any(|a| q.family.matches(a)) {
            continue;
        }
        has_family[i] = true;
        n_family += 1;
        let ok = match state.health(net, t.server, host.service, now) {
            Health::Up => true,
            Health::Unchecked => host.unchecked == UncheckedPolicy::Up,
            Health::Down | Health::Stale => false,
        };
        if ok {
            usable[i] = true;
        }
    }
    let n_usable = crate::health::standby_and_overload(net, state, host, now, &mut usable[..n]);
    let first_addr = |i: usize| {
        net.servers[host.targets[i].server.index()]
            .addrs
            .iter()
            .copied()
            .find(|a| q.family.matches(a))
    };

    if n_family == 0 {
        return Decision::empty(host.ttl, Reason::NoData);
    }

    // 2. Every published target down.
    if n_usable == 0 {
        let mut d = Decision::empty(host.ttl, Reason::NoData);
        let standby = host.standby.iter().filter(|a| q.family.matches(a));
        match host.all_down {
            AllDownPolicy::None => return d,
            AllDownPolicy::Standby if host.standby.iter().any(|a| q.family.matches(a)) => {
                for a in standby.take(host.answers as usize) {
                    d.addrs.push(*a);
                }
                d.reason = Reason::Standby;
                return d;
            }
            AllDownPolicy::Standby | AllDownPolicy::All => {
                // Prefer the least-known-bad: stale or unchecked before down.
                for pass in 0..2 {
                    for i in 0..n {
                        if !has_family[i]
                            || host.targets[i].standby
                            || d.addrs.len() >= host.answers as usize
                        {
                            continue;
                        }
                        let h = state.health(net, host.targets[i].server, host.service, now);
                        let down = h == Health::Down;
                        if (pass == 0) != down
                            && let Some(a) = first_addr(i)
                            && d.addrs.push(a)
                            && d.server.is_none()
                        {
                            d.server = Some(host.targets[i].server);
                        }
                    }
                }
                d.reason = Reason::LastResort;
                return d;
            }
        }
    }

    let mut d = Decision::empty(host.ttl, Reason::Latency);

    // 3. Static mapping.
    if !net.statics.mappings().is_empty() {
        let hit = net.statics.find(client_ip, |m| {
            if !m.hosts.is_empty() && !m.hosts.contains(&q.host) {
                return None;
            }
            (0..n)
                .find(|&i| usable[i] && m.target.covers(net, host.targets[i].server))
                .map(|i| (i, m))
        });
        if let Some((i, m)) = hit {
            d.reason = Reason::Static;
            d.ecs_scope = static_scope(net, host, &usable, q, client_ip, m.network.len());
            d.server = Some(host.targets[i].server);
            if let Some(a) = first_addr(i) {
                d.addrs.push(a);
            }
            for j in 0..n {
                if d.addrs.len() >= host.answers as usize {
                    break;
                }
                if j != i
                    && usable[j]
                    && m.target.covers(net, host.targets[j].server)
                    && let Some(a) = first_addr(j)
                {
                    d.addrs.push(a);
                }
            }
            return d;
        }
    }

    // 5. Scores (computed before persistence so further answers can be ranked).
    let mut score = [f32::INFINITY; MAX_TARGETS];
    let row = state.latency.row(prefix);
    let w = host.weighting;
    let mut missing_latency = false;
    // Whether the ranking read the client prefix's latency row (measured or not: a
    // neighbouring prefix with a row would rank differently).
    let mut read_latency = false;
    for i in 0..n {
        if !usable[i] {
            continue;
        }
        let t = host.targets[i];
        let srv = &net.servers[t.server.index()];
        let mut s = 0.0f32;
        if w.latency > 0.0 {
            let rtt_ms = match srv.latency_pop {
                Some(pop) => match row.and_then(|r| row_get(r, pop)) {
                    Some(sample) => {
                        if now.since(sample.at) > net.latency.max_age {
                            d.refresh.push((prefix, pop));
                        }
                        sample.rtt_us as f32 / 1000.0
                    }
                    None => {
                        missing_latency = true;
                        d.refresh.push((prefix, pop));
                        net.latency.default_ms as f32
                    }
                },
                None => net.latency.default_ms as f32,
            };
            read_latency |= srv.latency_pop.is_some();
            s += w.latency * rtt_ms;
        }
        if w.load > 0.0 {
            s += w.load * state.load_score(net, t.server, now).unwrap_or(50.0);
        }
        if w.response_time > 0.0 {
            s += w.response_time * state.response_ms(t.server, host.service).unwrap_or(100.0);
        }
        score[i] = s;
    }

    // 4. Persistence.
    let mut chosen = None;
    if host.persistence.is_some()
        && let Some(sticky) = state.sticky(prefix, q.host, now)
        && let Some(i) = (0..n).find(|&i| usable[i] && host.targets[i].server == sticky)
    {
        chosen = Some(i);
        d.reason = Reason::Sticky;
    }

    // 6. Best class and weighted pick.
    let mut weighted = false;
    if chosen.is_none() {
        let mut best = f32::INFINITY;
        for &s in score.iter().take(n) {
            best = best.min(s);
        }
        let limit = best + host.near_equal;
        let mut total: u64 = 0;
        let mut members = 0usize;
        for i in 0..n {
            if usable[i] && score[i] <= limit {
                total += host.targets[i].weight as u64;
                members += 1;
            }
        }
        let r = splitmix64(q.seed ^ splitmix64(prefix.to_bits() ^ (q.host.0 as u64) << 32));
        if total == 0 {
            // All near-equals have weight 0: pick uniformly among them.
            let mut k = (r % members as u64) as usize;
            for i in 0..n {
                if usable[i] && score[i] <= limit {
                    if k == 0 {
                        chosen = Some(i);
                        break;
                    }
                    k -= 1;
                }
            }
        } else {
            let mut k = r % total;
            for i in 0..n {
                if usable[i] && score[i] <= limit {
                    let wt = host.targets[i].weight as u64;
                    if k < wt {
                        chosen = Some(i);
                        break;
                    }
                    k -= wt;
                }
            }
        }
        weighted = members > 1;
        d.reason = if members > 1 {
            Reason::Weighted
        } else {
            Reason::Latency
        };
        // A pick made while latencies are still being measured is provisional: it is
        // not pinned, so the client gets the measured best once the probes answer.
        if let (Some(dur), Some(i), false) = (host.persistence, chosen, missing_latency) {
            d.persist = Some(PersistWrite {
                host: q.host,
                prefix,
                server: host.targets[i].server,
                until: now.plus(dur),
            });
        }
    }

    let Some(first) = chosen else {
        // Unreachable in practice (n_usable > 0), but never panic.
        return Decision::empty(host.ttl, Reason::NoData);
    };
    d.server = Some(host.targets[first].server);
    if host.targets[first].standby && d.reason != Reason::Sticky {
        d.reason = Reason::Standby;
    }
    if let Some(a) = first_addr(first) {
        d.addrs.push(a);
    }

    // 7. Further answers by ascending score.
    let mut taken = [false; MAX_TARGETS];
    taken[first] = true;
    while d.addrs.len() < host.answers as usize {
        let mut next = None;
        let mut best = f32::INFINITY;
        for i in 0..n {
            if usable[i] && !taken[i] && (next.is_none() || score[i] < best) {
                best = score[i];
                next = Some(i);
            }
        }
        let Some(i) = next else { break };
        taken[i] = true;
        if let Some(a) = first_addr(i) {
            d.addrs.push(a);
        }
    }

    // The answer depends on the client prefix when it read the prefix's latency row or
    // persistence entry, or when the weighted pick (which hashes the prefix) had a choice.
    let base = if read_latency || host.persistence.is_some() || weighted {
        prefix.len()
    } else {
        0
    };
    d.ecs_scope = static_scope(net, host, &usable, q, client_ip, base);
    d
}

/// The ECS scope of an answer that holds for every client of `client/base`: `base`
/// lengthened until no static mapping that would answer this hostname (its hostnames
/// include it and it covers a usable target) lies inside the scope without containing
/// `client`, since such a mapping would answer the clients inside it differently.
/// Without ECS (no scope is sent) the mappings are not searched and `base` is returned;
/// with an ECS source prefix of 0 the scope is 0.
fn static_scope(
    net: &Network,
    host: &crate::network::Host,
    usable: &[bool; MAX_TARGETS],
    q: &Query,
    client: IpAddr,
    base: u8,
) -> u8 {
    match q.ecs {
        None => return base,
        // Source prefix 0: the answer must not be tied to any client (RFC 7871 7.2.1).
        Some(c) if c.is_empty() => return 0,
        Some(_) => {}
    }
    let n = host.targets.len().min(MAX_TARGETS);
    let mut scope = base;
    for m in net.statics.mappings() {
        let Some(common) = common_prefix(client, m.network.addr()) else {
            continue;
        };
        if common >= m.network.len() || common < scope {
            // Contains the client (it lost to a longer one or does not apply), or lies
            // outside the scope already.
            continue;
        }
        let applies = (m.hosts.is_empty() || m.hosts.contains(&q.host))
            && (0..n).any(|i| usable[i] && m.target.covers(net, host.targets[i].server));
        if applies {
            scope = common + 1;
        }
    }
    scope
}

/// The number of leading bits `a` and `b` share (`None` across families).
fn common_prefix(a: IpAddr, b: IpAddr) -> Option<u8> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            Some((u32::from(a) ^ u32::from(b)).leading_zeros().min(32) as u8)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            Some((u128::from(a) ^ u128::from(b)).leading_zeros().min(128) as u8)
        }
        _ => None,
    }
}
