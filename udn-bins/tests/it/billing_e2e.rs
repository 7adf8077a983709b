//! Billing through the real pipeline: log files written by the shared logger, shipped
//! to a real `udn control` collector over mutual TLS, stored in SQLite or PostgreSQL,
//! billed by `POST /v1/billing/runs` and by `udn control billing run`. Late logs for a
//! billed hour are billed once, on the next hour's invoice, as labelled adjustment
//! lines; the CLI and the API give the same invoice; audit is clean.

use crate::log_util;
use log_util::pg_support;

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use udn_billing::{Period, PeriodKind};
use udn_bins::logging::FileLog;
use udn_core::Timestamp;
use udn_core::log::{HttpRecord, LogRecord, Role, RotationPolicy};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts `udn control` with the portal and its API on free ports and the admin
/// `admin:correct-horse`; returns the process and the collector, portal and API
/// addresses.
fn start_control(extra: &[&str], data: &Path, config: &Path) -> (Proc, String, String, String) {
    std::fs::create_dir_all(data).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["control", "--listen", "127.0.0.1:0"])
        .args(extra)
        .args(["--portal-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--bootstrap-admin", "admin:correct-horse"])
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.with_extension("stderr")).unwrap())
        .spawn()
        .expect("start udn control");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut collector, mut portal, mut api) = (None, None, None);
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line.split_whitespace().last().unwrap_or("").to_string();
        if line.contains("listening on") {
            collector = Some(format!("https://{addr}"));
        } else if line.contains("portal on") {
            portal = Some(addr);
        } else if line.contains("API on") {
            api = Some(addr);
        }
    }
    (
        Proc(child),
        collector.expect("collector"),
        portal.expect("portal"),
        api.expect("api"),
    )
}

/// One log file of `n` 1 GB responses for the shop at `at + i` ms, written by the shared
/// logger as edge instance `instance`; returns the complete file.
fn gb_file(dir: &Path, instance: &str, batches: &[(Timestamp, u64)], now: Timestamp) -> PathBuf {
    let log = FileLog::new(
        &dir.join(instance),
        Role::Edge,
        instance,
        RotationPolicy::default(),
    )
    .unwrap();
    for (at, n) in batches {
        for i in 0..*n {
            let rec = LogRecord::Http(HttpRecord {
                ts: Timestamp::from_millis(at.as_millis() + i),
                customer: Some("shop".into()),
                host: "cdn.shop.udn.example".into(),
                path: "/gen/1000000000".into(),
                method: "GET".into(),
                status: 200,
                bytes: 1_000_000_000,
                fill_bytes: 0,
                outcome: "hit".into(),
                duration_us: 100,
                client: "127.0.0.41".parse().unwrap(),
                pop: "fra".into(),
            });
            log.write_at(&rec, now).unwrap();
        }
    }
    log.flush_complete().unwrap().unwrap()
}

/// Ships a file to the collector as edge `instance`, the instance that wrote it (the
/// collector takes a file only from the instance its header names); returns the
/// collector's answer.
fn ship(data: &Path, collector: &str, instance: &str, file: &Path) -> String {
    let body = std::fs::read(file).unwrap();
    let r = log_util::client_with(&log_util::enroll(data, "edge", instance))
        .post(format!("{collector}/v1/logs"))
        .header("x-udn-sha256", hex(&Sha256::digest(&body)))
        .body(body)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.status());
    r.text().unwrap()
}

struct Env {
    http: reqwest::blocking::Client,
    api: String,
    token: String,
    billing_db: Vec<String>,
}

impl Env {
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["control", "billing"])
            .args(&self.billing_db)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "udn control billing {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli(args)).unwrap()
    }
    fn api_run(&self, period: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/v1/billing/runs", self.api))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"period": period}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or_default())
    }
    fn invoice(&self, number: &str) -> serde_json::Value {
        self.cli_json(&["show", number, "--format", "json"])
    }
}

fn dec(v: &serde_json::Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("decimal text: {v}"))).unwrap()
}

