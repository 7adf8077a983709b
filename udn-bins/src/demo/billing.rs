//! `udn demo billing`: a billing run for the demo customer from the demo's store.
//!
//! It puts a demo plan (hourly, so a period is over soon) and the sample customer's
//! account into the store's database, turns the store's HTTP rollups of the period into
//! a usage batch (one per period: its idempotency key), runs the period and prints the
//! run report and the invoices issued, rendered as text.

use anyhow::Context as _;
use std::path::PathBuf;
use udn_billing::{Account, Period, Plan};

use crate::billing::{BillingStore, Issuer, SqliteBillingStore, render_text};

/// The demo control plane's `--billing-grace`.
pub const DEMO_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Puts the demo plan and one account per customer of `cfg` into the billing tables of
/// the SQLite file `db`.
pub fn seed(db: &std::path::Path, cfg: &udn_core::Config) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_str(PLAN).context("the demo plan")?;
    let mut store = SqliteBillingStore::open(db)?;
    store.put_plan(&plan)?;
    for c in &cfg.customers {
        let company = c.display_name.clone().unwrap_or_else(|| c.name.clone());
        store.put_account(&account(&c.name, &company)?)?;
    }
    Ok(())
}

/// `udn demo billing`.
#[derive(Debug, clap::Args)]
pub struct BillingDemoArgs {
    /// State directory of the demo (its store is `control/udn.sqlite`).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The period to bill (default: the last full hour), e.g. 2026-11-26T13.
    #[arg(long)]
    pub period: Option<String>,
}

/// The demo plan: a platform fee per hour, traffic per GB and requests per 10,000.
pub const PLAN: &str = r#"{
  "id": "demo-cdn", "version": 1, "name": "CDN Demo (hourly)", "currency": "EUR",
  "period": "hour",
  "components": [
    {"name": "Platform", "pricing": {"type": "recurring", "amount": "1.00"}},
    {"name": "Traffic", "pricing": {"type": "metered", "metric": "bytes_delivered",
      "unit": "gb", "mode": "graduated", "tiers": [{"unit_price": "0.04"}]}},
    {"name": "Requests", "pricing": {"type": "metered", "metric": "http_requests",
      "unit": "ten_thousand", "mode": "volume", "tiers": [{"unit_price": "0.0075"}]}}
  ]}"#;

fn account(customer: &str, company: &str) -> anyhow::Result<Account> {
    Ok(serde_json::from_str(&format!(
        r#"{{
        "id": {customer:?}, "currency": "EUR", "delivery": "post", "services": "gtm_cdn",
        "payment": {{"method": "invoice", "terms_days": 14}}, "billing_period": "hour",
        "tax": {{"name": "VAT 19%", "rate": "0.19"}},
        "invoicing": {{"company": {company:?}, "address": ["1 Demo Street", "Loopback 127"],
                      "contact": "Demo User", "email": "billing@shop.udn.example"}},
        "subscriptions": [{{"plan": "demo-cdn", "version": 1, "start": 0}}]
    }}"#
    ))?)
}

/// Runs the billing of the demo customer(s) and returns what to print.
pub fn run(a: BillingDemoArgs) -> anyhow::Result<String> {
    let db = a
        .state_dir
        .join("control")
        .join(crate::store::sqlite::DB_FILE);
    anyhow::ensure!(
        db.exists(),
        "no store at {} (start `udn demo --state-dir {}` first)",
        db.display(),
        a.state_dir.display()
    );
    let now = crate::logging::now();
    let period = match &a.period {
        Some(p) => Period::parse(p)?,
        None => Period::containing(udn_billing::PeriodKind::Hour, now)?.previous()?,
    };
    let cfg = super::load_config(None)?;
    seed(&db, &cfg)?;
    let mut store = SqliteBillingStore::open(&db)?;
    let mut logs = crate::store::sqlite::SqliteStore::open(&a.state_dir.join("control"), None)
        .context("opening the demo's log store")?;
    // The one billing run: each log file's usage under its own key, then the period.
    let mut read = |from| Ok(crate::store::Store::file_usage_since(&mut logs, from)?);
    let report = crate::billing::run::logged_run(&mut store, &mut read, &period, now, "cli", 1)?;
    let usage = report.ingested.as_ref().map_or(0, |i| i.new);
    let issuer = issuer();
    let mut out = format!(
        "billing run for {period}: {usage} new log-file usage batches from the store\n{}\n",
        serde_json::to_string_pretty(&report)?
    );
    for i in &report.issued {
        if let Some(inv) = store.invoice(&i.number)? {
            out.push('\n');
            out.push_str(&render_text(&inv, &issuer));
        }
    }
    // The demo control plane's scheduler bills each hour shortly after it closes: show
    // the invoice it issued.
    for account in &report.already_invoiced {
        if let Some(inv) = store.live_invoice(account, &period)? {
            out.push_str(&format!(
                "\n{account}: {period} was billed by the scheduler\n"
            ));
            out.push_str(&render_text(&inv, &issuer));
        }
    }
    Ok(out)
}

