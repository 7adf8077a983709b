//! Who may ship logs, tried from the attacker's side against the real `udn control`:
//! the collector takes files only from enrolled, unrevoked instances (mutual TLS), only
//! the records of the sender's role, only HTTP records of a hostname the configuration
//! gives to the customer the record names, and no count that could overflow a sum.
//! Each refusal leaves the store's rows and the customers' usage as they were.

use crate::log_util;

use log_util::*;
use std::path::Path;
use std::time::{Duration, Instant};
use udn_bins::collector::sha256_hex;
use udn_core::Timestamp;
use udn_core::log::{HttpRecord, LogRecord, ProbeRecord};

/// A file header of the test instance of `role` (`test-<role>`, the name its
/// certificate has: the collector takes only an instance's own files).
fn header(role: &str, id: &str) -> String {
    header_of(role, &format!("test-{role}"), id)
}

fn header_of(role: &str, instance: &str, id: &str) -> String {
    format!(
        "{{\"magic\":\"udn-log\",\"version\":1,\"file_id\":\"{id}\",\"role\":\"{role}\",\"instance\":\"{instance}\",\"opened_at\":0}}\n"
    )
}

fn http(customer: &str, host: &str, path: &str, bytes: u64) -> LogRecord {
    LogRecord::Http(HttpRecord {
        ts: Timestamp::from_secs(1_800_000_000),
        customer: Some(customer.into()),
        host: host.into(),
        path: path.into(),
        method: "GET".into(),
        status: 200,
        bytes,
        fill_bytes: 0,
        outcome: "hit".into(),
        duration_us: 10,
        client: "127.0.0.1".parse().unwrap(),
        pop: "fra".into(),
    })
}

fn file(role: &str, id: &str, records: &[LogRecord]) -> Vec<u8> {
    let mut s = header(role, id);
    for r in records {
        s.push_str(&r.to_line());
        s.push('\n');
    }
    s.into_bytes()
}

/// A well-formed edge file billing 1,000,000 bytes to "shop".
fn shop_file(id: &str) -> Vec<u8> {
    file(
        "edge",
        id,
        &[http("shop", "www.shop.udn.example", "/big", 1_000_000)],
    )
}

fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &[u8],
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let r = client
        .post(format!("{url}/v1/logs"))
        .header("X-Udn-Sha256", sha256_hex(body))
        .header("X-Udn-File-Name", "t.jsonl")
        .body(body.to_vec())
        .send()?;
    let status = r.status().as_u16();
    let v = serde_json::from_slice(&r.bytes().unwrap_or_default()).unwrap_or_default();
    Ok((status, v))
}

/// (raw HTTP rows, ledger files, bytes billed per customer as "customer=bytes,...").
fn usage(data: &Path) -> (i64, i64, String) {
    let mut store = Backend::Sqlite.open(data);
    let c = store.counts().unwrap();
    let rows = store
        .select(
            "SELECT customer, CAST(SUM(bytes) AS BIGINT) FROM rollup_http GROUP BY customer ORDER BY customer",
            &[],
        )
        .unwrap();
    let per: Vec<String> = rows
        .iter()
        .map(|r| format!("{:?}={:?}", r[0], r[1]))
        .collect();
    (c.http, c.files, per.join(","))
}

#[test]
fn strangers_without_an_instance_certificate_are_refused() {
    let tmp = TempDir::new("trust-stranger");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let before = usage(&data);

    // No client certificate at all (the server's certificate accepted blindly).
    udn_bins::install_crypto();
    let anon = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let (status, v) = post(&anon, &url, &shop_file("stranger-1")).unwrap();
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("enrolled"), "{v}");

    // A certificate naming an edge, issued by another CA (a stranger's own).
    let other = tmp.path().join("other-ca");
    let forged = enroll(&other, "edge", "fra");
    let fake = client_with(&forged);
    // Its client trusts only its own CA: give it the real collector's CA instead, so
    // the refusal below is the collector's, not the client's.
    let real_ca = std::fs::read(data.join("pki/ca.pem")).unwrap();
    std::fs::write(forged.join("ca.pem"), &real_ca).unwrap();
    let fake2 = client_with(&forged);
    drop(fake);
    match post(&fake2, &url, &shop_file("stranger-2")) {
        Err(e) => eprintln!("forged certificate: connection refused as expected: {e}"),
        Ok((status, v)) => panic!("a certificate of another CA was answered {status}: {v}"),
    }

    // The real edge's file goes in (the check is not refusing everything) ...
    let edge = role_client(&data, "edge");
    let (status, v) = post(&edge, &url, &shop_file("real-1")).unwrap();
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("inserted")),
        "{v}"
    );
    drop(control);
    // ... and only it: one file, one row, 1,000,000 bytes for shop.
    let after = usage(&data);
    assert_eq!(before.0, 0);
    assert_eq!(after.0, 1, "{after:?}");
    assert_eq!(after.1, 1, "{after:?}");
    assert_eq!(after.2, "Text(\"shop\")=Int(1000000)", "{after:?}");
}

