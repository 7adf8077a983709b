//! The billing run of a period, and the audit of an issued invoice.

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use std::time::Duration;
use udn_billing::{Account, Period, SegmentUsage, Timestamp, price, segments};

use super::store::{BillingStore, InvoiceInputs, StoredInvoice};

/// One invoice issued by a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    /// Its number.
    pub number: String,
    /// The account.
    pub account: String,
    /// Total with currency, e.g. `998.26 EUR`.
    pub total: String,
}

/// What a run did, account by account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// The period, as its label (`2026-11`).
    pub period: String,
    /// Invoices issued now, in number order.
    pub issued: Vec<Issued>,
    /// Accounts that already have an issued or paid invoice for the period.
    pub already_invoiced: Vec<String>,
    /// Accounts with no subscription active in the period.
    pub nothing_to_invoice: Vec<String>,
    /// Accounts billed per another kind of period.
    pub other_cadence: Vec<String>,
    /// Accounts that could not be invoiced, with the reason; the run goes on.
    pub failed: Vec<(String, String)>,
}

/// The usage of a segment as an invoice stores it: the bandwidth samples (8,640 numbers
/// in a month) are kept only when the segment's plan bills the 95th percentile.
fn stored_usage(
    store: &dyn BillingStore,
    plans: &udn_billing::PlanBook,
    account: &str,
    segment: &udn_billing::Segment,
) -> Result<udn_billing::UsageTotals> {
    let samples = plans.get(&segment.plan, segment.version)?.uses_samples();
    store.usage_totals(account, segment.from, segment.to, samples)
}

/// Computes the draft invoice of one account for a period from the store's usage.
pub fn draft_for(
    store: &dyn BillingStore,
    account: &Account,
    period: &Period,
) -> Result<Option<(udn_billing::Invoice, InvoiceInputs)>> {
    let segs = segments(account, period);
    if segs.is_empty() {
        return Ok(None);
    }
    let plans = store.plans()?;
    let mut inputs = Vec::with_capacity(segs.len());
    for segment in segs {
        let usage = stored_usage(store, &plans, &account.id, &segment)?;
        inputs.push(SegmentUsage { segment, usage });
    }
    let invoice = price(account, &plans, period, &inputs)?;
    Ok(Some((
        invoice,
        InvoiceInputs {
            account: account.clone(),
            segments: inputs,
        },
    )))
}

/// Runs billing for `period`: for every account invoiced per this kind of period and
/// not yet invoiced for it, computes the invoice from its usage, stores it as a draft,
/// then issues the drafts one by one (each numbered in its own transaction). Running
/// the same period again issues nothing new; an account whose invoice was voided or
/// credited is invoiced afresh.
///
/// The due date is `now` plus the account's payment terms (immediately for card on
/// file). Invoices are not delivered here: see [`super::delivery::deliver_pending`].
pub fn run_period(
    store: &mut dyn BillingStore,
    period: &Period,
    now: Timestamp,
) -> Result<RunReport> {
    if now < period.end {
        bail!(
            "period {period} ends at {}; it cannot be billed before it is over",
            udn_billing::period::format_utc(period.end)
        );
    }
    let mut report = RunReport {
        period: period.to_string(),
        ..RunReport::default()
    };
    let mut drafts = Vec::new();
    for account in store.accounts()? {
        if account.billing_period != period.kind {
            report.other_cadence.push(account.id);
            continue;
        }
        if let Some(inv) = store.live_invoice(&account.id, period)?
            && inv.number.is_some()
        {
            report.already_invoiced.push(account.id);
            continue;
        }
        match draft_for(store, &account, period) {
            Ok(None) => report.nothing_to_invoice.push(account.id),
            Ok(Some((invoice, inputs))) => {
                let id = store.put_draft(&invoice, &inputs)?;
                let terms = match &account.payment {
                    udn_billing::PaymentMethod::Invoice { terms_days } => *terms_days,
                    udn_billing::PaymentMethod::CardOnFile { .. } => 0,
                };
                drafts.push((id, account.id, invoice, terms));
            }
            Err(e) => report.failed.push((account.id, format!("{e:#}"))),
        }
    }
    for (id, account, invoice, terms) in drafts {
        let due = now.plus(Duration::from_secs(86_400 * u64::from(terms)));
        let number = match store.issue(id, now, due) {
            Ok(n) => n,
            Err(e) => {
                report.failed.push((account, format!("issuing: {e:#}")));
                continue;
            }
        };
        report.issued.push(Issued {
            number,
            account,
            total: invoice.currency.format(invoice.total),
        });
    }
    Ok(report)
}

/// The result of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Invoice number.
    pub number: String,
    /// Whether recomputing from the stored inputs and plan versions gives the stored
    /// invoice exactly (every line, the tax and the total).
    pub reproducible: bool,
    /// Whether the store's usage for the invoice's segments still equals the usage
    /// the invoice was computed from (late usage makes this false: bill it by a
    /// credit note and a new run).
    pub usage_unchanged: bool,
}

/// Recomputes an issued invoice from what it stored and compares.
pub fn audit(store: &dyn BillingStore, number: &str) -> Result<Audit> {
    let stored: StoredInvoice = store
        .invoice(number)?
        .with_context(|| format!("no invoice numbered {number}"))?;
    if stored.kind != super::store::DocKind::Invoice {
        bail!("{number} is a credit note: audit the invoice it credits");
    }
    let plans = store.plans()?;
    let again = price(
        &stored.inputs.account,
        &plans,
        &stored.invoice.period,
        &stored.inputs.segments,
    )?;
    let mut usage_unchanged = true;
    for s in &stored.inputs.segments {
        let now = stored_usage(store, &plans, &stored.invoice.account, &s.segment)?;
        usage_unchanged &= now == s.usage;
    }
    Ok(Audit {
        number: number.to_owned(),
        reproducible: again == stored.invoice,
        usage_unchanged,
    })
}
