//! The SQL side of a monthly billing run: reading each account's month of 5-minute usage
//! rows from `billing_usage` and pricing it (what `run_period` does per account before
//! storing the draft), for 100 CDN accounts with 8,640 buckets x 3 rows (bytes in two
//! POPs, requests) each, about 2.6 million rows. Ingest speed is printed once during
//! setup. On SQLite (`billing_store/…`) and, when `UDN_TEST_POSTGRES` names a server
//! (`eval "$(bash scripts/start-postgres.sh)"`), on PostgreSQL in a fresh database
//! (`billing_store_pg/…`), in the same session.
//!
//! `cargo bench -p udn-benches --bench billing_store`
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use udn_billing::*;
use udn_bins::billing::run::draft_for;
use udn_bins::billing::{BillingStore, PgBillingStore, SqliteBillingStore};

const ACCOUNTS: usize = 100;

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("udn-billing-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = SqliteBillingStore::open(&dir.join("udn.sqlite")).expect("store");
    run(c, "billing_store", Box::new(store));
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(server) = std::env::var("UDN_TEST_POSTGRES") {
        let db = format!("udn_bench_billing_{}", std::process::id());
        let mut admin = postgres::Client::connect(&server, postgres::NoTls).expect("postgres");
        // two statements: CREATE DATABASE cannot run in a multi-statement transaction
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
            .expect("drop old bench database");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .expect("bench database");
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        let store = PgBillingStore::connect(&format!("{base}/{db}")).expect("store");
        run(c, "billing_store_pg", Box::new(store));
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
            .expect("drop bench database");
    } else {
        eprintln!("billing_store: UDN_TEST_POSTGRES unset, PostgreSQL not measured");
    }
}

fn run(c: &mut Criterion, group: &str, mut store: Box<dyn BillingStore>) {
    let plan: Plan = serde_json::from_str(
        r#"{"id": "cdn-burst", "version": 1, "name": "CDN burstable", "currency": "EUR", "period": "month",
        "components": [
          {"name": "Platform", "pricing": {"type": "recurring", "amount": "99.00"}},
          {"name": "Traffic", "pricing": {"type": "metered", "metric": "bytes_delivered", "unit": "gb",
            "mode": "graduated", "tiers": [{"up_to": "10000", "unit_price": "0.04"}, {"unit_price": "0.02"}]}},
          {"name": "Requests", "pricing": {"type": "metered", "metric": "http_requests",
            "unit": "ten_thousand", "mode": "volume", "tiers": [{"unit_price": "0.0075"}]}},
          {"name": "Bandwidth", "pricing": {"type": "percentile95", "commit_mbps": "100",
            "commit_price": "1.50", "overage_price": "2.25"}}]}"#,
    )
    .expect("plan");
    store.put_plan(&plan).expect("plan");
    let nov = Period::parse("2026-11").expect("period");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rows = 0usize;
    let t0 = Instant::now();
    for i in 0..ACCOUNTS {
        let id = format!("acct-{i:04}");
        let account: Account = serde_json::from_str(&format!(
            r#"{{"id": "{id}", "currency": "EUR", "delivery": "email", "services": "gtm_cdn",
            "payment": {{"method": "invoice", "terms_days": 30}}, "billing_period": "month",
            "invoicing": {{"company": "C", "address": ["A"], "contact": "C", "email": "c@c.example"}},
            "subscriptions": [{{"plan": "cdn-burst", "version": 1, "start": 0}}]}}"#
        ))
        .expect("account");
        store.put_account(&account).expect("account");
        // one batch per simulated day of log files
        for day in 0..30u64 {
            let mut records = Vec::with_capacity(288 * 3);
            for b in 0..288u64 {
                let at = Timestamp::from_millis(nov.start.as_millis() + (day * 288 + b) * 300_000);
                for (metric, region) in [
                    (Metric::BytesDelivered, "fra"),
                    (Metric::BytesDelivered, "iad"),
                    (Metric::HttpRequests, "fra"),
                ] {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    records.push(UsageRecord {
                        account: id.clone(),
                        at,
                        metric,
                        region: region.into(),
                        quantity: x % 5_000_000_000,
                    });
                }
            }
            rows += records.len();
            let _ = store
                .record_usage(&UsageBatch {
                    key: format!("{id}-{day}"),
                    records,
                })
                .expect("usage");
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{group}: ingested {rows} usage rows in {secs:.1} s ({:.0} rows/s)",
        rows as f64 / secs
    );
    let accounts = store.accounts().expect("accounts");
    let mut g = c.benchmark_group(group);
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("read_and_price_100_accounts_month", |b| {
        b.iter(|| {
            let mut n = 0;
            for a in &accounts {
                if draft_for(&store, a, &nov, Vec::new())
                    .expect("draft")
                    .is_some()
                {
                    n += 1;
                }
            }
            assert_eq!(n, ACCOUNTS);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
