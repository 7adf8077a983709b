//! The control plane's store on SQLite (rusqlite, bundled): its schema ([`SCHEMA`],
//! [`MIGRATIONS`]; the tables are named `cp_*`) and the [`SqliteDb`] adapter under the
//! queries written once in [`super::sql`].

use super::backend::*;
use super::sql::{Conn, Db, Rows, SqlBackend, TxLock};
use crate::logs::Param;
use crate::migrate::{Legacy, Schema, Step};
use crate::pool::Pool;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The control plane's tables: the first step of [`MIGRATIONS`], written to run
/// harmlessly over the tables of a database made before versioned migrations.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cp_users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    customer TEXT
);
CREATE TABLE IF NOT EXISTS cp_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_api_tokens (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_used INTEGER
);
CREATE INDEX IF NOT EXISTS cp_api_tokens_user ON cp_api_tokens(user_id);
CREATE TABLE IF NOT EXISTS cp_config_versions (
    version INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    author TEXT NOT NULL,
    config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_purges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_purge_status (
    seq INTEGER NOT NULL REFERENCES cp_purges(seq),
    edge TEXT NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (seq, edge)
);
CREATE TABLE IF NOT EXISTS cp_prefills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    urls_json TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cp_prefill_status (
    seq INTEGER NOT NULL REFERENCES cp_prefills(seq),
    edge TEXT NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (seq, edge)
);
CREATE TABLE IF NOT EXISTS cp_cdn_traffic_minute (
    customer TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pop TEXT NOT NULL,
    minute INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    hits INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cp_cdn_traffic_by_time ON cp_cdn_traffic_minute(customer, minute);
CREATE TABLE IF NOT EXISTS cp_gtm_answers_minute (
    customer TEXT NOT NULL,
    hostname TEXT NOT NULL,
    pop TEXT NOT NULL,
    address TEXT NOT NULL,
    minute INTEGER NOT NULL,
    answers INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cp_gtm_answers_by_time ON cp_gtm_answers_minute(customer, minute);
CREATE TABLE IF NOT EXISTS cp_invoices (
    id INTEGER PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    customer TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    total TEXT NOT NULL,
    currency TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    html TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cp_purge_status_queue ON cp_purge_status(edge, state, seq);
CREATE INDEX IF NOT EXISTS cp_prefill_status_queue ON cp_prefill_status(edge, state, seq);
"#;

/// The control plane's SQLite migrations (append-only; see [`crate::migrate`]).
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

/// Step 2: live events and their per-edge prefill status (`seq` is the event's id, so
/// the status rows read like the purge and prefill ones).
const LIVE_EVENTS: &str = r#"
CREATE TABLE cp_live_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    hostname TEXT NOT NULL,
    playlist_url TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER,
    max_segments INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX cp_live_events_customer ON cp_live_events(customer, starts_at);
CREATE TABLE cp_live_event_status (
    seq INTEGER NOT NULL REFERENCES cp_live_events(id) ON DELETE CASCADE,
    edge TEXT NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (seq, edge)
);
CREATE INDEX cp_live_event_status_queue ON cp_live_event_status(edge, state, seq);
"#;

/// The control plane's schema on both dialects (PostgreSQL's steps are
/// [`super::postgres::MIGRATIONS`]).
pub const CP_SCHEMA: Schema = Schema {
    store: "control plane",
    history: "udn_cp_schema_history",
    pg_lock: 7010,
    sqlite: MIGRATIONS,
    postgres: super::postgres::MIGRATIONS,
    legacy: Legacy::None,
};

/// The control plane's store on one SQLite file: [`SqlBackend`] on [`SqliteDb`].
pub type SqliteBackend = SqlBackend<SqliteDb>;

/// [`Db`] on an SQLite file in WAL mode: one writer connection under a mutex (SQLite has
/// one writer at a time anyway) and [`READERS`] read-only connections in a [`Pool`], so
/// the session lookup every request makes never waits behind a write. Foreign keys on,
/// 5 s busy timeout; statements prepared once and cached by each connection. An
/// in-memory database has no readers (its reads go to the writer).
pub struct SqliteDb {
    conn: Mutex<Connection>,
    readers: Pool<Connection>,
}

/// Reader connections of a control plane's SQLite file.
pub const READERS: usize = 4;

impl SqliteDb {
    fn lock(&self) -> BackendResult<MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| BackendError::Poisoned)
    }
}

/// Binds `args` to `st` by number: `$1` is `args[0]` wherever it stands (SQLite numbers
/// `$N` parameters in order of first use, so binding by position would mix them up).
fn bind_numbered(st: &mut rusqlite::CachedStatement<'_>, args: &[Param<'_>]) -> BackendResult<()> {
    // Each of the statement's parameters by the number in its name: no lookup by a
    // formatted name, and a `$N` without an argument is an error, not a NULL.
    for at in 1..=st.parameter_count() {
        let name = st.parameter_name(at).unwrap_or("?");
        let arg = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| args.get(n.checked_sub(1)?))
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?;
        st.raw_bind_parameter(at, crate::logs::sqlite::value(arg))?;
    }
    Ok(())
}

