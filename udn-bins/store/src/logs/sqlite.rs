//! The embedded SQLite store: one file `udn.sqlite` in the data directory, WAL journal,
//! `synchronous = FULL` (a commit that returned is on disk, so an ack is never lost).

use super::{Cell, Error, Grain, Ingested, Param, PreparedFile, Result, Rollups, Store, to_i64};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, TransactionBehavior, params};
use std::path::Path;
use udn_core::Timestamp;
use udn_core::log::LogRecord;

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
}

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "udn.sqlite";

impl SqliteStore {
    /// Opens `<dir>/udn.sqlite`, creating the directory and the schema on first start.
    /// `max_pages` caps the database size (`PRAGMA max_page_count`); a full database
    /// fails inserts with [`Error::is_full`] like a full disk does.
    pub fn open(dir: &Path, max_pages: Option<u64>) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        Self::open_file(&dir.join(DB_FILE), max_pages)
    }

    /// Opens (and migrates) the store in the SQLite file `path` (`udn control billing
    /// --db FILE` reads usage from it).
    pub fn open_file(path: &Path, max_pages: Option<u64>) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        if let Some(n) = max_pages {
            conn.pragma_update(None, "max_page_count", n)?;
        }
        let mut store = SqliteStore { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        crate::migrate::sqlite(&mut self.conn, &super::SCHEMA)?;
        Ok(())
    }
}

/// The rollup upserts of the tables with suffix `sfx` (`""`, `_hour`, `_day`: see
/// [`super::Grain::suffix`]), shared in spirit with PostgreSQL (which sends them as one
/// `UNNEST` statement per table).
fn upsert_http(sfx: &str) -> String {
    format!(
        "INSERT INTO rollup_http{sfx} (minute, customer, host, pop, requests, \
    bytes, fill_bytes, s1xx, s2xx, s3xx, s4xx, s5xx, hits, misses, stale, revalidated, bypass, \
    duration_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
    ?17, ?18) ON CONFLICT (minute, customer, host, pop) DO UPDATE SET \
    requests = rollup_http{sfx}.requests + excluded.requests, \
    bytes = rollup_http{sfx}.bytes + excluded.bytes, \
    fill_bytes = rollup_http{sfx}.fill_bytes + excluded.fill_bytes, \
    s1xx = rollup_http{sfx}.s1xx + excluded.s1xx, s2xx = rollup_http{sfx}.s2xx + excluded.s2xx, \
    s3xx = rollup_http{sfx}.s3xx + excluded.s3xx, s4xx = rollup_http{sfx}.s4xx + excluded.s4xx, \
    s5xx = rollup_http{sfx}.s5xx + excluded.s5xx, hits = rollup_http{sfx}.hits + excluded.hits, \
    misses = rollup_http{sfx}.misses + excluded.misses, \
    stale = rollup_http{sfx}.stale + excluded.stale, \
    revalidated = rollup_http{sfx}.revalidated + excluded.revalidated, \
    bypass = rollup_http{sfx}.bypass + excluded.bypass, \
    duration_us = rollup_http{sfx}.duration_us + excluded.duration_us"
    )
}

fn upsert_dns(sfx: &str) -> String {
    format!(
        "INSERT INTO rollup_dns{sfx} (minute, customer, hostname, pop, reason, \
    queries) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (minute, customer, hostname, pop, \
    reason) DO UPDATE SET queries = rollup_dns{sfx}.queries + excluded.queries"
    )
}

fn upsert_answer(sfx: &str) -> String {
    format!(
        "INSERT INTO rollup_dns_answer{sfx} (minute, hostname, address, pop, \
    answers) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (minute, hostname, address, pop) \
    DO UPDATE SET answers = rollup_dns_answer{sfx}.answers + excluded.answers"
    )
}

