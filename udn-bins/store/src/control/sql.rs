//! The control plane's [`Backend`], written once over a small dialect seam ([`Db`]):
//! every query below runs unchanged on SQLite ([`super::sqlite::SqliteDb`]) and
//! PostgreSQL ([`super::postgres::PgDb`]), as the log store's queries do.
//!
//! The SQL keeps to what both dialects read the same way: parameters `$1`, `$2`...
//! (bound by number, so a statement may use them in any order and more than once),
//! `CAST(x AS BIGINT)` and `CAST(x AS TEXT)` instead of PostgreSQL's `::`, `TRUE` for a
//! flag, `INSERT ... RETURNING` for new ids. What differs stays in the adapters: the
//! schema (column types), how a connection is held (one SQLite connection under a mutex;
//! a pool of PostgreSQL connections with prepared statements), how a
//! writing transaction is serialized (`BEGIN IMMEDIATE`; an advisory lock), and how a
//! result column becomes a [`Cell`].

use super::backend::*;
use crate::logs::{Cell, Param};
use rust_decimal::Decimal;
use udn_core::{Config, Timestamp};

/// Rows of a query result, one [`Cell`] per column.
pub type Rows = Vec<Vec<Cell>>;

/// One database connection (or an open transaction on one).
pub trait Conn {
    /// Runs a statement that returns rows (a `SELECT`, or an `INSERT ... RETURNING`).
    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows>;
    /// Runs a statement that returns no rows; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> BackendResult<u64>;
}

/// Serializes writing transactions of one kind across every control plane sharing the
/// database (PostgreSQL advisory lock keys; SQLite's `BEGIN IMMEDIATE` serializes all
/// writers anyway). Migrations lock 7010 and the log store 7007.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxLock {
    /// No lock beyond the transaction's own.
    None,
    /// Config commits: the version check and the insert see the same current version.
    Config,
    /// Live events: the per-customer count and the insert are one step.
    LiveEvents,
}

impl TxLock {
    /// The PostgreSQL advisory lock key, if any.
    pub fn key(self) -> Option<i64> {
        match self {
            TxLock::None => None,
            TxLock::Config => Some(7011),
            TxLock::LiveEvents => Some(7012),
        }
    }
}

/// How a [`SqlBackend`] reaches its database: the dialect seam.
pub trait Db: Send + Sync + 'static {
    /// Runs `f` on one connection, outside a transaction (each statement commits).
    fn with<T>(&self, f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>) -> BackendResult<T>;
    /// Runs `f` in one writing transaction, committed when `f` returns `Ok` and rolled
    /// back otherwise.
    fn transaction<T>(
        &self,
        lock: TxLock,
        f: impl FnOnce(&mut dyn Conn) -> BackendResult<T>,
    ) -> BackendResult<T>;
    /// Runs a read-only query; an adapter may run it again on a fresh connection when
    /// the first one turns out to be lost (safe: a read changes nothing).
    fn read(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<Rows> {
        self.with(|c| c.query(sql, args))
    }
}

/// The control plane's store on any [`Db`]. [`super::SqliteBackend`] and
/// [`super::PgBackend`] are this type on each adapter.
pub struct SqlBackend<D: Db> {
    pub(crate) db: D,
}

impl<D: Db> std::fmt::Debug for SqlBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A PostgreSQL URL may carry a password: never print the adapter.
        write!(f, "SqlBackend<{}>", std::any::type_name::<D>())
    }
}

/// Whether `e` is a unique-constraint violation (a name that is taken).
fn unique_violation(e: &BackendError) -> bool {
    match e {
        BackendError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        BackendError::Postgres(e) => {
            e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        }
        _ => false,
    }
}

/// `e` as [`BackendError::Duplicate`] of `name` when it is a unique violation.
fn duplicate(e: BackendError, name: &str) -> BackendError {
    if unique_violation(&e) {
        BackendError::Duplicate(name.to_owned())
    } else {
        e
    }
}

/// One result row, read by column index with the query named in errors.
struct Row<'a> {
    cells: &'a [Cell],
    sql: &'a str,
}

