//! The PostgreSQL store: same schema and queries as SQLite; raw rows arrive by binary
//! `COPY`, rollups by one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT` per table, all
//! in the file's one transaction.

use super::{Cell, Error, Grain, Ingested, Param, PreparedFile, Result, Rollups, Store, to_i64};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};
use udn_core::Timestamp;
use udn_core::log::LogRecord;

/// The PostgreSQL store.
pub struct PgStore {
    /// `None` only while being dropped or after a failed reconnect.
    client: Option<Client>,
    url: String,
    /// The raw tables' day partitions known to exist.
    partitions: super::partitions::Known,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            crate::drop_off_runtime(c);
        }
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies the migrations.
    pub fn connect(url: &str) -> Result<PgStore> {
        let client = Client::connect(url, NoTls)?;
        let mut store = PgStore {
            client: Some(client),
            url: url.to_owned(),
            partitions: Default::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The connection, re-opened if it was lost (server restart, network, terminated
    /// backend): the call that noticed the loss failed with 503, the next one works.
    fn client(&mut self) -> Result<&mut Client> {
        if let Some(c) = &self.client
            && c.is_closed()
        {
            tracing::warn!("postgres connection lost; reconnecting");
            if let Some(old) = self.client.take() {
                crate::drop_off_runtime(old);
            }
        }
        let client = match self.client.take() {
            Some(c) => c,
            None => Client::connect(&self.url, NoTls)?,
        };
        Ok(self.client.insert(client))
    }

    fn migrate(&mut self) -> Result<()> {
        // Several collectors may start at once: `migrate` serializes them on an advisory
        // lock.
        crate::migrate::postgres(self.client()?, &super::SCHEMA)?;
        Ok(())
    }
}

/// Whether `e` says the connection is gone (closed, or the server ending the session:
/// SQLSTATE class 57P, e.g. a restart or `pg_terminate_backend`) rather than that a
/// statement failed, so a new connection may succeed. Shared by every PostgreSQL store.
pub fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P"))
}

fn ip(a: std::net::IpAddr) -> String {
    a.to_string()
}

/// Adds `roll` to the rollup tables of suffix `sfx` (see [`super::Grain::suffix`]): one
/// `INSERT ... SELECT FROM UNNEST ... ON CONFLICT` per table.
fn write_rollups(tx: &mut postgres::Transaction<'_>, roll: &Rollups, sfx: &str) -> Result<()> {
    if !roll.http.is_empty() {
        let mut cols: Vec<Vec<i64>> = vec![Vec::new(); 15];
        let (mut cust, mut host, mut pop) = (Vec::new(), Vec::new(), Vec::new());
        for (k, a) in &roll.http {
            cust.push(k.customer.as_str());
            host.push(k.host.as_str());
            pop.push(k.pop.as_str());
            let vals = [
                k.minute,
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
            ];
            for (c, v) in cols.iter_mut().zip(vals) {
                c.push(v);
            }
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&cols[0], &cust, &host, &pop];
        for c in &cols[1..] {
            params.push(c);
        }
        tx.execute(
            &format!("INSERT INTO rollup_http{sfx} (minute, customer, host, pop, requests, bytes, \
             fill_bytes, s1xx, s2xx, s3xx, s4xx, s5xx, hits, misses, stale, revalidated, \
             bypass, duration_us) SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], \
             $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::BIGINT[], \
             $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], \
             $13::BIGINT[], $14::BIGINT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], \
             $18::BIGINT[]) ON CONFLICT (minute, customer, host, pop) DO UPDATE SET \
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
             duration_us = rollup_http{sfx}.duration_us + excluded.duration_us"),
            &params,
        )?;
    }
    if !roll.dns.is_empty() {
        let (mut m, mut c, mut h, mut p, mut r, mut q) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (k, n) in &roll.dns {
            m.push(k.minute);
            c.push(k.customer.as_str());
            h.push(k.hostname.as_str());
            p.push(k.pop.as_str());
            r.push(k.reason.as_str());
            q.push(*n);
        }
        tx.execute(
            &format!(
                "INSERT INTO rollup_dns{sfx} (minute, customer, hostname, pop, reason, queries) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::TEXT[], $6::BIGINT[]) ON CONFLICT (minute, customer, hostname, pop, reason) \
             DO UPDATE SET queries = rollup_dns{sfx}.queries + excluded.queries"
            ),
            &[&m, &c, &h, &p, &r, &q],
        )?;
    }
    if !roll.answers.is_empty() {
        let (mut m, mut h, mut a, mut p, mut n) = (vec![], vec![], vec![], vec![], vec![]);
        for (k, v) in &roll.answers {
            m.push(k.minute);
            h.push(k.hostname.as_str());
            a.push(k.address.as_str());
            p.push(k.pop.as_str());
            n.push(*v);
        }
        tx.execute(
            &format!(
                "INSERT INTO rollup_dns_answer{sfx} (minute, hostname, address, pop, answers) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::BIGINT[]) ON CONFLICT (minute, hostname, address, pop) \
             DO UPDATE SET answers = rollup_dns_answer{sfx}.answers + excluded.answers"
            ),
            &[&m, &h, &a, &p, &n],
        )?;
    }
    if !roll.probe.is_empty() {
        let (mut m, mut p, mut k_, mut me, mut s, mut ok, mut v) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (k, a) in &roll.probe {
            m.push(k.minute);
            p.push(k.pop.as_str());
            k_.push(k.kind.as_str());
            me.push(k.method.as_str());
            s.push(a.samples);
            ok.push(a.ok);
            v.push(a.value_sum);
        }
        tx.execute(
            &format!(
                "INSERT INTO rollup_probe{sfx} (minute, pop, kind, method, samples, ok, value_sum) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::BIGINT[], $6::BIGINT[], $7::DOUBLE PRECISION[]) \
             ON CONFLICT (minute, pop, kind, method) DO UPDATE SET \
             samples = rollup_probe{sfx}.samples + excluded.samples, \
             ok = rollup_probe{sfx}.ok + excluded.ok, \
             value_sum = rollup_probe{sfx}.value_sum + excluded.value_sum"
            ),
            &[&m, &p, &k_, &me, &s, &ok, &v],
        )?;
    }
    Ok(())
}

/// The store's parameters as PostgreSQL values.
/// Every column of `row` (the result of `sql`) as a [`Cell`]: integers of any width and
/// booleans (as 0 or 1) as [`Cell::Int`], `DOUBLE PRECISION` as [`Cell::Float`], text.
pub(crate) fn cells(row: &postgres::Row, sql: &str) -> Result<Vec<Cell>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let cell = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Cell::Int)
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Cell::Int(i64::from(v)))
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Cell::Int(i64::from(v)))
        } else if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Cell::Int(i64::from(v)))
        } else if *t == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Cell::Float)
        } else if *t == Type::TEXT || *t == Type::VARCHAR {
            row.try_get::<_, Option<String>>(i)?.map(Cell::Text)
        } else {
            return Err(Error::ColumnType {
                index: i,
                query: sql.chars().take(60).collect(),
            });
        };
        out.push(cell.unwrap_or(Cell::Null));
    }
    Ok(out)
}

