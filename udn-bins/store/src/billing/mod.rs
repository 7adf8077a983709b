//! Billing's tables: invoices, their line items, payments and delivery attempts, with
//! gap-free numbering and immutability of issued documents.
//!
//! * [`store`]: the [`BillingStore`] trait and [`SqliteBillingStore`] (tables
//!   `billing_*`, immutability enforced by triggers; [`BillingLocation`] opens either
//!   store);
//! * [`pg`]: [`PgBillingStore`], the same tables and guarantees in PostgreSQL;
//! * [`payment`]: the [`PaymentProvider`] trait (card payments) and manual payment
//!   recording;
//! * [`run`]: [`run_period`] issues the invoices of a period from the usage in the log
//!   store, [`audit`] recomputes one;
//! * [`usage`]: [`usage_from_store`], the metered usage of a period read from the log
//!   store's per-minute rollups.
//!
//! Rendering is `udn_billing::render`; delivery (SMTP, post) and the schedule are in
//! `udn-bins` (`billing`).

pub mod payment;
pub mod pg;
pub mod run;
pub mod store;
pub mod usage;

pub use payment::{PaymentProvider, collect_card_payments, record_manual_payment};
pub use pg::PgBillingStore;
pub use run::{Audit, RunReport, audit, run_period};
pub use store::{BillingLocation, BillingStore, SqliteBillingStore, Status, StoredInvoice};
pub use usage::usage_from_store;