/// One connection, or a transaction on it (which derefs to it).
struct SqliteConn<'a>(&'a Connection);

impl Conn for SqliteConn<'_> {
    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        let mut st = self.0.prepare_cached(sql)?;
        bind_numbered(&mut st, args)?;
        let n = st.column_count();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(crate::logs::sqlite::cells(row, n)?);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<u64> {
        let mut st = self.0.prepare_cached(sql)?;
        bind_numbered(&mut st, args)?;
        Ok(st.raw_execute()? as u64)
    }
}

impl Db for SqliteDb {
    fn read(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        match self.readers.get() {
            Some(reader) => SqliteConn(&reader).query(sql, args),
            None => self.with(|c| c.query(sql, args)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>) -> BackendResult<T> {
        let db = self.lock()?;
        f(&mut SqliteConn(&db))
    }

    fn transaction<T>(
        &self,
        _lock: TxLock,
        f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>,
    ) -> BackendResult<T> {
        // IMMEDIATE takes the write lock at the start: another process's writer waits
        // for it (busy timeout) instead of failing half-way through.
        let mut db = self.lock()?;
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&mut SqliteConn(&tx))?;
        tx.commit()?;
        Ok(out)
    }
}

impl SqlBackend<SqliteDb> {
    /// Opens (creating if needed) the database at `path` and its `cp_*` tables.
    pub fn open(path: &Path) -> BackendResult<SqliteBackend> {
        let mut backend = Self::with_connection(Connection::open(path)?)?;
        let readers = (0..READERS)
            .map(|_| {
                let r = Connection::open(path)?;
                r.busy_timeout(std::time::Duration::from_secs(5))?;
                r.pragma_update(None, "query_only", "ON")?;
                Ok(r)
            })
            .collect::<BackendResult<Vec<_>>>()?;
        backend.db.readers = Pool::new(readers);
        Ok(backend)
    }

    /// An in-memory database (for tools and examples).
    pub fn in_memory() -> BackendResult<SqliteBackend> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut conn: Connection) -> BackendResult<SqliteBackend> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate_delivery_state(&conn)?;
        crate::migrate::sqlite(&mut conn, &CP_SCHEMA)?;
        Ok(SqlBackend::new(SqliteDb {
            conn: Mutex::new(conn),
            readers: Pool::default(),
        }))
    }
}

/// Gives status tables of a database made before delivery states (and before versioned
/// migrations) their `state` column: applied rows `applied`, the rest `pending`. SQLite
/// has no `ADD COLUMN IF NOT EXISTS`, so this runs before the migrations, which index the
/// column.
fn migrate_delivery_state(db: &Connection) -> BackendResult<()> {
    for kind in [DeliveryKind::Purge, DeliveryKind::Prefill] {
        let table = kind.table();
        let (exists, has): (bool, bool) = db.query_row(
            &format!(
                "SELECT (SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '{table}'), \
                 (SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = 'state')"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if exists && !has {
            db.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
                 UPDATE {table} SET state = 'applied' WHERE applied = 1;"
            ))?;
        }
    }
    Ok(())
}