impl Row<'_> {
    fn bad(&self, index: usize) -> BackendError {
        BackendError::Column {
            index,
            query: self
                .sql
                .split_whitespace()
                .take(8)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn opt_int(&self, i: usize) -> BackendResult<Option<i64>> {
        match self.cells.get(i) {
            Some(Cell::Int(v)) => Ok(Some(*v)),
            Some(Cell::Null) => Ok(None),
            _ => Err(self.bad(i)),
        }
    }

    fn int(&self, i: usize) -> BackendResult<i64> {
        self.opt_int(i)?.ok_or_else(|| self.bad(i))
    }

    fn opt_text(&self, i: usize) -> BackendResult<Option<String>> {
        match self.cells.get(i) {
            Some(Cell::Text(v)) => Ok(Some(v.clone())),
            Some(Cell::Null) => Ok(None),
            _ => Err(self.bad(i)),
        }
    }

    fn text(&self, i: usize) -> BackendResult<String> {
        self.opt_text(i)?.ok_or_else(|| self.bad(i))
    }

    fn ts(&self, i: usize) -> BackendResult<Timestamp> {
        Ok(ts(self.int(i)?))
    }

    fn count(&self, i: usize) -> BackendResult<u64> {
        Ok(from_db_int(self.opt_int(i)?.unwrap_or(0)))
    }
}

/// Maps every row of `rows` (the result of `sql`) through `f`.
fn map<T>(
    rows: &Rows,
    sql: &str,
    f: impl Fn(&Row<'_>) -> BackendResult<T>,
) -> BackendResult<Vec<T>> {
    rows.iter().map(|cells| f(&Row { cells, sql })).collect()
}

/// The first row of `rows` through `f`, if there is one.
fn first<T>(
    rows: &Rows,
    sql: &str,
    f: impl Fn(&Row<'_>) -> BackendResult<T>,
) -> BackendResult<Option<T>> {
    rows.first().map(|cells| f(&Row { cells, sql })).transpose()
}

/// The integer in the first column of the first row (an id from `RETURNING`, a count).
fn scalar(rows: &Rows, sql: &str) -> BackendResult<i64> {
    first(rows, sql, |r| r.int(0))?.ok_or(BackendError::Column {
        index: 0,
        query: "no row".to_owned(),
    })
}

const USER_COLS: &str = "u.id, u.username, u.role, u.customer, u.password_hash";
const TOKEN_COLS: &str = "t.id, t.name, t.scopes, t.created_at, t.expires_at, t.last_used";
const PURGE_COLS: &str = "p.seq, p.customer, p.scope, p.target, p.requested_by, p.requested_at";
const PREFILL_COLS: &str = "p.seq, p.customer, p.urls_json, p.requested_by, p.requested_at";
const LIVE_COLS: &str = "e.id, e.customer, e.hostname, e.playlist_url, e.starts_at, e.ends_at, \
                         e.max_segments, e.created_by, e.created_at";
const INVOICE_COLS: &str =
    "id, number, customer, period_start, period_end, total, currency, issued_at";
const STATUS_COLS: &str = "edge, CAST(applied AS INTEGER), attempts, last_error, applied_at, state";
/// The live events' per-edge status table (purges and prefills: [`DeliveryKind::table`]).
const LIVE_STATUS: &str = "cp_live_event_status";

/// A user and its password hash from [`USER_COLS`].
fn user_row(r: &Row<'_>) -> BackendResult<(User, String)> {
    Ok((
        User {
            id: r.int(0)?,
            username: r.text(1)?,
            role: Role::parse(&r.text(2)?).unwrap_or(Role::Customer),
            customer: r.opt_text(3)?,
        },
        r.text(4)?,
    ))
}

/// An [`ApiToken`] from [`TOKEN_COLS`] starting at column `at`.
fn token_row(r: &Row<'_>, at: usize) -> BackendResult<ApiToken> {
    Ok(ApiToken {
        id: r.int(at)?,
        name: r.text(at + 1)?,
        scopes: Scope::split(&r.text(at + 2)?),
        created_at: r.ts(at + 3)?,
        expires_at: r.ts(at + 4)?,
        last_used: r.opt_int(at + 5)?.map(ts),
    })
}

fn purge_row(r: &Row<'_>) -> BackendResult<Purge> {
    Ok(Purge {
        seq: from_db_int(r.int(0)?),
        customer: r.text(1)?,
        scope: PurgeScope::parse(&r.text(2)?).unwrap_or(PurgeScope::Url),
        target: r.text(3)?,
        requested_by: r.text(4)?,
        requested_at: r.ts(5)?,
    })
}

fn prefill_row(r: &Row<'_>) -> BackendResult<Prefill> {
    Ok(Prefill {
        seq: from_db_int(r.int(0)?),
        customer: r.text(1)?,
        urls: serde_json::from_str(&r.text(2)?)?,
        requested_by: r.text(3)?,
        requested_at: r.ts(4)?,
    })
}

fn live_row(r: &Row<'_>) -> BackendResult<LiveEvent> {
    Ok(LiveEvent {
        id: from_db_int(r.int(0)?),
        customer: r.text(1)?,
        hostname: r.text(2)?,
        playlist_url: r.text(3)?,
        starts_at: r.ts(4)?,
        ends_at: r.opt_int(5)?.map(ts),
        max_segments: u32::try_from(r.int(6)?).unwrap_or(0),
        created_by: r.text(7)?,
        created_at: r.ts(8)?,
    })
}

fn invoice_row(r: &Row<'_>) -> BackendResult<InvoiceSummary> {
    Ok(InvoiceSummary {
        id: r.int(0)?,
        number: r.text(1)?,
        customer: r.text(2)?,
        period_start: r.ts(3)?,
        period_end: r.ts(4)?,
        total: r.text(5)?.parse::<Decimal>().unwrap_or_default(),
        currency: r.text(6)?,
        issued_at: r.ts(7)?,
    })
}

fn status_row(r: &Row<'_>) -> BackendResult<PurgeEdgeStatus> {
    Ok(PurgeEdgeStatus {
        edge: r.text(0)?,
        applied: r.int(1)? != 0,
        attempts: u32::try_from(r.int(2)?).unwrap_or(u32::MAX),
        last_error: r.opt_text(3)?,
        applied_at: r.opt_int(4)?.map(ts),
        state: DeliveryState::parse(&r.text(5)?),
    })
}

/// `Some` as text, `None` as NULL.
fn opt_text(v: Option<&str>) -> Param<'_> {
    v.map_or(Param::Null, Param::Text)
}

/// `Some` as an integer, `None` as NULL.
fn opt_int(v: Option<i64>) -> Param<'static> {
    v.map_or(Param::Null, Param::Int)
}

/// The arguments `$1..$5` of the traffic queries: from, to, customer, host, bucket.
fn window_args<'a>(w: &Window<'a>) -> [Param<'a>; 5] {
    [
        Param::Int(ms(w.from)),
        Param::Int(ms(w.to)),
        opt_text(w.customer),
        opt_text(w.host),
        Param::Int(i64::try_from(w.grain.millis()).unwrap_or(i64::MAX)),
    ]
}

