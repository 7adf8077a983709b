//! The store behind the log collector, the portal and billing.
//!
//! One [`Store`] trait, three implementations sharing one schema ([`MIGRATIONS`]):
//! [`sqlite::SqliteStore`] (embedded default, WAL, one file in the data directory),
//! [`postgres::PgStore`] (for installations that outgrow one machine) and
//! [`clickhouse::ClickHouseStore`] (analytics at scale: the schema translated to
//! `MergeTree` tables, see its module).
//!
//! Ingestion is per log file and exactly-once: [`Store::ingest`] writes the file's ledger
//! row (`log_files`: file id, checksum, role, instance, rows, received_at) in the same
//! transaction as its raw rows and rollups, so a retried file is a no-op. Records are
//! folded into per-minute rollups in Rust first ([`Rollups::fold`]), so each file costs
//! one upsert per key, not one per record.
//!
//! The queries the portal and billing need are default methods written once in portable
//! SQL over [`Store::select`].

pub mod clickhouse;
pub mod health;
pub mod ops;
pub mod partitions;
pub mod postgres;
pub mod quality;
pub mod sqlite;
pub mod stream;

use crate::migrate::{Legacy, Schema, Step};
use udn_core::Timestamp;
use udn_core::log::{FileHeader, LogRecord};

/// Errors of the store. Every one of them means "not committed": the collector answers
/// 503 and the distributor retries later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed (including a full disk or a full database: `SQLITE_FULL`).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date (see [`crate::migrate`]).
    #[error("{0}")]
    Migrate(#[from] crate::migrate::Error),
    /// PostgreSQL failed or is unreachable.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool for another reason than the
    /// database's (which is [`Error::Postgres`]).
    #[error("postgres pool: {0}")]
    PostgresPool(deadpool_postgres::PoolError),
    /// ClickHouse failed, is unreachable, or answered what the store cannot read (the
    /// HTTP status and the first line of ClickHouse's message).
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    /// The data directory could not be created or opened.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A query returned a column of an unexpected type (a schema mismatch).
    #[error("column {index} of {query:?} has an unexpected type")]
    ColumnType {
        /// Column index.
        index: usize,
        /// The query's first words.
        query: String,
    },
}

impl Error {
    /// Whether the error is the database or the disk being full.
    pub fn is_full(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            Error::Postgres(e) => e
                .code()
                .is_some_and(|c| c == &tokio_postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::Postgres(e),
            e => Error::PostgresPool(e),
        }
    }
}

/// The result type of the store.
pub type Result<T> = std::result::Result<T, Error>;

/// The schema, shared by both backends and applied by [`crate::migrate`] (refinery,
/// history in `udn_log_schema_history`). The SQL is the common subset of SQLite and
/// PostgreSQL (BIGINT, TEXT, DOUBLE PRECISION, composite primary keys, `ON CONFLICT`).
/// Steps are append-only: a released step is never edited.
pub const MIGRATIONS: &[Step] = &[
    Step {
        version: 1,
        name: "initial",
        sql: "
CREATE TABLE log_files (
    file_id     TEXT PRIMARY KEY,
    checksum    TEXT NOT NULL,
    role        TEXT NOT NULL,
    instance    TEXT NOT NULL,
    opened_at   BIGINT NOT NULL,
    rows        BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE TABLE raw_http (
    ts BIGINT NOT NULL, customer TEXT, host TEXT NOT NULL, path TEXT NOT NULL,
    method TEXT NOT NULL, status BIGINT NOT NULL, bytes BIGINT NOT NULL,
    fill_bytes BIGINT NOT NULL, outcome TEXT NOT NULL, duration_us BIGINT NOT NULL,
    client TEXT NOT NULL, pop TEXT NOT NULL
);
CREATE TABLE raw_dns (
    ts BIGINT NOT NULL, hostname TEXT NOT NULL, qtype TEXT NOT NULL, client TEXT NOT NULL,
    ecs TEXT, addrs TEXT NOT NULL, reason TEXT NOT NULL, pop TEXT, customer TEXT,
    server TEXT NOT NULL
);
CREATE TABLE raw_probe (
    ts BIGINT NOT NULL, pop TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
    method TEXT NOT NULL, ok BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE rollup_http (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, host TEXT NOT NULL, pop TEXT NOT NULL,
    requests BIGINT NOT NULL, bytes BIGINT NOT NULL, fill_bytes BIGINT NOT NULL,
    s1xx BIGINT NOT NULL, s2xx BIGINT NOT NULL, s3xx BIGINT NOT NULL,
    s4xx BIGINT NOT NULL, s5xx BIGINT NOT NULL,
    hits BIGINT NOT NULL, misses BIGINT NOT NULL, stale BIGINT NOT NULL,
    revalidated BIGINT NOT NULL, bypass BIGINT NOT NULL, duration_us BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, host, pop)
);
CREATE TABLE rollup_dns (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, hostname TEXT NOT NULL,
    pop TEXT NOT NULL, reason TEXT NOT NULL, queries BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, hostname, pop, reason)
);
CREATE TABLE rollup_dns_answer (
    minute BIGINT NOT NULL, hostname TEXT NOT NULL, address TEXT NOT NULL,
    pop TEXT NOT NULL, answers BIGINT NOT NULL,
    PRIMARY KEY (minute, hostname, address, pop)
);
CREATE TABLE rollup_probe (
    minute BIGINT NOT NULL, pop TEXT NOT NULL, kind TEXT NOT NULL, method TEXT NOT NULL,
    samples BIGINT NOT NULL, ok BIGINT NOT NULL, value_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (minute, pop, kind, method)
);
",
    },
    Step {
        version: 2,
        name: "usage_file",
        sql: "
CREATE TABLE usage_file (
    file_id     TEXT NOT NULL,
    customer    TEXT NOT NULL,
    minute      BIGINT NOT NULL,
    pop         TEXT NOT NULL,
    requests    BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    fill_bytes  BIGINT NOT NULL,
    dns_queries BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (file_id, customer, minute, pop)
);
CREATE INDEX usage_file_received ON usage_file (received_at);
INSERT INTO usage_file (file_id, customer, minute, pop, requests, bytes, fill_bytes,
                        dns_queries, received_at)
SELECT 'rollups-before-usage-file', customer, minute, pop, SUM(requests), SUM(bytes),
       SUM(fill_bytes), SUM(dns_queries), 0
FROM (SELECT customer, minute, pop, requests, bytes, fill_bytes, 0 AS dns_queries
        FROM rollup_http WHERE customer <> ''
      UNION ALL
      SELECT customer, minute, pop, 0, 0, 0, queries FROM rollup_dns WHERE customer <> '') u
GROUP BY customer, minute, pop;
",
    },
    // Pruning deletes raw rows by time, and the recent-traffic views read them by time:
    // without these every prune and every such view scanned the whole table.
    Step {
        version: 3,
        name: "raw_time_indexes",
        sql: "
CREATE INDEX raw_http_ts ON raw_http (ts);
CREATE INDEX raw_dns_ts ON raw_dns (ts);
CREATE INDEX raw_probe_ts ON raw_probe (ts);
",
    },
    // Hourly and daily rollups beside the per-minute ones, so a chart of weeks, months or
    // years reads few rows (the rule is [`Grain::for_span`]). Same columns and keys as the
    // minute tables; `minute` holds the bucket's start (UTC hour, UTC day). Filled from
    // here on by ingestion; the rows already rolled up per minute are rolled up now.
    // Self-contained: it reads only the step-1 tables, so it can be renumbered.
    Step {
        version: 4,
        name: "hour_day_rollups",
        sql: HOUR_DAY_ROLLUPS,
    },
    // Streaming statistics (HLS, DASH) per minute and stream, and per viewer.
    // Self-contained: it reads no other step's tables.
    stream::MIGRATION,
    // The roles' operational statistics per minute, hour and day ([`ops`]).
    // Self-contained: it reads no other step's tables.
    ops::MIGRATION,
    quality::MIGRATION,
];

