//! Streaming statistics: the edges' access records of HLS and DASH requests
//! ([`udn_core::stream::classify`]) folded per minute and stream.
//!
//! Two tables, filled in each log file's ingest transaction (so exactly once per file,
//! like the other rollups):
//!
//! * `rollup_stream (minute, customer, host, stream)`: viewers' requests, segments and
//!   playlists served, errors, cache hits, bytes to viewers and serving time; origin
//!   fetches (the edge's fill records, and requests passed through to the origin) of
//!   segments and of playlists, failed fetches, origin bytes, fill time total and
//!   maximum;
//! * `rollup_stream_client (minute, customer, host, stream, client)`: requests,
//!   segments and bytes per viewer address, from which the distinct viewers of a stream
//!   are counted over any range. It holds client addresses, so it is pruned with the raw
//!   records ([`super::Store::prune_raw`]).
//!
//! Only records of a named customer are folded. A file names at most
//! [`MAX_STREAMS_PER_MINUTE`] streams per customer, hostname and minute; requests of
//! further directories count under the stream [`OTHER_STREAM`], so crafted paths cannot
//! grow the tables beyond the records' own count.
//!
//! The upserts are written once for both databases (multi-row `VALUES` with `$n`
//! parameters, `ON CONFLICT ... DO UPDATE`, `CASE` for the maximum), and so are the
//! queries ([`report`], over [`super::Store::select`]).

use std::collections::{BTreeMap, HashMap};

use super::{Cell, Param, Range, Result, Store, minute_of, to_i64};
use crate::migrate::Step;
use udn_core::log::{FILL_OUTCOME, LogRecord};
use udn_core::stream::{MediaKind, classify};

/// The schema step that creates the streaming tables (appended to
/// [`super::MIGRATIONS`]; self-contained, so it can be renumbered).
pub const MIGRATION: Step = Step {
    version: 5,
    name: "stream_rollups",
    sql: "
CREATE TABLE rollup_stream (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, host TEXT NOT NULL,
    stream TEXT NOT NULL,
    requests BIGINT NOT NULL, segments BIGINT NOT NULL, playlists BIGINT NOT NULL,
    errors BIGINT NOT NULL, hits BIGINT NOT NULL, bytes BIGINT NOT NULL,
    serve_us BIGINT NOT NULL,
    segment_fills BIGINT NOT NULL, playlist_fills BIGINT NOT NULL,
    fill_errors BIGINT NOT NULL, fill_bytes BIGINT NOT NULL,
    fill_us BIGINT NOT NULL, fill_us_max BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, host, stream)
);
CREATE TABLE rollup_stream_client (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, host TEXT NOT NULL,
    stream TEXT NOT NULL, client TEXT NOT NULL,
    requests BIGINT NOT NULL, segments BIGINT NOT NULL, bytes BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, host, stream, client)
);
CREATE INDEX rollup_stream_by_customer ON rollup_stream (customer, minute);
CREATE INDEX rollup_stream_client_by_customer ON rollup_stream_client (customer, minute);
",
};

/// Streams one file may name per (customer, hostname, minute); the rest count under
/// [`OTHER_STREAM`].
pub const MAX_STREAMS_PER_MINUTE: usize = 1000;

/// The stream that collects the requests of directories beyond
/// [`MAX_STREAMS_PER_MINUTE`].
pub const OTHER_STREAM: &str = "(other)";

/// Key of a `rollup_stream` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Minute start (ms).
    pub minute: i64,
    /// Customer.
    pub customer: String,
    /// Hostname.
    pub host: String,
    /// Stream (directory, [`udn_core::stream::Media::stream`]).
    pub stream: String,
}

/// Counters of a `rollup_stream` row (also a stream's totals over a range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamAgg {
    /// Viewer requests of any status.
    pub requests: i64,
    /// Segments served (2xx).
    pub segments: i64,
    /// Playlists and manifests served (2xx).
    pub playlists: i64,
    /// Viewer requests answered 4xx or 5xx.
    pub errors: i64,
    /// Viewer requests served from the cache (`hit`).
    pub hits: i64,
    /// Bytes sent to viewers.
    pub bytes: i64,
    /// Serving time of viewer requests, µs in all.
    pub serve_us: i64,
    /// Origin fetches of segments.
    pub segment_fills: i64,
    /// Origin fetches of playlists and manifests.
    pub playlist_fills: i64,
    /// Origin fetches answered 4xx or 5xx.
    pub fill_errors: i64,
    /// Bytes fetched from the origin.
    pub fill_bytes: i64,
    /// Fill time, µs in all.
    pub fill_us: i64,
    /// The longest fill, µs.
    pub fill_us_max: i64,
}