/// The quantity of a component billed for `period` by an invoice: its own lines when it
/// is the period's invoice, its adjustment lines for the period otherwise.
fn billed_quantity(doc: &serde_json::Value, period: &Period, component: &str) -> Decimal {
    let own = doc["invoice"]["period"]["start"] == serde_json::json!(period.start.as_millis());
    doc["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["component"] == component)
        .filter(|l| {
            let d = l["description"].as_str().unwrap();
            if own {
                !d.starts_with("Late usage of ")
            } else {
                d.starts_with(&format!("Late usage of {period} "))
            }
        })
        .map(|l| dec(&l["quantity"]))
        .sum()
}

#[test]
fn late_logs_are_billed_once_on_sqlite() {
    late_logs_are_billed_once(&["--no-billing-scheduler"], "sqlite");
}

#[test]
fn late_logs_are_billed_once_on_postgres() {
    if let Some(url) = pg_support::fresh_database("billing_e2e_late") {
        late_logs_are_billed_once(&["--no-billing-scheduler", "--postgres", &url], "postgres");
    }
}

fn late_logs_are_billed_once(extra: &[&str], tag: &str) {
    udn_bins::install_crypto();
    let dir = log_util::TempDir::new(&format!("billing-e2e-{tag}"));
    let dir = dir.path();
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let data = dir.join("data");
    let (_control, collector, portal, api) = start_control(extra, &data, &cfg);
    let http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true) // the portal's self-signed certificate, loopback
        .build()
        .unwrap();
    let tok: serde_json::Value = http
        .post(format!("{portal}/v1/auth/token"))
        .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let billing_db = match extra {
        [_, "--postgres", url] | ["--postgres", url] => {
            vec!["--postgres".to_string(), url.to_string()]
        }
        _ => vec![
            "--db".to_string(),
            data.join("udn.sqlite").display().to_string(),
        ],
    };
    let env = Env {
        http,
        api,
        token: tok["token"].as_str().expect("token").to_string(),
        billing_db,
    };
    std::fs::write(dir.join("plan.json"), udn_bins::demo::billing::PLAN).unwrap();
    std::fs::write(
        dir.join("account.json"),
        r#"{"id": "shop", "currency": "EUR", "delivery": "post", "services": "gtm_cdn",
            "payment": {"method": "invoice", "terms_days": 14}, "billing_period": "hour",
            "invoicing": {"company": "Shop Example Inc.", "address": ["1 Demo Street"],
                          "contact": "Demo User", "email": "billing@shop.udn.example"},
            "subscriptions": [{"plan": "demo-cdn", "version": 1, "start": 0}]}"#,
    )
    .unwrap();
    let _ = env.cli(&["plan-add", dir.join("plan.json").to_str().unwrap()]);
    let _ = env.cli(&["account-put", dir.join("account.json").to_str().unwrap()]);

    let now = udn_bins::logging::now();
    let h1 = Period::containing(PeriodKind::Hour, now)
        .unwrap()
        .previous()
        .unwrap();
    let h0 = h1.previous().unwrap();
    let at = |p: &Period, min: u64| Timestamp::from_millis(p.start.as_millis() + min * 60_000);
    let logs = dir.join("logs");

    // Hour h0: ten 1 GB responses, shipped in time.
    let a = gb_file(&logs, "fra-edge-1", &[(at(&h0, 1), 10)], now);
    let _ = ship(&data, &collector, "fra-edge-1", &a);

    // The API bills h0 from the log store: platform 1.00 + 10 GB x 0.04.
    let (st, first) = env.api_run(&h0.to_string());
    assert_eq!(st, 200, "{first}");
    assert_eq!(first["issued"][0]["number"], "INV-000001", "{first}");
    assert_eq!(first["issued"][0]["total"], "1.40 EUR", "{first}");
    assert_eq!(
        first["ingested"]["new"], 1,
        "one file, one customer: {first}"
    );

    // The CLI gives the same invoice for the same period: credit the API's, bill again.
    let cn = env.cli_json(&["credit", "INV-000001"]);
    assert_eq!(cn["credit_note"], "CN-000001");
    let by_cli = env.cli_json(&["run", "--period", &h0.to_string()]);
    assert_eq!(by_cli["issued"][0]["number"], "INV-000002", "{by_cli}");
    assert_eq!(
        env.invoice("INV-000001")["invoice"],
        env.invoice("INV-000002")["invoice"],
        "the API's and the CLI's invoice of {h0}"
    );

    // Late logs for h0 (five more 1 GB responses) arrive after it was invoiced, in the
    // same file as two responses of h1.
    let b = gb_file(
        &logs,
        "fra-edge-2",
        &[(at(&h0, 30), 5), (at(&h1, 2), 2)],
        now,
    );
    let _ = ship(&data, &collector, "fra-edge-2", &b);

    // Billing h0 again issues nothing: its invoice is immutable; the usage is late.
    let (st, again) = env.api_run(&h0.to_string());
    assert_eq!(st, 200, "{again}");
    assert!(again["issued"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(again["already_invoiced"][0], "shop", "{again}");
    assert_eq!(
        again["ingested"]["late"][0],
        serde_json::json!(["shop", h0.to_string()]),
        "{again}"
    );

    // The next hour's invoice (by the CLI) bills h1 and, as labelled adjustment lines,
    // the late usage of h0: 1.00 + 2 GB x 0.04 + 5 GB x 0.04.
    let next = env.cli_json(&["run", "--period", &h1.to_string()]);
    assert_eq!(next["issued"][0]["number"], "INV-000003", "{next}");
    assert_eq!(next["issued"][0]["total"], "1.28 EUR", "{next}");
    assert_eq!(
        next["adjusted"],
        serde_json::json!([["shop", h0.to_string()]]),
        "{next}"
    );
    let inv3 = env.invoice("INV-000003");
    let adj: Vec<&serde_json::Value> = inv3["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["description"]
                .as_str()
                .unwrap()
                .starts_with("Late usage of")
        })
        .collect();
    let traffic = adj
        .iter()
        .find(|l| l["component"] == "Traffic")
        .unwrap_or_else(|| panic!("an adjustment line for traffic: {inv3}"));
    assert_eq!(
        traffic["description"],
        format!("Late usage of {h0} (adjusts INV-000002): Traffic")
    );
    assert_eq!(dec(&traffic["quantity"]), Decimal::from(5));
    assert_eq!(dec(&traffic["amount"]), Decimal::new(20, 2));

    // Repeating every run changes nothing, and a re-shipped file is a duplicate.
    let _ = ship(&data, &collector, "fra-edge-2", &b);
    for p in [h0, h1] {
        let (st, r) = env.api_run(&p.to_string());
        assert_eq!(st, 200, "{r}");
        assert!(r["issued"].as_array().unwrap().is_empty(), "{r}");
        let r = env.cli_json(&["run", "--period", &p.to_string()]);
        assert!(r["issued"].as_array().unwrap().is_empty(), "{r}");
    }
    let list = env.cli_json(&["list"]);
    assert_eq!(
        list.as_array().unwrap().len(),
        4,
        "3 invoices, 1 credit note: {list}"
    );

    // Every gigabyte logged for h0 and h1 is billed exactly once over the live invoices.
    let live: Vec<serde_json::Value> = ["INV-000002", "INV-000003"]
        .iter()
        .map(|n| env.invoice(n))
        .collect();
    for (p, logged) in [(h0, 15), (h1, 2)] {
        let billed: Decimal = live.iter().map(|d| billed_quantity(d, &p, "Traffic")).sum();
        assert_eq!(billed, Decimal::from(logged), "GB billed for {p}");
    }

    // Audit: both live invoices reproduce, and the usage billed for their periods is
    // the billing store's and the log store's.
    for (n, adjusted_on) in [("INV-000002", vec!["INV-000003"]), ("INV-000003", vec![])] {
        let a = env.cli_json(&["audit", n]);
        assert_eq!(a["reproducible"], true, "{a}");
        assert_eq!(a["usage_unchanged"], true, "{a}");
        assert_eq!(a["store_matches"], true, "{a}");
        assert_eq!(a["adjusted_on"], serde_json::json!(adjusted_on), "{a}");
    }
    // The credited first invoice reports the late usage it never billed.
    let a = env.cli_json(&["audit", "INV-000001"]);
    assert_eq!(a["store_matches"], false, "{a}");

    // Rules, not storage: billing an hour that is not over is 422 naming the period.
    let current = Period::containing(PeriodKind::Hour, now).unwrap();
    let (st, v) = env.api_run(&current.next().unwrap().to_string());
    assert_eq!(st, 422, "{v}");
    assert!(v.to_string().contains("period"), "{v}");
    // Storage, not input: with a billing table gone, a run is 503 (never 500), and
    // works again once the table is back.
    let sql = |q: &str| match extra {
        [_, "--postgres", url] => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            c.batch_execute(q).unwrap();
        }
        _ => {
            let c = rusqlite::Connection::open(data.join("udn.sqlite")).unwrap();
            c.execute_batch(q).unwrap();
        }
    };
    sql("ALTER TABLE billing_accounts RENAME TO billing_accounts_away");
    let (st, v) = env.api_run(&h1.to_string());
    assert_eq!(st, 503, "{v}");
    assert!(v.to_string().contains("billing store unavailable"), "{v}");
    sql("ALTER TABLE billing_accounts_away RENAME TO billing_accounts");
    let (st, v) = env.api_run(&h1.to_string());
    assert_eq!(st, 200, "{v}");
}