/// The PostgreSQL steps: [`MIGRATIONS`], then the day partitions of the raw tables
/// ([`partitions::MIGRATION`]).
pub const PG_MIGRATIONS: &[Step] = &[
    MIGRATIONS[0],
    MIGRATIONS[1],
    MIGRATIONS[2],
    MIGRATIONS[3],
    MIGRATIONS[4],
    MIGRATIONS[5],
    MIGRATIONS[6],
    partitions::MIGRATION,
];

/// Migration step `hour_day_rollups`: `rollup_*_hour` and `rollup_*_day`, back-filled
/// from the per-minute rollups.
const HOUR_DAY_ROLLUPS: &str = "
CREATE TABLE rollup_http_hour (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, host TEXT NOT NULL, pop TEXT NOT NULL,
    requests BIGINT NOT NULL, bytes BIGINT NOT NULL, fill_bytes BIGINT NOT NULL,
    s1xx BIGINT NOT NULL, s2xx BIGINT NOT NULL, s3xx BIGINT NOT NULL,
    s4xx BIGINT NOT NULL, s5xx BIGINT NOT NULL,
    hits BIGINT NOT NULL, misses BIGINT NOT NULL, stale BIGINT NOT NULL,
    revalidated BIGINT NOT NULL, bypass BIGINT NOT NULL, duration_us BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, host, pop)
);
CREATE TABLE rollup_http_day (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, host TEXT NOT NULL, pop TEXT NOT NULL,
    requests BIGINT NOT NULL, bytes BIGINT NOT NULL, fill_bytes BIGINT NOT NULL,
    s1xx BIGINT NOT NULL, s2xx BIGINT NOT NULL, s3xx BIGINT NOT NULL,
    s4xx BIGINT NOT NULL, s5xx BIGINT NOT NULL,
    hits BIGINT NOT NULL, misses BIGINT NOT NULL, stale BIGINT NOT NULL,
    revalidated BIGINT NOT NULL, bypass BIGINT NOT NULL, duration_us BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, host, pop)
);
CREATE TABLE rollup_dns_hour (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, hostname TEXT NOT NULL,
    pop TEXT NOT NULL, reason TEXT NOT NULL, queries BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, hostname, pop, reason)
);
CREATE TABLE rollup_dns_day (
    minute BIGINT NOT NULL, customer TEXT NOT NULL, hostname TEXT NOT NULL,
    pop TEXT NOT NULL, reason TEXT NOT NULL, queries BIGINT NOT NULL,
    PRIMARY KEY (minute, customer, hostname, pop, reason)
);
CREATE TABLE rollup_dns_answer_hour (
    minute BIGINT NOT NULL, hostname TEXT NOT NULL, address TEXT NOT NULL,
    pop TEXT NOT NULL, answers BIGINT NOT NULL,
    PRIMARY KEY (minute, hostname, address, pop)
);
CREATE TABLE rollup_dns_answer_day (
    minute BIGINT NOT NULL, hostname TEXT NOT NULL, address TEXT NOT NULL,
    pop TEXT NOT NULL, answers BIGINT NOT NULL,
    PRIMARY KEY (minute, hostname, address, pop)
);
CREATE TABLE rollup_probe_hour (
    minute BIGINT NOT NULL, pop TEXT NOT NULL, kind TEXT NOT NULL, method TEXT NOT NULL,
    samples BIGINT NOT NULL, ok BIGINT NOT NULL, value_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (minute, pop, kind, method)
);
CREATE TABLE rollup_probe_day (
    minute BIGINT NOT NULL, pop TEXT NOT NULL, kind TEXT NOT NULL, method TEXT NOT NULL,
    samples BIGINT NOT NULL, ok BIGINT NOT NULL, value_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (minute, pop, kind, method)
);
INSERT INTO rollup_http_hour (minute, customer, host, pop, requests, bytes, fill_bytes,
    s1xx, s2xx, s3xx, s4xx, s5xx, hits, misses, stale, revalidated, bypass, duration_us)
