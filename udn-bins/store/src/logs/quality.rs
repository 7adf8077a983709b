//! Service quality of the CDN: a response-time histogram and the origin errors per
//! (bucket, customer, hostname, POP), folded from each file's HTTP records into
//! `rollup_quality`, `rollup_quality_hour` and `rollup_quality_day` in the file's ingest
//! transaction (exactly once per file, like the other rollups); and the top URLs and
//! client networks of a range, read from the raw records.
//!
//! The histogram has [`BUCKETS`] buckets on a doubling scale of milliseconds (bucket
//! `i < 15` holds times below `2^i` ms and at or above `2^(i-1)` ms; the last one
//! everything from 16.384 s), so any percentile of any range at any grain is a sum of
//! bucket counts, accurate to its bucket ([`percentile`] interpolates inside it). An
//! origin error is a response with a 5xx status that did not come from the cache (a
//! miss, a revalidation or a pass-through: the origin's own 5xx, or the edge's 502/504
//! for an origin it could not reach); fill records are not responses and count nowhere.

use std::collections::{BTreeMap, HashMap};

use super::{Grain, Param, Result, SeriesQuery, Store, int, minute_of, text, to_i64};
use crate::migrate::Step;
use udn_core::log::{FILL_OUTCOME, LogRecord};

/// Histogram buckets per row.
pub const BUCKETS: usize = 16;

/// The columns of the histogram, `h0` to `h15`.
fn hist_cols() -> String {
    (0..BUCKETS)
        .map(|i| format!("h{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One quality table (`rollup_quality` + suffix).
macro_rules! quality_table {
    ($sfx:literal) => {
        concat!(
            "CREATE TABLE rollup_quality",
            $sfx,
            " (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, host TEXT NOT NULL, pop TEXT NOT NULL,
    origin_errors BIGINT NOT NULL,
    h0 BIGINT NOT NULL, h1 BIGINT NOT NULL, h2 BIGINT NOT NULL, h3 BIGINT NOT NULL,
    h4 BIGINT NOT NULL, h5 BIGINT NOT NULL, h6 BIGINT NOT NULL, h7 BIGINT NOT NULL,
    h8 BIGINT NOT NULL, h9 BIGINT NOT NULL, h10 BIGINT NOT NULL, h11 BIGINT NOT NULL,
    h12 BIGINT NOT NULL, h13 BIGINT NOT NULL, h14 BIGINT NOT NULL, h15 BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, host, pop)
);
"
        )
    };
}

/// The schema step that creates the quality tables, per minute, hour and day
/// (self-contained, so it can be renumbered).
pub const MIGRATION: Step = Step {
    version: 7,
    name: "quality_rollups",
    sql: concat!(
        quality_table!(""),
        quality_table!("_hour"),
        quality_table!("_day")
    ),
};

/// The histogram bucket of a response time.
pub fn bucket_of(duration_us: u64) -> usize {
    // Bucket i < 15: below 2^i ms.
    let ms_ceil = duration_us / 1000;
    let mut i = 0;
    while i < BUCKETS - 1 && ms_ceil >= (1u64 << i) {
        i += 1;
    }
    i
}

/// The bounds of bucket `i`, ms: `[lower, upper)`; the last bucket's upper bound is
/// taken as twice its lower.
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    let lower = if i == 0 {
        0.0
    } else {
        (1u64 << (i - 1)) as f64
    };
    let upper = if i < BUCKETS - 1 {
        (1u64 << i) as f64
    } else {
        lower * 2.0
    };
    (lower, upper)
}

/// The `q` quantile (0..=1) of a histogram, ms, interpolated linearly inside its
/// bucket; `None` for an empty histogram.
pub fn percentile(hist: &[i64; BUCKETS], q: f64) -> Option<f64> {
    let total: i64 = hist.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0i64;
    for (i, &n) in hist.iter().enumerate() {
        if n <= 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let (lo, hi) = bucket_bounds(i);
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lo + (hi - lo) * within);
        }
        seen += n;
    }
    Some(bucket_bounds(BUCKETS - 1).1)
}

/// One bucket of one (customer, hostname, POP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualityAgg {
    /// Responses with a 5xx not served from the cache.
    pub origin_errors: i64,
    /// Responses per response-time bucket.
    pub hist: [i64; BUCKETS],
}

impl QualityAgg {
    fn add(&mut self, o: &QualityAgg) {
        self.origin_errors = self.origin_errors.saturating_add(o.origin_errors);
        for (a, b) in self.hist.iter_mut().zip(o.hist) {
            *a = a.saturating_add(b);
        }
    }
}

