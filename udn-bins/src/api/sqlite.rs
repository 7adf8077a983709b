//! [`Backend`] on SQLite (rusqlite, bundled). The control plane's own tables are named
//! `cp_*`; see [`SCHEMA`].

use super::backend::*;
use crate::migrate::{Legacy, Schema, Step};
use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;
use std::path::Path;
use std::sync::Mutex;
use udn_core::{Config, Timestamp};

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

const LIVE_COLS: &str = "e.id, e.customer, e.hostname, e.playlist_url, e.starts_at, e.ends_at, \
                         e.max_segments, e.created_by, e.created_at";

fn live_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LiveEvent> {
    Ok(LiveEvent {
        id: from_db_int(row.get(0)?),
        customer: row.get(1)?,
        hostname: row.get(2)?,
        playlist_url: row.get(3)?,
        starts_at: ts(row.get(4)?),
        ends_at: row.get::<_, Option<i64>>(5)?.map(ts),
        max_segments: u32::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
        created_by: row.get(7)?,
        created_at: ts(row.get(8)?),
    })
}

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

/// The control plane's store on one SQLite file.
pub struct SqliteBackend {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteBackend")
    }
}

fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(User, String)> {
    let role: String = row.get(2)?;
    Ok((
        User {
            id: row.get(0)?,
            username: row.get(1)?,
            role: Role::parse(&role).unwrap_or(Role::Customer),
            customer: row.get(3)?,
        },
        row.get(4)?,
    ))
}

/// An [`ApiToken`] from columns `at..at + 6` (id, name, scopes, created_at,
/// expires_at, last_used).
fn api_token_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ApiToken> {
    let scopes: String = r.get(at + 2)?;
    let last_used: Option<i64> = r.get(at + 5)?;
    Ok(ApiToken {
        id: r.get(at)?,
        name: r.get(at + 1)?,
        scopes: Scope::split(&scopes),
        created_at: ts(r.get(at + 3)?),
        expires_at: ts(r.get(at + 4)?),
        last_used: last_used.map(ts),
    })
}

fn purge_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Purge> {
    let scope: String = row.get(2)?;
    Ok(Purge {
        seq: from_db_int(row.get(0)?),
        customer: row.get(1)?,
        scope: PurgeScope::parse(&scope).unwrap_or(PurgeScope::Url),
        target: row.get(3)?,
        requested_by: row.get(4)?,
        requested_at: ts(row.get(5)?),
    })
}

fn prefill_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Prefill> {
    let urls: String = row.get(2)?;
    Ok(Prefill {
        seq: from_db_int(row.get(0)?),
        customer: row.get(1)?,
        urls: serde_json::from_str(&urls).unwrap_or_default(),
        requested_by: row.get(3)?,
        requested_at: ts(row.get(4)?),
    })
}

