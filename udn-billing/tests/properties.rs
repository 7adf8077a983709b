//! The invariants of billing, stated as proptests. Each would fail on a plausible bug:
//! rounding the sum instead of each line, a tier boundary off by one, prorating by days,
//! counting a bucket in two segments, a replay that adds again, a percentile rank off
//! by one.

use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use udn_billing::percentile::{bucket_bytes_to_mbps, p95_bytes};
use udn_billing::plan::{tiered_amount, volume_unit_price};
use udn_billing::*;

const KINDS: [PeriodKind; 5] = [
    PeriodKind::Hour,
    PeriodKind::Week,
    PeriodKind::Month,
    PeriodKind::Quarter,
    PeriodKind::Year,
];

/// A price with up to 4 decimals, 0 to 100.
fn price() -> impl Strategy<Value = Decimal> {
    (0i64..1_000_000).prop_map(|n| Decimal::new(n, 4))
}

fn tiers(volume: bool) -> impl Strategy<Value = Vec<Tier>> {
    (prop::collection::vec((1i64..5_000, price()), 1..6)).prop_map(move |raw| {
        let mut bound = Decimal::ZERO;
        let mut prices: Vec<Decimal> = raw.iter().map(|(_, p)| *p).collect();
        if volume {
            prices.sort_by(|a, b| b.cmp(a));
        }
        let n = raw.len();
        raw.iter()
            .zip(prices)
            .enumerate()
            .map(|(i, ((step, _), p))| {
                bound += Decimal::new(*step, 1);
                Tier {
                    up_to: (i + 1 < n).then_some(bound),
                    unit_price: p,
                }
            })
            .collect()
    })
}

fn quantity() -> impl Strategy<Value = Decimal> {
    (0i64..100_000_000).prop_map(|n| Decimal::new(n, 3))
}

fn base_account(
    kind: PeriodKind,
    currency: &str,
    subs: Vec<Subscription>,
    tax: Option<Tax>,
) -> Account {
    Account {
        id: "acct".into(),
        invoicing: InvoicingInfo {
            company: "Acct".into(),
            address: vec!["Street 1".into()],
            contact: "C".into(),
            email: "c@acct.example".into(),
            tax_id: None,
        },
        currency: Currency::new(currency),
        delivery: Delivery::Email,
        payment: PaymentMethod::Invoice { terms_days: 30 },
        services: Services::GtmCdn,
        billing_period: kind,
        tax,
        subscriptions: subs,
    }
}

fn sub(start: u64, end: Option<u64>) -> Subscription {
    Subscription {
        plan: "p".into(),
        version: 1,
        start: Timestamp::from_millis(start),
        end: end.map(Timestamp::from_millis),
        quantity: 3,
    }
}

/// A random plan mixing every component type.
fn any_plan(kind: PeriodKind, currency: &'static str) -> impl Strategy<Value = Plan> {
    let metric = prop::sample::select(vec![
        Metric::DnsQueries,
        Metric::HttpRequests,
        Metric::BytesDelivered,
        Metric::CacheFillBytes,
    ]);
    let unit = prop::sample::select(vec![Unit::Gb, Unit::TenThousand, Unit::Million, Unit::One]);
    let metered = (metric, unit, any::<bool>(), quantity(), any::<bool>()).prop_flat_map(
        |(m, u, vol, inc, regional)| {
            tiers(vol).prop_map(move |t| Pricing::Metered {
                metric: m,
                unit: u,
                region: regional.then(|| "fra".to_owned()),
                included: inc / Decimal::from(1000),
                mode: if vol {
                    TierMode::Volume
                } else {
                    TierMode::Graduated
                },
                tiers: t,
            })
        },
    );
    let component = prop_oneof![
        price().prop_map(|amount| Pricing::Recurring { amount }),
        price().prop_map(|amount| Pricing::OneTime { amount }),
        price().prop_map(|unit_price| Pricing::Subscription {
            unit_price,
            unit: "zone".into()
        }),
        metered,
        (0i64..2000, price(), price()).prop_map(|(c, cp, op)| Pricing::Percentile95 {
            commit_mbps: Decimal::from(c),
            commit_price: cp,
            overage_price: op,
        }),
        price().prop_map(|amount| Pricing::MinimumSpend {
            amount: amount * Decimal::from(10)
        }),
    ];
    prop::collection::vec(component, 1..7).prop_map(move |cs| Plan {
        id: "p".into(),
        version: 1,
        name: "P".into(),
        currency: Currency::new(currency),
        period: kind,
        components: cs
            .into_iter()
            .enumerate()
            .map(|(i, pricing)| Component {
                name: format!("c{i}"),
                pricing,
            })
            .collect(),
    })
}

