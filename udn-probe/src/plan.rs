//! The probe agent's plan, without I/O: which (server, service) pairs one POP's agent
//! tests, at which addresses and under which policy; how the tests of a server's
//! addresses fold into one result; which address stands for a client network; how a
//! latency measurement's samples reduce to one; and the bounded set of measurements in
//! progress, so a flood of refresh answers never starts the same one twice.
//!
//! The `udn probe` role (in `udn-bins`) runs this plan with tokio timers and the
//! [`crate::agent`] I/O.
//!
//! # Examples
//!
//! ```
//! use udn_probe::plan::{Scope, service_targets};
//!
//! let net = udn_core::Config::from_toml(udn_core::config::SAMPLE).unwrap().compile().unwrap();
//! let pop = net.pops[0].name.clone();
//! let targets = service_targets(&net, &pop, Scope::Own, &[]).unwrap();
//! assert!(targets.iter().all(|t| !t.addrs.is_empty()));
//! ```

use crate::service::{ServiceSpec, Verdict};
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use udn_core::Cidr;
use udn_core::network::{Network, Site};

/// Which servers a probe tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The servers of its own POP and of the origin sites whose `pop` is its POP (so
    /// each server is tested by one probe); origin sites without a `pop` are tested by
    /// the first POP's probe.
    #[default]
    Own,
    /// Every server of the network.
    All,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "own" => Ok(Scope::Own),
            "all" => Ok(Scope::All),
            _ => Err(format!("{s:?} is not a scope (own, all)")),
        }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The agent's POP is not in the network.
    #[error("no POP named {0:?} in the config")]
    UnknownPop(String),
    /// A service's test does not build.
    #[error("service {service:?}: {source}")]
    Service {
        /// The service's name.
        service: String,
        /// Why.
        #[source]
        source: crate::Error,
    },
}

/// One (server, service) pair an agent tests.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    /// The server's name.
    pub server: String,
    /// Its addresses; the server passes when every one passes.
    pub addrs: Vec<IpAddr>,
    /// The test.
    pub spec: ServiceSpec,
    /// Whether the server is a customer's (in an origin site): a customer's server is
    /// tested only at addresses the network's target policy permits; a POP's servers
    /// are the operator's own.
    pub customer: bool,
}

/// The (server, service) pairs the agent of `pop` tests in `scope`, each once, with the
/// service ports of `port_overrides` (service name, port) applied.
pub fn service_targets(
    net: &Network,
    pop: &str,
    scope: Scope,
    port_overrides: &[(String, u16)],
) -> Result<Vec<ServiceTarget>, PlanError> {
    let pop_id = net
        .pop_id(pop)
        .ok_or_else(|| PlanError::UnknownPop(pop.to_owned()))?;
    let first_pop = net.pops.first().map(|p| p.name.as_str()) == Some(pop);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for host in &net.hosts {
        let svc = &net.services[host.service.index()];
        for t in &host.targets {
            let server = &net.servers[t.server.index()];
            let mine = match scope {
                Scope::All => true,
                Scope::Own => match server.site {
                    Site::Pop(p) => p == pop_id,
                    Site::Origin(o) => match net.origins[o.index()].pop {
                        Some(p) => p == pop_id,
                        None => first_pop,
                    },
                },
            };
            if !mine || !seen.insert((t.server, host.service)) {
                continue;
            }
            let mut spec =
                ServiceSpec::from_config(&svc.spec).map_err(|source| PlanError::Service {
                    service: svc.name.clone(),
                    source,
                })?;
            if let Some((_, port)) = port_overrides.iter().find(|(n, _)| *n == spec.name) {
                spec.port = *port;
            }
            out.push(ServiceTarget {
                server: server.name.clone(),
                addrs: server.addrs.clone(),
                spec,
                customer: matches!(server.site, Site::Origin(_)),
            });
        }
    }
    Ok(out)
}

/// One server's result: the fold of its addresses' verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerResult {
    /// Every address passed.
    pub ok: bool,
    /// The slowest address's response time, ms.
    pub response_ms: f32,
    /// The first failing address's reason (`ok` when none failed).
    pub reason: &'static str,
    /// The first failing address with its reason and the error's text, else empty.
    pub detail: String,
}

impl ServerResult {
    /// Folds the verdicts of a server's addresses, in order: each with the error text
    /// of its observation, if any.
    pub fn fold<'a>(
        verdicts: impl IntoIterator<Item = (IpAddr, Verdict, Option<&'a str>)>,
    ) -> ServerResult {
        let mut r = ServerResult {
            ok: true,
            response_ms: 0.0,
            reason: "ok",
            detail: String::new(),
        };
        for (ip, v, error) in verdicts {
            r.response_ms = r.response_ms.max(v.response_ms);
            if !v.ok && r.ok {
                r.ok = false;
                r.reason = v.reason.as_str();
                r.detail = match error {
                    Some(d) => format!("{ip}: {} ({d})", r.reason),
                    None => format!("{ip}: {}", r.reason),
                };
            }
        }
        r
    }
}

/// The address measured for a client network: the network itself for a host route,
/// else its first host (network address + 1).
pub fn representative(c: Cidr) -> IpAddr {
    match c.addr() {
        IpAddr::V4(a) if c.len() < 32 => {
            IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1)))
        }
        IpAddr::V6(a) if c.len() < 128 => {
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a).wrapping_add(1)))
        }
        ip => ip,
    }
}

