//! The edge server inside your own program, with a hook of your own: a caching
//! reverse proxy for one origin that never caches `/api/`.
//!
//! Run with `cargo run -p udn-examples --example embed_cache_server -- http://127.0.0.1:8080`
//! and try `curl -i http://127.0.0.1:8081/`. Ctrl-C stops it.

use http::{HeaderMap, Method, StatusCode};
use std::sync::Arc;
use udn_cache::server::{Edge, start};
use udn_cache::{BypassReason, DefaultHooks, EdgeHooks, Route, Router};

/// Never cache anything under `/api/`; everything else by RFC 9111.
struct NoApi;

impl EdgeHooks for NoApi {
    fn cacheable(
        &self,
        route: &Route,
        method: &Method,
        req: &HeaderMap,
        status: StatusCode,
        resp: &HeaderMap,
    ) -> Result<(), BypassReason> {
        if route.path.starts_with("/api/") {
            return Err(BypassReason::Hook);
        }
        DefaultHooks.cacheable(route, method, req, status, resp)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let origin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let edge = Edge::builder(Router::single(&origin)?)
        .memory_bytes(64 << 20)
        .hooks(Arc::new(NoApi))
        .build()?;
    let handle = start(edge, "127.0.0.1:8081".parse()?, None).await?;
    println!("caching {origin} on http://{}", handle.http_addr);
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
