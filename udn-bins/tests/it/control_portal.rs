//! `udn control` with the portal: log files shipped to its collector show up in the
//! portal API's traffic and GTM-answer series (the charts' data), per customer; with
//! `--postgres` the control plane's own state (users, config versions, purges) and its
//! billing tables live in PostgreSQL (no SQLite file is involved) and survive a restart
//! on another machine's (empty) data directory.

use crate::log_util;
use log_util::pg_support;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use udn_bins::logging::FileLog;
use udn_core::Timestamp;
use udn_core::log::{DnsRecord, HttpRecord, LogRecord, Role, RotationPolicy};

pub(crate) struct Proc(pub(crate) Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("udn-ctlportal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The addresses `udn control` prints on stdout: collector, portal, plain-HTTP API.
fn control_addrs(child: &mut Child) -> (String, String, String) {
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut collector, mut portal, mut api) = (None, None, None);
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).expect("read stdout");
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
        collector.expect("collector address"),
        portal.expect("portal address"),
        api.expect("API address"),
    )
}

#[test]
fn shipped_logs_reach_the_portal_series_on_sqlite() {
    shipped_logs_reach_the_portal_series(&[], "sqlite");
}

#[test]
fn shipped_logs_reach_the_portal_series_on_postgres() {
    if let Some(url) = pg_support::fresh_database("shipped_logs_portal") {
        shipped_logs_reach_the_portal_series(&["--postgres", &url], "postgres");
    }
}

#[test]
fn shipped_logs_reach_the_portal_series_on_clickhouse() {
    if let Some(log_util::Backend::ClickHouse(url)) = log_util::clickhouse("shipped_logs_portal") {
        shipped_logs_reach_the_portal_series(&["--clickhouse", &url], "clickhouse");
    }
}

