//! A monthly billing run: 10,000 accounts, each with a month of 5-minute bandwidth
//! samples (8,640 in a 30-day month), plus metered totals, priced into invoices.
//!
//! `cargo bench -p udn-benches --bench billing_run`
//!
//! Groups:
//! * `billing_run/monthly_10k_accounts`: the whole run (segments, tiered metering,
//!   95th percentile by selection over 8,640 samples, proration, rounding, tax);
//! * `billing_run/one_account`: the same for one account, for a per-account figure;
//! * `billing_run/p95_8640_sort_reference`: a full sort of the samples, the naive
//!   reference the selection is compared to in the same session.
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;
use udn_billing::*;

const ACCOUNTS: usize = 10_000;

fn plan() -> Plan {
    serde_json::from_str(
        r#"{
        "id": "cdn-burst", "version": 1, "name": "CDN burstable", "currency": "EUR",
        "period": "month",
        "components": [
          {"name": "Platform", "pricing": {"type": "recurring", "amount": "99.00"}},
          {"name": "Zones", "pricing": {"type": "subscription", "unit_price": "5.00", "unit": "zone"}},
          {"name": "Traffic EU", "pricing": {"type": "metered", "metric": "bytes_delivered",
            "unit": "gb", "region": "fra", "included": "100", "mode": "graduated",
            "tiers": [{"up_to": "10000", "unit_price": "0.04"},
                      {"up_to": "50000", "unit_price": "0.03"}, {"unit_price": "0.02"}]}},
          {"name": "Traffic US", "pricing": {"type": "metered", "metric": "bytes_delivered",
            "unit": "gb", "region": "iad", "mode": "volume",
            "tiers": [{"up_to": "10000", "unit_price": "0.05"}, {"unit_price": "0.035"}]}},
          {"name": "Requests", "pricing": {"type": "metered", "metric": "http_requests",
            "unit": "ten_thousand", "mode": "graduated", "tiers": [{"unit_price": "0.0075"}]}},
          {"name": "DNS", "pricing": {"type": "metered", "metric": "dns_queries",
            "unit": "million", "mode": "graduated",
            "tiers": [{"up_to": "10", "unit_price": "0.40"}, {"unit_price": "0.20"}]}},
          {"name": "Bandwidth", "pricing": {"type": "percentile95", "commit_mbps": "100",
            "commit_price": "1.50", "overage_price": "2.25"}}
        ]}"#,
    )
    .expect("plan")
}

fn account(i: usize) -> Account {
    serde_json::from_str(&format!(
        r#"{{
        "id": "acct-{i:05}", "currency": "EUR", "delivery": "email", "services": "gtm_cdn",
        "payment": {{"method": "invoice", "terms_days": 30}}, "billing_period": "month",
        "tax": {{"name": "VAT 19%", "rate": "0.19"}},
        "invoicing": {{"company": "Customer {i}", "address": ["Street {i}", "City"],
                      "contact": "Contact", "email": "billing@c{i}.example"}},
        "subscriptions": [{{"plan": "cdn-burst", "version": 1, "start": 0, "quantity": {}}}]
    }}"#,
        1 + i % 7
    ))
    .expect("account")
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A month of usage for one account: a diurnal bandwidth curve with noise and bursts.
fn usage(rng: &mut XorShift, buckets: usize) -> UsageTotals {
    let scale = 1 + rng.next() % 2_000; // mean Mbps
    let mut bandwidth = Vec::with_capacity(buckets);
    let mut sum = 0u64;
    for b in 0..buckets {
        let hour = (b / 12) % 24;
        let diurnal = if (8..22).contains(&hour) { 3 } else { 1 };
        let noise = rng.next() % 1_000;
        let burst = if rng.next().is_multiple_of(200) {
            10
        } else {
            1
        };
        let mbps_milli = scale * diurnal * burst * (500 + noise);
        let bytes = mbps_milli * 37_500; // 1 Mbps over 300 s = 37.5 MB; milli-Mbps
        sum += bytes;
        bandwidth.push(bytes);
    }
    let mut counters = BTreeMap::new();
    counters.insert((Metric::BytesDelivered, "fra".to_owned()), sum / 3 * 2);
    counters.insert(
        (Metric::BytesDelivered, "iad".to_owned()),
        sum - sum / 3 * 2,
    );
    counters.insert((Metric::HttpRequests, "fra".to_owned()), sum / 50_000);
    counters.insert((Metric::DnsQueries, String::new()), sum / 1_000_000);
    UsageTotals {
        counters,
        bandwidth,
    }
}

fn bench(c: &mut Criterion) {
    let period = Period::parse("2026-11").expect("period");
    let buckets = Period::buckets_between(period.start, period.end) as usize;
    assert_eq!(buckets, 8_640);
    let mut plans = PlanBook::new();
    plans.insert(plan()).expect("plan");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let accounts: Vec<(Account, Vec<SegmentUsage>)> = (0..ACCOUNTS)
        .map(|i| {
            let a = account(i);
            let segs = segments(&a, &period)
                .into_iter()
                .map(|segment| SegmentUsage {
                    segment,
                    usage: usage(&mut rng, buckets),
                })
                .collect();
            (a, segs)
        })
        .collect();

    let run = |accounts: &[(Account, Vec<SegmentUsage>)]| {
        let mut total = Decimal::ZERO;
        for (a, inputs) in accounts {
            let inv = price(a, &plans, &period, inputs).expect("price");
            total += inv.total;
        }
        total
    };
    eprintln!(
        "billing_run: invoiced total of the 10,000 accounts = {} EUR",
        run(&accounts)
    );

    let mut g = c.benchmark_group("billing_run");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("monthly_10k_accounts", |b| {
        b.iter(|| run(black_box(&accounts)))
    });
    g.finish();

    let mut g = c.benchmark_group("billing_run");
    g.bench_function("one_account", |b| b.iter(|| run(black_box(&accounts[..1]))));
    let samples = accounts[0].1[0].usage.bandwidth.clone();
    g.bench_function("p95_8640_select", |b| {
        let mut scratch = Vec::new();
        b.iter(|| udn_billing::percentile::p95_bytes(black_box(&samples), &mut scratch))
    });
    g.bench_function("p95_8640_sort_reference", |b| {
        b.iter_batched(
            || samples.clone(),
            |mut v| {
                v.sort_unstable();
                v[v.len() - v.len() / 20 - 1]
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
