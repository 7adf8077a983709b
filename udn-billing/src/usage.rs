//! Usage records, idempotent batches, and their aggregation per account and interval.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use udn_core::Timestamp;

use crate::error::Error;
use crate::period::{BUCKET_MS, first_bucket};

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// DNS queries answered for the account's names.
    DnsQueries,
    /// HTTP requests served by the edges.
    HttpRequests,
    /// Body bytes delivered to clients (per POP or region). The 5-minute bandwidth
    /// samples of the 95th percentile are these bytes, summed across POPs per bucket.
    BytesDelivered,
    /// Bytes fetched from the customer's origin to fill the caches.
    CacheFillBytes,
}

impl Metric {
    /// The snake-case name, as in serde.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::DnsQueries => "dns_queries",
            Metric::HttpRequests => "http_requests",
            Metric::BytesDelivered => "bytes_delivered",
            Metric::CacheFillBytes => "cache_fill_bytes",
        }
    }

    /// Parses [`Metric::as_str`].
    pub fn from_name(s: &str) -> Option<Metric> {
        [
            Metric::DnsQueries,
            Metric::HttpRequests,
            Metric::BytesDelivered,
            Metric::CacheFillBytes,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }

    /// Whether the metric belongs to the CDN (a GTM-only account is never charged for it).
    pub fn is_cdn(self) -> bool {
        !matches!(self, Metric::DnsQueries)
    }
}

/// One usage count. Records are stamped at 5-minute resolution or finer: every record is
/// counted in the 5-minute bucket containing `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// Account (the log records' `customer`).
    pub account: String,
    /// When it happened.
    pub at: Timestamp,
    /// What was counted.
    pub metric: Metric,
    /// POP or region label (empty where it does not apply).
    #[serde(default)]
    pub region: String,
    /// How many (queries, requests, bytes).
    pub quantity: u64,
}

/// Records shipped together under one idempotency key (for collected logs: the log
/// file id). Applying a batch twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// The idempotency key.
    pub key: String,
    /// The records.
    pub records: Vec<UsageRecord>,
}

impl UsageBatch {
    /// A 64-bit FNV-1a fingerprint of the records, in order, to tell a faithful replay
    /// (same key, same records: ignored) from a conflicting one (same key, other records).
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for r in &self.records {
            eat(&(r.account.len() as u64).to_le_bytes());
            eat(r.account.as_bytes());
            eat(&r.at.as_millis().to_le_bytes());
            eat(r.metric.as_str().as_bytes());
            eat(&(r.region.len() as u64).to_le_bytes());
            eat(r.region.as_bytes());
            eat(&r.quantity.to_le_bytes());
        }
        h
    }
}

/// What [`UsageLedger::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The batch was new and its records were added.
    New,
    /// The batch had been applied before; nothing changed.
    Replay,
}

/// Usage of one account over an interval `[from, to)`: totals per metric and region,
/// and one bandwidth sample (bytes delivered, all POPs summed) per 5-minute bucket whose
/// start lies in the interval; buckets without traffic are zero.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Totals per (metric, region); serialized as a list of
    /// `{"metric", "region", "quantity"}` objects (JSON keys must be strings).
    #[serde(with = "counters_as_list")]
    pub counters: BTreeMap<(Metric, String), u64>,
    /// Bytes delivered per 5-minute bucket, in time order, zeros included.
    pub bandwidth: Vec<u64>,
}

impl UsageTotals {
    /// Empty usage over `n` buckets.
    pub fn zero(buckets: usize) -> Self {
        UsageTotals {
            counters: BTreeMap::new(),
            bandwidth: vec![0; buckets],
        }
    }

    /// Total of a metric, over all regions (`region: None`) or one region.
    pub fn total(&self, metric: Metric, region: Option<&str>) -> u128 {
        self.counters
            .iter()
            .filter(|((m, r), _)| *m == metric && region.is_none_or(|want| want == r))
            .map(|(_, q)| u128::from(*q))
            .sum()
    }
}