#[test]
fn an_instance_may_ship_only_its_own_roles_records() {
    let tmp = TempDir::new("trust-role");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let probe = role_client(&data, "probe");

    // A probe ships an edge file.
    let (status, v) = post(&probe, &url, &shop_file("p-edge")).unwrap();
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("a probe instance may ship only probe logs"),
        "{v}"
    );
    // A probe file with an HTTP record smuggled in.
    let probe_rec = LogRecord::Probe(ProbeRecord {
        ts: Timestamp::from_secs(1_800_000_000),
        pop: "fra".into(),
        kind: "latency".into(),
        target: "x".into(),
        method: "dns".into(),
        ok: true,
        value: 1.0,
        detail: String::new(),
    });
    let smuggled = file(
        "probe",
        "p-mixed",
        &[
            probe_rec.clone(),
            http("shop", "www.shop.udn.example", "/x", 5),
        ],
    );
    let (status, v) = post(&probe, &url, &smuggled).unwrap();
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("line 3: an HTTP record"),
        "{v}"
    );
    // Another probe instance's file (its header names `nyc`), shipped by `test-probe`.
    let mut other = header_of("probe", "nyc", "p-other");
    other.push_str(&probe_rec.to_line());
    other.push('\n');
    let (status, v) = post(&probe, &url, other.as_bytes()).unwrap();
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("may ship only its own logs"),
        "{v}"
    );
    // Its own records are taken.
    let (status, v) = post(&probe, &url, &file("probe", "p-own", &[probe_rec])).unwrap();
    assert_eq!((status, v["rows"].as_u64()), (200, Some(1)), "{v}");
    drop(control);
    let (http_rows, files, per) = usage(&data);
    assert_eq!((http_rows, files, per.as_str()), (0, 1, ""));
}

