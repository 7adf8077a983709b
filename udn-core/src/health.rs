//! Health by quorum: every probe (a *reporter*, named by its instance identity) keeps
//! its own hysteresis for a (server, service); the target's health is what enough of
//! them agree on.
//!
//! * Each reporter's vote is up or down after its own `up_after` / `down_after`
//!   consecutive results; a result dated (by the probe's clock) before the last one
//!   applied from the same reporter is ignored.
//! * A vote is **fresh** while the DNS server received it within `grace` of `now`:
//!   staleness is judged on the receiving server's clock, never the probe's, so a probe
//!   whose clock is behind does not make targets stale.
//! * The quorum in force is `min(health.quorum, live reporters)`, where live reporters
//!   are those heard from within `grace + silent_hold` (so a network with one probe, or
//!   one that lost probes for good, still sees targets go down).
//! * With fresh votes: **down** when at least the quorum of fresh votes say down, else
//!   **up** (one probe's view alone does not take a target down).
//! * With no fresh vote (every probe silent): the state at the last receive time holds
//!   for `silent_hold`; after that the target is **stale** (never up), and the
//!   all-down policy applies.

use crate::network::HealthRules;
use crate::state::Health;
use crate::time::Timestamp;

/// The most reporters remembered per (server, service); a new one replaces the one
/// heard from longest ago.
pub const MAX_REPORTERS: usize = 32;

/// One reporter's view of a target.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Vote {
    /// Reporter (index into [`Reporters`]).
    pub reporter: u16,
    pub up: bool,
    pub successes: u32,
    pub failures: u32,
    pub response_ms: f32,
    /// The sample's own time (the probe's clock): orders one reporter's results.
    pub at: Timestamp,
    /// When this server received it (its own clock): judges freshness.
    pub received: Timestamp,
}

/// Interned reporter names (probe identities).
#[derive(Debug, Clone, Default)]
pub(crate) struct Reporters {
    names: Vec<String>,
}

impl Reporters {
    /// The index of `name`, added if new (at most `u16::MAX` names; beyond that every
    /// new name shares the last index).
    pub fn intern(&mut self, name: &str) -> u16 {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i as u16;
        }
        if self.names.len() >= u16::MAX as usize {
            return u16::MAX - 1;
        }
        self.names.push(name.to_owned());
        (self.names.len() - 1) as u16
    }

    pub fn name(&self, i: u16) -> &str {
        self.names.get(i as usize).map_or("", |s| s.as_str())
    }
}

/// The votes of one (server, service).
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthCell {
    pub votes: Vec<Vote>,
}

impl HealthCell {
    /// Applies one result of `reporter` received at `received`.
    pub fn apply(
        &mut self,
        rules: &HealthRules,
        reporter: u16,
        ok: bool,
        response_ms: f32,
        at: Timestamp,
        received: Timestamp,
    ) {
        let i = match self.votes.iter().position(|v| v.reporter == reporter) {
            Some(i) => i,
            None => {
                let fresh = Vote {
                    reporter,
                    up: ok,
                    successes: 0,
                    failures: 0,
                    response_ms: 0.0,
                    at,
                    received,
                };
                if self.votes.len() >= MAX_REPORTERS {
                    let oldest = (0..self.votes.len())
                        .min_by_key(|&k| self.votes[k].received)
                        .unwrap_or(0);
                    self.votes[oldest] = fresh;
                    oldest
                } else {
                    self.votes.push(fresh);
                    self.votes.len() - 1
                }
            }
        };
        let v = &mut self.votes[i];
        let first = v.successes == 0 && v.failures == 0;
        if !first && at < v.at {
            return;
        }
        if ok {
            v.successes = v.successes.saturating_add(1);
            v.failures = 0;
        } else {
            v.failures = v.failures.saturating_add(1);
            v.successes = 0;
        }
        if first {
            v.up = ok;
        } else if v.up && v.failures >= rules.down_after {
            v.up = false;
        } else if !v.up && v.successes >= rules.up_after {
            v.up = true;
        }
        if ok {
            v.response_ms = response_ms;
        }
        v.at = at;
        v.received = v.received.max(received);
    }

    /// The health at `now` by the rules of the module documentation.
    pub fn health(&self, rules: &HealthRules, now: Timestamp) -> Health {
        let Some(last) = self.votes.iter().map(|v| v.received).max() else {
            return Health::Unchecked;
        };
        if now.since(last) <= rules.grace {
            return self.quorum_at(rules, now);
        }
        if now.since(last) <= rules.grace + rules.silent_hold {
            // Every probe is silent: the state when the last one was heard holds.
            return self.quorum_at(rules, last);
        }
        Health::Stale
    }

    /// Up or down by the fresh votes at `at` (at least one is fresh).
    fn quorum_at(&self, rules: &HealthRules, at: Timestamp) -> Health {
        let window = rules.grace + rules.silent_hold;
        let live = self
            .votes
            .iter()
            .filter(|v| at.since(v.received) <= window)
            .count();
        let quorum = (rules.quorum as usize).min(live).max(1);
        let down = self
            .votes
            .iter()
            .filter(|v| !v.up && at.since(v.received) <= rules.grace)
            .count();
        if down >= quorum {
            Health::Down
        } else {
            Health::Up
        }
    }

    /// The response time of the most recently received passing vote.
    pub fn response_ms(&self) -> Option<f32> {
        self.votes
            .iter()
            .filter(|v| v.successes > 0 || v.up)
            .max_by_key(|v| v.received)
            .map(|v| v.response_ms)
    }
}

/// Step 1b of the decision: given `usable` (health-usable targets of `host`, in target
/// order, published then standby), drops the standby servers while at least
/// `min_healthy` published targets are usable, then drops the overloaded targets (see
/// [`crate::load`]) while a usable target that is not overloaded remains. Returns the
/// number of usable targets left.
pub fn standby_and_overload(
    net: &crate::Network,
    state: &crate::State,
    host: &crate::network::Host,
    now: Timestamp,
    usable: &mut [bool],
) -> usize {
    let targets = &host.targets[..usable.len()];
    let published = (0..usable.len())
        .filter(|&i| usable[i] && !targets[i].standby)
        .count();
    if published >= host.min_healthy as usize {
        for (u, t) in usable.iter_mut().zip(targets) {
            *u &= !t.standby;
        }
    }
    let mut over = [false; crate::network::MAX_TARGETS];
    let mut any_ok = false;
    for i in 0..usable.len() {
        if usable[i] {
            over[i] = state.overloaded(net, targets[i].server, now);
            any_ok |= !over[i];
        }
    }
    if any_ok {
        for i in 0..usable.len() {
            usable[i] &= !over[i];
        }
    }
    usable.iter().filter(|u| **u).count()
}
