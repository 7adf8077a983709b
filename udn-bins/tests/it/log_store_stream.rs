//! The streaming statistics (`rollup_stream`, `rollup_stream_client`) on a real SQLite
//! file and a real PostgreSQL (`UDN_TEST_POSTGRES`): folded once per file, summed
//! across files, scoped per customer, viewer rows pruned with the raw records.

use crate::log_util;

use log_util::*;
use udn_bins::store::{Ingested, PreparedFile, Range};
use udn_core::Timestamp;
use udn_core::log::{HttpRecord, LogRecord, Role};

const T0: u64 = 1_800_000_000_000;

#[allow(clippy::too_many_arguments)]
fn rec(
    min: u64,
    customer: &str,
    path: &str,
    status: u16,
    bytes: u64,
    outcome: &str,
    us: u64,
    client: &str,
) -> LogRecord {
    LogRecord::Http(HttpRecord {
        ts: Timestamp::from_millis(T0 + min * 60_000 + 1000),
        customer: Some(customer.into()),
        host: format!("cdn.{customer}.example"),
        path: path.into(),
        method: "GET".into(),
        status,
        bytes: if outcome == "fill" { 0 } else { bytes },
        fill_bytes: if outcome == "fill" { bytes } else { 0 },
        outcome: outcome.into(),
        duration_us: us,
        client: client.parse().unwrap(),
        pop: "fra".into(),
    })
}

fn file(id: &str, records: Vec<LogRecord>) -> PreparedFile {
    prepared_file(id, Role::Edge, T0, records)
}

#[test]
fn stream_rollups_on_both_stores() {
    for backend in backends("store_streams") {
        let name = backend.name();
        let tmp = TempDir::new(&format!("store-streams-{name}"));
        let mut store = backend.open(&tmp.path().join("data"));
        let now = Timestamp::from_millis(T0 + 3_600_000);
        let a = file(
            "s-1",
            vec![
                rec(
                    0,
                    "shop",
                    "/live/index.m3u8",
                    200,
                    300,
                    "fill",
                    2_000,
                    "0.0.0.0",
                ),
                rec(
                    0,
                    "shop",
                    "/live/index.m3u8?_HLS_msn=3",
                    200,
                    300,
                    "miss",
                    2_500,
                    "192.0.2.1",
                ),
                rec(
                    0,
                    "shop",
                    "/live/seg1.ts",
                    200,
                    5000,
                    "fill",
                    9_000,
                    "0.0.0.0",
                ),
                rec(
                    0,
                    "shop",
                    "/live/seg1.ts",
                    200,
                    5000,
                    "hit",
                    100,
                    "192.0.2.1",
                ),
                rec(
                    0,
                    "shop",
                    "/live/seg1.ts",
                    200,
                    5000,
                    "hit",
                    100,
                    "192.0.2.2",
                ),
                rec(0, "shop", "/live/seg9.ts", 404, 9, "miss", 100, "192.0.2.2"),
                rec(0, "shop", "/index.html", 200, 77, "hit", 100, "192.0.2.1"),
                rec(
                    0,
                    "acme",
                    "/secret/a.m4s",
                    200,
                    999,
                    "hit",
                    100,
                    "198.51.100.7",
                ),
            ],
        );
        // A second file of the same minute: summed into the same rows, the same viewer
        // counted once.
        let b = file(
            "s-2",
            vec![
                rec(
                    0,
                    "shop",
                    "/live/seg2.ts",
                    200,
                    6000,
                    "fill",
                    12_000,
                    "0.0.0.0",
                ),
                rec(
                    0,
                    "shop",
                    "/live/seg2.ts",
                    200,
                    6000,
                    "hit",
                    100,
                    "192.0.2.1",
                ),
                rec(
                    1,
                    "shop",
                    "/live/seg3.ts",
                    200,
                    7000,
                    "hit",
                    100,
                    "192.0.2.3",
                ),
            ],
        );
        assert!(matches!(
            store.ingest(&a, now).unwrap(),
            Ingested::Inserted { .. }
        ));
        assert!(matches!(
            store.ingest(&b, now).unwrap(),
            Ingested::Inserted { .. }
        ));
        // Exactly once per file.
        assert!(matches!(
            store.ingest(&a, now).unwrap(),
            Ingested::Duplicate { .. }
        ));
        let all = Range {
            from: Timestamp::from_millis(T0),
            to: Timestamp::from_millis(T0 + 3_600_000),
        };
        let r = store.streaming(all, Some("shop")).unwrap();
        assert_eq!(r.streams.len(), 1, "{name}: {r:?}");
        let s = &r.streams[0];
        assert_eq!(
            (s.host.as_str(), s.stream.as_str()),
            ("cdn.shop.example", "/live/")
        );
        let g = s.agg;
        assert_eq!(
            (g.requests, g.segments, g.playlists, g.errors, g.hits),
            (6, 4, 1, 1, 4),
            "{name}: {s:?}"
        );
        assert_eq!(g.bytes, 300 + 5000 * 2 + 9 + 6000 + 7000, "{name}");
        assert_eq!(
            (g.segment_fills, g.playlist_fills, g.fill_errors),
            (2, 1, 0),
            "{name}"
        );
        assert_eq!(g.fill_bytes, 300 + 5000 + 6000, "{name}");
        assert_eq!((g.fill_us, g.fill_us_max), (23_000, 12_000), "{name}");
        assert_eq!(s.viewers, 3, "{name}: three viewer addresses");
        // The series: minute 0 (two viewers) and minute 1 (one).
        let per_minute: Vec<_> = r
            .series
            .iter()
            .map(|p| (p.minute, p.viewers, p.agg.segments))
            .collect();
        assert_eq!(
            per_minute,
            vec![(T0 as i64, 2, 3), (T0 as i64 + 60_000, 1, 1)],
            "{name}"
        );
        let top = &r.clients[0];
        assert_eq!(
            (top.client.as_str(), top.agg.bytes),
            ("192.0.2.1", 300 + 5000 + 6000),
            "{name}"
        );
        // The other customer's stream is not the shop's, and is its own.
        assert!(r.clients.iter().all(|c| c.customer == "shop"), "{name}");
        let acme = store.streaming(all, Some("acme")).unwrap();
        assert_eq!(acme.streams.len(), 1);
        assert_eq!(acme.streams[0].stream, "/secret/");
        assert_eq!(
            store.streaming(all, None).unwrap().streams.len(),
            2,
            "{name}"
        );
        // Viewer rows go with the raw records; the stream totals stay.
        store
            .prune_raw(Timestamp::from_millis(T0 + 3_600_000))
            .unwrap();
        let r = store.streaming(all, Some("shop")).unwrap();
        assert_eq!(
            (r.streams[0].viewers, r.streams[0].agg.segments),
            (0, 4),
            "{name}"
        );
        assert!(r.clients.is_empty(), "{name}");
        eprintln!("stream rollups ok on {name}");
    }
}
