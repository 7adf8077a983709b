//! The operators' views end to end: a real `udn dns` and a real `udn edge` write their
//! own operational statistics into their logs (`--ops-interval-secs`), the real
//! distributor ships the files to a real `udn control`, and the admin reads them back
//! through `GET /v1/ops` and the portal's Operations page: the DNS server's query
//! counter adds up to the queries `dig` sent, the edge's request counter to the
//! requests `curl`-like clients made. A customer is refused both (403). On SQLite and
//! on PostgreSQL (`UDN_TEST_POSTGRES`).

use crate::control_portal::{Proc, start_control};
use crate::log_util;
use crate::proc_support::{addr_after, dig_short, udn_dns, udn_with_lines};
use log_util::pg_support;

use std::process::Command;
use std::time::{Duration, Instant};

const UDN: &str = env!("CARGO_BIN_EXE_udn");
const QUERIES: usize = 7;
const REQUESTS: usize = 5;

#[test]
fn roles_statistics_reach_the_operators_views_on_sqlite() {
    roles_statistics_reach_the_operators_views(&[], "sqlite");
}

#[test]
fn roles_statistics_reach_the_operators_views_on_postgres() {
    if let Some(url) = pg_support::fresh_database("ops_views") {
        roles_statistics_reach_the_operators_views(&["--postgres", &url], "postgres");
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("udn-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// SIGINT (the roles complete their open log file on it), then waits.
fn interrupt(p: &mut crate::proc_support::Killed) {
    let _ = Command::new("kill")
        .args(["-INT", &p.0.id().to_string()])
        .status();
    let _ = p.0.wait();
}

/// Sum of `sum` over the points whose metric's name (without labels) is `name`, and
/// the instances that reported it.
fn counter(points: &serde_json::Value, name: &str) -> (i64, Vec<String>) {
    let mut total = 0;
    let mut instances = Vec::new();
    for p in points.as_array().expect("points") {
        let m = p["metric"].as_str().unwrap();
        if m.split('{').next() == Some(name) {
            total += p["sum"].as_i64().unwrap();
            let i = p["instance"].as_str().unwrap().to_string();
            if !instances.contains(&i) {
                instances.push(i);
            }
        }
    }
    (total, instances)
}

fn roles_statistics_reach_the_operators_views(extra: &[&str], tag: &str) {
    if Command::new("dig").arg("-v").output().is_err() {
        assert!(std::env::var("CI").is_err(), "dig is required");
        eprintln!("SKIPPED: dig is not installed");
        return;
    }
    udn_bins::install_crypto();
    let dir = tmp(tag);
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let data = dir.join("data");
    let (_control, collector, portal, api): (Proc, _, _, _) = start_control(extra, &data, &cfg);

    // A DNS server and an edge, each under the name of its shipping certificate
    // (`test-<role>`, log_util), writing operational records every second.
    let dns_logs = dir.join("logs-dns");
    let (mut dns, dns_addr) = udn_dns(&[
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        "test-dns",
        "--log-dir",
        dns_logs.to_str().unwrap(),
        "--ops-interval-secs",
        "1",
    ]);
    let edge_logs = dir.join("logs-edge");
    let (mut edge, lines) = udn_with_lines(
        &[
            "edge",
            // Nothing listens there: every request is answered 502 and counted.
            "--origin",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--pop",
            "test-edge",
            "--log-dir",
            edge_logs.to_str().unwrap(),
            "--ops-interval-secs",
            "1",
        ],
        1,
    );
    let edge_addr = addr_after(&lines[0], "udn edge: listening on http://");

    for _ in 0..QUERIES {
        assert_eq!(
            dig_short(dns_addr, "www.shop.udn.example").len(),
            1,
            "udn dns answers"
        );
    }
    let http = reqwest::blocking::Client::new();
    for i in 0..REQUESTS {
        let r = http
            .get(format!("http://{edge_addr}/page-{i}"))
            .send()
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    // A few more intervals (a loaded machine delays a tick): the last record holds
    // every query and request.
    std::thread::sleep(Duration::from_millis(4000));
    interrupt(&mut dns);
    interrupt(&mut edge);

    // The real distributor ships each role's complete files with its certificate.
    for (role, logs) in [("dns", &dns_logs), ("edge", &edge_logs)] {
        let out = Command::new(UDN)
            .args(["distribute", "--drain", "--collector", &collector])
            .arg("--dir")
            .arg(logs)
            .arg("--pki")
            .arg(log_util::role_pki(&data, role))
            .output()
            .expect("udn distribute");
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let portal_http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let token = |user: &str, password: &str| -> String {
        let v: serde_json::Value = portal_http
            .post(format!("{portal}/v1/auth/token"))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["token"].as_str().expect("token").to_string()
    };
    let admin = token("admin", "correct-horse");
    // The last hour and the running minute (without `to`, a range ends at the last
    // complete minute; the records are this minute's).
    let now = jiff::Timestamp::now();
    let rfc = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let range = format!(
        "from={}&to={}",
        rfc(now.as_millisecond() - 3_600_000),
        rfc(now.as_millisecond() + 120_000)
    );
    // Polls `/v1/ops?role=ROLE` until `metric` has reached `want` (ingest runs in the
    // background), for at most 20 s.
    let ops = |role: &str, metric: &str, want: i64| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v: serde_json::Value = http
                .get(format!("{api}/v1/ops?role={role}&{range}"))
                .bearer_auth(&admin)
                .send()
                .unwrap()
                .json()
                .unwrap();
            if counter(&v["points"], metric).0 >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let v = ops("dns", "udn_dns_queries_total", QUERIES as i64);
    assert_eq!(
        counter(&v["points"], "udn_dns_queries_total"),
        (QUERIES as i64, vec!["test-dns".to_string()]),
        "{v}"
    );
    assert!(
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["role"] == "dns"),
        "role=dns holds only DNS servers' records: {v}"
    );
    let v = ops("edge", "udn_edge_requests_total", REQUESTS as i64);
    assert_eq!(
        counter(&v["points"], "udn_edge_requests_total"),
        (REQUESTS as i64, vec!["test-edge".to_string()]),
        "{v}"
    );
    // CSV: one line per bucket, instance and metric.
    let csv = http
        .get(format!("{api}/v1/ops?role=dns&{range}&format=csv"))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        csv.starts_with("time,role,instance,metric,kind,sum,max,samples"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.contains(",dns,test-dns,") && l.contains("udn_dns_queries_total")),
        "{csv}"
    );
    // A role that is not one is a 400 naming the parameter.
    let r = http
        .get(format!("{api}/v1/ops?role=billing"))
        .bearer_auth(&admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("role"));

    // The Operations page shows both roles' instances and metrics. (A logged-in
    // browser: the session cookie, and the CSRF token its changes carry.)
    let browser = |user: &str, password: &str| {
        let c = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .cookie_store(true)
            .build()
            .unwrap();
        let r = c
            .post(format!("{portal}/v1/auth/login"))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "login {user}");
        let v: serde_json::Value = r.json().unwrap();
        (c, v["csrf"].as_str().expect("csrf").to_string())
    };
    let (admin_browser, csrf) = browser("admin", "correct-horse");
    let page = admin_browser
        .get(format!("{portal}/ops?{range}"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    let dns_table = &html[html.find("id=\"ops-dns-metrics\"").expect("DNS table")..];
    assert!(
        dns_table.contains("test-dns") && dns_table.contains("udn_dns_queries_total"),
        "{html}"
    );
    assert!(html.contains("id=\"ops-edge-metrics\""), "{html}");
    assert!(html.contains("<svg"), "a chart: {html}");

    // A customer sees neither.
    let password = "a-long-enough-password-1";
    let r = admin_browser
        .post(format!("{portal}/v1/users"))
        .header("x-csrf-token", &csrf)
        .json(
            &serde_json::json!({"username": "shopops", "password": password,
                                  "role": "customer", "customer": "shop"}),
        )
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    let customer = token("shopops", password);
    let r = http
        .get(format!("{api}/v1/ops?hours=1"))
        .bearer_auth(&customer)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let page = browser("shopops", password)
        .0
        .get(format!("{portal}/ops"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 403);
}
