//! The [`LatencyMethod`] plug-in trait and the cheapest-first [`Escalation`] policy.
//!
//! A latency method measures the round-trip time from the probe to one target (a client
//! resolver). Methods differ in what they cost (packets sent, privileges, load on the
//! target) and in how well their result stands for the path clients take. The policy
//! tries them cheapest first and moves to the next one only when the cheaper one gave no
//! result; it keeps per-method success rates and latencies as operational data.
//!
//! The policy is sans-IO: it never measures anything itself. A driver asks it which
//! method to try next, runs that method, and hands the outcome back with `now`.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use udn_core::Timestamp;
//! use udn_probe::latency::{Escalation, MethodInfo, Outcome};
//!
//! let mut policy = Escalation::new(vec![
//!     MethodInfo::new("tcp-connect", 30, 0.9),
//!     MethodInfo::new("passive", 0, 0.3),
//!     MethodInfo::new("dns", 10, 0.9),
//! ]);
//! let now = Timestamp::from_secs(1_000);
//! let mut attempt = policy.begin(now);
//! // Cheapest first: the passive table (index 1) has no entry for this target ...
//! assert_eq!(attempt.next_method(), Some(1));
//! policy.handle(&mut attempt, 1, Outcome::NoResult("not in table".into()), now);
//! // ... so the DNS query (index 2) is tried, and it answers.
//! assert_eq!(attempt.next_method(), Some(2));
//! policy.handle(&mut attempt, 2, Outcome::Rtt(Duration::from_micros(12_000)), now);
//! assert_eq!(attempt.next_method(), None);
//! let sample = attempt.result().unwrap();
//! assert_eq!((sample.method, sample.rtt), (2, Duration::from_micros(12_000)));
//! assert_eq!(policy.stats()[1].no_results, 1);
//! ```

use serde::Serialize;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;
use udn_core::Timestamp;

/// What a method is: its name, cost and accuracy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodInfo {
    /// Short name for logs and metrics (`dns`, `tcp-connect`, `icmp`, `passive`).
    pub name: String,
    /// Relative cost of one measurement (packets, privileges, load on the target);
    /// lower is tried first.
    pub cost: u32,
    /// How well a result stands for the client's path, 0.0..=1.0; breaks cost ties
    /// (higher first).
    pub accuracy: f32,
}

impl MethodInfo {
    /// A method description.
    pub fn new(name: impl Into<String>, cost: u32, accuracy: f32) -> Self {
        MethodInfo {
            name: name.into(),
            cost,
            accuracy,
        }
    }
}

/// The outcome of one measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The round-trip time measured.
    Rtt(Duration),
    /// The method ran but gave no result (timeout, no answer, no table entry).
    NoResult(String),
    /// The method cannot run on this system (for example ICMP without privileges).
    Unavailable(String),
}

/// The future a [`LatencyMethod`] returns: any runtime can drive it.
pub type MeasureFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A way of measuring the RTT to one target. Embedders plug in their own (see
/// `examples/examples/latency_plugin.rs`); the agent feature provides TCP connect, DNS
/// query, ICMP echo and a passive prefix table.
pub trait LatencyMethod: Send + Sync {
    /// Name, cost and accuracy.
    fn info(&self) -> MethodInfo;
    /// Measures the RTT to `target`. Must not panic; must give up on its own after a
    /// bounded time (returning [`Outcome::NoResult`]).
    fn measure(&self, target: IpAddr) -> MeasureFuture<'_>;
}

/// Operational data of one method.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MethodStats {
    /// Measurements attempted.
    pub attempts: u64,
    /// Measurements that gave an RTT.
    pub results: u64,
    /// Measurements that gave no result.
    pub no_results: u64,
    /// Times the method reported itself unavailable.
    pub unavailable: u64,
    /// Exponentially weighted mean RTT of the results (alpha 1/8), microseconds.
    pub mean_rtt_us: f64,
    /// The last RTT, microseconds.
    pub last_rtt_us: Option<u64>,
    /// When it was last used.
    pub last_at: Option<Timestamp>,
    /// Until when it is skipped because it reported itself unavailable.
    pub skip_until: Option<Timestamp>,
}

impl MethodStats {
    /// Fraction of attempts that gave an RTT (0 when never attempted).
    pub fn success_rate(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.results as f64 / self.attempts as f64
        }
    }
}

