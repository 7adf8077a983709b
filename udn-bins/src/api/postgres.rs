//! [`Backend`] on PostgreSQL (the synchronous `postgres` crate, like the trait): the same
//! `cp_*` tables as [`super::SqliteBackend`] in PostgreSQL types, so a control plane at
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
use crate::migrate::Step;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use udn_core::{Config, Timestamp};

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

/// Advisory lock key of live-event inserts (the per-customer count and the insert are
/// one step).
const LOCK_LIVE_EVENTS: i64 = 7012;

const LIVE_COLS: &str = "e.id, e.customer, e.hostname, e.playlist_url, e.starts_at, e.ends_at, \
                         e.max_segments, e.created_by, e.created_at";

fn live_row(r: &Row) -> LiveEvent {
    LiveEvent {
        id: from_db_int(r.get(0)),
        customer: r.get(1),
        hostname: r.get(2),
        playlist_url: r.get(3),
        starts_at: ts(r.get(4)),
        ends_at: r.get::<_, Option<i64>>(5).map(ts),
        max_segments: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        created_by: r.get(7),
        created_at: ts(r.get(8)),
    }
}

/// Advisory lock key of config commits (one version at a time). Migrations lock 7010
/// ([`super::sqlite::CP_SCHEMA`]); the log store uses 7007.
const LOCK_CONFIG: i64 = 7011;

/// Connections in the pool unless [`PgBackend::connect_with`] says otherwise.
pub const DEFAULT_POOL: usize = 4;

/// The control plane's store in a PostgreSQL database.
pub struct PgBackend {
    pool: Vec<Mutex<Conn>>,
    next: AtomicUsize,
    url: String,
}

/// One pooled connection and its prepared statements (by SQL text).
struct Conn {
    client: Client,
    cache: HashMap<String, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn {
    fn open(url: &str) -> Result<Conn, postgres::Error> {
        Ok(Conn {
            client: Client::connect(url, NoTls)?,
            cache: HashMap::new(),
        })
    }

    /// The prepared statement for `sql`, prepared on first use.
    fn stmt(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.cache.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let st = self.stmt(sql)?;
        self.client.query(&st, params)
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let st = self.stmt(sql)?;
        self.client.query_one(&st, params)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let st = self.stmt(sql)?;
        self.client.execute(&st, params)
    }
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.write_str("PgBackend")
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // `udn control` shutting down drops its backend in async code.
        crate::drop_off_runtime(std::mem::take(&mut self.pool));
    }
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn user_row(r: &Row) -> (User, String) {
    let role: String = r.get(2);
    (
        User {
            id: r.get(0),
            username: r.get(1),
            role: Role::parse(&role).unwrap_or(Role::Customer),
            customer: r.get(3),
        },
        r.get(4),
    )
}

/// An [`ApiToken`] from columns `at..at + 6` (id, name, scopes, created_at,
/// expires_at, last_used).
fn api_token_row(r: &Row, at: usize) -> ApiToken {
    let scopes: String = r.get(at + 2);
    let last_used: Option<i64> = r.get(at + 5);
    ApiToken {
        id: r.get(at),
        name: r.get(at + 1),
        scopes: Scope::split(&scopes),
        created_at: ts(r.get(at + 3)),
        expires_at: ts(r.get(at + 4)),
        last_used: last_used.map(ts),
    }
}

fn purge_row(r: &Row) -> Purge {
    let scope: String = r.get(2);
    Purge {
        seq: from_db_int(r.get(0)),
        customer: r.get(1),
        scope: PurgeScope::parse(&scope).unwrap_or(PurgeScope::Url),
        target: r.get(3),
        requested_by: r.get(4),
        requested_at: ts(r.get(5)),
    }
}

fn prefill_row(r: &Row) -> Prefill {
    let urls: String = r.get(2);
    Prefill {
        seq: from_db_int(r.get(0)),
        customer: r.get(1),
        urls: serde_json::from_str(&urls).unwrap_or_default(),
        requested_by: r.get(3),
        requested_at: ts(r.get(4)),
    }
}

fn invoice_row(r: &Row) -> InvoiceSummary {
    let total: String = r.get(5);
    InvoiceSummary {
        id: r.get(0),
        number: r.get(1),
        customer: r.get(2),
        period_start: ts(r.get(3)),
        period_end: ts(r.get(4)),
        total: total.parse::<Decimal>().unwrap_or_default(),
        currency: r.get(6),
        issued_at: ts(r.get(7)),
    }
}

const PURGE_COLS: &str = "seq, customer, scope, target, requested_by, requested_at";
const PREFILL_COLS: &str = "seq, customer, urls_json, requested_by, requested_at";
const INVOICE_COLS: &str =
    "id, number, customer, period_start, period_end, total, currency, issued_at";

impl PgBackend {
    /// Connects to `url` (`postgres://user@host:port/db`) with [`DEFAULT_POOL`]
    /// connections and creates the `cp_*` tables if they are missing. Blocks.
    pub fn connect(url: &str) -> BackendResult<PgBackend> {
        Self::connect_with(url, DEFAULT_POOL)
    }

