//! From an account, its plans and its usage to an invoice with rounded line items.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use udn_core::Timestamp;

use crate::account::{Account, Services};
use crate::error::{AccountProblem, Error};
use crate::money::Currency;
use crate::percentile::{bucket_bytes_to_mbps, p95_bytes};
use crate::period::{Period, PeriodKind};
use crate::plan::{Plan, PlanBook, Pricing, TierCharge, tiered_amount};
use crate::usage::{UsageLedger, UsageTotals};

/// The part of a period during which one subscription is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Plan id.
    pub plan: String,
    /// Plan version.
    pub version: u32,
    /// Start of the active part (inclusive).
    pub from: Timestamp,
    /// End of the active part (exclusive).
    pub to: Timestamp,
    /// Units subscribed (for subscription components).
    pub quantity: u32,
    /// Whether the subscription starts inside the period (one-time fees are due).
    pub starts_here: bool,
}

/// A segment and the usage measured in it: the complete input of [`price`], stored with
/// every issued invoice so that it can be recomputed for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentUsage {
    /// The segment.
    pub segment: Segment,
    /// Its usage (buckets whose start lies in `[from, to)`).
    pub usage: UsageTotals,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// What is charged (the component's name, with detail).
    pub description: String,
    /// Plan id.
    pub plan: String,
    /// Plan version.
    pub plan_version: u32,
    /// Component name.
    pub component: String,
    /// Start of the interval charged.
    pub from: Timestamp,
    /// End of the interval charged (exclusive).
    pub to: Timestamp,
    /// Quantity, in `unit`s.
    pub quantity: Decimal,
    /// The unit of `quantity`.
    pub unit: String,
    /// Price per unit, when one price applies.
    pub unit_price: Option<Decimal>,
    /// Free allowance deducted before pricing, in `unit`s.
    pub allowance: Decimal,
    /// Tier breakdown for metered components (unrounded amounts).
    pub tiers: Vec<TierCharge>,
    /// Fraction of the period charged, when prorated.
    pub proration: Option<Decimal>,
    /// The amount, rounded once to the currency's minor units.
    pub amount: Decimal,
}

/// Tax added to the subtotal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxLine {
    /// Name printed.
    pub name: String,
    /// Rate as a fraction.
    pub rate: Decimal,
    /// The amount, `subtotal * rate` rounded once.
    pub amount: Decimal,
}

/// An invoice's content (numbering, status and delivery live in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Account id.
    pub account: String,
    /// The period invoiced.
    pub period: Period,
    /// Currency of every amount.
    pub currency: Currency,
    /// The line items.
    pub lines: Vec<LineItem>,
    /// Sum of the line amounts.
    pub subtotal: Decimal,
    /// Tax, if the account has a tax configured.
    pub tax: Option<TaxLine>,
    /// `subtotal + tax`.
    pub total: Decimal,
}

/// The segments of `period` during which `account`'s subscriptions are active, in the
/// order of the subscriptions.
pub fn segments(account: &Account, period: &Period) -> Vec<Segment> {
    account
        .subscriptions
        .iter()
        .filter_map(|s| {
            let from = s.start.max(period.start);
            let to = s.end.unwrap_or(period.end).min(period.end);
            (from < to).then(|| Segment {
                plan: s.plan.clone(),
                version: s.version,
                from,
                to,
                quantity: s.quantity,
                starts_here: period.contains(s.start),
            })
        })
        .collect()
}

/// Computes the invoice of `account` for `period` from usage kept in a [`UsageLedger`].
///
/// # Examples
///
/// ```
/// use rust_decimal::Decimal;
/// use udn_billing::*;
/// use udn_core::Timestamp;
///
/// let plan: Plan = serde_json::from_str(r#"{
///   "id": "gtm-basic", "version": 1, "name": "GTM basic", "currency": "EUR", "period": "month",
///   "components": [{"name": "Platform fee", "pricing": {"type": "recurring", "amount": "50"}}]
/// }"#)?;
/// let mut plans = PlanBook::new();
/// plans.insert(plan)?;
/// let account: Account = serde_json::from_str(r#"{
///   "id": "acme", "currency": "EUR", "delivery": "email", "services": "gtm_only",
///   "payment": {"method": "invoice", "terms_days": 30}, "billing_period": "month",
///   "invoicing": {"company": "Acme GmbH", "address": ["Hauptstr. 1", "10115 Berlin"],
///                 "contact": "A. Smith", "email": "billing@acme.example"},
///   "subscriptions": [{"plan": "gtm-basic", "version": 1, "start": 1793491200000}]
/// }"#)?; // subscribed from 2026-11-01T00:00Z
/// let period = Period::parse("2026-11")?;
/// let inv = compute_invoice(&account, &plans, &period, &UsageLedger::new())?;
/// assert_eq!(inv.total, Decimal::from(50));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn compute_invoice(
    account: &Account,
    plans: &PlanBook,
    period: &Period,
    ledger: &UsageLedger,
) -> Result<Invoice, Error> {
    let inputs: Vec<SegmentUsage> = segments(account, period)
        .into_iter()
        .map(|segment| SegmentUsage {
            usage: ledger.totals(&account.id, segment.from, segment.to),
            segment,
        })
        .collect();
    price(account, plans, period, &inputs)
}