impl StreamAgg {
    fn add(&mut self, o: &StreamAgg) {
        self.requests += o.requests;
        self.segments += o.segments;
        self.playlists += o.playlists;
        self.errors += o.errors;
        self.hits += o.hits;
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.serve_us = self.serve_us.saturating_add(o.serve_us);
        self.segment_fills += o.segment_fills;
        self.playlist_fills += o.playlist_fills;
        self.fill_errors += o.fill_errors;
        self.fill_bytes = self.fill_bytes.saturating_add(o.fill_bytes);
        self.fill_us = self.fill_us.saturating_add(o.fill_us);
        self.fill_us_max = self.fill_us_max.max(o.fill_us_max);
    }
}

/// Key of a `rollup_stream_client` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The stream's row.
    pub stream: StreamKey,
    /// The viewer's address.
    pub client: String,
}

/// Counters of a `rollup_stream_client` row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientAgg {
    /// Requests.
    pub requests: i64,
    /// Segments served (2xx).
    pub segments: i64,
    /// Bytes sent.
    pub bytes: i64,
}

/// The streaming rollups of a set of records.
#[derive(Debug, Clone, Default)]
pub struct StreamRollups {
    /// Per (minute, customer, host, stream).
    pub streams: HashMap<StreamKey, StreamAgg>,
    /// Per (minute, customer, host, stream, client).
    pub clients: HashMap<ClientKey, ClientAgg>,
}

impl StreamRollups {
    /// Folds the streaming requests among `records` per minute and stream.
    ///
    /// # Examples
    ///
    /// ```
    /// use udn_store::logs::stream::StreamRollups;
    /// use udn_core::{Timestamp, log::{HttpRecord, LogRecord}};
    /// let rec = |path: &str, outcome: &str| LogRecord::Http(HttpRecord {
    ///     ts: Timestamp::from_secs(60), customer: Some("shop".into()),
    ///     host: "cdn.shop.udn.example".into(), path: path.into(), method: "GET".into(),
    ///     status: 200, bytes: 100, fill_bytes: 0, outcome: outcome.into(),
    ///     duration_us: 5, client: "192.0.2.1".parse().unwrap(), pop: "fra".into(),
    /// });
    /// let r = StreamRollups::fold(&[
    ///     rec("/live/index.m3u8", "miss"), rec("/live/seg1.ts", "hit"),
    ///     rec("/live/seg1.ts", "fill"), rec("/index.html", "hit"),
    /// ]);
    /// let (key, agg) = r.streams.iter().next().unwrap();
    /// assert_eq!((key.stream.as_str(), r.streams.len()), ("/live/", 1));
    /// assert_eq!((agg.requests, agg.segments, agg.playlists, agg.segment_fills), (2, 1, 1, 1));
    /// ```
    pub fn fold(records: &[LogRecord]) -> StreamRollups {
        let mut out = StreamRollups::default();
        // Streams named so far per (customer, host, minute), for the cap.
        let mut named: HashMap<(i64, &str, &str), usize> = HashMap::new();
        for rec in records {
            let LogRecord::Http(h) = rec else { continue };
            let Some(customer) = h.customer.as_deref() else {
                continue;
            };
            let Some(media) = classify(&h.path) else {
                continue;
            };
            let minute = minute_of(h.ts);
            let mut key = StreamKey {
                minute,
                customer: customer.to_owned(),
                host: h.host.clone(),
                stream: media.stream.to_owned(),
            };
            if !out.streams.contains_key(&key) {
                let n = named
                    .entry((minute, customer, h.host.as_str()))
                    .or_default();
                if *n >= MAX_STREAMS_PER_MINUTE {
                    key.stream = OTHER_STREAM.to_owned();
                } else {
                    *n += 1;
                }
            }
            let ok = (200..300).contains(&h.status);
            let failed = h.status >= 400;
            let segment = media.kind == MediaKind::Segment;
            let a = out.streams.entry(key.clone()).or_default();
            let is_fill = h.outcome == FILL_OUTCOME;
            if is_fill || h.fill_bytes > 0 {
                // An origin fetch: the edge's fill record, or a request passed through.
                if segment {
                    a.segment_fills += 1;
                } else {
                    a.playlist_fills += 1;
                }
                a.fill_errors += i64::from(failed);
                a.fill_bytes = a.fill_bytes.saturating_add(to_i64(h.fill_bytes));
                let us = to_i64(h.duration_us);
                a.fill_us = a.fill_us.saturating_add(us);
                a.fill_us_max = a.fill_us_max.max(us);
            }
            if is_fill {
                continue;
            }
            a.requests += 1;
            a.segments += i64::from(ok && segment);
            a.playlists += i64::from(ok && !segment);
            a.errors += i64::from(failed);
            a.hits += i64::from(h.outcome == "hit");
            a.bytes = a.bytes.saturating_add(to_i64(h.bytes));
            a.serve_us = a.serve_us.saturating_add(to_i64(h.duration_us));
            let c = out
                .clients
                .entry(ClientKey {
                    stream: key,
                    client: h.client.to_string(),
                })
                .or_default();
            c.requests += 1;
            c.segments += i64::from(ok && segment);
            c.bytes = c.bytes.saturating_add(to_i64(h.bytes));
        }
        out
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.clients.is_empty()
    }
}

