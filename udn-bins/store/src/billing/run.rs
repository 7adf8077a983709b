//! The billing run of a period, and the audit of an issued invoice.
//!
//! [`bill_period`] is the one billing run: `udn control billing run`, `POST
//! /v1/billing/runs` and the control plane's scheduler all call it. Under the run lock
//! it records the usage of every log file received since the last run (each file under
//! its own idempotency key, see [`super::usage::ingest_file_usage`]), then issues the
//! period's invoices with [`run_period`]. Usage of a period that arrives after the
//! period's invoice was issued is billed once, on the account's next invoice, as
//! adjustment lines labelled with that period ([`Adjustment`]).

use anyhow::{Context as _, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use udn_billing::{Account, Period, PlanBook, SegmentUsage, Timestamp, segments};

pub use udn_billing::lifecycle::{
    Adjustment, Billed, RuleViolation, adjustment_lines, billed, check_over, compose,
};

use super::store::{BillingStore, DocKind, InvoiceInputs, StoredInvoice};
use super::usage::{INGEST_MARGIN_MS, IngestReport, ingest_file_usage};
use crate::logs::FileUsage;
use udn_billing::lifecycle::live;

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
    /// Late usage billed on the invoices issued now: (account, period adjusted).
    pub adjusted: Vec<(String, String)>,
    /// Usage recorded from the log store before the run (with [`bill_period`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingested: Option<IngestReport>,
}

/// The usage of a segment as an invoice stores it: the bandwidth samples (8,640 numbers
/// in a month) are kept only when the segment's plan bills the 95th percentile.
fn stored_usage(
    store: &dyn BillingStore,
    plans: &PlanBook,
    account: &str,
    segment: &udn_billing::Segment,
) -> Result<udn_billing::UsageTotals> {
    let samples = plans.get(&segment.plan, segment.version)?.uses_samples();
    store.usage_totals(account, segment.from, segment.to, samples)
}

/// The store's current usage of each of `segs` (an issued invoice's segments).
fn current_usage(
    store: &dyn BillingStore,
    plans: &PlanBook,
    account: &str,
    segs: &[SegmentUsage],
) -> Result<Vec<SegmentUsage>> {
    segs.iter()
        .map(|s| {
            Ok(SegmentUsage {
                segment: s.segment.clone(),
                usage: stored_usage(store, plans, account, &s.segment)?,
            })
        })
        .collect()
}

/// Computes the draft invoice of one account for a period from the store's usage,
/// with `adjustments` of earlier periods.
pub fn draft_for(
    store: &dyn BillingStore,
    account: &Account,
    period: &Period,
    adjustments: Vec<Adjustment>,
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
    let inputs = InvoiceInputs {
        account: account.clone(),
        segments: inputs,
        adjustments,
    };
    let invoice = compose(&plans, period, &inputs)?;
    Ok(Some((invoice, inputs)))
}

/// The adjustments due on an account's next invoice (for `period`): one per late
/// period that ended before `period` starts whose usage now differs from what was
/// billed. Also returns the late marks to clear once the invoice is issued (those
/// adjusted) and those to clear now (nothing left to bill).
fn due_adjustments(
    store: &dyn BillingStore,
    plans: &PlanBook,
    account: &Account,
    docs: &[&StoredInvoice],
    period: &Period,
) -> Result<(Vec<Adjustment>, Vec<Period>, Vec<Period>)> {
    let (mut adjustments, mut after_issue, mut now) = (Vec::new(), Vec::new(), Vec::new());
    for q in store.late_periods(&account.id)? {
        if q.end > period.start {
            continue; // billed on a later invoice of the account
        }
        let Some(b) = billed(docs, &q) else {
            // no live invoice: a run of that period bills all of its usage
            now.push(q);
            continue;
        };
        let current = current_usage(store, plans, &account.id, &b.usage)?;
        if current == b.usage {
            now.push(q);
            continue;
        }
        adjustments.push(Adjustment {
            period: q,
            invoice: b.invoice.number.clone().unwrap_or_default(),
            account: b.invoice.inputs.account.clone(),
            before: b.usage,
            after: current,
        });
        after_issue.push(q);
    }
    Ok((adjustments, after_issue, now))
}

