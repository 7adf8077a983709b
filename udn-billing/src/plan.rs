//! Plans: versioned lists of priced components.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::{Error, PlanProblem};
use crate::money::Currency;
use crate::period::PeriodKind;
use crate::usage::Metric;

/// A plan: one immutable version of a price list. Changing prices makes a new version;
/// invoices name the version they were computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Plan id, e.g. `cdn-standard`.
    pub id: String,
    /// Version, starting at 1.
    pub version: u32,
    /// Name printed on invoices.
    pub name: String,
    /// Currency of every price in the plan.
    pub currency: Currency,
    /// The billing period its recurring prices are quoted for.
    pub period: PeriodKind,
    /// The priced components.
    pub components: Vec<Component>,
}

/// One priced component of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Unique within the plan; printed as the line item description.
    pub name: String,
    /// How it is priced.
    pub pricing: Pricing,
}

/// How a component is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pricing {
    /// A fixed fee per period, prorated by the time the subscription is active.
    Recurring {
        /// Fee per full period.
        amount: Decimal,
    },
    /// A fee charged once, in the period in which the subscription starts.
    OneTime {
        /// The fee.
        amount: Decimal,
    },
    /// A price per subscribed unit (seat, zone, hostname) per period, times the
    /// subscription's quantity, prorated like [`Pricing::Recurring`].
    Subscription {
        /// Price per unit per full period.
        unit_price: Decimal,
        /// Name of the unit, e.g. `zone`.
        unit: String,
    },
    /// A metered metric priced by tiers.
    Metered {
        /// What is counted.
        metric: Metric,
        /// The priced unit.
        unit: Unit,
        /// Only usage of this POP or region label, if set.
        #[serde(default)]
        region: Option<String>,
        /// Free allowance in priced units, deducted before the tiers.
        #[serde(default)]
        included: Decimal,
        /// Graduated or volume.
        mode: TierMode,
        /// The tiers, by ascending upper bound, the last one unbounded.
        tiers: Vec<Tier>,
    },
    /// Burstable bandwidth billed at the 95th percentile of the 5-minute samples
    /// (see `docs/billing.md`), with a committed rate and an overage price.
    Percentile95 {
        /// Committed rate in Mbps, always charged (prorated like a recurring fee).
        commit_mbps: Decimal,
        /// Price per committed Mbps per full period.
        commit_price: Decimal,
        /// Price per Mbps of the 95th percentile above the commit.
        overage_price: Decimal,
    },
    /// A monetary commit: if the usage charges (metered and 95th-percentile lines) of
    /// the subscription are below this amount (prorated), a true-up line makes up the
    /// difference; usage above it is paid as charged (the overage).
    MinimumSpend {
        /// Committed spend per full period.
        amount: Decimal,
    },
}

/// A priced unit of a metered component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A gigabyte, 10^9 bytes (decimal, as bandwidth is sold).
    Gb,
    /// 10,000 of the metric (requests).
    TenThousand,
    /// 1,000,000 of the metric (DNS queries).
    Million,
    /// One of the metric.
    One,
}

impl Unit {
    /// How many raw counts make one unit.
    pub fn divisor(self) -> u64 {
        match self {
            Unit::Gb => 1_000_000_000,
            Unit::TenThousand => 10_000,
            Unit::Million => 1_000_000,
            Unit::One => 1,
        }
    }

    /// A label for invoices, e.g. `GB` or `million DNS queries`.
    pub fn label(self, metric: Metric) -> String {
        let what = match metric {
            Metric::DnsQueries => "DNS queries",
            Metric::HttpRequests => "requests",
            Metric::BytesDelivered | Metric::CacheFillBytes => "bytes",
        };
        match self {
            Unit::Gb => "GB".to_owned(),
            Unit::TenThousand => format!("10,000 {what}"),
            Unit::Million => format!("million {what}"),
            Unit::One => what.to_owned(),
        }
    }
}

/// How tiers apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMode {
    /// Each unit is priced by the tier it falls in (the amount never decreases).
    Graduated,
    /// All units are priced by the tier the total falls in (the unit price never
    /// increases, but the amount can drop when a threshold is crossed).
    Volume,
}