/// Rows per multi-row statement (17 parameters each: well under SQLite's 32,766 and
/// PostgreSQL's 65,535).
const CHUNK: usize = 200;

const STREAM_COLS: &str = "minute, customer, host, stream, requests, segments, playlists, \
    errors, hits, bytes, serve_us, segment_fills, playlist_fills, fill_errors, fill_bytes, \
    fill_us, fill_us_max";
const STREAM_SUMS: [&str; 12] = [
    "requests",
    "segments",
    "playlists",
    "errors",
    "hits",
    "bytes",
    "serve_us",
    "segment_fills",
    "playlist_fills",
    "fill_errors",
    "fill_bytes",
    "fill_us",
];

/// `INSERT INTO table (cols) VALUES ($1, ...), ... ` for `rows` rows of `width`.
fn values(table: &str, cols: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({cols}) VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * width + c + 1));
        }
        sql.push(')');
    }
    sql
}

fn upsert_streams_sql(rows: usize) -> String {
    let mut sql = values("rollup_stream", STREAM_COLS, 17, rows);
    sql.push_str(" ON CONFLICT (minute, customer, host, stream) DO UPDATE SET ");
    for c in STREAM_SUMS {
        sql.push_str(&format!("{c} = rollup_stream.{c} + excluded.{c}, "));
    }
    sql.push_str(
        "fill_us_max = CASE WHEN excluded.fill_us_max > rollup_stream.fill_us_max \
         THEN excluded.fill_us_max ELSE rollup_stream.fill_us_max END",
    );
    sql
}

fn upsert_clients_sql(rows: usize) -> String {
    let mut sql = values(
        "rollup_stream_client",
        "minute, customer, host, stream, client, requests, segments, bytes",
        8,
        rows,
    );
    sql.push_str(
        " ON CONFLICT (minute, customer, host, stream, client) DO UPDATE SET \
         requests = rollup_stream_client.requests + excluded.requests, \
         segments = rollup_stream_client.segments + excluded.segments, \
         bytes = rollup_stream_client.bytes + excluded.bytes",
    );
    sql
}

/// Writes a file's streaming rollups through `exec` (the backend's statement in its
/// ingest transaction).
pub fn write(
    r: &StreamRollups,
    exec: &mut dyn FnMut(&str, &[Param<'_>]) -> Result<()>,
) -> Result<()> {
    let streams: Vec<_> = r.streams.iter().collect();
    for chunk in streams.chunks(CHUNK) {
        let mut params = Vec::with_capacity(chunk.len() * 17);
        for (k, a) in chunk {
            params.extend([
                Param::Int(k.minute),
                Param::Text(&k.customer),
                Param::Text(&k.host),
                Param::Text(&k.stream),
            ]);
            params.extend(
                [
                    a.requests,
                    a.segments,
                    a.playlists,
                    a.errors,
                    a.hits,
                    a.bytes,
                    a.serve_us,
                    a.segment_fills,
                    a.playlist_fills,
                    a.fill_errors,
                    a.fill_bytes,
                    a.fill_us,
                    a.fill_us_max,
                ]
                .map(Param::Int),
            );
        }
        exec(&upsert_streams_sql(chunk.len()), &params)?;
    }
    let clients: Vec<_> = r.clients.iter().collect();
    for chunk in clients.chunks(CHUNK) {
        let mut params = Vec::with_capacity(chunk.len() * 8);
        for (k, a) in chunk {
            params.extend([
                Param::Int(k.stream.minute),
                Param::Text(&k.stream.customer),
                Param::Text(&k.stream.host),
                Param::Text(&k.stream.stream),
                Param::Text(&k.client),
                Param::Int(a.requests),
                Param::Int(a.segments),
                Param::Int(a.bytes),
            ]);
        }
        exec(&upsert_clients_sql(chunk.len()), &params)?;
    }
    Ok(())
}

/// The statement that prunes viewer rows older than a cutoff (`$1`, ms), run with the
/// raw records' pruning.
pub const PRUNE_CLIENTS: &str = "DELETE FROM rollup_stream_client WHERE minute < $1";

/// One stream's totals over a range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamTotals {
    /// Customer.
    pub customer: String,
    /// Hostname.
    pub host: String,
    /// Stream (directory).
    pub stream: String,
    /// Distinct viewer addresses over the range (while their rows are kept: they are
    /// pruned with the raw records).
    pub viewers: i64,
    /// The counters, summed (the maximum fill time is the range's maximum).
    #[serde(flatten)]
    pub agg: StreamAgg,
}

/// One stream's counters in one minute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamPoint {
    /// Minute start (ms).
    pub minute: i64,
    /// Customer.
    pub customer: String,
    /// Hostname.
    pub host: String,
    /// Stream.
    pub stream: String,
    /// Distinct viewer addresses in the minute.
    pub viewers: i64,
    /// The minute's counters.
    #[serde(flatten)]
    pub agg: StreamAgg,
}

