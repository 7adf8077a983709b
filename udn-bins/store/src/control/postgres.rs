//! The control plane's store on PostgreSQL (the synchronous `postgres` crate, like the
//! [`Backend`] trait): the same `cp_*` tables as [`super::SqliteBackend`] in PostgreSQL
//! types, under the same queries ([`super::sql`]), so a control plane at
//! scale keeps its users, sessions, configuration versions and purges in the same
//! database as its log store (`udn control --postgres URL`). See [`SCHEMA`].
//!
//! A small pool of connections ([`PgBackend::connect_with`]; 4 by default), each with
//! its prepared statements cached, so a call is one round trip and concurrent API
//! requests do not queue behind one connection. A lost connection (server restart,
//! terminated backend) is re-opened: a read that notices it is run again on the new
//! connection; a write fails (500) and the next call gets a fresh connection.
//!
//! Every method blocks: call them from a blocking thread (`spawn_blocking`), never from
//! an async task (the `postgres` crate runs its own runtime and refuses to nest).

use super::backend::*;
use super::sql::{Conn, Db, Rows, SqlBackend, TxLock};
use crate::logs::Param;
use crate::logs::postgres::{AnyNull, cells, connection_lost};
use crate::migrate::Step;
use crate::pool::Pool;
use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};
use std::collections::HashMap;
use std::sync::MutexGuard;

