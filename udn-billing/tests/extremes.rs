//! Extreme quantities, prices and usage: the fee engine never panics. Inside the
//! validated bounds (`MAX_PRICE`, `MAX_QUANTITY`, counters below 2^64) every invoice is
//! computed; beyond them the plan or account is refused, and what validation cannot
//! bound (a tax rate, the sum of many huge lines) is `Error::AmountOverflow`.

use proptest::prelude::*;
use rust_decimal::Decimal;
use udn_billing::account::MAX_QUANTITY;
use udn_billing::plan::MAX_PRICE;
use udn_billing::*;

fn account(kind: PeriodKind, quantity: u32, start: Timestamp, tax: Option<Decimal>) -> Account {
    Account {
        id: "acct".into(),
        invoicing: InvoicingInfo {
            company: "Acct".into(),
            address: vec!["Street 1".into()],
            contact: "C".into(),
            email: "c@acct.example".into(),
            tax_id: None,
        },
        currency: Currency::new("EUR"),
        delivery: Delivery::Email,
        payment: PaymentMethod::Invoice { terms_days: 30 },
        services: Services::GtmCdn,
        billing_period: kind,
        tax: tax.map(|rate| Tax {
            name: "VAT".into(),
            rate,
        }),
        subscriptions: vec![Subscription {
            plan: "p".into(),
            version: 1,
            start,
            end: None,
            quantity,
        }],
    }
}

fn plan(kind: PeriodKind, components: Vec<Pricing>) -> Plan {
    Plan {
        id: "p".into(),
        version: 1,
        name: "P".into(),
        currency: Currency::new("EUR"),
        period: kind,
        components: components
            .into_iter()
            .enumerate()
            .map(|(i, pricing)| Component {
                name: format!("c{i}"),
                pricing,
            })
            .collect(),
    }
}

/// A price anywhere from 0 to `Decimal::MAX`, often near the bounds, with any scale.
fn extreme_price() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        Just(Decimal::ZERO),
        Just(MAX_PRICE),
        Just(Decimal::MAX),
        (any::<u64>(), 0u32..28).prop_map(|(m, scale)| Decimal::new(m as i64 & i64::MAX, scale)),
        (any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(lo, mid, hi)| Decimal::from_parts(lo, mid, hi, false, 0)),
    ]
}

fn extreme_component() -> impl Strategy<Value = Pricing> {
    let metric = prop::sample::select(vec![
        Metric::DnsQueries,
        Metric::HttpRequests,
        Metric::BytesDelivered,
        Metric::CacheFillBytes,
    ]);
    let unit = prop::sample::select(vec![Unit::Gb, Unit::TenThousand, Unit::Million, Unit::One]);
    prop_oneof![
        extreme_price().prop_map(|amount| Pricing::Recurring { amount }),
        extreme_price().prop_map(|amount| Pricing::OneTime { amount }),
        extreme_price().prop_map(|unit_price| Pricing::Subscription {
            unit_price,
            unit: "zone".into()
        }),
        (metric, unit, extreme_price(), extreme_price()).prop_map(|(metric, unit, p, inc)| {
            Pricing::Metered {
                metric,
                unit,
                region: None,
                included: inc,
                mode: TierMode::Graduated,
                tiers: vec![Tier {
                    up_to: None,
                    unit_price: p,
                }],
            }
        }),
        (extreme_price(), extreme_price(), extreme_price()).prop_map(|(c, cp, op)| {
            Pricing::Percentile95 {
                commit_mbps: c,
                commit_price: cp,
                overage_price: op,
            }
        }),
        extreme_price().prop_map(|amount| Pricing::MinimumSpend { amount }),
    ]
}

/// Usage of `u64::MAX` (or anything) for every metric in the first bucket.
fn usage(period: &Period, quantity: u64) -> UsageLedger {
    let mut ledger = UsageLedger::new();
    for (i, metric) in [
        Metric::DnsQueries,
        Metric::HttpRequests,
        Metric::BytesDelivered,
        Metric::CacheFillBytes,
    ]
    .into_iter()
    .enumerate()
    {
        let _ = ledger
            .apply(&UsageBatch {
                key: format!("k{i}"),
                records: vec![UsageRecord {
                    account: "acct".into(),
                    at: period.start,
                    metric,
                    region: String::new(),
                    quantity,
                }],
            })
            .expect("one record per metric cannot overflow");
    }
    ledger
}

