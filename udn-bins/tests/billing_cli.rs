//! The billing command line as `udn control billing` will run it: plan, account and
//! usage files in, JSON reports and rendered documents out, on a real SQLite file.

mod billing_common;

use billing_common::*;
use clap::Parser;
use udn_bins::billing::{BillingArgs, execute};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    billing: BillingArgs,
}

fn run(dir: &TempDir, args: &[&str]) -> anyhow::Result<String> {
    let db = dir.0.join("udn.sqlite");
    let cfg = dir.0.join("billing.toml");
    let mut argv = vec![
        "billing",
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv)?;
    execute(&cli.billing, dec_1())
}

#[test]
fn the_billing_command_line_runs_a_month_end_to_end() {
    let dir = TempDir::new("cli");
    let p = |name: &str| dir.0.join(name).to_str().unwrap().to_owned();
    std::fs::write(
        p("billing.toml"),
        format!(
            r#"print_dir = {:?}
[issuer]
name = "UDN Networks AB"
address = ["Sveavägen 1", "111 57 Stockholm"]
email = "billing@udn.example"
"#,
            p("print")
        ),
    )
    .unwrap();
    std::fs::write(p("plan.json"), serde_json::to_string(&cdn_plan()).unwrap()).unwrap();
    std::fs::write(
        p("acme.toml"),
        format!(
            r#"id = "acme"
currency = "EUR"
delivery = "post"
services = "gtm_cdn"
billing_period = "month"
payment = {{ method = "invoice", terms_days = 14 }}
tax = {{ name = "VAT 19%", rate = "0.19" }}
[invoicing]
company = "Acme GmbH"
address = ["Hauptstr. 1", "10115 Berlin"]
contact = "Pat Doe"
email = "billing@acme.example"
[[subscriptions]]
plan = "cdn-standard"
version = 1
start = {}
"#,
            nov().start.as_millis()
        ),
    )
    .unwrap();
    std::fs::write(
        p("usage.json"),
        serde_json::to_string(&cdn_usage("acme", "edge-fra-0001")).unwrap(),
    )
    .unwrap();

    assert!(
        run(&dir, &["plan-add", &p("plan.json")])
            .unwrap()
            .contains("cdn-standard")
    );
    assert!(
        run(&dir, &["account-put", &p("acme.toml")])
            .unwrap()
            .contains("acme")
    );
    assert!(
        run(&dir, &["usage-add", &p("usage.json")])
            .unwrap()
            .contains("\"new\"")
    );
    assert!(
        run(&dir, &["usage-add", &p("usage.json")])
            .unwrap()
            .contains("\"replay\"")
    );
    let report: serde_json::Value =
        serde_json::from_str(&run(&dir, &["run", "--period", "2026-11"]).unwrap()).unwrap();
    assert_eq!(report["issued"][0]["number"], "INV-000001");
    assert_eq!(report["issued"][0]["total"], "998.26 EUR");
    let again: serde_json::Value =
        serde_json::from_str(&run(&dir, &["run", "--period", "2026-11"]).unwrap()).unwrap();
    assert_eq!(again["issued"].as_array().unwrap().len(), 0);
    assert!(
        run(&dir, &["show", "INV-000001"])
            .unwrap()
            .contains("Total")
    );
    let audit: serde_json::Value =
        serde_json::from_str(&run(&dir, &["audit", "INV-000001"]).unwrap()).unwrap();
    assert_eq!(audit["reproducible"], true);
    let delivered: serde_json::Value =
        serde_json::from_str(&run(&dir, &["deliver"]).unwrap()).unwrap();
    assert_eq!(delivered["printable"][0][0], "INV-000001");
    assert!(
        std::fs::read_to_string(dir.0.join("print/INV-000001.html"))
            .unwrap()
            .contains("998.26 EUR")
    );
    assert!(
        run(
            &dir,
            &[
                "pay",
                "INV-000001",
                "--amount",
                "998.26",
                "--reference",
                "SEPA 42"
            ]
        )
        .unwrap()
        .contains("paid")
    );
    assert!(run(&dir, &["void", "INV-000001"]).is_err());
    assert!(
        run(&dir, &["credit", "INV-000001"])
            .unwrap()
            .contains("CN-000001")
    );
    let list: serde_json::Value = serde_json::from_str(&run(&dir, &["list"]).unwrap()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(run(&dir, &["run", "--period", "2026-13"]).is_err());
    assert!(run(&dir, &["show", "INV-999999"]).is_err());
}
