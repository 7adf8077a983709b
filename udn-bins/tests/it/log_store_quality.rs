//! The CDN quality rollups (`rollup_quality`: response-time histogram, origin errors),
//! the probes' latest views of each server (the GTM pages' live health), the decision
//! reasons,
//! and the top lists on a real SQLite file and a real PostgreSQL
//! (`UDN_TEST_POSTGRES`): folded once per file, the same answers per minute and per day,
//! scoped per customer and hostname.

use crate::log_util;

use log_util::*;
use udn_bins::store::quality::{BUCKETS, bucket_bounds, bucket_of};
use udn_bins::store::{Grain, Ingested, PreparedFile, Range, SeriesQuery};
use udn_core::Timestamp;
use udn_core::log::{HttpRecord, LogRecord, Role};

const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000;

fn rec(
    min: u64,
    host: &str,
    path: &str,
    status: u16,
    outcome: &str,
    ms: u64,
    client: &str,
) -> LogRecord {
    let customer = host.split('.').nth(1).unwrap();
    LogRecord::Http(HttpRecord {
        ts: Timestamp::from_millis(T0 + min * 60_000 + 1000),
        customer: Some(customer.into()),
        host: host.into(),
        path: path.into(),
        method: "GET".into(),
        status,
        bytes: 100,
        fill_bytes: 0,
        outcome: outcome.into(),
        duration_us: ms * 1000,
        client: client.parse().unwrap(),
        pop: "fra".into(),
    })
}

fn file(id: &str, records: Vec<LogRecord>) -> PreparedFile {
    prepared_file(id, Role::Edge, T0, records)
}

#[test]
fn quality_rollups_and_top_lists_on_both_stores() {
    for backend in backends("store_quality") {
        let name = backend.name();
        let tmp = TempDir::new(&format!("store-quality-{name}"));
        let mut store = backend.open(&tmp.path().join("data"));
        let now = Timestamp::from_millis(T0 + 3_600_000);
        let shop = "cdn.shop.example";
        // Minute 0: 90 fast hits (5 ms) from one /24, 8 slow misses (300 ms) from
        // another; minute 1: two origin errors (a 502 miss, a 503 pass-through), a 500
        // served from the cache (not an origin error), and a fill record (no response).
        let mut a = Vec::new();
        for i in 0..90 {
            a.push(rec(
                0,
                shop,
                "/logo.svg",
                200,
                "hit",
                5,
                &format!("192.0.2.{}", i % 50),
            ));
        }
        for i in 0..8 {
            a.push(rec(
                0,
                shop,
                &format!("/p{i}"),
                200,
                "miss",
                300,
                "198.51.100.9",
            ));
        }
        a.push(rec(1, shop, "/down", 502, "miss", 2_000, "198.51.100.9"));
        a.push(rec(1, shop, "/api", 503, "bypass", 40, "198.51.100.9"));
        a.push(rec(1, shop, "/logo.svg", 500, "hit", 1, "192.0.2.1"));
        let mut fill = rec(1, shop, "/p1", 200, "fill", 9_000, "0.0.0.0");
        if let LogRecord::Http(h) = &mut fill {
            h.bytes = 0;
            h.fill_bytes = 5000;
        }
        a.push(fill);
        // Another customer's traffic in the same minute.
        for _ in 0..5 {
            a.push(rec(
                0,
                "cdn.acme.example",
                "/secret",
                200,
                "miss",
                9_000,
                "203.0.113.5",
            ));
        }
        let fa = file("q-1", a);
        assert!(matches!(
            store.ingest(&fa, now).unwrap(),
            Ingested::Inserted { .. }
        ));
        assert!(matches!(
            store.ingest(&fa, now).unwrap(),
            Ingested::Duplicate { .. }
        ));
        let hour = Range {
            from: Timestamp::from_millis(T0),
            to: Timestamp::from_millis(T0 + 3_600_000),
        };
        let q = SeriesQuery {
            range: hour,
            grain: Grain::Minute,
            customer: Some("shop"),
            host: None,
        };
        let pts = store.quality(&q).unwrap();
        assert_eq!(pts.len(), 2, "{name}: {pts:?}");
        let m0 = &pts[0];
        assert_eq!((m0.requests, m0.hits, m0.misses), (98, 90, 8), "{name}");
        assert!((m0.hit_ratio.unwrap() - 90.0 / 98.0).abs() < 1e-9, "{name}");
        assert_eq!(m0.hist.iter().sum::<i64>(), 98, "{name}");
        // p50 in the 5 ms bucket, p95 and p99 in the 300 ms one.
        let (lo5, hi5) = bucket_bounds(bucket_of(5_000));
        let (lo300, hi300) = bucket_bounds(bucket_of(300_000));
        assert!((lo5..hi5).contains(&m0.p50_ms.unwrap()), "{name}: {m0:?}");
        assert!(
            (lo300..=hi300).contains(&m0.p95_ms.unwrap()),
            "{name}: {m0:?}"
        );
        assert!(
            (lo300..=hi300).contains(&m0.p99_ms.unwrap()),
            "{name}: {m0:?}"
        );
        let m1 = &pts[1];
        assert_eq!(
            (m1.requests, m1.origin_errors, m1.status[4]),
            (3, 2, 3),
            "{name}: {m1:?}"
        );
        assert_eq!(m1.bypass, 1, "{name}");

        // The same answer from the daily rollups, summed.
        let day = SeriesQuery {
            range: Range {
                from: Timestamp::from_millis(T0),
                to: Timestamp::from_millis(T0 + 86_400_000),
            },
            grain: Grain::Day,
            ..q
        };
        let d = store.quality(&day).unwrap();
        assert_eq!(d.len(), 1, "{name}");
        assert_eq!((d[0].requests, d[0].origin_errors), (101, 2), "{name}");
        let mut want = [0i64; BUCKETS];
        for p in &pts {
            for (w, h) in want.iter_mut().zip(p.hist) {
                *w += h;
            }
        }
        assert_eq!(
            d[0].hist, want,
            "{name}: the day holds the minutes' histogram"
        );

        // One hostname: acme's alone; and acme sees none of the shop's.
        let acme = store
            .quality(&SeriesQuery {
                customer: Some("acme"),
                ..q
            })
            .unwrap();
        assert_eq!(acme.len(), 1);
        assert_eq!((acme[0].requests, acme[0].misses), (5, 5), "{name}");

        // Top lists: the logo first; the 192.0.2.0/24 network first (91 responses).
        let top = store.top(&q).unwrap();
        assert_eq!(
            (top.urls[0].path.as_str(), top.urls[0].requests),
            ("/logo.svg", 91),
            "{name}: {top:?}"
        );
        assert!(top.urls.iter().all(|u| u.host == shop), "{name}");
        assert_eq!(
            (top.networks[0].network.as_str(), top.networks[0].requests),
            ("192.0.2.0/24", 91),
            "{name}: {top:?}"
        );
        assert_eq!(top.networks[1].network, "198.51.100.0/24", "{name}");
        assert!(
            top.networks.iter().all(|n| n.network != "0.0.0.0/24"),
            "fill records are not clients: {top:?}"
        );
        eprintln!("quality rollups ok on {name}");
    }
}