    /// Like [`PgBackend::connect`] with `pool` connections (at least 1).
    pub fn connect_with(url: &str, pool: usize) -> BackendResult<PgBackend> {
        let mut first = Conn::open(url)?;
        crate::migrate::postgres(&mut first.client, &super::sqlite::CP_SCHEMA)?;
        let mut conns = vec![Mutex::new(first)];
        for _ in 1..pool.max(1) {
            conns.push(Mutex::new(Conn::open(url)?));
        }
        Ok(PgBackend {
            pool: conns,
            next: AtomicUsize::new(0),
            url: url.to_owned(),
        })
    }

    /// A free pooled connection (else the next one in turn, waiting for it), re-opened
    /// first if it was lost.
    fn db(&self) -> BackendResult<MutexGuard<'_, Conn>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.pool.len();
        let free = (0..n).find_map(|i| self.pool[(start + i) % n].try_lock().ok());
        let mut c = match free {
            Some(c) => c,
            None => self.pool[start % n]
                .lock()
                .map_err(|_| BackendError::Poisoned)?,
        };
        if c.client.is_closed() {
            tracing::warn!("control plane: postgres connection lost; reconnecting");
            *c = Conn::open(&self.url)?;
        }
        Ok(c)
    }

    /// Runs a read-only statement. When the connection turns out to be lost (a
    /// PostgreSQL restart, a terminated backend) it reconnects and runs it once more:
    /// safe, since a read changes nothing. Writes are not retried (one may have been
    /// applied before the connection broke).
    fn read(&self, sql: &str, params: Params<'_>) -> BackendResult<Vec<Row>> {
        let mut c = self.db()?;
        match c.query(sql, params) {
            Err(e) if crate::store::postgres::connection_lost(&e) => {
                let e = BackendError::from(e);
                tracing::warn!("control plane: connection lost ({e}); reconnecting");
                *c = Conn::open(&self.url)?;
                Ok(c.query(sql, params)?)
            }
            r => Ok(r?),
        }
    }

    /// [`PgBackend::read`] for at most one row (the first).
    fn read_opt(&self, sql: &str, params: Params<'_>) -> BackendResult<Option<Row>> {
        Ok(self.read(sql, params)?.into_iter().next())
    }

    fn edge_status(&self, d: DeliveryKind, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        let rows = self.read(
            &format!(
                "SELECT edge, applied, attempts, last_error, applied_at, state FROM {}
                 WHERE seq = $1 ORDER BY edge",
                d.table()
            ),
            &[&db_int(seq)],
        )?;
        Ok(rows
            .iter()
            .map(|r| PurgeEdgeStatus {
                edge: r.get(0),
                state: DeliveryState::parse(r.get::<_, &str>(5)),
                applied: r.get(1),
                attempts: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                last_error: r.get(3),
                applied_at: r.get::<_, Option<i64>>(4).map(ts),
            })
            .collect())
    }