/// In-memory usage of many accounts at 5-minute resolution, with the set of applied
/// batch keys. The store in `udn-bins` keeps the same data in SQL tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageLedger {
    applied: BTreeMap<String, u64>,
    /// account -> (bucket index, metric, region) -> quantity
    counts: BTreeMap<String, BTreeMap<(u64, Metric, String), u64>>,
}

impl UsageLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a batch once: a replay with the same key and records changes nothing, a
    /// replay with other records is [`Error::BatchConflict`], and a batch that would
    /// overflow a counter is rejected whole ([`Error::UsageOverflow`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use udn_billing::{Metric, UsageBatch, UsageLedger, UsageRecord, usage::Applied};
    /// use udn_core::Timestamp;
    /// let batch = UsageBatch {
    ///     key: "file-0001".into(),
    ///     records: vec![UsageRecord {
    ///         account: "acme".into(),
    ///         at: Timestamp::from_secs(1_700_000_000),
    ///         metric: Metric::DnsQueries,
    ///         region: String::new(),
    ///         quantity: 1200,
    ///     }],
    /// };
    /// let mut ledger = UsageLedger::new();
    /// assert_eq!(ledger.apply(&batch)?, Applied::New);
    /// assert_eq!(ledger.apply(&batch)?, Applied::Replay);
    /// let t = ledger.totals("acme", Timestamp::from_secs(1_699_999_800), Timestamp::from_secs(1_700_003_400));
    /// assert_eq!(t.total(Metric::DnsQueries, None), 1200);
    /// # Ok::<(), udn_billing::Error>(())
    /// ```
    pub fn apply(&mut self, batch: &UsageBatch) -> Result<Applied, Error> {
        let fp = batch.fingerprint();
        if let Some(seen) = self.applied.get(&batch.key) {
            return if *seen == fp {
                Ok(Applied::Replay)
            } else {
                Err(Error::BatchConflict {
                    key: batch.key.clone(),
                })
            };
        }
        // Stage every new value first so an overflow leaves the ledger untouched.
        let mut staged: BTreeMap<(&str, (u64, Metric, String)), u64> = BTreeMap::new();
        for r in &batch.records {
            let key = (r.at.as_millis() / BUCKET_MS, r.metric, r.region.clone());
            let slot = (r.account.as_str(), key);
            let current = match staged.get(&slot) {
                Some(v) => *v,
                None => self
                    .counts
                    .get(&r.account)
                    .and_then(|m| m.get(&slot.1))
                    .copied()
                    .unwrap_or(0),
            };
            let next = current
                .checked_add(r.quantity)
                .ok_or_else(|| Error::UsageOverflow {
                    key: batch.key.clone(),
                    account: r.account.clone(),
                })?;
            staged.insert(slot, next);
        }
        for ((account, key), v) in staged {
            self.counts
                .entry(account.to_owned())
                .or_default()
                .insert(key, v);
        }
        self.applied.insert(batch.key.clone(), fp);
        Ok(Applied::New)
    }

    /// Whether a batch key has been applied.
    pub fn has_applied(&self, key: &str) -> bool {
        self.applied.contains_key(key)
    }

    /// Usage of `account` in the 5-minute buckets whose start lies in `[from, to)`.
    pub fn totals(&self, account: &str, from: Timestamp, to: Timestamp) -> UsageTotals {
        let (b0, b1) = (first_bucket(from), first_bucket(to));
        let mut t = UsageTotals::zero(b1.saturating_sub(b0) as usize);
        let Some(m) = self.counts.get(account) else {
            return t;
        };
        if b1 <= b0 {
            return t;
        }
        let lo = (b0, Metric::DnsQueries, String::new());
        for ((b, metric, region), q) in m.range(lo..) {
            if *b >= b1 {
                break;
            }
            let c = t.counters.entry((*metric, region.clone())).or_insert(0);
            *c = c.saturating_add(*q);
            if *metric == Metric::BytesDelivered {
                let s = &mut t.bandwidth[(*b - b0) as usize];
                *s = s.saturating_add(*q);
            }
        }
        t
    }
}

