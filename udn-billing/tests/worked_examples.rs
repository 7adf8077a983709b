//! The worked examples of the README and docs/billing.md, computed by hand there and
//! checked here against the library.

use rust_decimal::Decimal;
use std::str::FromStr;
use udn_billing::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn account(id: &str, json_extra: &str) -> Account {
    serde_json::from_str(&format!(
        r#"{{
        "id": "{id}", "delivery": "email",
        "payment": {{"method": "invoice", "terms_days": 30}},
        "invoicing": {{"company": "{id} Ltd", "address": ["1 Main St", "Springfield"],
                      "contact": "Pat Doe", "email": "billing@{id}.example"}},
        {json_extra}
    }}"#
    ))
    .unwrap()
}

fn rec(account: &str, at: Timestamp, metric: Metric, region: &str, q: u64) -> UsageRecord {
    UsageRecord {
        account: account.into(),
        at,
        metric,
        region: region.into(),
        quantity: q,
    }
}

fn line<'a>(inv: &'a Invoice, component: &str) -> &'a LineItem {
    inv.lines
        .iter()
        .find(|l| l.component == component)
        .unwrap_or_else(|| panic!("no line {component} in {inv:#?}"))
}

/// Example 1: a CDN customer billed monthly at graduated per-GB prices, with a one-time
/// setup fee in the first month and VAT.
#[test]
fn cdn_customer_monthly_tiered_per_gb_with_setup_fee() {
    let plan: Plan = serde_json::from_str(
        r#"{
        "id": "cdn-standard", "version": 1, "name": "CDN Standard", "currency": "EUR",
        "period": "month",
        "components": [
          {"name": "Setup", "pricing": {"type": "one_time", "amount": "250.00"}},
          {"name": "Platform", "pricing": {"type": "recurring", "amount": "99.00"}},
          {"name": "Traffic", "pricing": {"type": "metered", "metric": "bytes_delivered",
            "unit": "gb", "included": "100", "mode": "graduated",
            "tiers": [{"up_to": "10000", "unit_price": "0.04"},
                      {"up_to": "50000", "unit_price": "0.03"},
                      {"unit_price": "0.02"}]}},
          {"name": "Requests", "pricing": {"type": "metered", "metric": "http_requests",
            "unit": "ten_thousand", "mode": "volume",
            "tiers": [{"unit_price": "0.0075"}]}}
        ]}"#,
    )
    .unwrap();
    let mut plans = PlanBook::new();
    plans.insert(plan).unwrap();
    let nov = Period::parse("2026-11").unwrap();
    let acct = account(
        "shop",
        &format!(
            r#""currency": "EUR", "services": "gtm_cdn", "billing_period": "month",
            "tax": {{"name": "VAT 19%", "rate": "0.19"}},
            "subscriptions": [{{"plan": "cdn-standard", "version": 1, "start": {}}}]"#,
            nov.start.as_millis()
        ),
    );
    let mut ledger = UsageLedger::new();
    let mid = Timestamp::from_millis(nov.start.as_millis() + 86_400_000 * 10);
    let _ = ledger
        .apply(&UsageBatch {
            key: "edge-fra-1".into(),
            records: vec![
                rec(
                    "shop",
                    mid,
                    Metric::BytesDelivered,
                    "fra",
                    8_000_000_000_000,
                ),
                rec("shop", mid, Metric::HttpRequests, "fra", 18_000_000),
            ],
        })
        .unwrap();
    let _ = ledger
        .apply(&UsageBatch {
            key: "edge-iad-1".into(),
            records: vec![
                rec(
                    "shop",
                    mid,
                    Metric::BytesDelivered,
                    "iad",
                    4_345_678_000_000,
                ),
                rec("shop", mid, Metric::HttpRequests, "iad", 12_000_000),
                // usage of October is not billed in November
                rec(
                    "shop",
                    Timestamp::from_millis(nov.start.as_millis() - 1),
                    Metric::BytesDelivered,
                    "iad",
                    999_000_000_000,
                ),
            ],
        })
        .unwrap();
    let inv = compute_invoice(&acct, &plans, &nov, &ledger).unwrap();
    assert_eq!(line(&inv, "Setup").amount, d("250.00"));
    assert_eq!(line(&inv, "Platform").amount, d("99.00"));
    // 12,345.678 GB, 100 GB free: 10,000 x 0.04 + 2,245.678 x 0.03 = 467.37034
    let t = line(&inv, "Traffic");
    assert_eq!(t.quantity, d("12345.678"));
    assert_eq!(t.tiers.len(), 2);
    assert_eq!(t.amount, d("467.37"));
    // 30,000,000 requests = 3,000 x 10,000 at 0.0075
    assert_eq!(line(&inv, "Requests").amount, d("22.50"));
    assert_eq!(inv.subtotal, d("838.87"));
    assert_eq!(inv.tax.as_ref().unwrap().amount, d("159.39")); // 159.3853
    assert_eq!(inv.total, d("998.26"));

    // December: no setup fee, the platform fee only.
    let dec = nov.next().unwrap();
    let inv = compute_invoice(&acct, &plans, &dec, &ledger).unwrap();
    assert!(inv.lines.iter().all(|l| l.component != "Setup"));
    assert_eq!(inv.subtotal, d("99.00"));
}

