//! The control plane's store on PostgreSQL (through [`crate::pg`], synchronous like the
//! [`Backend`] trait): the same `cp_*` tables as [`super::SqliteBackend`] in PostgreSQL
//! types, under the same queries ([`super::sql`]), so a control plane at
//! scale keeps its users, sessions, configuration versions and purges in the same
//! database as its log store (`udn control --postgres URL`). See [`SCHEMA`].
//!
//! A pool of connections ([`PgBackend::connect_with`]; at most 4 by default), each with
//! its prepared statements cached, so a call is one round trip and concurrent API
//! requests do not queue behind one connection. A lost connection (server restart,
//! terminated backend) is the pool's business: it hands out open connections only, and
//! drops one a call found lost. A read that meets a lost connection is run once more on
//! another; a write fails (500) and the next call works.
//!
//! Every method blocks: call them from a blocking thread (`spawn_blocking`) rather than
//! from an async task. The store may be dropped anywhere.

use super::backend::*;
use super::sql::{Conn, Db, Rows, SqlBackend, TxLock};
use crate::logs::Param;
use crate::logs::postgres::{cells, connection_lost};
use crate::migrate::Step;
use crate::pg::{Pool, Session};
use tokio_postgres::types::ToSql;

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

/// [`Db`] on a pool of PostgreSQL connections ([`crate::pg::Pool`]), each with its
/// prepared statements.
#[derive(Debug)]
pub struct PgDb {
    pool: Pool,
}

/// What a parameter the caller did not pass binds as.
static NULL: Param<'static> = Param::Null;

/// Runs `sql` on `s` with `args` (bound by reference, each as the type PostgreSQL
/// inferred for it: see [`Param`]'s `ToSql`), through the connection's statement cache;
/// `rows` says whether it returns rows (then they come back as cells) or only a count.
fn run(s: &impl Session, sql: &str, args: &[Param<'_>], rows: bool) -> BackendResult<(Rows, u64)> {
    let st = s.prepare_cached(sql)?;
    let params: Vec<&(dyn ToSql + Sync)> = (0..st.params().len())
        .map(|i| args.get(i).unwrap_or(&NULL) as &(dyn ToSql + Sync))
        .collect();
    if rows {
        let out = s.query(&st, &params)?;
        let cells = out
            .iter()
            .map(|r| cells(r, sql))
            .collect::<Result<Rows, _>>()?;
        Ok((cells, 0))
    } else {
        Ok((Vec::new(), s.execute(&st, &params)?))
    }
}

/// A connection or a transaction.
struct PgSession<'a, S: Session>(&'a S);

impl<S: Session> Conn for PgSession<'_, S> {
    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        Ok(run(self.0, sql, args, true)?.0)
    }

    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<u64> {
        Ok(run(self.0, sql, args, false)?.1)
    }
}

impl PgDb {
    /// A connection from the pool (an open one, or a new one; waiting when all are in
    /// use).
    fn conn(&self) -> BackendResult<crate::pg::Client> {
        Ok(self.pool.get()?)
    }
}

impl Db for PgDb {
    fn with<T>(&self, f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>) -> BackendResult<T> {
        f(&mut PgSession(&self.conn()?))
    }

    fn transaction<T>(
        &self,
        lock: TxLock,
        f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        if let Some(key) = lock.key() {
            // Serializes these transactions across control planes sharing the database.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
        }
        let out = f(&mut PgSession(&tx))?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs a read-only statement. When the connection turns out to be lost (a
    /// PostgreSQL restart, a terminated backend) it runs it once more on another one
    /// (the pool drops the lost one): safe, since a read changes nothing. Writes are not
    /// retried (one may have been applied before the connection broke).
    fn read(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        let first = run(&self.conn()?, sql, args, true);
        match first {
            Err(BackendError::Postgres(e)) if connection_lost(&e) => {
                let e = BackendError::Postgres(e);
                tracing::warn!("control plane: connection lost ({e}); running the read again");
                Ok(run(&self.conn()?, sql, args, true)?.0)
            }
            r => Ok(r?.0),
        }
    }
}

impl SqlBackend<PgDb> {
    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of at most
    /// [`DEFAULT_POOL`] connections and creates the `cp_*` tables if they are missing.
    /// Blocks.
    pub fn connect(url: &str) -> BackendResult<PgBackend> {
        Self::connect_with(url, DEFAULT_POOL)
    }

    /// Like [`PgBackend::connect`] with at most `pool` connections (at least 1).
    pub fn connect_with(url: &str, pool: usize) -> BackendResult<PgBackend> {
        let pool = Pool::new(url, pool, None)?;
        crate::migrate::postgres(&mut pool.get()?, &super::sqlite::CP_SCHEMA)?;
        Ok(SqlBackend::new(PgDb { pool }))
    }
}
