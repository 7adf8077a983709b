//! A year-long chart query on each store: one customer's CDN traffic over 365 days,
//! read from the per-minute rollups (what every range read before the hourly and daily
//! rollups) and from the grain the rule picks (daily). Bounded: it stores one year of
//! per-minute traffic for one key (525,600 records, one per minute) once per store.
//!
//! cargo run --release -p udn-benches --bin series-query -- [--postgres URL]
//!     [--clickhouse URL] [--rounds 5]

use std::time::Instant;
use udn_bins::store::{self, Grain, Location, PreparedFile, Range, SeriesQuery};
use udn_core::Timestamp;
use udn_core::log::{FORMAT_VERSION, FileHeader, HttpRecord, LogRecord, MAGIC, Role};

const DAY: u64 = 86_400_000;
const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn year_file() -> PreparedFile {
    let records: Vec<LogRecord> = (0..365 * 1440u64)
        .map(|m| {
            LogRecord::Http(HttpRecord {
                ts: Timestamp::from_millis(T0 + m * 60_000),
                customer: Some("series-bench".into()),
                host: "cdn.shop.example".into(),
                path: "/".into(),
                method: "GET".into(),
                status: 200,
                bytes: 1000,
                fill_bytes: 0,
                outcome: "hit".into(),
                duration_us: 100,
                client: "127.0.0.1".parse().expect("address"),
                pop: "fra".into(),
            })
        })
        .collect();
    let header = FileHeader {
        magic: MAGIC.into(),
        version: FORMAT_VERSION,
        file_id: "series-query-year".into(),
        role: Role::Edge,
        instance: "bench".into(),
        opened_at: Timestamp::from_millis(T0),
    };
    PreparedFile::new(header, "bench".into(), records)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut pg, mut ch, mut rounds) = (None, None, 5u32);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--postgres", Some(v)) => pg = Some(v),
            ("--clickhouse", Some(v)) => ch = Some(v),
            ("--rounds", Some(v)) => rounds = v.parse().unwrap_or(5).clamp(1, 50),
            _ => {
                eprintln!("usage: series-query [--postgres URL] [--clickhouse URL] [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("udn-series-query-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut stores = vec![(
        "sqlite",
        Location::Sqlite {
            dir: dir.clone(),
            max_pages: None,
        },
    )];
    if let Some(url) = pg {
        stores.push(("postgres", Location::Postgres { url }));
    }
    if let Some(url) = ch {
        stores.push(("clickhouse", Location::ClickHouse { url }));
    }
    let file = year_file();
    let year = Range {
        from: Timestamp::from_millis(T0),
        to: Timestamp::from_millis(T0 + 365 * DAY),
    };
    for (name, loc) in stores {
        let mut s = store::open(&loc).expect("store opens");
        let t = Instant::now();
        s.ingest(&file, Timestamp::from_millis(T0 + 366 * DAY))
            .expect("ingest");
        println!(
            "{name:10} stored a year per minute ({} records) in {:.2} s",
            file.records.len(),
            t.elapsed().as_secs_f64()
        );
        for grain in [Grain::Minute, Grain::Day] {
            let q = SeriesQuery {
                range: year,
                grain,
                customer: Some("series-bench"),
                host: None,
            };
            let mut best = f64::MAX;
            let mut points = 0;
            for _ in 0..rounds {
                let t = Instant::now();
                let pts = s.traffic_series(&q).expect("query");
                best = best.min(t.elapsed().as_secs_f64());
                points = pts.len();
                assert_eq!(
                    pts.iter().map(|p| p.requests).sum::<i64>(),
                    365 * 1440,
                    "every request counted at {grain:?}"
                );
            }
            println!(
                "{name:10} year-long series from the {:6} rollups: {points:6} points, best of {rounds}: {:8.2} ms",
                grain.name(),
                best * 1000.0
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
