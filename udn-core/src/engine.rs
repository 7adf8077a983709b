//! [`Engine`]: a compiled network and its dynamic state together, with metric updates
//! that arrive by name (as probes send them) and atomic snapshot replacement.

use crate::decide::{Decision, Query, decide};
use crate::load::LoadParts;
use crate::net::{Cidr, ClientPrefix};
use crate::network::Network;
use crate::state::{Health, LatencySample, ServiceSample, State};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A metric update as probes report it: by name, so it survives config reloads and
/// travels as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    /// A service-test result.
    Service {
        /// Server name.
        server: String,
        /// Service type name.
        service: String,
        /// The result.
        #[serde(flatten)]
        sample: ServiceSample,
    },
    /// A LOADP report of the host a server runs on.
    Load {
        /// Server name.
        server: String,
        /// Load in percent (0..=100): the score when the four figures are absent.
        percent: f32,
        /// When it was measured.
        at: Timestamp,
        /// CPU, memory, swap and disk use, percent; when present they make the score
        /// with the network's `[load]` weights (see [`crate::load`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parts: Option<LoadParts>,
    },
    /// A latency sample from a POP to a client network.
    Latency {
        /// The measured client network (its /24 or /48 is used).
        client: Cidr,
        /// POP name.
        pop: String,
        /// The sample.
        #[serde(flatten)]
        sample: LatencySample,
    },
    /// A latency measurement that gave no RTT: every one of `sent` samples was lost.
    /// The DNS server backs off before asking for this (client network, POP) again.
    Unreachable {
        /// The measured client network (its /24 or /48 is used).
        client: Cidr,
        /// POP name.
        pop: String,
        /// Samples sent (all lost).
        sent: u8,
        /// When it was measured.
        at: Timestamp,
    },
}

/// Why a [`Metric`] was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// No server of that name.
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    /// No service type of that name.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// No POP of that name.
    #[error("unknown pop {0:?}")]
    UnknownPop(String),
}

/// A network snapshot with its dynamic state.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use udn_core::{Config, Engine, Family, Metric, Query, ServiceSample, Timestamp, config::SAMPLE};
///
/// let net = Arc::new(Config::from_toml(SAMPLE).unwrap().compile().unwrap());
/// let mut engine = Engine::new(net.clone());
/// let now = Timestamp::from_secs(100);
/// // The east site fails its checks three times: it goes down.
/// for t in 0..3 {
///     let m = Metric::Service {
///         server: "shop-east-1".into(),
///         service: "http".into(),
///         sample: ServiceSample { ok: false, response_ms: 0.0, at: Timestamp::from_secs(90 + t) },
///     };
///     engine.apply(&m).unwrap();
/// }
/// let q = Query {
///     host: net.host_id("www.shop.udn.example").unwrap(),
///     client: "192.0.2.1".parse().unwrap(),
///     ecs: None,
///     family: Family::V4,
///     seed: 1,
/// };
/// let d = engine.decide_and_record(&q, now);
/// assert_eq!(d.addrs.as_slice(), &["127.0.0.22".parse::<std::net::IpAddr>().unwrap()]);
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    net: Arc<Network>,
    state: State,
}

impl Engine {
    /// An engine with empty state for `net`.
    pub fn new(net: Arc<Network>) -> Self {
        let state = State::new(&net);
        Engine { net, state }
    }

    /// The current snapshot.
    pub fn network(&self) -> &Arc<Network> {
        &self.net
    }

    /// The dynamic state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The dynamic state, for direct updates by id.
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Replaces the snapshot (a config reload), keeping the state of everything that
    /// still exists by name.
    pub fn replace_network(&mut self, net: Arc<Network>) {
        self.state = self.state.carry_over(&self.net, &net);
        self.net = net;
    }

    /// Decides without recording anything.
    pub fn decide(&self, q: &Query, now: Timestamp) -> Decision {
        decide(&self.net, &self.state, q, now)
    }

    /// Decides and records the persistence entry the decision asks for.
    pub fn decide_and_record(&mut self, q: &Query, now: Timestamp) -> Decision {
        let d = decide(&self.net, &self.state, q, now);
        if let Some(w) = d.persist {
            self.state.apply_persist(w);
        }
        d
    }

    /// Applies a metric reported by name, as one anonymous reporter whose sample times
    /// are also the receive times. Returns the health after a service update.
    pub fn apply(&mut self, m: &Metric) -> Result<Option<Health>, MetricError> {
        let at = match m {
            Metric::Service { sample, .. } => sample.at,
            Metric::Load { at, .. } => *at,
            Metric::Latency { sample, .. } => sample.at,
            Metric::Unreachable { at, .. } => *at,
        };
        self.apply_from(m, "", at)
    }

    /// Applies a metric from `reporter` (the probe's identity name, which counts towards
    /// the health quorum) that this server received at `received` (its own clock: the
    /// freshness of health and load is judged on it). Returns the health after a
    /// service update.
    pub fn apply_from(
        &mut self,
        m: &Metric,
        reporter: &str,
        received: Timestamp,
    ) -> Result<Option<Health>, MetricError> {
        match m {
            Metric::Service {
                server,
                service,
                sample,
            } => {
                let s = self
                    .net
                    .server_id(server)
                    .ok_or_else(|| MetricError::UnknownServer(server.clone()))?;
                let v = self
                    .net
                    .service_id(service)
                    .ok_or_else(|| MetricError::UnknownService(service.clone()))?;
                Ok(Some(self.state.apply_service_from(
                    &self.net, s, v, reporter, *sample, received,
                )))
            }
            Metric::Load {
                server,
                percent,
                at,
                parts,
            } => {
                let s = self
                    .net
                    .server_id(server)
                    .ok_or_else(|| MetricError::UnknownServer(server.clone()))?;
                self.state
                    .apply_load_from(s, *parts, *percent, *at, received);
                Ok(None)
            }
            Metric::Latency {
                client,
                pop,
                sample,
            } => {
                let p = self
                    .net
                    .pop_id(pop)
                    .ok_or_else(|| MetricError::UnknownPop(pop.clone()))?;
                self.state
                    .apply_latency(ClientPrefix::of(client.addr()), p, *sample);
                Ok(None)
            }
            // The engine keeps no negative entries (the DNS server's refresh queue does).
            Metric::Unreachable { pop, .. } => match self.net.pop_id(pop) {
                Some(_) => Ok(None),
                None => Err(MetricError::UnknownPop(pop.clone())),
            },
        }
    }
}
