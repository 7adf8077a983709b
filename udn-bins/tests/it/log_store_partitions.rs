//! The PostgreSQL log store's raw tables are partitioned by day
//! (`udn_bins::store::partitions`): a file makes the partitions of its days, retention
//! drops whole partitions, and a file whose records carry thousands of days (a broken
//! clock, a hostile instance) makes no more tables than the window allows. Against the
//! real PostgreSQL `scripts/start-postgres.sh` started.

use crate::log_util;

use log_util::*;
use udn_bins::store::partitions::{DAY_MS, WINDOW_FUTURE_DAYS, partition_name};
use udn_bins::store::{Ingested, Location, PreparedFile, Store, open};
use udn_core::Timestamp;
use udn_core::log::{DnsRecord, HttpRecord, LogRecord, Role};

/// 2026-12-07, as days since 1970-01-01.
const D: i64 = 20_794;

fn at(day: i64, ms: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(day * DAY_MS + ms).unwrap())
}

fn http(ts: Timestamp, i: usize) -> LogRecord {
    LogRecord::Http(HttpRecord {
        ts,
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
}

fn dns(ts: Timestamp) -> LogRecord {
    LogRecord::Dns(DnsRecord {
        ts,
        hostname: "www.shop.example".into(),
        qtype: "A".into(),
        client: "192.0.2.53".parse().unwrap(),
        ecs: None,
        addrs: vec!["198.51.100.1".parse().unwrap()],
        reason: "latency".into(),
        pop: Some("fra".into()),
        customer: Some("shop".into()),
        server: "dns1".into(),
    })
}

fn file(id: &str, role: Role, records: Vec<LogRecord>) -> PreparedFile {
    prepared_file(id, role, at(D, 0).as_millis(), records)
}

fn ingest(store: &mut dyn Store, f: &PreparedFile, received_at: Timestamp) {
    match store.ingest(f, received_at).expect("ingest") {
        Ingested::Inserted { .. } => {}
        other => panic!("{}: {other:?}", f.header.file_id),
    }
}

/// The day partitions of `table`, by name, and the rows of its default partition.
fn partitions(pg: &mut postgres::Client, table: &str) -> (Vec<String>, i64) {
    let names = pg
        .query(
            "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass($1) AND c.relname::TEXT <> $2 ORDER BY 1",
            &[&table, &format!("{table}_default")],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let default: i64 = pg
        .query_one(&format!("SELECT COUNT(*) FROM {table}_default"), &[])
        .unwrap()
        .get(0);
    (names, default)
}

fn rows(pg: &mut postgres::Client, table: &str) -> i64 {
    pg.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn raw_rows_live_in_day_partitions_and_retention_drops_them() {
    let Some(Backend::Postgres(url)) = log_util::postgres("raw_day_partitions") else {
        return;
    };
    let mut store = open(&Location::Postgres { url: url.clone() }).expect("open store");
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let now = at(D, 3_600_000);

    // Three days of HTTP records and one of DNS.
    let mut recs: Vec<LogRecord> = Vec::new();
    for (k, day) in [D - 2, D - 1, D].into_iter().enumerate() {
        recs.extend((0..10).map(|i| http(at(day, 60_000 * i as i64), k * 10 + i)));
    }
    ingest(store.as_mut(), &file("edge-days", Role::Edge, recs), now);
    let dns_recs = (0..5).map(|i| dns(at(D, 1000 * i))).collect();
    ingest(store.as_mut(), &file("dns-day", Role::Dns, dns_recs), now);

    let want: Vec<String> = [D - 2, D - 1, D]
        .iter()
        .map(|d| partition_name("raw_http", *d))
        .collect();
    assert_eq!(partitions(&mut pg, "raw_http"), (want.clone(), 0));
    assert_eq!(
        partitions(&mut pg, "raw_dns"),
        (vec![partition_name("raw_dns", D)], 0)
    );
    for name in &want {
        assert_eq!(rows(&mut pg, name), 10, "{name}");
    }

    // A hostile file: 1,000 records in the 1970s and 2,000 on as many future days. None
    // of their days is in the window: no table is made, the rows go to the default
    // partition, and they are still counted and queryable.
    let mut hostile: Vec<LogRecord> = (0..1000).map(|i| http(at(i, 0), i as usize)).collect();
    hostile.extend((0..2000).map(|i| http(at(D + 10 + i, 0), i as usize)));
    ingest(
        store.as_mut(),
        &file("edge-hostile", Role::Edge, hostile),
        now,
    );
    assert_eq!(partitions(&mut pg, "raw_http"), (want.clone(), 3000));
    assert_eq!(store.counts().unwrap().http, 3030);

    // A day that enters the window gets its partition, and its rows leave the default
    // partition for it.
    let later_day = D + 10;
    let later = at(later_day, 0);
    assert!(later_day <= D + 10 + WINDOW_FUTURE_DAYS);
    ingest(
        store.as_mut(),
        &file("edge-later", Role::Edge, vec![http(later, 0)]),
        later,
    );
    let later_name = partition_name("raw_http", later_day);
    assert_eq!(
        rows(&mut pg, &later_name),
        2,
        "the moved row and the new one"
    );
    assert_eq!(partitions(&mut pg, "raw_http").1, 2999);

    // Retention before day D-1: the partition of D-2 is dropped whole, the 1970s rows
    // leave the default partition, the rest stays.
    let pruned = store.prune_raw(at(D - 1, 0)).unwrap();
    assert_eq!(pruned, 10 + 1000);
    let left = partitions(&mut pg, "raw_http").0;
    assert!(!left.contains(&want[0]), "{left:?}");
    assert!(
        left.contains(&want[1]) && left.contains(&want[2]),
        "{left:?}"
    );
    assert_eq!(store.counts().unwrap().http, 3031 - 1010);

    // Late data for the dropped day makes its partition again.
    ingest(
        store.as_mut(),
        &file("edge-late", Role::Edge, vec![http(at(D - 2, 5), 0)]),
        now,
    );
    assert_eq!(rows(&mut pg, &want[0]), 1);
}