/// Example 2: a GTM-only customer billed hourly per million DNS queries.
#[test]
fn gtm_only_customer_hourly_per_million_queries() {
    let plan: Plan = serde_json::from_str(
        r#"{
        "id": "gtm-hourly", "version": 1, "name": "GTM pay-as-you-go", "currency": "USD",
        "period": "hour",
        "components": [
          {"name": "Base", "pricing": {"type": "recurring", "amount": "0.05"}},
          {"name": "Queries", "pricing": {"type": "metered", "metric": "dns_queries",
            "unit": "million", "mode": "graduated",
            "tiers": [{"up_to": "10", "unit_price": "0.40"}, {"unit_price": "0.20"}]}}
        ]}"#,
    )
    .unwrap();
    let mut plans = PlanBook::new();
    plans.insert(plan).unwrap();
    let hour = Period::parse("2026-11-26T13").unwrap();
    let acct = account(
        "resolver-co",
        r#""currency": "USD", "services": "gtm_only", "billing_period": "hour",
        "subscriptions": [{"plan": "gtm-hourly", "version": 1, "start": 0}]"#,
    );
    let mut ledger = UsageLedger::new();
    // 23,456,789 queries spread over the hour's 12 buckets, by two DNS servers
    let mut records = Vec::new();
    let mut left = 23_456_789u64;
    for b in 0..12u64 {
        let q = if b == 11 { left } else { 1_954_732 };
        left -= q;
        let at = Timestamp::from_millis(hour.start.as_millis() + b * 300_000 + 17_000);
        records.push(rec("resolver-co", at, Metric::DnsQueries, "", q / 2));
        records.push(rec("resolver-co", at, Metric::DnsQueries, "", q - q / 2));
    }
    let _ = ledger
        .apply(&UsageBatch {
            key: "dns-1".into(),
            records,
        })
        .unwrap();
    let inv = compute_invoice(&acct, &plans, &hour, &ledger).unwrap();
    let q = line(&inv, "Queries");
    assert_eq!(q.quantity, d("23.456789"));
    assert_eq!(q.unit, "million DNS queries");
    // 10 x 0.40 + 13.456789 x 0.20 = 6.6913578
    assert_eq!(q.amount, d("6.69"));
    assert_eq!(inv.total, d("6.74"));
    assert!(inv.tax.is_none());

    // A GTM-only account may not subscribe to a CDN plan.
    let cdn: Plan = serde_json::from_str(
        r#"{"id": "cdn-hourly", "version": 1, "name": "x", "currency": "USD", "period": "hour",
        "components": [{"name": "Traffic", "pricing": {"type": "metered",
          "metric": "bytes_delivered", "unit": "gb", "mode": "volume",
          "tiers": [{"unit_price": "0.01"}]}}]}"#,
    )
    .unwrap();
    plans.insert(cdn).unwrap();
    let mut wrong = acct.clone();
    wrong.subscriptions[0].plan = "cdn-hourly".into();
    assert!(matches!(
        compute_invoice(&wrong, &plans, &hour, &ledger),
        Err(Error::InvalidAccount {
            problem: AccountProblem::CdnNotChosen { .. },
            ..
        })
    ));
}

