//! Fixtures shared by the billing integration tests: a fresh billing database (an SQLite
//! file, or a PostgreSQL database from `UDN_TEST_POSTGRES`), the README's plans and
//! accounts, and usage batches. [`on_both_stores!`] runs a test on both stores.
#![allow(dead_code)]

use crate::pg_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use udn_billing::{Account, Metric, Period, Plan, Timestamp, UsageBatch, UsageRecord};
use udn_bins::billing::{BillingLocation, BillingStore, Issuer};

/// Runs each named `fn(&Db)` as two tests, `sqlite::NAME` on a fresh SQLite file and
/// `postgres::NAME` on a fresh PostgreSQL database (skipped loudly without
/// `UDN_TEST_POSTGRES` outside CI, failing in CI).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&crate::billing_common::Db::sqlite(stringify!($name)));
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = crate::billing_common::Db::postgres(stringify!($name)) {
                        super::$name(&db);
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

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

/// A test's billing database, and a scratch directory for its files.
pub struct Db {
    /// Scratch files (and the SQLite database, `udn.sqlite`, for the SQLite store).
    pub dir: TempDir,
    /// Where the billing tables are.
    pub location: BillingLocation,
}

impl Db {
    /// A fresh SQLite file.
    pub fn sqlite(test: &str) -> Db {
        let dir = TempDir::new(test);
        let location = BillingLocation::Sqlite(dir.0.join("udn.sqlite"));
        Db { dir, location }
    }

    /// A fresh PostgreSQL database, if the test server is configured.
    pub fn postgres(test: &str) -> Option<Db> {
        let url = pg_support::fresh_database(&format!("billing_{test}"))?;
        Some(Db {
            dir: TempDir::new(test),
            location: BillingLocation::Postgres(url),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.location, BillingLocation::Postgres(_))
    }

    /// A new handle on the store (its own connection).
    pub fn open(&self) -> Box<dyn BillingStore + Send> {
        self.location.open().expect("opening the billing store")
    }

    /// Runs one SQL statement on a connection of its own, bypassing the store: the
    /// number of rows changed, or the database's error message.
    pub fn exec(&self, sql: &str) -> Result<u64, String> {
        match &self.location {
            BillingLocation::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|c| c.execute(sql, []))
                .map(|n| n as u64)
                .map_err(|e| e.to_string()),
            BillingLocation::Postgres(url) => postgres::Client::connect(url, postgres::NoTls)
                .and_then(|mut c| c.execute(sql, &[]))
                .map_err(|e| match e.as_db_error() {
                    Some(db) => db.message().to_owned(),
                    None => e.to_string(),
                }),
        }
    }

    /// The first column of the first row of `sql` (e.g. `INSERT … RETURNING id`).
    pub fn query_i64(&self, sql: &str) -> i64 {
        match &self.location {
            BillingLocation::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            BillingLocation::Postgres(url) => postgres::Client::connect(url, postgres::NoTls)
                .unwrap()
                .query_one(sql, &[])
                .unwrap()
                .get(0),
        }
    }
}

/// A handle on the test's store, with the CDN plan added.
pub fn store(db: &Db) -> Box<dyn BillingStore + Send> {
    let mut s = db.open();
    s.put_plan(&cdn_plan()).unwrap();
    s
}