#[test]
fn a_revoked_edge_is_refused_within_seconds() {
    let tmp = TempDir::new("trust-revoke");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let edge = role_client(&data, "edge");
    let (status, v) = post(&edge, &url, &shop_file("r-1")).unwrap();
    assert_eq!(status, 200, "{v}");

    let out = std::process::Command::new(UDN)
        .args(["control", "revoke", "test-edge", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    // The same client (its kept-alive connection) and a fresh one are both refused.
    let fresh = role_client(&data, "edge");
    let mut n = 0;
    loop {
        n += 1;
        let a = post(&edge, &url, &shop_file(&format!("r-a{n}")));
        let b = post(&fresh, &url, &shop_file(&format!("r-b{n}")));
        let refused = |r: &Result<(u16, serde_json::Value), reqwest::Error>| match r {
            Ok((s, _)) => *s == 401,
            Err(_) => true,
        };
        if refused(&a) && refused(&b) {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still accepted 5 s after the revocation: {a:?} {b:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "refused {:?} after udn control revoke",
        revoked_at.elapsed()
    );
    // Whatever slipped in before the list was reread, nothing after: wait, try again.
    std::thread::sleep(Duration::from_millis(500));
    let before = usage(&data);
    let r = post(&fresh, &url, &shop_file("r-late"));
    assert!(!matches!(r, Ok((200, _))), "{r:?}");
    drop(control);
    assert_eq!(usage(&data), before);
}

#[test]
fn http_records_of_a_hostname_not_owned_by_the_customer_are_quarantined() {
    let tmp = TempDir::new("trust-owner");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let edge = role_client(&data, "edge");
    let body = file(
        "edge",
        "o-1",
        &[
            http("shop", "www.shop.udn.example:8080", "/ok", 700),
            // shop's hostname billed to another customer.
            http("acme", "www.shop.udn.example", "/theirs", 1_000_000_000),
            // A hostname nobody owns.
            http("shop", "evil.example", "/nobody", 2_000_000_000),
        ],
    );
    let (status, v) = post(&edge, &url, &body).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"], 1, "{v}");
    assert_eq!(v["quarantined_records"], 2, "{v}");
    let q = Path::new(v["quarantined"].as_str().unwrap());
    let kept = std::fs::read_to_string(q).unwrap();
    assert!(
        kept.contains("/theirs") && kept.contains("/nobody") && !kept.contains("/ok"),
        "{kept}"
    );
    let reason = std::fs::read_to_string(format!("{}.reason", q.display())).unwrap();
    assert!(
        reason.contains("belongs to customer \"shop\", the record names Some(\"acme\")"),
        "{reason}"
    );
    assert!(
        reason.contains("\"evil.example\" is not in the configuration (owned by nobody)"),
        "{reason}"
    );
    drop(control);
    let (http_rows, _, per) = usage(&data);
    assert_eq!(http_rows, 1);
    assert_eq!(per, "Text(\"shop\")=Int(700)");
}

#[test]
fn counts_that_could_overflow_a_sum_are_refused() {
    let tmp = TempDir::new("trust-range");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let edge = role_client(&data, "edge");
    let body = file(
        "edge",
        "big-1",
        &[
            http("shop", "www.shop.udn.example", "/a", 10),
            http("shop", "www.shop.udn.example", "/b", u64::MAX - 5),
        ],
    );
    let (status, v) = post(&edge, &url, &body).unwrap();
    assert_eq!(status, 422, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("line 3: bytes = 18446744073709551610 is out of range"),
        "{err}"
    );
    drop(control);
    assert_eq!(usage(&data), (0, 0, String::new()));
}

#[test]
fn collector_counts_and_metrics_are_for_the_control_role_only() {
    let tmp = TempDir::new("trust-counts");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let edge = role_client(&data, "edge");
    let (status, v) = post(&edge, &url, &shop_file("c-1")).unwrap();
    assert_eq!(status, 200, "{v}");
    for path in ["/metrics", "/v1/logs/counts"] {
        let r = edge.get(format!("{url}{path}")).send().unwrap();
        assert_eq!(r.status(), 403, "an edge reads {path}");
        let body = r.text().unwrap();
        assert!(
            !body.contains("udn_collector") && !body.contains("ledger_rows"),
            "{body}"
        );
    }
    let op = role_client(&data, "control");
    let m = op.get(format!("{url}/metrics")).send().unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.text().unwrap().contains("udn_collector_files_total"));
    let c: serde_json::Value = op
        .get(format!("{url}/v1/logs/counts"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(c["files"], 1, "{c}");
}

/// An operational record with `n` metrics named `prefix{i}`, each of `value`.
fn ops(prefix: &str, n: usize, value: f64) -> LogRecord {
    LogRecord::Ops(udn_core::log::OpsRecord {
        ts: Timestamp::from_secs(1_800_000_000),
        metrics: (0..n)
            .map(|i| udn_core::log::OpsMetric {
                name: format!("{prefix}{i}"),
                kind: udn_core::log::OpsKind::Counter,
                value,
            })
            .collect(),
    })
}

#[test]
fn operational_records_are_bounded_and_only_the_roles_own() {
    let tmp = TempDir::new("trust-ops");
    let data = tmp.path().join("data");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let url = control.url();
    let dns = role_client(&data, "dns");
    // Too many metrics in one record, a value that could overflow a year's sum, a
    // name that is not one: each refused whole, naming the line.
    for (id, rec, want) in [
        ("o-1", ops("udn_dns_x", 300, 1.0), "300 metrics"),
        ("o-2", ops("udn_dns_x", 1, 1e300), "line 2"),
        ("o-3", ops("<script>", 1, 1.0), "line 2"),
    ] {
        let (status, v) = post(&dns, &url, &file("dns", id, &[rec])).unwrap();
        assert_eq!(status, 422, "{id}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{id}: {v}");
    }
    // The control plane's own instances write no logs, operational ones included.
    let op = role_client(&data, "control");
    let (status, v) = post(&op, &url, &file("control", "o-4", &[ops("m", 1, 1.0)])).unwrap();
    assert_eq!(status, 403, "{v}");
    drop(control);
    let mut store = Backend::Sqlite.open(&data);
    let rows = store
        .select("SELECT COUNT(*) FROM rollup_ops", &[])
        .unwrap();
    assert_eq!(
        rows[0][0],
        udn_bins::store::Cell::Int(0),
        "nothing of them was stored"
    );
}