/// (bucket, customer, host, POP) → aggregate, per grain (minute, hour, day).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QualityRollups {
    /// Per grain, per key.
    pub by_grain: [BTreeMap<(i64, String, String, String), QualityAgg>; 3],
}

impl QualityRollups {
    /// Folds a file's HTTP responses (fill records left out).
    pub fn fold(records: &[LogRecord]) -> QualityRollups {
        let mut minute: HashMap<(i64, &str, &str, &str), QualityAgg> = HashMap::new();
        for r in records {
            let LogRecord::Http(h) = r else { continue };
            if h.outcome == FILL_OUTCOME {
                continue;
            }
            let a = minute
                .entry((
                    minute_of(h.ts),
                    h.customer.as_deref().unwrap_or(""),
                    h.host.as_str(),
                    h.pop.as_str(),
                ))
                .or_default();
            a.hist[bucket_of(h.duration_us)] += 1;
            if h.status >= 500 && !matches!(h.outcome.as_str(), "hit" | "stale") {
                a.origin_errors += 1;
            }
        }
        let mut out = QualityRollups::default();
        for ((m, c, h, p), a) in minute {
            for (g, grain) in Grain::ALL.iter().enumerate() {
                let bucket = to_i64(m.max(0) as u64 / grain.millis() * grain.millis());
                out.by_grain[g]
                    .entry((bucket, c.to_owned(), h.to_owned(), p.to_owned()))
                    .or_default()
                    .add(&a);
            }
        }
        out
    }
}

/// Rows per multi-row statement (21 parameters each).
const CHUNK: usize = 200;