SELECT minute / 3600000 * 3600000, customer, host, pop, SUM(requests), SUM(bytes),
    SUM(fill_bytes), SUM(s1xx), SUM(s2xx), SUM(s3xx), SUM(s4xx), SUM(s5xx), SUM(hits),
    SUM(misses), SUM(stale), SUM(revalidated), SUM(bypass), SUM(duration_us)
FROM rollup_http GROUP BY minute / 3600000 * 3600000, customer, host, pop;
INSERT INTO rollup_http_day (minute, customer, host, pop, requests, bytes, fill_bytes,
    s1xx, s2xx, s3xx, s4xx, s5xx, hits, misses, stale, revalidated, bypass, duration_us)
SELECT minute / 86400000 * 86400000, customer, host, pop, SUM(requests), SUM(bytes),
    SUM(fill_bytes), SUM(s1xx), SUM(s2xx), SUM(s3xx), SUM(s4xx), SUM(s5xx), SUM(hits),
    SUM(misses), SUM(stale), SUM(revalidated), SUM(bypass), SUM(duration_us)
FROM rollup_http GROUP BY minute / 86400000 * 86400000, customer, host, pop;
INSERT INTO rollup_dns_hour (minute, customer, hostname, pop, reason, queries)
SELECT minute / 3600000 * 3600000, customer, hostname, pop, reason, SUM(queries)
FROM rollup_dns GROUP BY minute / 3600000 * 3600000, customer, hostname, pop, reason;
INSERT INTO rollup_dns_day (minute, customer, hostname, pop, reason, queries)
SELECT minute / 86400000 * 86400000, customer, hostname, pop, reason, SUM(queries)
FROM rollup_dns GROUP BY minute / 86400000 * 86400000, customer, hostname, pop, reason;
INSERT INTO rollup_dns_answer_hour (minute, hostname, address, pop, answers)
SELECT minute / 3600000 * 3600000, hostname, address, pop, SUM(answers)
FROM rollup_dns_answer GROUP BY minute / 3600000 * 3600000, hostname, address, pop;
INSERT INTO rollup_dns_answer_day (minute, hostname, address, pop, answers)
SELECT minute / 86400000 * 86400000, hostname, address, pop, SUM(answers)
FROM rollup_dns_answer GROUP BY minute / 86400000 * 86400000, hostname, address, pop;
INSERT INTO rollup_probe_hour (minute, pop, kind, method, samples, ok, value_sum)
SELECT minute / 3600000 * 3600000, pop, kind, method, SUM(samples), SUM(ok), SUM(value_sum)
FROM rollup_probe GROUP BY minute / 3600000 * 3600000, pop, kind, method;
INSERT INTO rollup_probe_day (minute, pop, kind, method, samples, ok, value_sum)
SELECT minute / 86400000 * 86400000, pop, kind, method, SUM(samples), SUM(ok), SUM(value_sum)
FROM rollup_probe GROUP BY minute / 86400000 * 86400000, pop, kind, method;
";

/// The rollup tables of each grain, without the grain's suffix ([`Grain::suffix`]).
pub const ROLLUP_TABLES: [&str; 6] = [
    "rollup_http",
    "rollup_dns",
    "rollup_dns_answer",
    "rollup_probe",
    "rollup_ops",
    "rollup_quality",
];

/// The log store's schema for [`crate::migrate`]. Databases from before refinery kept
/// their versions in `schema_migrations`; those are marked as applied.
pub const SCHEMA: Schema = Schema {
    store: "log store",
    history: "udn_log_schema_history",
    pg_lock: 7007,
    sqlite: MIGRATIONS,
    postgres: PG_MIGRATIONS,
    legacy: Legacy::VersionTable("schema_migrations"),
};

/// The file id under which migration 2 recorded the usage rolled up before per-file
/// usage was kept (billing applies it once, less what it had already recorded).
pub const LEGACY_USAGE_FILE: &str = "rollups-before-usage-file";

/// One log file's metered usage of one customer in one minute at one POP (table
/// `usage_file`, written in the file's ingest transaction): what billing records under
/// the file's own idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileUsage {
    /// The log file's id.
    pub file_id: String,
    /// When the collector received it (ms).
    pub received_at: i64,
    /// The customer.
    pub customer: String,
    /// The usage.
    pub usage: MinuteUsage,
}

