//! The life cycle of invoices and credit notes, and the rules a billing run follows,
//! kept free of storage so that every store (and every embedder) applies the same ones.
//!
//! A document moves `draft -> issued -> paid | void | credited` ([`Status`]): only an
//! issued invoice without payments may be voided ([`check_voidable`]), only an issued
//! or paid invoice may be credited ([`credit_note_for`]), payments are recorded against
//! issued invoices only ([`check_payable`]), and a period is billed only once it is
//! over ([`check_over`]). An invoice is [`compose`]d from its inputs: the period's own
//! lines followed by the [`Adjustment`]s for late usage of earlier periods; [`billed`]
//! says what has been billed for a period so far. A storage layer keeps the documents
//! ([`StoredInvoice`]) and enforces these rules inside its transactions.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{
    Account, Invoice, LineItem, Period, PlanBook, SegmentUsage, TaxLine, Timestamp, price,
};

/// A stored name (of a status or a document kind) that this release does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// What was named (`invoice status`, `document kind`).
    pub what: &'static str,
    /// The name found.
    pub name: String,
}

impl UnknownName {
    fn new(what: &'static str, name: &str) -> Self {
        UnknownName {
            what,
            name: name.chars().take(64).collect(),
        }
    }
}

/// A billing rule was violated (as opposed to storage failing): the API answers it
/// with 409 (or 422 for a period that is not over), never 500 or 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    /// The period has not ended yet.
    #[error("period {period} ends at {ends}; it cannot be billed before it is over")]
    PeriodNotOver {
        /// The period label.
        period: String,
        /// Its end (RFC 3339).
        ends: String,
    },
    /// The document is in a state that does not allow this (void a paid invoice, pay
    /// a voided one, credit a credit note...).
    #[error("{0}")]
    State(String),
}

/// Late usage of an earlier period billed on a later invoice: the period's invoice
/// stays as issued; this invoice carries the difference between pricing the period's
/// usage as now recorded (`after`) and as billed so far (`before`: the period's
/// invoice, or the last adjustment of it), per component, as lines labelled with the
/// period. Stored with the invoice's inputs, so that audit recomputes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    /// The period the usage belongs to.
    pub period: Period,
    /// The number of that period's invoice.
    pub invoice: String,
    /// The account as that invoice priced it.
    pub account: Account,
    /// Usage billed before this adjustment, per segment of that invoice.
    pub before: Vec<SegmentUsage>,
    /// Usage billed once this adjustment is issued.
    pub after: Vec<SegmentUsage>,
}

/// Kind of an invoice document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// An invoice for a period.
    Invoice,
    /// A credit note cancelling an issued invoice.
    CreditNote,
}

impl DocKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Invoice => "invoice",
            DocKind::CreditNote => "credit_note",
        }
    }
    /// Number series: `INV` or `CN`.
    pub fn series(self) -> &'static str {
        match self {
            DocKind::Invoice => "INV",
            DocKind::CreditNote => "CN",
        }
    }
    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Result<Self, UnknownName> {
        match s {
            "invoice" => Ok(DocKind::Invoice),
            "credit_note" => Ok(DocKind::CreditNote),
            _ => Err(UnknownName::new("document kind", s)),
        }
    }
}

/// Life cycle of an invoice: `draft -> issued -> paid | void | credited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Computed, not numbered, may be replaced.
    Draft,
    /// Numbered and immutable; awaiting payment.
    Issued,
    /// Paid in full.
    Paid,
    /// Cancelled before payment; keeps its number.
    Void,
    /// Cancelled by a credit note; keeps its number.
    Credited,
}

impl Status {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Issued => "issued",
            Status::Paid => "paid",
            Status::Void => "void",
            Status::Credited => "credited",
        }
    }
    /// The status stored as `s`.
    pub fn parse(s: &str) -> Result<Self, UnknownName> {
        Ok(match s {
            "draft" => Status::Draft,
            "issued" => Status::Issued,
            "paid" => Status::Paid,
            "void" => Status::Void,
            "credited" => Status::Credited,
            _ => return Err(UnknownName::new("invoice status", s)),
        })
    }
}