/// Per-edge status rows of `table` (`cp_purge_status` or `cp_prefill_status`).
fn edge_status(db: &Connection, table: &str, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
    let mut st = db.prepare_cached(&format!(
        "SELECT edge, applied, attempts, last_error, applied_at, state FROM {table}
         WHERE seq = ?1 ORDER BY edge"
    ))?;
    let rows = st.query_map(params![db_int(seq)], |r| {
        Ok(PurgeEdgeStatus {
            edge: r.get(0)?,
            state: DeliveryState::parse(&r.get::<_, String>(5)?),
            applied: r.get::<_, i64>(1)? != 0,
            attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
            last_error: r.get(3)?,
            applied_at: r.get::<_, Option<i64>>(4)?.map(ts),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records a delivery attempt in `table`.
fn record_attempt(
    db: &Connection,
    table: &str,
    seq: u64,
    edge: &str,
    result: Result<(), String>,
    now: Timestamp,
) -> BackendResult<()> {
    let seq = db_int(seq);
    match result {
        Ok(()) => db.execute(
            &format!(
                "UPDATE {table} SET applied = 1, state = 'applied', attempts = attempts + 1,
                 last_error = NULL, applied_at = ?3 WHERE seq = ?1 AND edge = ?2"
            ),
            params![seq, edge, ms(now)],
        )?,
        Err(e) => db.execute(
            &format!(
                "UPDATE {table} SET attempts = attempts + 1, last_error = ?3
                 WHERE seq = ?1 AND edge = ?2 AND state = 'pending'"
            ),
            params![seq, edge, e],
        )?,
    };
    Ok(())
}

const PURGE_COLS: &str = "seq, customer, scope, target, requested_by, requested_at";

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

/// [`Backend::fail_delivery`] on `kind`'s table.
fn fail_delivery(
    db: &Connection,
    kind: DeliveryKind,
    seq: u64,
    edge: &str,
    reason: &str,
) -> BackendResult<()> {
    db.execute(
        &format!(
            "UPDATE {} SET state = 'failed', attempts = attempts + 1, last_error = ?3
             WHERE seq = ?1 AND edge = ?2 AND state = 'pending'",
            kind.table()
        ),
        params![db_int(seq), edge, reason],
    )?;
    Ok(())
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path` and its `cp_*` tables.
    pub fn open(path: &Path) -> BackendResult<SqliteBackend> {
        let conn = Connection::open(path)?;
        Self::with_connection(conn)
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
        Ok(SqliteBackend {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> BackendResult<std::sync::MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| BackendError::Poisoned)
    }

    /// Inserts a purge or prefill row (`insert`) and one pending row per edge in
    /// `status_table`, in one transaction; returns the new sequence number.
    fn create_delivery(
        &self,
        insert: &str,
        params: impl rusqlite::Params,
        status_table: &str,
        edges: &[String],
    ) -> BackendResult<u64> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        tx.execute(insert, params)?;
        let seq = tx.last_insert_rowid();
        {
            let mut st = tx.prepare(&format!(
                "INSERT INTO {status_table} (seq, edge) VALUES (?1, ?2)"
            ))?;
            for e in edges {
                st.execute(params![seq, e])?;
            }
        }
        tx.commit()?;
        Ok(from_db_int(seq))
    }
}

/// The bucket length of a window's grain, as the database's integer.
fn step(w: &Window<'_>) -> i64 {
    w.grain.millis() as i64
}

fn customer_filter(customer: Option<&str>) -> (&'static str, String) {
    match customer {
        Some(c) => ("customer = ?3", c.to_owned()),
        None => ("?3 = ?3", String::new()),
    }
}

impl Backend for SqliteBackend {
    fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        customer: Option<&str>,
    ) -> BackendResult<User> {
        let hash = hash_password(password)?;
        let db = self.db()?;
        db.execute(
            "INSERT INTO cp_users (username, password_hash, role, customer) VALUES (?1, ?2, ?3, ?4)",
            params![username, hash, role.as_str(), customer],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                BackendError::Duplicate(username.to_owned())
            }
            e => e.into(),
        })?;
        Ok(User {
            id: db.last_insert_rowid(),
            username: username.to_owned(),
            role,
            customer: customer.map(str::to_owned),
        })
    }

    fn verify_login(&self, username: &str, password: &str) -> BackendResult<Option<User>> {
        let found = self
            .db()?
            .query_row(
                "SELECT id, username, role, customer, password_hash FROM cp_users WHERE username = ?1",
                params![username],
                user_row,
            )
            .optional()?;
        check_login(found, password)
    }

    fn set_password(&self, user_id: i64, password: &str) -> BackendResult<()> {
        let hash = hash_password(password)?;
        let n = self.db()?.execute(
            "UPDATE cp_users SET password_hash = ?1 WHERE id = ?2",
            params![hash, user_id],
        )?;
        if n == 0 {
            return Err(BackendError::NotFound);
        }
        Ok(())
    }

    fn delete_user(&self, user_id: i64) -> BackendResult<()> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        tx.execute(
            "DELETE FROM cp_sessions WHERE user_id = ?1",
            params![user_id],
        )?;
        tx.execute(
            "DELETE FROM cp_api_tokens WHERE user_id = ?1",
            params![user_id],
        )?;
        let n = tx.execute("DELETE FROM cp_users WHERE id = ?1", params![user_id])?;
        tx.commit()?;
        if n == 0 {
            return Err(BackendError::NotFound);
        }
        Ok(())
    }

    fn users(&self) -> BackendResult<Vec<User>> {
        let db = self.db()?;
        let mut st = db.prepare_cached(
            "SELECT id, username, role, customer, password_hash FROM cp_users ORDER BY username",
        )?;
        let rows = st.query_map([], user_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?.0);
        }
        Ok(out)
    }

    fn create_session(
        &self,
        user_id: i64,
        kind: SessionKind,
        now: Timestamp,
        ttl_secs: u64,
    ) -> BackendResult<NewSession> {
        let token = random_hex(32);
        let csrf = random_hex(24);
        let expires_at = now.plus(std::time::Duration::from_secs(ttl_secs));
        let db = self.db()?;
        db.execute(
            "DELETE FROM cp_sessions WHERE expires_at <= ?1",
            params![ms(now)],
        )?;
        db.execute(
            "INSERT INTO cp_sessions (token_hash, user_id, kind, csrf, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash(&token), user_id, kind.as_str(), csrf, ms(expires_at)],
        )?;
        Ok(NewSession {
            token,
            csrf,
            expires_at,
        })
    }

    fn session(&self, token: &str, now: Timestamp) -> BackendResult<Option<Session>> {
        // Every authenticated request looks its session up: a cached statement.
        let db = self.db()?;
        let row = db
            .prepare_cached(
                "SELECT u.id, u.username, u.role, u.customer, u.password_hash, s.kind, s.csrf, s.expires_at
                 FROM cp_sessions s JOIN cp_users u ON u.id = s.user_id
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2",
            )?
            .query_row(
                params![token_hash(token), ms(now)],
                |row| {
                    let (user, _) = user_row(row)?;
                    let kind: String = row.get(5)?;
                    Ok(Session {
                        user,
                        kind: if kind == "bearer" {
                            SessionKind::Bearer
                        } else {
                            SessionKind::Cookie
                        },
                        csrf: row.get(6)?,
                        expires_at: ts(row.get(7)?),
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    fn delete_session(&self, token: &str) -> BackendResult<()> {
        self.db()?.execute(
            "DELETE FROM cp_sessions WHERE token_hash = ?1",
            params![token_hash(token)],
        )?;
        Ok(())
    }

    fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> BackendResult<()> {
        let keep = keep.map(token_hash).unwrap_or_default();
        self.db()?.execute(
            "DELETE FROM cp_sessions WHERE user_id = ?1 AND token_hash <> ?2",
            params![user_id, keep],
        )?;
        Ok(())
    }

    fn create_api_token(
        &self,
        user_id: i64,
        name: &str,
        scopes: &[Scope],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> BackendResult<(ApiToken, String)> {
        let secret = new_api_secret();
        let db = self.db()?;
        db.execute(
            "DELETE FROM cp_api_tokens WHERE user_id = ?1 AND expires_at <= ?2",
            params![user_id, ms(now)],
        )?;
        db.execute(
            "INSERT INTO cp_api_tokens (user_id, name, token_hash, scopes, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                user_id,
                name,
                token_hash(&secret),
                Scope::join(scopes),
                ms(now),
                ms(expires_at)
            ],
        )?;
        let token = ApiToken {
            id: db.last_insert_rowid(),
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            created_at: now,
            expires_at,
            last_used: None,
        };
        Ok((token, secret))
    }

    fn api_tokens(&self, user_id: i64) -> BackendResult<Vec<ApiToken>> {
        let db = self.db()?;
        let mut st = db.prepare_cached(
            "SELECT id, name, scopes, created_at, expires_at, last_used FROM cp_api_tokens
             WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![user_id], |r| api_token_row(r, 0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    fn delete_api_token(&self, user_id: i64, id: i64) -> BackendResult<bool> {
        let n = self.db()?.execute(
            "DELETE FROM cp_api_tokens WHERE user_id = ?1 AND id = ?2",
            params![user_id, id],
        )?;
        Ok(n > 0)
    }

    fn api_token(&self, secret: &str, now: Timestamp) -> BackendResult<Option<(User, ApiToken)>> {
        let db = self.db()?;
        let found = db
            .prepare_cached(
                "SELECT u.id, u.username, u.role, u.customer, u.password_hash,
                        t.id, t.name, t.scopes, t.created_at, t.expires_at, t.last_used
                 FROM cp_api_tokens t JOIN cp_users u ON u.id = t.user_id
                 WHERE t.token_hash = ?1 AND t.expires_at > ?2",
            )?
            .query_row(params![token_hash(secret), ms(now)], |r| {
                Ok((user_row(r)?.0, api_token_row(r, 5)?))
            })
            .optional()?;
        let Some((user, mut token)) = found else {
            return Ok(None);
        };
        if token
            .last_used
            .is_none_or(|t| ms(now) - ms(t) >= LAST_USED_EVERY_MS)
        {
            db.prepare_cached("UPDATE cp_api_tokens SET last_used = ?1 WHERE id = ?2")?
                .execute(params![ms(now), token.id])?;
            token.last_used = Some(now);
        }
        Ok(Some((user, token)))
    }

    fn current_config(&self) -> BackendResult<ConfigSnapshot> {
        let db = self.db()?;
        let row = db
            .prepare_cached(
                "SELECT version, created_at, author, config_json FROM cp_config_versions
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        match row {
            None => Ok(ConfigSnapshot {
                version: 0,
                config: Config::default(),
                created_at: Timestamp::from_millis(0),
                author: String::new(),
            }),
            Some((v, at, author, json)) => Ok(ConfigSnapshot {
                version: from_db_int(v),
                config: serde_json::from_str(&json)?,
                created_at: ts(at),
                author,
            }),
        }
    }

    fn current_version(&self) -> BackendResult<u64> {
        let db = self.db()?;
        let v: i64 = db
            .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM cp_config_versions")?
            .query_row([], |r| r.get(0))?;
        Ok(from_db_int(v))
    }

    fn config_at(&self, version: u64) -> BackendResult<Option<ConfigSnapshot>> {
        let db = self.db()?;
        let row = db
            .query_row(
                "SELECT created_at, author, config_json FROM cp_config_versions WHERE version = ?1",
                params![db_int(version)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((at, author, json)) => Ok(Some(ConfigSnapshot {
                version,
                config: serde_json::from_str(&json)?,
                created_at: ts(at),
                author,
            })),
        }
    }

    fn commit_config(
        &self,
        base: u64,
        config: &Config,
        author: &str,
        now: Timestamp,
    ) -> BackendResult<u64> {
        match config.compile() {
            Ok(_) => {}
            Err(udn_core::Error::Invalid(errs)) => return Err(BackendError::Invalid(errs)),
            Err(e) => return Err(e.into()),
        }
        let json = serde_json::to_string(config)?;
        let mut db = self.db()?;
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM cp_config_versions",
            [],
            |r| r.get(0),
        )?;
        let current = from_db_int(current);
        if current != base {
            return Err(BackendError::Conflict { base, current });
        }
        let next = current + 1;
        tx.execute(
            "INSERT INTO cp_config_versions (version, created_at, author, config_json) VALUES (?1, ?2, ?3, ?4)",
            params![db_int(next), ms(now), author, json],
        )?;
        tx.commit()?;
        Ok(next)
    }

    fn create_purge(
        &self,
        customer: &str,
        scope: PurgeScope,
        target: &str,
        requested_by: &str,
        edges: &[String],
        now: Timestamp,
    ) -> BackendResult<Purge> {
        let seq = self.create_delivery(
            "INSERT INTO cp_purges (customer, scope, target, requested_by, requested_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![customer, scope.as_str(), target, requested_by, ms(now)],
            "cp_purge_status",
            edges,
        )?;
        Ok(Purge {
            seq,
            customer: customer.to_owned(),
            scope,
            target: target.to_owned(),
            requested_by: requested_by.to_owned(),
            requested_at: now,
        })
    }

    fn purge(&self, seq: u64) -> BackendResult<Option<Purge>> {
        Ok(self
            .db()?
            .query_row(
                &format!("SELECT {PURGE_COLS} FROM cp_purges WHERE seq = ?1"),
                params![db_int(seq)],
                purge_row,
            )
            .optional()?)
    }

    fn purges(
        &self,
        customer: Option<&str>,
        limit: u32,
        before: Option<u64>,
    ) -> BackendResult<Vec<Purge>> {
        let db = self.db()?;
        let (cond, c) = customer_filter(customer);
        let cond = cond.replace("?3", "?1");
        let mut st = db.prepare_cached(&format!(
            "SELECT {PURGE_COLS} FROM cp_purges WHERE {cond} AND (?3 IS NULL OR seq < ?3) \
             ORDER BY seq DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![c, limit, before.map(db_int)], purge_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn purge_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        edge_status(&*self.db()?, "cp_purge_status", seq)
    }

    fn record_purge_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        record_attempt(&*self.db()?, "cp_purge_status", seq, edge, result, now)
    }

    fn pending_purges(&self, edge: &str) -> BackendResult<Vec<Purge>> {
        let db = self.db()?;
        let mut st = db.prepare_cached(
            "SELECT p.seq, p.customer, p.scope, p.target, p.requested_by, p.requested_at
             FROM cp_purge_status s JOIN cp_purges p ON p.seq = s.seq
             WHERE s.edge = ?1 AND s.state = 'pending' ORDER BY p.seq",
        )?;
        let rows = st.query_map(params![edge], purge_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_prefill(
        &self,
        customer: &str,
        urls: &[String],
        requested_by: &str,
        edges: &[String],
        now: Timestamp,
    ) -> BackendResult<Prefill> {
        let json = serde_json::to_string(urls)?;
        let seq = self.create_delivery(
            "INSERT INTO cp_prefills (customer, urls_json, requested_by, requested_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![customer, json, requested_by, ms(now)],
            "cp_prefill_status",
            edges,
        )?;
        Ok(Prefill {
            seq,
            customer: customer.to_owned(),
            urls: urls.to_vec(),
            requested_by: requested_by.to_owned(),
            requested_at: now,
        })
    }

    fn prefill(&self, seq: u64) -> BackendResult<Option<Prefill>> {
        Ok(self
            .db()?
            .query_row(
                "SELECT seq, customer, urls_json, requested_by, requested_at FROM cp_prefills WHERE seq = ?1",
                params![db_int(seq)],
                prefill_row,
            )
            .optional()?)
    }

    fn prefill_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        edge_status(&*self.db()?, "cp_prefill_status", seq)
    }

    fn record_prefill_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        record_attempt(&*self.db()?, "cp_prefill_status", seq, edge, result, now)
    }

    fn pending_prefills(&self, edge: &str) -> BackendResult<Vec<Prefill>> {
        let db = self.db()?;
        let mut st = db.prepare_cached(
            "SELECT p.seq, p.customer, p.urls_json, p.requested_by, p.requested_at
             FROM cp_prefill_status s JOIN cp_prefills p ON p.seq = s.seq
             WHERE s.edge = ?1 AND s.state = 'pending' ORDER BY p.seq",
        )?;
        let rows = st.query_map(params![edge], prefill_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_live_event(
        &self,
        ev: &LiveEvent,
        edges: &[String],
        max_open: u32,
        now: Timestamp,
    ) -> BackendResult<Option<LiveEvent>> {
        let mut db = self.db()?;
        let tx = db.transaction()?;
        let open: i64 = tx.query_row(
            "SELECT COUNT(*) FROM cp_live_events
             WHERE customer = ?1 AND COALESCE(ends_at, starts_at + ?2) > ?3",
            params![ev.customer, db_int(LiveEvent::DEFAULT_DURATION_MS), ms(now)],
            |r| r.get(0),
        )?;
        if open >= i64::from(max_open) {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO cp_live_events (customer, hostname, playlist_url, starts_at, ends_at,
             max_segments, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                ev.customer,
                ev.hostname,
                ev.playlist_url,
                ms(ev.starts_at),
                ev.ends_at.map(ms),
                i64::from(ev.max_segments),
                ev.created_by,
                ms(ev.created_at)
            ],
        )?;
        let id = tx.last_insert_rowid();
        {
            let mut st =
                tx.prepare("INSERT INTO cp_live_event_status (seq, edge) VALUES (?1, ?2)")?;
            for e in edges {
                st.execute(params![id, e])?;
            }
        }
        tx.commit()?;
        Ok(Some(LiveEvent {
            id: from_db_int(id),
            ..ev.clone()
        }))
    }

    fn live_events(&self, customer: Option<&str>, limit: u32) -> BackendResult<Vec<LiveEvent>> {
        let db = self.db()?;
        let mut st = db.prepare_cached(&format!(
            "SELECT {LIVE_COLS} FROM cp_live_events e
             WHERE (?1 IS NULL OR e.customer = ?1) ORDER BY e.starts_at DESC, e.id DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![customer, i64::from(limit)], live_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn live_event_status(&self, id: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        edge_status(&*self.db()?, "cp_live_event_status", id)
    }

    fn due_live_events(
        &self,
        edge: &str,
        now: Timestamp,
        lead_ms: u64,
        max_attempts: u32,
    ) -> BackendResult<Vec<LiveEvent>> {
        let db = self.db()?;
        let mut st = db.prepare_cached(&format!(
            "SELECT {LIVE_COLS} FROM cp_live_event_status s JOIN cp_live_events e ON e.id = s.seq
             WHERE s.edge = ?1 AND s.state = 'pending' AND s.attempts < ?2
               AND e.starts_at <= ?3 + ?4 AND COALESCE(e.ends_at, e.starts_at + ?5) > ?3
             ORDER BY e.starts_at, e.id LIMIT 100"
        ))?;
        let rows = st.query_map(
            params![
                edge,
                i64::from(max_attempts),
                ms(now),
                db_int(lead_ms),
                db_int(LiveEvent::DEFAULT_DURATION_MS)
            ],
            live_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_live_prefill(
        &self,
        id: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        record_attempt(&*self.db()?, "cp_live_event_status", id, edge, result, now)
    }

    fn fail_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        edge: &str,
        reason: &str,
        _now: Timestamp,
    ) -> BackendResult<()> {
        fail_delivery(&*self.db()?, kind, seq, edge, reason)
    }

    fn cancel_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        by: &str,
        _now: Timestamp,
    ) -> BackendResult<u64> {
        let n = self.db()?.execute(
            &format!(
                "UPDATE {} SET state = 'cancelled', last_error = ?2
                 WHERE seq = ?1 AND state = 'pending'",
                kind.table()
            ),
            params![db_int(seq), format!("cancelled by {by}")],
        )?;
        Ok(n as u64)
    }

    fn cdn_traffic(&self, w: Window<'_>) -> BackendResult<Vec<TrafficPoint>> {
        let db = self.db()?;
        let (cond, c) = customer_filter(w.customer);
        let mut st = db.prepare_cached(&format!(
            "SELECT minute / ?5 * ?5 AS b, SUM(bytes), SUM(hits) FROM cp_cdn_traffic_minute
             WHERE minute >= ?1 AND minute < ?2 AND {cond} AND (?4 IS NULL OR hostname = ?4)
             GROUP BY b ORDER BY b"
        ))?;
        let rows = st.query_map(params![ms(w.from), ms(w.to), c, w.host, step(&w)], |r| {
            Ok(TrafficPoint {
                minute: ts(r.get(0)?),
                bytes: from_db_int(r.get(1)?),
                hits: from_db_int(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn cdn_traffic_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationTraffic>> {
        let db = self.db()?;
        let (cond, c) = customer_filter(w.customer);
        let mut st = db.prepare_cached(&format!(
            "SELECT pop, SUM(bytes), SUM(hits) FROM cp_cdn_traffic_minute
             WHERE minute >= ?1 AND minute < ?2 AND {cond} AND (?4 IS NULL OR hostname = ?4)
             AND ?5 = ?5 GROUP BY pop ORDER BY pop"
        ))?;
        let rows = st.query_map(params![ms(w.from), ms(w.to), c, w.host, step(&w)], |r| {
            Ok(LocationTraffic {
                pop: r.get(0)?,
                bytes: from_db_int(r.get(1)?),
                hits: from_db_int(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn gtm_answers(&self, w: Window<'_>) -> BackendResult<Vec<AnswerPoint>> {
        let db = self.db()?;
        let (cond, c) = customer_filter(w.customer);
        let mut st = db.prepare_cached(&format!(
            "SELECT minute / ?5 * ?5 AS b, hostname, address, SUM(answers) FROM cp_gtm_answers_minute
             WHERE minute >= ?1 AND minute < ?2 AND {cond} AND (?4 IS NULL OR hostname = ?4)
             GROUP BY b, hostname, address ORDER BY b, hostname, address"
        ))?;
        let rows = st.query_map(params![ms(w.from), ms(w.to), c, w.host, step(&w)], |r| {
            Ok(AnswerPoint {
                minute: ts(r.get(0)?),
                hostname: r.get(1)?,
                address: r.get(2)?,
                answers: from_db_int(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn gtm_answers_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationAnswers>> {
        let db = self.db()?;
        let (cond, c) = customer_filter(w.customer);
        let mut st = db.prepare_cached(&format!(
            "SELECT pop, address, SUM(answers) FROM cp_gtm_answers_minute
             WHERE minute >= ?1 AND minute < ?2 AND {cond} AND (?4 IS NULL OR hostname = ?4)
             AND ?5 = ?5 GROUP BY pop, address ORDER BY pop, address"
        ))?;
        let rows = st.query_map(params![ms(w.from), ms(w.to), c, w.host, step(&w)], |r| {
            Ok(LocationAnswers {
                pop: r.get(0)?,
                address: r.get(1)?,
                answers: from_db_int(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn invoices(&self, customer: Option<&str>) -> BackendResult<Vec<InvoiceSummary>> {
        let db = self.db()?;
        let (cond, c) = customer_filter(customer);
        let cond = cond.replace("?3", "?1");
        let mut st = db.prepare_cached(&format!(
            "SELECT id, number, customer, period_start, period_end, total, currency, issued_at
             FROM cp_invoices WHERE {cond} ORDER BY issued_at DESC, id DESC"
        ))?;
        let rows = st.query_map(params![c], invoice_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn invoice(&self, id: i64) -> BackendResult<Option<Invoice>> {
        let db = self.db()?;
        Ok(db
            .query_row(
                "SELECT id, number, customer, period_start, period_end, total, currency, issued_at, html
                 FROM cp_invoices WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Invoice {
                        summary: invoice_row(r)?,
                        html: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }
}

impl ControlTables for SqliteBackend {
    fn record_cdn_traffic(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        minute: Timestamp,
        bytes: u64,
        hits: u64,
    ) -> BackendResult<()> {
        self.db()?.execute(
            "INSERT INTO cp_cdn_traffic_minute (customer, hostname, pop, minute, bytes, hits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                customer,
                hostname,
                pop,
                ms(minute),
                db_int(bytes),
                db_int(hits)
            ],
        )?;
        Ok(())
    }

    fn record_gtm_answers(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        address: &str,
        minute: Timestamp,
        answers: u64,
    ) -> BackendResult<()> {
        self.db()?.execute(
            "INSERT INTO cp_gtm_answers_minute (customer, hostname, pop, address, minute, answers)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                customer,
                hostname,
                pop,
                address,
                ms(minute),
                db_int(answers)
            ],
        )?;
        Ok(())
    }

    fn insert_invoice(&self, summary: &InvoiceSummary, html: &str) -> BackendResult<i64> {
        let db = self.db()?;
        db.execute(
            "INSERT INTO cp_invoices (number, customer, period_start, period_end, total, currency, issued_at, html)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                summary.number,
                summary.customer,
                ms(summary.period_start),
                ms(summary.period_end),
                summary.total.to_string(),
                summary.currency,
                ms(summary.issued_at),
                html
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                BackendError::Duplicate(summary.number.clone())
            }
            e => e.into(),
        })?;
        Ok(db.last_insert_rowid())
    }
}

fn invoice_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvoiceSummary> {
    let total: String = r.get(5)?;
    Ok(InvoiceSummary {
        id: r.get(0)?,
        number: r.get(1)?,
        customer: r.get(2)?,
        period_start: ts(r.get(3)?),
        period_end: ts(r.get(4)?),
        total: total.parse::<Decimal>().unwrap_or_default(),
        currency: r.get(6)?,
        issued_at: ts(r.get(7)?),
    })
}