/// The per-(customer, minute, POP) usage of a file's rollups, customers named only:
/// `(customer, minute, pop) -> [requests, bytes, fill_bytes, dns_queries]`.
pub fn file_usage(r: &Rollups) -> std::collections::BTreeMap<(String, i64, String), [i64; 4]> {
    let mut out: std::collections::BTreeMap<(String, i64, String), [i64; 4]> =
        std::collections::BTreeMap::new();
    for (k, a) in &r.http {
        if k.customer.is_empty() {
            continue;
        }
        let e = out
            .entry((k.customer.clone(), k.minute, k.pop.clone()))
            .or_default();
        e[0] = e[0].saturating_add(a.requests);
        e[1] = e[1].saturating_add(a.bytes);
        e[2] = e[2].saturating_add(a.fill_bytes);
    }
    for (k, n) in &r.dns {
        if k.customer.is_empty() {
            continue;
        }
        let e = out
            .entry((k.customer.clone(), k.minute, k.pop.clone()))
            .or_default();
        e[3] = e[3].saturating_add(*n);
    }
    out
}

/// A validated log file ready to be stored: its header, the checksum it arrived with,
/// its records and their per-minute rollups.
#[derive(Debug, Clone)]
pub struct PreparedFile {
    /// The file's header (its `file_id` is the idempotency key).
    pub header: FileHeader,
    /// Hex SHA-256 of the file's bytes.
    pub checksum: String,
    /// Every record of the file, in file order.
    pub records: Vec<LogRecord>,
    /// The records folded per minute and key.
    pub rollups: Rollups,
    /// The same per UTC hour.
    pub hourly: Rollups,
    /// The same per UTC day.
    pub daily: Rollups,
    /// The streaming requests folded per minute and stream.
    pub streams: stream::StreamRollups,
    /// The operational records folded per bucket and metric, under the file's role and
    /// instance.
    pub ops: ops::OpsRollups,
    /// The HTTP responses' times and origin errors per bucket and key.
    pub quality: quality::QualityRollups,
}

impl PreparedFile {
    /// Folds the records into rollups (per minute, hour and day).
    pub fn new(header: FileHeader, checksum: String, records: Vec<LogRecord>) -> PreparedFile {
        let rollups = Rollups::fold(&records);
        let hourly = rollups.coarsen(Grain::Hour);
        let daily = hourly.coarsen(Grain::Day);
        let streams = stream::StreamRollups::fold(&records);
        let ops = ops::OpsRollups::fold(&header, &records);
        let quality = quality::QualityRollups::fold(&records);
        PreparedFile {
            header,
            checksum,
            records,
            rollups,
            hourly,
            daily,
            streams,
            ops,
            quality,
        }
    }

    /// The file's rollups at each grain.
    pub fn rollups_by_grain(&self) -> [(Grain, &Rollups); 3] {
        [
            (Grain::Minute, &self.rollups),
            (Grain::Hour, &self.hourly),
            (Grain::Day, &self.daily),
        ]
    }
}

/// What [`Store::ingest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// The file's rows were committed now.
    Inserted {
        /// Records stored.
        rows: u64,
    },
    /// The file (same id, same checksum) was stored before: nothing changed.
    Duplicate {
        /// Records stored the first time.
        rows: u64,
    },
    /// A file with this id but a different checksum was stored before: nothing changed.
    Conflict {
        /// The checksum stored with the earlier file.
        stored_checksum: String,
    },
}

pub use udn_core::rollup::{
    AnswerKey, DnsKey, Grain, HOUR_MAX_SPAN_MS, HttpAgg, HttpKey, MINUTE_MAX_SPAN_MS, ProbeAgg,
    ProbeKey, Range, Rollups, minute_of, to_i64,
};

/// A bound query parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// An integer.
    Int(i64),
    /// A string.
    Text(&'a str),
    /// SQL NULL (of whatever type the statement expects).
    Null,
}

/// One value of a query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Text(String),
}

/// What a traffic series is asked for: a range read at a grain, for one customer or
/// all, and one hostname or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesQuery<'a> {
    /// The range; rows whose bucket starts in `[from, to)` count (align it with
    /// [`Grain::align`] so that whole buckets are covered).
    pub range: Range,
    /// The rollups read.
    pub grain: Grain,
    /// One customer, or all.
    pub customer: Option<&'a str>,
    /// One hostname (HTTP `host`, DNS `hostname`), or all.
    pub host: Option<&'a str>,
}

impl<'a> SeriesQuery<'a> {
    /// `range` at the grain the rule picks for its length, for `customer`, any host.
    pub fn new(range: Range, customer: Option<&'a str>) -> SeriesQuery<'a> {
        SeriesQuery {
            range,
            grain: Grain::for_span(range.to.as_millis().saturating_sub(range.from.as_millis())),
            customer,
            host: None,
        }
    }

    /// The `WHERE` clause after the time condition (` AND customer = $3 ...`), with the
    /// parameters (`$1` from, `$2` to first). `host_col` names the host column.
    pub(crate) fn filter(&self, host_col: &str) -> (String, Vec<Param<'a>>) {
        let mut params = vec![
            Param::Int(to_i64(self.range.from.as_millis())),
            Param::Int(to_i64(self.range.to.as_millis())),
        ];
        let mut sql = String::new();
        if let Some(c) = self.customer {
            params.push(Param::Text(c));
            sql.push_str(&format!(" AND customer = ${}", params.len()));
        }
        if let Some(h) = self.host {
            params.push(Param::Text(h));
            sql.push_str(&format!(" AND {host_col} = ${}", params.len()));
        }
        (sql, params)
    }
}

/// Requests and bytes in one minute (the portal's traffic chart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficPoint {
    /// Minute start (ms).
    pub minute: i64,
    /// Requests in the minute.
    pub requests: i64,
    /// Bytes sent to clients in the minute.
    pub bytes: i64,
}

