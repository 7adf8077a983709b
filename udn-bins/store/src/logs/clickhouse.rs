//! The ClickHouse store: the log store's analytics at scale (`udn control --clickhouse
//! URL`). Same tables, columns and queries as SQLite and PostgreSQL; the control plane
//! and billing keep their own tables in SQLite or PostgreSQL.
//!
//! - **Schema.** Translated from the portable [`super::MIGRATIONS`] ([`translate`]):
//!   `BIGINT` → `Int64`, `TEXT` → `String` (`Nullable(String)` where the column may be
//!   NULL), `DOUBLE PRECISION` → `Float64`; every table is a `MergeTree` ordered by
//!   customer, hostname and time (where it has them) and then the rest of its primary
//!   key, partitioned by the day of its time column (per-minute tables and raw records)
//!   or by the month (hourly and daily rollups, per-file usage). Each data row carries
//!   the `load_id` of the ingestion that wrote it. Applied versions are kept in
//!   `udn_log_schema_history`.
//! - **Rows, not upserts.** A rollup row is written per file and key; every query sums
//!   (`SUM ... GROUP BY`), so partial rows of many files add up as the upserts of the
//!   other stores do. Inserts are batched per table over the HTTP interface in
//!   `JSONEachRow`.
//! - **Exactly once per file, without transactions.** The ledger row (`log_files`) is
//!   written last. Before its rows, an ingestion records an attempt (`ingest_attempts`:
//!   file id, load id, the server's clock); it goes on only if no other live attempt of
//!   that file exists (two collectors racing both back off: the distributors retry), and
//!   the rows of an attempt that never reached the ledger (a crash, a failed insert) are
//!   deleted by their `load_id` before the file is tried again. An attempt renews itself
//!   after every insert; it is taken for dead once not renewed for [`STALE_ATTEMPT_MS`]
//!   by the server's clock, or at once when it is this process's own failure.
//! - **Retention** drops whole partitions before the cutoff and deletes the rest of the
//!   cutoff's partition with `ALTER TABLE ... DELETE` (a mutation, waited for).
//!
//! Written for ClickHouse 18.16 (Debian 12's package) and current releases alike: no
//! positional `ORDER BY`, no `JOIN ... ON`, integer division spelled with `%` in the
//! shared queries, parameters substituted as escaped literals (18.16 has no query
//! parameters over HTTP), `output_format_json_quote_64bit_integers=0`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::time::{Duration, Instant};

use super::{Cell, Error, Grain, Ingested, Param, PreparedFile, Result, Rollups, Store, to_i64};
use serde_json::{Map, Value, json};
use udn_core::Timestamp;
use udn_core::log::LogRecord;

/// An attempt not renewed for this long (by the server's clock) with no ledger row is
/// taken for a crashed ingestion and its rows are deleted: a file cut by a crash is stored again
/// about a minute later.
pub const STALE_ATTEMPT_MS: i64 = 60_000;
/// An ingestion renews its attempt after every insert; it gives up (withdrawing its rows)
/// rather than renew it or write its ledger row once the last renewal is older than
/// this, half [`STALE_ATTEMPT_MS`], so that no other collector can have taken it for
/// dead.
pub const MAX_INGEST_MS: i64 = STALE_ATTEMPT_MS / 2;
/// Time limit of one HTTP request to ClickHouse.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit of the request that writes a ledger row (well under the margin between
/// [`MAX_INGEST_MS`] and [`STALE_ATTEMPT_MS`]).
const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pruning or clean-up mutation is waited for.
const MUTATION_WAIT: Duration = Duration::from_secs(120);
/// Rows per `INSERT` request.
const INSERT_BATCH: usize = 50_000;
/// Bytes of an answer read at most (query results are bounded by the queries' own
/// limits; this guards against a misbehaving server).
const MAX_ANSWER: u64 = 256 << 20;

/// The tables only the ClickHouse store has.
const OWN_TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS ingest_attempts (file_id String, load_id String, \
     started_at Int64) ENGINE = MergeTree() ORDER BY (file_id, load_id)",
    "CREATE TABLE IF NOT EXISTS udn_log_schema_history (version UInt32, name String, \
     applied_at Int64) ENGINE = MergeTree() ORDER BY version",
];

/// A table of the translated schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its name.
    pub name: String,
    /// Its time column (`ts` or `minute`), if any.
    pub time: Option<String>,
    /// The `CREATE TABLE IF NOT EXISTS` statement.
    pub create: String,
}

