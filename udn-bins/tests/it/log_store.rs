//! The store's schema, ledger and queries, against a real SQLite file and a real
//! PostgreSQL (`UDN_TEST_POSTGRES`): the same tests for both backends.

use crate::log_util;

use log_util::*;
use std::net::{IpAddr, Ipv4Addr};
use udn_bins::store::{Ingested, PreparedFile, Range, Store};
use udn_core::Timestamp;
use udn_core::log::{
    DnsRecord, FORMAT_VERSION, FileHeader, HttpRecord, LogRecord, MAGIC, ProbeRecord, Role,
};

const T0: u64 = 1_800_000_000_000; // a 5-minute boundary (6,000,000 x 300,000 ms)

fn header(id: &str, role: Role) -> FileHeader {
    FileHeader {
        magic: MAGIC.into(),
        version: FORMAT_VERSION,
        file_id: id.into(),
        role,
        instance: "i1".into(),
        opened_at: Timestamp::from_millis(T0),
    }
}

fn http(
    min: u64,
    sec: u64,
    customer: &str,
    pop: &str,
    status: u16,
    bytes: u64,
    outcome: &str,
) -> LogRecord {
    LogRecord::Http(HttpRecord {
        ts: Timestamp::from_millis(T0 + min * 60_000 + sec * 1000),
        customer: Some(customer.into()),
        host: format!("www.{customer}.example"),
        path: "/".into(),
        method: "GET".into(),
        status,
        bytes,
        fill_bytes: if outcome == "miss" { bytes } else { 0 },
        outcome: outcome.into(),
        duration_us: 100,
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        pop: pop.into(),
    })
}

fn dns(min: u64, customer: &str, addrs: &[u8], pop: &str) -> LogRecord {
    LogRecord::Dns(DnsRecord {
        ts: Timestamp::from_millis(T0 + min * 60_000),
        hostname: format!("www.{customer}.example"),
        qtype: "A".into(),
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ecs: None,
        addrs: addrs
            .iter()
            .map(|a| IpAddr::V4(Ipv4Addr::new(192, 0, 2, *a)))
            .collect(),
        reason: "latency".into(),
        pop: Some(pop.into()),
        customer: Some(customer.into()),
        server: "dns-1".into(),
    })
}

fn probe(min: u64, method: &str, ok: bool, value: f64) -> LogRecord {
    LogRecord::Probe(ProbeRecord {
        ts: Timestamp::from_millis(T0 + min * 60_000),
        pop: "fra".into(),
        kind: "latency".into(),
        target: "198.51.100.0/24".into(),
        method: method.into(),
        ok,
        value,
        detail: String::new(),
    })
}

fn file(id: &str, role: Role, records: Vec<LogRecord>) -> PreparedFile {
    PreparedFile::new(header(id, role), format!("sum-{id}"), records)
}

fn range(from_min: u64, to_min: u64) -> Range {
    Range {
        from: Timestamp::from_millis(T0 + from_min * 60_000),
        to: Timestamp::from_millis(T0 + to_min * 60_000),
    }
}