const MBPS_BUCKET_BYTES: u64 = 37_500_000; // 1 Mbps for 300 s = 37.5 MB

/// Example 3: a burstable customer with a 500 Mbps commit, billed at the 95th percentile.
#[test]
fn burstable_95th_percentile_with_commit() {
    let plan: Plan = serde_json::from_str(
        r#"{
        "id": "burst", "version": 1, "name": "Burstable transit", "currency": "EUR",
        "period": "month",
        "components": [
          {"name": "Bandwidth", "pricing": {"type": "percentile95",
            "commit_mbps": "500", "commit_price": "2.00", "overage_price": "3.00"}}
        ]}"#,
    )
    .unwrap();
    let mut plans = PlanBook::new();
    plans.insert(plan).unwrap();
    let nov = Period::parse("2026-11").unwrap();
    let acct = account(
        "stream",
        r#""currency": "EUR", "services": "gtm_cdn", "billing_period": "month",
        "subscriptions": [{"plan": "burst", "version": 1, "start": 0}]"#,
    );
    // 8,640 buckets in 30 days; floor(8640 / 20) = 432 are dropped.
    // 8,207 buckets at 300 Mbps (split fra 200 + iad 100), one at 700 Mbps, 432 at 2 Gbps.
    let mut records = Vec::new();
    for b in 0..8_640u64 {
        let at = Timestamp::from_millis(nov.start.as_millis() + b * 300_000);
        let mbps = match b % 20 {
            0 if b < 432 * 20 => 2_000,
            1 if b == 1 => 700,
            _ => 300,
        };
        records.push(rec(
            "stream",
            at,
            Metric::BytesDelivered,
            "fra",
            mbps * 2 / 3 * MBPS_BUCKET_BYTES,
        ));
        records.push(rec(
            "stream",
            at,
            Metric::BytesDelivered,
            "iad",
            (mbps - mbps * 2 / 3) * MBPS_BUCKET_BYTES,
        ));
    }
    let mut ledger = UsageLedger::new();
    let _ = ledger
        .apply(&UsageBatch {
            key: "nov".into(),
            records,
        })
        .unwrap();
    let inv = compute_invoice(&acct, &plans, &nov, &ledger).unwrap();
    assert_eq!(inv.lines.len(), 2);
    assert_eq!(inv.lines[0].amount, d("1000.00")); // 500 Mbps x 2.00
    assert_eq!(inv.lines[1].quantity, d("200")); // 700 - 500
    assert_eq!(inv.lines[1].amount, d("600.00"));
    assert!(
        inv.lines[1]
            .description
            .contains("95th percentile 700 Mbps over 8640 samples")
    );
    assert_eq!(inv.total, d("1600.00"));
}

/// A plan change on 16 November: each version is charged for its half of the month.
#[test]
fn plan_change_mid_month_prorates_both_versions() {
    let mut plans = PlanBook::new();
    for (v, price) in [(1, "100"), (2, "130")] {
        plans
            .insert(serde_json::from_str(&format!(
                r#"{{"id": "p", "version": {v}, "name": "P", "currency": "EUR", "period": "month",
                "components": [{{"name": "Fee", "pricing": {{"type": "recurring", "amount": "{price}"}}}}]}}"#
            )).unwrap())
            .unwrap();
    }
    let nov = Period::parse("2026-11").unwrap();
    let change = nov.start.as_millis() + 15 * 86_400_000;
    let acct = account(
        "c",
        &format!(
            r#""currency": "EUR", "services": "gtm_only", "billing_period": "month",
            "subscriptions": [{{"plan": "p", "version": 1, "start": 0, "end": {change}}},
                              {{"plan": "p", "version": 2, "start": {change}}}]"#
        ),
    );
    let inv = compute_invoice(&acct, &plans, &nov, &UsageLedger::new()).unwrap();
    let amounts: Vec<_> = inv
        .lines
        .iter()
        .map(|l| (l.plan_version, l.amount))
        .collect();
    assert_eq!(amounts, vec![(1, d("50.00")), (2, d("65.00"))]);
    assert_eq!(inv.lines[0].proration, Some(d("0.5")));
}

