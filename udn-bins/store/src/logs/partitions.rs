//! Day partitions of the raw tables on PostgreSQL.
//!
//! `raw_http`, `raw_dns` and `raw_probe` are partitioned by range of `ts`: one partition
//! per UTC day (`raw_http_d20261207` holds `[2026-12-07, 2026-12-08)`), made when the
//! first file with records of that day arrives, plus a default partition
//! (`raw_http_default`) for the rows of days no partition is made for. Partitions are made
//! only for days from [`WINDOW_PAST_DAYS`] before the file's arrival to
//! [`WINDOW_FUTURE_DAYS`] after it: a file whose records carry thousands of different
//! days (a broken clock, a hostile instance) lands them in the default partition instead
//! of making thousands of tables. When a partition is made, the rows of its day that
//! were in the default partition move into it.
//!
//! Retention ([`super::Store::prune_raw`]) drops every partition whose day ended at or
//! before the cut-off (no row-by-row `DELETE`, no bloat, no vacuum), then deletes the
//! older rows of the partition the cut-off falls in and of the default partition.
//!
//! SQLite and ClickHouse do not take this step: SQLite prunes by the time index, and
//! ClickHouse partitions its tables by day already (`PARTITION BY`, see
//! [`super::clickhouse`]).

use super::{PreparedFile, Result, to_i64};
use crate::migrate::Step;
use crate::pg::{Client, Session as _};
use std::collections::BTreeSet;
use udn_core::Timestamp;
use udn_core::log::LogRecord;

/// The partitioned tables.
pub const RAW_TABLES: [&str; 3] = ["raw_http", "raw_dns", "raw_probe"];

/// One UTC day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Days before a file's arrival for which partitions are made.
pub const WINDOW_PAST_DAYS: i64 = 400;

/// Days after a file's arrival for which partitions are made (clock skew).
pub const WINDOW_FUTURE_DAYS: i64 = 2;

/// Advisory lock key of partition changes (the log store's migrations use 7007, the
/// control plane's 7010 to 7012).
const LOCK_PARTITIONS: i64 = 7013;

