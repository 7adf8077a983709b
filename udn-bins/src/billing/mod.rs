//! Billing runs for `udn control`: the I/O around the pure `udn-billing` crate.
//!
//! Here: [`cli`] (`udn control billing ...`), [`delivery`] (e-mail through SMTP with
//! lettre, the PDF attached, or PDF documents for post, each attempt logged) and
//! [`schedule`] (the billing runs due and their retries). Re-exported from the storage
//! layer (`udn-store`): [`store`] ([`BillingStore`], [`SqliteBillingStore`],
//! [`BillingLocation`]), [`pg`] ([`PgBillingStore`]), [`run`] ([`run_period`] issues the
//! invoices of a period, [`audit`] recomputes one), [`payment`] and [`usage`]; from
//! `udn-billing`: [`render`] (plain text, HTML with a print stylesheet, PDF).
//!
//! The command-line and API shape for `udn control` is in `docs/billing.md`.
//!
//! # Examples
//!
//! ```no_run
//! use udn_bins::billing::{self, BillingStore, SqliteBillingStore};
//! let mut store = SqliteBillingStore::open("udn.sqlite".as_ref())?;
//! let period = udn_billing::Period::parse("2026-11")?;
//! let report = billing::run_period(&mut store, &period, udn_bins::logging::now())?;
//! for i in &report.issued {
//!     println!("{} {} {}", i.number, i.account, i.total);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod cli;
pub mod delivery;
pub mod schedule;

/// Invoice rendering (`udn-billing`).
pub use udn_billing::render;
/// Billing's tables and usage reader (`udn-store`).
pub use udn_store::billing::{payment, pg, run, store, usage};

pub use cli::{BillingArgs, BillingCommand, execute};
pub use delivery::{DeliveryReport, SmtpConfig, SmtpSecurity, deliver_pending};
pub use payment::{PaymentProvider, collect_card_payments, record_manual_payment};
pub use pg::PgBillingStore;
pub use render::{Issuer, render_html, render_pdf, render_text};
pub use run::{Audit, RunReport, audit, run_period};
pub use store::{BillingLocation, BillingStore, SqliteBillingStore, Status, StoredInvoice};
pub use usage::usage_from_store;