    fn record_attempt(
        &self,
        d: DeliveryKind,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        let seq = db_int(seq);
        let mut db = self.db()?;
        match result {
            Ok(()) => db.execute(
                &format!(
                    "UPDATE {} SET applied = TRUE, state = 'applied', attempts = attempts + 1,
                     last_error = NULL, applied_at = $3 WHERE seq = $1 AND edge = $2",
                    d.table()
                ),
                &[&seq, &edge, &ms(now)],
            )?,
            Err(e) => db.execute(
                &format!(
                    "UPDATE {} SET attempts = attempts + 1, last_error = $3
                     WHERE seq = $1 AND edge = $2 AND state = 'pending'",
                    d.table()
                ),
                &[&seq, &edge, &e],
            )?,
        };
        Ok(())
    }

    /// Inserts a purge or prefill row (`insert` returns its sequence number) and one
    /// pending status row per edge, in one transaction.
    fn create_delivery(
        &self,
        d: DeliveryKind,
        insert: &str,
        params: Params<'_>,
        edges: &[String],
    ) -> BackendResult<u64> {
        let mut db = self.db()?;
        let insert = db.stmt(insert)?;
        let status = db.stmt(&format!(
            "INSERT INTO {} (seq, edge) VALUES ($1, $2)",
            d.table()
        ))?;
        let mut tx = db.client.transaction()?;
        let seq: i64 = tx.query_one(&insert, params)?.get(0);
        for e in edges {
            tx.execute(&status, &[&seq, e])?;
        }
        tx.commit()?;
        Ok(from_db_int(seq))
    }
}

