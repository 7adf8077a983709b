//! Fixtures shared by the billing integration tests: a temporary SQLite store, the
//! README's plans and accounts, and usage batches.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use udn_billing::{Account, Metric, Period, Plan, Timestamp, UsageBatch, UsageRecord};
use udn_bins::billing::{BillingStore, Issuer, SqliteBillingStore};

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "udn-billing-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn nov() -> Period {
    Period::parse("2026-11").unwrap()
}

/// After the end of November 2026.
pub fn dec_1() -> Timestamp {
    Timestamp::from_millis(nov().end.as_millis() + 3_600_000)
}

pub fn cdn_plan() -> Plan {
    serde_json::from_str(
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
    .unwrap()
}

pub fn account(
    id: &str,
    company: &str,
    delivery: &str,
    payment: &str,
    subscribed: bool,
) -> Account {
    let subs = if subscribed {
        format!(
            r#"[{{"plan": "cdn-standard", "version": 1, "start": {}}}]"#,
            nov().start.as_millis()
        )
    } else {
        "[]".to_owned()
    };
    serde_json::from_str(&format!(
        r#"{{
        "id": "{id}", "currency": "EUR", "delivery": "{delivery}", "services": "gtm_cdn",
        "payment": {payment}, "billing_period": "month",
        "tax": {{"name": "VAT 19%", "rate": "0.19"}},
        "invoicing": {{"company": {company:?}, "address": ["Hauptstr. 1", "10115 Berlin", "Germany"],
                      "contact": "Pat Doe", "email": "billing@{id}.example", "tax_id": "DE123456789"}},
        "subscriptions": {subs}
    }}"#
    ))
    .unwrap()
}

pub const BY_INVOICE: &str = r#"{"method": "invoice", "terms_days": 30}"#;

/// The README's CDN example usage for `account`: 12,345.678 GB and 30M requests.
pub fn cdn_usage(account: &str, key: &str) -> UsageBatch {
    let mid = Timestamp::from_millis(nov().start.as_millis() + 86_400_000 * 10);
    let rec = |metric, region: &str, quantity| UsageRecord {
        account: account.into(),
        at: mid,
        metric,
        region: region.into(),
        quantity,
    };
    UsageBatch {
        key: key.into(),
        records: vec![
            rec(Metric::BytesDelivered, "fra", 8_000_000_000_000),
            rec(Metric::HttpRequests, "fra", 18_000_000),
            rec(Metric::BytesDelivered, "iad", 4_345_678_000_000),
            rec(Metric::HttpRequests, "iad", 12_000_000),
        ],
    }
}

pub fn issuer() -> Issuer {
    Issuer {
        name: "UDN Networks AB".into(),
        address: vec!["Sveavägen 1".into(), "111 57 Stockholm".into()],
        email: "billing@udn.example".into(),
        tax_id: Some("SE556000000001".into()),
        bank: Some("IBAN SE00 0000 0000 0000 0000 0000".into()),
    }
}

/// A store in a fresh file with the CDN plan.
pub fn store(dir: &TempDir) -> SqliteBillingStore {
    let mut s = SqliteBillingStore::open(&dir.0.join("udn.sqlite")).unwrap();
    s.put_plan(&cdn_plan()).unwrap();
    s
}
