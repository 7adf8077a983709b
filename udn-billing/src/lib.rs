//! # udn-billing: metering, plans, fees and invoices
//!
//! This crate will hold (issue "Accounting and billing"): usage events with idempotency
//! keys, their aggregation per account and period, plans (fixed, one-time, subscription,
//! metered tiers, 95th percentile, commit with overage), billing periods (hour, week,
//! month, quarter, year) with proration, and fee calculation in exact decimal money into
//! invoices with line items. It does no I/O of any kind.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