/// The filter of the traffic queries on [`window_args`].
const WINDOW_FILTER: &str = "minute >= $1 AND minute < $2 \
     AND (CAST($3 AS TEXT) IS NULL OR customer = $3) \
     AND (CAST($4 AS TEXT) IS NULL OR hostname = $4)";

impl<D: Db> SqlBackend<D> {
    /// The control plane's store on `db` (whose schema is up to date).
    pub fn new(db: D) -> SqlBackend<D> {
        SqlBackend { db }
    }

    fn execute(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<u64> {
        self.db.with(|c| c.execute(sql, args))
    }

    /// Runs an `INSERT ... RETURNING` and gives the returned id.
    fn insert(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<i64> {
        let rows = self.db.with(|c| c.query(sql, args))?;
        scalar(&rows, sql)
    }

    fn read_all<T>(
        &self,
        sql: &str,
        args: &[Param<'_>],
        f: impl Fn(&Row<'_>) -> BackendResult<T>,
    ) -> BackendResult<Vec<T>> {
        map(&self.db.read(sql, args)?, sql, f)
    }

    fn read_one<T>(
        &self,
        sql: &str,
        args: &[Param<'_>],
        f: impl Fn(&Row<'_>) -> BackendResult<T>,
    ) -> BackendResult<Option<T>> {
        first(&self.db.read(sql, args)?, sql, f)
    }

    /// Inserts a delivery (`insert` returns its sequence number) and one pending row
    /// per edge in `status`, in one transaction.
    fn create_delivery(
        &self,
        lock: TxLock,
        insert: &str,
        args: &[Param<'_>],
        status: &str,
        edges: &[String],
    ) -> BackendResult<u64> {
        let add = format!("INSERT INTO {status} (seq, edge) VALUES ($1, $2)");
        self.db.transaction(lock, |tx| {
            let seq = scalar(&tx.query(insert, args)?, insert)?;
            for e in edges {
                tx.execute(&add, &[Param::Int(seq), Param::Text(e)])?;
            }
            Ok(from_db_int(seq))
        })
    }

    fn edge_status(&self, table: &str, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        self.read_all(
            &format!("SELECT {STATUS_COLS} FROM {table} WHERE seq = $1 ORDER BY edge"),
            &[Param::Int(db_int(seq))],
            status_row,
        )
    }

    fn record_attempt(
        &self,
        table: &str,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        let seq = Param::Int(db_int(seq));
        match result {
            Ok(()) => self.execute(
                &format!(
                    "UPDATE {table} SET applied = TRUE, state = 'applied', attempts = attempts + 1,
                     last_error = NULL, applied_at = $3 WHERE seq = $1 AND edge = $2"
                ),
                &[seq, Param::Text(edge), Param::Int(ms(now))],
            )?,
            Err(e) => self.execute(
                &format!(
                    "UPDATE {table} SET attempts = attempts + 1, last_error = $3
                     WHERE seq = $1 AND edge = $2 AND state = 'pending'"
                ),
                &[seq, Param::Text(edge), Param::Text(&e)],
            )?,
        };
        Ok(())
    }

    fn snapshot(&self, sql: &str, args: &[Param<'_>]) -> BackendResult<Option<ConfigSnapshot>> {
        self.read_one(sql, args, |r| {
            Ok(ConfigSnapshot {
                version: from_db_int(r.int(0)?),
                created_at: r.ts(1)?,
                author: r.text(2)?,
                config: serde_json::from_str(&r.text(3)?)?,
            })
        })
    }
}

const CURRENT_VERSION: &str =
    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM cp_config_versions";

impl<D: Db> Accounts for SqlBackend<D> {
    fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        customer: Option<&str>,
    ) -> BackendResult<User> {
        let hash = hash_password(password)?;
        let id = self
            .insert(
                "INSERT INTO cp_users (username, password_hash, role, customer)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[
                    Param::Text(username),
                    Param::Text(&hash),
                    Param::Text(role.as_str()),
                    opt_text(customer),
                ],
            )
            .map_err(|e| duplicate(e, username))?;
        Ok(User {
            id,
            username: username.to_owned(),
            role,
            customer: customer.map(str::to_owned),
        })
    }

    fn verify_login(&self, username: &str, password: &str) -> BackendResult<Option<User>> {
        let found = self.read_one(
            &format!("SELECT {USER_COLS} FROM cp_users u WHERE u.username = $1"),
            &[Param::Text(username)],
            user_row,
        )?;
        check_login(found, password)
    }

    fn set_password(&self, user_id: i64, password: &str) -> BackendResult<()> {
        let hash = hash_password(password)?;
        let n = self.execute(
            "UPDATE cp_users SET password_hash = $1 WHERE id = $2",
            &[Param::Text(&hash), Param::Int(user_id)],
        )?;
        if n == 0 {
            return Err(BackendError::NotFound);
        }
        Ok(())
    }

    fn delete_user(&self, user_id: i64) -> BackendResult<()> {
        let id = [Param::Int(user_id)];
        let n = self.db.transaction(TxLock::None, |tx| {
            tx.execute("DELETE FROM cp_sessions WHERE user_id = $1", &id)?;
            tx.execute("DELETE FROM cp_api_tokens WHERE user_id = $1", &id)?;
            tx.execute("DELETE FROM cp_users WHERE id = $1", &id)
        })?;
        if n == 0 {
            return Err(BackendError::NotFound);
        }
        Ok(())
    }

    fn users(&self) -> BackendResult<Vec<User>> {
        self.read_all(
            &format!("SELECT {USER_COLS} FROM cp_users u ORDER BY u.username"),
            &[],
            |r| Ok(user_row(r)?.0),
        )
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
        let hash = token_hash(&token);
        self.db.with(|c| {
            c.execute(
                "DELETE FROM cp_sessions WHERE expires_at <= $1",
                &[Param::Int(ms(now))],
            )?;
            c.execute(
                "INSERT INTO cp_sessions (token_hash, user_id, kind, csrf, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    Param::Text(&hash),
                    Param::Int(user_id),
                    Param::Text(kind.as_str()),
                    Param::Text(&csrf),
                    Param::Int(ms(expires_at)),
                ],
            )
        })?;
        Ok(NewSession {
            token,
            csrf,
            expires_at,
        })
    }

    fn session(&self, token: &str, now: Timestamp) -> BackendResult<Option<Session>> {
        let hash = token_hash(token);
        self.read_one(
            &format!(
                "SELECT {USER_COLS}, s.kind, s.csrf, s.expires_at
                 FROM cp_sessions s JOIN cp_users u ON u.id = s.user_id
                 WHERE s.token_hash = $1 AND s.expires_at > $2"
            ),
            &[Param::Text(&hash), Param::Int(ms(now))],
            |r| {
                Ok(Session {
                    user: user_row(r)?.0,
                    kind: if r.text(5)? == "bearer" {
                        SessionKind::Bearer
                    } else {
                        SessionKind::Cookie
                    },
                    csrf: r.text(6)?,
                    expires_at: r.ts(7)?,
                })
            },
        )
    }

    fn delete_session(&self, token: &str) -> BackendResult<()> {
        self.execute(
            "DELETE FROM cp_sessions WHERE token_hash = $1",
            &[Param::Text(&token_hash(token))],
        )?;
        Ok(())
    }

    fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> BackendResult<()> {
        let keep = keep.map(token_hash).unwrap_or_default();
        self.execute(
            "DELETE FROM cp_sessions WHERE user_id = $1 AND token_hash <> $2",
            &[Param::Int(user_id), Param::Text(&keep)],
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
        let hash = token_hash(&secret);
        let joined = Scope::join(scopes);
        let insert = "INSERT INTO cp_api_tokens (user_id, name, token_hash, scopes, created_at,
                      expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        let id = self.db.with(|c| {
            c.execute(
                "DELETE FROM cp_api_tokens WHERE user_id = $1 AND expires_at <= $2",
                &[Param::Int(user_id), Param::Int(ms(now))],
            )?;
            let rows = c.query(
                insert,
                &[
                    Param::Int(user_id),
                    Param::Text(name),
                    Param::Text(&hash),
                    Param::Text(&joined),
                    Param::Int(ms(now)),
                    Param::Int(ms(expires_at)),
                ],
            )?;
            scalar(&rows, insert)
        })?;
        let token = ApiToken {
            id,
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            created_at: now,
            expires_at,
            last_used: None,
        };
        Ok((token, secret))
    }

    fn api_tokens(&self, user_id: i64) -> BackendResult<Vec<ApiToken>> {
        self.read_all(
            &format!("SELECT {TOKEN_COLS} FROM cp_api_tokens t WHERE t.user_id = $1 ORDER BY t.id"),
            &[Param::Int(user_id)],
            |r| token_row(r, 0),
        )
    }

    fn delete_api_token(&self, user_id: i64, id: i64) -> BackendResult<bool> {
        let n = self.execute(
            "DELETE FROM cp_api_tokens WHERE user_id = $1 AND id = $2",
            &[Param::Int(user_id), Param::Int(id)],
        )?;
        Ok(n > 0)
    }

    fn api_token(&self, secret: &str, now: Timestamp) -> BackendResult<Option<(User, ApiToken)>> {
        let hash = token_hash(secret);
        let found = self.read_one(
            &format!(
                "SELECT {USER_COLS}, {TOKEN_COLS}
                 FROM cp_api_tokens t JOIN cp_users u ON u.id = t.user_id
                 WHERE t.token_hash = $1 AND t.expires_at > $2"
            ),
            &[Param::Text(&hash), Param::Int(ms(now))],
            |r| Ok((user_row(r)?.0, token_row(r, 5)?)),
        )?;
        let Some((user, mut token)) = found else {
            return Ok(None);
        };
        if token
            .last_used
            .is_none_or(|t| ms(now) - ms(t) >= LAST_USED_EVERY_MS)
        {
            self.execute(
                "UPDATE cp_api_tokens SET last_used = $1 WHERE id = $2",
                &[Param::Int(ms(now)), Param::Int(token.id)],
            )?;
            token.last_used = Some(now);
        }
        Ok(Some((user, token)))
    }
}

impl<D: Db> Configs for SqlBackend<D> {
    fn current_config(&self) -> BackendResult<ConfigSnapshot> {
        let latest = self.snapshot(
            "SELECT version, created_at, author, config_json FROM cp_config_versions
             ORDER BY version DESC LIMIT 1",
            &[],
        )?;
        Ok(latest.unwrap_or_else(|| ConfigSnapshot {
            version: 0,
            config: Config::default(),
            created_at: Timestamp::from_millis(0),
            author: String::new(),
        }))
    }

    fn current_version(&self) -> BackendResult<u64> {
        let rows = self.db.read(CURRENT_VERSION, &[])?;
        Ok(from_db_int(scalar(&rows, CURRENT_VERSION)?))
    }

    fn config_at(&self, version: u64) -> BackendResult<Option<ConfigSnapshot>> {
        self.snapshot(
            "SELECT version, created_at, author, config_json FROM cp_config_versions
             WHERE version = $1",
            &[Param::Int(db_int(version))],
        )
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
        self.db.transaction(TxLock::Config, |tx| {
            let current = from_db_int(scalar(&tx.query(CURRENT_VERSION, &[])?, CURRENT_VERSION)?);
            if current != base {
                return Err(BackendError::Conflict { base, current });
            }
            let next = current + 1;
            tx.execute(
                "INSERT INTO cp_config_versions (version, created_at, author, config_json)
                 VALUES ($1, $2, $3, $4)",
                &[
                    Param::Int(db_int(next)),
                    Param::Int(ms(now)),
                    Param::Text(author),
                    Param::Text(&json),
                ],
            )?;
            Ok(next)
        })
    }
}

impl<D: Db> Deliveries for SqlBackend<D> {
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
            TxLock::None,
            "INSERT INTO cp_purges (customer, scope, target, requested_by, requested_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING seq",
            &[
                Param::Text(customer),
                Param::Text(scope.as_str()),
                Param::Text(target),
                Param::Text(requested_by),
                Param::Int(ms(now)),
            ],
            DeliveryKind::Purge.table(),
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
        self.read_one(
            &format!("SELECT {PURGE_COLS} FROM cp_purges p WHERE p.seq = $1"),
            &[Param::Int(db_int(seq))],
            purge_row,
        )
    }

    fn purges(
        &self,
        customer: Option<&str>,
        limit: u32,
        before: Option<u64>,
    ) -> BackendResult<Vec<Purge>> {
        self.read_all(
            &format!(
                "SELECT {PURGE_COLS} FROM cp_purges p
                 WHERE (CAST($1 AS TEXT) IS NULL OR p.customer = $1)
                   AND (CAST($3 AS BIGINT) IS NULL OR p.seq < CAST($3 AS BIGINT))
                 ORDER BY p.seq DESC LIMIT $2"
            ),
            &[
                opt_text(customer),
                Param::Int(i64::from(limit)),
                opt_int(before.map(db_int)),
            ],
            purge_row,
        )
    }

    fn purge_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        self.edge_status(DeliveryKind::Purge.table(), seq)
    }

    fn record_purge_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        self.record_attempt(DeliveryKind::Purge.table(), seq, edge, result, now)
    }

    fn pending_purges(&self, edge: &str) -> BackendResult<Vec<Purge>> {
        self.read_all(
            &format!(
                "SELECT {PURGE_COLS} FROM cp_purge_status s JOIN cp_purges p ON p.seq = s.seq
                 WHERE s.edge = $1 AND s.state = 'pending' ORDER BY p.seq"
            ),
            &[Param::Text(edge)],
            purge_row,
        )
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
            TxLock::None,
            "INSERT INTO cp_prefills (customer, urls_json, requested_by, requested_at)
             VALUES ($1, $2, $3, $4) RETURNING seq",
            &[
                Param::Text(customer),
                Param::Text(&json),
                Param::Text(requested_by),
                Param::Int(ms(now)),
            ],
            DeliveryKind::Prefill.table(),
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
        self.read_one(
            &format!("SELECT {PREFILL_COLS} FROM cp_prefills p WHERE p.seq = $1"),
            &[Param::Int(db_int(seq))],
            prefill_row,
        )
    }

    fn prefill_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        self.edge_status(DeliveryKind::Prefill.table(), seq)
    }

    fn record_prefill_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        self.record_attempt(DeliveryKind::Prefill.table(), seq, edge, result, now)
    }

    fn pending_prefills(&self, edge: &str) -> BackendResult<Vec<Prefill>> {
        self.read_all(
            &format!(
                "SELECT {PREFILL_COLS} FROM cp_prefill_status s JOIN cp_prefills p ON p.seq = s.seq
                 WHERE s.edge = $1 AND s.state = 'pending' ORDER BY p.seq"
            ),
            &[Param::Text(edge)],
            prefill_row,
        )
    }

    fn create_live_event(
        &self,
        ev: &LiveEvent,
        edges: &[String],
        max_open: u32,
        now: Timestamp,
    ) -> BackendResult<Option<LiveEvent>> {
        let open_sql = "SELECT COUNT(*) FROM cp_live_events
                        WHERE customer = $1 AND COALESCE(ends_at, starts_at + $2) > $3";
        let insert = "INSERT INTO cp_live_events (customer, hostname, playlist_url, starts_at,
                      ends_at, max_segments, created_by, created_at)
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
        let add = format!("INSERT INTO {LIVE_STATUS} (seq, edge) VALUES ($1, $2)");
        let id = self.db.transaction(TxLock::LiveEvents, |tx| {
            let open = scalar(
                &tx.query(
                    open_sql,
                    &[
                        Param::Text(&ev.customer),
                        Param::Int(db_int(LiveEvent::DEFAULT_DURATION_MS)),
                        Param::Int(ms(now)),
                    ],
                )?,
                open_sql,
            )?;
            if open >= i64::from(max_open) {
                return Ok(None);
            }
            let rows = tx.query(
                insert,
                &[
                    Param::Text(&ev.customer),
                    Param::Text(&ev.hostname),
                    Param::Text(&ev.playlist_url),
                    Param::Int(ms(ev.starts_at)),
                    opt_int(ev.ends_at.map(ms)),
                    Param::Int(i64::from(ev.max_segments)),
                    Param::Text(&ev.created_by),
                    Param::Int(ms(ev.created_at)),
                ],
            )?;
            let id = scalar(&rows, insert)?;
            for e in edges {
                tx.execute(&add, &[Param::Int(id), Param::Text(e)])?;
            }
            Ok(Some(id))
        })?;
        Ok(id.map(|id| LiveEvent {
            id: from_db_int(id),
            ..ev.clone()
        }))
    }

