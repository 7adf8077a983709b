//! The PostgreSQL store: same schema and queries as SQLite; raw rows arrive by binary
//! `COPY`, rollups by one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT` per table, all
//! in the file's one transaction.

use super::{Cell, Error, Grain, Ingested, Param, PreparedFile, Result, Rollups, Store, to_i64};
use crate::pg::{Pool, Session as _};
use tokio_postgres::types::{IsNull, ToSql, Type, WrongType};
use udn_core::Timestamp;
use udn_core::log::LogRecord;

pub use crate::pg::connection_lost;

/// The PostgreSQL store: a pool of one connection ([`crate::pg`]; the store is used by
/// one caller at a time), replaced by the pool when the server closes it.
#[derive(Debug)]
pub struct PgStore {
    pool: Pool,
    /// The raw tables' day partitions known to exist.
    partitions: super::partitions::Known,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies the migrations.
    pub fn connect(url: &str) -> Result<PgStore> {
        let store = PgStore {
            pool: Pool::new(url, 1, None)?,
            partitions: Default::default(),
        };
        // Several collectors may start at once: `migrate` serializes them on an advisory
        // lock.
        crate::migrate::postgres(&mut store.client()?, &super::SCHEMA)?;
        Ok(store)
    }

    /// The connection: the pool's, or a new one when the server closed it (a restart,
    /// the network, a terminated backend). A call that meets the loss before the pool
    /// sees it fails with 503; the next one works.
    fn client(&self) -> Result<crate::pg::Client> {
        Ok(self.pool.get()?)
    }
}

fn ip(a: std::net::IpAddr) -> String {
    a.to_string()
}

/// Adds `roll` to the rollup tables of suffix `sfx` (see [`super::Grain::suffix`]): one
/// `INSERT ... SELECT FROM UNNEST ... ON CONFLICT` per table.
fn write_rollups(tx: &crate::pg::Transaction<'_>, roll: &Rollups, sfx: &str) -> Result<()> {
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
pub(crate) fn cells(row: &tokio_postgres::Row, sql: &str) -> Result<Vec<Cell>> {
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

/// A store parameter binds as the type PostgreSQL inferred for it: an integer as
/// `BIGINT`, `INTEGER`, `SMALLINT` (range-checked) or a flag (`BOOLEAN`, non-zero is
/// true), text as text, NULL as NULL of any type. So a statement's parameters are bound
/// by reference, with no value copied or boxed.
impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        fn checked<T: ToSql>(
            v: T,
            ty: &Type,
            out: &mut bytes::BytesMut,
        ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            if !T::accepts(ty) {
                return Err(Box::new(WrongType::new::<T>(ty.clone())));
            }
            v.to_sql(ty, out)
        }
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(v) => checked(v, ty, out),
            Param::Int(v) if *ty == Type::INT4 => checked(i32::try_from(v)?, ty, out),
            Param::Int(v) if *ty == Type::INT2 => checked(i16::try_from(v)?, ty, out),
            Param::Int(v) if *ty == Type::BOOL => checked(v != 0, ty, out),
            Param::Int(v) => checked(v, ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // Checked per variant in `to_sql`.
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// `params` as the statement parameters `tokio-postgres` takes (borrowed).
pub(crate) fn refs<'a>(params: &'a [Param<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Store for PgStore {
    fn ingest(&mut self, file: &PreparedFile, received_at: Timestamp) -> Result<Ingested> {
        let h = &file.header;
        let rows = file.records.len() as i64;
        let needed = super::partitions::days_needed(file, received_at);
        let mut c = self.client()?;
        if !needed.is_empty() {
            super::partitions::ensure(&mut c, &mut self.partitions, &needed, received_at)?;
        }
        let tx = c.transaction()?;
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
            let mut w = tx.copy_in_binary(
                "COPY raw_http (ts, customer, host, path, method, status, bytes, fill_bytes, \
                 outcome, duration_us, client, pop) FROM STDIN BINARY",
                &types,
            )?;
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
            let mut w = tx.copy_in_binary(
                "COPY raw_dns (ts, hostname, qtype, client, ecs, addrs, reason, pop, customer, \
                 server) FROM STDIN BINARY",
                &types,
            )?;
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
            let mut w = tx.copy_in_binary(
                "COPY raw_probe (ts, pop, kind, target, method, ok, value, detail) \
                 FROM STDIN BINARY",
                &types,
            )?;
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
            write_rollups(&tx, roll, grain.suffix())?;
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
            tx.execute(sql, &refs(p))?;
            Ok(())
        })?;
        super::ops::write(&file.ops, &mut |sql, p| {
            tx.execute(sql, &refs(p))?;
            Ok(())
        })?;
        super::quality::write(&file.quality, &mut |sql, p| {
            tx.execute(sql, &refs(p))?;
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
        let mut c = self.client()?;
        for table in super::partitions::RAW_TABLES {
            n += super::partitions::drop_before(&mut c, table, t)?;
        }
        let tx = c.transaction()?;
        for table in super::partitions::RAW_TABLES {
            n += tx.execute(&format!("DELETE FROM {table} WHERE ts < $1"), &[&t])?;
        }
        n += tx.execute(super::stream::PRUNE_CLIENTS, &[&t])?;
        tx.commit()?;
        Ok(n)
    }

    fn prune_rollups(&mut self, grain: Grain, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        let mut c = self.client()?;
        let tx = c.transaction()?;
        let mut n = 0;
        for table in super::ROLLUP_TABLES {
            let sql = format!("DELETE FROM {table}{} WHERE minute < $1", grain.suffix());
            n += tx.execute(&sql, &[&t])?;
        }
        tx.commit()?;
        Ok(n)
    }

    fn select(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Cell>>> {
        let rows = self.client()?.query(sql, &refs(params))?;
        rows.iter().map(|row| cells(row, sql)).collect()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
