//! # udn-billing: metering, plans, fees and invoices
//!
//! The pure accounting core of UDN: it turns what a customer used of the GTM and the
//! CDN into exact, reproducible invoices. It does no I/O of any kind and never reads a
//! clock: every instant is a [`Timestamp`] argument.
//!
//! * [`account`]: customers with invoicing information, delivery and payment method,
//!   services chosen (GTM only or GTM + CDN) and plan subscriptions;
//! * [`usage`]: usage records in idempotent batches, aggregated at 5-minute resolution;
//! * [`plan`]: versioned plans of recurring, one-time, subscription, metered (graduated
//!   or volume tiers, per region, with free allowances), 95th-percentile and
//!   minimum-spend components;
//! * [`period`]: UTC hours, ISO weeks, months, quarters and years;
//! * [`percentile`]: the 95th-percentile definition;
//! * [`invoice`](mod@invoice): proration and pricing into rounded line items;
//! * [`lifecycle`]: invoices and credit notes from draft to paid, void or credited, and
//!   the rules of a billing run (late usage billed once as adjustments);
//! * [`render`]: invoices as plain text, HTML (with an A4 print stylesheet) and PDF, as
//!   bytes (the caller sends or stores them).
//!
//! Money is [`rust_decimal::Decimal`]; each line item is rounded once to the
//! currency's minor units, half away from zero ([`money::ROUNDING`]).
//!
//! # Examples
//!
//! A CDN customer on tiered per-GB prices:
//!
//! ```
//! use rust_decimal::Decimal;
//! use udn_billing::*;
//! use udn_core::Timestamp;
//!
//! let plan: Plan = serde_json::from_str(r#"{
//!   "id": "cdn", "version": 1, "name": "CDN", "currency": "EUR", "period": "month",
//!   "components": [{"name": "Traffic", "pricing": {"type": "metered",
//!     "metric": "bytes_delivered", "unit": "gb", "mode": "graduated",
//!     "tiers": [{"up_to": "1000", "unit_price": "0.05"}, {"unit_price": "0.02"}]}}]
//! }"#)?;
//! let mut plans = PlanBook::new();
//! plans.insert(plan)?;
//! let account: Account = serde_json::from_str(r#"{
//!   "id": "shop", "currency": "EUR", "delivery": "email", "services": "gtm_cdn",
//!   "payment": {"method": "invoice", "terms_days": 14}, "billing_period": "month",
//!   "invoicing": {"company": "Shop Ltd", "address": ["1 High St", "London"],
//!                 "contact": "J. Doe", "email": "ap@shop.example"},
//!   "subscriptions": [{"plan": "cdn", "version": 1, "start": 0}]
//! }"#)?;
//! let period = Period::parse("2026-11")?;
//! let mut ledger = UsageLedger::new();
//! let _ = ledger.apply(&UsageBatch {
//!     key: "edge-fra-0001".into(),
//!     records: vec![UsageRecord {
//!         account: "shop".into(),
//!         at: period.start,
//!         metric: Metric::BytesDelivered,
//!         region: "fra".into(),
//!         quantity: 1_500_000_000_000, // 1,500 GB
//!     }],
//! })?;
//! let inv = compute_invoice(&account, &plans, &period, &ledger)?;
//! assert_eq!(inv.total, Decimal::from(60)); // 1000 x 0.05 + 500 x 0.02
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod account;
pub mod error;
pub mod invoice;
pub mod lifecycle;
pub mod money;
pub mod percentile;
pub mod period;
pub mod plan;
pub mod render;
pub mod usage;

pub use account::{Account, Delivery, InvoicingInfo, PaymentMethod, Services, Subscription, Tax};
pub use error::{AccountProblem, Error, PlanProblem};
pub use invoice::{
    Invoice, LineItem, Segment, SegmentUsage, TaxLine, compute_invoice, price, segments,
};
pub use money::Currency;
pub use period::{Period, PeriodKind};
pub use plan::{Component, Plan, PlanBook, Pricing, Tier, TierMode, Unit};
pub use udn_core::Timestamp;

/// The worked examples of `docs/billing.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/billing.md")]
pub struct BillingGuideDoctests;
pub use usage::{Metric, UsageBatch, UsageLedger, UsageRecord, UsageTotals};
