//! Ingestion proceeds while a slow query holds its connection: the collector's queries
//! run on reader connections of their own (`Collector::with_readers`, `udn control
//! --store-readers`), on a real SQLite file and a real PostgreSQL.

use crate::log_util;

use log_util::*;
use std::sync::mpsc;
use std::time::Duration;
use udn_bins::collector::Collector;
use udn_bins::store::{Ingested, PreparedFile, Range};
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

#[test]
fn ingestion_proceeds_while_a_slow_query_holds_its_connection() {
    for backend in backends("store_readers") {
        let name = backend.name();
        let tmp = TempDir::new(&format!("store-readers-{name}"));
        let dir = tmp.path().join("data");
        let writer = backend.open(&dir);
        let reader = backend.open(&dir);
        let collector =
            std::sync::Arc::new(Collector::new(writer, tmp.path()).with_readers(vec![reader]));
        let now = Timestamp::from_millis(T0 + 3_600_000);
        let range = Range {
            from: Timestamp::from_millis(T0),
            to: Timestamp::from_millis(T0 + 3_600_000),
        };

        // A portal query: a real (slow) statement on the reader, then it keeps the
        // connection until told the file is in, or gives up after 60 s.
        let (started_tx, started) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let c = collector.clone();
        let slow_sql = if name == "clickhouse" {
            "SELECT COUNT(*) FROM (SELECT number FROM system.numbers LIMIT 200000000)"
        } else {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < 200000) SELECT COUNT(*) FROM c"
        };
        let query = std::thread::spawn(move || {
            c.with_reader(|s| {
                let slow = s.select(slow_sql, &[]).expect("the slow query");
                assert_eq!(slow.len(), 1);
                started_tx.send(()).unwrap();
                done.recv_timeout(Duration::from_secs(60)).is_ok()
            })
        });
        started.recv().unwrap();
        // Meanwhile a file is ingested on the writer, and the series sees it.
        let ingested = collector
            .with_store(|s| s.ingest(&file("r-1", 500), now))
            .unwrap();
        assert!(matches!(ingested, Ingested::Inserted { .. }), "{name}");
        done_tx.send(()).unwrap();
        assert!(
            query.join().unwrap(),
            "{name}: the ingest finished while the query held its connection"
        );
        let requests: i64 = collector
            .with_reader(|s| s.traffic(range, Some("shop")))
            .unwrap()
            .iter()
            .map(|p| p.requests)
            .sum();
        assert_eq!(requests, 500, "{name}: the reader sees the committed file");
        eprintln!("readers ok on {name}");
    }
}