impl Backend for PgBackend {
    fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        customer: Option<&str>,
    ) -> BackendResult<User> {
        let hash = hash_password(password)?;
        let row = self
            .db()?
            .query_one(
                "INSERT INTO cp_users (username, password_hash, role, customer)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&username, &hash, &role.as_str(), &customer],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    BackendError::Duplicate(username.to_owned())
                } else {
                    e.into()
                }
            })?;
        Ok(User {
            id: row.get(0),
            username: username.to_owned(),
            role,
            customer: customer.map(str::to_owned),
        })
    }

    fn verify_login(&self, username: &str, password: &str) -> BackendResult<Option<User>> {
        let row = self.read_opt(
            "SELECT id, username, role, customer, password_hash FROM cp_users
             WHERE username = $1",
            &[&username],
        )?;
        check_login(row.as_ref().map(user_row), password)
    }

    fn set_password(&self, user_id: i64, password: &str) -> BackendResult<()> {
        let hash = hash_password(password)?;
        let n = self.db()?.execute(
            "UPDATE cp_users SET password_hash = $1 WHERE id = $2",
            &[&hash, &user_id],
        )?;
        if n == 0 {
            return Err(BackendError::NotFound);
        }
        Ok(())
    }

    fn delete_user(&self, user_id: i64) -> BackendResult<()> {
        let mut db = self.db()?;
        db.execute("DELETE FROM cp_sessions WHERE user_id = $1", &[&user_id])?;
        db.execute("DELETE FROM cp_api_tokens WHERE user_id = $1", &[&user_id])?;
        let n = db.execute("DELETE FROM cp_users WHERE id = $1", &[&user_id])?;
        if n == 0 {
            return Err(BackendError::NotFound);
        }
        Ok(())
    }

    fn users(&self) -> BackendResult<Vec<User>> {
        let rows = self.read(
            "SELECT id, username, role, customer, password_hash FROM cp_users ORDER BY username",
            &[],
        )?;
        Ok(rows.iter().map(|r| user_row(r).0).collect())
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
        let mut db = self.db()?;
        db.execute(
            "DELETE FROM cp_sessions WHERE expires_at <= $1",
            &[&ms(now)],
        )?;
        db.execute(
            "INSERT INTO cp_sessions (token_hash, user_id, kind, csrf, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token_hash(&token),
                &user_id,
                &kind.as_str(),
                &csrf,
                &ms(expires_at),
            ],
        )?;
        Ok(NewSession {
            token,
            csrf,
            expires_at,
        })
    }

    fn session(&self, token: &str, now: Timestamp) -> BackendResult<Option<Session>> {
        let row = self.read_opt(
            "SELECT u.id, u.username, u.role, u.customer, u.password_hash, s.kind, s.csrf,
                    s.expires_at
             FROM cp_sessions s JOIN cp_users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at > $2",
            &[&token_hash(token), &ms(now)],
        )?;
        Ok(row.map(|r| {
            let (user, _) = user_row(&r);
            let kind: String = r.get(5);
            Session {
                user,
                kind: if kind == "bearer" {
                    SessionKind::Bearer
                } else {
                    SessionKind::Cookie
                },
                csrf: r.get(6),
                expires_at: ts(r.get(7)),
            }
        }))
    }

    fn delete_session(&self, token: &str) -> BackendResult<()> {
        self.db()?.execute(
            "DELETE FROM cp_sessions WHERE token_hash = $1",
            &[&token_hash(token)],
        )?;
        Ok(())
    }

    fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> BackendResult<()> {
        let keep = keep.map(token_hash).unwrap_or_default();
        self.db()?.execute(
            "DELETE FROM cp_sessions WHERE user_id = $1 AND token_hash <> $2",
            &[&user_id, &keep],
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
        let mut db = self.db()?;
        db.execute(
            "DELETE FROM cp_api_tokens WHERE user_id = $1 AND expires_at <= $2",
            &[&user_id, &ms(now)],
        )?;
        let row = db.query_one(
            "INSERT INTO cp_api_tokens (user_id, name, token_hash, scopes, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &user_id,
                &name,
                &token_hash(&secret),
                &Scope::join(scopes),
                &ms(now),
                &ms(expires_at),
            ],
        )?;
        let token = ApiToken {
            id: row.get(0),
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            created_at: now,
            expires_at,
            last_used: None,
        };
        Ok((token, secret))
    }

    fn api_tokens(&self, user_id: i64) -> BackendResult<Vec<ApiToken>> {
        let rows = self.read(
            "SELECT id, name, scopes, created_at, expires_at, last_used FROM cp_api_tokens
             WHERE user_id = $1 ORDER BY id",
            &[&user_id],
        )?;
        Ok(rows.iter().map(|r| api_token_row(r, 0)).collect())
    }

    fn delete_api_token(&self, user_id: i64, id: i64) -> BackendResult<bool> {
        let n = self.db()?.execute(
            "DELETE FROM cp_api_tokens WHERE user_id = $1 AND id = $2",
            &[&user_id, &id],
        )?;
        Ok(n > 0)
    }

    fn api_token(&self, secret: &str, now: Timestamp) -> BackendResult<Option<(User, ApiToken)>> {
        let row = self.read_opt(
            "SELECT u.id, u.username, u.role, u.customer, u.password_hash,
                    t.id, t.name, t.scopes, t.created_at, t.expires_at, t.last_used
             FROM cp_api_tokens t JOIN cp_users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND t.expires_at > $2",
            &[&token_hash(secret), &ms(now)],
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = user_row(&row).0;
        let mut token = api_token_row(&row, 5);
        if token
            .last_used
            .is_none_or(|t| ms(now) - ms(t) >= LAST_USED_EVERY_MS)
        {
            self.db()?.execute(
                "UPDATE cp_api_tokens SET last_used = $1 WHERE id = $2",
                &[&ms(now), &token.id],
            )?;
            token.last_used = Some(now);
        }
        Ok(Some((user, token)))
    }

    fn current_config(&self) -> BackendResult<ConfigSnapshot> {
        let row = self.read_opt(
            "SELECT version, created_at, author, config_json FROM cp_config_versions
             ORDER BY version DESC LIMIT 1",
            &[],
        )?;
        match row {
            None => Ok(ConfigSnapshot {
                version: 0,
                config: Config::default(),
                created_at: Timestamp::from_millis(0),
                author: String::new(),
            }),
            Some(r) => Ok(ConfigSnapshot {
                version: from_db_int(r.get(0)),
                config: serde_json::from_str(r.get::<_, &str>(3))?,
                created_at: ts(r.get(1)),
                author: r.get(2),
            }),
        }
    }

    fn current_version(&self) -> BackendResult<u64> {
        let row = self.read_opt(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM cp_config_versions",
            &[],
        )?;
        Ok(row.map_or(0, |r| from_db_int(r.get(0))))
    }

    fn config_at(&self, version: u64) -> BackendResult<Option<ConfigSnapshot>> {
        let row = self.read_opt(
            "SELECT created_at, author, config_json FROM cp_config_versions WHERE version = $1",
            &[&db_int(version)],
        )?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(ConfigSnapshot {
                version,
                config: serde_json::from_str(r.get::<_, &str>(2))?,
                created_at: ts(r.get(0)),
                author: r.get(1),
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
        let mut tx = db.client.transaction()?;
        // Serializes committers across control planes sharing the database, so the
        // version check and the insert see the same current version.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_CONFIG])?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM cp_config_versions",
                &[],
            )?
            .get(0);
        let current = from_db_int(current);
        if current != base {
            return Err(BackendError::Conflict { base, current });
        }
        let next = current + 1;
        tx.execute(
            "INSERT INTO cp_config_versions (version, created_at, author, config_json)
             VALUES ($1, $2, $3, $4)",
            &[&db_int(next), &ms(now), &author, &json],
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
            DeliveryKind::Purge,
            "INSERT INTO cp_purges (customer, scope, target, requested_by, requested_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING seq",
            &[&customer, &scope.as_str(), &target, &requested_by, &ms(now)],
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
        let row = self.read_opt(
            &format!("SELECT {PURGE_COLS} FROM cp_purges WHERE seq = $1"),
            &[&db_int(seq)],
        )?;
        Ok(row.as_ref().map(purge_row))
    }

    fn purges(
        &self,
        customer: Option<&str>,
        limit: u32,
        before: Option<u64>,
    ) -> BackendResult<Vec<Purge>> {
        let before = before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = self.read(
            &format!(
                "SELECT {PURGE_COLS} FROM cp_purges
                 WHERE ($1::TEXT IS NULL OR customer = $1)
                   AND ($3::BIGINT IS NULL OR seq < $3::BIGINT)
                 ORDER BY seq DESC LIMIT $2"
            ),
            &[&customer, &i64::from(limit), &before],
        )?;
        Ok(rows.iter().map(purge_row).collect())
    }

    fn purge_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        self.edge_status(DeliveryKind::Purge, seq)
    }

    fn record_purge_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        self.record_attempt(DeliveryKind::Purge, seq, edge, result, now)
    }

    fn pending_purges(&self, edge: &str) -> BackendResult<Vec<Purge>> {
        let rows = self.read(
            "SELECT p.seq, p.customer, p.scope, p.target, p.requested_by, p.requested_at
             FROM cp_purge_status s JOIN cp_purges p ON p.seq = s.seq
             WHERE s.edge = $1 AND s.state = 'pending' ORDER BY p.seq",
            &[&edge],
        )?;
        Ok(rows.iter().map(purge_row).collect())
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
            DeliveryKind::Prefill,
            "INSERT INTO cp_prefills (customer, urls_json, requested_by, requested_at)
             VALUES ($1, $2, $3, $4) RETURNING seq",
            &[&customer, &json, &requested_by, &ms(now)],
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
        let row = self.read_opt(
            &format!("SELECT {PREFILL_COLS} FROM cp_prefills WHERE seq = $1"),
            &[&db_int(seq)],
        )?;
        Ok(row.as_ref().map(prefill_row))
    }

    fn prefill_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        self.edge_status(DeliveryKind::Prefill, seq)
    }

    fn record_prefill_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        self.record_attempt(DeliveryKind::Prefill, seq, edge, result, now)
    }

    fn pending_prefills(&self, edge: &str) -> BackendResult<Vec<Prefill>> {
        let rows = self.read(
            "SELECT p.seq, p.customer, p.urls_json, p.requested_by, p.requested_at
             FROM cp_prefill_status s JOIN cp_prefills p ON p.seq = s.seq
             WHERE s.edge = $1 AND s.state = 'pending' ORDER BY p.seq",
            &[&edge],
        )?;
        Ok(rows.iter().map(prefill_row).collect())
    }

    fn create_live_event(
        &self,
        ev: &LiveEvent,
        edges: &[String],
        max_open: u32,
        now: Timestamp,
    ) -> BackendResult<Option<LiveEvent>> {
        let mut db = self.db()?;
        let mut tx = db.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_LIVE_EVENTS])?;
        let open: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM cp_live_events
                 WHERE customer = $1 AND COALESCE(ends_at, starts_at + $2) > $3",
                &[
                    &ev.customer,
                    &db_int(LiveEvent::DEFAULT_DURATION_MS),
                    &ms(now),
                ],
            )?
            .get(0);
        if open >= i64::from(max_open) {
            return Ok(None);
        }
        let max_segments = i32::try_from(ev.max_segments).unwrap_or(i32::MAX);
        let id: i64 = tx
            .query_one(
                "INSERT INTO cp_live_events (customer, hostname, playlist_url, starts_at, ends_at,
                 max_segments, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING id",
                &[
                    &ev.customer,
                    &ev.hostname,
                    &ev.playlist_url,
                    &ms(ev.starts_at),
                    &ev.ends_at.map(ms),
                    &max_segments,
                    &ev.created_by,
                    &ms(ev.created_at),
                ],
            )?
            .get(0);
        for e in edges {
            tx.execute(
                "INSERT INTO cp_live_event_status (seq, edge) VALUES ($1, $2)",
                &[&id, e],
            )?;
        }
        tx.commit()?;
        Ok(Some(LiveEvent {
            id: from_db_int(id),
            ..ev.clone()
        }))
    }

    fn live_events(&self, customer: Option<&str>, limit: u32) -> BackendResult<Vec<LiveEvent>> {
        let rows = self.read(
            &format!(
                "SELECT {LIVE_COLS} FROM cp_live_events e
                 WHERE ($1::TEXT IS NULL OR e.customer = $1)
                 ORDER BY e.starts_at DESC, e.id DESC LIMIT $2"
            ),
            &[&customer, &i64::from(limit)],
        )?;
        Ok(rows.iter().map(live_row).collect())
    }

    fn live_event_status(&self, id: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        let rows = self.read(
            "SELECT edge, applied, attempts, last_error, applied_at, state
             FROM cp_live_event_status WHERE seq = $1 ORDER BY edge",
            &[&db_int(id)],
        )?;
        Ok(rows
            .iter()
            .map(|r| PurgeEdgeStatus {
                edge: r.get(0),
                state: DeliveryState::parse(r.get::<_, &str>(5)),
                applied: r.get(1),
                attempts: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                last_error: r.get(3),
                applied_at: r.get::<_, Option<i64>>(4).map(ts),
            })
            .collect())
    }

    fn due_live_events(
        &self,
        edge: &str,
        now: Timestamp,
        lead_ms: u64,
        max_attempts: u32,
    ) -> BackendResult<Vec<LiveEvent>> {
        let rows = self.read(
            &format!(
                "SELECT {LIVE_COLS} FROM cp_live_event_status s
                 JOIN cp_live_events e ON e.id = s.seq
                 WHERE s.edge = $1 AND s.state = 'pending' AND s.attempts < $2
                   AND e.starts_at <= $3::BIGINT + $4::BIGINT
                   AND COALESCE(e.ends_at, e.starts_at + $5::BIGINT) > $3::BIGINT
                 ORDER BY e.starts_at, e.id LIMIT 100"
            ),
            &[
                &edge,
                &i32::try_from(max_attempts).unwrap_or(i32::MAX),
                &ms(now),
                &db_int(lead_ms),
                &db_int(LiveEvent::DEFAULT_DURATION_MS),
            ],
        )?;
        Ok(rows.iter().map(live_row).collect())
    }

    fn record_live_prefill(
        &self,
        id: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        let id = db_int(id);
        let mut db = self.db()?;
        match result {
            Ok(()) => db.execute(
                "UPDATE cp_live_event_status SET applied = TRUE, state = 'applied',
                 attempts = attempts + 1, last_error = NULL, applied_at = $3
                 WHERE seq = $1 AND edge = $2",
                &[&id, &edge, &ms(now)],
            )?,
            Err(e) => db.execute(
                "UPDATE cp_live_event_status SET attempts = attempts + 1, last_error = $3
                 WHERE seq = $1 AND edge = $2 AND state = 'pending'",
                &[&id, &edge, &e],
            )?,
        };
        Ok(())
    }

    fn fail_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        edge: &str,
        reason: &str,
        _now: Timestamp,
    ) -> BackendResult<()> {
        self.db()?.execute(
            &format!(
                "UPDATE {} SET state = 'failed', attempts = attempts + 1, last_error = $3
                 WHERE seq = $1 AND edge = $2 AND state = 'pending'",
                kind.table()
            ),
            &[&db_int(seq), &edge, &reason],
        )?;
        Ok(())
    }

    fn cancel_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        by: &str,
        _now: Timestamp,
    ) -> BackendResult<u64> {
        let why = format!("cancelled by {by}");
        Ok(self.db()?.execute(
            &format!(
                "UPDATE {} SET state = 'cancelled', last_error = $2
                 WHERE seq = $1 AND state = 'pending'",
                kind.table()
            ),
            &[&db_int(seq), &why],
        )?)
    }

    fn cdn_traffic(&self, w: Window<'_>) -> BackendResult<Vec<TrafficPoint>> {
        let rows = self.read(
            "SELECT minute / $5::BIGINT * $5::BIGINT AS b, SUM(bytes)::BIGINT, SUM(hits)::BIGINT
             FROM cp_cdn_traffic_minute
             WHERE minute >= $1 AND minute < $2 AND ($3::TEXT IS NULL OR customer = $3)
             AND ($4::TEXT IS NULL OR hostname = $4) GROUP BY b ORDER BY b",
            &[
                &ms(w.from),
                &ms(w.to),
                &w.customer,
                &w.host,
                &(w.grain.millis() as i64),
            ],
        )?;
        Ok(rows
            .iter()
            .map(|r| TrafficPoint {
                minute: ts(r.get(0)),
                bytes: from_db_int(r.get(1)),
                hits: from_db_int(r.get(2)),
            })
            .collect())
    }

    fn cdn_traffic_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationTraffic>> {
        let rows = self.read(
            "SELECT pop, SUM(bytes)::BIGINT, SUM(hits)::BIGINT FROM cp_cdn_traffic_minute
             WHERE minute >= $1 AND minute < $2 AND ($3::TEXT IS NULL OR customer = $3)
             AND ($4::TEXT IS NULL OR hostname = $4) AND $5::BIGINT > 0
             GROUP BY pop ORDER BY pop",
            &[
                &ms(w.from),
                &ms(w.to),
                &w.customer,
                &w.host,
                &(w.grain.millis() as i64),
            ],
        )?;
        Ok(rows
            .iter()
            .map(|r| LocationTraffic {
                pop: r.get(0),
                bytes: from_db_int(r.get(1)),
                hits: from_db_int(r.get(2)),
            })
            .collect())
    }

    fn gtm_answers(&self, w: Window<'_>) -> BackendResult<Vec<AnswerPoint>> {
        let rows = self.read(
            "SELECT minute / $5::BIGINT * $5::BIGINT AS b, hostname, address, SUM(answers)::BIGINT
             FROM cp_gtm_answers_minute
             WHERE minute >= $1 AND minute < $2 AND ($3::TEXT IS NULL OR customer = $3)
             AND ($4::TEXT IS NULL OR hostname = $4)
             GROUP BY b, hostname, address ORDER BY b, hostname, address",
            &[
                &ms(w.from),
                &ms(w.to),
                &w.customer,
                &w.host,
                &(w.grain.millis() as i64),
            ],
        )?;
        Ok(rows
            .iter()
            .map(|r| AnswerPoint {
                minute: ts(r.get(0)),
                hostname: r.get(1),
                address: r.get(2),
                answers: from_db_int(r.get(3)),
            })
            .collect())
    }

    fn gtm_answers_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationAnswers>> {
        let rows = self.read(
            "SELECT pop, address, SUM(answers)::BIGINT FROM cp_gtm_answers_minute
             WHERE minute >= $1 AND minute < $2 AND ($3::TEXT IS NULL OR customer = $3)
             AND ($4::TEXT IS NULL OR hostname = $4) AND $5::BIGINT > 0
             GROUP BY pop, address ORDER BY pop, address",
            &[
                &ms(w.from),
                &ms(w.to),
                &w.customer,
                &w.host,
                &(w.grain.millis() as i64),
            ],
        )?;
        Ok(rows
            .iter()
            .map(|r| LocationAnswers {
                pop: r.get(0),
                address: r.get(1),
                answers: from_db_int(r.get(2)),
            })
            .collect())
    }

    fn invoices(&self, customer: Option<&str>) -> BackendResult<Vec<InvoiceSummary>> {
        let rows = self.read(
            &format!(
                "SELECT {INVOICE_COLS} FROM cp_invoices
                 WHERE ($1::TEXT IS NULL OR customer = $1) ORDER BY issued_at DESC, id DESC"
            ),
            &[&customer],
        )?;
        Ok(rows.iter().map(invoice_row).collect())
    }

    fn invoice(&self, id: i64) -> BackendResult<Option<Invoice>> {
        let row = self.read_opt(
            &format!("SELECT {INVOICE_COLS}, html FROM cp_invoices WHERE id = $1"),
            &[&id],
        )?;
        Ok(row.map(|r| Invoice {
            summary: invoice_row(&r),
            html: r.get(8),
        }))
    }
}

impl ControlTables for PgBackend {
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
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &customer,
                &hostname,
                &pop,
                &ms(minute),
                &db_int(bytes),
                &db_int(hits),
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
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &customer,
                &hostname,
                &pop,
                &address,
                &ms(minute),
                &db_int(answers),
            ],
        )?;
        Ok(())
    }

    fn insert_invoice(&self, summary: &InvoiceSummary, html: &str) -> BackendResult<i64> {
        let row = self
            .db()?
            .query_one(
                "INSERT INTO cp_invoices (number, customer, period_start, period_end, total,
                                          currency, issued_at, html)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[
                    &summary.number,
                    &summary.customer,
                    &ms(summary.period_start),
                    &ms(summary.period_end),
                    &summary.total.to_string(),
                    &summary.currency,
                    &ms(summary.issued_at),
                    &html,
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    BackendError::Duplicate(summary.number.clone())
                } else {
                    e.into()
                }
            })?;
        Ok(row.get(0))
    }
}
