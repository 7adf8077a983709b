//! Log records folded into rollups: per-minute counters per key (HTTP per customer,
//! host and POP; DNS per name, POP and reason; answers per GTM address; probes per
//! method), coarsened to UTC hours and days, and the grain a range is read at. Pure: the
//! log store (`udn_bins::store`) writes these rows, and an embedder can fold UDN log files
//! ([`crate::logfile`]) the same way without it.

use std::collections::HashMap;

use crate::Timestamp;
use crate::log::{FILL_OUTCOME, LogRecord};

/// The start (ms) of the minute containing `ts`.
pub fn minute_of(ts: Timestamp) -> i64 {
    to_i64(ts.as_millis() / 60_000 * 60_000)
}

/// `u64` to the databases' signed 64-bit integers, saturating.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Key of an HTTP rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpKey {
    /// Minute start (ms).
    pub minute: i64,
    /// Customer, `""` if unknown.
    pub customer: String,
    /// Host.
    pub host: String,
    /// POP.
    pub pop: String,
}

/// Counters of an HTTP rollup row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpAgg {
    /// Requests.
    pub requests: i64,
    /// Bytes sent to clients.
    pub bytes: i64,
    /// Bytes fetched from origins.
    pub fill_bytes: i64,
    /// Responses by status class 1xx..5xx (index 0..4; other codes count nowhere).
    pub status: [i64; 5],
    /// Cache hits.
    pub hits: i64,
    /// Cache misses.
    pub misses: i64,
    /// Stale answers served.
    pub stale: i64,
    /// Revalidated entries.
    pub revalidated: i64,
    /// Requests that bypassed the cache.
    pub bypass: i64,
    /// Sum of serving times, µs.
    pub duration_us: i64,
}

/// Key of a DNS query rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsKey {
    /// Minute start (ms).
    pub minute: i64,
    /// Customer, `""` if none.
    pub customer: String,
    /// Queried name.
    pub hostname: String,
    /// POP of the answer, `""` if none.
    pub pop: String,
    /// Decision reason or response code.
    pub reason: String,
}

/// Key of a DNS answer rollup row (one per address answered).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    /// Minute start (ms).
    pub minute: i64,
    /// Queried name.
    pub hostname: String,
    /// Address answered.
    pub address: String,
    /// POP of the answer, `""` if none.
    pub pop: String,
}

/// Key of a probe rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// Minute start (ms).
    pub minute: i64,
    /// POP of the probe.
    pub pop: String,
    /// `service`, `load`, `latency`.
    pub kind: String,
    /// Method (for latency: `tcp-connect`, `dns`, `icmp`, `passive`, ...).
    pub method: String,
}

/// Counters of a probe rollup row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProbeAgg {
    /// Samples.
    pub samples: i64,
    /// Successful samples.
    pub ok: i64,
    /// Sum of the values (mean = value_sum / samples).
    pub value_sum: f64,
}

/// The per-minute rollups of a set of records.
#[derive(Debug, Clone, Default)]
pub struct Rollups {
    /// Per (minute, customer, host, POP).
    pub http: HashMap<HttpKey, HttpAgg>,
    /// Per (minute, customer, hostname, POP, reason).
    pub dns: HashMap<DnsKey, i64>,
    /// Per (minute, hostname, address, POP).
    pub answers: HashMap<AnswerKey, i64>,
    /// Per (minute, POP, kind, method).
    pub probe: HashMap<ProbeKey, ProbeAgg>,
}