    fn live_events(&self, customer: Option<&str>, limit: u32) -> BackendResult<Vec<LiveEvent>> {
        self.read_all(
            &format!(
                "SELECT {LIVE_COLS} FROM cp_live_events e
                 WHERE (CAST($1 AS TEXT) IS NULL OR e.customer = $1)
                 ORDER BY e.starts_at DESC, e.id DESC LIMIT $2"
            ),
            &[opt_text(customer), Param::Int(i64::from(limit))],
            live_row,
        )
    }

    fn live_event_status(&self, id: u64) -> BackendResult<Vec<PurgeEdgeStatus>> {
        self.edge_status(LIVE_STATUS, id)
    }

    fn due_live_events(
        &self,
        edge: &str,
        now: Timestamp,
        lead_ms: u64,
        max_attempts: u32,
    ) -> BackendResult<Vec<LiveEvent>> {
        self.read_all(
            &format!(
                "SELECT {LIVE_COLS} FROM {LIVE_STATUS} s JOIN cp_live_events e ON e.id = s.seq
                 WHERE s.edge = $1 AND s.state = 'pending' AND s.attempts < $2
                   AND e.starts_at <= CAST($3 AS BIGINT) + CAST($4 AS BIGINT)
                   AND COALESCE(e.ends_at, e.starts_at + CAST($5 AS BIGINT)) > CAST($3 AS BIGINT)
                 ORDER BY e.starts_at, e.id LIMIT 100"
            ),
            &[
                Param::Text(edge),
                Param::Int(i64::from(max_attempts)),
                Param::Int(ms(now)),
                Param::Int(db_int(lead_ms)),
                Param::Int(db_int(LiveEvent::DEFAULT_DURATION_MS)),
            ],
            live_row,
        )
    }