fn kinds() -> impl Strategy<Value = PeriodKind> {
    prop::sample::select(vec![
        PeriodKind::Hour,
        PeriodKind::Week,
        PeriodKind::Month,
        PeriodKind::Quarter,
        PeriodKind::Year,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any plan, any quantity, any usage, any tax rate: an invoice or an error, never a
    /// panic. When the plan and account pass validation and there is no tax and at most
    /// one usage-charged component, the invoice is always computed (the bounds are
    /// enough); an error is then only `AmountOverflow`.
    #[test]
    fn extreme_inputs_never_panic(
        kind in kinds(),
        components in prop::collection::vec(extreme_component(), 1..5),
        quantity in prop_oneof![Just(u32::MAX), Just(MAX_QUANTITY), any::<u32>()],
        used in prop_oneof![Just(u64::MAX), any::<u64>()],
        tax in proptest::option::of(extreme_price()),
        mid_period in any::<bool>(),
    ) {
        let period = Period::containing(kind, Timestamp::from_millis(1_798_761_600_000)).unwrap();
        let start = if mid_period {
            Timestamp::from_millis(period.start.as_millis() + period.duration_ms() / 3)
        } else {
            period.start
        };
        let p = plan(kind, components);
        let plan_ok = p.validate().is_ok();
        let mut book = PlanBook::new();
        if book.insert(p).is_err() {
            prop_assert!(!plan_ok);
            return Ok(());
        }
        let acct = account(kind, quantity, start, tax);
        let result = compute_invoice(&acct, &book, &period, &usage(&period, used));
        if quantity > MAX_QUANTITY {
            let refused = matches!(
                result,
                Err(Error::InvalidAccount { problem: AccountProblem::QuantityTooLarge { .. }, .. })
            );
            prop_assert!(refused, "{:?}", result);
        }
        match result {
            Ok(inv) => {
                let sum = inv.lines.iter().try_fold(Decimal::ZERO, |a, l| a.checked_add(l.amount));
                prop_assert_eq!(sum, Some(inv.subtotal));
            }
            Err(Error::AmountOverflow { account }) => prop_assert_eq!(account, "acct"),
            Err(Error::InvalidAccount { .. }) => prop_assert!(quantity > MAX_QUANTITY),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// Within the bounds, one component at the largest price, the largest quantity and
    /// counters at 2^64 - 1, prorated over a year: computed, never an overflow.
    #[test]
    fn inside_the_bounds_is_always_computed(
        component in extreme_component(),
        mid_period in any::<bool>(),
    ) {
        let clamp = |d: Decimal| d.min(MAX_PRICE);
        let component = match component {
            Pricing::Recurring { amount } => Pricing::Recurring { amount: clamp(amount) },
            Pricing::OneTime { amount } => Pricing::OneTime { amount: clamp(amount) },
            Pricing::Subscription { unit_price, unit } => Pricing::Subscription { unit_price: clamp(unit_price), unit },
            Pricing::MinimumSpend { amount } => Pricing::MinimumSpend { amount: clamp(amount) },
            Pricing::Metered { metric, unit, region, included, mode, tiers } => Pricing::Metered {
                metric, unit, region, included: clamp(included), mode,
                tiers: tiers.into_iter().map(|t| Tier { up_to: t.up_to, unit_price: clamp(t.unit_price) }).collect(),
            },
            Pricing::Percentile95 { commit_mbps, commit_price, overage_price } => Pricing::Percentile95 {
                commit_mbps: clamp(commit_mbps), commit_price: clamp(commit_price), overage_price: clamp(overage_price),
            },
        };
        let kind = PeriodKind::Year;
        let period = Period::containing(kind, Timestamp::from_millis(1_798_761_600_000)).unwrap();
        let start = if mid_period {
            Timestamp::from_millis(period.start.as_millis() + 1)
        } else {
            period.start
        };
        let mut book = PlanBook::new();
        book.insert(plan(kind, vec![component])).unwrap();
        let acct = account(kind, MAX_QUANTITY, start, None);
        let mut ledger = usage(&period, u64::MAX);
        if book.get("p", 1).unwrap().uses_samples() {
            ledger = UsageLedger::new();
        }
        let inv = compute_invoice(&acct, &book, &period, &ledger);
        prop_assert!(inv.is_ok(), "{:?}", inv);
    }
}

/// The case of the issue: a yearly subscription of a large quantity at a large price,
/// prorated (the engine multiplied by the period's milliseconds before dividing).
#[test]
fn yearly_subscription_of_the_largest_quantity_at_the_largest_price() {
    let kind = PeriodKind::Year;
    let period = Period::containing(kind, Timestamp::from_millis(1_798_761_600_000)).unwrap();
    let mut book = PlanBook::new();
    book.insert(plan(
        kind,
        vec![Pricing::Subscription {
            unit_price: MAX_PRICE,
            unit: "zone".into(),
        }],
    ))
    .unwrap();
    let start = Timestamp::from_millis(period.start.as_millis() + period.duration_ms() / 2);
    let inv = compute_invoice(
        &account(kind, MAX_QUANTITY, start, None),
        &book,
        &period,
        &UsageLedger::new(),
    )
    .unwrap();
    assert_eq!(inv.lines.len(), 1);
    // half a year of 10^9 zones at 10^9: 5 x 10^17 (within a cent of it)
    let half = Decimal::from(500_000_000_000_000_000u64);
    assert!(
        (inv.total - half).abs() <= Decimal::new(1, 2),
        "{}",
        inv.total
    );
    // above the quantity bound: refused with the reason, not a panic
    let err = compute_invoice(
        &account(kind, u32::MAX, start, None),
        &book,
        &period,
        &UsageLedger::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("quantity 4294967295"), "{err}");
}

/// A tax rate is not bounded by validation: a rate that overflows the tax is reported.
#[test]
fn an_overflowing_tax_is_amount_overflow() {
    let kind = PeriodKind::Month;
    let period = Period::containing(kind, Timestamp::from_millis(1_798_761_600_000)).unwrap();
    let mut book = PlanBook::new();
    book.insert(plan(kind, vec![Pricing::Recurring { amount: MAX_PRICE }]))
        .unwrap();
    let acct = account(kind, 1, period.start, Some(Decimal::MAX));
    let err = compute_invoice(&acct, &book, &period, &UsageLedger::new()).unwrap_err();
    assert_eq!(
        err,
        Error::AmountOverflow {
            account: "acct".into()
        }
    );
}