fn upsert_sql(table: &str, rows: usize) -> String {
    let cols = 5 + BUCKETS;
    let mut sql = format!(
        "INSERT INTO {table} (minute, customer, host, pop, origin_errors, {}) VALUES ",
        hist_cols()
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * cols + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(&format!(
        " ON CONFLICT (minute, customer, host, pop) DO UPDATE SET \
         origin_errors = {table}.origin_errors + excluded.origin_errors"
    ));
    for i in 0..BUCKETS {
        sql.push_str(&format!(", h{i} = {table}.h{i} + excluded.h{i}"));
    }
    sql
}

/// Writes a file's quality rollups through `exec` (the backend's statement in its
/// ingest transaction).
pub fn write(
    r: &QualityRollups,
    exec: &mut dyn FnMut(&str, &[Param<'_>]) -> Result<()>,
) -> Result<()> {
    for (g, grain) in Grain::ALL.iter().enumerate() {
        let table = format!("rollup_quality{}", grain.suffix());
        let rows: Vec<_> = r.by_grain[g].iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let mut params = Vec::with_capacity(chunk.len() * (5 + BUCKETS));
            for ((bucket, customer, host, pop), a) in chunk {
                params.extend([
                    Param::Int(*bucket),
                    Param::Text(customer),
                    Param::Text(host),
                    Param::Text(pop),
                    Param::Int(a.origin_errors),
                ]);
                params.extend(a.hist.iter().map(|&n| Param::Int(n)));
            }
            exec(&upsert_sql(&table, chunk.len()), &params)?;
        }
    }
    Ok(())
}

/// The quality of one bucket (summed over hostnames and POPs in the query's scope).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QualityPoint {
    /// Bucket start (ms).
    pub minute: i64,
    /// Responses.
    pub requests: i64,
    /// Responses by status class, 1xx to 5xx.
    pub status: [i64; 5],
    /// Served from the cache.
    pub hits: i64,
    /// Fetched from the origin.
    pub misses: i64,
    /// Served stale.
    pub stale: i64,
    /// Revalidated with the origin.
    pub revalidated: i64,
    /// Passed through.
    pub bypass: i64,
    /// Hits (fresh or stale) among the cacheable responses (all but pass-through).
    pub hit_ratio: Option<f64>,
    /// Responses with a 5xx not served from the cache.
    pub origin_errors: i64,
    /// Response-time percentiles, ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// The response-time histogram ([`bucket_bounds`]).
    pub hist: [i64; BUCKETS],
}

impl QualityPoint {
    /// Fills in the derived fields (hit ratio, percentiles) from the counts.
    pub fn derive(&mut self) {
        let cacheable = self.hits + self.stale + self.misses + self.revalidated;
        self.hit_ratio =
            (cacheable > 0).then(|| (self.hits + self.stale) as f64 / cacheable as f64);
        self.p50_ms = percentile(&self.hist, 0.50);
        self.p95_ms = percentile(&self.hist, 0.95);
        self.p99_ms = percentile(&self.hist, 0.99);
    }

    /// Adds another point's counts (derived fields are left for [`QualityPoint::derive`]).
    pub fn add(&mut self, o: &QualityPoint) {
        self.requests += o.requests;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        self.hits += o.hits;
        self.misses += o.misses;
        self.stale += o.stale;
        self.revalidated += o.revalidated;
        self.bypass += o.bypass;
        self.origin_errors += o.origin_errors;
        for (a, b) in self.hist.iter_mut().zip(o.hist) {
            *a += b;
        }
    }
}

/// The quality per bucket of `q` (status classes and cache outcomes from
/// `rollup_http`, origin errors and the histogram from `rollup_quality`).
pub fn series<S: Store + ?Sized>(s: &mut S, q: &SeriesQuery<'_>) -> Result<Vec<QualityPoint>> {
    let (filter, params) = q.filter("host");
    let sfx = q.grain.suffix();
    let http_sql = format!(
        "SELECT minute, CAST(SUM(requests) AS BIGINT), CAST(SUM(s1xx) AS BIGINT), \
         CAST(SUM(s2xx) AS BIGINT), CAST(SUM(s3xx) AS BIGINT), CAST(SUM(s4xx) AS BIGINT), \
         CAST(SUM(s5xx) AS BIGINT), CAST(SUM(hits) AS BIGINT), CAST(SUM(misses) AS BIGINT), \
         CAST(SUM(stale) AS BIGINT), CAST(SUM(revalidated) AS BIGINT), \
         CAST(SUM(bypass) AS BIGINT) FROM rollup_http{sfx} \
         WHERE minute >= $1 AND minute < $2{filter} GROUP BY minute ORDER BY minute"
    );
    let mut by_minute: BTreeMap<i64, QualityPoint> = BTreeMap::new();
    for r in s.select(&http_sql, &params)? {
        let minute = int(&r, 0, &http_sql)?;
        let p = by_minute.entry(minute).or_insert_with(|| QualityPoint {
            minute,
            ..QualityPoint::default()
        });
        p.requests = int(&r, 1, &http_sql)?;
        for (i, c) in p.status.iter_mut().enumerate() {
            *c = int(&r, 2 + i, &http_sql)?;
        }
        p.hits = int(&r, 7, &http_sql)?;
        p.misses = int(&r, 8, &http_sql)?;
        p.stale = int(&r, 9, &http_sql)?;
        p.revalidated = int(&r, 10, &http_sql)?;
        p.bypass = int(&r, 11, &http_sql)?;
    }
    let sums = (0..BUCKETS)
        .map(|i| format!("CAST(SUM(h{i}) AS BIGINT)"))
        .collect::<Vec<_>>()
        .join(", ");
    let q_sql = format!(
        "SELECT minute, CAST(SUM(origin_errors) AS BIGINT), {sums} FROM rollup_quality{sfx} \
         WHERE minute >= $1 AND minute < $2{filter} GROUP BY minute ORDER BY minute"
    );
    for r in s.select(&q_sql, &params)? {
        let minute = int(&r, 0, &q_sql)?;
        let p = by_minute.entry(minute).or_insert_with(|| QualityPoint {
            minute,
            ..QualityPoint::default()
        });
        p.origin_errors = int(&r, 1, &q_sql)?;
        for (i, h) in p.hist.iter_mut().enumerate() {
            *h = int(&r, 2 + i, &q_sql)?;
        }
    }
    Ok(by_minute
        .into_values()
        .map(|mut p| {
            p.derive();
            p
        })
        .collect())
}

/// Entries of each top list.
pub const TOP_N: usize = 20;
/// Distinct client addresses read to build the network list (the busiest first; the
/// networks are summed from them).
const TOP_CLIENTS_READ: usize = 10_000;

/// One URL of a top list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopUrl {
    /// Hostname.
    pub host: String,
    /// Path (with its query).
    pub path: String,
    /// Responses.
    pub requests: i64,
    /// Bytes sent.
    pub bytes: i64,
}

/// One client network of a top list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopNetwork {
    /// The client's /24 (IPv4) or /48 (IPv6).
    pub network: String,
    /// Responses.
    pub requests: i64,
    /// Bytes sent.
    pub bytes: i64,
}

/// The top URLs and client networks of a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Top {
    /// The [`TOP_N`] URLs with the most responses.
    pub urls: Vec<TopUrl>,
    /// The [`TOP_N`] client networks with the most responses.
    pub networks: Vec<TopNetwork>,
}