/// The PostgreSQL-only migration step that partitions the raw tables; the rows already
/// there go to the default partitions (and move into day partitions as files of their
/// days arrive, or leave by retention).
pub const MIGRATION: Step = Step {
    version: 8,
    name: "raw_day_partitions",
    sql: "
ALTER TABLE raw_http RENAME TO raw_http_unpartitioned;
ALTER INDEX raw_http_ts RENAME TO raw_http_unpartitioned_ts;
CREATE TABLE raw_http (LIKE raw_http_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (ts);
CREATE INDEX raw_http_ts ON raw_http (ts);
CREATE TABLE raw_http_default PARTITION OF raw_http DEFAULT;
INSERT INTO raw_http SELECT * FROM raw_http_unpartitioned;
DROP TABLE raw_http_unpartitioned;

ALTER TABLE raw_dns RENAME TO raw_dns_unpartitioned;
ALTER INDEX raw_dns_ts RENAME TO raw_dns_unpartitioned_ts;
CREATE TABLE raw_dns (LIKE raw_dns_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (ts);
CREATE INDEX raw_dns_ts ON raw_dns (ts);
CREATE TABLE raw_dns_default PARTITION OF raw_dns DEFAULT;
INSERT INTO raw_dns SELECT * FROM raw_dns_unpartitioned;
DROP TABLE raw_dns_unpartitioned;

ALTER TABLE raw_probe RENAME TO raw_probe_unpartitioned;
ALTER INDEX raw_probe_ts RENAME TO raw_probe_unpartitioned_ts;
CREATE TABLE raw_probe (LIKE raw_probe_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (ts);
CREATE INDEX raw_probe_ts ON raw_probe (ts);
CREATE TABLE raw_probe_default PARTITION OF raw_probe DEFAULT;
INSERT INTO raw_probe SELECT * FROM raw_probe_unpartitioned;
DROP TABLE raw_probe_unpartitioned;
",
};

/// The name of `table`'s partition of day `day` (days since 1970-01-01).
pub fn partition_name(table: &str, day: i64) -> String {
    let date = udn_billing::period::format_date(Timestamp::from_millis(
        u64::try_from(day.saturating_mul(DAY_MS)).unwrap_or(0),
    ));
    format!("{table}_d{}", date.replace('-', ""))
}

/// The (table, day) pairs `file`'s raw records need, within the window around `now`.
pub fn days_needed(file: &PreparedFile, now: Timestamp) -> BTreeSet<(&'static str, i64)> {
    let today = to_i64(now.as_millis()) / DAY_MS;
    let window = today - WINDOW_PAST_DAYS..=today + WINDOW_FUTURE_DAYS;
    let mut out = BTreeSet::new();
    for rec in &file.records {
        let table = match rec {
            LogRecord::Http(_) => RAW_TABLES[0],
            LogRecord::Dns(_) => RAW_TABLES[1],
            LogRecord::Probe(_) => RAW_TABLES[2],
            LogRecord::Ops(_) => continue,
        };
        let day = to_i64(rec.ts().as_millis()) / DAY_MS;
        if window.contains(&day) {
            out.insert((table, day));
        }
    }
    out
}

/// The partitions this store knows exist, so that a file of a known day costs no round
/// trip. Bounded: entries older than the window are forgotten.
#[derive(Debug, Default)]
pub struct Known(BTreeSet<(&'static str, i64)>);

impl Known {
    /// Forgets every entry (after retention dropped partitions).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Makes every partition of `needed` that does not exist yet, each in a transaction of
/// its own (committed before the file's transaction starts, so a file that fails leaves
/// empty partitions, never half a file). Concurrent collectors serialize on an advisory
/// lock and find the partition made.
pub fn ensure(
    client: &mut Client,
    known: &mut Known,
    needed: &BTreeSet<(&'static str, i64)>,
    now: Timestamp,
) -> Result<()> {
    let oldest = to_i64(now.as_millis()) / DAY_MS - WINDOW_PAST_DAYS;
    known.0.retain(|(_, day)| *day >= oldest);
    for &(table, day) in needed {
        if known.0.contains(&(table, day)) {
            continue;
        }
        let name = partition_name(table, day);
        let tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS])?;
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])?
            .get(0);
        if !exists {
            let (lo, hi) = (day * DAY_MS, (day + 1) * DAY_MS);
            // Made as a plain table, filled with its day's rows from the default
            // partition, then attached: a default partition may not keep rows of a
            // range that gets its own partition.
            tx.batch_execute(&format!(
                "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
                 INSERT INTO {name} SELECT * FROM {table}_default WHERE ts >= {lo} AND ts < {hi};
                 DELETE FROM {table}_default WHERE ts >= {lo} AND ts < {hi};
                 ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi});"
            ))?;
            tracing::info!(partition = %name, "log store: made a day partition");
        }
        tx.commit()?;
        known.0.insert((table, day));
    }
    Ok(())
}

/// The day partitions of `table` with their bounds `[lo, hi)` in milliseconds.
pub fn list(client: &mut Client, table: &str) -> Result<Vec<(String, i64, i64)>> {
    let rows = client.query(
        "SELECT c.relname::TEXT, pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) ORDER BY 1",
        &[&table],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let bound: String = r.get(1);
            match numbers(&bound)[..] {
                [lo, hi] => Some((name, lo, hi)),
                _ => None, // the default partition
            }
        })
        .collect())
}

/// The integers in a partition bound (`FOR VALUES FROM ('1') TO ('2')`).
fn numbers(bound: &str) -> Vec<i64> {
    bound
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Drops `table`'s day partitions that end at or before `before`; the number of rows
/// they held.
pub fn drop_before(client: &mut Client, table: &str, before: i64) -> Result<u64> {
    let mut rows = 0;
    for (name, _, hi) in list(client, table)? {
        if hi > before {
            continue;
        }
        let tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS])?;
        let n: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {name}"), &[])?
            .get(0);
        tx.batch_execute(&format!("DROP TABLE {name}"))?;
        tx.commit()?;
        rows += u64::try_from(n).unwrap_or(0);
        tracing::info!(partition = %name, rows = n, "log store: dropped a day partition");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_and_bounds() {
        assert_eq!(partition_name("raw_http", 0), "raw_http_d19700101");
        // 2026-12-07 is day 20,794.
        assert_eq!(partition_name("raw_dns", 20_794), "raw_dns_d20261207");
        assert_eq!(
            numbers("FOR VALUES FROM ('1796601600000') TO ('1796688000000')"),
            vec![1_796_601_600_000, 1_796_688_000_000]
        );
        assert!(numbers("DEFAULT").is_empty());
    }

    /// A portable step added to `MIGRATIONS` must reach PostgreSQL too, before this one.
    #[test]
    fn postgres_takes_every_portable_step_then_the_partitions() {
        let (all, pg) = (super::super::MIGRATIONS, super::super::PG_MIGRATIONS);
        assert_eq!(pg.len(), all.len() + 1);
        for (a, b) in all.iter().zip(pg) {
            assert_eq!((a.version, a.name, a.sql), (b.version, b.name, b.sql));
        }
        assert_eq!(MIGRATION.version, all[all.len() - 1].version + 1);
    }
}