mod counters_as_list {
    use super::Metric;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Counter {
        metric: Metric,
        region: String,
        quantity: u64,
    }

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<(Metric, String), u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(|((metric, region), q)| Counter {
            metric: *metric,
            region: region.clone(),
            quantity: *q,
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(Metric, String), u64>, D::Error> {
        let v = Vec::<Counter>::deserialize(d)?;
        let mut m = BTreeMap::new();
        for c in v {
            if m.insert((c.metric, c.region), c.quantity).is_some() {
                return Err(serde::de::Error::custom(
                    "duplicate (metric, region) counter",
                ));
            }
        }
        Ok(m)
    }
}

/// Turns the records of one collected log file into a usage batch keyed by the file id,
/// so that a file collected twice is counted once. DNS decisions count as
/// [`Metric::DnsQueries`] (region: the chosen POP, or empty), HTTP records as
/// [`Metric::HttpRequests`], [`Metric::BytesDelivered`] and [`Metric::CacheFillBytes`]
/// (region: the edge's POP). Records without a customer, and probe records, are not
/// billable and are skipped. Counts are folded per account, metric, region and
/// 5-minute bucket (stamped at the bucket start), which changes no total and no
/// bandwidth sample.
///
/// # Examples
///
/// ```
/// use udn_billing::usage::{Metric, from_log_records};
/// use udn_core::log::{HttpRecord, LogRecord};
/// use udn_core::Timestamp;
/// let hit = |ts| LogRecord::Http(HttpRecord {
///     ts: Timestamp::from_secs(ts), customer: Some("shop".into()), host: "www.shop.example".into(),
///     path: "/a.gif".into(), method: "GET".into(), status: 200, bytes: 1000, fill_bytes: 0,
///     outcome: "hit".into(), duration_us: 80, client: "192.0.2.1".parse().unwrap(), pop: "fra".into(),
/// });
/// let batch = from_log_records("file-7", &[hit(1_700_000_000), hit(1_700_000_100)]);
/// assert_eq!(batch.key, "file-7");
/// let bytes: u64 = batch.records.iter().filter(|r| r.metric == Metric::BytesDelivered).map(|r| r.quantity).sum();
/// assert_eq!(bytes, 2000);
/// ```
pub fn from_log_records(file_id: &str, records: &[udn_core::log::LogRecord]) -> UsageBatch {
    use udn_core::log::LogRecord;
    let mut folded: BTreeMap<(String, u64, Metric, String), u64> = BTreeMap::new();
    let mut add = |account: &str, at: Timestamp, metric, region: &str, q: u64| {
        if q == 0 {
            return;
        }
        let key = (
            account.to_owned(),
            at.as_millis() / BUCKET_MS,
            metric,
            region.to_owned(),
        );
        let slot = folded.entry(key).or_insert(0);
        *slot = slot.saturating_add(q);
    };
    for r in records {
        match r {
            LogRecord::Dns(d) => {
                if let Some(c) = &d.customer {
                    add(
                        c,
                        d.ts,
                        Metric::DnsQueries,
                        d.pop.as_deref().unwrap_or(""),
                        1,
                    );
                }
            }
            LogRecord::Http(h) => {
                if let Some(c) = &h.customer {
                    add(c, h.ts, Metric::HttpRequests, &h.pop, 1);
                    add(c, h.ts, Metric::BytesDelivered, &h.pop, h.bytes);
                    add(c, h.ts, Metric::CacheFillBytes, &h.pop, h.fill_bytes);
                }
            }
            LogRecord::Probe(_) | LogRecord::Ops(_) => {}
        }
    }
    UsageBatch {
        key: file_id.to_owned(),
        records: folded
            .into_iter()
            .map(
                |((account, bucket, metric, region), quantity)| UsageRecord {
                    account,
                    at: Timestamp::from_millis(bucket * BUCKET_MS),
                    metric,
                    region,
                    quantity,
                },
            )
            .collect(),
    }
}
