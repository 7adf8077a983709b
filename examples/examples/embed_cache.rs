//! The pure edge-cache core inside your own proxy: map a request to its origin and
//! cache key, decide whether a response may be stored and whether a stored one may be
//! served, and purge by URL, directory or domain. No runtime, no clock: time is an
//! argument.
//!
//! Run with `cargo run -p udn-examples --example embed_cache`.

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::time::Duration;
use udn_cache::invalidate::{InvalidationTree, Purge};
use udn_cache::policy::{self, Action, StoredMeta};
use udn_cache::{DefaultHooks, EdgeHooks, Router};
use udn_core::Timestamp;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = udn_core::Config::from_toml(udn_core::config::SAMPLE)?;
    let router = Router::for_pop(&cfg, "fra")?;
    let hooks = DefaultHooks;

    // Both URL forms name one object; an unconfigured host is refused.
    let route = hooks.cache_key(
        &router,
        "cdn.shop.udn.example",
        "/www.shop.udn.example/img/logo.png",
    )?;
    println!("key {} -> fetch {}", route.key, route.fetch_url);
    println!(
        "evil.example: {}",
        router.route("evil.example", "/").unwrap_err()
    );

    // The origin answered; may a shared cache store it?
    let t0 = Timestamp::from_secs(1_700_000_000);
    let mut resp = HeaderMap::new();
    resp.insert(
        "cache-control",
        HeaderValue::from_static("max-age=300, stale-if-error=3600"),
    );
    resp.insert("etag", HeaderValue::from_static("\"v1\""));
    let req = HeaderMap::new();
    hooks
        .cacheable(&route, &Method::GET, &req, StatusCode::OK, &resp)
        .map_err(|r| format!("not cacheable: {r:?}"))?;
    let mut meta = StoredMeta::new(StatusCode::OK, resp, t0, t0);

    // Later requests: fresh, then due for revalidation (the sample CDN hostname has a
    // 60 s periodic check interval), then served stale because the origin failed.
    for secs in [30, 90, 400] {
        let now = t0.plus(Duration::from_secs(secs));
        let action = policy::evaluate(&meta, &req, now, route.origin.check_interval);
        println!(
            "t+{secs}s: {} (age {:?})",
            action.as_str(),
            meta.current_age(now)
        );
        if action == Action::Revalidate {
            println!(
                "  conditional request headers: {:?}",
                meta.conditional_headers()
            );
            println!(
                "  stale-if-error allows serving it: {}",
                hooks.serve_stale(&meta, &req, now)
            );
        }
    }
    // A 304 refreshes the stored headers.
    let mut not_modified = HeaderMap::new();
    not_modified.insert("cache-control", HeaderValue::from_static("max-age=600"));
    let t1 = t0.plus(Duration::from_secs(400));
    meta.update_from_304(&not_modified, t1, t1);
    println!("after 304: lifetime {:?}", meta.freshness_lifetime());

    // Purges: stamp entries with the generation when their fetch starts.
    let mut tree = InvalidationTree::new();
    let stamped = tree.generation();
    tree.apply(&Purge::parse(
        "prefix",
        "http://www.shop.udn.example/img/",
        1,
    )?);
    println!(
        "logo valid after /img/ purge: {}",
        tree.is_valid(&route.key, stamped)
    );
    println!(
        "purges to replay after seq 0: {}",
        tree.since(0).map_or(0, |v| v.len())
    );
    Ok(())
}