impl TrafficPoint {
    /// Average hits per second over the minute.
    pub fn hits_per_sec(&self) -> f64 {
        self.requests as f64 / 60.0
    }
    /// Average bytes per second over the minute.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / 60.0
    }
}

/// Traffic of one location (POP) in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopPoint {
    /// Minute start (ms).
    pub minute: i64,
    /// The POP.
    pub pop: String,
    /// Requests.
    pub requests: i64,
    /// Bytes.
    pub bytes: i64,
}

/// Responses per status class in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPoint {
    /// Minute start (ms).
    pub minute: i64,
    /// Responses of class 1xx..5xx.
    pub classes: [i64; 5],
}

/// DNS answers naming one GTM address in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPoint {
    /// Minute start (ms).
    pub minute: i64,
    /// Queried name.
    pub hostname: String,
    /// The address answered.
    pub address: String,
    /// POP (location) of the answer.
    pub pop: String,
    /// Answers naming it.
    pub answers: i64,
}

/// Operational data of one probe method in one minute.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MethodPoint {
    /// Minute start (ms).
    pub minute: i64,
    /// POP of the probe.
    pub pop: String,
    /// `service`, `load`, `latency`.
    pub kind: String,
    /// The method.
    pub method: String,
    /// Samples.
    pub samples: i64,
    /// Successful samples.
    pub ok: i64,
    /// Mean value (ms, or percent for load).
    pub mean: f64,
}

/// A customer's usage over a period (billing input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// HTTP requests served.
    pub requests: i64,
    /// Bytes sent to clients.
    pub bytes: i64,
    /// Bytes fetched from origins.
    pub fill_bytes: i64,
    /// DNS queries answered.
    pub dns_queries: i64,
}

/// One customer's metered usage in one minute at one POP: the rows a billing run bills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteUsage {
    /// Minute start (ms since the epoch).
    pub minute: i64,
    /// The POP (edge location, or the answering DNS server's location; empty if unknown).
    pub pop: String,
    /// HTTP requests served.
    pub requests: i64,
    /// Bytes sent to clients.
    pub bytes: i64,
    /// Bytes fetched from origins.
    pub fill_bytes: i64,
    /// DNS queries answered for the customer's names.
    pub dns_queries: i64,
}

/// Bytes sent in one 5-minute bucket by one POP (95th-percentile billing input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthSample {
    /// Bucket start (ms, a multiple of 300,000).
    pub bucket: i64,
    /// The POP.
    pub pop: String,
    /// Bytes sent in the bucket.
    pub bytes: i64,
}

impl BandwidthSample {
    /// Average bits per second over the bucket (bytes x 8 / 300).
    pub fn bits_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / 300.0
    }
}

/// Row counts of the store (operations and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Files in the ledger.
    pub files: i64,
    /// Records the ledger says were stored.
    pub ledger_rows: i64,
    /// Raw HTTP rows.
    pub http: i64,
    /// Raw DNS rows.
    pub dns: i64,
    /// Raw probe rows.
    pub probe: i64,
}

/// The store: one implementation per database, same schema, same queries.
pub trait Store: Send {
    /// Stores a file's records and rollups and its ledger row in one transaction, unless
    /// a file with the same id is already in the ledger. Returns only after the
    /// transaction committed durably (or did nothing).
    fn ingest(&mut self, file: &PreparedFile, received_at: Timestamp) -> Result<Ingested>;

    /// Deletes raw records older than `before` (rollups and the ledger are kept, except
    /// the per-viewer streaming rows, which hold client addresses like the raw records:
    /// [`stream::PRUNE_CLIENTS`]). Returns the rows deleted.
    fn prune_raw(&mut self, before: Timestamp) -> Result<u64>;

    /// Deletes the rollups of `grain` whose bucket starts before `before` (retention of
    /// the per-minute and hourly rollups; the daily ones are kept). Returns the rows
    /// deleted.
    fn prune_rollups(&mut self, grain: Grain, before: Timestamp) -> Result<u64>;