/// The control plane's tables in PostgreSQL: the same tables, columns and meanings as
/// [`super::sqlite::SCHEMA`] (times are milliseconds since the epoch in `BIGINT`).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cp_users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    customer TEXT
);
CREATE TABLE IF NOT EXISTS cp_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS cp_sessions_expiry ON cp_sessions(expires_at);
CREATE TABLE IF NOT EXISTS cp_api_tokens (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_used BIGINT
);
CREATE INDEX IF NOT EXISTS cp_api_tokens_user ON cp_api_tokens(user_id);
CREATE TABLE IF NOT EXISTS cp_config_versions (
    version BIGINT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    author TEXT NOT NULL,
    config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_purges (
    seq BIGSERIAL PRIMARY KEY,
    customer TEXT NOT NULL,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_purge_status (
    seq BIGINT NOT NULL REFERENCES cp_purges(seq),
    edge TEXT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT FALSE,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at BIGINT,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (seq, edge)
);
ALTER TABLE cp_purge_status ADD COLUMN IF NOT EXISTS state TEXT NOT NULL DEFAULT 'pending';
UPDATE cp_purge_status SET state = 'applied' WHERE applied AND state = 'pending';
CREATE INDEX IF NOT EXISTS cp_purge_status_queue ON cp_purge_status(edge, state, seq);
CREATE TABLE IF NOT EXISTS cp_prefills (
    seq BIGSERIAL PRIMARY KEY,
    customer TEXT NOT NULL,
    urls_json TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_prefill_status (
    seq BIGINT NOT NULL REFERENCES cp_prefills(seq),
    edge TEXT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT FALSE,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at BIGINT,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (seq, edge)
);
ALTER TABLE cp_prefill_status ADD COLUMN IF NOT EXISTS state TEXT NOT NULL DEFAULT 'pending';
UPDATE cp_prefill_status SET state = 'applied' WHERE applied AND state = 'pending';
CREATE INDEX IF NOT EXISTS cp_prefill_status_queue ON cp_prefill_status(edge, state, seq);
CREATE TABLE IF NOT EXISTS cp_cdn_traffic_minute (
    customer TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pop TEXT NOT NULL,
    minute BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    hits BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS cp_cdn_traffic_by_time ON cp_cdn_traffic_minute(customer, minute);
CREATE TABLE IF NOT EXISTS cp_gtm_answers_minute (
    customer TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pop TEXT NOT NULL,
    address TEXT NOT NULL,
    minute BIGINT NOT NULL,
    answers BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS cp_gtm_answers_by_time ON cp_gtm_answers_minute(customer, minute);
CREATE TABLE IF NOT EXISTS cp_invoices (
    id BIGSERIAL PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    customer TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    total TEXT NOT NULL,
    currency TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    html TEXT NOT NULL
);
"#;

/// The control plane's PostgreSQL migrations (append-only; see [`crate::migrate`]).
pub const MIGRATIONS: &[Step] = &[
    Step {
        version: 1,
        name: "initial",
        sql: SCHEMA,
    },
    Step {
        version: 2,
        name: "live_events",
        sql: LIVE_EVENTS,
    },
];

/// Step 2: live events and their per-edge prefill status (as on SQLite,
/// [`super::sqlite::MIGRATIONS`]).
const LIVE_EVENTS: &str = r#"
CREATE TABLE cp_live_events (
    id BIGSERIAL PRIMARY KEY,
    customer TEXT NOT NULL,
    hostname TEXT NOT NULL,
    playlist_url TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT,
    max_segments INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX cp_live_events_customer ON cp_live_events(customer, starts_at);
CREATE TABLE cp_live_event_status (
    seq BIGINT NOT NULL REFERENCES cp_live_events(id) ON DELETE CASCADE,
    edge TEXT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT FALSE,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at BIGINT,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (seq, edge)
);
CREATE INDEX cp_live_event_status_queue ON cp_live_event_status(edge, state, seq);
"#;

/// Connections in the pool unless [`PgBackend::connect_with`] says otherwise.
pub const DEFAULT_POOL: usize = 4;

/// The control plane's store in a PostgreSQL database: [`SqlBackend`] on [`PgDb`].
pub type PgBackend = SqlBackend<PgDb>;

/// [`Db`] on a small pool of PostgreSQL connections, each with its prepared statements.
pub struct PgDb {
    pool: Pool<PgConn>,
    url: String,
}

/// One pooled connection and its prepared statements (by SQL text).
struct PgConn {
    client: Client,
    cache: HashMap<String, Statement>,
}

/// The statement's parameters from `args`, each converted to the type PostgreSQL
/// inferred for it (an `INTEGER` column takes an `i32`, a flag a `bool`).
fn pg_args(st: &Statement, args: &[Param<'_>]) -> BackendResult<Vec<Box<dyn ToSql + Sync>>> {
    st.params()
        .iter()
        .enumerate()
        .map(|(i, ty)| -> BackendResult<Box<dyn ToSql + Sync>> {
            let bad = || BackendError::Column {
                index: i,
                query: format!("parameter ${} ({ty})", i + 1),
            };
            Ok(match args.get(i).copied().unwrap_or(Param::Null) {
                Param::Null => Box::new(AnyNull),
                Param::Text(v) => Box::new(v.to_owned()),
                Param::Int(v) if *ty == Type::INT4 => {
                    Box::new(i32::try_from(v).map_err(|_| bad())?)
                }
                Param::Int(v) if *ty == Type::INT2 => {
                    Box::new(i16::try_from(v).map_err(|_| bad())?)
                }
                Param::Int(v) if *ty == Type::BOOL => Box::new(v != 0),
                Param::Int(v) => Box::new(v),
            })
        })
        .collect()
}

/// Runs `sql` on `client` with `args`, through the statement cache; `rows` says whether
/// it returns rows (then they come back as cells) or only a count.
fn run(
    client: &mut impl GenericClient,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
    args: &[Param<'_>],
    rows: bool,
) -> BackendResult<(Rows, u64)> {
    let st = match cache.get(sql) {
        Some(st) => st.clone(),
        None => {
            let st = client.prepare(sql)?;
            cache.insert(sql.to_owned(), st.clone());
            st
        }
    };
    let owned = pg_args(&st, args)?;
    let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
    if rows {
        let out = client.query(&st, &refs)?;
        let cells = out
            .iter()
            .map(|r| cells(r, sql))
            .collect::<Result<Rows, _>>()?;
        Ok((cells, 0))
    } else {
        Ok((Vec::new(), client.execute(&st, &refs)?))
    }
}

/// A connection or a transaction with the connection's statement cache beside it.
struct PgSession<'a, C: GenericClient> {
    client: &'a mut C,
    cache: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Conn for PgSession<'_, C> {
    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        Ok(run(self.client, self.cache, sql, args, true)?.0)
    }

    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<u64> {
        Ok(run(self.client, self.cache, sql, args, false)?.1)
    }
}

impl PgConn {
    fn open(url: &str) -> Result<PgConn, postgres::Error> {
        Ok(PgConn {
            client: Client::connect(url, NoTls)?,
            cache: HashMap::new(),
        })
    }
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.write_str("PgDb")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // `udn control` shutting down drops its backend in async code.
        crate::drop_off_runtime(self.pool.take());
    }
}

impl PgDb {
    /// A free pooled connection (else the next one in turn, waiting for it), re-opened
    /// first if it was lost.
    fn conn(&self) -> BackendResult<MutexGuard<'_, PgConn>> {
        // Never empty: `connect_with` opens at least one connection.
        let mut c = self.pool.get().ok_or(BackendError::Poisoned)?;
        if c.client.is_closed() {
            tracing::warn!("control plane: postgres connection lost; reconnecting");
            *c = PgConn::open(&self.url)?;
        }
        Ok(c)
    }
}

impl Db for PgDb {
    fn with<T>(&self, f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>) -> BackendResult<T> {
        let mut c = self.conn()?;
        let PgConn { client, cache } = &mut *c;
        f(&mut PgSession { client, cache })
    }

    fn transaction<T>(
        &self,
        lock: TxLock,
        f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let mut c = self.conn()?;
        let PgConn { client, cache } = &mut *c;
        let mut tx = client.transaction()?;
        if let Some(key) = lock.key() {
            // Serializes these transactions across control planes sharing the database.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
        }
        let out = f(&mut PgSession {
            client: &mut tx,
            cache,
        })?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs a read-only statement. When the connection turns out to be lost (a
    /// PostgreSQL restart, a terminated backend) it reconnects and runs it once more:
    /// safe, since a read changes nothing. Writes are not retried (one may have been
    /// applied before the connection broke).
    fn read(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        let mut c = self.conn()?;
        let first = {
            let PgConn { client, cache } = &mut *c;
            run(client, cache, sql, args, true)
        };
        match first {
            Err(BackendError::Postgres(e)) if connection_lost(&e) => {
                let e = BackendError::Postgres(e);
                tracing::warn!("control plane: connection lost ({e}); reconnecting");
                *c = PgConn::open(&self.url)?;
                let PgConn { client, cache } = &mut *c;
                Ok(run(client, cache, sql, args, true)?.0)
            }
            r => Ok(r?.0),
        }
    }
}

impl SqlBackend<PgDb> {
    /// Connects to `url` (`postgres://user@host:port/db`) with [`DEFAULT_POOL`]
    /// connections and creates the `cp_*` tables if they are missing. Blocks.
    pub fn connect(url: &str) -> BackendResult<PgBackend> {
        Self::connect_with(url, DEFAULT_POOL)
    }

    /// Like [`PgBackend::connect`] with `pool` connections (at least 1).
    pub fn connect_with(url: &str, pool: usize) -> BackendResult<PgBackend> {
        let mut first = PgConn::open(url)?;
        crate::migrate::postgres(&mut first.client, &super::sqlite::CP_SCHEMA)?;
        let mut conns = vec![first];
        for _ in 1..pool.max(1) {
            conns.push(PgConn::open(url)?);
        }
        Ok(SqlBackend::new(PgDb {
            pool: Pool::new(conns),
            url: url.to_owned(),
        }))
    }
}