/// Translates one migration step's portable SQL into ClickHouse tables. `CREATE INDEX`
/// and back-filling `INSERT`s are left out (a ClickHouse store starts empty, and its
/// sorting key serves as the index).
pub fn translate(sql: &str) -> Result<Vec<Table>> {
    let bad = |what: &str| Error::ClickHouse(format!("schema translation: {what}"));
    let mut out = Vec::new();
    for stmt in sql.split(';') {
        let stmt = stmt.trim();
        let Some(rest) = stmt.strip_prefix("CREATE TABLE ") else {
            continue;
        };
        let (name, body) = rest.split_once('(').ok_or_else(|| bad(stmt))?;
        let name = name.trim().to_owned();
        let body = body.trim_end().strip_suffix(')').ok_or_else(|| bad(stmt))?;
        let mut cols: Vec<(String, String)> = Vec::new();
        let mut pk: Vec<String> = Vec::new();
        for item in split_top(body) {
            let item = item.trim();
            if let Some(k) = item.strip_prefix("PRIMARY KEY") {
                let k = k.trim().trim_start_matches('(').trim_end_matches(')');
                pk = k.split(',').map(|c| c.trim().to_owned()).collect();
                continue;
            }
            let mut words = item.split_whitespace();
            let col = words.next().ok_or_else(|| bad(item))?.to_owned();
            let ty = match words.next() {
                Some("BIGINT") => "Int64",
                Some("TEXT") => "String",
                Some("DOUBLE") => "Float64",
                _ => return Err(bad(item)),
            };
            if item.contains("PRIMARY KEY") {
                pk = vec![col.clone()];
            }
            let ty = if item.contains("NOT NULL") || item.contains("PRIMARY KEY") {
                ty.to_owned()
            } else {
                format!("Nullable({ty})")
            };
            cols.push((col, ty));
        }
        let nullable = |c: &str| {
            cols.iter()
                .any(|(n, t)| n == c && t.starts_with("Nullable"))
        };
        let has = |c: &str| cols.iter().any(|(n, _)| n == c);
        let time = ["minute", "ts"].into_iter().find(|c| has(c));
        let mut key: Vec<String> = ["customer", "host", "hostname"]
            .into_iter()
            .filter(|c| has(c) && !nullable(c))
            .map(str::to_owned)
            .collect();
        key.extend(time.map(str::to_owned));
        for c in &pk {
            if !key.contains(c) {
                key.push(c.clone());
            }
        }
        if key.is_empty() {
            return Err(bad(&format!("{name}: no sorting key")));
        }
        let mut defs: Vec<String> = cols.iter().map(|(c, t)| format!("{c} {t}")).collect();
        defs.push("load_id String".into());
        let mut create = format!(
            "CREATE TABLE IF NOT EXISTS {name} ({}) ENGINE = MergeTree()",
            defs.join(", ")
        );
        if let Some(t) = time {
            let coarse = name.ends_with("_hour") || name.ends_with("_day") || name == "usage_file";
            let f = if coarse { "toYYYYMM" } else { "toYYYYMMDD" };
            create.push_str(&format!(" PARTITION BY {f}(toDateTime(intDiv({t}, 1000)))"));
        }
        create.push_str(&format!(" ORDER BY ({})", key.join(", ")));
        out.push(Table {
            name,
            time: time.map(str::to_owned),
            create,
        });
    }
    Ok(out)
}

/// Splits a column list at its top-level commas.
fn split_top(body: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, ch) in body.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&body[start..]);
    out.retain(|s| !s.trim().is_empty());
    out
}

/// A string as a ClickHouse literal.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for ch in s.chars() {
        match ch {
            '\\' => q.push_str("\\\\"),
            '\'' => q.push_str("\\'"),
            '\0' => q.push_str("\\0"),
            c => q.push(c),
        }
    }
    q.push('\'');
    q
}

/// `sql` with `$1`, `$2`... replaced by the parameters as literals.
pub fn bind(sql: &str, params: &[Param<'_>]) -> Result<String> {
    let mut out = String::with_capacity(sql.len() + 16 * params.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, ch)) = chars.next() {
        if ch != '$' {
            out.push(ch);
            continue;
        }
        let mut n = 0usize;
        let mut digits = 0;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            n = n.saturating_mul(10).saturating_add(v as usize);
            digits += 1;
            chars.next();
        }
        if digits == 0 {
            out.push('$');
            continue;
        }
        match n.checked_sub(1).and_then(|i| params.get(i)) {
            Some(Param::Int(v)) if *v < 0 => out.push_str(&format!("({v})")),
            Some(Param::Int(v)) => out.push_str(&v.to_string()),
            Some(Param::Text(s)) => out.push_str(&quote(s)),
            Some(Param::Null) => out.push_str("NULL"),
            None => {
                return Err(Error::ClickHouse(format!(
                    "query parameter ${n} not given ({} given)",
                    params.len()
                )));
            }
        }
    }
    Ok(out)
}

