//! Versioned migrations (`udn_bins::migrate`, refinery) on real SQLite files and a real
//! PostgreSQL (`UDN_TEST_POSTGRES`; see scripts/start-postgres.sh):
//!
//! - an upgrade starts from databases the code before versioned migrations made, with
//!   their data (`tests/fixtures/unversioned/`), and opens them with today's stores: the
//!   data is all there, every store has its history, the log store's old versions are
//!   marked applied and only its new step ran;
//! - a second open runs nothing;
//! - several processes' worth of handles opening one fresh database at once all succeed
//!   (the migration lock), each step applied once;
//! - a database whose history differs from the code (an edited step) or is ahead of it
//!   (a downgrade) is refused with an error naming the store.

use crate::pg_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use udn_bins::api::{Backend, PgBackend, SqliteBackend};
use udn_bins::billing::{BillingStore, PgBillingStore, SqliteBillingStore};
use udn_bins::store::Store;
use udn_bins::store::postgres::PgStore;
use udn_bins::store::sqlite::SqliteStore;

const LOG_SQLITE: &str = include_str!("fixtures/unversioned/udn.sqlite.sql");
const CP_SQLITE: &str = include_str!("fixtures/unversioned/control.db.sql");
/// Steps in the log store's history once migrated: every step the code knows.
const LOG_STEPS: usize = udn_bins::store::MIGRATIONS.len();
const ALL_POSTGRES: &str = include_str!("fixtures/unversioned/postgres.sql");