/// Runs billing for `period` from the usage the billing store holds: for every account
/// invoiced per this kind of period and not yet invoiced for it, computes the invoice
/// from its usage (with adjustments for late usage of its earlier periods), stores it
/// as a draft, then issues the drafts one by one (each numbered in its own
/// transaction). Running the same period again issues nothing new; an account whose
/// invoice was voided or credited is invoiced afresh.
///
/// The due date is `now` plus the account's payment terms (immediately for card on
/// file). Invoices are not delivered here: see `udn_bins::billing::deliver_pending`.
/// [`bill_period`] first records the log store's new usage; prefer it.
pub fn run_period(
    store: &mut dyn BillingStore,
    period: &Period,
    now: Timestamp,
) -> Result<RunReport> {
    check_over(period, now)?;
    let mut report = RunReport {
        period: period.to_string(),
        ..RunReport::default()
    };
    let plans = store.plans()?;
    let all = store.issued()?;
    let mut by_account: BTreeMap<&str, Vec<&StoredInvoice>> = BTreeMap::new();
    for d in &all {
        by_account.entry(&d.invoice.account).or_default().push(d);
    }
    let mut drafts = Vec::new();
    for account in store.accounts()? {
        if account.billing_period != period.kind {
            report.other_cadence.push(account.id);
            continue;
        }
        let docs = by_account
            .get(account.id.as_str())
            .cloned()
            .unwrap_or_default();
        if let Some(inv) = store.live_invoice(&account.id, period)?
            && inv.number.is_some()
        {
            report.already_invoiced.push(account.id);
            continue;
        }
        // Late usage of this period already billed on another invoice: a fresh invoice
        // of the period would bill it twice.
        if let Some(on) = docs
            .iter()
            .find(|d| live(d) && d.inputs.adjustments.iter().any(|a| a.period == *period))
        {
            report.failed.push((
                account.id,
                format!(
                    "{} bills late usage of {period}: credit it before invoicing {period} again",
                    on.number.as_deref().unwrap_or("an invoice")
                ),
            ));
            continue;
        }
        let planned = due_adjustments(store, &plans, &account, &docs, period).and_then(
            |(adj, after, clear)| {
                for q in &clear {
                    store.clear_late(&account.id, q)?;
                }
                let draft = draft_for(store, &account, period, adj)?;
                Ok((draft, after))
            },
        );
        match planned {
            Ok((None, _)) => report.nothing_to_invoice.push(account.id),
            Ok((Some((invoice, inputs)), after)) => {
                let id = store.put_draft(&invoice, &inputs)?;
                let terms = match &account.payment {
                    udn_billing::PaymentMethod::Invoice { terms_days } => *terms_days,
                    udn_billing::PaymentMethod::CardOnFile { .. } => 0,
                };
                drafts.push((id, account.id, invoice, terms, after));
            }
            Err(e) => report.failed.push((account.id, format!("{e:#}"))),
        }
    }
    for (id, account, invoice, terms, after) in drafts {
        let due = now.plus(Duration::from_secs(86_400 * u64::from(terms)));
        let number = match store.issue(id, now, due) {
            Ok(n) => n,
            Err(e) => {
                report.failed.push((account, format!("issuing: {e:#}")));
                continue;
            }
        };
        for q in after {
            // If this fails the mark stays: the next run finds nothing left to bill.
            if let Err(e) = store.clear_late(&account, &q) {
                tracing::warn!(%account, period = %q, "clearing a late mark: {e:#}");
            }
            report.adjusted.push((account.clone(), q.to_string()));
        }
        report.issued.push(Issued {
            number,
            account,
            total: invoice.currency.format(invoice.total),
        });
    }
    Ok(report)
}

/// Reads the log store's per-file usage of every file received at or after a time.
pub type FileUsageSource<'a> = dyn FnMut(Timestamp) -> Result<Vec<FileUsage>> + 'a;

/// The billing run: under the run lock (two control planes on one PostgreSQL run one
/// after the other), records the per-file usage of every log file received since the
/// last run (less [`INGEST_MARGIN_MS`], replays are free), then [`run_period`].
pub fn bill_period(
    store: &mut dyn BillingStore,
    logs: &mut FileUsageSource<'_>,
    period: &Period,
    now: Timestamp,
) -> Result<RunReport> {
    check_over(period, now)?;
    store.lock_runs().context("taking the billing run lock")?;
    let result = ingest_and_run(store, logs, period, now);
    let unlocked = store.unlock_runs();
    let report = result?;
    unlocked.context("releasing the billing run lock")?;
    Ok(report)
}

fn ingest_and_run(
    store: &mut dyn BillingStore,
    logs: &mut FileUsageSource<'_>,
    period: &Period,
    now: Timestamp,
) -> Result<RunReport> {
    let ingested = ingest_new(store, logs)?;
    let mut report = run_period(store, period, now)?;
    report.ingested = Some(ingested);
    Ok(report)
}

/// [`bill_period`], logged in the run log (`billing_runs`) with its trigger (`cli`,
/// `api`, `scheduler`) and attempt number, whether it succeeded or failed.
pub fn logged_run(
    store: &mut dyn BillingStore,
    logs: &mut FileUsageSource<'_>,
    period: &Period,
    now: Timestamp,
    trigger: &str,
    attempt: u32,
) -> Result<RunReport> {
    let started_at = crate::now();
    let result = bill_period(store, logs, period, now);
    let (outcome, detail) = match &result {
        Ok(r) if r.failed.is_empty() => ("ok", serde_json::to_string(r)?),
        Ok(r) => ("partial", serde_json::to_string(r)?),
        Err(e) => ("failed", format!("{e:#}")),
    };
    let record = super::store::RunRecord {
        id: 0,
        period: period.to_string(),
        trigger: trigger.to_owned(),
        started_at,
        finished_at: crate::now(),
        attempt,
        outcome: outcome.to_owned(),
        detail,
    };
    // A refused run (period not over) is the caller's mistake, not worth a log row.
    let refused = result
        .as_ref()
        .err()
        .is_some_and(|e| e.downcast_ref::<RuleViolation>().is_some());
    if !refused && let Err(e) = store.log_run(&record) {
        tracing::warn!(%period, "logging the billing run: {e:#}");
    }
    result
}

