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
//! * [`pg`]: the PostgreSQL connection layer the stores share (a `deadpool-postgres`
//!   pool on one I/O runtime, used synchronously);
//! * [`pool`]: a fixed pool of SQLite connections (the readers);
//! * [`migrate`]: the versioned, append-only migrations of all three, run at start under
//!   a lock (refinery).
//!
//! The crate does no networking of its own beyond its database clients. Its API is
//! synchronous; PostgreSQL's connections live on one I/O thread of [`pg`]'s, so the
//! stores may be used and dropped on any thread.
#![forbid(unsafe_code)]

pub mod billing;
pub mod control;
pub mod logs;
pub mod migrate;
pub mod pg;
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