fn check(store: &mut dyn Store) {
    let now = Timestamp::from_millis(T0 + 3_600_000);
    let edge = file(
        "edge-1",
        Role::Edge,
        vec![
            http(0, 1, "shop", "fra", 200, 1000, "hit"),
            http(0, 2, "shop", "fra", 200, 500, "miss"),
            http(0, 3, "shop", "iad", 404, 10, "miss"),
            http(1, 0, "shop", "fra", 503, 0, "bypass-auth"),
            http(6, 0, "shop", "iad", 301, 20, "stale"),
            http(0, 5, "blog", "fra", 200, 7000, "hit"),
        ],
    );
    assert_eq!(
        store.ingest(&edge, now).unwrap(),
        Ingested::Inserted { rows: 6 }
    );
    // A retried file is a no-op; a different file under the same id is refused.
    assert_eq!(
        store.ingest(&edge, now).unwrap(),
        Ingested::Duplicate { rows: 6 }
    );
    let mut impostor = edge.clone();
    impostor.checksum = "other".into();
    assert_eq!(
        store.ingest(&impostor, now).unwrap(),
        Ingested::Conflict {
            stored_checksum: "sum-edge-1".into()
        }
    );
    // A second file adds to the same rollup rows.
    let edge2 = file(
        "edge-2",
        Role::Edge,
        vec![http(0, 30, "shop", "fra", 200, 1000, "hit")],
    );
    assert_eq!(
        store.ingest(&edge2, now).unwrap(),
        Ingested::Inserted { rows: 1 }
    );
    let d = file(
        "dns-1",
        Role::Dns,
        vec![
            dns(0, "shop", &[1, 2], "fra"),
            dns(0, "shop", &[1], "fra"),
            dns(2, "shop", &[3], "iad"),
            dns(2, "blog", &[9], "iad"),
        ],
    );
    store.ingest(&d, now).unwrap();
    let p = file(
        "probe-1",
        Role::Probe,
        vec![
            probe(0, "tcp-connect", true, 10.0),
            probe(0, "tcp-connect", false, 30.0),
            probe(0, "dns", true, 4.0),
        ],
    );
    store.ingest(&p, now).unwrap();

    let c = store.counts().unwrap();
    assert_eq!(
        (c.files, c.ledger_rows, c.http, c.dns, c.probe),
        (4, 14, 7, 4, 3)
    );

    // Traffic per minute for one customer, and for all.
    let t = store.traffic(range(0, 60), Some("shop")).unwrap();
    let got: Vec<_> = t.iter().map(|p| (p.minute, p.requests, p.bytes)).collect();
    let m = |k: u64| (T0 + k * 60_000) as i64;
    assert_eq!(got, vec![(m(0), 4, 2510), (m(1), 1, 0), (m(6), 1, 20)]);
    assert!((t[0].bytes_per_sec() - 2510.0 / 60.0).abs() < 1e-9);
    assert!((t[0].hits_per_sec() - 4.0 / 60.0).abs() < 1e-9);
    let all = store.traffic(range(0, 1), None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].requests, all[0].bytes), (5, 9510));
    // The range is half-open and the last 24 h helper ends at now.
    assert!(store.traffic(range(7, 60), None).unwrap().is_empty());
    assert_eq!(
        store
            .traffic(Range::last_24h(now), None)
            .unwrap()
            .iter()
            .map(|p| p.requests)
            .sum::<i64>(),
        7
    );

    // Per location.
    let pops: Vec<_> = store
        .traffic_by_pop(range(0, 1), Some("shop"))
        .unwrap()
        .into_iter()
        .map(|p| (p.pop, p.requests, p.bytes))
        .collect();
    assert_eq!(pops, vec![("fra".into(), 3, 2500), ("iad".into(), 1, 10)]);

    // Per status class.
    let s = store.status_classes(range(0, 60), Some("shop")).unwrap();
    assert_eq!(s[0].classes, [0, 3, 0, 1, 0]);
    assert_eq!(s[1].classes, [0, 0, 0, 0, 1]);
    assert_eq!(s[2].classes, [0, 0, 1, 0, 0]);

    // Per GTM address over time.
    let a: Vec<_> = store
        .answers_by_address(range(0, 60), Some("www.shop.example"))
        .unwrap()
        .into_iter()
        .map(|p| (p.minute, p.address, p.pop, p.answers))
        .collect();
    assert_eq!(
        a,
        vec![
            (m(0), "192.0.2.1".into(), "fra".into(), 2),
            (m(0), "192.0.2.2".into(), "fra".into(), 1),
            (m(2), "192.0.2.3".into(), "iad".into(), 1),
        ]
    );

    // Operational data per latency method.
    let pm: Vec<_> = store
        .probe_methods(range(0, 60))
        .unwrap()
        .into_iter()
        .map(|p| (p.method, p.samples, p.ok, p.mean))
        .collect();
    assert_eq!(
        pm,
        vec![
            ("dns".into(), 1, 1, 4.0),
            ("tcp-connect".into(), 2, 1, 20.0)
        ]
    );

    // Billing: usage per customer per period, and 5-minute bandwidth samples per POP.
    let u = store.usage("shop", range(0, 60)).unwrap();
    assert_eq!(
        (u.requests, u.bytes, u.fill_bytes, u.dns_queries),
        (6, 2530, 510, 3)
    );
    let u = store.usage("shop", range(5, 60)).unwrap();
    assert_eq!((u.requests, u.bytes, u.dns_queries), (1, 20, 0));
    assert_eq!(store.usage("nobody", range(0, 60)).unwrap().requests, 0);
    let bw: Vec<_> = store
        .bandwidth_5m("shop", range(0, 60))
        .unwrap()
        .into_iter()
        .map(|b| (b.bucket, b.pop, b.bytes))
        .collect();
    assert_eq!(
        bw,
        vec![
            (m(0), "fra".into(), 2500),
            (m(0), "iad".into(), 10),
            (m(5), "iad".into(), 20),
        ]
    );

    // Retention: raw rows older than the cut go, rollups and the ledger stay.
    let gone = store
        .prune_raw(Timestamp::from_millis(T0 + 60_000))
        .unwrap();
    assert_eq!(gone, 5 + 2 + 3);
    let c = store.counts().unwrap();
    assert_eq!((c.files, c.http, c.dns, c.probe), (4, 2, 2, 0));
    assert_eq!(store.usage("shop", range(0, 60)).unwrap().requests, 6);
}

