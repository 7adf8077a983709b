//! # udn-cache: the edge cache
//!
//! The pure core (default features; no tokio, sockets or clocks):
//!
//! * [`route`]: cache keys for the two URL forms (origin in the path,
//!   `http://cdn-host/www.customer.com/a.gif`, and virtual hosting by Host header),
//!   refusing every origin that is not configured;
//! * [`policy`]: RFC 9111 shared-cache semantics (storability, freshness lifetime with
//!   the heuristic, Age, Vary, request directives, 304 updates) and the customer's
//!   periodic check interval, all with explicit [`Timestamp`](udn_core::Timestamp)s;
//! * [`conditional`]: preconditions (If-Match, If-None-Match, If-Range, ...) answered
//!   from a stored response with RFC 9110's precedence;
//! * [`invalidate`]: the invalidation tree (purge a URL, a directory or a domain in
//!   O(path depth)) with sequence numbers for catch-up;
//! * [`hls`]: which segments a live HLS playlist names next (the edge prefetches them);
//! * [`live`]: which playlists and segments a live event's prefill fetches ahead of
//!   its start;
//! * [`CacheOutcome`] and the embedder hook trait [`EdgeHooks`].
//!
//! Behind the `server` feature, `server` holds the hyper edge server (memory tier on
//! moka, disk tier, origin fetch with request coalescing, purge and prefill
//! endpoints, TLS with SNI).
//!
//! # Examples
//!
//! ```
//! use udn_cache::{Router, invalidate::{InvalidationTree, Scope}};
//! let router = Router::single("http://127.0.0.1:8080").unwrap();
//! let route = router.route("edge.example", "/img/a.gif").unwrap();
//! let mut tree = InvalidationTree::new();
//! let stored_gen = tree.generation();
//! tree.purge(Scope::Prefix, "http://127.0.0.1:8080/img/");
//! assert!(!tree.is_valid(&route.key, stored_gen));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod conditional;
pub mod error;
pub mod hls;
pub mod invalidate;
pub mod live;
pub mod outcome;
pub mod policy;
pub mod route;
#[cfg(feature = "server")]
pub mod server;
pub mod target;

pub use error::{Error, PurgeError, RouteError};
pub use invalidate::{InvalidationTree, Purge, Scope};
pub use outcome::{BypassReason, CacheOutcome, DefaultHooks, EdgeHooks};
pub use route::{Origin, Route, Router};