/// Everything an invoice was computed from, kept with it for audit: the account as it
/// was, and each segment's plan version and usage totals (bandwidth samples included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceInputs {
    /// The account snapshot.
    pub account: Account,
    /// The segments and their usage.
    pub segments: Vec<SegmentUsage>,
    /// Late usage of earlier periods billed on this invoice (see
    /// [`Adjustment`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<Adjustment>,
}

/// An invoice or credit note as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInvoice {
    /// Row id.
    pub id: i64,
    /// Invoice or credit note.
    pub kind: DocKind,
    /// `INV-000001`; `None` while a draft.
    pub number: Option<String>,
    /// Status.
    pub status: Status,
    /// The content (a credit note's amounts are negative).
    pub invoice: Invoice,
    /// What it was computed from (for a credit note, the credited invoice's inputs).
    pub inputs: InvoiceInputs,
    /// When it was issued.
    pub issued_at: Option<Timestamp>,
    /// When payment is due.
    pub due_at: Option<Timestamp>,
    /// The invoice a credit note cancels.
    pub credits: Option<String>,
}

/// A payment received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Invoice number.
    pub invoice: String,
    /// Amount received.
    pub amount: Decimal,
    /// `manual` or the payment provider's name.
    pub method: String,
    /// Bank or provider reference.
    pub reference: String,
    /// When it was received.
    pub at: Timestamp,
}

fn rule(message: String) -> RuleViolation {
    RuleViolation::State(message)
}

/// Refuses voiding anything but an issued invoice without payments.
pub fn check_voidable(
    inv: &StoredInvoice,
    number: &str,
    payments: i64,
) -> Result<(), RuleViolation> {
    if inv.status != Status::Issued || inv.kind != DocKind::Invoice {
        return Err(rule(format!(
            "{number} is {}: only an issued, unpaid invoice can be voided",
            inv.status.as_str()
        )));
    }
    if payments > 0 {
        return Err(rule(format!(
            "{number} has payments: issue a credit note instead"
        )));
    }
    Ok(())
}

/// The credit note cancelling `inv` (numbered `number`): every amount negated.
pub fn credit_note_for(inv: &StoredInvoice, number: &str) -> Result<Invoice, RuleViolation> {
    if inv.kind != DocKind::Invoice || !matches!(inv.status, Status::Issued | Status::Paid) {
        return Err(rule(format!(
            "{number} is {}: only an issued or paid invoice can be credited",
            inv.status.as_str()
        )));
    }
    let mut note = inv.invoice.clone();
    for l in &mut note.lines {
        l.amount = -l.amount;
        l.description = format!("Credit of {number}: {}", l.description);
    }
    note.subtotal = -note.subtotal;
    if let Some(t) = &mut note.tax {
        t.amount = -t.amount;
    }
    note.total = -note.total;
    Ok(note)
}

/// Refuses a payment against anything but an issued invoice, or of no amount.
pub fn check_payable(inv: &StoredInvoice, p: &Payment) -> Result<(), RuleViolation> {
    if inv.kind != DocKind::Invoice || inv.status != Status::Issued {
        return Err(rule(format!(
            "{} is {}: payments are recorded against issued invoices",
            p.invoice,
            inv.status.as_str()
        )));
    }
    if p.amount <= Decimal::ZERO {
        return Err(rule("a payment amount must be positive".into()));
    }
    Ok(())
}

/// The lines of an adjustment: per (plan, version, component, unit) of the period's
/// invoice, the quantity and amount of `after` less those of `before`; components
/// whose quantity and amount are unchanged give no line.
pub fn adjustment_lines(plans: &PlanBook, adj: &Adjustment) -> Result<Vec<LineItem>, crate::Error> {
    let was = price(&adj.account, plans, &adj.period, &adj.before)?;
    let now = price(&adj.account, plans, &adj.period, &adj.after)?;
    let overflow = || crate::Error::AmountOverflow {
        account: adj.account.id.clone(),
    };
    type Key = (String, u32, String, String);
    let mut diff: BTreeMap<Key, (Decimal, Decimal)> = BTreeMap::new();
    for (sign, inv) in [(Decimal::NEGATIVE_ONE, &was), (Decimal::ONE, &now)] {
        for l in &inv.lines {
            let e = diff
                .entry((
                    l.plan.clone(),
                    l.plan_version,
                    l.component.clone(),
                    l.unit.clone(),
                ))
                .or_default();
            e.0 =
                e.0.checked_add(l.quantity.checked_mul(sign).ok_or_else(overflow)?)
                    .ok_or_else(overflow)?;
            e.1 =
                e.1.checked_add(l.amount.checked_mul(sign).ok_or_else(overflow)?)
                    .ok_or_else(overflow)?;
        }
    }
    Ok(diff
        .into_iter()
        .filter(|(_, (q, a))| !q.is_zero() || !a.is_zero())
        .map(
            |((plan, plan_version, component, unit), (quantity, amount))| LineItem {
                description: format!(
                    "Late usage of {} (adjusts {}): {component}",
                    adj.period, adj.invoice
                ),
                plan,
                plan_version,
                component,
                from: adj.period.start,
                to: adj.period.end,
                quantity: quantity.normalize(),
                unit,
                unit_price: None,
                allowance: Decimal::ZERO,
                tiers: Vec::new(),
                proration: None,
                amount,
            },
        )
        .collect())
}