#[test]
fn store_ledger_rollups_and_queries() {
    for backend in backends("store_queries") {
        let tmp = TempDir::new(&format!("store-{}", backend.name()));
        // The data directory does not exist yet: first start creates it.
        let data = tmp.path().join("new/data");
        let mut store = backend.open(&data);
        check(store.as_mut());
        drop(store);
        // Migrations are idempotent: reopening keeps the data.
        let mut again = backend.open(&data);
        assert_eq!(again.counts().unwrap().files, 4, "{}", backend.name());
        eprintln!("store queries ok on {}", backend.name());
    }
}

/// An edge's fill record (one per origin fetch, outcome `fill`) counts its origin bytes
/// as cache fill and is not a client request: a prefetch, or a fill whose first client
/// left early, is billed for what the origin sent, once.
#[test]
fn fill_records_count_cache_fill_and_no_request() {
    for backend in backends("store_fill") {
        let tmp = TempDir::new(&format!("store-fill-{}", backend.name()));
        let mut store = backend.open(&tmp.path().join("data"));
        let now = Timestamp::from_millis(T0 + 3_600_000);
        let fill = |sec: u64, origin_bytes: u64| {
            let LogRecord::Http(mut h) = http(0, sec, "shop", "fra", 200, 0, "fill") else {
                unreachable!()
            };
            h.fill_bytes = origin_bytes;
            h.client = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            LogRecord::Http(h)
        };
        let edge = file(
            "edge-fill",
            Role::Edge,
            vec![
                // a prefetched segment nobody has asked for yet
                fill(1, 4000),
                // a fill whose client read only 100 of its 9000 bytes
                fill(2, 9000),
                http(0, 3, "shop", "fra", 200, 100, "hit"),
            ],
        );
        store.ingest(&edge, now).unwrap();
        let u = store.usage("shop", range(0, 60)).unwrap();
        assert_eq!(
            (u.requests, u.bytes, u.fill_bytes),
            (1, 100, 13_000),
            "{}",
            backend.name()
        );
    }
}

/// An HTTP record `day` days, `hour` hours after T0 on `host` (customer shop).
fn http_at(day: u64, hour: u64, host: &str, bytes: u64) -> LogRecord {
    let LogRecord::Http(mut h) = http(0, 0, "shop", "fra", 200, bytes, "hit") else {
        unreachable!()
    };
    h.ts = Timestamp::from_millis(T0 + day * 86_400_000 + hour * 3_600_000);
    h.host = host.into();
    LogRecord::Http(h)
}

