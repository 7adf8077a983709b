//! # udn-cache: the edge cache
//!
//! This crate will hold (issue "The edge cache"):
//!
//! * **pure cache semantics**: cache keys for origin-in-path
//!   (`http://cdn-host/www.customer.com/a.gif`) and virtual-hosted URLs, RFC 9111
//!   storability, freshness and revalidation, and the invalidation tree (purge a URL, a
//!   directory prefix or a whole domain in O(path depth), with sequence numbers);
//! * behind the `server` feature, the hyper edge server: memory tier (moka) and disk
//!   tier, origin fetch with request coalescing, purge and prefill endpoints, TLS.
//!
//! The default build has no tokio, sockets or clocks.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