    fn record_live_prefill(
        &self,
        id: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()> {
        self.record_attempt(LIVE_STATUS, id, edge, result, now)
    }

    fn fail_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        edge: &str,
        reason: &str,
        _now: Timestamp,
    ) -> BackendResult<()> {
        self.execute(
            &format!(
                "UPDATE {} SET state = 'failed', attempts = attempts + 1, last_error = $3
                 WHERE seq = $1 AND edge = $2 AND state = 'pending'",
                kind.table()
            ),
            &[
                Param::Int(db_int(seq)),
                Param::Text(edge),
                Param::Text(reason),
            ],
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
        self.execute(
            &format!(
                "UPDATE {} SET state = 'cancelled', last_error = $2
                 WHERE seq = $1 AND state = 'pending'",
                kind.table()
            ),
            &[Param::Int(db_int(seq)), Param::Text(&why)],
        )
    }
}

impl<D: Db> Traffic for SqlBackend<D> {
    fn cdn_traffic(&self, w: Window<'_>) -> BackendResult<Vec<TrafficPoint>> {
        self.read_all(
            &format!(
                "SELECT minute / CAST($5 AS BIGINT) * CAST($5 AS BIGINT) AS b,
                        CAST(SUM(bytes) AS BIGINT), CAST(SUM(hits) AS BIGINT)
                 FROM cp_cdn_traffic_minute WHERE {WINDOW_FILTER} GROUP BY b ORDER BY b"
            ),
            &window_args(&w),
            |r| {
                Ok(TrafficPoint {
                    minute: r.ts(0)?,
                    bytes: r.count(1)?,
                    hits: r.count(2)?,
                })
            },
        )
    }