/// The seller on the demo's invoices.
fn issuer() -> Issuer {
    Issuer {
        name: "UDN Demo Networks".into(),
        address: vec!["127.0.0.1".into()],
        email: "billing@udn.example".into(),
        tax_id: None,
        bank: None,
    }
}

/// Writes the demo control plane's `--billing-config` into `control_dir`: the demo
/// issuer (shown on the portal's invoices) and a print directory beside it (no SMTP, so
/// e-mailed invoices wait). Returns its path.
pub fn write_config(control_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let i = issuer();
    let path = control_dir.join("billing.toml");
    let text = format!(
        "print_dir = {:?}\n[issuer]\nname = {:?}\naddress = {:?}\nemail = {:?}\n",
        control_dir.join("invoices-to-print").display().to_string(),
        i.name,
        i.address,
        i.email
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_of_the_stores_rollups_is_billed() {
        use udn_core::log::{FileHeader, HttpRecord, LogRecord, MAGIC, Role};
        let state = std::env::temp_dir().join(format!("udn-demo-billing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let dir = state.join("control");
        let mut logs = crate::store::open(&crate::store::Location::Sqlite {
            dir: dir.clone(),
            max_pages: None,
        })
        .unwrap();
        let period = Period::parse("2025-01-01T00").unwrap();
        let start = period.start.as_millis();
        // One log file: three 250 GB responses in the period (fra, fra, nyc) and one
        // just after it (not billed).
        let rec = |at: u64, pop: &str| {
            LogRecord::Http(HttpRecord {
                ts: udn_core::Timestamp::from_millis(at),
                customer: Some("shop".into()),
                host: "cdn.shop.udn.example".into(),
                path: "/big".into(),
                method: "GET".into(),
                status: 200,
                bytes: 250_000_000_000,
                fill_bytes: 0,
                outcome: "hit".into(),
                duration_us: 1,
                client: "127.0.0.1".parse().unwrap(),
                pop: pop.into(),
            })
        };
        let file = crate::store::PreparedFile::new(
            FileHeader {
                magic: MAGIC.into(),
                version: udn_core::log::FORMAT_VERSION,
                file_id: "edge-fra-test-0001".into(),
                role: Role::Edge,
                instance: "fra-edge-1".into(),
                opened_at: period.start,
            },
            "0".repeat(64),
            vec![
                rec(start, "fra"),
                rec(start + 1, "fra"),
                rec(start + 60_000, "nyc"),
                rec(start + 3_600_000, "fra"),
            ],
        );
        let _ = logs
            .ingest(&file, udn_core::Timestamp::from_millis(start + 3_600_000))
            .unwrap();
        drop(logs);
        let out = run(BillingDemoArgs {
            state_dir: state.clone(),
            period: Some("2025-01-01T00".into()),
        })
        .unwrap();
        // 750 GB x 0.04 = 30.00; 3 requests round to 0.00; + 1.00 platform, + 19 % VAT.
        assert!(out.contains("1 new log-file usage batches"), "{out}");
        assert!(out.contains("Traffic (750 GB"), "{out}");
        assert!(out.contains("30.00 EUR"), "{out}");
        // A second run issues nothing new.
        let again = run(BillingDemoArgs {
            state_dir: state.clone(),
            period: Some("2025-01-01T00".into()),
        })
        .unwrap();
        assert!(
            again.contains("\"already_invoiced\": [\n    \"shop\""),
            "{again}"
        );
        let _ = std::fs::remove_dir_all(&state);
    }
}