#[test]
fn minimum_spend_trues_up_below_the_commit_only() {
    let mut plans = PlanBook::new();
    plans
        .insert(
            serde_json::from_str(
                r#"{"id": "m", "version": 1, "name": "M", "currency": "EUR", "period": "month",
            "components": [
              {"name": "Traffic", "pricing": {"type": "metered", "metric": "bytes_delivered",
                "unit": "gb", "mode": "volume", "tiers": [{"unit_price": "0.10"}]}},
              {"name": "Commit", "pricing": {"type": "minimum_spend", "amount": "100"}}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
    let nov = Period::parse("2026-11").unwrap();
    let acct = account(
        "m",
        r#""currency": "EUR", "services": "gtm_cdn", "billing_period": "month",
        "subscriptions": [{"plan": "m", "version": 1, "start": 0}]"#,
    );
    let mut ledger = UsageLedger::new();
    let gb = 1_000_000_000;
    let _ = ledger
        .apply(&UsageBatch {
            key: "a".into(),
            records: vec![rec("m", nov.start, Metric::BytesDelivered, "", 400 * gb)],
        })
        .unwrap();
    let inv = compute_invoice(&acct, &plans, &nov, &ledger).unwrap();
    assert_eq!(line(&inv, "Commit").amount, d("60.00"));
    assert_eq!(inv.total, d("100.00"));
    let _ = ledger
        .apply(&UsageBatch {
            key: "b".into(),
            records: vec![rec("m", nov.start, Metric::BytesDelivered, "", 900 * gb)],
        })
        .unwrap();
    let inv = compute_invoice(&acct, &plans, &nov, &ledger).unwrap();
    assert!(inv.lines.iter().all(|l| l.component != "Commit"));
    assert_eq!(inv.total, d("130.00"));
}

#[test]
fn per_region_components_count_only_their_region() {
    let mut plans = PlanBook::new();
    plans
        .insert(serde_json::from_str(
            r#"{"id": "r", "version": 1, "name": "R", "currency": "EUR", "period": "month",
            "components": [
              {"name": "EU", "pricing": {"type": "metered", "metric": "bytes_delivered",
                "unit": "gb", "region": "fra", "mode": "volume", "tiers": [{"unit_price": "0.02"}]}},
              {"name": "US", "pricing": {"type": "metered", "metric": "bytes_delivered",
                "unit": "gb", "region": "iad", "mode": "volume", "tiers": [{"unit_price": "0.03"}]}}]}"#,
        ).unwrap())
        .unwrap();
    let nov = Period::parse("2026-11").unwrap();
    let acct = account(
        "r",
        r#""currency": "EUR", "services": "gtm_cdn", "billing_period": "month",
        "subscriptions": [{"plan": "r", "version": 1, "start": 0}]"#,
    );
    let mut ledger = UsageLedger::new();
    let gb = 1_000_000_000;
    let _ = ledger
        .apply(&UsageBatch {
            key: "a".into(),
            records: vec![
                rec("r", nov.start, Metric::BytesDelivered, "fra", 1000 * gb),
                rec("r", nov.start, Metric::BytesDelivered, "iad", 100 * gb),
            ],
        })
        .unwrap();
    let inv = compute_invoice(&acct, &plans, &nov, &ledger).unwrap();
    assert_eq!(line(&inv, "EU").amount, d("20.00"));
    assert_eq!(line(&inv, "US").amount, d("3.00"));
}

#[test]
fn volume_amount_drops_when_a_threshold_is_crossed() {
    let tiers = [
        Tier {
            up_to: Some(d("1000")),
            unit_price: d("0.10"),
        },
        Tier {
            up_to: None,
            unit_price: d("0.08"),
        },
    ];
    let (at, _) = plan::tiered_amount(TierMode::Volume, &tiers, d("1000")).unwrap();
    let (above, _) = plan::tiered_amount(TierMode::Volume, &tiers, d("1001")).unwrap();
    assert_eq!(at, d("100.00"));
    assert_eq!(above, d("80.08"));
}

#[test]
fn p95_edge_cases() {
    use udn_billing::percentile::p95_bytes;
    let mut s = Vec::new();
    assert_eq!(p95_bytes(&[], &mut s), 0);
    // N < 20: nothing dropped, the maximum is billed
    assert_eq!(p95_bytes(&[5, 9, 1], &mut s), 9);
    // N = 20: the single highest is dropped
    let v: Vec<u64> = (1..=20).collect();
    assert_eq!(p95_bytes(&v, &mut s), 19);
    // missing buckets are zeros: 100 buckets, 10 with traffic -> 5 dropped, a 10 billed
    let mut v = vec![0u64; 100];
    for x in v.iter_mut().take(10) {
        *x = 10;
    }
    v[0] = 50;
    assert_eq!(p95_bytes(&v, &mut s), 10);
}

#[test]
fn invalid_plans_are_rejected() {
    let bad = [
        (
            r#"[{"up_to": "10", "unit_price": "1"}]"#,
            "graduated",
            PlanProblem::LastTierBounded,
        ),
        (
            r#"[{"unit_price": "1"}, {"unit_price": "2"}]"#,
            "graduated",
            PlanProblem::LastTierBounded,
        ),
        (
            r#"[{"up_to": "10", "unit_price": "1"}, {"up_to": "5", "unit_price": "1"}, {"unit_price": "1"}]"#,
            "graduated",
            PlanProblem::TierBoundsNotIncreasing,
        ),
        (
            r#"[{"up_to": "10", "unit_price": "1"}, {"unit_price": "2"}]"#,
            "volume",
            PlanProblem::VolumePricesIncrease,
        ),
        (
            r#"[{"unit_price": "-1"}]"#,
            "volume",
            PlanProblem::NegativePrice,
        ),
        (r#"[]"#, "volume", PlanProblem::NoTiers),
    ];
    for (tiers, mode, want) in bad {
        let plan: Plan = serde_json::from_str(&format!(
            r#"{{"id": "x", "version": 1, "name": "X", "currency": "EUR", "period": "month",
            "components": [{{"name": "T", "pricing": {{"type": "metered", "metric": "dns_queries",
              "unit": "million", "mode": "{mode}", "tiers": {tiers}}}}}]}}"#
        ))
        .unwrap();
        match plan.validate() {
            Err(Error::InvalidPlan { problem, .. }) => assert_eq!(problem, want, "{tiers}"),
            other => panic!("{tiers}: {other:?}"),
        }
    }
    // graduated tiers may get dearer (penalty pricing) and still validate
    let ok: Plan = serde_json::from_str(
        r#"{"id": "x", "version": 1, "name": "X", "currency": "EUR", "period": "month",
        "components": [{"name": "T", "pricing": {"type": "metered", "metric": "dns_queries",
          "unit": "million", "mode": "graduated",
          "tiers": [{"up_to": "10", "unit_price": "1"}, {"unit_price": "2"}]}}]}"#,
    )
    .unwrap();
    assert!(ok.validate().is_ok());
}

#[test]
fn conflicting_replay_and_overflow_are_rejected_whole() {
    let mut ledger = UsageLedger::new();
    let t = Timestamp::from_secs(1_800_000_000);
    let b = UsageBatch {
        key: "k".into(),
        records: vec![rec("a", t, Metric::DnsQueries, "", 5)],
    };
    assert_eq!(ledger.apply(&b).unwrap(), usage::Applied::New);
    let mut other = b.clone();
    other.records[0].quantity = 6;
    assert_eq!(
        ledger.apply(&other),
        Err(Error::BatchConflict { key: "k".into() })
    );
    let before = ledger.clone();
    let big = UsageBatch {
        key: "big".into(),
        records: vec![
            rec("a", t, Metric::HttpRequests, "", 1),
            rec("a", t, Metric::DnsQueries, "", u64::MAX),
        ],
    };
    assert!(matches!(
        ledger.apply(&big),
        Err(Error::UsageOverflow { .. })
    ));
    assert_eq!(ledger, before);
    assert!(!ledger.has_applied("big"));
}