/// Where a ClickHouse store is: the HTTP interface's base URL, the database and the
/// user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port` (or `https://`).
    pub base: String,
    /// The database (created if missing).
    pub database: String,
    /// User and password, if given.
    pub user: Option<(String, String)>,
}

impl Target {
    /// Parses `http[s]://[user[:password]@]host:port[/database]`. The database defaults
    /// to `udn`; the password may instead come from `UDN_CLICKHOUSE_PASSWORD` (so it
    /// stays out of the process list).
    pub fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| Error::ClickHouse(format!("--clickhouse URL: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected http://host:port[/database]"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if path.contains('?') || path.contains('/') {
            return Err(bad("the path is the database name alone"));
        }
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let database = if path.is_empty() { "udn" } else { path };
        if database.len() > 64
            || !database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad("the database name may hold letters, digits and _ only"));
        }
        let user = userinfo.map(|u| {
            let (name, pass) = u.split_once(':').unwrap_or((u, ""));
            let pass = if pass.is_empty() {
                std::env::var("UDN_CLICKHOUSE_PASSWORD").unwrap_or_default()
            } else {
                pass.to_owned()
            };
            (name.to_owned(), pass)
        });
        Ok(Target {
            base: format!("{scheme}://{host}"),
            database: database.to_owned(),
            user,
        })
    }
}

/// The ClickHouse store.
pub struct ClickHouseStore {
    agent: ureq::Agent,
    target: Target,
    /// Every data table (the translated schema less the ledger), with its time column.
    tables: Vec<Table>,
    /// Load ids of this process's failed attempts whose rows are still to be deleted,
    /// by file id.
    abandoned: HashMap<String, Vec<String>>,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("base", &self.target.base)
            .field("database", &self.target.database)
            .finish_non_exhaustive()
    }
}

impl ClickHouseStore {
    /// Connects to the ClickHouse HTTP interface at `url` (see [`Target::parse`]),
    /// creates the database if needed and applies the schema.
    pub fn connect(url: &str) -> Result<ClickHouseStore> {
        let target = Target::parse(url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut tables = Vec::new();
        for step in super::MIGRATIONS {
            tables.extend(translate(step.sql)?);
        }
        let mut store = ClickHouseStore {
            agent,
            target,
            tables,
            abandoned: HashMap::new(),
        };
        store.migrate()?;
        // The ledger is what a clean-up checks, never what it deletes.
        store.tables.retain(|t| t.name != "log_files");
        Ok(store)
    }

    /// Sends one statement (`sql`, with `data` as the body of an `INSERT`), answering
    /// the response body.
    fn send(&self, sql: &str, data: Option<&str>, in_db: bool) -> Result<String> {
        self.send_within(sql, data, in_db, REQUEST_TIMEOUT)
    }

    fn send_within(
        &self,
        sql: &str,
        data: Option<&str>,
        in_db: bool,
        timeout: Duration,
    ) -> Result<String> {
        let mut req = self
            .agent
            .post(format!("{}/", self.target.base))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .query("output_format_json_quote_64bit_integers", "0");
        if in_db {
            req = req.query("database", &self.target.database);
        }
        if let Some((u, p)) = &self.target.user {
            req = req
                .header("X-ClickHouse-User", u)
                .header("X-ClickHouse-Key", p);
        }
        let body = match data {
            Some(d) => {
                req = req.query("query", sql);
                d
            }
            None => sql,
        };
        let mut resp = req
            .send(body)
            .map_err(|e| Error::ClickHouse(format!("{}: {e}", self.target.base)))?;
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_ANSWER)
            .read_to_string(&mut text)
            .map_err(|e| Error::ClickHouse(format!("reading the answer: {e}")))?;
        if status != 200 {
            let first = text.lines().next().unwrap_or("").trim();
            let first: String = first.chars().take(300).collect();
            let what: String = sql.chars().take(60).collect();
            return Err(Error::ClickHouse(format!(
                "HTTP {status} for {what:?}: {first}"
            )));
        }
        Ok(text)
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.send(sql, None, true).map(drop)
    }

    fn migrate(&mut self) -> Result<()> {
        self.send(
            &format!("CREATE DATABASE IF NOT EXISTS {}", self.target.database),
            None,
            false,
        )?;
        for sql in OWN_TABLES {
            self.exec(sql)?;
        }
        let applied: Vec<i64> = self
            .query("SELECT DISTINCT version FROM udn_log_schema_history", &[])?
            .iter()
            .filter_map(|r| match r.first() {
                Some(Cell::Int(v)) => Some(*v),
                _ => None,
            })
            .collect();
        for step in super::MIGRATIONS {
            if applied.contains(&i64::from(step.version)) {
                continue;
            }
            // `IF NOT EXISTS`: collectors starting at once may both apply a step.
            for t in translate(step.sql)? {
                self.exec(&t.create)?;
            }
            self.exec(&bind(
                "INSERT INTO udn_log_schema_history (version, name, applied_at) \
                 SELECT $1, $2, toInt64(now()) * 1000",
                &[Param::Int(i64::from(step.version)), Param::Text(step.name)],
            )?)?;
        }
        Ok(())
    }