/// Random usage: (position in the period in millionths, metric, region, quantity).
type RawRecord = (u64, Metric, &'static str, u64);

fn raw_records(n: usize) -> impl Strategy<Value = Vec<RawRecord>> {
    let metric = prop::sample::select(vec![
        Metric::DnsQueries,
        Metric::HttpRequests,
        Metric::BytesDelivered,
        Metric::CacheFillBytes,
    ]);
    let region = prop::sample::select(vec!["fra", "iad", "sin", ""]);
    prop::collection::vec(
        (0u64..1_000_000, metric, region, 0u64..50_000_000_000),
        0..n,
    )
}

/// Places raw records inside `period`, for account `acct`.
fn place(period: &Period, raw: &[RawRecord]) -> Vec<UsageRecord> {
    raw.iter()
        .map(|(frac, metric, region, quantity)| UsageRecord {
            account: "acct".into(),
            at: Timestamp::from_millis(
                period.start.as_millis() + period.duration_ms() * frac / 1_000_000,
            ),
            metric: *metric,
            region: (*region).into(),
            quantity: *quantity,
        })
        .collect()
}

fn period_at(kind: PeriodKind, seed: u64) -> Period {
    // 2020-01-01 .. ~2040
    Period::containing(
        kind,
        Timestamp::from_millis(1_577_836_800_000 + seed % 631_152_000_000),
    )
    .unwrap()
}

fn ledger_of(batches: &[UsageBatch]) -> UsageLedger {
    let mut l = UsageLedger::new();
    for b in batches {
        let _ = l.apply(b).unwrap();
    }
    l
}

fn book(plan: Plan) -> PlanBook {
    let mut b = PlanBook::new();
    b.insert(plan).unwrap();
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// total = subtotal + tax, subtotal = sum of the line amounts, each line rounded once.
    #[test]
    fn total_is_the_sum_of_rounded_line_items(
        kind in prop::sample::select(vec![PeriodKind::Hour, PeriodKind::Week, PeriodKind::Month]),
        currency in prop::sample::select(vec!["EUR", "JPY", "KWD"]),
        seed in any::<u64>(),
        plan in prop::sample::select(vec!["EUR", "JPY", "KWD"]).prop_flat_map(|c| any_plan(PeriodKind::Hour, c)),
        raw in raw_records(40),
        start_frac in 0u64..1000,
        taxed in any::<bool>(),
    ) {
        let period = period_at(kind, seed);
        let plan = Plan { period: kind, currency: Currency::new(currency), ..plan };
        let recs = place(&period, &raw);
        let start = period.start.as_millis() + period.duration_ms() * start_frac / 1000;
        let tax = taxed.then(|| Tax { name: "VAT".into(), rate: Decimal::new(19, 2) });
        let acct = base_account(kind, currency, vec![sub(start, None)], tax);
        let ledger = ledger_of(&[UsageBatch { key: "k".into(), records: recs }]);
        let inv = compute_invoice(&acct, &book(plan), &period, &ledger).unwrap();
        let cur = Currency::new(currency);
        let mut sum = Decimal::ZERO;
        for l in &inv.lines {
            prop_assert_eq!(cur.round(l.amount), l.amount, "line not rounded: {:?}", l);
            prop_assert!(l.amount.scale() <= cur.minor_units());
            sum += l.amount;
        }
        prop_assert_eq!(inv.subtotal, sum);
        let tax = inv.tax.as_ref().map_or(Decimal::ZERO, |t| t.amount);
        prop_assert_eq!(cur.round(tax), tax);
        prop_assert_eq!(inv.total, sum + tax);
    }

    #[test]
    fn graduated_amount_never_decreases(t in tiers(false), a in quantity(), b in quantity()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let (x, bx) = tiered_amount(TierMode::Graduated, &t, lo).unwrap();
        let (y, _) = tiered_amount(TierMode::Graduated, &t, hi).unwrap();
        prop_assert!(x <= y, "{} -> {}, {} -> {}", lo, x, hi, y);
        // the breakdown covers the quantity exactly
        let covered: Decimal = bx.iter().map(|c| c.quantity).sum();
        prop_assert_eq!(covered, lo);
    }

    /// Volume unit prices never increase with quantity (the amount itself may drop
    /// when a threshold is crossed: see the worked example).
    #[test]
    fn volume_unit_price_never_increases(t in tiers(true), a in quantity(), b in quantity()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let p_lo = volume_unit_price(&t, lo).unwrap();
        let p_hi = volume_unit_price(&t, hi).unwrap();
        prop_assert!(p_lo >= p_hi);
        let (amount, _) = tiered_amount(TierMode::Volume, &t, hi).unwrap();
        prop_assert_eq!(amount, hi * p_hi);
    }

    /// Linear components (recurring, subscription, single-price metered) add up over any
    /// partition of a period into subscriptions of the same plan: exactly before
    /// rounding (checked through the quantities) and within half a minor unit per line
    /// after it.
    #[test]
    fn linear_fees_are_additive_over_a_partition(
        kind in prop::sample::select(KINDS.to_vec()),
        seed in any::<u64>(),
        cuts in prop::collection::btree_set(1u64..1_000_000, 0..5),
        fee in price(), seat in price(), unit_price in price(),
    ) {
        let period = period_at(kind, seed);
        let plan = Plan {
            id: "p".into(), version: 1, name: "P".into(), currency: Currency::new("EUR"), period: kind,
            components: vec![
                Component { name: "fee".into(), pricing: Pricing::Recurring { amount: fee } },
                Component { name: "seats".into(), pricing: Pricing::Subscription { unit_price: seat, unit: "zone".into() } },
                Component { name: "gb".into(), pricing: Pricing::Metered {
                    metric: Metric::BytesDelivered, unit: Unit::Gb, region: None, included: Decimal::ZERO,
                    mode: TierMode::Graduated, tiers: vec![Tier { up_to: None, unit_price }] } },
            ],
        };
        let plans = book(plan);
        let (s, len) = (period.start.as_millis(), period.duration_ms());
        let mut bounds: Vec<u64> = cuts.iter().map(|c| s + len * c / 1_000_000).collect();
        bounds.dedup();
        let mut edges = vec![s];
        edges.extend(bounds.into_iter().filter(|b| *b > s));
        edges.push(period.end.as_millis());
        edges.dedup();
        // usage: 500 records spread evenly, off the bucket grid
        let step = len / 500;
        let recs: Vec<UsageRecord> = (0..500).map(|i| UsageRecord {
            account: "acct".into(), at: Timestamp::from_millis(s + i * step + 7),
            metric: Metric::BytesDelivered, region: "fra".into(), quantity: 1_234_567_891 + i * 77,
        }).collect();
        let ledger = ledger_of(&[UsageBatch { key: "k".into(), records: recs }]);
        let whole = compute_invoice(&base_account(kind, "EUR", vec![sub(0, None)], None), &plans, &period, &ledger).unwrap();
        let parts: Vec<Subscription> = edges.windows(2).map(|w| sub(w[0], Some(w[1]))).collect();
        let n = parts.len();
        let split = compute_invoice(&base_account(kind, "EUR", parts, None), &plans, &period, &ledger).unwrap();
        for comp in ["fee", "seats", "gb"] {
            let w = whole.lines.iter().find(|l| l.component == comp).unwrap();
            let ps: Vec<&LineItem> = split.lines.iter().filter(|l| l.component == comp).collect();
            prop_assert_eq!(ps.len(), n);
            let sum: Decimal = ps.iter().map(|l| l.amount).sum();
            let tolerance = Decimal::new(5, 3) * Decimal::from(n as u64 + 1);
            prop_assert!((sum - w.amount).abs() <= tolerance, "{}: whole {} parts {}", comp, w.amount, sum);
            if comp == "gb" {
                let q: Decimal = ps.iter().map(|l| l.quantity).sum();
                prop_assert_eq!(q, w.quantity);
            }
            if comp != "gb" {
                let f: Decimal = ps.iter().map(|l| l.proration.unwrap_or(Decimal::ONE)).sum();
                prop_assert!((f - Decimal::ONE).abs() < Decimal::new(1, 20), "fractions sum to {}", f);
            }
        }
    }

    /// However records are cut into batches, and in whatever order the batches arrive,
    /// the ledger and the invoice are the same.
    #[test]
    fn splitting_or_reordering_batches_gives_the_same_invoice(
        seed in any::<u64>(),
        raw in raw_records(120),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        order in any::<u64>(),
        plan in any_plan(PeriodKind::Week, "EUR"),
    ) {
        let period = period_at(PeriodKind::Week, seed);
        let recs = place(&period, &raw);
        let one = ledger_of(&[UsageBatch { key: "all".into(), records: recs.clone() }]);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(recs.len() + 1)).collect();
        at.sort();
        at.insert(0, 0);
        at.push(recs.len());
        let mut batches: Vec<UsageBatch> = at.windows(2).enumerate().map(|(i, w)| UsageBatch {
            key: format!("b{i}"), records: recs[w[0]..w[1]].to_vec() }).collect();
        // a deterministic shuffle
        let mut x = order | 1;
        for i in (1..batches.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            batches.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let many = ledger_of(&batches);
        let acct = base_account(PeriodKind::Week, "EUR", vec![sub(0, None)], None);
        let plans = book(plan);
        prop_assert_eq!(
            one.totals("acct", period.start, period.end),
            many.totals("acct", period.start, period.end)
        );
        prop_assert_eq!(
            compute_invoice(&acct, &plans, &period, &one).unwrap(),
            compute_invoice(&acct, &plans, &period, &many).unwrap()
        );
    }

    #[test]
    fn replaying_a_batch_changes_nothing(
        raw in raw_records(60),
        cut in any::<prop::sample::Index>(),
        replay in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
    ) {
        let recs = place(&Period::parse("2026-11").unwrap(), &raw);
        let c = cut.index(recs.len() + 1);
        let batches = [
            UsageBatch { key: "a".into(), records: recs[..c].to_vec() },
            UsageBatch { key: "b".into(), records: recs[c..].to_vec() },
        ];
        let mut ledger = ledger_of(&batches);
        let before = ledger.clone();
        for r in replay {
            let b = &batches[r.index(2)];
            prop_assert_eq!(ledger.apply(b).unwrap(), usage::Applied::Replay);
        }
        prop_assert_eq!(ledger, before);
    }

    /// The selection-based percentile equals the definition applied literally.
    #[test]
    fn p95_equals_the_naive_reference(samples in prop::collection::vec(0u64..1_000_000, 0..600)) {
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        let drop = sorted.len() / 20;
        sorted.truncate(sorted.len() - drop);
        let reference = sorted.last().copied().unwrap_or(0);
        prop_assert_eq!(p95_bytes(&samples, &mut Vec::new()), reference);
    }

    /// The billed 95th percentile of an invoice, from records of several POPs at random
    /// instants, equals a reference that sums per bucket by hand and counts empty buckets
    /// as zero.
    #[test]
    fn invoice_p95_sums_pops_per_bucket_and_counts_empty_buckets(
        hour_seed in any::<u64>(),
        recs in prop::collection::vec((0u64..3_600_000, prop::sample::select(vec!["fra", "iad", "sin"]), 0u64..40_000_000_000), 0..60),
    ) {
        let hour = period_at(PeriodKind::Hour, hour_seed);
        // a day of hourly periods would be slow to build: use a week plan over one hour of traffic
        let period = Period::containing(PeriodKind::Week, hour.start).unwrap();
        let plan = Plan {
            id: "p".into(), version: 1, name: "P".into(), currency: Currency::new("EUR"), period: PeriodKind::Week,
            components: vec![Component { name: "bw".into(), pricing: Pricing::Percentile95 {
                commit_mbps: Decimal::ZERO, commit_price: Decimal::ZERO, overage_price: Decimal::ONE } }],
        };
        let records: Vec<UsageRecord> = recs.iter().map(|(off, pop, q)| UsageRecord {
            account: "acct".into(), at: Timestamp::from_millis(hour.start.as_millis() + off),
            metric: Metric::BytesDelivered, region: (*pop).into(), quantity: *q }).collect();
        let ledger = ledger_of(&[UsageBatch { key: "k".into(), records }]);
        let inv = compute_invoice(&base_account(PeriodKind::Week, "EUR", vec![sub(0, None)], None), &book(plan), &period, &ledger).unwrap();
        let mut per_bucket: BTreeMap<u64, u64> = BTreeMap::new();
        for (off, _, q) in &recs {
            *per_bucket.entry((hour.start.as_millis() + off) / 300_000).or_default() += q;
        }
        let n = (period.duration_ms() / 300_000) as usize; // 2016
        let mut all: Vec<u64> = per_bucket.values().copied().collect();
        all.resize(n, 0);
        all.sort_unstable();
        let billed = all[n - n / 20 - 1];
        let over = inv.lines.iter().find(|l| l.unit == "Mbps above commit").unwrap();
        prop_assert_eq!(over.quantity, bucket_bytes_to_mbps(billed));
    }

    /// A subscription covering the whole period pays exactly the full fees.
    #[test]
    fn prorating_a_whole_period_is_the_full_fee(
        kind in prop::sample::select(KINDS.to_vec()),
        seed in any::<u64>(),
        fee in price(), seat in price(),
        before in 0u64..10_000_000_000, after in prop::option::of(0u64..10_000_000_000),
    ) {
        let period = period_at(kind, seed);
        let plan = Plan {
            id: "p".into(), version: 1, name: "P".into(), currency: Currency::new("EUR"), period: kind,
            components: vec![
                Component { name: "fee".into(), pricing: Pricing::Recurring { amount: fee } },
                Component { name: "seats".into(), pricing: Pricing::Subscription { unit_price: seat, unit: "zone".into() } },
            ],
        };
        let s = sub(period.start.as_millis().saturating_sub(before), after.map(|a| period.end.as_millis() + a));
        let inv = compute_invoice(&base_account(kind, "EUR", vec![s], None), &book(plan), &period, &UsageLedger::new()).unwrap();
        let cur = Currency::new("EUR");
        prop_assert_eq!(inv.lines[0].amount, cur.round(fee));
        prop_assert_eq!(inv.lines[1].amount, cur.round(seat * Decimal::from(3)));
        prop_assert!(inv.lines.iter().all(|l| l.proration.is_none()));
    }

    /// Period labels: every period prints a label that parses back to it, and arbitrary
    /// text never panics the parser.
    #[test]
    fn period_labels_round_trip(kind in prop::sample::select(KINDS.to_vec()), seed in any::<u64>(), junk in ".{0,16}") {
        let p = period_at(kind, seed);
        prop_assert_eq!(Period::parse(&p.to_string()).unwrap(), p);
        prop_assert_eq!(p.next().unwrap().previous().unwrap(), p);
        let _ = Period::parse(&junk);
    }
}

proptest! {
    /// Folding log records into a batch keeps every total and every bandwidth sample.
    #[test]
    fn log_records_fold_without_changing_usage(
        recs in prop::collection::vec((0u64..86_400_000, 0usize..3, any::<bool>(), 0u64..10_000_000, 0u64..1_000_000), 0..80),
    ) {
        use udn_core::log::{DnsRecord, HttpRecord, LogRecord};
        let day = Period::parse("2026-11-26T00").unwrap().start.as_millis();
        let pops = ["fra", "iad", "sin"];
        let log: Vec<LogRecord> = recs.iter().map(|(off, pop, dns, bytes, fill)| {
            let ts = Timestamp::from_millis(day + off);
            if *dns {
                LogRecord::Dns(DnsRecord {
                    ts, hostname: "www.shop.example".into(), qtype: "A".into(),
                    client: "192.0.2.1".parse().unwrap(), ecs: None, addrs: vec![],
                    reason: "latency".into(), pop: Some(pops[*pop].into()),
                    customer: Some("acct".into()), server: "dns-1".into(),
                })
            } else {
                LogRecord::Http(HttpRecord {
                    ts, customer: Some("acct".into()), host: "h".into(), path: "/".into(),
                    method: "GET".into(), status: 200, bytes: *bytes, fill_bytes: *fill,
                    outcome: "miss".into(), duration_us: 1, client: "192.0.2.1".parse().unwrap(),
                    pop: pops[*pop].into(),
                })
            }
        }).collect();
        let batch = udn_billing::usage::from_log_records("f", &log);
        // the unfolded reference: one usage record per log record and metric
        let mut unfolded = Vec::new();
        for (off, pop, dns, bytes, fill) in &recs {
            let at = Timestamp::from_millis(day + off);
            let mk = |metric, quantity| UsageRecord { account: "acct".into(), at, metric, region: pops[*pop].into(), quantity };
            if *dns {
                unfolded.push(mk(Metric::DnsQueries, 1));
            } else {
                unfolded.push(mk(Metric::HttpRequests, 1));
                unfolded.push(mk(Metric::BytesDelivered, *bytes));
                unfolded.push(mk(Metric::CacheFillBytes, *fill));
            }
        }
        unfolded.retain(|r| r.quantity > 0);
        let a = ledger_of(&[batch]);
        let b = ledger_of(&[UsageBatch { key: "f".into(), records: unfolded }]);
        let (from, to) = (Timestamp::from_millis(day), Timestamp::from_millis(day + 86_400_000));
        prop_assert_eq!(a.totals("acct", from, to), b.totals("acct", from, to));
    }
}