/// The network a client address counts under: its /24 or /48.
pub fn network_of(client: &str) -> String {
    match client.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{net}/48")
        }
        Err(_) => client.to_owned(),
    }
}

/// The top URLs and client networks of `q`'s range, from the raw records (so over at
/// most the raw retention); fill records and the edges' own `0.0.0.0` left out.
pub fn top<S: Store + ?Sized>(s: &mut S, q: &SeriesQuery<'_>) -> Result<Top> {
    let (filter, params) = q.filter("host");
    let urls_sql = format!(
        "SELECT host, path, COUNT(*), CAST(SUM(bytes) AS BIGINT) FROM raw_http \
         WHERE ts >= $1 AND ts < $2{filter} AND outcome <> '{FILL_OUTCOME}' \
         GROUP BY host, path ORDER BY COUNT(*) DESC, host, path LIMIT {TOP_N}"
    );
    let urls = s
        .select(&urls_sql, &params)?
        .iter()
        .map(|r| {
            Ok(TopUrl {
                host: text(r, 0, &urls_sql)?,
                path: text(r, 1, &urls_sql)?,
                requests: int(r, 2, &urls_sql)?,
                bytes: int(r, 3, &urls_sql)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let clients_sql = format!(
        "SELECT client, COUNT(*), CAST(SUM(bytes) AS BIGINT) FROM raw_http \
         WHERE ts >= $1 AND ts < $2{filter} AND outcome <> '{FILL_OUTCOME}' \
         GROUP BY client ORDER BY COUNT(*) DESC, client LIMIT {TOP_CLIENTS_READ}"
    );
    let mut nets: HashMap<String, (i64, i64)> = HashMap::new();
    for r in s.select(&clients_sql, &params)? {
        let e = nets
            .entry(network_of(&text(&r, 0, &clients_sql)?))
            .or_default();
        e.0 += int(&r, 1, &clients_sql)?;
        e.1 += int(&r, 2, &clients_sql)?;
    }
    let mut networks: Vec<TopNetwork> = nets
        .into_iter()
        .map(|(network, (requests, bytes))| TopNetwork {
            network,
            requests,
            bytes,
        })
        .collect();
    networks.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.network.cmp(&b.network))
    });
    networks.truncate(TOP_N);
    Ok(Top { urls, networks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_double_and_percentiles_fall_in_the_right_bucket() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(999), 0);
        assert_eq!(bucket_of(1_000), 1);
        assert_eq!(bucket_of(1_999), 1);
        assert_eq!(bucket_of(2_000), 2);
        assert_eq!(bucket_of(100_000), 7); // 100 ms: [64, 128)
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut h = [0i64; BUCKETS];
        h[bucket_of(5_000)] = 90; // 5 ms: [4, 8)
        h[bucket_of(300_000)] = 10; // 300 ms: [256, 512)
        let p50 = percentile(&h, 0.5).unwrap();
        assert!((4.0..8.0).contains(&p50), "{p50}");
        let p99 = percentile(&h, 0.99).unwrap();
        assert!((256.0..=512.0).contains(&p99), "{p99}");
        assert_eq!(percentile(&[0; BUCKETS], 0.5), None);
        assert_eq!(network_of("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(network_of("2001:db8:1:2::7"), "2001:db8:1::/48");
    }

    proptest! {
        /// Every time lands in a bucket whose bounds hold it, and a percentile is
        /// monotone in the quantile and within the histogram's occupied buckets.
        #[test]
        fn bucket_bounds_hold_their_times(us in 0u64..100_000_000, n in proptest::collection::vec(0i64..1000, BUCKETS)) {
            let i = bucket_of(us);
            let (lo, hi) = bucket_bounds(i);
            let ms = (us / 1000) as f64;
            prop_assert!(ms >= lo);
            if i < BUCKETS - 1 { prop_assert!(ms < hi); }
            let mut h = [0i64; BUCKETS];
            h.copy_from_slice(&n);
            if let (Some(a), Some(b), Some(c)) = (percentile(&h, 0.5), percentile(&h, 0.95), percentile(&h, 0.99)) {
                prop_assert!(a <= b && b <= c, "{a} {b} {c}");
                let first = h.iter().position(|&x| x > 0).unwrap();
                let last = h.iter().rposition(|&x| x > 0).unwrap();
                prop_assert!(a >= bucket_bounds(first).0 && c <= bucket_bounds(last).1);
            }
        }
    }
}