/// The hourly and daily rollups are filled at ingestion beside the per-minute ones and
/// give the same totals; each grain's buckets start on its boundary; the host filter
/// keeps one hostname; pruning the per-minute rollups leaves the coarser ones serving a
/// year-long range.
#[test]
fn hourly_and_daily_rollups_serve_long_ranges() {
    use udn_bins::store::{Grain, SeriesQuery};
    for backend in backends("store_grains") {
        let tmp = TempDir::new(&format!("store-grains-{}", backend.name()));
        let mut store = backend.open(&tmp.path().join("data"));
        let name = backend.name();
        let now = Timestamp::from_millis(T0 + 400 * 86_400_000);
        let www = "www.shop.example";
        let img = "img.shop.example";
        let first = file(
            "grains-1",
            Role::Edge,
            vec![
                http_at(0, 0, www, 100),
                http_at(0, 0, www, 100),
                http_at(0, 5, www, 10),
                http_at(3, 1, img, 7),
                http_at(40, 2, www, 1000),
            ],
        );
        store.ingest(&first, now).unwrap();
        // A second file adds to the same hour and day buckets.
        let second = file(
            "grains-2",
            Role::Edge,
            vec![http_at(0, 5, www, 1), http_at(200, 23, img, 5000)],
        );
        store.ingest(&second, now).unwrap();
        let dns_file = file(
            "grains-dns",
            Role::Dns,
            vec![
                dns(0, "shop", &[1], "fra"),
                dns(60 * 24 * 3, "shop", &[1, 2], "fra"),
            ],
        );
        store.ingest(&dns_file, now).unwrap();
        let probes = file(
            "grains-probe",
            Role::Probe,
            vec![
                probe(0, "dns", true, 4.0),
                probe(60 * 30, "dns", false, 8.0),
            ],
        );
        store.ingest(&probes, now).unwrap();

        let year = Range {
            from: Timestamp::from_millis(T0 - 86_400_000),
            to: Timestamp::from_millis(T0 + 366 * 86_400_000),
        };
        let series = |store: &mut dyn udn_bins::store::Store, grain: Grain, host: Option<&str>| {
            let q = SeriesQuery {
                range: grain.align(year),
                grain,
                customer: Some("shop"),
                host,
            };
            store.traffic_series(&q).unwrap()
        };
        let sum = |pts: &[udn_bins::store::TrafficPoint]| {
            (
                pts.iter().map(|p| p.requests).sum::<i64>(),
                pts.iter().map(|p| p.bytes).sum::<i64>(),
            )
        };
        let mut lens = Vec::new();
        for grain in Grain::ALL {
            let pts = series(store.as_mut(), grain, None);
            assert_eq!(sum(&pts), (7, 6218), "{name} {grain:?}");
            for p in &pts {
                assert_eq!(
                    p.minute as u64 % grain.millis(),
                    0,
                    "{name} {grain:?} {p:?}"
                );
            }
            lens.push(pts.len());
            // One hostname only.
            let img_pts = series(store.as_mut(), grain, Some(img));
            assert_eq!(sum(&img_pts), (2, 5007), "{name} {grain:?}");
        }
        // Minutes: 0:00, 5:00, 3d1h, 40d2h, 200d23h; hours: the same five; days: four.
        assert_eq!(lens, vec![5, 5, 4], "{name}");
        let day = series(store.as_mut(), Grain::Day, None);
        assert_eq!(day[0].minute as u64, T0 / 86_400_000 * 86_400_000, "{name}");
        assert_eq!((day[0].requests, day[0].bytes), (4, 211), "{name}");

        // The other series read the same grains.
        for grain in Grain::ALL {
            let q = SeriesQuery {
                range: grain.align(year),
                grain,
                customer: None,
                host: Some("www.shop.example"),
            };
            let answers: i64 = store
                .answers_series(&q)
                .unwrap()
                .iter()
                .map(|p| p.answers)
                .sum();
            assert_eq!(answers, 3, "{name} {grain:?}");
            let by_pop: i64 = store
                .traffic_by_pop_series(&q)
                .unwrap()
                .iter()
                .map(|p| p.requests)
                .sum();
            assert_eq!(by_pop, 5, "{name} {grain:?}");
            let status: i64 = store
                .status_series(&q)
                .unwrap()
                .iter()
                .map(|p| p.classes[1])
                .sum();
            assert_eq!(status, 5, "{name} {grain:?}");
            let probes = store.probe_series(grain.align(year), grain).unwrap();
            let samples: i64 = probes.iter().map(|p| p.samples).sum();
            let ok: i64 = probes.iter().map(|p| p.ok).sum();
            assert_eq!((samples, ok), (2, 1), "{name} {grain:?}");
        }
        // The rule picks the grain from the range's length.
        let q = SeriesQuery::new(year, Some("shop"));
        assert_eq!(q.grain, Grain::Day);

        // Retention: per-minute rollups older than 100 days go; the hourly and daily
        // ones still serve the whole year.
        let cut = Timestamp::from_millis(T0 + 100 * 86_400_000);
        assert!(
            store.prune_rollups(Grain::Minute, cut).unwrap() > 0,
            "{name}"
        );
        assert_eq!(
            sum(&series(store.as_mut(), Grain::Minute, None)),
            (1, 5000),
            "{name}"
        );
        assert_eq!(
            sum(&series(store.as_mut(), Grain::Hour, None)),
            (7, 6218),
            "{name}"
        );
        assert_eq!(
            sum(&series(store.as_mut(), Grain::Day, None)),
            (7, 6218),
            "{name}"
        );
        eprintln!("grains ok on {name}");
    }
}
