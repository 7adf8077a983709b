//! Cache outcomes and the embedder hook trait.

use crate::error::RouteError;
use crate::policy::{self, StoredMeta};
use crate::route::{Route, Router};
use http::{HeaderMap, Method, StatusCode};
use udn_core::Timestamp;

/// Why a request bypassed the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BypassReason {
    /// Not a GET or HEAD.
    Method,
    /// The response may not be stored (RFC 9111).
    NotStorable(policy::NotStorable),
    /// A hook said so.
    Hook,
}

/// What the cache did for a request; `as_str()` is the `X-Cache` header value and
/// the access log's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Served from the cache without contacting the origin.
    Hit,
    /// Fetched from the origin (and stored if allowed).
    Miss,
    /// Revalidated with the origin (304): served from the cache.
    Revalidated,
    /// Served stale (max-stale, stale-while-revalidate or stale-if-error).
    Stale,
    /// Not cacheable: passed through to the origin.
    Bypass(BypassReason),
}

impl CacheOutcome {
    /// `HIT`, `MISS`, `REVALIDATED`, `STALE`, `BYPASS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "HIT",
            CacheOutcome::Miss => "MISS",
            CacheOutcome::Revalidated => "REVALIDATED",
            CacheOutcome::Stale => "STALE",
            CacheOutcome::Bypass(_) => "BYPASS",
        }
    }

    /// Lower-case name for logs and metric labels: `hit`, `miss`, ...
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Bypass(_) => "bypass",
        }
    }
}

/// The plug-in points of the edge for embedders. Every method has a default that
/// calls this crate's pure functions; override one to change a policy.
///
/// # Examples
///
/// ```
/// use udn_cache::{EdgeHooks, Route, Router, DefaultHooks};
/// use http::{HeaderMap, Method, StatusCode};
///
/// /// Never cache anything under /api/.
/// struct NoApi;
/// impl EdgeHooks for NoApi {
///     fn cacheable(&self, route: &Route, m: &Method, req: &HeaderMap, s: StatusCode, resp: &HeaderMap)
///         -> Result<(), udn_cache::BypassReason> {
///         if route.path.starts_with("/api/") {
///             return Err(udn_cache::BypassReason::Hook);
///         }
///         DefaultHooks.cacheable(route, m, req, s, resp)
///     }
/// }
/// let router = Router::single("http://127.0.0.1:8080").unwrap();
/// let r = NoApi.cache_key(&router, "x", "/api/v1").unwrap();
/// assert!(NoApi.cacheable(&r, &Method::GET, &HeaderMap::new(), StatusCode::OK, &HeaderMap::new()).is_err());
/// ```
pub trait EdgeHooks: Send + Sync {
    /// Maps a request to its origin and primary cache key (default: [`Router::route`]).
    fn cache_key(&self, router: &Router, host: &str, target: &str) -> Result<Route, RouteError> {
        router.route(host, target)
    }

    /// Whether a response may be stored (default: [`policy::storable_with`], with
    /// `Set-Cookie` allowed when the route's hostname sets `cache_set_cookie`).
    fn cacheable(
        &self,
        route: &Route,
        method: &Method,
        req: &HeaderMap,
        status: StatusCode,
        resp: &HeaderMap,
    ) -> Result<(), BypassReason> {
        policy::storable_with(method, req, status, resp, route.origin.cache_set_cookie)
            .map_err(BypassReason::NotStorable)
    }

    /// Whether a stored response may be served stale because the origin failed
    /// (default: [`policy::stale_if_error`]).
    fn serve_stale(&self, meta: &StoredMeta, req: &HeaderMap, now: Timestamp) -> bool {
        policy::stale_if_error(meta, req, now)
    }
}

/// The hooks with every default.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultHooks;

impl EdgeHooks for DefaultHooks {}