/// `(version, name)` of every step of the log store the code knows, in order (on
/// PostgreSQL one more: the raw tables' day partitions).
fn log_steps(pg: bool) -> Vec<(i64, &'static str)> {
    let steps = if pg {
        udn_bins::store::PG_MIGRATIONS
    } else {
        udn_bins::store::MIGRATIONS
    };
    steps
        .iter()
        .map(|s| (i64::from(s.version), s.name))
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udn-migrations-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn count(store: &mut dyn Store, table: &str) -> i64 {
    let rows = store
        .select(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .unwrap();
    match rows[0][0] {
        udn_bins::store::Cell::Int(n) => n,
        ref other => panic!("COUNT(*) gave {other:?}"),
    }
}

/// `(version, name)` of each applied step in `history`, via SQLite.
fn sqlite_history(file: &Path, history: &str) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(file).unwrap();
    let mut st = conn
        .prepare(&format!(
            "SELECT version, name FROM {history} ORDER BY version"
        ))
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn pg_history(url: &str, history: &str) -> Vec<(i64, String)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query(
        &format!("SELECT version::BIGINT, name FROM {history} ORDER BY version"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn names(h: &[(i64, String)]) -> Vec<(i64, &str)> {
    h.iter().map(|(v, n)| (*v, n.as_str())).collect()
}

/// What the fixtures hold, read through today's stores.
fn check_data(log: &mut dyn Store, cp: &dyn Backend, billing: &dyn BillingStore, pg: bool) {
    assert_eq!(
        count(log, "log_files"),
        36,
        "log files ingested before the upgrade"
    );
    assert_eq!(count(log, "raw_http"), 90);
    assert_eq!(count(log, "raw_probe"), 150);
    assert_eq!(count(log, "rollup_http"), 6);
    // The rows rolled up per minute before the hourly and daily rollups existed are
    // rolled up by their step: a year-long series (daily) and a week-long one (hourly)
    // total what the per-minute rollups hold.
    let minute: i64 = log
        .select("SELECT CAST(SUM(requests) AS BIGINT) FROM rollup_http", &[])
        .unwrap()
        .first()
        .and_then(|r| match r[0] {
            udn_bins::store::Cell::Int(n) => Some(n),
            _ => None,
        })
        .unwrap_or(0);
    assert!(minute > 0, "the fixture has traffic");
    for grain in udn_bins::store::Grain::ALL {
        let all = udn_bins::store::Range {
            from: udn_core::Timestamp::from_millis(0),
            to: udn_core::Timestamp::from_millis(4_000_000_000_000),
        };
        let q = udn_bins::store::SeriesQuery {
            range: all,
            grain,
            customer: None,
            host: None,
        };
        let total: i64 = log
            .traffic_series(&q)
            .unwrap()
            .iter()
            .map(|p| p.requests)
            .sum();
        assert_eq!(total, minute, "{grain:?} after the upgrade");
    }
    let users: Vec<String> = cp
        .users()
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(users.len(), 2, "{users:?}");
    if !pg {
        // The demo's logins (PostgreSQL's fixture has the bootstrap admin instead of
        // the demo's first user).
        assert!(
            cp.verify_login(&users[0], "wrong password")
                .unwrap()
                .is_none(),
            "logins still checked"
        );
    }
    let config = cp.current_config().unwrap();
    assert_eq!(config.version, 1, "the committed configuration survives");
    assert!(!config.config.customers.is_empty());
    let invoice = billing
        .invoice("INV-000001")
        .unwrap()
        .expect("the issued invoice survives");
    assert_eq!(invoice.number.as_deref(), Some("INV-000001"));
}

#[test]
fn sqlite_databases_from_before_versioning_upgrade_with_their_data() {
    let dir = temp_dir("upgrade");
    let logs = dir.join("udn.sqlite");
    let control = dir.join("control.db");
    rusqlite::Connection::open(&logs)
        .unwrap()
        .execute_batch(LOG_SQLITE)
        .unwrap();
    rusqlite::Connection::open(&control)
        .unwrap()
        .execute_batch(CP_SQLITE)
        .unwrap();

    for round in 0..2 {
        let mut log = SqliteStore::open_file(&logs, None).unwrap();
        let cp = SqliteBackend::open(&control).unwrap();
        let billing = SqliteBillingStore::open(&logs).unwrap();
        check_data(&mut log, &cp, &billing, false);
        drop((log, cp, billing));
        assert_eq!(
            names(&sqlite_history(&logs, "udn_log_schema_history")),
            log_steps(false),
            "round {round}"
        );
        assert_eq!(
            names(&sqlite_history(&control, "udn_cp_schema_history")),
            [(1, "initial"), (2, "live_events")]
        );
        assert_eq!(
            names(&sqlite_history(&logs, "udn_billing_schema_history")),
            [(1, "initial")]
        );
    }
    // Step 3 ran on the data in place: its index exists and is used by pruning.
    let conn = rusqlite::Connection::open(&logs).unwrap();
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN DELETE FROM raw_http WHERE ts < 5",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("raw_http_ts"), "prune plan: {plan}");
    // Migration 2 was not run a second time: its one-off usage backfill is not doubled.
    let legacy: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM usage_file WHERE file_id = 'rollups-before-usage-file'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let before = LOG_SQLITE.matches("'rollups-before-usage-file'").count() as i64;
    assert_eq!(legacy, before);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn postgres_databases_from_before_versioning_upgrade_with_their_data() {
    let Some(url) = pg_support::fresh_database("migrations_upgrade") else {
        return;
    };
    postgres::Client::connect(&url, postgres::NoTls)
        .unwrap()
        .batch_execute(ALL_POSTGRES)
        .unwrap();
    for _ in 0..2 {
        let mut log = PgStore::connect(&url).unwrap();
        let cp = PgBackend::connect(&url).unwrap();
        let billing = PgBillingStore::connect(&url).unwrap();
        check_data(&mut log, &cp, &billing, true);
        assert_eq!(
            names(&pg_history(&url, "udn_log_schema_history")),
            log_steps(true)
        );
        assert_eq!(
            names(&pg_history(&url, "udn_cp_schema_history")),
            [(1, "initial"), (2, "live_events")]
        );
        assert_eq!(
            names(&pg_history(&url, "udn_billing_schema_history")),
            [(1, "initial")]
        );
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let indexed: bool = c
        .query_one("SELECT to_regclass('public.raw_http_ts') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(indexed, "step 3 created its index over the data in place");
}

#[test]
fn handles_opening_one_fresh_database_at_once_take_turns() {
    const N: usize = 8;
    let dir = temp_dir("race");
    let file = Arc::new(dir.join("udn.sqlite"));
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (file, barrier) = (file.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Connected and configured first, so that the migrations themselves start
                // together.
                let mut conn = rusqlite::Connection::open(&*file).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
                let schema = if i % 2 == 0 {
                    udn_bins::store::SCHEMA
                } else {
                    udn_bins::billing::store::BILLING_SCHEMA
                };
                barrier.wait();
                udn_bins::migrate::sqlite(&mut conn, &schema).map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("every handle opens");
    }
    assert_eq!(
        sqlite_history(&file, "udn_log_schema_history").len(),
        LOG_STEPS
    );
    assert_eq!(
        sqlite_history(&file, "udn_billing_schema_history").len(),
        udn_bins::billing::store::BILLING_SCHEMA.sqlite.len()
    );
    let _ = std::fs::remove_dir_all(dir);

    let Some(url) = pg_support::fresh_database("migrations_race") else {
        return;
    };
    let url = Arc::new(url);
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&url).map(drop).map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("every handle opens");
    }
    assert_eq!(
        pg_history(&url, "udn_log_schema_history").len(),
        udn_bins::store::PG_MIGRATIONS.len()
    );
}

#[test]
fn a_history_that_differs_from_the_code_is_refused_by_name() {
    let dir = temp_dir("divergent");
    let file = dir.join("udn.sqlite");
    drop(SqliteStore::open_file(&file, None).unwrap());
    let conn = rusqlite::Connection::open(&file).unwrap();

    // A step edited after it was applied.
    conn.execute(
        "UPDATE udn_log_schema_history SET checksum = '1' WHERE version = 2",
        [],
    )
    .unwrap();
    let err = SqliteStore::open_file(&file, None).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("log store"), "{msg}");
    assert!(msg.contains("V2__usage_file is different"), "{msg}");

    // A database ahead of the code (written by a newer release).
    let good = sqlite_history(&file, "udn_log_schema_history");
    assert_eq!(good.len(), LOG_STEPS);
    conn.execute_batch("DELETE FROM udn_log_schema_history;")
        .unwrap();
    drop(conn);
    let err = SqliteStore::open_file(&file, None)
        .err()
        .expect("a history wiped under existing tables does not re-run step 1");
    assert!(err.to_string().contains("log store"), "{err}");

    let dir2 = temp_dir("ahead");
    let file2 = dir2.join("udn.sqlite");
    drop(SqliteStore::open_file(&file2, None).unwrap());
    rusqlite::Connection::open(&file2)
        .unwrap()
        .execute(
            "INSERT INTO udn_log_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '7')",
            [],
        )
        .unwrap();
    let err = SqliteStore::open_file(&file2, None).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("log store"), "{msg}");
    assert!(
        msg.contains("99") || msg.to_lowercase().contains("missing"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}