/// One viewer's traffic of one stream over a range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientTotals {
    /// Customer.
    pub customer: String,
    /// Hostname.
    pub host: String,
    /// Stream.
    pub stream: String,
    /// The viewer's address.
    pub client: String,
    /// The viewer's counters.
    #[serde(flatten)]
    pub agg: ClientAgg,
}

/// The streaming statistics of a range: per-stream totals (most bytes first), the
/// per-minute series, and the viewers with the most bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    /// Per stream, most bytes first.
    pub streams: Vec<StreamTotals>,
    /// Per minute and stream, in time order.
    pub series: Vec<StreamPoint>,
    /// Per viewer and stream, most bytes first, at most [`TOP_CLIENTS`].
    pub clients: Vec<ClientTotals>,
}

/// Viewers listed in a [`StreamReport`] at most.
pub const TOP_CLIENTS: i64 = 100;

const AGG_SELECT: &str = "CAST(SUM(requests) AS BIGINT), CAST(SUM(segments) AS BIGINT), \
    CAST(SUM(playlists) AS BIGINT), CAST(SUM(errors) AS BIGINT), CAST(SUM(hits) AS BIGINT), \
    CAST(SUM(bytes) AS BIGINT), CAST(SUM(serve_us) AS BIGINT), \
    CAST(SUM(segment_fills) AS BIGINT), CAST(SUM(playlist_fills) AS BIGINT), \
    CAST(SUM(fill_errors) AS BIGINT), CAST(SUM(fill_bytes) AS BIGINT), \
    CAST(SUM(fill_us) AS BIGINT), CAST(MAX(fill_us_max) AS BIGINT)";

fn agg_at(r: &[Cell], at: usize, sql: &str) -> Result<StreamAgg> {
    let v = |i: usize| super::int(r, at + i, sql);
    Ok(StreamAgg {
        requests: v(0)?,
        segments: v(1)?,
        playlists: v(2)?,
        errors: v(3)?,
        hits: v(4)?,
        bytes: v(5)?,
        serve_us: v(6)?,
        segment_fills: v(7)?,
        playlist_fills: v(8)?,
        fill_errors: v(9)?,
        fill_bytes: v(10)?,
        fill_us: v(11)?,
        fill_us_max: v(12)?,
    })
}

type Stream3 = (String, String, String);

