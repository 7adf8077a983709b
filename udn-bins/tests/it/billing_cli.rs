//! The billing command line as `udn control billing` will run it: plan, account and
//! usage files in, JSON reports and rendered documents out, on a real SQLite file
//! (`--db`) and a real PostgreSQL database (`--postgres`).

use crate::billing_common;
use crate::billing_common::on_both_stores;

use billing_common::*;
use clap::Parser;
use udn_bins::billing::{BillingArgs, BillingLocation, execute};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    billing: BillingArgs,
}

fn run(db: &Db, args: &[&str]) -> anyhow::Result<String> {
    let cfg = db.dir.0.join("billing.toml");
    let mut argv = vec!["billing", "--config", cfg.to_str().unwrap()];
    match &db.location {
        BillingLocation::Sqlite(file) => argv.extend(["--db", file.to_str().unwrap()]),
        BillingLocation::Postgres(url) => argv.extend(["--postgres", url.as_str()]),
    }
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv)?;
    execute(&cli.billing, dec_1())
}

fn the_billing_command_line_runs_a_month_end_to_end(db: &Db) {
    let p = |name: &str| db.dir.0.join(name).to_str().unwrap().to_owned();
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
        run(db, &["plan-add", &p("plan.json")])
            .unwrap()
            .contains("cdn-standard")
    );
    assert!(
        run(db, &["account-put", &p("acme.toml")])
            .unwrap()
            .contains("acme")
    );
    assert!(
        run(db, &["usage-add", &p("usage.json")])
            .unwrap()
            .contains("\"new\"")
    );
    assert!(
        run(db, &["usage-add", &p("usage.json")])
            .unwrap()
            .contains("\"replay\"")
    );
    let report: serde_json::Value =
        serde_json::from_str(&run(db, &["run", "--period", "2026-11"]).unwrap()).unwrap();
    assert_eq!(report["issued"][0]["number"], "INV-000001");
    assert_eq!(report["issued"][0]["total"], "998.26 EUR");
    let again: serde_json::Value =
        serde_json::from_str(&run(db, &["run", "--period", "2026-11"]).unwrap()).unwrap();
    assert_eq!(again["issued"].as_array().unwrap().len(), 0);
    assert!(run(db, &["show", "INV-000001"]).unwrap().contains("Total"));
    // a PDF goes to a file, never to the terminal
    let e = format!(
        "{:#}",
        run(db, &["show", "INV-000001", "--format", "pdf"]).unwrap_err()
    );
    assert!(e.contains("--out"), "{e}");
    let pdf = p("INV-000001.pdf");
    assert!(
        run(
            db,
            &["show", "INV-000001", "--format", "pdf", "--out", &pdf]
        )
        .unwrap()
        .contains("bytes")
    );
    assert!(std::fs::read(&pdf).unwrap().starts_with(b"%PDF-"));
    let audit: serde_json::Value =
        serde_json::from_str(&run(db, &["audit", "INV-000001"]).unwrap()).unwrap();
    assert_eq!(audit["reproducible"], true);
    let delivered: serde_json::Value =
        serde_json::from_str(&run(db, &["deliver"]).unwrap()).unwrap();
    assert_eq!(delivered["printable"][0][0], "INV-000001");
    assert!(
        std::fs::read_to_string(db.dir.0.join("print/INV-000001.html"))
            .unwrap()
            .contains("998.26 EUR")
    );
    assert!(
        run(
            db,
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
    assert!(run(db, &["void", "INV-000001"]).is_err());
    assert!(
        run(db, &["credit", "INV-000001"])
            .unwrap()
            .contains("CN-000001")
    );
    let list: serde_json::Value = serde_json::from_str(&run(db, &["list"]).unwrap()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(run(db, &["run", "--period", "2026-13"]).is_err());
    assert!(run(db, &["show", "INV-999999"]).is_err());
    // the state is where the flags said, and only there
    assert_eq!(
        db.dir.0.join("udn.sqlite").exists(),
        !db.is_postgres(),
        "an SQLite file exists only with --db"
    );
    assert!(db.open().invoice("CN-000001").unwrap().is_some());
}

#[test]
fn exactly_one_of_db_and_postgres() {
    let parse = |args: &[&str]| {
        let mut argv = vec!["billing"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.billing.location().unwrap())
    };
    assert!(parse(&["list"]).is_err(), "one of them is required");
    assert!(
        parse(&[
            "--db",
            "a.sqlite",
            "--postgres",
            "postgres://x@127.0.0.1/y",
            "list"
        ])
        .is_err(),
        "not both"
    );
    assert_eq!(
        parse(&["--db", "a.sqlite", "list"]).unwrap(),
        BillingLocation::Sqlite("a.sqlite".into())
    );
    assert_eq!(
        parse(&["--postgres", "postgres://x@127.0.0.1/y", "list"]).unwrap(),
        BillingLocation::Postgres("postgres://x@127.0.0.1/y".into())
    );
}

on_both_stores!(the_billing_command_line_runs_a_month_end_to_end,);