/// The cheapest-first escalation policy over a fixed list of methods.
#[derive(Debug, Clone)]
pub struct Escalation {
    infos: Vec<MethodInfo>,
    order: Vec<usize>,
    stats: Vec<MethodStats>,
    unavailable_backoff: Duration,
}

/// One target's measurement in progress: which methods are left to try.
#[derive(Debug, Clone)]
pub struct Attempt {
    order: Vec<usize>,
    pos: usize,
    result: Option<Sample>,
    tried: Vec<(usize, Outcome)>,
}

/// The result of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Index of the method that gave it (in the list given to [`Escalation::new`]).
    pub method: usize,
    /// The RTT.
    pub rtt: Duration,
}

impl Attempt {
    /// The method to run next, or `None` when the attempt is finished (a result was
    /// found or every method was tried).
    pub fn next_method(&self) -> Option<usize> {
        if self.result.is_some() {
            None
        } else {
            self.order.get(self.pos).copied()
        }
    }

    /// The result, once a method gave one.
    pub fn result(&self) -> Option<Sample> {
        self.result
    }

    /// Every outcome handled so far, in order, with its method index.
    pub fn tried(&self) -> &[(usize, Outcome)] {
        &self.tried
    }
}

impl Escalation {
    /// A policy over `methods` (indices into this list name them from now on), ordered
    /// by cost, then by accuracy (higher first), then by position.
    pub fn new(methods: Vec<MethodInfo>) -> Self {
        let mut order: Vec<usize> = (0..methods.len()).collect();
        order.sort_by(|&a, &b| {
            let (ma, mb) = (&methods[a], &methods[b]);
            ma.cost
                .cmp(&mb.cost)
                .then(mb.accuracy.total_cmp(&ma.accuracy))
                .then(a.cmp(&b))
        });
        let stats = vec![MethodStats::default(); methods.len()];
        Escalation {
            infos: methods,
            order,
            stats,
            unavailable_backoff: Duration::from_secs(600),
        }
    }

    /// How long a method that reported itself unavailable is skipped (default 10 min).
    #[must_use]
    pub fn with_unavailable_backoff(mut self, d: Duration) -> Self {
        self.unavailable_backoff = d;
        self
    }

    /// The methods, as given.
    pub fn methods(&self) -> &[MethodInfo] {
        &self.infos
    }

    /// The order methods are tried in (indices).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Per-method operational data, by index.
    pub fn stats(&self) -> &[MethodStats] {
        &self.stats
    }

    /// Starts measuring one target at `now`: methods skipped for being unavailable are
    /// left out.
    #[must_use]
    pub fn begin(&self, now: Timestamp) -> Attempt {
        let order = self
            .order
            .iter()
            .copied()
            .filter(|&i| self.stats[i].skip_until.is_none_or(|u| now >= u))
            .collect();
        Attempt {
            order,
            pos: 0,
            result: None,
            tried: Vec::new(),
        }
    }

    /// Hands the outcome of `method` back. An outcome for a method that is not the one
    /// [`Attempt::next_method`] named is recorded in the stats but does not move the
    /// attempt.
    pub fn handle(
        &mut self,
        attempt: &mut Attempt,
        method: usize,
        outcome: Outcome,
        now: Timestamp,
    ) {
        let Some(st) = self.stats.get_mut(method) else {
            return;
        };
        st.attempts += 1;
        st.last_at = Some(now);
        match &outcome {
            Outcome::Rtt(rtt) => {
                let us = rtt.as_micros().min(u64::MAX as u128) as u64;
                st.results += 1;
                st.mean_rtt_us = if st.results == 1 {
                    us as f64
                } else {
                    st.mean_rtt_us + (us as f64 - st.mean_rtt_us) / 8.0
                };
                st.last_rtt_us = Some(us);
                st.skip_until = None;
            }
            Outcome::NoResult(_) => st.no_results += 1,
            Outcome::Unavailable(_) => {
                st.unavailable += 1;
                st.skip_until = Some(now.plus(self.unavailable_backoff));
            }
        }
        if attempt.next_method() == Some(method) {
            if let Outcome::Rtt(rtt) = outcome {
                attempt.result = Some(Sample { method, rtt });
            }
            attempt.pos += 1;
        }
        attempt.tried.push((method, outcome));
    }
}