/// Two control planes on one PostgreSQL database, each with its own collector, bill the
/// same hour at the same moment: one invoice, each file's usage on it once.
#[test]
fn two_control_planes_bill_an_hour_once() {
    let Some(url) = pg_support::fresh_database("billing_e2e_two_planes") else {
        return;
    };
    udn_bins::install_crypto();
    let tmp = log_util::TempDir::new("billing-e2e-two");
    let dir = tmp.path();
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true) // the portals' self-signed certificates, loopback
        .build()
        .unwrap();
    let mut planes = Vec::new();
    for i in 0..2 {
        let data = dir.join(format!("data-{i}"));
        let (proc_, collector, portal, api) =
            start_control(&["--no-billing-scheduler", "--postgres", &url], &data, &cfg);
        let tok: serde_json::Value = http
            .post(format!("{portal}/v1/auth/token"))
            .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let env = Env {
            http: http.clone(),
            api,
            token: tok["token"].as_str().expect("token").to_string(),
            billing_db: vec!["--postgres".into(), url.clone()],
        };
        planes.push((proc_, data, collector, env));
    }
    let env = &planes[0].3;
    std::fs::write(dir.join("plan.json"), udn_bins::demo::billing::PLAN).unwrap();
    std::fs::write(
        dir.join("account.json"),
        r#"{"id": "shop", "currency": "EUR", "delivery": "post", "services": "gtm_cdn",
            "payment": {"method": "invoice", "terms_days": 14}, "billing_period": "hour",
            "invoicing": {"company": "Shop Example Inc.", "address": ["1 Demo Street"],
                          "contact": "Demo User", "email": "billing@shop.udn.example"},
            "subscriptions": [{"plan": "demo-cdn", "version": 1, "start": 0}]}"#,
    )
    .unwrap();
    let _ = env.cli(&["plan-add", dir.join("plan.json").to_str().unwrap()]);
    let _ = env.cli(&["account-put", dir.join("account.json").to_str().unwrap()]);
    let now = udn_bins::logging::now();
    let hour = Period::containing(PeriodKind::Hour, now)
        .unwrap()
        .previous()
        .unwrap();
    let at = Timestamp::from_millis(hour.start.as_millis() + 60_000);
    // 10 GB through the first collector, 5 GB through the second.
    for ((_, data, collector, _), (name, n)) in
        planes.iter().zip([("fra-edge-1", 10), ("fra-edge-2", 5)])
    {
        let f = gb_file(&dir.join("logs"), name, &[(at, n)], now);
        let _ = ship(data, collector, name, &f);
    }
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|sc| {
        let runs: Vec<_> = planes
            .iter()
            .map(|(_, _, _, env)| {
                let barrier = &barrier;
                sc.spawn(move || {
                    barrier.wait();
                    env.api_run(&hour.to_string())
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut issued = Vec::new();
    for (st, r) in &results {
        assert_eq!(*st, 200, "{r}");
        issued.extend(r["issued"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(issued.len(), 1, "one invoice for the hour: {results:?}");
    // platform 1.00 + 15 GB x 0.04
    assert_eq!(issued[0]["total"], "1.60 EUR", "{results:?}");
    let list = env.cli_json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let a = env.cli_json(&["audit", issued[0]["number"].as_str().unwrap()]);
    assert_eq!(
        (
            &a["reproducible"],
            &a["usage_unchanged"],
            &a["store_matches"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!(true)
        ),
        "{a}"
    );
}

#[test]
fn the_scheduler_bills_a_closed_hour_on_sqlite() {
    the_scheduler_bills_a_closed_hour(&[], "sqlite");
}

#[test]
fn the_scheduler_bills_a_closed_hour_on_postgres() {
    if let Some(url) = pg_support::fresh_database("billing_e2e_scheduler") {
        the_scheduler_bills_a_closed_hour(&["--postgres", &url], "postgres");
    }
}

/// `udn control --billing-grace 1s` bills the last closed hour without a manual command;
/// the invoice shows in the portal, the run in the run log; after a downtime the missed
/// hours are billed in order.
fn the_scheduler_bills_a_closed_hour(extra: &[&str], tag: &str) {
    udn_bins::install_crypto();
    let tmp = log_util::TempDir::new(&format!("billing-e2e-sched-{tag}"));
    let dir = tmp.path();
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let data = dir.join("data");
    // Delivery follows each scheduled run: the shop is billed by post, so a printable
    // document lands in print_dir.
    let print_dir = dir.join("print");
    let billing_cfg = dir.join("billing.toml");
    std::fs::write(
        &billing_cfg,
        format!(
            "print_dir = {:?}\n[issuer]\nname = \"UDN Test Networks\"\naddress = [\"1 Loopback\"]\nemail = \"billing@udn.example\"\n",
            print_dir.display().to_string()
        ),
    )
    .unwrap();
    let billing_cfg = billing_cfg.display().to_string();
    let mut args = vec!["--billing-grace", "1s", "--billing-config", &billing_cfg];
    args.extend_from_slice(extra);
    let (control, collector, portal, api) = start_control(&args, &data, &cfg);
    let http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true) // the portal's self-signed certificate, loopback
        .cookie_store(true)
        .build()
        .unwrap();
    let tok: serde_json::Value = http
        .post(format!("{portal}/v1/auth/token"))
        .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let billing_db = match extra {
        ["--postgres", url] => vec!["--postgres".to_string(), url.to_string()],
        _ => vec![
            "--db".to_string(),
            data.join("udn.sqlite").display().to_string(),
        ],
    };
    let env = Env {
        http: http.clone(),
        api: api.clone(),
        token: tok["token"].as_str().expect("token").to_string(),
        billing_db,
    };
    let now = udn_bins::logging::now();
    let hour = Period::containing(PeriodKind::Hour, now)
        .unwrap()
        .previous()
        .unwrap();
    // Logs first (3 GB in the last full hour), then the account: the scheduler has
    // nothing to bill until an account exists.
    let f = gb_file(
        &dir.join("logs"),
        "fra-edge-1",
        &[(Timestamp::from_millis(hour.start.as_millis() + 60_000), 3)],
        now,
    );
    let _ = ship(&data, &collector, "fra-edge-1", &f);
    std::fs::write(dir.join("plan.json"), udn_bins::demo::billing::PLAN).unwrap();
    std::fs::write(
        dir.join("account.json"),
        r#"{"id": "shop", "currency": "EUR", "delivery": "post", "services": "gtm_cdn",
            "payment": {"method": "invoice", "terms_days": 14}, "billing_period": "hour",
            "invoicing": {"company": "Shop Example Inc.", "address": ["1 Demo Street"],
                          "contact": "Demo User", "email": "billing@shop.udn.example"},
            "subscriptions": [{"plan": "demo-cdn", "version": 1, "start": 0}]}"#,
    )
    .unwrap();
    let _ = env.cli(&["plan-add", dir.join("plan.json").to_str().unwrap()]);
    let _ = env.cli(&["account-put", dir.join("account.json").to_str().unwrap()]);

    let invoices = |api: &str, want: usize| -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v: serde_json::Value = http
                .get(format!("{api}/v1/invoices?customer=shop"))
                .bearer_auth(&env.token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            if v.as_array().is_some_and(|a| a.len() >= want) || std::time::Instant::now() > deadline
            {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    let list = invoices(&api, 1);
    let inv = &list.as_array().unwrap_or_else(|| panic!("{list}"))[0];
    assert_eq!(
        inv["number"], "INV-000001",
        "billed without a command: {list}"
    );
    assert_eq!(
        inv["period_start"],
        serde_json::json!(hour.start.as_millis()),
        "{list}"
    );
    assert_eq!(
        dec(&inv["total"]),
        Decimal::new(112, 2),
        "1.00 + 3 GB x 0.04: {list}"
    );
    let printed = print_dir.join("INV-000001.html");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !printed.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let doc = std::fs::read_to_string(&printed).expect("the scheduler delivered the invoice");
    assert!(
        doc.contains("UDN Test Networks") && doc.contains("INV-000001"),
        "{doc}"
    );

    // The run log: the scheduler's run of the hour, in the API and the admin page.
    let runs: serde_json::Value = http
        .get(format!("{api}/v1/billing/runs"))
        .bearer_auth(&env.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trigger"] == "scheduler" && r["period"] == hour.to_string())
        .unwrap_or_else(|| panic!("the scheduler's run: {runs}"));
    assert_eq!(run["outcome"], "ok", "{run}");
    let login = http
        .post(format!("{portal}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let page = http
        .get(format!("{portal}/invoices"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("INV-000001"), "{page}");
    // the invoice's own page: the configured issuer, its status, due date and lines
    let page = http
        .get(format!("{portal}/invoices/{}", inv["id"]))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("<iframe class=\"invoice-body\""), "{page}");
    // the framed document, as the API gives it
    let doc = http
        .get(format!("{api}/v1/invoices/{}/html", inv["id"]))
        .bearer_auth(&env.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    for want in [
        "UDN Test Networks",
        "1 Loopback",
        "status <strong class=\"status\">issued</strong>",
        "&middot; due ",
        "Total",
    ] {
        assert!(doc.contains(want), "missing {want:?} in the invoice: {doc}");
    }
    // ... and the same document is the frame's (attribute-escaped) source
    assert!(
        page.contains("UDN Test Networks") && page.contains("status &lt;strong"),
        "{page}"
    );
    assert!(!page.contains("issuer not configured"), "{page}");
    let pdf = std::fs::read(print_dir.join("INV-000001.pdf")).expect("the PDF to print");
    assert!(pdf.starts_with(b"%PDF-"));
    let page = http
        .get(format!("{portal}/billing-runs"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("scheduler") && page.contains(&hour.to_string()),
        "{page}"
    );

    // Downtime: the control plane is stopped, and (as if it had been down for the two
    // hours before) its progress says the last hour billed ended three hours ago.
    drop(control);
    let two_before = hour.previous().unwrap();
    let end = two_before.start.as_millis() as i64;
    let sql = format!("UPDATE billing_state SET value = {end} WHERE name = 'schedule:hour'");
    match extra {
        ["--postgres", url] => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            assert_eq!(c.execute(sql.as_str(), &[]).unwrap(), 1);
        }
        _ => {
            let c = rusqlite::Connection::open(data.join("udn.sqlite")).unwrap();
            assert_eq!(c.execute(&sql, []).unwrap(), 1);
        }
    }
    let (_control, _, _, api) = start_control(&args, &data, &cfg);
    let list = invoices(&api, 2);
    let periods: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["period_start"].as_u64().unwrap())
        .collect();
    assert!(
        periods.contains(&two_before.start.as_millis()),
        "the missed hour {two_before} is caught up: {list}"
    );
    assert_eq!(
        periods.len(),
        2,
        "the hour billed before is not billed again: {list}"
    );

    // An admin's actions through the API, on the running control plane.
    let first = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["number"] == "INV-000001")
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    let pdf = http
        .get(format!("{api}/v1/invoices/{}/pdf", first["id"]))
        .bearer_auth(&env.token)
        .send()
        .unwrap();
    assert_eq!(pdf.status(), 200);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    assert_eq!(
        pdf.headers()["content-disposition"],
        "attachment; filename=\"INV-000001.pdf\""
    );
    assert!(pdf.bytes().unwrap().starts_with(b"%PDF-"));
    let act = |path: &str, body: Option<serde_json::Value>| {
        let mut r = http
            .post(format!("{api}/v1/billing/invoices/{path}"))
            .bearer_auth(&env.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let st = r.status().as_u16();
        (st, r.json::<serde_json::Value>().unwrap_or_default())
    };
    let (st, v) = act(
        "INV-000001/payments",
        Some(serde_json::json!({"amount": "lots", "reference": "x"})),
    );
    assert_eq!(
        (st, v["errors"][0]["field"].clone()),
        (422, "amount".into()),
        "{v}"
    );
    let (st, v) = act(
        "INV-000001/payments",
        Some(serde_json::json!({"amount": "1.12", "reference": "SEPA 2026-12-03"})),
    );
    assert_eq!((st, v["status"].clone()), (200, "paid".into()), "{v}");
    // a paid invoice cannot be voided: a rule, 409
    let (st, v) = act("INV-000001/void", None);
    assert_eq!(st, 409, "{v}");
    let (st, v) = act("INV-000002/credit", None);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["credit_note"]
            .as_str()
            .is_some_and(|c| c.starts_with("CN-")),
        "{v}"
    );
    let (st, _) = act("INV-999999/void", None);
    assert_eq!(st, 404);
    // not for strangers (a client without the admin's cookie or token)
    let r = reqwest::blocking::Client::new()
        .post(format!("{api}/v1/billing/invoices/INV-000002/void"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}