/// The streaming statistics of `range`, of one customer or (`None`) all.
pub fn report<S: Store + ?Sized>(
    s: &mut S,
    range: Range,
    customer: Option<&str>,
) -> Result<StreamReport> {
    let (filter, params) = super::SeriesQuery::new(range, customer).filter("host");
    let text = |r: &[Cell], i: usize, sql: &str| super::text(r, i, sql);
    let key = |r: &[Cell], at: usize, sql: &str| -> Result<Stream3> {
        Ok((
            text(r, at, sql)?,
            text(r, at + 1, sql)?,
            text(r, at + 2, sql)?,
        ))
    };

    // Distinct viewers per stream and per (minute, stream).
    let sql = format!(
        "SELECT customer, host, stream, COUNT(DISTINCT client) FROM rollup_stream_client \
         WHERE minute >= $1 AND minute < $2{filter} GROUP BY customer, host, stream"
    );
    let mut viewers: HashMap<Stream3, i64> = HashMap::new();
    for r in s.select(&sql, &params)? {
        viewers.insert(key(&r, 0, &sql)?, super::int(&r, 3, &sql)?);
    }
    let sql = format!(
        "SELECT minute, customer, host, stream, COUNT(DISTINCT client) FROM rollup_stream_client \
         WHERE minute >= $1 AND minute < $2{filter} GROUP BY minute, customer, host, stream"
    );
    let mut minute_viewers: HashMap<(i64, Stream3), i64> = HashMap::new();
    for r in s.select(&sql, &params)? {
        minute_viewers.insert(
            (super::int(&r, 0, &sql)?, key(&r, 1, &sql)?),
            super::int(&r, 4, &sql)?,
        );
    }

    let sql = format!(
        "SELECT minute, customer, host, stream, {AGG_SELECT} FROM rollup_stream \
         WHERE minute >= $1 AND minute < $2{filter} \
         GROUP BY minute, customer, host, stream ORDER BY minute, customer, host, stream"
    );
    let mut totals: BTreeMap<Stream3, StreamAgg> = BTreeMap::new();
    let mut series = Vec::new();
    for r in s.select(&sql, &params)? {
        let minute = super::int(&r, 0, &sql)?;
        let k = key(&r, 1, &sql)?;
        let agg = agg_at(&r, 4, &sql)?;
        totals.entry(k.clone()).or_default().add(&agg);
        let viewers = minute_viewers
            .get(&(minute, k.clone()))
            .copied()
            .unwrap_or(0);
        let (customer, host, stream) = k;
        series.push(StreamPoint {
            minute,
            customer,
            host,
            stream,
            viewers,
            agg,
        });
    }
    let mut streams: Vec<StreamTotals> = totals
        .into_iter()
        .map(|(k, agg)| {
            let viewers = viewers.get(&k).copied().unwrap_or(0);
            let (customer, host, stream) = k;
            StreamTotals {
                customer,
                host,
                stream,
                viewers,
                agg,
            }
        })
        .collect();
    streams.sort_by(|a, b| {
        b.agg
            .bytes
            .cmp(&a.agg.bytes)
            .then_with(|| (&a.host, &a.stream).cmp(&(&b.host, &b.stream)))
    });

    let sql = format!(
        "SELECT customer, host, stream, client, CAST(SUM(requests) AS BIGINT), \
         CAST(SUM(segments) AS BIGINT), CAST(SUM(bytes) AS BIGINT) AS sent \
         FROM rollup_stream_client WHERE minute >= $1 AND minute < $2{filter} \
         GROUP BY customer, host, stream, client \
         ORDER BY sent DESC, customer, host, stream, client LIMIT {TOP_CLIENTS}"
    );
    let mut clients = Vec::new();
    for r in s.select(&sql, &params)? {
        let (customer, host, stream) = key(&r, 0, &sql)?;
        clients.push(ClientTotals {
            customer,
            host,
            stream,
            client: text(&r, 3, &sql)?,
            agg: ClientAgg {
                requests: super::int(&r, 4, &sql)?,
                segments: super::int(&r, 5, &sql)?,
                bytes: super::int(&r, 6, &sql)?,
            },
        });
    }
    Ok(StreamReport {
        streams,
        series,
        clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use udn_core::Timestamp;
    use udn_core::log::HttpRecord;

    fn rec(path: &str, n: usize) -> LogRecord {
        LogRecord::Http(HttpRecord {
            ts: Timestamp::from_secs(120),
            customer: Some("c".into()),
            host: "h".into(),
            path: path.into(),
            method: "GET".into(),
            status: 200,
            bytes: 1,
            fill_bytes: 0,
            outcome: "hit".into(),
            duration_us: n as u64,
            client: "192.0.2.1".parse().unwrap(),
            pop: "p".into(),
        })
    }

    #[test]
    fn crafted_directories_are_capped_per_file_and_minute() {
        let recs: Vec<_> = (0..MAX_STREAMS_PER_MINUTE + 50)
            .map(|i| rec(&format!("/d{i}/s.ts"), i))
            .collect();
        let r = StreamRollups::fold(&recs);
        assert_eq!(r.streams.len(), MAX_STREAMS_PER_MINUTE + 1);
        let other = r
            .streams
            .iter()
            .find(|(k, _)| k.stream == OTHER_STREAM)
            .expect("the overflow stream");
        assert_eq!(other.1.requests, 50);
        let all: i64 = r.streams.values().map(|a| a.requests).sum();
        assert_eq!(all, recs.len() as i64, "nothing is lost");
    }

    #[test]
    fn statements_number_their_parameters_in_order() {
        let sql = values("t", "a, b", 2, 2);
        assert_eq!(sql, "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        assert!(upsert_streams_sql(1).contains("$17)"));
    }
}