/// Drives one attempt to the end with the given methods (which must be in the same
/// order as the infos the policy was built from). A helper for drivers on any runtime.
pub async fn measure_with(
    policy: &std::sync::Mutex<Escalation>,
    methods: &[std::sync::Arc<dyn LatencyMethod>],
    target: IpAddr,
    now: impl Fn() -> Timestamp,
) -> Attempt {
    let mut attempt = lock(policy).begin(now());
    while let Some(m) = attempt.next_method() {
        let outcome = match methods.get(m) {
            Some(method) => method.measure(target).await,
            None => Outcome::Unavailable("no such method".into()),
        };
        lock(policy).handle(&mut attempt, m, outcome, now());
    }
    attempt
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn infos(costs: &[u32]) -> Vec<MethodInfo> {
        costs
            .iter()
            .enumerate()
            .map(|(i, &c)| MethodInfo::new(format!("m{i}"), c, 0.5))
            .collect()
    }

    #[test]
    fn unavailable_method_is_skipped_until_backoff_ends() {
        let mut p =
            Escalation::new(infos(&[1, 2])).with_unavailable_backoff(Duration::from_secs(60));
        let t0 = Timestamp::from_secs(100);
        let mut a = p.begin(t0);
        p.handle(&mut a, 0, Outcome::Unavailable("no icmp".into()), t0);
        p.handle(&mut a, 1, Outcome::Rtt(Duration::from_millis(5)), t0);
        assert_eq!(a.result().map(|s| s.method), Some(1));
        let a = p.begin(Timestamp::from_secs(159));
        assert_eq!(a.next_method(), Some(1), "method 0 still backed off");
        let a = p.begin(Timestamp::from_secs(160));
        assert_eq!(a.next_method(), Some(0), "method 0 retried after backoff");
    }

    #[test]
    fn stats_track_success_rate_and_mean() {
        let mut p = Escalation::new(infos(&[1]));
        let now = Timestamp::from_secs(1);
        for (i, o) in [
            Outcome::Rtt(Duration::from_micros(800)),
            Outcome::NoResult("timeout".into()),
            Outcome::Rtt(Duration::from_micros(1_600)),
        ]
        .into_iter()
        .enumerate()
        {
            let mut a = p.begin(now);
            p.handle(&mut a, 0, o, now);
            assert_eq!(p.stats()[0].attempts, i as u64 + 1);
        }
        let s = &p.stats()[0];
        assert_eq!((s.results, s.no_results), (2, 1));
        assert!((s.success_rate() - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.mean_rtt_us - 900.0).abs() < 1e-9, "{}", s.mean_rtt_us);
        assert_eq!(s.last_rtt_us, Some(1_600));
    }

    proptest! {
        /// Methods are tried in non-decreasing cost order; the attempt stops at the
        /// first result, and every cheaper method tried gave none.
        #[test]
        fn cheapest_first_and_stop_at_first_result(
            costs in prop::collection::vec(0u32..5, 1..6),
            answers in prop::collection::vec(prop::option::of(1u64..10_000), 6),
        ) {
            let mut p = Escalation::new(infos(&costs));
            let now = Timestamp::from_secs(5);
            let mut a = p.begin(now);
            let mut last_cost = 0;
            let mut tried = Vec::new();
            while let Some(m) = a.next_method() {
                prop_assert!(costs[m] >= last_cost);
                last_cost = costs[m];
                tried.push(m);
                let o = match answers[m] {
                    Some(us) => Outcome::Rtt(Duration::from_micros(us)),
                    None => Outcome::NoResult("none".into()),
                };
                p.handle(&mut a, m, o, now);
            }
            match a.result() {
                Some(s) => {
                    prop_assert_eq!(Some(&s.method), tried.last());
                    prop_assert!(tried[..tried.len() - 1].iter().all(|&m| answers[m].is_none()));
                }
                None => {
                    prop_assert_eq!(tried.len(), costs.len());
                    prop_assert!(tried.iter().all(|&m| answers[m].is_none()));
                }
            }
            let total: u64 = p.stats().iter().map(|s| s.attempts).sum();
            prop_assert_eq!(total as usize, tried.len());
        }
    }
}