/// Records the usage of the log files received since the ingest mark (less the
/// margin). Call it under the run lock ([`bill_period`] does).
pub fn ingest_new(
    store: &mut dyn BillingStore,
    logs: &mut FileUsageSource<'_>,
) -> Result<IngestReport> {
    let mark = store.ingest_mark()?;
    let from = Timestamp::from_millis(mark.saturating_sub(INGEST_MARGIN_MS).max(0) as u64);
    let rows = logs(from).context("reading per-file usage from the log store")?;
    ingest_file_usage(store, rows)
}

/// The result of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Invoice number.
    pub number: String,
    /// Whether recomputing from the stored inputs and plan versions gives the stored
    /// invoice exactly (every line, the tax and the total).
    pub reproducible: bool,
    /// Whether the billing store's usage for the invoice's segments equals the usage
    /// billed for them: the invoice's own, or that of the newest adjustment of the
    /// period on a later invoice. Late usage not yet billed makes this false.
    pub usage_unchanged: bool,
    /// Whether the log store's usage for the invoice's segments equals the usage
    /// billed (`None` when the audit was not given the log store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_matches: Option<bool>,
    /// Later invoices that billed late usage of this invoice's period.
    pub adjusted_on: Vec<String>,
    /// Each difference found, in words.
    pub differences: Vec<String>,
}

/// Recomputes an issued invoice from what it stored and compares.
pub fn audit(store: &dyn BillingStore, number: &str) -> Result<Audit> {
    audit_with(store, None, number)
}

/// [`audit`], also comparing with the log store's usage (the minute rollups the log
/// store keeps for good) through `logs(customer, from, to)`.
pub type StoreUsage<'a> =
    dyn FnMut(&str, Timestamp, Timestamp) -> Result<Vec<udn_billing::UsageRecord>> + 'a;

/// Recomputes an issued invoice from what it stored and compares its billed usage with
/// the billing store's and (when given) the log store's.
pub fn audit_with(
    store: &dyn BillingStore,
    logs: Option<&mut StoreUsage<'_>>,
    number: &str,
) -> Result<Audit> {
    let stored: StoredInvoice = store
        .invoice(number)?
        .with_context(|| format!("no invoice numbered {number}"))?;
    if stored.kind != DocKind::Invoice {
        return Err(RuleViolation::State(format!(
            "{number} is a credit note: audit the invoice it credits"
        ))
        .into());
    }
    let plans = store.plans()?;
    let again = compose(&plans, &stored.invoice.period, &stored.inputs)?;
    let account = stored.invoice.account.clone();
    let all = store.issued()?;
    let docs: Vec<&StoredInvoice> = all
        .iter()
        .filter(|d| d.invoice.account == account)
        .collect();
    let (billed_usage, adjusted_on) = match billed(&docs, &stored.invoice.period) {
        Some(b) if b.invoice.number.as_deref() == Some(number) => (b.usage, b.adjusted_on),
        _ => (stored.inputs.segments.clone(), Vec::new()),
    };
    let mut differences = Vec::new();
    let current = current_usage(store, &plans, &account, &billed_usage)?;
    let mut usage_unchanged = true;
    for (b, c) in billed_usage.iter().zip(&current) {
        if b.usage != c.usage {
            usage_unchanged = false;
            differences.push(format!(
                "billing store: {}..{} billed {:?}, recorded {:?}",
                udn_billing::period::format_utc(b.segment.from),
                udn_billing::period::format_utc(b.segment.to),
                b.usage.counters,
                c.usage.counters
            ));
        }
    }
    let store_matches = match logs {
        None => None,
        Some(read) => {
            let mut ok = true;
            for b in &billed_usage {
                let records = read(&account, b.segment.from, b.segment.to)?;
                let mut ledger = udn_billing::UsageLedger::new();
                if !records.is_empty() {
                    let _ = ledger.apply(&udn_billing::UsageBatch {
                        key: "log-store".into(),
                        records,
                    })?;
                }
                let t = ledger.totals(&account, b.segment.from, b.segment.to);
                let bandwidth_differs =
                    !b.usage.bandwidth.is_empty() && b.usage.bandwidth != t.bandwidth;
                if t.counters != b.usage.counters || bandwidth_differs {
                    ok = false;
                    differences.push(format!(
                        "log store: {}..{} billed {:?}, logged {:?}",
                        udn_billing::period::format_utc(b.segment.from),
                        udn_billing::period::format_utc(b.segment.to),
                        b.usage.counters,
                        t.counters
                    ));
                }
            }
            Some(ok)
        }
    };
    if again != stored.invoice {
        differences.push("recomputing the stored inputs gives other amounts".into());
    }
    Ok(Audit {
        number: number.to_owned(),
        reproducible: again == stored.invoice,
        usage_unchanged,
        store_matches,
        adjusted_on,
        differences,
    })
}