    fn cdn_traffic_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationTraffic>> {
        self.read_all(
            &format!(
                "SELECT pop, CAST(SUM(bytes) AS BIGINT), CAST(SUM(hits) AS BIGINT)
                 FROM cp_cdn_traffic_minute WHERE {WINDOW_FILTER} AND CAST($5 AS BIGINT) > 0
                 GROUP BY pop ORDER BY pop"
            ),
            &window_args(&w),
            |r| {
                Ok(LocationTraffic {
                    pop: r.text(0)?,
                    bytes: r.count(1)?,
                    hits: r.count(2)?,
                })
            },
        )
    }

    fn gtm_answers(&self, w: Window<'_>) -> BackendResult<Vec<AnswerPoint>> {
        self.read_all(
            &format!(
                "SELECT minute / CAST($5 AS BIGINT) * CAST($5 AS BIGINT) AS b, hostname, address,
                        CAST(SUM(answers) AS BIGINT)
                 FROM cp_gtm_answers_minute WHERE {WINDOW_FILTER}
                 GROUP BY b, hostname, address ORDER BY b, hostname, address"
            ),
            &window_args(&w),
            |r| {
                Ok(AnswerPoint {
                    minute: r.ts(0)?,
                    hostname: r.text(1)?,
                    address: r.text(2)?,
                    answers: r.count(3)?,
                })
            },
        )
    }