/// One tier: units above the previous tier's bound and up to `up_to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Upper bound in priced units (inclusive); `None` for the last tier.
    #[serde(default)]
    pub up_to: Option<Decimal>,
    /// Price per unit in this tier.
    pub unit_price: Decimal,
}

/// The part of a quantity priced in one tier (unrounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCharge {
    /// Lower bound of the tier (exclusive).
    pub from: Decimal,
    /// Upper bound (inclusive), `None` if unbounded.
    pub to: Option<Decimal>,
    /// Units priced here.
    pub quantity: Decimal,
    /// Unit price.
    pub unit_price: Decimal,
    /// `quantity * unit_price`, not rounded.
    pub amount: Decimal,
}

/// Prices `quantity` units through `tiers`; returns the unrounded amount and the tier
/// breakdown (graduated: every tier touched; volume: the one tier that applies), or
/// `None` when an amount does not fit a [`Decimal`] (never for a validated plan and a
/// quantity below 2^64: see [`MAX_PRICE`]).
///
/// # Examples
///
/// ```
/// use rust_decimal::Decimal;
/// use udn_billing::plan::{Tier, TierMode, tiered_amount};
/// let tiers = [
///     Tier { up_to: Some(Decimal::from(10)), unit_price: Decimal::from(2) },
///     Tier { up_to: None, unit_price: Decimal::ONE },
/// ];
/// let (g, _) = tiered_amount(TierMode::Graduated, &tiers, Decimal::from(15)).unwrap();
/// assert_eq!(g, Decimal::from(25)); // 10 x 2 + 5 x 1
/// let (v, _) = tiered_amount(TierMode::Volume, &tiers, Decimal::from(15)).unwrap();
/// assert_eq!(v, Decimal::from(15)); // 15 x 1
/// let huge = [Tier { up_to: None, unit_price: Decimal::MAX }];
/// assert!(tiered_amount(TierMode::Volume, &huge, Decimal::from(2)).is_none());
/// ```
pub fn tiered_amount(
    mode: TierMode,
    tiers: &[Tier],
    quantity: Decimal,
) -> Option<(Decimal, Vec<TierCharge>)> {
    let q = quantity.max(Decimal::ZERO);
    let mut lines = Vec::new();
    let mut lower = Decimal::ZERO;
    match mode {
        TierMode::Graduated => {
            let mut total = Decimal::ZERO;
            for t in tiers {
                if q <= lower {
                    break;
                }
                let in_tier = match t.up_to {
                    Some(up) => q.min(up) - lower,
                    None => q - lower,
                };
                let amount = in_tier.checked_mul(t.unit_price)?;
                total = total.checked_add(amount)?;
                lines.push(TierCharge {
                    from: lower,
                    to: t.up_to,
                    quantity: in_tier,
                    unit_price: t.unit_price,
                    amount,
                });
                match t.up_to {
                    Some(up) => lower = up,
                    None => break,
                }
            }
            Some((total, lines))
        }
        TierMode::Volume => {
            for t in tiers {
                if t.up_to.is_none_or(|up| q <= up) {
                    let amount = q.checked_mul(t.unit_price)?;
                    lines.push(TierCharge {
                        from: lower,
                        to: t.up_to,
                        quantity: q,
                        unit_price: t.unit_price,
                        amount,
                    });
                    return Some((amount, lines));
                }
                lower = t.up_to.unwrap_or(lower);
            }
            Some((Decimal::ZERO, lines))
        }
    }
}

/// The unit price a volume-tiered quantity is charged at (the first tier's for zero).
pub fn volume_unit_price(tiers: &[Tier], quantity: Decimal) -> Option<Decimal> {
    tiers
        .iter()
        .find(|t| t.up_to.is_none_or(|up| quantity <= up))
        .map(|t| t.unit_price)
}