fn upsert_probe(sfx: &str) -> String {
    format!(
        "INSERT INTO rollup_probe{sfx} (minute, pop, kind, method, samples, ok, \
    value_sum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (minute, pop, kind, method) \
    DO UPDATE SET samples = rollup_probe{sfx}.samples + excluded.samples, \
    ok = rollup_probe{sfx}.ok + excluded.ok, \
    value_sum = rollup_probe{sfx}.value_sum + excluded.value_sum"
    )
}

/// Adds `roll` to the rollup tables of suffix `sfx`.
fn write_rollups(tx: &rusqlite::Transaction<'_>, roll: &Rollups, sfx: &str) -> Result<()> {
    let mut st = tx.prepare_cached(&upsert_http(sfx))?;
    for (k, a) in &roll.http {
        st.execute(params![
            k.minute,
            k.customer,
            k.host,
            k.pop,
            a.requests,
            a.bytes,
            a.fill_bytes,
            a.status[0],
            a.status[1],
            a.status[2],
            a.status[3],
            a.status[4],
            a.hits,
            a.misses,
            a.stale,
            a.revalidated,
            a.bypass,
            a.duration_us,
        ])?;
    }
    let mut st = tx.prepare_cached(&upsert_dns(sfx))?;
    for (k, n) in &roll.dns {
        st.execute(params![
            k.minute, k.customer, k.hostname, k.pop, k.reason, n
        ])?;
    }
    let mut st = tx.prepare_cached(&upsert_answer(sfx))?;
    for (k, n) in &roll.answers {
        st.execute(params![k.minute, k.hostname, k.address, k.pop, n])?;
    }
    let mut st = tx.prepare_cached(&upsert_probe(sfx))?;
    for (k, a) in &roll.probe {
        st.execute(params![
            k.minute,
            k.pop,
            k.kind,
            k.method,
            a.samples,
            a.ok,
            a.value_sum
        ])?;
    }
    Ok(())
}

/// Space-separated addresses of a DNS answer.
pub(crate) fn join_addrs(addrs: &[std::net::IpAddr]) -> String {
    let mut s = String::new();
    for (i, a) in addrs.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&a.to_string());
    }
    s
}

/// The store's parameters as rusqlite values (`$1`, `$2`... bind by position).
/// `params` as rusqlite values, in order.
pub(crate) fn bind<'a>(params: &[Param<'a>]) -> Vec<ToSqlOutput<'a>> {
    params.iter().map(value).collect()
}

/// One parameter as SQLite takes it (text borrowed, not copied).
pub(crate) fn value<'a>(p: &Param<'a>) -> ToSqlOutput<'a> {
    match p {
        Param::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
        Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        Param::Null => ToSqlOutput::Owned(Value::Null),
    }
}

