//! Exactly once on ClickHouse, which has no transactions (`udn_bins::store::clickhouse`):
//! the rows of a crashed ingestion are withdrawn before the file is stored again, and two
//! collectors racing at one file store it once. Against the real server
//! `scripts/start-clickhouse.sh` started (`UDN_TEST_CLICKHOUSE`).

use crate::log_util;

use log_util::*;
use udn_bins::store::{Ingested, PreparedFile};
use udn_core::Timestamp;
use udn_core::log::{HttpRecord, LogRecord, Role};

const T0: u64 = 1_800_000_000_000;

fn file(id: &str, n: u64) -> PreparedFile {
    let records = (0..n)
        .map(|i| {
            LogRecord::Http(HttpRecord {
                ts: Timestamp::from_millis(T0 + i),
                customer: Some("shop".into()),
                host: "cdn.shop.example".into(),
                path: format!("/{i}"),
                method: "GET".into(),
                status: 200,
                bytes: 10,
                fill_bytes: 0,
                outcome: "hit".into(),
                duration_us: 100,
                client: "192.0.2.1".parse().unwrap(),
                pop: "fra".into(),
            })
        })
        .collect();
    prepared_file(id, Role::Edge, T0, records)
}

/// Runs one statement on the test's database, as another program would.
fn exec(url: &str, sql: &str) {
    let (base, db) = url.rsplit_once('/').unwrap();
    let resp = reqwest::blocking::Client::new()
        .post(format!("{base}/?database={db}"))
        .body(sql.to_owned())
        .send()
        .unwrap();
    let status = resp.status();
    assert!(status.is_success(), "{sql}: {}", resp.text().unwrap());
}

fn requests(store: &mut dyn udn_bins::store::Store) -> (i64, i64) {
    let range = udn_bins::store::Range {
        from: Timestamp::from_millis(T0 - 3_600_000),
        to: Timestamp::from_millis(T0 + 3_600_000),
    };
    let t: i64 = store
        .traffic(range, Some("shop"))
        .unwrap()
        .iter()
        .map(|p| p.requests)
        .sum();
    (store.counts().unwrap().http, t)
}

#[test]
fn a_crashed_ingestions_rows_are_withdrawn_before_the_file_is_stored() {
    let Some(backend) = clickhouse("ch_crash_leftovers") else {
        return;
    };
    let Backend::ClickHouse(url) = &backend else {
        unreachable!()
    };
    let tmp = TempDir::new("ch-leftovers");
    let mut store = backend.open(tmp.path());
    let now = Timestamp::from_millis(T0 + 3_600_000);
    // What a collector killed mid-file leaves: its attempt, two minutes old, and part of
    // the file's raw rows and rollups, but no ledger row.
    exec(
        url,
        "INSERT INTO ingest_attempts (file_id, load_id, started_at) \
         SELECT 'f-1', 'dead', toInt64(now()) * 1000 - 120000",
    );
    exec(
        url,
        &format!(
            "INSERT INTO raw_http (ts, customer, host, path, method, status, bytes, \
             fill_bytes, outcome, duration_us, client, pop, load_id) VALUES \
             ({T0}, 'shop', 'cdn.shop.example', '/0', 'GET', 200, 10, 0, 'hit', 100, \
             '192.0.2.1', 'fra', 'dead')"
        ),
    );
    exec(
        url,
        &format!(
            "INSERT INTO rollup_http (minute, customer, host, pop, requests, bytes, \
             fill_bytes, s1xx, s2xx, s3xx, s4xx, s5xx, hits, misses, stale, revalidated, \
             bypass, duration_us, load_id) VALUES ({}, 'shop', 'cdn.shop.example', 'fra', \
             77, 770, 0, 0, 77, 0, 0, 0, 77, 0, 0, 0, 0, 7700, 'dead')",
            T0 / 60_000 * 60_000
        ),
    );
    assert_eq!(requests(store.as_mut()), (1, 77), "the leftovers are there");
    assert_eq!(
        store.ingest(&file("f-1", 300), now).unwrap(),
        Ingested::Inserted { rows: 300 }
    );
    assert_eq!(
        requests(store.as_mut()),
        (300, 300),
        "stored once, leftovers gone"
    );
    assert_eq!(
        store.ingest(&file("f-1", 300), now).unwrap(),
        Ingested::Duplicate { rows: 300 }
    );
    assert_eq!(requests(store.as_mut()), (300, 300));

    // A young attempt of another collector (alive, still writing) is not touched: the
    // file is refused for now, and nothing of it is stored twice.
    exec(
        url,
        "INSERT INTO ingest_attempts (file_id, load_id, started_at) \
         SELECT 'f-2', 'busy', toInt64(now()) * 1000",
    );
    let err = store.ingest(&file("f-2", 5), now).unwrap_err();
    assert!(err.to_string().contains("another collector"), "{err}");
    assert_eq!(requests(store.as_mut()), (300, 300));
}

#[test]
fn two_collectors_racing_at_one_file_store_it_once() {
    let Some(backend) = clickhouse("ch_race") else {
        return;
    };
    let tmp = TempDir::new("ch-race");
    let stores: Vec<_> = (0..4).map(|_| backend.open(tmp.path())).collect();
    let now = Timestamp::from_millis(T0 + 3_600_000);
    let f = file("race-1", 2_000);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(stores.len()));
    let threads: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let f = f.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Retry as a distributor would, until the file is in.
                for _ in 0..200 {
                    match s.ingest(&f, now) {
                        Ok(r) => return r,
                        // Different delays, so that the backed-off racers meet no more.
                        Err(_) => {
                            std::thread::sleep(std::time::Duration::from_millis(20 + 15 * i as u64))
                        }
                    }
                }
                panic!("never stored");
            })
        })
        .collect();
    let results: Vec<Ingested> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let inserted = results
        .iter()
        .filter(|r| matches!(r, Ingested::Inserted { .. }))
        .count();
    assert_eq!(inserted, 1, "{results:?}");
    assert!(
        results.iter().all(|r| matches!(
            r,
            Ingested::Inserted { rows: 2000 } | Ingested::Duplicate { rows: 2000 }
        )),
        "{results:?}"
    );
    let mut store = backend.open(tmp.path());
    assert_eq!(requests(store.as_mut()), (2000, 2000));
    assert_eq!(store.counts().unwrap().files, 1);
}

#[test]
fn a_hostile_filter_value_stays_a_string() {
    // The host filter is customer input (`?host=`); ClickHouse gets it as a literal.
    let Some(backend) = clickhouse("ch_injection") else {
        return;
    };
    let tmp = TempDir::new("ch-injection");
    let mut store = backend.open(tmp.path());
    let now = Timestamp::from_millis(T0 + 3_600_000);
    store.ingest(&file("inj-1", 10), now).unwrap();
    let range = udn_bins::store::Range {
        from: Timestamp::from_millis(T0 - 3_600_000),
        to: Timestamp::from_millis(T0 + 3_600_000),
    };
    let mut q = udn_bins::store::SeriesQuery::new(range, Some("shop"));
    assert_eq!(store.traffic_series(&q).unwrap().len(), 1);
    for hostile in [
        "x' OR '1'='1",
        "x\\' OR 1=1 OR host = \\'",
        "x') OR 1=1 --",
        "cdn.shop.example' UNION ALL SELECT 1, 2, 3 --",
        "\0'",
    ] {
        q.host = Some(hostile);
        assert!(
            store.traffic_series(&q).unwrap().is_empty(),
            "{hostile:?} matched rows"
        );
    }
    // The tables are all still there.
    assert_eq!(store.counts().unwrap().http, 10);
}
