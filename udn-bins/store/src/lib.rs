//! UDN's storage layer, used by `udn control` (collector, portal, API, billing) and by
//! anyone who embeds those parts: every table UDN keeps, on every database it supports.
//!
//! * [`logs`]: the log store. One [`logs::Store`] trait over SQLite (the embedded
//!   default), PostgreSQL and ClickHouse; exactly-once ingestion of log files, rollups
//!   per minute, hour and day, and the queries of the portal's charts and of billing,
//!   each written once in portable SQL.
//! * [`control`]: the control plane's tables (customers, users, sessions, configuration
//!   versions, purges and prefills, API tokens) behind the [`control::Backend`] trait,
//!   on SQLite ([`control::SqliteBackend`]) and PostgreSQL ([`control::PgBackend`]).
//! * [`billing`]: invoices, payments and their immutable numbering
//!   ([`billing::BillingStore`]) on both databases, and the usage billing reads from the
//!   log store ([`billing::usage_from_store`]).
//! * [`pool`]: the connection pool the stores share;
//! * [`migrate`]: the versioned, append-only migrations of all three, run at start under
//!   a lock (refinery).
//!
//! The crate does no networking of its own beyond its database clients, and starts no
//! runtime: the synchronous `postgres` client it uses brings its own, which is why
//! [`drop_off_runtime`] exists.
#![forbid(unsafe_code)]

pub mod billing;
pub mod control;
pub mod logs;
pub mod migrate;
pub mod pool;

/// The wall clock as a [`udn_core::Timestamp`] (milliseconds since the Unix epoch; 0 if
/// the clock is before it). The stores stamp what they record with it; the roles use it
/// too (`udn_bins::logging::now`).
pub fn now() -> udn_core::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    udn_core::Timestamp::from_millis(ms)
}

/// Drops `value` where blocking is allowed: on a thread of its own when called inside a
/// tokio runtime, else right here. A synchronous `postgres` client closes its
/// connection by blocking on the crate's own runtime, which panics inside another
/// runtime (a role shutting down drops its stores in async code).
pub fn drop_off_runtime<T: Send + 'static>(value: T) {
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::spawn(move || drop(value)).join();
    } else {
        drop(value);
    }
}