/// A latency measurement's result from its samples (round-trip time, index of the
/// method that gave it): the median sample (the upper one of an even count), or `None`
/// when no sample was answered.
pub fn median_sample(samples: &mut [(Duration, usize)]) -> Option<(Duration, usize)> {
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

/// The client networks being measured: at most `cap` at once, each once.
#[derive(Debug)]
pub struct InFlight {
    cap: usize,
    set: HashSet<Cidr>,
}

impl InFlight {
    /// An empty set that holds at most `cap` networks.
    pub fn new(cap: usize) -> InFlight {
        InFlight {
            cap,
            set: HashSet::new(),
        }
    }

    /// Marks `client` as being measured; false when it already is or the set is full
    /// (the request is dropped: the DNS servers ask again at their next refresh).
    pub fn start(&mut self, client: Cidr) -> bool {
        self.set.len() < self.cap && self.set.insert(client)
    }

    /// Marks `client`'s measurement as done.
    pub fn finish(&mut self, client: Cidr) {
        self.set.remove(&client);
    }

    /// How many are being measured.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::VerdictReason;
    use proptest::prelude::*;

    fn sample() -> Network {
        udn_core::Config::from_toml(udn_core::config::SAMPLE)
            .unwrap()
            .compile()
            .unwrap()
    }

    fn verdict(ok: bool, ms: f32) -> Verdict {
        Verdict {
            ok,
            reason: if ok {
                VerdictReason::Ok
            } else {
                VerdictReason::ContentMissing
            },
            response_ms: ms,
        }
    }

    #[test]
    fn a_server_fails_at_its_first_failing_address_and_reports_its_slowest() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let r = ServerResult::fold([
            (a, verdict(true, 5.0), None),
            (b, verdict(false, 9.0), Some("no body")),
            (a, verdict(false, 1.0), None),
        ]);
        assert!(!r.ok);
        assert_eq!(r.response_ms, 9.0);
        assert_eq!(r.reason, "content-missing");
        assert_eq!(r.detail, "192.0.2.2: content-missing (no body)");
        let ok = ServerResult::fold([(a, verdict(true, 3.0), None)]);
        assert!(ok.ok && ok.detail.is_empty() && ok.reason == "ok");
    }

    #[test]
    fn each_server_is_tested_by_one_probe_under_scope_own() {
        let net = sample();
        let mut own: Vec<(String, String)> = Vec::new();
        for pop in &net.pops {
            for t in service_targets(&net, &pop.name, Scope::Own, &[]).unwrap() {
                own.push((t.server, t.spec.name));
            }
        }
        let mut all: Vec<(String, String)> =
            service_targets(&net, &net.pops[0].name, Scope::All, &[])
                .unwrap()
                .into_iter()
                .map(|t| (t.server, t.spec.name))
                .collect();
        own.sort();
        all.sort();
        assert!(!all.is_empty());
        assert_eq!(own, all, "the POPs' own scopes split the network's pairs");
        assert!(matches!(
            service_targets(&net, "nowhere", Scope::Own, &[]),
            Err(PlanError::UnknownPop(_))
        ));
    }

    #[test]
    fn port_overrides_apply_to_the_named_service_only() {
        let net = sample();
        let plain = service_targets(&net, &net.pops[0].name, Scope::All, &[]).unwrap();
        let name = plain[0].spec.name.clone();
        let moved =
            service_targets(&net, &net.pops[0].name, Scope::All, &[(name.clone(), 1)]).unwrap();
        for (p, m) in plain.iter().zip(&moved) {
            if p.spec.name == name {
                assert_eq!(m.spec.port, 1);
            } else {
                assert_eq!(m.spec.port, p.spec.port);
            }
        }
    }

    #[test]
    fn scopes_parse_and_refuse_others() {
        assert_eq!("own".parse::<Scope>(), Ok(Scope::Own));
        assert_eq!("all".parse::<Scope>(), Ok(Scope::All));
        assert!("everything".parse::<Scope>().is_err());
    }

    #[test]
    fn the_in_flight_set_is_bounded_and_starts_each_network_once() {
        let mut f = InFlight::new(2);
        let a: Cidr = "192.0.2.0/24".parse().unwrap();
        let b: Cidr = "198.51.100.0/24".parse().unwrap();
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(f.start(a));
        assert!(!f.start(a), "already measured");
        assert!(f.start(b));
        assert!(!f.start(c), "full");
        f.finish(a);
        assert!(f.start(c));
        assert_eq!(f.len(), 2);
    }

    proptest! {
        #[test]
        fn the_representative_is_inside_its_network(bits in any::<u32>(), len in 0u8..=32) {
            let c = Cidr::new(IpAddr::V4(bits.into()), len);
            let r = representative(c);
            prop_assert!(c.contains(r));
            if len < 31 {
                prop_assert_ne!(r, c.addr(), "a network's first host, not its address");
            }
        }

        #[test]
        fn the_median_sample_has_as_many_samples_below_as_above(
            ms in proptest::collection::vec(0u64..1000, 0..12)
        ) {
            let mut s: Vec<(Duration, usize)> =
                ms.iter().map(|&m| (Duration::from_millis(m), 0)).collect();
            match median_sample(&mut s) {
                None => prop_assert!(ms.is_empty()),
                Some((d, _)) => {
                    let below = ms.iter().filter(|&&m| Duration::from_millis(m) < d).count();
                    let above = ms.iter().filter(|&&m| Duration::from_millis(m) > d).count();
                    prop_assert!(below <= ms.len() / 2 && above <= ms.len() / 2);
                }
            }
        }
    }
}