/// The first `n` columns of `row` as [`Cell`]s (a blob reads as NULL: no table has one).
pub(crate) fn cells(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Cell>> {
    (0..n)
        .map(|i| {
            Ok(match row.get_ref(i)? {
                ValueRef::Null | ValueRef::Blob(_) => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Real(v) => Cell::Float(v),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            })
        })
        .collect()
}

impl Store for SqliteStore {
    fn ingest(&mut self, file: &PreparedFile, received_at: Timestamp) -> Result<Ingested> {
        let h = &file.header;
        let rows = file.records.len() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let fresh = tx.execute(
            "INSERT INTO log_files (file_id, checksum, role, instance, opened_at, rows, \
             received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (file_id) DO NOTHING",
            params![
                h.file_id,
                file.checksum,
                h.role.as_str(),
                h.instance,
                to_i64(h.opened_at.as_millis()),
                rows,
                to_i64(received_at.as_millis()),
            ],
        )?;
        if fresh == 0 {
            let (checksum, stored): (String, i64) = tx.query_row(
                "SELECT checksum, rows FROM log_files WHERE file_id = ?1",
                [&h.file_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.rollback()?;
            return Ok(if checksum == file.checksum {
                Ingested::Duplicate {
                    rows: u64::try_from(stored).unwrap_or(0),
                }
            } else {
                Ingested::Conflict {
                    stored_checksum: checksum,
                }
            });
        }
        {
            let mut http = tx.prepare_cached(
                "INSERT INTO raw_http (ts, customer, host, path, method, status, bytes, \
                 fill_bytes, outcome, duration_us, client, pop) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut dns = tx.prepare_cached(
                "INSERT INTO raw_dns (ts, hostname, qtype, client, ecs, addrs, reason, pop, \
                 customer, server) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut probe = tx.prepare_cached(
                "INSERT INTO raw_probe (ts, pop, kind, target, method, ok, value, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for rec in &file.records {
                match rec {
                    LogRecord::Http(r) => {
                        http.execute(params![
                            to_i64(r.ts.as_millis()),
                            r.customer,
                            r.host,
                            r.path,
                            r.method,
                            i64::from(r.status),
                            to_i64(r.bytes),
                            to_i64(r.fill_bytes),
                            r.outcome,
                            to_i64(r.duration_us),
                            r.client.to_string(),
                            r.pop,
                        ])?;
                    }
                    LogRecord::Dns(r) => {
                        dns.execute(params![
                            to_i64(r.ts.as_millis()),
                            r.hostname,
                            r.qtype,
                            r.client.to_string(),
                            r.ecs.map(|c| c.to_string()),
                            join_addrs(&r.addrs),
                            r.reason,
                            r.pop,
                            r.customer,
                            r.server,
                        ])?;
                    }
                    LogRecord::Probe(r) => {
                        probe.execute(params![
                            to_i64(r.ts.as_millis()),
                            r.pop,
                            r.kind,
                            r.target,
                            r.method,
                            i64::from(r.ok),
                            r.value,
                            r.detail,
                        ])?;
                    }
                    // Operational records are kept as rollups only (`ops::write`).
                    LogRecord::Ops(_) => {}
                }
            }
            for (grain, roll) in file.rollups_by_grain() {
                write_rollups(&tx, roll, grain.suffix())?;
            }
            let roll = &file.rollups;
            let mut st = tx.prepare_cached(
                "INSERT INTO usage_file (file_id, customer, minute, pop, requests, bytes, \
                 fill_bytes, dns_queries, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for ((customer, minute, pop), u) in super::file_usage(roll) {
                st.execute(params![
                    h.file_id,
                    customer,
                    minute,
                    pop,
                    u[0],
                    u[1],
                    u[2],
                    u[3],
                    to_i64(received_at.as_millis()),
                ])?;
            }
        }
        super::stream::write(&file.streams, &mut |sql, p| {
            tx.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(bind(p).iter()))?;
            Ok(())
        })?;
        super::ops::write(&file.ops, &mut |sql, p| {
            tx.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(bind(p).iter()))?;
            Ok(())
        })?;
        super::quality::write(&file.quality, &mut |sql, p| {
            tx.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(bind(p).iter()))?;
            Ok(())
        })?;
        tx.commit()?;
        Ok(Ingested::Inserted {
            rows: u64::try_from(rows).unwrap_or(0),
        })
    }

    fn prune_raw(&mut self, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        for table in ["raw_http", "raw_dns", "raw_probe"] {
            n += tx.execute(&format!("DELETE FROM {table} WHERE ts < ?1"), [t])?;
        }
        n += tx.execute(super::stream::PRUNE_CLIENTS, [t])?;
        tx.commit()?;
        Ok(n as u64)
    }

    fn prune_rollups(&mut self, grain: Grain, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        for table in super::ROLLUP_TABLES {
            let sql = format!("DELETE FROM {table}{} WHERE minute < ?1", grain.suffix());
            n += tx.execute(&sql, [t])?;
        }
        tx.commit()?;
        Ok(n as u64)
    }

    fn select(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Cell>>> {
        let mut st = self.conn.prepare_cached(sql)?;
        let n = st.column_count();
        let bound = bind(params);
        let mut rows = st.query(rusqlite::params_from_iter(bound.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(cells(row, n)?);
        }
        Ok(out)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
