//! The pure per-request work of a cache hit: routing a request to its key and deciding
//! (RFC 9111) whether the stored response may be served.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::hint::black_box;
use udn_cache::Router;
use udn_cache::policy::{self, StoredMeta};
use udn_core::Timestamp;

fn bench(c: &mut Criterion) {
    let cfg = udn_core::Config::from_toml(udn_core::config::SAMPLE).expect("sample config");
    let router = Router::from_config(&cfg).expect("routes");
    c.bench_function("cache_route_origin_in_path", |b| {
        b.iter(|| {
            black_box(router.route(
                black_box("cdn.shop.udn.example"),
                black_box("/www.shop.udn.example/img/logo.png?v=3"),
            ))
        })
    });

    let t0 = Timestamp::from_secs(1_700_000_000);
    let mut resp = HeaderMap::new();
    resp.insert(
        "date",
        HeaderValue::from_str(&policy::format_date(t0)).expect("date"),
    );
    resp.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=300, stale-while-revalidate=60"),
    );
    resp.insert("etag", HeaderValue::from_static("\"abc\""));
    resp.insert("content-type", HeaderValue::from_static("image/png"));
    let meta = StoredMeta::new(StatusCode::OK, resp, t0, t0);
    let mut req = HeaderMap::new();
    req.insert("accept", HeaderValue::from_static("image/*"));
    req.insert("user-agent", HeaderValue::from_static("bench"));
    let now = Timestamp::from_secs(1_700_000_100);
    c.bench_function("cache_evaluate_fresh_hit", |b| {
        b.iter(|| {
            black_box(policy::evaluate(
                black_box(&meta),
                black_box(&req),
                now,
                None,
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