    fn gtm_answers_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationAnswers>> {
        self.read_all(
            &format!(
                "SELECT pop, address, CAST(SUM(answers) AS BIGINT)
                 FROM cp_gtm_answers_minute WHERE {WINDOW_FILTER} AND CAST($5 AS BIGINT) > 0
                 GROUP BY pop, address ORDER BY pop, address"
            ),
            &window_args(&w),
            |r| {
                Ok(LocationAnswers {
                    pop: r.text(0)?,
                    address: r.text(1)?,
                    answers: r.count(2)?,
                })
            },
        )
    }
}

impl<D: Db> Billing for SqlBackend<D> {
    fn invoices(&self, customer: Option<&str>) -> BackendResult<Vec<InvoiceSummary>> {
        self.read_all(
            &format!(
                "SELECT {INVOICE_COLS} FROM cp_invoices
                 WHERE (CAST($1 AS TEXT) IS NULL OR customer = $1) ORDER BY issued_at DESC, id DESC"
            ),
            &[opt_text(customer)],
            invoice_row,
        )
    }

    fn invoice(&self, id: i64) -> BackendResult<Option<Invoice>> {
        self.read_one(
            &format!("SELECT {INVOICE_COLS}, html FROM cp_invoices WHERE id = $1"),
            &[Param::Int(id)],
            |r| {
                Ok(Invoice {
                    summary: invoice_row(r)?,
                    html: r.text(8)?,
                })
            },
        )
    }
}

impl<D: Db> ControlTables for SqlBackend<D> {
    fn record_cdn_traffic(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        minute: Timestamp,
        bytes: u64,
        hits: u64,
    ) -> BackendResult<()> {
        self.execute(
            "INSERT INTO cp_cdn_traffic_minute (customer, hostname, pop, minute, bytes, hits)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Param::Text(customer),
                Param::Text(hostname),
                Param::Text(pop),
                Param::Int(ms(minute)),
                Param::Int(db_int(bytes)),
                Param::Int(db_int(hits)),
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
        self.execute(
            "INSERT INTO cp_gtm_answers_minute (customer, hostname, pop, address, minute, answers)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Param::Text(customer),
                Param::Text(hostname),
                Param::Text(pop),
                Param::Text(address),
                Param::Int(ms(minute)),
                Param::Int(db_int(answers)),
            ],
        )?;
        Ok(())
    }

    fn insert_invoice(&self, summary: &InvoiceSummary, html: &str) -> BackendResult<i64> {
        let total = summary.total.to_string();
        self.insert(
            "INSERT INTO cp_invoices (number, customer, period_start, period_end, total,
                                      currency, issued_at, html)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                Param::Text(&summary.number),
                Param::Text(&summary.customer),
                Param::Int(ms(summary.period_start)),
                Param::Int(ms(summary.period_end)),
                Param::Text(&total),
                Param::Text(&summary.currency),
                Param::Int(ms(summary.issued_at)),
                Param::Text(html),
            ],
        )
        .map_err(|e| duplicate(e, &summary.number))
    }
}