fn probe(secs: u64, pop: &str, server: &str, ok: bool, detail: &str) -> LogRecord {
    LogRecord::Probe(udn_core::log::ProbeRecord {
        ts: Timestamp::from_millis(T0 + secs * 1000),
        pop: pop.into(),
        kind: "service".into(),
        target: server.into(),
        method: "http".into(),
        ok,
        value: 3.0,
        detail: detail.into(),
    })
}

#[test]
fn the_probes_latest_views_and_the_decision_reasons_on_both_stores() {
    for backend in backends("store_health") {
        let name = backend.name();
        let tmp = TempDir::new(&format!("store-health-{name}"));
        let mut store = backend.open(&tmp.path().join("data"));
        let now = Timestamp::from_millis(T0 + 3_600_000);
        // fra sees east go down (a transition, then failing tests); nyc sees it up
        // throughout; west had one passing test and no transition yet.
        let records = vec![
            probe(0, "fra", "east", true, "state=up"),
            probe(2, "fra", "east", false, "127.0.0.21: refused"),
            probe(4, "fra", "east", false, "127.0.0.21: refused state=down"),
            probe(6, "fra", "east", false, "127.0.0.21: refused"),
            probe(5, "nyc", "east", true, "state=up"),
            probe(7, "nyc", "east", true, ""),
            probe(3, "fra", "west", true, ""),
        ];
        let f = prepared_file("p-1", Role::Probe, T0, records);
        store.ingest(&f, now).unwrap();
        let mut checks = store.service_checks(Timestamp::from_millis(T0)).unwrap();
        checks.sort_by(|a, b| (&a.server, &a.pop).cmp(&(&b.server, &b.pop)));
        let got: Vec<_> = checks
            .iter()
            .map(|c| {
                (
                    c.server.as_str(),
                    c.pop.as_str(),
                    c.state.as_str(),
                    c.last_ok,
                    c.last_check,
                )
            })
            .collect();
        let at = |s: u64| (T0 + s * 1000) as i64;
        assert_eq!(
            got,
            vec![
                ("east", "fra", "down", false, at(6)),
                ("east", "nyc", "up", true, at(7)),
                ("west", "fra", "up", true, at(3)),
            ],
            "{name}"
        );
        // Tests before `since` are not read.
        assert!(
            store
                .service_checks(Timestamp::from_millis(T0 + 60_000))
                .unwrap()
                .is_empty()
        );

        // The decision reasons of a DNS file, most first, per customer.
        let dns = |reason: &str, customer: &str| {
            LogRecord::Dns(udn_core::log::DnsRecord {
                ts: Timestamp::from_millis(T0 + 1000),
                hostname: format!("www.{customer}.example"),
                qtype: "A".into(),
                client: "192.0.2.1".parse().unwrap(),
                ecs: None,
                addrs: vec!["127.0.0.21".parse().unwrap()],
                reason: reason.into(),
                pop: Some("fra".into()),
                customer: Some(customer.into()),
                server: "dns-a".into(),
            })
        };
        let mut recs = Vec::new();
        for _ in 0..5 {
            recs.push(dns("latency", "shop"));
        }
        recs.push(dns("sticky", "shop"));
        recs.push(dns("sticky", "shop"));
        recs.push(dns("standby", "shop"));
        recs.push(dns("static", "acme"));
        store
            .ingest(&prepared_file("d-1", Role::Dns, T0, recs), now)
            .unwrap();
        let q = SeriesQuery {
            range: Range {
                from: Timestamp::from_millis(T0),
                to: Timestamp::from_millis(T0 + 3_600_000),
            },
            grain: Grain::Minute,
            customer: Some("shop"),
            host: None,
        };
        assert_eq!(
            store.dns_reasons(&q).unwrap(),
            vec![
                ("latency".to_string(), 5),
                ("sticky".to_string(), 2),
                ("standby".to_string(), 1)
            ],
            "{name}"
        );
        eprintln!("probe views and reasons ok on {name}");
    }
}