/// Logs shipped to the collector show in the traffic and answer series, and a billing
/// run bills them; `extra` picks the store (nothing: SQLite; `--postgres URL`; the log
/// store in ClickHouse with `--clickhouse URL`).
fn shipped_logs_reach_the_portal_series(extra: &[&str], tag: &str) {
    udn_bins::install_crypto();
    let dir = tmp(tag);
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let (_guard, collector, portal, api) = start_control(extra, &dir.join("data"), &cfg);
    assert!(portal.starts_with("https://"), "{portal}");

    // A minute of edge and DNS logs, written by the shared logger.
    let now = udn_bins::logging::now();
    let logs = dir.join("logs");
    // Instance names are those of the shipping certificates (`test-<role>`, log_util).
    let log = FileLog::new(&logs, Role::Edge, "test-edge", RotationPolicy::default()).unwrap();
    // DNS records come from a DNS server (the collector takes only the sender's role).
    let dns_log = FileLog::new(
        &logs.join("dns"),
        Role::Dns,
        "test-dns",
        RotationPolicy::default(),
    )
    .unwrap();
    for i in 0..50u64 {
        let rec = LogRecord::Http(HttpRecord {
            ts: Timestamp::from_millis(now.as_millis() - 60_000 + i),
            customer: Some("shop".into()),
            host: "cdn.shop.udn.example".into(),
            path: "/img/logo.svg".into(),
            method: "GET".into(),
            status: 200,
            bytes: 1000,
            fill_bytes: 0,
            outcome: "hit".into(),
            duration_us: 100,
            client: "127.0.0.41".parse().unwrap(),
            pop: "fra".into(),
        });
        log.write_at(&rec, now).unwrap();
    }
    // A live HLS stream: one playlist and three segment requests from two viewers.
    for (i, (path, client)) in [
        ("/live/a/index.m3u8", "127.0.0.41"),
        ("/live/a/seg1.ts", "127.0.0.41"),
        ("/live/a/seg1.ts", "127.0.0.43"),
        ("/live/a/seg2.ts", "127.0.0.43"),
    ]
    .into_iter()
    .enumerate()
    {
        let rec = LogRecord::Http(HttpRecord {
            ts: Timestamp::from_millis(now.as_millis() - 60_000 + 100 + i as u64),
            customer: Some("shop".into()),
            host: "cdn.shop.udn.example".into(),
            path: path.into(),
            method: "GET".into(),
            status: 200,
            bytes: 1000,
            fill_bytes: 0,
            outcome: "hit".into(),
            duration_us: 100,
            client: client.parse().unwrap(),
            pop: "fra".into(),
        });
        log.write_at(&rec, now).unwrap();
    }
    // In a complete minute: the series end at the last complete one (docs/api.md).
    for i in 0..20u64 {
        let addr = if i < 15 { "127.0.0.21" } else { "127.0.0.22" };
        let rec = LogRecord::Dns(DnsRecord {
            ts: Timestamp::from_millis(now.as_millis() - 90_000 + i),
            hostname: "www.shop.udn.example".into(),
            qtype: "A".into(),
            client: "127.0.0.42".parse().unwrap(),
            ecs: None,
            addrs: vec![addr.parse().unwrap()],
            reason: "latency".into(),
            pop: Some("nyc".into()),
            customer: Some("shop".into()),
            server: "dns-a".into(),
        });
        dns_log.write_at(&rec, now).unwrap();
    }
    // Ten 1 GB responses in the previous hour: what the billing run below must bill.
    let prev_hour = udn_billing::Period::containing(udn_billing::PeriodKind::Hour, now)
        .unwrap()
        .previous()
        .unwrap();
    for i in 0..10u64 {
        let rec = LogRecord::Http(HttpRecord {
            ts: Timestamp::from_millis(prev_hour.start.as_millis() + 60_000 + i),
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
    // Five responses 200 days ago: only a long range shows them.
    let long_ago = now.as_millis() - 200 * 86_400_000;
    for i in 0..5u64 {
        let rec = LogRecord::Http(HttpRecord {
            ts: Timestamp::from_millis(long_ago + i),
            customer: Some("shop".into()),
            host: "cdn.shop.udn.example".into(),
            path: "/old.png".into(),
            method: "GET".into(),
            status: 200,
            bytes: 7,
            fill_bytes: 0,
            outcome: "hit".into(),
            duration_us: 100,
            client: "127.0.0.41".parse().unwrap(),
            pop: "fra".into(),
        });
        log.write_at(&rec, now).unwrap();
    }
    // Each file shipped by an instance of its role, enrolled with `udn control enroll`.
    let data = dir.join("data");
    for (role, log) in [("edge", &log), ("dns", &dns_log)] {
        let file = log.flush_complete().unwrap().unwrap();
        let body = std::fs::read(&file).unwrap();
        let sum = hex(&Sha256::digest(&body));
        let r = log_util::role_client(&data, role)
            .post(format!("{collector}/v1/logs"))
            .header("x-udn-sha256", sum)
            .body(body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text());
    }
    let http = reqwest::blocking::Client::builder()
        // The portal's self-signed certificate, on loopback.
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();

    // A bearer token (passwords only over HTTPS), used on the plain-HTTP API.
    let tok: serde_json::Value = http
        .post(format!("{portal}/v1/auth/token"))
        .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = tok["token"].as_str().expect("token").to_string();
    // GETs `path` until its `list` array is not empty (the shipped files are ingested
    // in the background), for at most 20 s.
    let get_list = |path: &str, list: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v: serde_json::Value = http
                .get(format!("{api}{path}"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            if v[list].as_array().is_some_and(|p| !p.is_empty()) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let get = |path: &str| get_list(path, "points");
    let cdn = get("/v1/traffic/cdn?customer=shop");
    let pts = cdn["points"].as_array().expect("points");
    let bytes: u64 = pts.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    let hits: u64 = pts.iter().map(|p| p["hits"].as_u64().unwrap()).sum();
    assert_eq!((bytes, hits), (54_000 + 10_000_000_000, 64), "{cdn}");

    // The quality series: every response a 200 hit of 100 µs (the fastest bucket).
    let quality = get("/v1/traffic/cdn/quality?customer=shop");
    let qp = quality["points"].as_array().expect("points");
    let requests: u64 = qp.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 64, "{quality}");
    assert!(
        qp.iter().all(|p| p["hit_ratio"] == 1.0
            && p["origin_errors"] == 0
            && p["p99_ms"].as_f64() < Some(1.0)),
        "{quality}"
    );
    let top = get_list("/v1/traffic/cdn/top?customer=shop", "urls");
    assert_eq!(top["urls"][0]["path"], "/img/logo.svg", "{top}");
    assert_eq!(top["urls"][0]["requests"], 50, "{top}");
    assert_eq!(top["networks"][0]["network"], "127.0.0.0/24", "{top}");

    // The answers of the log store's routes are what the OpenAPI document says.
    let doc: serde_json::Value = http
        .get(format!("{api}/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for path in [
        "/v1/traffic/cdn/quality",
        "/v1/traffic/cdn/top",
        "/v1/traffic/gtm/reasons",
        "/v1/streaming",
        "/v1/ops",
        "/v1/gtm/{hostname}/health",
    ] {
        let url = format!(
            "{api}{}?customer=shop",
            path.replace("{hostname}", "www.shop.udn.example")
        );
        let url = if path == "/v1/ops" || path.contains('{') {
            url.replace("?customer=shop", "")
        } else {
            url
        };
        let r = http.get(&url).bearer_auth(&token).send().unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let body: serde_json::Value = r.json().unwrap();
        let errors = crate::api_support::schema_errors(&doc, path, &body).expect("a schema");
        assert!(errors.is_empty(), "{path}: {errors:?}\n{body}");
    }

    // The stream's statistics: one stream, its segments, playlists and viewers.
    let sv = get_list("/v1/streaming?customer=shop", "streams");
    let streams = sv["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{sv}");
    assert_eq!(streams[0]["stream"], "/live/a/", "{sv}");
    assert_eq!(streams[0]["host"], "cdn.shop.udn.example", "{sv}");
    assert_eq!(
        (
            &streams[0]["segments"],
            &streams[0]["playlists"],
            &streams[0]["viewers"],
            &streams[0]["bytes"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(4000)
        ),
        "{sv}"
    );
    // The portal's Streaming Media page shows the stream, logged in as the admin.
    let browser = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .cookie_store(true)
        .build()
        .unwrap();
    let login = browser
        .post(format!("{portal}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let page = browser
        .get(format!("{portal}/streaming?customer=shop"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(html.contains("Streaming Media"), "{html}");
    let table = &html[html.find("id=\"streams\"").expect("streams table")..];
    assert!(
        table.contains("/live/a/") && table.contains("4000"),
        "{table}"
    );
    // The CDN Quality page: totals, four charts, the top lists.
    let page = browser
        .get(format!("{portal}/activity/cdn/quality?customer=shop"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(html.contains("id=\"total-requests\">64<"), "{html}");
    assert!(html.contains("id=\"total-hit-ratio\">100.0 %<"), "{html}");
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    let urls = &html[html.find("id=\"top-urls\"").expect("top URLs")..];
    assert!(urls.contains("/img/logo.svg"), "{urls}");
    let csv = browser
        .get(format!("{api}/v1/streaming?customer=shop&format=csv"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        csv.lines()
            .any(|l| l.starts_with("cdn.shop.udn.example,/live/a/,2,4,3,1,4000,")),
        "{csv}"
    );
    // A range over the seven-day cap is refused, naming the parameter.
    let r = http
        .get(format!("{api}/v1/streaming?customer=shop&hours=200"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("from"));

    let gtm = get("/v1/traffic/gtm?customer=shop");
    let mut by_addr = std::collections::BTreeMap::new();
    for p in gtm["points"].as_array().expect("points") {
        *by_addr
            .entry(p["address"].as_str().unwrap().to_string())
            .or_insert(0u64) += p["answers"].as_u64().unwrap();
    }
    assert_eq!(by_addr.get("127.0.0.21"), Some(&15), "{gtm}");
    assert_eq!(by_addr.get("127.0.0.22"), Some(&5), "{gtm}");

    // A year back from now, in Berlin's time: read from the daily rollups, the old
    // responses included; the answer states the (whole-day) range it covers.
    let rfc = |ms: u64| {
        jiff::Timestamp::from_millisecond(ms as i64)
            .unwrap()
            .to_string()
    };
    let year = format!(
        "from={}&to={}&tz=Europe/Berlin",
        rfc(now.as_millis() - 365 * 86_400_000),
        rfc(now.as_millis())
    );
    let v = get(&format!("/v1/traffic/cdn?customer=shop&{year}"));
    assert_eq!(v["granularity"], "day", "{v}");
    assert_eq!(v["from_ms"].as_u64().unwrap() % 86_400_000, 0, "{v}");
    assert!(v["from"].as_str().unwrap().ends_with(":00"), "{v}");
    let pts = v["points"].as_array().expect("points");
    let bytes: u64 = pts.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    let hits: u64 = pts.iter().map(|p| p["hits"].as_u64().unwrap()).sum();
    assert_eq!((bytes, hits), (54_000 + 10_000_000_000 + 35, 69), "{v}");
    // One domain: the shop's CDN hostname has them all, its GTM hostname no CDN traffic.
    let v = get(&format!(
        "/v1/traffic/cdn?customer=shop&host=cdn.shop.udn.example&{year}"
    ));
    let pts = v["points"].as_array().expect("points");
    // Two days with traffic (200 days ago, today), or three when the previous hour's
    // records fell on yesterday (UTC daily rollups; in the first hour of the day).
    let mut days = vec![
        long_ago / 86_400_000,
        (prev_hour.start.as_millis() + 60_000) / 86_400_000,
        (now.as_millis() - 60_000) / 86_400_000,
    ];
    days.dedup();
    assert_eq!(pts.len(), days.len(), "days with traffic {days:?}: {v}");
    assert_eq!(
        (pts[0]["bytes"].as_u64(), pts[0]["hits"].as_u64()),
        (Some(35), Some(5))
    );
    let v: serde_json::Value = http
        .get(format!(
            "{api}/v1/traffic/cdn?customer=shop&host=www.shop.udn.example&{year}"
        ))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["host"], "www.shop.udn.example");
    assert_eq!(v["points"], serde_json::json!([]), "{v}");
    let csv = http
        .get(format!(
            "{api}/v1/traffic/cdn?customer=shop&host=cdn.shop.udn.example&{year}&format=csv"
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(csv.status(), 200);
    let text = csv.text().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + days.len(), "{text}");
    assert_eq!(lines[0], "time,bytes,hits");
    assert!(lines[1].ends_with(",35,5"), "{text}");
    let recent: Vec<(u64, u64)> = lines[2..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(
        recent.iter().fold((0, 0), |a, r| (a.0 + r.0, a.1 + r.1)),
        (10_000_054_000, 64),
        "{text}"
    );
    let bad = http
        .get(format!("{api}/v1/traffic/cdn?from=last+week"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let e: serde_json::Value = bad.json().unwrap();
    assert_eq!(e["errors"][0]["field"], "from", "{e}");

    // Another customer's series is empty: the rows are the shop's.
    let other = http
        .get(format!("{api}/v1/traffic/cdn?customer=nobody"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    let v: serde_json::Value = other.json().unwrap();
    assert!(v["points"].as_array().is_none_or(|p| p.is_empty()), "{v}");
    // Billing through the control plane: plan and account by `udn control billing`,
    // the run by the API; the invoice then shows in the portal's invoice list. The
    // billing tables are where the control plane's store is: `--db` the SQLite file,
    // or `--postgres` the same database.
    let db = dir.join("data").join("udn.sqlite");
    let pg_url = extra
        .windows(2)
        .find(|w| w[0] == "--postgres")
        .map(|w| w[1].to_owned());
    let billing_db: Vec<std::ffi::OsString> = match &pg_url {
        Some(url) => vec!["--postgres".into(), url.into()],
        None => vec!["--db".into(), db.clone().into()],
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
    for (cmd, file) in [("plan-add", "plan.json"), ("account-put", "account.json")] {
        let out = Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["control", "billing"])
            .args(&billing_db)
            .arg(cmd)
            .arg(dir.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hour = prev_hour;
    let run = |period: &str| {
        http.post(format!("{api}/v1/billing/runs"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"period": period}))
            .send()
            .unwrap()
    };
    let first = run(&hour.to_string());
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().unwrap();
    let number = first["issued"][0]["number"]
        .as_str()
        .unwrap_or_else(|| panic!("an invoice issued: {first}"))
        .to_string();
    // The hour's platform fee plus 10 GB at 0.04 EUR/GB, from the log store's usage.
    assert_eq!(first["issued"][0]["total"], "1.40 EUR", "{first}");
    let again: serde_json::Value = run(&hour.to_string()).json().unwrap();
    assert!(
        again["issued"].as_array().is_some_and(|a| a.is_empty()),
        "a second run of the period issues nothing: {again}"
    );
    let bad = run("last tuesday");
    assert_eq!(bad.status(), 422);
    assert!(bad.text().unwrap().contains("period"));
    let list: serde_json::Value = http
        .get(format!("{api}/v1/invoices?customer=shop"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(list.to_string().contains(&number), "{list}");
    // The invoice is in the store the flags named, and only there.
    match &pg_url {
        Some(url) => {
            assert!(
                !db.exists(),
                "with --postgres billing creates no SQLite file ({})",
                db.display()
            );
            let mut pg = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let row = pg
                .query_one(
                    "SELECT status, account FROM billing_invoices WHERE number = $1",
                    &[&number],
                )
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "issued");
            assert_eq!(row.get::<_, String>(1), "shop");
            // The server drops the billing store's connection (a restart, an operator's
            // pg_terminate_backend): the next invoice list still shows the invoice.
            let killed = pg
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'udn billing'",
                    &[],
                )
                .unwrap();
            assert_eq!(killed, 1, "the control plane keeps one billing connection");
            let list: serde_json::Value = http
                .get(format!("{api}/v1/invoices?customer=shop"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert!(
                list.to_string().contains(&number),
                "after reconnecting: {list}"
            );
        }
        None => {
            use udn_bins::billing::BillingStore as _;
            let s = udn_bins::billing::SqliteBillingStore::open(&db).unwrap();
            assert!(s.invoice(&number).unwrap().is_some());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `udn control` (plus `extra` arguments) with the portal and its API on free
/// ports, the admin `admin:correct-horse` and the network `config`; returns the process
/// and the collector, portal and API addresses.
pub(crate) fn start_control(
    extra: &[&str],
    data_dir: &std::path::Path,
    config: &std::path::Path,
) -> (Proc, String, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["control", "--listen", "127.0.0.1:0"])
        .args(extra)
        .args(["--portal-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--bootstrap-admin", "admin:correct-horse"])
        // Billing runs here are the API's (the scheduler is tested in billing_e2e).
        .arg("--no-billing-scheduler")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        // Kept for the test to read (a panic in a task does not change the exit code).
        .stderr(std::fs::File::create(data_dir.with_extension("stderr")).expect("stderr file"))
        .spawn()
        .expect("start udn control");
    let (collector, portal, api) = control_addrs(&mut child);
    (Proc(child), collector, portal, api)
}

#[test]
fn control_plane_state_lives_in_postgres() {
    let Some(url) = pg_support::fresh_database("control_plane_state") else {
        return;
    };
    udn_bins::install_crypto();
    let dir = tmp("pg");
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let http = reqwest::blocking::Client::builder()
        // The portal's self-signed certificate, on loopback.
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let token = |api: &str, user: &str, password: &str| -> Option<String> {
        let r = http
            .post(format!("{api}/v1/auth/token"))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .unwrap();
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = r.json().unwrap();
        v["token"].as_str().map(str::to_owned)
    };
    let call =
        |method: reqwest::Method, url: String, tok: &str, body: Option<serde_json::Value>| {
            let mut req = http.request(method, url).bearer_auth(tok);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().unwrap_or_default())
        };

    // First control plane: seeds the config, creates the admin, takes changes.
    let (first, _, portal, api) = start_control(&["--postgres", &url], &dir.join("data-1"), &cfg);
    let admin = token(&portal, "admin", "correct-horse").expect("admin token");
    let (st, v) = call(
        reqwest::Method::POST,
        format!("{api}/v1/customers"),
        &admin,
        Some(serde_json::json!({"name": "newco", "display_name": "New Co"})),
    );
    assert_eq!(st, 201, "{v}");
    // Users are credentials: created with a login session (an API token may not).
    let cookies = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .cookie_store(true)
        .build()
        .unwrap();
    let login: serde_json::Value = cookies
        .post(format!("{portal}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": "correct-horse"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = cookies
        .post(format!("{portal}/v1/users"))
        .header("x-csrf-token", login["csrf"].as_str().expect("csrf"))
        .json(
            &serde_json::json!({"username": "newbie", "password": "a long enough password",
                                "role": "customer", "customer": "newco"}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let (st, v) = call(
        reqwest::Method::POST,
        format!("{api}/v1/purge"),
        &admin,
        Some(serde_json::json!({"scope": "url", "target": "http://cdn.shop.udn.example/a.css"})),
    );
    assert_eq!(st, 202, "{v}");
    let purge_seq = v["seq"].as_u64().expect("purge seq");
    let (_, before) = call(
        reqwest::Method::GET,
        format!("{api}/v1/config"),
        &admin,
        None,
    );
    let version = before["version"].as_u64().expect("version");
    assert_eq!(version, 2, "seed + the new customer: {before}");
    // SIGTERM: a clean exit (closing PostgreSQL connections inside the async runtime
    // used to panic and abort).
    let mut first = first;
    let term = Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = first.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "udn control did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "udn control --postgres exited with {status}"
    );
    let stderr = std::fs::read_to_string(dir.join("data-1.stderr")).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    // No control-plane state went to a local SQLite file.
    assert!(!dir.join("data-1").join("control.db").exists());

    // The tables are in PostgreSQL, read with a real client.
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let users: i64 = pg
        .query_one("SELECT COUNT(*) FROM cp_users", &[])
        .unwrap()
        .get(0);
    assert_eq!(users, 2);
    let versions: i64 = pg
        .query_one("SELECT MAX(version) FROM cp_config_versions", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 2);

    // A second control plane on an empty data directory and the same database sees all
    // of it: the customer's login, the config version (not re-seeded), the purge.
    let (_second, _, portal, api) = start_control(&["--postgres", &url], &dir.join("data-2"), &cfg);
    let newbie = token(&portal, "newbie", "a long enough password").expect("newbie logs in");
    let (st, me) = call(reqwest::Method::GET, format!("{api}/v1/me"), &newbie, None);
    assert_eq!(
        (st, me["user"]["customer"].clone()),
        (200, serde_json::json!("newco")),
        "{me}"
    );
    assert!(token(&portal, "newbie", "wrong password").is_none());
    let admin = token(&portal, "admin", "correct-horse").expect("admin token");
    let (_, after) = call(
        reqwest::Method::GET,
        format!("{api}/v1/config"),
        &admin,
        None,
    );
    assert_eq!(after["version"], before["version"], "{after}");
    assert!(after.to_string().contains("New Co"), "{after}");
    let (st, p) = call(
        reqwest::Method::GET,
        format!("{api}/v1/purge/{purge_seq}"),
        &admin,
        None,
    );
    assert_eq!(st, 200, "{p}");
    assert!(p.to_string().contains("/a.css"), "{p}");

    // PostgreSQL drops the control plane's connections (a restart, an operator's
    // pg_terminate_backend): reads reconnect and are answered at once; a write that
    // notices the loss fails once, and the next one works.
    let terminate = |pg: &mut postgres::Client| {
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
        // The backends end asynchronously: wait (at most 5 s) until they are gone, so
        // no request below runs on a connection that is still being cut.
        for _ in 0..50 {
            let left: i64 = pg
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND state IS NOT NULL AND backend_type = 'client backend'
                       AND backend_start < now()",
                    &[],
                )
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    terminate(&mut pg);
    for _ in 0..8 {
        // More calls than pooled connections, so every connection meets the loss.
        let (st, me) = call(reqwest::Method::GET, format!("{api}/v1/me"), &newbie, None);
        assert_eq!(st, 200, "a read after the connections were lost: {me}");
    }
    terminate(&mut pg);
    let purge = || {
        call(
            reqwest::Method::POST,
            format!("{api}/v1/purge"),
            &admin,
            Some(
                serde_json::json!({"scope": "url", "target": "http://cdn.shop.udn.example/b.css"}),
            ),
        )
        .0
    };
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let st = purge();
        statuses.push(st);
        if st == 202 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&202),
        "a write works again: {statuses:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