/// The invoice of `inputs`: the period's own lines ([`price`]) followed by the lines of
/// each adjustment, with the subtotal, tax and total over all of them. What a run
/// issues and what audit recomputes.
pub fn compose(
    plans: &PlanBook,
    period: &Period,
    inputs: &InvoiceInputs,
) -> Result<Invoice, crate::Error> {
    let account = &inputs.account;
    let mut inv = price(account, plans, period, &inputs.segments)?;
    if inputs.adjustments.is_empty() {
        return Ok(inv);
    }
    for adj in &inputs.adjustments {
        inv.lines.extend(adjustment_lines(plans, adj)?);
    }
    let overflow = || crate::Error::AmountOverflow {
        account: account.id.clone(),
    };
    let cur = &account.currency;
    inv.subtotal = inv
        .lines
        .iter()
        .try_fold(Decimal::ZERO, |acc, l| acc.checked_add(l.amount))
        .ok_or_else(overflow)?;
    inv.tax = match &account.tax {
        Some(t) => Some(TaxLine {
            name: t.name.clone(),
            rate: t.rate,
            amount: cur.round(inv.subtotal.checked_mul(t.rate).ok_or_else(overflow)?),
        }),
        None => None,
    };
    inv.total = inv
        .subtotal
        .checked_add(inv.tax.as_ref().map_or(Decimal::ZERO, |t| t.amount))
        .ok_or_else(overflow)?;
    Ok(inv)
}

/// Whether `d` is a live invoice: issued or paid, neither voided nor credited.
pub fn live(d: &StoredInvoice) -> bool {
    d.kind == DocKind::Invoice && matches!(d.status, Status::Issued | Status::Paid)
}

/// What has been billed for `period` of one account: the live invoice of the period,
/// the usage billed (its own, or that of the newest adjustment of it on a live
/// invoice), and the invoices carrying those adjustments. `docs` are the account's
/// numbered documents in issue order.
pub struct Billed<'a> {
    /// The period's live invoice.
    pub invoice: &'a StoredInvoice,
    /// The usage billed for each of its segments.
    pub usage: Vec<SegmentUsage>,
    /// Numbers of the live invoices with adjustments of the period.
    pub adjusted_on: Vec<String>,
}

/// See [`Billed`].
pub fn billed<'a>(docs: &[&'a StoredInvoice], period: &Period) -> Option<Billed<'a>> {
    let invoice = *docs
        .iter()
        .find(|d| live(d) && d.invoice.period == *period)?;
    let number = invoice.number.as_deref()?;
    let mut usage = invoice.inputs.segments.clone();
    let mut adjusted_on = Vec::new();
    let mut later: Vec<&&StoredInvoice> = docs.iter().filter(|d| live(d)).collect();
    later.sort_by_key(|d| d.id);
    for d in later {
        for adj in &d.inputs.adjustments {
            if adj.period == *period && adj.invoice == number {
                usage = adj.after.clone();
                adjusted_on.extend(d.number.clone());
            }
        }
    }
    Some(Billed {
        invoice,
        usage,
        adjusted_on,
    })
}

/// Refuses billing a period before it is over.
pub fn check_over(period: &Period, now: Timestamp) -> Result<(), RuleViolation> {
    if now < period.end {
        return Err(RuleViolation::PeriodNotOver {
            period: period.to_string(),
            ends: crate::period::format_utc(period.end),
        });
    }
    Ok(())
}