impl Rollups {
    /// Folds records into per-minute rollups.
    ///
    /// # Examples
    ///
    /// ```
    /// use udn_core::rollup::Rollups;
    /// use udn_core::{Timestamp, log::{LogRecord, ProbeRecord}};
    /// let rec = |ts| LogRecord::Probe(ProbeRecord {
    ///     ts: Timestamp::from_millis(ts), pop: "fra".into(), kind: "latency".into(),
    ///     target: "192.0.2.0/24".into(), method: "tcp-connect".into(), ok: true,
    ///     value: 10.0, detail: String::new(),
    /// });
    /// let r = Rollups::fold(&[rec(1_000), rec(2_000), rec(61_000)]);
    /// assert_eq!(r.probe.len(), 2); // two minutes
    /// assert_eq!(r.probe.values().map(|a| a.samples).sum::<i64>(), 3);
    /// ```
    pub fn fold(records: &[LogRecord]) -> Rollups {
        // Fold with keys borrowed from the records (no allocation per record), then own
        // the few distinct keys.
        let mut http: HashMap<(i64, &str, &str, &str), HttpAgg> = HashMap::new();
        let mut dns: HashMap<(i64, &str, &str, &str, &str), i64> = HashMap::new();
        let mut answers: HashMap<(i64, &str, std::net::IpAddr, &str), i64> = HashMap::new();
        let mut probe: HashMap<(i64, &str, &str, &str), ProbeAgg> = HashMap::new();
        for rec in records {
            match rec {
                LogRecord::Http(h) => {
                    let key = (
                        minute_of(h.ts),
                        h.customer.as_deref().unwrap_or(""),
                        h.host.as_str(),
                        h.pop.as_str(),
                    );
                    let a = http.entry(key).or_default();
                    if h.outcome == FILL_OUTCOME {
                        // The edge's own origin fetch: cache fill, not a request.
                        a.fill_bytes = a.fill_bytes.saturating_add(to_i64(h.fill_bytes));
                        continue;
                    }
                    a.requests += 1;
                    a.bytes = a.bytes.saturating_add(to_i64(h.bytes));
                    a.fill_bytes = a.fill_bytes.saturating_add(to_i64(h.fill_bytes));
                    if (100..600).contains(&h.status) {
                        a.status[usize::from(h.status / 100 - 1)] += 1;
                    }
                    match h.outcome.as_str() {
                        "hit" => a.hits += 1,
                        "miss" => a.misses += 1,
                        "stale" => a.stale += 1,
                        "revalidated" => a.revalidated += 1,
                        o if o.starts_with("bypass") => a.bypass += 1,
                        _ => {}
                    }
                    a.duration_us = a.duration_us.saturating_add(to_i64(h.duration_us));
                }
                LogRecord::Dns(d) => {
                    let minute = minute_of(d.ts);
                    let pop = d.pop.as_deref().unwrap_or("");
                    let key = (
                        minute,
                        d.customer.as_deref().unwrap_or(""),
                        d.hostname.as_str(),
                        pop,
                        d.reason.as_str(),
                    );
                    *dns.entry(key).or_default() += 1;
                    for addr in &d.addrs {
                        *answers
                            .entry((minute, d.hostname.as_str(), *addr, pop))
                            .or_default() += 1;
                    }
                }
                LogRecord::Probe(p) => {
                    let key = (
                        minute_of(p.ts),
                        p.pop.as_str(),
                        p.kind.as_str(),
                        p.method.as_str(),
                    );
                    let a = probe.entry(key).or_default();
                    a.samples += 1;
                    a.ok += i64::from(p.ok);
                    a.value_sum += p.value;
                }
                // Folded with the file's role and instance ([`ops::OpsRollups`]).
                LogRecord::Ops(_) => {}
            }
        }
        Rollups {
            http: http
                .into_iter()
                .map(|((minute, customer, host, pop), a)| {
                    let key = HttpKey {
                        minute,
                        customer: customer.to_owned(),
                        host: host.to_owned(),
                        pop: pop.to_owned(),
                    };
                    (key, a)
                })
                .collect(),
            dns: dns
                .into_iter()
                .map(|((minute, customer, hostname, pop, reason), n)| {
                    let key = DnsKey {
                        minute,
                        customer: customer.to_owned(),
                        hostname: hostname.to_owned(),
                        pop: pop.to_owned(),
                        reason: reason.to_owned(),
                    };
                    (key, n)
                })
                .collect(),
            answers: answers
                .into_iter()
                .map(|((minute, hostname, addr, pop), n)| {
                    let key = AnswerKey {
                        minute,
                        hostname: hostname.to_owned(),
                        address: addr.to_string(),
                        pop: pop.to_owned(),
                    };
                    (key, n)
                })
                .collect(),
            probe: probe
                .into_iter()
                .map(|((minute, pop, kind, method), a)| {
                    let key = ProbeKey {
                        minute,
                        pop: pop.to_owned(),
                        kind: kind.to_owned(),
                        method: method.to_owned(),
                    };
                    (key, a)
                })
                .collect(),
        }
    }