    /// Runs a query, answering its rows.
    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Cell>>> {
        let bound = bind(sql, params)?;
        let text = self.send(&format!("{bound} FORMAT JSONCompact"), None, true)?;
        parse_answer(&text, sql)
    }

    /// Records that the attempt `load_id` at `file_id` is alive now (by the server's
    /// clock): an attempt's age is that of its latest such row.
    /// Only while it is still ours: its latest heartbeat at most [`MAX_INGEST_MS`] old,
    /// so no other collector can have taken it for dead (and withdrawn its rows).
    fn heartbeat(&self, file_id: &str, load_id: &str) -> Result<()> {
        self.still_ours(file_id, load_id)?;
        self.exec(&bind(
            "INSERT INTO ingest_attempts (file_id, load_id, started_at) \
             SELECT $1, $2, toInt64(now()) * 1000",
            &[Param::Text(file_id), Param::Text(load_id)],
        )?)
    }

    /// Fails unless the attempt's latest heartbeat is at most [`MAX_INGEST_MS`] old.
    fn still_ours(&self, file_id: &str, load_id: &str) -> Result<()> {
        let age = self.query(
            "SELECT toInt64(now()) * 1000 - MAX(started_at), COUNT(*) FROM ingest_attempts \
             WHERE load_id = $1",
            &[Param::Text(load_id)],
        )?;
        match age.first().map(|r| (r.first(), r.get(1))) {
            Some((Some(Cell::Int(a)), Some(Cell::Int(n)))) if *n > 0 && *a <= MAX_INGEST_MS => {
                Ok(())
            }
            _ => Err(Error::ClickHouse(format!(
                "storing log file {file_id} stalled over {} s; its rows are withdrawn, try again",
                MAX_INGEST_MS / 1000
            ))),
        }
    }

    /// Inserts rows (JSON objects) into `table`, in batches, with a heartbeat of the
    /// attempt `alive` (file id, load id) after each.
    fn insert(&self, table: &str, rows: &[Value], alive: (&str, &str)) -> Result<()> {
        for chunk in rows.chunks(INSERT_BATCH) {
            let mut body = String::new();
            for r in chunk {
                body.push_str(&r.to_string());
                body.push('\n');
            }
            self.send(
                &format!("INSERT INTO {table} FORMAT JSONEachRow"),
                Some(&body),
                true,
            )?;
            self.heartbeat(alive.0, alive.1)?;
        }
        Ok(())
    }

    /// The ledger's checksum and row count of `file_id`.
    fn ledger(&self, file_id: &str) -> Result<Option<(String, i64)>> {
        let sql = "SELECT checksum, rows FROM log_files WHERE file_id = $1 LIMIT 1";
        let rows = self.query(sql, &[Param::Text(file_id)])?;
        Ok(rows.first().map(|r| {
            let checksum = match r.first() {
                Some(Cell::Text(s)) => s.clone(),
                _ => String::new(),
            };
            let n = match r.get(1) {
                Some(Cell::Int(v)) => *v,
                _ => 0,
            };
            (checksum, n)
        }))
    }

    /// The attempts at `file_id`: `(load_id, stale)`.
    fn attempts(&self, file_id: &str) -> Result<Vec<(String, bool)>> {
        let sql = format!(
            "SELECT load_id, MAX(started_at) < toInt64(now()) * 1000 - {STALE_ATTEMPT_MS} \
             FROM ingest_attempts WHERE file_id = $1 GROUP BY load_id"
        );
        Ok(self
            .query(&sql, &[Param::Text(file_id)])?
            .into_iter()
            .filter_map(|r| match (r.first(), r.get(1)) {
                (Some(Cell::Text(l)), Some(Cell::Int(s))) => Some((l.clone(), *s != 0)),
                _ => None,
            })
            .collect())
    }

    /// Deletes every row the given loads wrote, and their attempts, and waits until done.
    fn delete_loads(&self, loads: &[String]) -> Result<()> {
        if loads.is_empty() {
            return Ok(());
        }
        let list = loads
            .iter()
            .map(|l| quote(l))
            .collect::<Vec<_>>()
            .join(", ");
        for t in &self.tables {
            self.exec(&format!(
                "ALTER TABLE {} DELETE WHERE load_id IN ({list})",
                t.name
            ))?;
        }
        self.exec(&format!(
            "ALTER TABLE ingest_attempts DELETE WHERE load_id IN ({list})"
        ))?;
        self.wait_mutations()
    }

