//! Prices a month of CDN usage into an invoice with udn-billing, the pure billing core:
//! the README's first worked example (tiered per-GB traffic, a one-time setup fee, VAT).
//!
//! `cargo run -p udn-examples --example billing_invoice`
use udn_billing::{
    Account, Metric, Period, Plan, PlanBook, UsageBatch, UsageLedger, UsageRecord, compute_invoice,
};

const PLAN: &str = r#"{
  "id": "cdn-standard", "version": 1, "name": "CDN Standard", "currency": "EUR", "period": "month",
  "components": [
    {"name": "Setup", "pricing": {"type": "one_time", "amount": "250.00"}},
    {"name": "Platform", "pricing": {"type": "recurring", "amount": "99.00"}},
    {"name": "Traffic", "pricing": {"type": "metered", "metric": "bytes_delivered", "unit": "gb",
      "included": "100", "mode": "graduated",
      "tiers": [{"up_to": "10000", "unit_price": "0.04"}, {"up_to": "50000", "unit_price": "0.03"},
                {"unit_price": "0.02"}]}},
    {"name": "Requests", "pricing": {"type": "metered", "metric": "http_requests",
      "unit": "ten_thousand", "mode": "volume", "tiers": [{"unit_price": "0.0075"}]}}]}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut plans = PlanBook::new();
    plans.insert(serde_json::from_str::<Plan>(PLAN)?)?;
    let nov = Period::parse("2026-11")?;
    let account: Account = serde_json::from_str(&format!(
        r#"{{"id": "shop", "currency": "EUR", "delivery": "email", "services": "gtm_cdn",
        "payment": {{"method": "invoice", "terms_days": 30}}, "billing_period": "month",
        "tax": {{"name": "VAT 19%", "rate": "0.19"}},
        "invoicing": {{"company": "Shop Ltd", "address": ["1 High St", "London"],
                      "contact": "J. Doe", "email": "ap@shop.example"}},
        "subscriptions": [{{"plan": "cdn-standard", "version": 1, "start": {}}}]}}"#,
        nov.start.as_millis()
    ))?;
    let rec = |metric, region: &str, quantity| UsageRecord {
        account: "shop".into(),
        at: nov.start,
        metric,
        region: region.into(),
        quantity,
    };
    let batch = UsageBatch {
        key: "edge-logs-0001".into(),
        records: vec![
            rec(Metric::BytesDelivered, "fra", 8_000_000_000_000),
            rec(Metric::BytesDelivered, "iad", 4_345_678_000_000),
            rec(Metric::HttpRequests, "fra", 30_000_000),
        ],
    };
    let mut ledger = UsageLedger::new();
    let _ = ledger.apply(&batch)?;
    let _ = ledger.apply(&batch)?; // a replay changes nothing

    let invoice = compute_invoice(&account, &plans, &nov, &ledger)?;
    println!(
        "Invoice for {} ({})",
        account.invoicing.company, invoice.period
    );
    for line in &invoice.lines {
        println!(
            "  {:<12} {:>14} {:<16} {:>14}",
            line.description,
            line.quantity.round_dp(3).normalize(),
            line.unit,
            invoice.currency.format(line.amount)
        );
        for t in &line.tiers {
            println!(
                "      {} x {} = {}",
                t.quantity.normalize(),
                t.unit_price,
                t.amount.normalize()
            );
        }
    }
    println!(
        "  {:<44} {:>14}",
        "Subtotal",
        invoice.currency.format(invoice.subtotal)
    );
    if let Some(tax) = &invoice.tax {
        println!(
            "  {:<44} {:>14}",
            tax.name,
            invoice.currency.format(tax.amount)
        );
    }
    println!(
        "  {:<44} {:>14}",
        "Total",
        invoice.currency.format(invoice.total)
    );
    Ok(())
}