/// SQL NULL for a parameter of any type (`Option<T>` would be checked against `T`).
#[derive(Debug)]
pub(crate) struct AnyNull;

impl ToSql for AnyNull {
    fn to_sql(
        &self,
        _ty: &Type,
        _out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        Ok(postgres::types::IsNull::Yes)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn bind(params: &[Param<'_>]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync> {
            match p {
                Param::Int(i) => Box::new(*i),
                Param::Text(s) => Box::new(s.to_string()),
                Param::Null => Box::new(AnyNull),
            }
        })
        .collect()
}

impl Store for PgStore {
    fn ingest(&mut self, file: &PreparedFile, received_at: Timestamp) -> Result<Ingested> {
        let h = &file.header;
        let rows = file.records.len() as i64;
        let needed = super::partitions::days_needed(file, received_at);
        if !needed.is_empty() {
            let mut known = std::mem::take(&mut self.partitions);
            let made = super::partitions::ensure(self.client()?, &mut known, &needed, received_at);
            self.partitions = known;
            made?;
        }
        let mut tx = self.client()?.transaction()?;
        // The ledger row first: a concurrent insert of the same file blocks here on the
        // primary key until the other transaction ends, then sees it.
        let fresh = tx.execute(
            "INSERT INTO log_files (file_id, checksum, role, instance, opened_at, rows, \
             received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (file_id) DO NOTHING",
            &[
                &h.file_id,
                &file.checksum,
                &h.role.as_str(),
                &h.instance,
                &to_i64(h.opened_at.as_millis()),
                &rows,
                &to_i64(received_at.as_millis()),
            ],
        )?;
        if fresh == 0 {
            let row = tx.query_one(
                "SELECT checksum, rows FROM log_files WHERE file_id = $1",
                &[&h.file_id],
            )?;
            let checksum: String = row.get(0);
            let stored: i64 = row.get(1);
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

        let (mut n_http, mut n_dns, mut n_probe) = (0, 0, 0);
        for rec in &file.records {
            match rec {
                LogRecord::Http(_) => n_http += 1,
                LogRecord::Dns(_) => n_dns += 1,
                LogRecord::Probe(_) => n_probe += 1,
                // Operational records are kept as rollups only (`ops::write`).
                LogRecord::Ops(_) => {}
            }
        }
        if n_http > 0 {
            let sink = tx.copy_in(
                "COPY raw_http (ts, customer, host, path, method, status, bytes, fill_bytes, \
                 outcome, duration_us, client, pop) FROM STDIN BINARY",
            )?;
            let types = [
                Type::INT8,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::TEXT,
                Type::INT8,
                Type::TEXT,
                Type::TEXT,
            ];
            let mut w = BinaryCopyInWriter::new(sink, &types);
            for rec in &file.records {
                if let LogRecord::Http(r) = rec {
                    w.write(&[
                        &to_i64(r.ts.as_millis()),
                        &r.customer,
                        &r.host,
                        &r.path,
                        &r.method,
                        &i64::from(r.status),
                        &to_i64(r.bytes),
                        &to_i64(r.fill_bytes),
                        &r.outcome,
                        &to_i64(r.duration_us),
                        &ip(r.client),
                        &r.pop,
                    ])?;
                }
            }
            w.finish()?;
        }
        if n_dns > 0 {
            let sink = tx.copy_in(
                "COPY raw_dns (ts, hostname, qtype, client, ecs, addrs, reason, pop, customer, \
                 server) FROM STDIN BINARY",
            )?;
            let types = [
                Type::INT8,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
            ];
            let mut w = BinaryCopyInWriter::new(sink, &types);
            for rec in &file.records {
                if let LogRecord::Dns(r) = rec {
                    w.write(&[
                        &to_i64(r.ts.as_millis()),
                        &r.hostname,
                        &r.qtype,
                        &ip(r.client),
                        &r.ecs.map(|c| c.to_string()),
                        &super::sqlite::join_addrs(&r.addrs),
                        &r.reason,
                        &r.pop,
                        &r.customer,
                        &r.server,
                    ])?;
                }
            }
            w.finish()?;
        }
        if n_probe > 0 {
            let sink = tx.copy_in(
                "COPY raw_probe (ts, pop, kind, target, method, ok, value, detail) \
                 FROM STDIN BINARY",
            )?;
            let types = [
                Type::INT8,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::FLOAT8,
                Type::TEXT,
            ];
            let mut w = BinaryCopyInWriter::new(sink, &types);
            for rec in &file.records {
                if let LogRecord::Probe(r) = rec {
                    w.write(&[
                        &to_i64(r.ts.as_millis()),
                        &r.pop,
                        &r.kind,
                        &r.target,
                        &r.method,
                        &i64::from(r.ok),
                        &r.value,
                        &r.detail,
                    ])?;
                }
            }
            w.finish()?;
        }

        for (grain, roll) in file.rollups_by_grain() {
            write_rollups(&mut tx, roll, grain.suffix())?;
        }
        let roll = &file.rollups;
        let usage = super::file_usage(roll);
        if !usage.is_empty() {
            let (mut c, mut m, mut p, mut q) =
                (vec![], vec![], vec![], [vec![], vec![], vec![], vec![]]);
            for ((customer, minute, pop), u) in &usage {
                c.push(customer.as_str());
                m.push(*minute);
                p.push(pop.as_str());
                for (col, v) in q.iter_mut().zip(u) {
                    col.push(*v);
                }
            }
            let at = to_i64(received_at.as_millis());
            tx.execute(
                "INSERT INTO usage_file (file_id, customer, minute, pop, requests, bytes, \
                 fill_bytes, dns_queries, received_at) SELECT $1::TEXT, u.*, $9::BIGINT FROM \
                 UNNEST($2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], \
                 $7::BIGINT[], $8::BIGINT[]) AS u",
                &[&h.file_id, &c, &m, &p, &q[0], &q[1], &q[2], &q[3], &at],
            )?;
        }
        super::stream::write(&file.streams, &mut |sql, p| {
            let owned = bind(p);
            let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
            tx.execute(sql, &refs)?;
            Ok(())
        })?;
        super::ops::write(&file.ops, &mut |sql, p| {
            let owned = bind(p);
            let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
            tx.execute(sql, &refs)?;
            Ok(())
        })?;
        super::quality::write(&file.quality, &mut |sql, p| {
            let owned = bind(p);
            let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
            tx.execute(sql, &refs)?;
            Ok(())
        })?;
        tx.commit()?;
        Ok(Ingested::Inserted {
            rows: u64::try_from(rows).unwrap_or(0),
        })
    }

    fn prune_raw(&mut self, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        // Whole days first (each a `DROP TABLE`), then the rest of the cut-off's day and
        // the default partition's older rows.
        let mut n = 0;
        self.partitions.clear();
        for table in super::partitions::RAW_TABLES {
            n += super::partitions::drop_before(self.client()?, table, t)?;
        }
        let mut tx = self.client()?.transaction()?;
        for table in super::partitions::RAW_TABLES {
            n += tx.execute(&format!("DELETE FROM {table} WHERE ts < $1"), &[&t])?;
        }
        n += tx.execute(super::stream::PRUNE_CLIENTS, &[&t])?;
        tx.commit()?;
        Ok(n)
    }

    fn prune_rollups(&mut self, grain: Grain, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        let mut tx = self.client()?.transaction()?;
        let mut n = 0;
        for table in super::ROLLUP_TABLES {
            let sql = format!("DELETE FROM {table}{} WHERE minute < $1", grain.suffix());
            n += tx.execute(&sql, &[&t])?;
        }
        tx.commit()?;
        Ok(n)
    }

    fn select(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Cell>>> {
        let owned = bind(params);
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
        let rows = self.client()?.query(sql, &refs)?;
        rows.iter().map(|row| cells(row, sql)).collect()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