    /// Waits until every mutation of the database has finished.
    fn wait_mutations(&self) -> Result<()> {
        let deadline = Instant::now() + MUTATION_WAIT;
        let sql = "SELECT COUNT(*) FROM system.mutations WHERE database = $1 AND is_done = 0";
        loop {
            let rows = self.query(sql, &[Param::Text(&self.target.database)])?;
            if matches!(rows.first().and_then(|r| r.first()), Some(Cell::Int(0))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::ClickHouse(format!(
                    "mutations of {} still running after {} s",
                    self.target.database,
                    MUTATION_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes the rows of `table` whose `col` is before `t`: whole partitions dropped,
    /// the rest by a mutation. Answers the rows deleted.
    fn delete_before(&self, table: &str, col: &str, t: i64) -> Result<u64> {
        let count = format!("SELECT COUNT(*) FROM {table} WHERE {col} < $1");
        let n = match self
            .query(&count, &[Param::Int(t)])?
            .first()
            .and_then(|r| r.first())
        {
            Some(Cell::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        if n == 0 {
            return Ok(0);
        }
        let monthly = table.ends_with("_hour") || table.ends_with("_day");
        let f = if monthly { "toYYYYMM" } else { "toYYYYMMDD" };
        let parts = format!(
            "SELECT DISTINCT partition FROM system.parts WHERE database = $1 AND table = $2 \
             AND active AND partition < toString({f}(toDateTime(intDiv($3, 1000))))"
        );
        let old = self.query(
            &parts,
            &[
                Param::Text(&self.target.database),
                Param::Text(table),
                Param::Int(t),
            ],
        )?;
        for r in old {
            // The partition's value (a `UInt32` day or month), digits only.
            if let Some(Cell::Text(p)) = r.first()
                && !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
            {
                self.exec(&format!("ALTER TABLE {table} DROP PARTITION {p}"))?;
            }
        }
        let rest = self.query(&count, &[Param::Int(t)])?;
        if !matches!(rest.first().and_then(|r| r.first()), Some(Cell::Int(0))) {
            self.exec(&bind(
                &format!("ALTER TABLE {table} DELETE WHERE {col} < $1"),
                &[Param::Int(t)],
            )?)?;
            self.wait_mutations()?;
        }
        Ok(n)
    }

    /// Writes every row of `file` under `load_id` (the ledger row excepted).
    fn write_rows(&self, file: &PreparedFile, load_id: &str, received_at: i64) -> Result<()> {
        let mut batches: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut push = |table: &str, mut row: Map<String, Value>| {
            row.insert("load_id".into(), Value::from(load_id));
            batches
                .entry(table.to_owned())
                .or_default()
                .push(Value::Object(row));
        };
        for rec in &file.records {
            let row = match rec {
                LogRecord::Http(r) => (
                    "raw_http",
                    json!({"ts": to_i64(r.ts.as_millis()), "customer": r.customer,
                           "host": r.host, "path": r.path, "method": r.method,
                           "status": r.status, "bytes": to_i64(r.bytes),
                           "fill_bytes": to_i64(r.fill_bytes), "outcome": r.outcome,
                           "duration_us": to_i64(r.duration_us),
                           "client": r.client.to_string(), "pop": r.pop}),
                ),
                LogRecord::Dns(r) => (
                    "raw_dns",
                    json!({"ts": to_i64(r.ts.as_millis()), "hostname": r.hostname,
                           "qtype": r.qtype, "client": r.client.to_string(),
                           "ecs": r.ecs.map(|c| c.to_string()),
                           "addrs": super::sqlite::join_addrs(&r.addrs),
                           "reason": r.reason, "pop": r.pop, "customer": r.customer,
                           "server": r.server}),
                ),
                LogRecord::Probe(r) => (
                    "raw_probe",
                    json!({"ts": to_i64(r.ts.as_millis()), "pop": r.pop, "kind": r.kind,
                           "target": r.target, "method": r.method, "ok": i64::from(r.ok),
                           "value": r.value, "detail": r.detail}),
                ),
                // Operational records are kept as rollups only (`ops::write`).
                LogRecord::Ops(_) => continue,
            };
            if let (t, Value::Object(m)) = row {
                push(t, m);
            }
        }
        for (grain, roll) in file.rollups_by_grain() {
            for (t, m) in rollup_rows(roll, grain) {
                push(&t, m);
            }
        }
        for ((customer, minute, pop), u) in super::file_usage(&file.rollups) {
            if let Value::Object(m) = json!({"file_id": file.header.file_id,
                "customer": customer, "minute": minute, "pop": pop, "requests": u[0],
                "bytes": u[1], "fill_bytes": u[2], "dns_queries": u[3],
                "received_at": received_at})
            {
                push("usage_file", m);
            }
        }
        let mut statement = |sql: &str, p: &[Param<'_>]| -> Result<()> {
            for (t, m) in values_rows(sql, p)? {
                push(&t, m);
            }
            Ok(())
        };
        super::stream::write(&file.streams, &mut statement)?;
        super::ops::write(&file.ops, &mut statement)?;
        super::quality::write(&file.quality, &mut statement)?;
        for (table, rows) in &batches {
            self.insert(table, rows, (&file.header.file_id, load_id))?;
        }
        Ok(())
    }
}

/// The rows of one grain's rollups: `(table, row)`.
fn rollup_rows(roll: &Rollups, grain: Grain) -> Vec<(String, Map<String, Value>)> {
    let sfx = grain.suffix();
    let mut out = Vec::new();
    let mut add = |t: &str, v: Value| {
        if let Value::Object(m) = v {
            out.push((format!("{t}{sfx}"), m));
        }
    };
    for (k, a) in &roll.http {
        add(
            "rollup_http",
            json!({"minute": k.minute, "customer": k.customer, "host": k.host, "pop": k.pop,
                   "requests": a.requests, "bytes": a.bytes, "fill_bytes": a.fill_bytes,
                   "s1xx": a.status[0], "s2xx": a.status[1], "s3xx": a.status[2],
                   "s4xx": a.status[3], "s5xx": a.status[4], "hits": a.hits,
                   "misses": a.misses, "stale": a.stale, "revalidated": a.revalidated,
                   "bypass": a.bypass, "duration_us": a.duration_us}),
        );
    }
    for (k, n) in &roll.dns {
        add(
            "rollup_dns",
            json!({"minute": k.minute, "customer": k.customer, "hostname": k.hostname,
                   "pop": k.pop, "reason": k.reason, "queries": n}),
        );
    }
    for (k, n) in &roll.answers {
        add(
            "rollup_dns_answer",
            json!({"minute": k.minute, "hostname": k.hostname, "address": k.address,
                   "pop": k.pop, "answers": n}),
        );
    }
    for (k, a) in &roll.probe {
        add(
            "rollup_probe",
            json!({"minute": k.minute, "pop": k.pop, "kind": k.kind, "method": k.method,
                   "samples": a.samples, "ok": a.ok, "value_sum": a.value_sum}),
        );
    }
    out
}

/// The rows of a portable multi-row `INSERT INTO table (cols) VALUES ($1, ...), ...`
/// statement (what the streaming, operational and quality writers emit; their
/// `ON CONFLICT` tail is the other stores' upsert, here rows that queries sum).
fn values_rows(sql: &str, params: &[Param<'_>]) -> Result<Vec<(String, Map<String, Value>)>> {
    let bad = || {
        Error::ClickHouse(format!(
            "unexpected statement {:?}",
            sql.chars().take(60).collect::<String>()
        ))
    };
    let rest = sql.strip_prefix("INSERT INTO ").ok_or_else(bad)?;
    let (table, rest) = rest.split_once(" (").ok_or_else(bad)?;
    let (cols, _) = rest.split_once(") VALUES").ok_or_else(bad)?;
    let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
    if cols.is_empty() || !params.len().is_multiple_of(cols.len()) {
        return Err(bad());
    }
    Ok(params
        .chunks(cols.len())
        .map(|row| {
            let m = cols
                .iter()
                .zip(row)
                .map(|(c, p)| {
                    let v = match p {
                        Param::Int(i) => Value::from(*i),
                        Param::Text(s) => Value::from(*s),
                        Param::Null => Value::Null,
                    };
                    ((*c).to_owned(), v)
                })
                .collect();
            (table.to_owned(), m)
        })
        .collect())
}

/// The rows of a `FORMAT JSONCompact` answer, typed by its `meta`.
fn parse_answer(text: &str, sql: &str) -> Result<Vec<Vec<Cell>>> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "type")]
        ty: String,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        meta: Vec<Meta>,
        data: Vec<Vec<Value>>,
    }
    let a: Answer = serde_json::from_str(text)
        .map_err(|e| Error::ClickHouse(format!("unreadable answer: {e}")))?;
    let col_err = |index: usize| Error::ColumnType {
        index,
        query: sql.chars().take(60).collect(),
    };
    let mut out = Vec::with_capacity(a.data.len());
    for row in a.data {
        let mut cells = Vec::with_capacity(row.len());
        for (i, v) in row.into_iter().enumerate() {
            let ty = a
                .meta
                .get(i)
                .map(|m| m.ty.as_str())
                .ok_or_else(|| col_err(i))?;
            let ty = ty
                .strip_prefix("Nullable(")
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or(ty);
            let cell = match v {
                Value::Null => Cell::Null,
                v if ty.starts_with("Int") || ty.starts_with("UInt") => match v {
                    Value::Number(n) => Cell::Int(
                        n.as_i64()
                            .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
                            .ok_or_else(|| col_err(i))?,
                    ),
                    Value::String(s) => Cell::Int(s.parse().map_err(|_| col_err(i))?),
                    _ => return Err(col_err(i)),
                },
                v if ty.starts_with("Float") => match v {
                    Value::Number(n) => Cell::Float(n.as_f64().ok_or_else(|| col_err(i))?),
                    // nan, inf
                    Value::String(_) => Cell::Null,
                    _ => return Err(col_err(i)),
                },
                Value::String(s) if ty == "String" || ty.starts_with("FixedString") => {
                    Cell::Text(s)
                }
                _ => return Err(col_err(i)),
            };
            cells.push(cell);
        }
        out.push(cells);
    }
    Ok(out)
}

/// A new load id: 128 random bits in hex.
fn new_load_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Store for ClickHouseStore {
    fn ingest(&mut self, file: &PreparedFile, received_at: Timestamp) -> Result<Ingested> {
        let h = &file.header;
        let done = |(checksum, n): (String, i64)| {
            if checksum == file.checksum {
                Ingested::Duplicate {
                    rows: u64::try_from(n).unwrap_or(0),
                }
            } else {
                Ingested::Conflict {
                    stored_checksum: checksum,
                }
            }
        };
        if let Some(l) = self.ledger(&h.file_id)? {
            return Ok(done(l));
        }
        // The rows of attempts that died (a crash, or this process's own failure).
        let own = self.abandoned.remove(&h.file_id).unwrap_or_default();
        let mut dead: Vec<String> = self
            .attempts(&h.file_id)?
            .into_iter()
            .filter(|(l, stale)| *stale || own.contains(l))
            .map(|(l, _)| l)
            .collect();
        dead.extend(own);
        dead.sort();
        dead.dedup();
        if let Err(e) = self.delete_loads(&dead) {
            self.abandoned.insert(h.file_id.clone(), dead);
            return Err(e);
        }

        let load_id = new_load_id();
        self.exec(&bind(
            "INSERT INTO ingest_attempts (file_id, load_id, started_at) \
             SELECT $1, $2, toInt64(now()) * 1000",
            &[Param::Text(&h.file_id), Param::Text(&load_id)],
        )?)?;
        let give_up = |s: &mut Self, e: Error| {
            if s.delete_loads(std::slice::from_ref(&load_id)).is_err() {
                s.abandoned
                    .entry(h.file_id.clone())
                    .or_default()
                    .push(load_id.clone());
            }
            Err(e)
        };
        // Another collector at the same file: both back off, the distributor retries.
        match self.attempts(&h.file_id) {
            Ok(a) if a.iter().any(|(l, stale)| *l != load_id && !stale) => {
                let e = Error::ClickHouse(format!(
                    "log file {} is being stored by another collector; try again later",
                    h.file_id
                ));
                return give_up(self, e);
            }
            Ok(_) => {}
            Err(e) => return give_up(self, e),
        }
        let at = to_i64(received_at.as_millis());
        if let Err(e) = self.write_rows(file, &load_id, at) {
            return give_up(self, e);
        }
        let rows = file.records.len() as i64;
        // Still ours? An attempt that stalled may be taken for dead by now.
        if let Err(e) = self.still_ours(&h.file_id, &load_id) {
            return give_up(self, e);
        }
        let ledger = json!({"file_id": h.file_id, "checksum": file.checksum,
            "role": h.role.as_str(), "instance": h.instance,
            "opened_at": to_i64(h.opened_at.as_millis()), "rows": rows, "received_at": at,
            "load_id": load_id});
        // A failed ledger write may still land on the server: its rows are left for the
        // stale-attempt clean-up (by then the write has landed, and the file is a
        // duplicate, or it never will).
        self.send_within(
            "INSERT INTO log_files FORMAT JSONEachRow",
            Some(&format!("{ledger}\n")),
            true,
            LEDGER_TIMEOUT,
        )?;
        Ok(Ingested::Inserted {
            rows: u64::try_from(rows).unwrap_or(0),
        })
    }

    fn prune_raw(&mut self, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        let mut n = 0;
        for table in ["raw_http", "raw_dns", "raw_probe"] {
            n += self.delete_before(table, "ts", t)?;
        }
        // As [`super::stream::PRUNE_CLIENTS`] does on the other stores.
        n += self.delete_before("rollup_stream_client", "minute", t)?;
        Ok(n)
    }

    fn prune_rollups(&mut self, grain: Grain, before: Timestamp) -> Result<u64> {
        let t = to_i64(before.as_millis());
        let mut n = 0;
        for table in super::ROLLUP_TABLES {
            n += self.delete_before(&format!("{table}{}", grain.suffix()), "minute", t)?;
        }
        Ok(n)
    }

    fn select(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Cell>>> {
        self.query(sql, params)
    }

    fn backend(&self) -> &'static str {
        "clickhouse"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_translates_with_a_sorting_key_and_a_load_id() {
        let mut names = Vec::new();
        for step in super::super::MIGRATIONS {
            for t in translate(step.sql).unwrap() {
                assert!(t.create.contains(" ORDER BY ("), "{}", t.create);
                assert!(!t.create.contains("PRIMARY KEY"), "{}", t.create);
                assert!(t.create.contains("load_id String"), "{}", t.create);
                names.push(t.name);
            }
        }
        for t in super::super::ROLLUP_TABLES {
            for g in Grain::ALL {
                assert!(names.contains(&format!("{t}{}", g.suffix())), "{t}");
            }
        }
        let http = translate(super::super::MIGRATIONS[0].sql).unwrap();
        let raw = http.iter().find(|t| t.name == "raw_http").unwrap();
        // The nullable customer cannot be a sorting key column on 18.16.
        assert!(raw.create.contains("customer Nullable(String)"));
        assert!(raw.create.contains("ORDER BY (host, ts)"), "{}", raw.create);
        assert!(
            raw.create
                .contains("PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts, 1000)))")
        );
        let roll = http.iter().find(|t| t.name == "rollup_http").unwrap();
        assert!(
            roll.create
                .contains("ORDER BY (customer, host, minute, pop)"),
            "{}",
            roll.create
        );
    }

    #[test]
    fn parameters_become_escaped_literals() {
        let sql = bind(
            "SELECT a FROM t WHERE x = $1 AND y >= $2 AND z = $10 AND w = $1",
            &[
                Param::Text("it's a \\ test"),
                Param::Int(-3),
                Param::Int(0),
                Param::Int(0),
                Param::Int(0),
                Param::Int(0),
                Param::Int(0),
                Param::Int(0),
                Param::Int(0),
                Param::Int(42),
            ],
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT a FROM t WHERE x = 'it\\'s a \\\\ test' AND y >= (-3) AND z = 42 \
             AND w = 'it\\'s a \\\\ test'"
        );
        assert!(bind("SELECT $2", &[Param::Int(1)]).is_err());
        assert!(bind("SELECT $0", &[Param::Int(1)]).is_err());
        assert_eq!(bind("SELECT '$'", &[]).unwrap(), "SELECT '$'");
    }

    #[test]
    fn urls_name_host_database_and_user() {
        let t = Target::parse("http://127.0.0.1:8123").unwrap();
        assert_eq!(
            (t.base.as_str(), t.database.as_str(), t.user),
            ("http://127.0.0.1:8123", "udn", None)
        );
        let t = Target::parse("https://logs:pw@ch.example:8443/udn_logs").unwrap();
        assert_eq!(t.base, "https://ch.example:8443");
        assert_eq!(t.database, "udn_logs");
        assert_eq!(t.user, Some(("logs".into(), "pw".into())));
        for bad in [
            "ch.example:8123",
            "ftp://ch.example",
            "http://ch.example/db;DROP",
            "http://ch.example/a/b",
            "http:///db",
            "http://h/db?x=1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn multi_row_values_become_rows() {
        let rows = values_rows(
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT (a) DO NOTHING",
            &[
                Param::Int(1),
                Param::Text("x"),
                Param::Int(2),
                Param::Text("y"),
            ],
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].0, "t");
        assert_eq!(rows[1].1["b"], "y");
        assert!(values_rows("INSERT INTO t (a, b) VALUES ($1)", &[Param::Int(1)]).is_err());
        assert!(values_rows("DELETE FROM t", &[]).is_err());
    }

    #[test]
    fn answers_are_typed_by_their_meta() {
        let text = r#"{"meta":[{"name":"a","type":"UInt64"},{"name":"b","type":"Nullable(String)"},
            {"name":"c","type":"Float64"},{"name":"d","type":"Int64"}],
            "data":[[18446744073709551615, null, 1.5, "-7"],[1, "x", "nan", 2]],"rows":2}"#;
        let rows = parse_answer(text, "q").unwrap();
        assert_eq!(
            rows,
            vec![
                vec![
                    Cell::Int(i64::MAX),
                    Cell::Null,
                    Cell::Float(1.5),
                    Cell::Int(-7)
                ],
                vec![
                    Cell::Int(1),
                    Cell::Text("x".into()),
                    Cell::Null,
                    Cell::Int(2)
                ],
            ]
        );
        let bad = r#"{"meta":[{"name":"a","type":"Array(String)"}],"data":[[["x"]]]}"#;
        assert!(parse_answer(bad, "q").is_err());
        assert!(parse_answer("Code: 62, e.displayText() = ...", "q").is_err());
    }
}