    /// The same rollups at a coarser grain: every key's `minute` floored to the start of
    /// its bucket, counters summed (what ingestion writes to the hourly and daily tables).
    pub fn coarsen(&self, grain: Grain) -> Rollups {
        let b = |m: i64| m.max(0) as u64 / grain.millis() * grain.millis();
        let b = |m: i64| to_i64(b(m));
        let mut out = Rollups::default();
        for (k, a) in &self.http {
            let key = HttpKey {
                minute: b(k.minute),
                ..k.clone()
            };
            let e = out.http.entry(key).or_default();
            e.requests = e.requests.saturating_add(a.requests);
            e.bytes = e.bytes.saturating_add(a.bytes);
            e.fill_bytes = e.fill_bytes.saturating_add(a.fill_bytes);
            for (x, y) in e.status.iter_mut().zip(a.status) {
                *x = x.saturating_add(y);
            }
            e.hits = e.hits.saturating_add(a.hits);
            e.misses = e.misses.saturating_add(a.misses);
            e.stale = e.stale.saturating_add(a.stale);
            e.revalidated = e.revalidated.saturating_add(a.revalidated);
            e.bypass = e.bypass.saturating_add(a.bypass);
            e.duration_us = e.duration_us.saturating_add(a.duration_us);
        }
        for (k, n) in &self.dns {
            let key = DnsKey {
                minute: b(k.minute),
                ..k.clone()
            };
            let e = out.dns.entry(key).or_default();
            *e = e.saturating_add(*n);
        }
        for (k, n) in &self.answers {
            let key = AnswerKey {
                minute: b(k.minute),
                ..k.clone()
            };
            let e = out.answers.entry(key).or_default();
            *e = e.saturating_add(*n);
        }
        for (k, a) in &self.probe {
            let key = ProbeKey {
                minute: b(k.minute),
                ..k.clone()
            };
            let e = out.probe.entry(key).or_default();
            e.samples = e.samples.saturating_add(a.samples);
            e.ok = e.ok.saturating_add(a.ok);
            e.value_sum += a.value_sum;
        }
        out
    }
}

/// A time range `[from, to)`, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Inclusive start.
    pub from: Timestamp,
    /// Exclusive end.
    pub to: Timestamp,
}

impl Range {
    /// The 24 hours before `now` (the portal's default chart).
    pub fn last_24h(now: Timestamp) -> Range {
        Range {
            from: Timestamp::from_millis(now.as_millis().saturating_sub(86_400_000)),
            to: now,
        }
    }
}

/// The granularity of a rollup table, and of a series read from one.
///
/// The rule ([`Grain::for_span`]): a range of up to [`MINUTE_MAX_SPAN_MS`] (2 days) is
/// read per minute (at most 2,880 points), up to [`HOUR_MAX_SPAN_MS`] (90 days) per hour
/// (at most 2,160 points), anything longer per day. Hour and day buckets are UTC hours
/// and UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    /// Per-minute rollups (`rollup_http`, ...).
    Minute,
    /// Hourly rollups (`rollup_http_hour`, ...).
    Hour,
    /// Daily rollups (`rollup_http_day`, ...).
    Day,
}

/// The longest range read from the per-minute rollups (2 days).
pub const MINUTE_MAX_SPAN_MS: u64 = 2 * 86_400_000;
/// The longest range read from the hourly rollups (90 days).
pub const HOUR_MAX_SPAN_MS: u64 = 90 * 86_400_000;

impl Grain {
    /// Every grain, finest first.
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    /// The bucket's length in ms.
    pub const fn millis(self) -> u64 {
        match self {
            Grain::Minute => 60_000,
            Grain::Hour => 3_600_000,
            Grain::Day => 86_400_000,
        }
    }

    /// `minute`, `hour` or `day`.
    pub const fn name(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }

    /// The suffix of this grain's rollup tables (`rollup_http` + suffix).
    pub const fn suffix(self) -> &'static str {
        match self {
            Grain::Minute => "",
            Grain::Hour => "_hour",
            Grain::Day => "_day",
        }
    }

    /// The grain a range of `span_ms` is read at (see [`Grain`]).
    ///
    /// ```
    /// use udn_core::rollup::Grain;
    /// assert_eq!(Grain::for_span(86_400_000), Grain::Minute);
    /// assert_eq!(Grain::for_span(7 * 86_400_000), Grain::Hour);
    /// assert_eq!(Grain::for_span(365 * 86_400_000), Grain::Day);
    /// ```
    pub const fn for_span(span_ms: u64) -> Grain {
        if span_ms <= MINUTE_MAX_SPAN_MS {
            Grain::Minute
        } else if span_ms <= HOUR_MAX_SPAN_MS {
            Grain::Hour
        } else {
            Grain::Day
        }
    }

    /// The start of the bucket holding `ms`.
    pub const fn floor(self, ms: u64) -> u64 {
        ms / self.millis() * self.millis()
    }

    /// `range` widened to whole buckets: `from` down, `to` up to a bucket boundary. This
    /// is the range a series at this grain covers.
    pub fn align(self, range: Range) -> Range {
        let step = self.millis();
        let to = range.to.as_millis().div_ceil(step).saturating_mul(step);
        Range {
            from: Timestamp::from_millis(self.floor(range.from.as_millis())),
            to: Timestamp::from_millis(to),
        }
    }
}
