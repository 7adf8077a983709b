//! Versioned schema migrations for the three stores (the log store, the control plane and
//! billing), on SQLite and on PostgreSQL, through one mechanism: [refinery].
//!
//! Each store has a [`Schema`]: an ordered list of [`Step`]s per dialect and its own
//! history table (`udn_log_schema_history`, `udn_cp_schema_history`,
//! `udn_billing_schema_history`), so stores sharing one database file do not mix their
//! versions. [`sqlite()`] and [`postgres()`] apply the steps a database lacks, each in its own
//! transaction, under a lock held for the whole run (an exclusive `flock` on
//! `<database>.migrate.lock` beside a SQLite file, `pg_advisory_lock` on PostgreSQL), so
//! two processes starting at once take turns instead of racing. refinery refuses to start
//! on a database whose applied steps differ from the code's (a step edited after release)
//! or that has steps the code does not know (a downgrade): a clear error instead of a
//! silently wrong schema. Steps are append-only.
//!
//! Databases made before versioning have no history table. [`Schema::legacy`] says how
//! their state maps onto the steps: the log store recorded its versions in
//! `schema_migrations`, which are marked as applied without running them again; the
//! control plane and billing created their tables with `CREATE TABLE IF NOT EXISTS`, so
//! their first step is written to run harmlessly over tables that already exist.
//!
//! [refinery]: https://docs.rs/refinery

use std::path::Path;

use crate::pg::Session as _;
use refinery::{Migration, Runner, Target};

/// One migration: a version (strictly increasing), a short name and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// The version, from 1.
    pub version: i32,
    /// A short `snake_case` name, recorded in the history table.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// How a database from before versioned migrations maps onto the steps.
#[derive(Debug, Clone, Copy)]
pub enum Legacy {
    /// Nothing to map: the first step runs over whatever exists.
    None,
    /// The versions listed in this table (`version` column) were applied by the old
    /// mechanism: mark steps up to the highest of them as applied without running them.
    VersionTable(&'static str),
}

/// One store's schema.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The store's name, for errors.
    pub store: &'static str,
    /// refinery's history table for this store.
    pub history: &'static str,
    /// The PostgreSQL advisory lock key held while migrating.
    pub pg_lock: i64,
    /// The steps on SQLite.
    pub sqlite: &'static [Step],
    /// The steps on PostgreSQL.
    pub postgres: &'static [Step],
    /// How an unversioned database maps onto the steps.
    pub legacy: Legacy,
}

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The versions marked as applied from a legacy version table (not run).
    pub baselined: Vec<i32>,
    /// The versions run now.
    pub ran: Vec<i32>,
}

/// A migration failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// refinery refused or a step failed; the step's transaction was rolled back.
    #[error("migrating the {store} schema: {source}")]
    Refinery {
        /// The store.
        store: &'static str,
        /// The cause.
        #[source]
        source: Box<refinery::Error>,
    },
    /// Reading the legacy state or taking the lock failed.
    #[error("migrating the {store} schema: {what}")]
    Setup {
        /// The store.
        store: &'static str,
        /// What failed.
        what: String,
    },
}

impl Schema {
    fn runner(&self, steps: &[Step], target: Target) -> Result<Runner, Error> {
        let migrations = steps
            .iter()
            .map(|s| Migration::unapplied(&format!("V{}__{}", s.version, s.name), s.sql))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.refinery(e))?;
        let mut runner = Runner::new(&migrations).set_target(target);
        runner.set_migration_table_name(self.history);
        Ok(runner)
    }

    fn refinery(&self, e: refinery::Error) -> Error {
        Error::Refinery {
            store: self.store,
            source: Box::new(e),
        }
    }

    fn setup(&self, what: impl std::fmt::Display) -> Error {
        Error::Setup {
            store: self.store,
            what: what.to_string(),
        }
    }

    /// The steps up to `version`, which are the ones a legacy table at `version` had.
    fn baseline(&self, steps: &[Step], version: Option<i64>) -> Vec<i32> {
        let Some(v) = version else {
            return Vec::new();
        };
        steps
            .iter()
            .map(|s| s.version)
            .filter(|s| i64::from(*s) <= v)
            .collect()
    }
}

fn versions(report: &refinery::Report) -> Vec<i32> {
    report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect()
}

/// Applies `schema`'s SQLite steps to `conn` under an exclusive `flock` beside the
/// database file (an in-memory database has nobody to race with).
pub fn sqlite(conn: &mut rusqlite::Connection, schema: &Schema) -> Result<Applied, Error> {
    let _lock = match conn.path().filter(|p| !p.is_empty()) {
        Some(db) => {
            Some(lock_file(Path::new(&format!("{db}.migrate.lock"))).map_err(|e| schema.setup(e))?)
        }
        None => None,
    };
    let table_exists = |conn: &rusqlite::Connection, name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )
    };
    let mut applied = Applied::default();
    if let Legacy::VersionTable(old) = schema.legacy {
        let fresh = !table_exists(conn, schema.history).map_err(|e| schema.setup(e))?;
        if fresh && table_exists(conn, old).map_err(|e| schema.setup(e))? {
            let max: Option<i64> = conn
                .query_row(&format!("SELECT MAX(version) FROM {old}"), [], |r| r.get(0))
                .map_err(|e| schema.setup(e))?;
            applied.baselined = schema.baseline(schema.sqlite, max);
            if let Some(&v) = applied.baselined.last() {
                schema
                    .runner(schema.sqlite, Target::FakeVersion(v))?
                    .run(conn)
                    .map_err(|e| schema.refinery(e))?;
            }
        }
    }
    let report = schema
        .runner(schema.sqlite, Target::Latest)?
        .run(conn)
        .map_err(|e| schema.refinery(e))?;
    applied.ran = versions(&report);
    Ok(applied)
}

/// Applies `schema`'s PostgreSQL steps through `client` under a session advisory lock.
pub fn postgres(client: &mut crate::pg::Client, schema: &Schema) -> Result<Applied, Error> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&schema.pg_lock])
        .map_err(|e| schema.setup(e))?;
    let result = postgres_locked(client, schema);
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&schema.pg_lock])
        .map_err(|e| schema.setup(e));
    let applied = result?;
    unlocked?;
    Ok(applied)
}

fn postgres_locked(client: &mut crate::pg::Client, schema: &Schema) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    if let Legacy::VersionTable(old) = schema.legacy {
        let exists = |client: &mut crate::pg::Client, name: &str| {
            client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .and_then(|r| r.try_get::<_, bool>(0))
                .map_err(|e| schema.setup(e))
        };
        if !exists(client, schema.history)? && exists(client, old)? {
            let max: Option<i64> = client
                .query_one(&format!("SELECT MAX(version)::BIGINT FROM {old}"), &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| schema.setup(e))?;
            applied.baselined = schema.baseline(schema.postgres, max);
            if let Some(&v) = applied.baselined.last() {
                let runner = schema.runner(schema.postgres, Target::FakeVersion(v))?;
                crate::pg::wait(runner.run_async(client.raw())).map_err(|e| schema.refinery(e))?;
            }
        }
    }
    let runner = schema.runner(schema.postgres, Target::Latest)?;
    let report = crate::pg::wait(runner.run_async(client.raw())).map_err(|e| schema.refinery(e))?;
    applied.ran = versions(&report);
    Ok(applied)
}

/// Opens (creating) `path` and takes an exclusive `flock` on it, blocking until the
/// holder lets go; released when the returned file is dropped.
pub fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    f.lock()
        .map_err(|e| std::io::Error::new(e.kind(), format!("locking {}: {e}", path.display())))?;
    Ok(f)
}
