//! Dynamic state: service health with hysteresis and staleness, server load, the latency
//! table and persistence entries. Every update is a value applied with `now`.

use crate::net::ClientPrefix;
use crate::network::{HostId, Network, PopId, ServerId, ServiceId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The health of one (server, service type) as the decision sees it at some `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Passing its checks.
    Up,
    /// Failing its checks.
    Down,
    /// Checked before, but every probe has been silent for longer than the grace period
    /// plus the silent hold (by the receiving server's clock): unknown, never counted as
    /// up.
    Stale,
    /// Never checked yet; counts as the hostname's `unchecked` policy says.
    Unchecked,
}

impl Health {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Stale => "stale",
            Health::Unchecked => "unchecked",
        }
    }
}

/// One service-test result, as a probe reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServiceSample {
    /// Whether the test passed.
    pub ok: bool,
    /// Response time of the test, ms.
    pub response_ms: f32,
    /// When it was measured.
    pub at: Timestamp,
}

use crate::health::{HealthCell, Reporters};
use crate::load::{LoadParts, clamp_percent};

#[derive(Debug, Clone, Copy, Default)]
struct LoadCell {
    /// The four figures, or `None` for a single-number report (`percent`).
    parts: Option<LoadParts>,
    percent: f32,
    /// The sample's own time (orders reports).
    at: Option<Timestamp>,
    /// When this server received it (judges freshness).
    received: Timestamp,
}

/// One latency sample: RTT from a POP to a client prefix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySample {
    /// Round-trip time in microseconds.
    pub rtt_us: u32,
    /// When it was measured.
    pub at: Timestamp,
}

const NO_RTT: u32 = u32::MAX;

/// RTTs keyed by (client prefix, POP): one dense row per client prefix, indexed by POP,
/// so the decision reads a candidate's latency with one hash lookup per query.
#[derive(Debug, Clone, Default)]
pub struct LatencyTable {
    n_pops: usize,
    rows: HashMap<ClientPrefix, Box<[LatencySample]>>,
    entries: usize,
}

impl LatencyTable {
    /// An empty table for `n_pops` POPs.
    pub fn new(n_pops: usize) -> Self {
        LatencyTable {
            n_pops,
            rows: HashMap::new(),
            entries: 0,
        }
    }

    /// Records a sample (replacing an older one for the same pair; an older sample than
    /// the one held is ignored).
    pub fn insert(&mut self, prefix: ClientPrefix, pop: PopId, sample: LatencySample) {
        let n = self.n_pops;
        if pop.index() >= n || sample.rtt_us == NO_RTT {
            return;
        }
        let row = self.rows.entry(prefix).or_insert_with(|| {
            vec![
                LatencySample {
                    rtt_us: NO_RTT,
                    at: Timestamp(0)
                };
                n
            ]
            .into_boxed_slice()
        });
        let cell = &mut row[pop.index()];
        if cell.rtt_us == NO_RTT {
            self.entries += 1;
        } else if cell.at > sample.at {
            return;
        }
        *cell = sample;
    }

    /// The sample for a pair, if any.
    pub fn get(&self, prefix: ClientPrefix, pop: PopId) -> Option<LatencySample> {
        self.row(prefix).and_then(|r| row_get(r, pop))
    }

    pub(crate) fn row(&self, prefix: ClientPrefix) -> Option<&[LatencySample]> {
        self.rows.get(&prefix).map(|r| &r[..])
    }

    /// Number of (prefix, POP) samples held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Drops samples older than `max_age` at `now`; returns how many were dropped.
    pub fn expire(&mut self, now: Timestamp, max_age: Duration) -> usize {
        let mut dropped = 0;
        self.rows.retain(|_, row| {
            let mut live = 0;
            for c in row.iter_mut() {
                if c.rtt_us != NO_RTT {
                    if now.since(c.at) > max_age {
                        c.rtt_us = NO_RTT;
                        dropped += 1;
                    } else {
                        live += 1;
                    }
                }
            }
            live > 0
        });
        self.entries -= dropped;
        dropped
    }
}

pub(crate) fn row_get(row: &[LatencySample], pop: PopId) -> Option<LatencySample> {
    row.get(pop.index()).copied().filter(|s| s.rtt_us != NO_RTT)
}

/// A persistence entry: a client prefix stays on a server for a hostname until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stick {
    /// The server the client prefix is held on.
    pub server: u32,
    /// Expiry.
    pub until: Timestamp,
}

/// A persistence write the decision asks the caller to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct PersistWrite {
    /// Hostname.
    pub host: HostId,
    /// Client prefix.
    pub prefix: ClientPrefix,
    /// Server to hold it on.
    pub server: ServerId,
    /// Expiry.
    pub until: Timestamp,
}

/// All dynamic state the decision reads, sized for one [`Network`].
#[derive(Debug, Clone)]
pub struct State {
    n_services: usize,
    health: Vec<HealthCell>,
    reporters: Reporters,
    load: Vec<LoadCell>,
    /// The latency table.
    pub latency: LatencyTable,
    persistence: HashMap<(ClientPrefix, HostId), Stick>,
    max_persistence: usize,
}

impl State {
    /// Empty state for `net`: every target unchecked, no latency, no persistence.
    pub fn new(net: &Network) -> Self {
        let n_services = net.services.len().max(1);
        State {
            n_services,
            health: vec![HealthCell::default(); net.servers.len() * n_services],
            reporters: Reporters::default(),
            load: vec![LoadCell::default(); net.servers.len()],
            latency: LatencyTable::new(net.pops.len()),
            persistence: HashMap::new(),
            max_persistence: net.config.persistence.max_entries,
        }
    }

    /// State for the new snapshot `new`, carrying over everything of `self` (which
    /// belongs to `old`) whose server, POP, service or hostname still exists by name.
    pub fn carry_over(&self, old: &Network, new: &Network) -> State {
        let mut st = State::new(new);
        st.reporters = self.reporters.clone();
        for (si, s) in old.servers.iter().enumerate() {
            let Some(ns) = new.server_id(&s.name) else {
                continue;
            };
            st.load[ns.index()] = self.load[si];
            for (vi, v) in old.services.iter().enumerate() {
                if let Some(nv) = new.service_id(&v.name) {
                    st.health[ns.index() * st.n_services + nv.index()] =
                        self.health[si * self.n_services + vi].clone();
                }
            }
        }
        let pop_map: Vec<Option<PopId>> = old.pops.iter().map(|p| new.pop_id(&p.name)).collect();
        for (prefix, row) in &self.latency.rows {
            for (pi, sample) in row.iter().enumerate() {
                if sample.rtt_us != NO_RTT
                    && let Some(np) = pop_map[pi]
                {
                    st.latency.insert(*prefix, np, *sample);
                }
            }
        }
        for ((prefix, host), stick) in &self.persistence {
            let name = &old.servers[stick.server as usize].name;
            if let (Some(nh), Some(ns)) = (
                new.host_id(&old.hosts[host.index()].name),
                new.server_id(name),
            ) {
                st.persistence.insert(
                    (*prefix, nh),
                    Stick {
                        server: ns.0,
                        until: stick.until,
                    },
                );
            }
        }
        st
    }

    fn cell(&self, server: ServerId, service: ServiceId) -> Option<&HealthCell> {
        self.health
            .get(server.index() * self.n_services + service.index())
    }

    /// Applies a service-test result as one anonymous reporter whose sample time is
    /// also its receive time (embedders and tests without probes identities); see
    /// [`State::apply_service_from`].
    pub fn apply_service(
        &mut self,
        net: &Network,
        server: ServerId,
        service: ServiceId,
        sample: ServiceSample,
    ) -> Health {
        self.apply_service_from(net, server, service, "", sample, sample.at)
    }

    /// Applies a service-test result of `reporter` (a probe's identity) that this server
    /// received at `received`, with the network's hysteresis per reporter: the first
    /// result sets that reporter's vote directly; afterwards `up_after` consecutive
    /// successes bring it up and `down_after` consecutive failures bring it down.
    /// Results dated before the last one applied from the same reporter are ignored.
    /// The target's health is then decided by quorum (see [`crate::health`]). Returns
    /// the health at `received`.
    pub fn apply_service_from(
        &mut self,
        net: &Network,
        server: ServerId,
        service: ServiceId,
        reporter: &str,
        sample: ServiceSample,
        received: Timestamp,
    ) -> Health {
        let i = server.index() * self.n_services + service.index();
        if i >= self.health.len() {
            return Health::Unchecked;
        }
        let r = self.reporters.intern(reporter);
        let c = &mut self.health[i];
        c.apply(
            &net.health,
            r,
            sample.ok,
            sample.response_ms,
            sample.at,
            received,
        );
        c.health(&net.health, received)
    }

    /// The reporters of (server, service) with their current votes (`true`: up), for
    /// diagnostics.
    pub fn votes(&self, server: ServerId, service: ServiceId) -> Vec<(String, bool)> {
        self.cell(server, service)
            .map(|c| {
                c.votes
                    .iter()
                    .map(|v| (self.reporters.name(v.reporter).to_owned(), v.up))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records a server's load (0..=100 percent, clamped) measured at `at`.
    pub fn apply_load(&mut self, server: ServerId, percent: f32, at: Timestamp) {
        self.apply_load_from(server, None, percent, at, at);
    }

    /// Records a LOADP report of a server: its four figures (`parts`; `None` for a
    /// single-number report, then `percent` is the score), measured at `at` and received
    /// by this server at `received` (freshness is judged on `received`). A report dated
    /// before the one held is ignored.
    pub fn apply_load_from(
        &mut self,
        server: ServerId,
        parts: Option<LoadParts>,
        percent: f32,
        at: Timestamp,
        received: Timestamp,
    ) {
        if let Some(c) = self.load.get_mut(server.index())
            && c.at.is_none_or(|t| t <= at)
        {
            *c = LoadCell {
                parts: parts.map(LoadParts::clamped),
                percent: clamp_percent(percent),
                at: Some(at),
                received,
            };
        }
    }

    /// The server's load score (percent, see [`crate::load`]) if a report was received
    /// within the health grace of `now`.
    pub fn load_score(&self, net: &Network, server: ServerId, now: Timestamp) -> Option<f32> {
        let c = self.load.get(server.index())?;
        c.at?;
        if now.since(c.received) > net.health.grace {
            return None;
        }
        Some(match c.parts {
            Some(p) => p.score(&net.load),
            None => c.percent,
        })
    }

    /// Whether the server's fresh load score is at or above the overload cut-off.
    pub fn overloaded(&self, net: &Network, server: ServerId, now: Timestamp) -> bool {
        self.load_score(net, server, now)
            .is_some_and(|s| s >= net.load.overload_percent)
    }

    /// Records a latency sample.
    pub fn apply_latency(&mut self, prefix: ClientPrefix, pop: PopId, sample: LatencySample) {
        self.latency.insert(prefix, pop, sample);
    }

    /// Applies a persistence write from a decision; returns false (and records nothing)
    /// when it is for a new entry and the table already holds its maximum.
    pub fn apply_persist(&mut self, w: PersistWrite) -> bool {
        if self.persistence.len() >= self.max_persistence
            && !self.persistence.contains_key(&(w.prefix, w.host))
        {
            return false;
        }
        self.persistence.insert(
            (w.prefix, w.host),
            Stick {
                server: w.server.0,
                until: w.until,
            },
        );
        true
    }

    /// The unexpired persistence entry of a client prefix for a hostname.
    pub fn sticky(&self, prefix: ClientPrefix, host: HostId, now: Timestamp) -> Option<ServerId> {
        self.persistence
            .get(&(prefix, host))
            .filter(|s| s.until > now)
            .map(|s| ServerId(s.server))
    }

    /// Drops expired persistence entries; returns how many.
    pub fn expire_persistence(&mut self, now: Timestamp) -> usize {
        let before = self.persistence.len();
        self.persistence.retain(|_, s| s.until > now);
        before - self.persistence.len()
    }

    /// Number of persistence entries held (expired ones included until expired).
    pub fn persistence_len(&self) -> usize {
        self.persistence.len()
    }

    /// The health of (server, service) at `now`.
    pub fn health(
        &self,
        net: &Network,
        server: ServerId,
        service: ServiceId,
        now: Timestamp,
    ) -> Health {
        match self.cell(server, service) {
            None => Health::Unchecked,
            Some(c) => c.health(&net.health, now),
        }
    }

    /// The last response time of (server, service), ms, if any.
    pub fn response_ms(&self, server: ServerId, service: ServiceId) -> Option<f32> {
        self.cell(server, service).and_then(|c| c.response_ms())
    }

    /// The server's reported single-number load in percent if received within `grace`
    /// of `now` (see [`State::load_score`] for the score the decision uses).
    pub fn load(&self, server: ServerId, now: Timestamp, grace: Duration) -> Option<f32> {
        self.load.get(server.index()).and_then(|c| {
            c.at.filter(|_| now.since(c.received) <= grace)
                .map(|_| c.percent)
        })
    }
}