impl Plan {
    /// Checks the plan: a non-empty id, a valid currency, unique component names,
    /// non-negative prices, tiers with increasing bounds ending unbounded, and volume
    /// tiers with non-increasing unit prices.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |component: &str, problem| Error::InvalidPlan {
            plan: self.id.clone(),
            version: self.version,
            component: component.to_owned(),
            problem,
        };
        if self.id.is_empty() {
            return Err(bad("", PlanProblem::EmptyId));
        }
        self.currency.validate().map_err(|p| bad("", p))?;
        let mut names = std::collections::BTreeSet::new();
        for c in &self.components {
            if !names.insert(c.name.as_str()) {
                return Err(bad(&c.name, PlanProblem::DuplicateComponent));
            }
            let neg = |d: &Decimal| d.is_sign_negative() && !d.is_zero();
            let prices: Vec<&Decimal> = match &c.pricing {
                Pricing::Recurring { amount }
                | Pricing::OneTime { amount }
                | Pricing::MinimumSpend { amount } => vec![amount],
                Pricing::Subscription { unit_price, .. } => vec![unit_price],
                Pricing::Percentile95 {
                    commit_mbps,
                    commit_price,
                    overage_price,
                } => vec![commit_mbps, commit_price, overage_price],
                Pricing::Metered {
                    included,
                    tiers,
                    mode,
                    ..
                } => {
                    if tiers.is_empty() {
                        return Err(bad(&c.name, PlanProblem::NoTiers));
                    }
                    let mut prev = Decimal::ZERO;
                    for (i, t) in tiers.iter().enumerate() {
                        let last = i + 1 == tiers.len();
                        match t.up_to {
                            None if !last => {
                                return Err(bad(&c.name, PlanProblem::LastTierBounded));
                            }
                            Some(_) if last => {
                                return Err(bad(&c.name, PlanProblem::LastTierBounded));
                            }
                            Some(up) if up <= prev => {
                                return Err(bad(&c.name, PlanProblem::TierBoundsNotIncreasing));
                            }
                            Some(up) => prev = up,
                            None => {}
                        }
                        if i > 0
                            && *mode == TierMode::Volume
                            && t.unit_price > tiers[i - 1].unit_price
                        {
                            return Err(bad(&c.name, PlanProblem::VolumePricesIncrease));
                        }
                    }
                    let mut v: Vec<&Decimal> = tiers.iter().map(|t| &t.unit_price).collect();
                    v.push(included);
                    v
                }
            };
            if prices.iter().any(|d| neg(d)) {
                return Err(bad(&c.name, PlanProblem::NegativePrice));
            }
            if prices.iter().any(|d| **d > MAX_PRICE) {
                return Err(bad(&c.name, PlanProblem::PriceTooLarge));
            }
        }
        Ok(())
    }

    /// Whether a component is billed at the 95th percentile, i.e. whether pricing needs
    /// the bandwidth samples (otherwise [`crate::UsageTotals::bandwidth`] may be empty).
    pub fn uses_samples(&self) -> bool {
        self.components
            .iter()
            .any(|c| matches!(c.pricing, Pricing::Percentile95 { .. }))
    }

    /// Whether any component charges for CDN usage.
    pub fn uses_cdn(&self) -> bool {
        self.components.iter().any(|c| match &c.pricing {
            Pricing::Metered { metric, .. } => metric.is_cdn(),
            Pricing::Percentile95 { .. } => true,
            _ => false,
        })
    }
}

/// The largest price or amount a plan may hold. With [`crate::account::MAX_QUANTITY`]
/// and usage counters below 2^64 it keeps every product the fee engine forms (quantity
/// x price x the milliseconds of a year, before dividing by the period) below
/// [`Decimal::MAX`] (about 7.9 x 10^28); the engine still checks every operation and
/// answers [`crate::Error::AmountOverflow`] rather than panic.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// All plan versions known, by (id, version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanBook {
    plans: BTreeMap<(String, u32), Plan>,
}

impl PlanBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a plan version after validating it; an existing (id, version) is replaced.
    pub fn insert(&mut self, plan: Plan) -> Result<(), Error> {
        plan.validate()?;
        self.plans.insert((plan.id.clone(), plan.version), plan);
        Ok(())
    }

    /// Looks a plan version up.
    pub fn get(&self, id: &str, version: u32) -> Result<&Plan, Error> {
        self.plans
            .get(&(id.to_owned(), version))
            .ok_or_else(|| Error::UnknownPlan {
                plan: id.to_owned(),
                version,
            })
    }

    /// Every plan version.
    pub fn iter(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values()
    }
}
