//! Billing runs for `udn control`: the I/O around the pure `udn-billing` crate.
//!
//! * [`store`]: the [`BillingStore`] trait and [`SqliteBillingStore`] (tables
//!   `billing_*`, gap-free numbering, immutability enforced by triggers);
//! * [`pg`]: [`PgBillingStore`], the same tables and guarantees in PostgreSQL
//!   ([`BillingLocation`] opens either store);
//! * [`run`]: [`run_period`] issues the invoices of a period, [`audit`] recomputes one;
//! * [`render`]: plain text, HTML (with a print stylesheet) and PDF;
//! * [`delivery`]: e-mail through SMTP (lettre, the PDF attached) or PDF documents for post, each
//!   attempt logged;
//! * [`payment`]: the [`PaymentProvider`] trait and manual payment recording.
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
pub mod payment;
pub mod pg;
pub mod render;
pub mod run;
pub mod schedule;
pub mod store;
pub mod usage;

pub use cli::{BillingArgs, BillingCommand, execute};
pub use delivery::{DeliveryReport, SmtpConfig, SmtpSecurity, deliver_pending};
pub use payment::{PaymentProvider, collect_card_payments, record_manual_payment};
pub use pg::PgBillingStore;
pub use render::{Issuer, render_html, render_pdf, render_text};
pub use run::{Audit, RunReport, audit, run_period};
pub use store::{BillingLocation, BillingStore, SqliteBillingStore, Status, StoredInvoice};
pub use usage::usage_from_store;