    /// Runs a read-only query. `$1`, `$2`... are the parameters, numbered in order of
    /// first appearance.
    fn select(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Cell>>>;

    /// Which backend this is (`"sqlite"`, `"postgres"`).
    fn backend(&self) -> &'static str;

    /// Requests and bytes per minute, optionally for one customer (at the grain the rule
    /// picks for the range: see [`SeriesQuery::new`]).
    fn traffic(&mut self, range: Range, customer: Option<&str>) -> Result<Vec<TrafficPoint>> {
        self.traffic_series(&SeriesQuery::new(range, customer))
    }

    /// Requests and bytes per bucket of `q.grain` (`minute` is the bucket's start).
    fn traffic_series(&mut self, q: &SeriesQuery<'_>) -> Result<Vec<TrafficPoint>> {
        let (filter, params) = q.filter("host");
        let sql = format!(
            "SELECT minute, CAST(SUM(requests) AS BIGINT), CAST(SUM(bytes) AS BIGINT) \
             FROM rollup_http{} WHERE minute >= $1 AND minute < $2{filter} \
             GROUP BY minute ORDER BY minute",
            q.grain.suffix()
        );
        let rows = self.select(&sql, &params)?;
        rows.iter()
            .map(|r| {
                Ok(TrafficPoint {
                    minute: int(r, 0, &sql)?,
                    requests: int(r, 1, &sql)?,
                    bytes: int(r, 2, &sql)?,
                })
            })
            .collect()
    }

    /// Requests and bytes per minute and location (POP).
    fn traffic_by_pop(&mut self, range: Range, customer: Option<&str>) -> Result<Vec<PopPoint>> {
        self.traffic_by_pop_series(&SeriesQuery::new(range, customer))
    }

    /// Requests and bytes per bucket and location (POP).
    fn traffic_by_pop_series(&mut self, q: &SeriesQuery<'_>) -> Result<Vec<PopPoint>> {
        let (filter, params) = q.filter("host");
        let sql = format!(
            "SELECT minute, pop, CAST(SUM(requests) AS BIGINT), CAST(SUM(bytes) AS BIGINT) \
             FROM rollup_http{} WHERE minute >= $1 AND minute < $2{filter} \
             GROUP BY minute, pop ORDER BY minute, pop",
            q.grain.suffix()
        );
        let rows = self.select(&sql, &params)?;
        rows.iter()
            .map(|r| {
                Ok(PopPoint {
                    minute: int(r, 0, &sql)?,
                    pop: text(r, 1, &sql)?,
                    requests: int(r, 2, &sql)?,
                    bytes: int(r, 3, &sql)?,
                })
            })
            .collect()
    }

    /// Responses per status class per minute.
    fn status_classes(&mut self, range: Range, customer: Option<&str>) -> Result<Vec<StatusPoint>> {
        self.status_series(&SeriesQuery::new(range, customer))
    }

    /// Responses per status class per bucket.
    fn status_series(&mut self, q: &SeriesQuery<'_>) -> Result<Vec<StatusPoint>> {
        let (filter, params) = q.filter("host");
        let sql = format!(
            "SELECT minute, CAST(SUM(s1xx) AS BIGINT), CAST(SUM(s2xx) AS BIGINT), \
             CAST(SUM(s3xx) AS BIGINT), CAST(SUM(s4xx) AS BIGINT), CAST(SUM(s5xx) AS BIGINT) \
             FROM rollup_http{} WHERE minute >= $1 AND minute < $2{filter} \
             GROUP BY minute ORDER BY minute",
            q.grain.suffix()
        );
        let rows = self.select(&sql, &params)?;
        rows.iter()
            .map(|r| {
                let mut classes = [0; 5];
                for (i, c) in classes.iter_mut().enumerate() {
                    *c = int(r, i + 1, &sql)?;
                }
                Ok(StatusPoint {
                    minute: int(r, 0, &sql)?,
                    classes,
                })
            })
            .collect()
    }

    /// DNS answers per GTM address (and location) per minute, optionally for one name.
    fn answers_by_address(
        &mut self,
        range: Range,
        hostname: Option<&str>,
    ) -> Result<Vec<AddressPoint>> {
        let q = SeriesQuery {
            host: hostname,
            ..SeriesQuery::new(range, None)
        };
        self.answers_series(&q)
    }

    /// DNS answers per GTM address (and location) per bucket. The answer rollups carry
    /// no customer: `q.customer` must be `None` (filter by the customer's hostnames).
    fn answers_series(&mut self, q: &SeriesQuery<'_>) -> Result<Vec<AddressPoint>> {
        let q = SeriesQuery {
            customer: None,
            ..*q
        };
        let (filter, params) = q.filter("hostname");
        let sql = format!(
            "SELECT minute, hostname, address, pop, CAST(SUM(answers) AS BIGINT) \
             FROM rollup_dns_answer{} WHERE minute >= $1 AND minute < $2{filter} \
             GROUP BY minute, hostname, address, pop ORDER BY minute, hostname, address, pop",
            q.grain.suffix()
        );
        let rows = self.select(&sql, &params)?;
        rows.iter()
            .map(|r| {
                Ok(AddressPoint {
                    minute: int(r, 0, &sql)?,
                    hostname: text(r, 1, &sql)?,
                    address: text(r, 2, &sql)?,
                    pop: text(r, 3, &sql)?,
                    answers: int(r, 4, &sql)?,
                })
            })
            .collect()
    }

    /// Operational data per probe method per minute.
    fn probe_methods(&mut self, range: Range) -> Result<Vec<MethodPoint>> {
        self.probe_series(
            range,
            Grain::for_span(range.to.as_millis().saturating_sub(range.from.as_millis())),
        )
    }

    /// Operational data per probe method per bucket of `grain`.
    fn probe_series(&mut self, range: Range, grain: Grain) -> Result<Vec<MethodPoint>> {
        let sql = format!(
            "SELECT minute, pop, kind, method, CAST(SUM(samples) AS BIGINT), \
             CAST(SUM(ok) AS BIGINT), SUM(value_sum) FROM rollup_probe{} \
             WHERE minute >= $1 AND minute < $2 \
             GROUP BY minute, pop, kind, method ORDER BY minute, pop, kind, method",
            grain.suffix()
        );
        let sql = sql.as_str();
        let rows = self.select(
            sql,
            &[
                Param::Int(to_i64(range.from.as_millis())),
                Param::Int(to_i64(range.to.as_millis())),
            ],
        )?;
        rows.iter()
            .map(|r| {
                let samples = int(r, 4, sql)?;
                let sum = float(r, 6, sql)?;
                Ok(MethodPoint {
                    minute: int(r, 0, sql)?,
                    pop: text(r, 1, sql)?,
                    kind: text(r, 2, sql)?,
                    method: text(r, 3, sql)?,
                    samples,
                    ok: int(r, 5, sql)?,
                    mean: if samples > 0 {
                        sum / samples as f64
                    } else {
                        0.0
                    },
                })
            })
            .collect()
    }

    /// A customer's usage over a period: requests, bytes, fill bytes, DNS queries.
    fn usage(&mut self, customer: &str, range: Range) -> Result<Usage> {
        let from = Param::Int(to_i64(range.from.as_millis()));
        let to = Param::Int(to_i64(range.to.as_millis()));
        let sql = "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT), \
                   CAST(COALESCE(SUM(bytes), 0) AS BIGINT), \
                   CAST(COALESCE(SUM(fill_bytes), 0) AS BIGINT) FROM rollup_http \
                   WHERE minute >= $1 AND minute < $2 AND customer = $3";
        let rows = self.select(sql, &[from, to, Param::Text(customer)])?;
        let row = rows.first().cloned().unwrap_or_default();
        let dns_sql = "SELECT CAST(COALESCE(SUM(queries), 0) AS BIGINT) FROM rollup_dns \
                       WHERE minute >= $1 AND minute < $2 AND customer = $3";
        let dns = self.select(dns_sql, &[from, to, Param::Text(customer)])?;
        Ok(Usage {
            requests: int(&row, 0, sql)?,
            bytes: int(&row, 1, sql)?,
            fill_bytes: int(&row, 2, sql)?,
            dns_queries: dns
                .first()
                .map(|r| int(r, 0, dns_sql))
                .transpose()?
                .unwrap_or(0),
        })
    }

    /// A customer's usage per minute and POP over a period, from the rollups (which
    /// outlive the raw records): HTTP rows from `rollup_http`, then DNS rows from
    /// `rollup_dns`, each ordered by minute and POP.
    fn usage_by_minute(&mut self, customer: &str, range: Range) -> Result<Vec<MinuteUsage>> {
        let from = Param::Int(to_i64(range.from.as_millis()));
        let to = Param::Int(to_i64(range.to.as_millis()));
        let params = [from, to, Param::Text(customer)];
        let sql = "SELECT minute, pop, CAST(SUM(requests) AS BIGINT), \
                   CAST(SUM(bytes) AS BIGINT), CAST(SUM(fill_bytes) AS BIGINT) \
                   FROM rollup_http WHERE minute >= $1 AND minute < $2 AND customer = $3 \
                   GROUP BY minute, pop ORDER BY minute, pop";
        let mut out = Vec::new();
        for r in self.select(sql, &params)? {
            out.push(MinuteUsage {
                minute: int(&r, 0, sql)?,
                pop: text(&r, 1, sql)?,
                requests: int(&r, 2, sql)?,
                bytes: int(&r, 3, sql)?,
                fill_bytes: int(&r, 4, sql)?,
                dns_queries: 0,
            });
        }
        let sql = "SELECT minute, pop, CAST(SUM(queries) AS BIGINT) FROM rollup_dns \
                   WHERE minute >= $1 AND minute < $2 AND customer = $3 \
                   GROUP BY minute, pop ORDER BY minute, pop";
        for r in self.select(sql, &params)? {
            out.push(MinuteUsage {
                minute: int(&r, 0, sql)?,
                pop: text(&r, 1, sql)?,
                dns_queries: int(&r, 2, sql)?,
                ..MinuteUsage::default()
            });
        }
        Ok(out)
    }

    /// Bytes per 5-minute bucket per POP for a customer (sum across POPs per bucket
    /// before taking the 95th percentile).
    fn bandwidth_5m(&mut self, customer: &str, range: Range) -> Result<Vec<BandwidthSample>> {
        let sql = "SELECT minute - minute % 300000 AS bucket, pop, \
                   CAST(SUM(bytes) AS BIGINT) FROM rollup_http \
                   WHERE minute >= $1 AND minute < $2 AND customer = $3 \
                   GROUP BY bucket, pop ORDER BY bucket, pop";
        let rows = self.select(
            sql,
            &[
                Param::Int(to_i64(range.from.as_millis())),
                Param::Int(to_i64(range.to.as_millis())),
                Param::Text(customer),
            ],
        )?;
        rows.iter()
            .map(|r| {
                Ok(BandwidthSample {
                    bucket: int(r, 0, sql)?,
                    pop: text(r, 1, sql)?,
                    bytes: int(r, 2, sql)?,
                })
            })
            .collect()
    }

    /// The per-file usage of every file received at or after `from` (table
    /// `usage_file`), ordered by file.
    fn file_usage_since(&mut self, from: Timestamp) -> Result<Vec<FileUsage>> {
        let sql = "SELECT file_id, received_at, customer, minute, pop, requests, bytes, \
                   fill_bytes, dns_queries FROM usage_file WHERE received_at >= $1 \
                   ORDER BY file_id, customer, minute, pop";
        let rows = self.select(sql, &[Param::Int(to_i64(from.as_millis()))])?;
        rows.iter()
            .map(|r| {
                Ok(FileUsage {
                    file_id: text(r, 0, sql)?,
                    received_at: int(r, 1, sql)?,
                    customer: text(r, 2, sql)?,
                    usage: MinuteUsage {
                        minute: int(r, 3, sql)?,
                        pop: text(r, 4, sql)?,
                        requests: int(r, 5, sql)?,
                        bytes: int(r, 6, sql)?,
                        fill_bytes: int(r, 7, sql)?,
                        dns_queries: int(r, 8, sql)?,
                    },
                })
            })
            .collect()
    }

    /// Every probe's latest view of every server's service tested since `since`
    /// ([`health::latest_checks`]).
    fn service_checks(&mut self, since: Timestamp) -> Result<Vec<health::ServiceCheck>> {
        health::latest_checks(self, since)
    }

    /// DNS answers per decision reason over `q`'s range ([`health::reasons`]).
    fn dns_reasons(&mut self, q: &SeriesQuery<'_>) -> Result<Vec<(String, i64)>> {
        health::reasons(self, q)
    }

    /// The CDN's service quality per bucket of `q`: status classes, cache outcomes and
    /// hit ratio, origin errors, response-time percentiles ([`quality::series`]).
    fn quality(&mut self, q: &SeriesQuery<'_>) -> Result<Vec<quality::QualityPoint>> {
        quality::series(self, q)
    }

    /// The top URLs and client networks of `q`'s range, from the raw records
    /// ([`quality::top`]).
    fn top(&mut self, q: &SeriesQuery<'_>) -> Result<quality::Top> {
        quality::top(self, q)
    }

    /// The roles' operational statistics over `range` per bucket of `grain`, of one
    /// role or all ([`ops::report`]), with the probes' per-method results when probes
    /// are asked for.
    fn ops(&mut self, range: Range, grain: Grain, role: Option<&str>) -> Result<ops::OpsReport> {
        let (points, truncated) = ops::report(self, range, grain, role)?;
        let probe_methods = if role.is_none_or(|r| r == "probe") {
            self.probe_series(range, grain)?
        } else {
            Vec::new()
        };
        Ok(ops::OpsReport {
            grain: grain.name(),
            truncated,
            points,
            probe_methods,
        })
    }

    /// Streaming statistics (HLS, DASH) per stream, per minute and per viewer, for one
    /// customer or all ([`stream::report`]).
    fn streaming(&mut self, range: Range, customer: Option<&str>) -> Result<stream::StreamReport> {
        stream::report(self, range, customer)
    }

    /// Row counts (ledger and raw tables).
    fn counts(&mut self) -> Result<Counts> {
        let sql = "SELECT (SELECT COUNT(*) FROM log_files), \
                   (SELECT CAST(COALESCE(SUM(rows), 0) AS BIGINT) FROM log_files), \
                   (SELECT COUNT(*) FROM raw_http), (SELECT COUNT(*) FROM raw_dns), \
                   (SELECT COUNT(*) FROM raw_probe)";
        let rows = self.select(sql, &[])?;
        let r = rows.first().cloned().unwrap_or_default();
        Ok(Counts {
            files: int(&r, 0, sql)?,
            ledger_rows: int(&r, 1, sql)?,
            http: int(&r, 2, sql)?,
            dns: int(&r, 3, sql)?,
            probe: int(&r, 4, sql)?,
        })
    }
}

fn col_err(index: usize, sql: &str) -> Error {
    Error::ColumnType {
        index,
        query: sql.chars().take(60).collect(),
    }
}

fn int(row: &[Cell], i: usize, sql: &str) -> Result<i64> {
    match row.get(i) {
        Some(Cell::Int(v)) => Ok(*v),
        Some(Cell::Null) => Ok(0),
        _ => Err(col_err(i, sql)),
    }
}

fn float(row: &[Cell], i: usize, sql: &str) -> Result<f64> {
    match row.get(i) {
        Some(Cell::Float(v)) => Ok(*v),
        Some(Cell::Int(v)) => Ok(*v as f64),
        Some(Cell::Null) => Ok(0.0),
        _ => Err(col_err(i, sql)),
    }
}

fn text(row: &[Cell], i: usize, sql: &str) -> Result<String> {
    match row.get(i) {
        Some(Cell::Text(v)) => Ok(v.clone()),
        Some(Cell::Null) => Ok(String::new()),
        _ => Err(col_err(i, sql)),
    }
}

/// Where the store lives: the embedded SQLite file in a data directory, or PostgreSQL.
#[derive(Debug, Clone)]
pub enum Location {
    /// SQLite in `<dir>/udn.sqlite` (the directory is created on first start).
    Sqlite {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Optional cap on the database size in pages (`max_page_count`).
        max_pages: Option<u64>,
    },
    /// PostgreSQL at a connection URL (`postgres://user@host:port/db`).
    Postgres {
        /// The URL.
        url: String,
    },
    /// ClickHouse's HTTP interface (`http://host:port[/database]`, see
    /// [`clickhouse::Target::parse`]).
    ClickHouse {
        /// The URL.
        url: String,
    },
}

/// Opens (and migrates) the store at `loc`.
pub fn open(loc: &Location) -> Result<Box<dyn Store>> {
    match loc {
        Location::Sqlite { dir, max_pages } => {
            Ok(Box::new(sqlite::SqliteStore::open(dir, *max_pages)?))
        }
        Location::Postgres { url } => Ok(Box::new(postgres::PgStore::connect(url)?)),
        Location::ClickHouse { url } => Ok(Box::new(clickhouse::ClickHouseStore::connect(url)?)),
    }
}