fn check_plan(account: &Account, plan: &Plan) -> Result<(), Error> {
    let bad = |problem| Error::InvalidAccount {
        account: account.id.clone(),
        problem,
    };
    if plan.currency != account.currency {
        return Err(bad(AccountProblem::CurrencyMismatch {
            plan: plan.id.clone(),
            plan_currency: plan.currency.0.clone(),
            account_currency: account.currency.0.clone(),
        }));
    }
    if plan.period != account.billing_period {
        return Err(bad(AccountProblem::PeriodMismatch {
            plan: plan.id.clone(),
            plan_period: plan.period,
            account_period: account.billing_period,
        }));
    }
    if account.services == Services::GtmOnly && plan.uses_cdn() {
        return Err(bad(AccountProblem::CdnNotChosen {
            plan: plan.id.clone(),
        }));
    }
    Ok(())
}

fn to_decimal(x: u128) -> Decimal {
    Decimal::from(u64::try_from(x).unwrap_or(u64::MAX))
}

/// Prices the given segment usages (which must be exactly [`segments`] of `account` and
/// `period`, each with as many bandwidth samples as buckets when its plan bills the 95th
/// percentile; otherwise the samples are not read and may be left empty) into an
/// invoice. Each line
/// amount is rounded once with [`crate::money::ROUNDING`]; the subtotal is the sum of
/// the rounded lines, the tax is rounded once, and the total is their sum.
pub fn price(
    account: &Account,
    plans: &PlanBook,
    period: &Period,
    inputs: &[SegmentUsage],
) -> Result<Invoice, Error> {
    account.validate()?;
    let expected = segments(account, period);
    let mismatch = |s: &Segment| Error::UsageMismatch {
        account: account.id.clone(),
        from: s.from.as_millis(),
        to: s.to.as_millis(),
    };
    if expected.len() != inputs.len() {
        let s = expected.first().or(inputs.first().map(|i| &i.segment));
        return Err(s.map(mismatch).unwrap_or(Error::UsageMismatch {
            account: account.id.clone(),
            from: period.start.as_millis(),
            to: period.end.as_millis(),
        }));
    }
    let cur = &account.currency;
    let period_ms = Decimal::from(period.duration_ms());
    // Every product and sum is checked: an amount beyond rust_decimal's 28 digits is
    // `AmountOverflow` for the account, never a panic that would abort a billing run.
    let overflow = || Error::AmountOverflow {
        account: account.id.clone(),
    };
    let mul = |a: Decimal, b: Decimal| a.checked_mul(b).ok_or_else(overflow);
    let mut lines = Vec::new();
    let mut scratch = Vec::new();
    for (want, input) in expected.iter().zip(inputs) {
        let seg = &input.segment;
        let plan = plans.get(&seg.plan, seg.version)?;
        if want != seg
            || (plan.uses_samples()
                && input.usage.bandwidth.len() as u64 != Period::buckets_between(seg.from, seg.to))
        {
            return Err(mismatch(seg));
        }
        check_plan(account, plan)?;
        let seg_ms = Decimal::from(seg.to.as_millis() - seg.from.as_millis());
        let whole = seg_ms == period_ms;
        let prorate = |amount: Decimal| {
            amount
                .checked_mul(seg_ms)
                .and_then(|x| x.checked_div(period_ms))
                .ok_or_else(overflow)
        };
        let proration = (!whole).then(|| seg_ms / period_ms);
        let line = |component: &str, description: String| LineItem {
            description,
            plan: plan.id.clone(),
            plan_version: plan.version,
            component: component.to_owned(),
            from: seg.from,
            to: seg.to,
            quantity: Decimal::ONE,
            unit: period_unit(plan.period).to_owned(),
            unit_price: None,
            allowance: Decimal::ZERO,
            tiers: Vec::new(),
            proration: None,
            amount: Decimal::ZERO,
        };
        let mut usage_charges = Decimal::ZERO;
        let mut commits = Vec::new();
        for c in &plan.components {
            match &c.pricing {
                Pricing::Recurring { amount } => lines.push(LineItem {
                    unit_price: Some(*amount),
                    proration,
                    amount: cur.round(prorate(*amount)?),
                    ..line(&c.name, c.name.clone())
                }),
                Pricing::OneTime { amount } => {
                    if seg.starts_here {
                        lines.push(LineItem {
                            unit: "one-time".to_owned(),
                            unit_price: Some(*amount),
                            amount: cur.round(*amount),
                            ..line(&c.name, c.name.clone())
                        });
                    }
                }
                Pricing::Subscription { unit_price, unit } => {
                    let q = Decimal::from(seg.quantity);
                    lines.push(LineItem {
                        quantity: q,
                        unit: format!("{unit} per {}", plan.period),
                        unit_price: Some(*unit_price),
                        proration,
                        amount: cur.round(prorate(mul(q, *unit_price)?)?),
                        ..line(&c.name, c.name.clone())
                    });
                }
                Pricing::Metered {
                    metric,
                    unit,
                    region,
                    included,
                    mode,
                    tiers,
                } => {
                    let raw = to_decimal(input.usage.total(*metric, region.as_deref()));
                    let units = raw / Decimal::from(unit.divisor());
                    let billable = (units - *included).max(Decimal::ZERO);
                    let (amount, breakdown) =
                        tiered_amount(*mode, tiers, billable).ok_or_else(overflow)?;
                    let amount = cur.round(amount);
                    usage_charges = usage_charges.checked_add(amount).ok_or_else(overflow)?;
                    let unit_price = match breakdown.as_slice() {
                        [one] => Some(one.unit_price),
                        _ => None,
                    };
                    lines.push(LineItem {
                        quantity: units,
                        unit: unit.label(*metric),
                        unit_price,
                        allowance: *included,
                        tiers: breakdown,
                        amount,
                        ..line(&c.name, c.name.clone())
                    });
                }
                Pricing::Percentile95 {
                    commit_mbps,
                    commit_price,
                    overage_price,
                } => {
                    let p95 = bucket_bytes_to_mbps(p95_bytes(&input.usage.bandwidth, &mut scratch));
                    lines.push(LineItem {
                        quantity: *commit_mbps,
                        unit: "Mbps committed".to_owned(),
                        unit_price: Some(*commit_price),
                        proration,
                        amount: cur.round(prorate(mul(*commit_mbps, *commit_price)?)?),
                        ..line(&c.name, format!("{}: commit", c.name))
                    });
                    let over = (p95 - *commit_mbps).max(Decimal::ZERO);
                    let amount = cur.round(mul(over, *overage_price)?);
                    usage_charges = usage_charges.checked_add(amount).ok_or_else(overflow)?;
                    lines.push(LineItem {
                        quantity: over,
                        unit: "Mbps above commit".to_owned(),
                        unit_price: Some(*overage_price),
                        amount,
                        ..line(
                            &c.name,
                            format!(
                                "{}: 95th percentile {} Mbps over {} samples",
                                c.name,
                                p95.round_dp(3).normalize(),
                                input.usage.bandwidth.len()
                            ),
                        )
                    });
                }
                Pricing::MinimumSpend { amount } => commits.push((c, *amount)),
            }
        }
        for (c, amount) in commits {
            let committed = prorate(amount)?;
            if usage_charges < committed {
                lines.push(LineItem {
                    unit: "true-up".to_owned(),
                    unit_price: Some(amount),
                    proration,
                    amount: cur.round(committed.checked_sub(usage_charges).ok_or_else(overflow)?),
                    ..line(
                        &c.name,
                        format!("{}: usage below the committed spend", c.name),
                    )
                });
            }
        }
    }
    let subtotal = lines
        .iter()
        .try_fold(Decimal::ZERO, |acc, l| acc.checked_add(l.amount))
        .ok_or_else(overflow)?;
    let tax = match &account.tax {
        Some(t) => Some(TaxLine {
            name: t.name.clone(),
            rate: t.rate,
            amount: cur.round(mul(subtotal, t.rate)?),
        }),
        None => None,
    };
    let total = subtotal
        .checked_add(tax.as_ref().map_or(Decimal::ZERO, |t| t.amount))
        .ok_or_else(overflow)?;
    Ok(Invoice {
        account: account.id.clone(),
        period: *period,
        currency: cur.clone(),
        lines,
        subtotal,
        tax,
        total,
    })
}

fn period_unit(kind: PeriodKind) -> &'static str {
    kind.as_str()
}
