//! The real `udn probe` against real origin HTTP servers on loopback, reporting to a
//! real HTTP receiver standing in for the DNS servers' API (`udn dns` is built in
//! parallel). The received metrics are replayed into the real decision engine
//! (`udn_core::Engine`): a failing origin goes down after the failure threshold and the
//! GTM answer moves to the other site, the hidden standby only when both are down, and
//! the origin comes back after the success threshold; a single lost check does not flap.

use crate::pki_support;
use crate::probe_common;

use probe_common::{Receiver, Resource, Udn, free_port, http, serve_site, temp_dir, wait_for};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use udn_core::{Config, Engine, Family, Health, Metric, Query, Timestamp};

fn config(port: u16) -> String {
    format!(
        r#"
# The test origins run on loopback, which customer destinations may not reach by
# default.
[security]
allow_target_ranges = ["127.0.0.0/8"]

[health]
up_after = 2
down_after = 3
grace_secs = 30

[[dns.zones]]
apex = "udn.example"
ns = ["ns1.udn.example"]

[[services]]
name = "http"
kind = "http"
port = {port}
path = "/health"
expect_content = "ok"
interval_secs = 1
timeout_ms = 500

[[pops]]
name = "fra"
location = {{ lat = 50.11, lon = 8.68 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.41"] }}]

[[origins]]
name = "shop-east"
pop = "fra"
servers = [{{ name = "shop-east-1", addresses = ["127.0.0.31"] }}]

[[origins]]
name = "shop-west"
pop = "fra"
servers = [{{ name = "shop-west-1", addresses = ["127.0.0.32"] }}]

[[customers]]
name = "shop"

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
standby = ["127.0.0.39"]
targets = [{{ server = "shop-east-1" }}, {{ server = "shop-west-1" }}]
"#
    )
}

fn health(body: &str, status: u16) -> Resource {
    Resource {
        status,
        body: body.as_bytes().to_vec(),
        head_delay: Duration::ZERO,
        split_at: 0,
        split_delay: Duration::ZERO,
    }
}

fn origin(ip: &str, port: u16) -> Arc<Mutex<HashMap<String, Resource>>> {
    let site = Arc::new(Mutex::new(HashMap::from([(
        "/health".to_string(),
        health("ok", 200),
    )])));
    serve_site(&format!("{ip}:{port}"), site.clone());
    site
}

/// Replays the received metrics into a fresh engine; returns it and the health
/// transitions of each server, in order.
fn replay(cfg: &Config, metrics: &[Metric]) -> (Engine, HashMap<String, Vec<Health>>) {
    let mut engine = Engine::new(Arc::new(cfg.compile().unwrap()));
    let mut transitions: HashMap<String, Vec<Health>> = HashMap::new();
    for m in metrics {
        if let Ok(Some(h)) = engine.apply(m)
            && let Metric::Service { server, .. } = m
        {
            let t = transitions.entry(server.clone()).or_default();
            if t.last() != Some(&h) {
                t.push(h);
            }
        }
    }
    (engine, transitions)
}

fn answer(engine: &Engine, at: Timestamp) -> Vec<IpAddr> {
    let net = engine.network().clone();
    let q = Query {
        host: net.host_id("www.shop.udn.example").unwrap(),
        client: "192.0.2.1".parse().unwrap(),
        ecs: None,
        family: Family::V4,
        seed: 7,
    };
    engine.decide(&q, at).addrs.as_slice().to_vec()
}

fn results(metrics: &[Metric], who: &str) -> Vec<bool> {
    metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Service { server, sample, .. } if server == who => Some(sample.ok),
            _ => None,
        })
        .collect()
}

fn now() -> Timestamp {
    udn_bins::logging::now()
}

#[test]
fn failing_origin_goes_down_after_threshold_and_comes_back() {
    let port = free_port("127.0.0.31");
    let east = origin("127.0.0.31", port);
    let west = origin("127.0.0.32", port);
    let text = config(port);
    let cfg = Config::from_toml(&text).unwrap();
    let dir = temp_dir("probe-service");
    std::fs::write(dir.join("net.toml"), &text).unwrap();
    let recv = Receiver::default();
    let raddr = recv.serve("127.0.0.1:0");
    // A second DNS server that is down: the probe must keep going, retry it with
    // backoff and drop the oldest metrics once its bounded queue is full.
    let down = format!("http://127.0.0.1:{}", free_port("127.0.0.1"));
    let logs = dir.join("logs");
    let probe = Udn::probe(&[
        "--config",
        dir.join("net.toml").to_str().unwrap(),
        "--pop",
        "fra",
        "--dns-http",
        &format!("http://{raddr}"),
        "--dns-http",
        &down,
        "--latency-methods",
        "dns",
        "--load-interval-secs",
        "1",
        // This probe shares fra-edge-1's host: it reports that server's load.
        "--load-server",
        "fra-edge-1",
        "--queue-capacity",
        "20",
        "--log-dir",
        logs.to_str().unwrap(),
        "--log-max-age-secs",
        "2",
    ]);
    let up = |who: &str| {
        wait_for(Duration::from_secs(10), || {
            let (_, t) = replay(&cfg, &recv.metrics());
            (t.get(who).and_then(|v| v.last()) == Some(&Health::Up)).then_some(())
        })
    };
    up("shop-east-1").expect("east comes up");
    up("shop-west-1").expect("west comes up");

    // One lost check: no flap.
    let before = results(&recv.metrics(), "shop-east-1").len();
    east.lock()
        .unwrap()
        .insert("/health".into(), health("down", 503));
    wait_for(Duration::from_secs(5), || {
        results(&recv.metrics(), "shop-east-1")[before..]
            .contains(&false)
            .then_some(())
    })
    .expect("the failed check is reported");
    east.lock()
        .unwrap()
        .insert("/health".into(), health("ok", 200));
    let n = results(&recv.metrics(), "shop-east-1").len();
    wait_for(Duration::from_secs(5), || {
        (results(&recv.metrics(), "shop-east-1").len() >= n + 2).then_some(())
    })
    .expect("checks continue");
    let (_, t) = replay(&cfg, &recv.metrics());
    assert_eq!(
        t["shop-east-1"],
        vec![Health::Up],
        "a single lost check must not flap"
    );

    // East fails: down within interval x failure threshold + 1 s; the answer moves west.
    east.lock()
        .unwrap()
        .insert("/health".into(), health("maintenance", 200));
    let t0 = Instant::now();
    wait_for(Duration::from_secs(10), || {
        let (_, t) = replay(&cfg, &recv.metrics());
        (t["shop-east-1"].last() == Some(&Health::Down)).then_some(())
    })
    .expect("east goes down");
    let took = t0.elapsed();
    eprintln!("east down after {took:?} (limit 1 s x 3 + 1 s)");
    assert!(took <= Duration::from_secs(4), "took {took:?}");
    let (engine, _) = replay(&cfg, &recv.metrics());
    assert_eq!(
        answer(&engine, now()),
        vec!["127.0.0.32".parse::<IpAddr>().unwrap()]
    );
    let east_results = results(&recv.metrics(), "shop-east-1");
    assert!(
        east_results.ends_with(&[false, false, false]),
        "down after three consecutive failures: {east_results:?}"
    );

    // Both down: the hidden standby.
    west.lock()
        .unwrap()
        .insert("/health".into(), health("gone", 404));
    wait_for(Duration::from_secs(10), || {
        let (engine, _) = replay(&cfg, &recv.metrics());
        (answer(&engine, now()) == vec!["127.0.0.39".parse::<IpAddr>().unwrap()]).then_some(())
    })
    .expect("standby only when both are down");

    // East comes back after two consecutive successes.
    east.lock()
        .unwrap()
        .insert("/health".into(), health("ok", 200));
    let mark = results(&recv.metrics(), "shop-east-1").len();
    wait_for(Duration::from_secs(10), || {
        let (_, t) = replay(&cfg, &recv.metrics());
        (t["shop-east-1"].last() == Some(&Health::Up)).then_some(())
    })
    .expect("east comes back");
    let after: Vec<bool> = results(&recv.metrics(), "shop-east-1")[mark..].to_vec();
    let (engine, _) = replay(&cfg, &recv.metrics());
    // Up at the second success: replaying only up to the first success still says down.
    let first_ok = after.iter().position(|ok| *ok).unwrap();
    let upto: Vec<Metric> = {
        let all = recv.metrics();
        let mut seen = 0;
        let mut cut = all.len();
        for (i, m) in all.iter().enumerate() {
            if let Metric::Service { server, .. } = m
                && server == "shop-east-1"
            {
                if seen == mark + first_ok {
                    cut = i + 1;
                    break;
                }
                seen += 1;
            }
        }
        all[..cut].to_vec()
    };
    let (_, t) = replay(&cfg, &upto);
    assert_eq!(
        t["shop-east-1"].last(),
        Some(&Health::Down),
        "one success is not enough"
    );
    assert_eq!(
        answer(&engine, now()),
        vec!["127.0.0.31".parse::<IpAddr>().unwrap()]
    );

    // The agent's own view agrees, and its queues show the down DNS server.
    let (s, body) = http("GET", probe.http, "/v1/status", "");
    assert_eq!(s, 200);
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    let svc = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == "shop-west-1")
        .unwrap();
    assert_eq!(svc["state"], "down");
    let queues = st["queues"].as_array().unwrap();
    assert!(queues[0]["sent"].as_u64().unwrap() > 0);
    assert!(queues[1]["failures"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(queues[1]["sent"], 0);
    assert!(
        queues[1]["queued"].as_u64().unwrap() <= 20,
        "bounded queue: {body}"
    );
    assert!(
        queues[1]["dropped"].as_u64().unwrap() > 0,
        "oldest dropped: {body}"
    );
    assert!(
        recv.metrics().iter().any(
            |m| matches!(m, Metric::Load { server, percent, parts: Some(p), .. }
            if server == "fra-edge-1" && (0.0..=100.0).contains(percent)
                && [p.cpu, p.memory, p.swap, p.disk].iter().all(|x| (0.0..=100.0).contains(x)))
        ),
        "LOADP reported with its four figures"
    );
    assert!(
        !recv
            .metrics()
            .iter()
            .any(|m| matches!(m, Metric::Load { server, .. } if server != "fra-edge-1")),
        "the probe's host load is reported only for the server on its host"
    );

    // Without --pki the API is read-only: a page check (the probe fetching a URL for
    // the caller) is refused with the reason (tests/probe_api_trust.rs runs one as the
    // control plane over the admin listener).
    let (s, body) = http(
        "POST",
        probe.http,
        "/v1/pagecheck",
        &format!(r#"{{"url":"http://127.0.0.31:{port}/health","repeat":true}}"#),
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("--pki"), "{body}");

    let (s, body) = http("GET", probe.http, "/metrics", "");
    assert_eq!(s, 200);
    assert!(body.contains("udn_probe_service_checks_total"), "{body}");
    assert!(body.contains("udn_probe_report_dropped_total"), "{body}");

    // Every result is in the probe log.
    probe.terminate();
    let mut kinds = HashMap::<String, usize>::new();
    for e in std::fs::read_dir(&logs).unwrap() {
        let p = e.unwrap().path();
        assert!(
            p.to_string_lossy().ends_with(".jsonl"),
            "completed at shutdown: {p:?}"
        );
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines().skip(1) {
            if let udn_core::log::LogRecord::Probe(r) =
                udn_core::log::LogRecord::from_line(line).unwrap()
            {
                assert_eq!(r.pop, "fra");
                *kinds.entry(r.kind).or_default() += 1;
            }
        }
    }
    let service_metrics = recv
        .metrics()
        .iter()
        .filter(|m| matches!(m, Metric::Service { .. }))
        .count();
    assert!(
        kinds["service"] >= service_metrics,
        "{kinds:?} vs {service_metrics}"
    );
    // The refused page check ran nothing, so logged nothing.
    assert!(
        kinds["load"] > 0 && !kinds.contains_key("pagecheck"),
        "{kinds:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_service_tests() {
    let port = free_port("127.0.0.31");
    let _east = origin("127.0.0.31", port);
    let _west = origin("127.0.0.32", port);
    let dir = temp_dir("probe-reload");
    let path = dir.join("net.toml");
    // First config: a path the origins do not serve, so every test fails.
    std::fs::write(&path, config(port).replace("/health", "/missing")).unwrap();
    let recv = Receiver::default();
    let raddr = recv.serve("127.0.0.1:0");
    let probe = Udn::probe(&[
        "--config",
        path.to_str().unwrap(),
        "--pop",
        "fra",
        "--dns-http",
        &format!("http://{raddr}"),
        "--latency-methods",
        "dns",
    ]);
    wait_for(Duration::from_secs(10), || {
        results(&recv.metrics(), "shop-east-1")
            .contains(&false)
            .then_some(())
    })
    .expect("failing tests reported");
    // A broken file is refused; the running tests go on.
    std::fs::write(&path, "this is [not toml").unwrap();
    probe.signal("HUP");
    let n = results(&recv.metrics(), "shop-east-1").len();
    wait_for(Duration::from_secs(10), || {
        (results(&recv.metrics(), "shop-east-1").len() >= n + 2).then_some(())
    })
    .expect("still testing after a bad reload");
    assert!(!results(&recv.metrics(), "shop-east-1")[n..].contains(&true));
    // The fixed config takes effect on SIGHUP.
    std::fs::write(&path, config(port)).unwrap();
    probe.signal("HUP");
    wait_for(Duration::from_secs(10), || {
        results(&recv.metrics(), "shop-east-1")[n..]
            .contains(&true)
            .then_some(())
    })
    .expect("passing after the reload");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network whose only customer destinations are names (a CDN hostname over POP
/// servers, which are the operator's own), with `allow` as its `[security]` section.
fn names_only_config(allow: &str) -> String {
    format!(
        r#"
{allow}
[[services]]
name = "http"
path = "/health"
interval_secs = 5
[[pops]]
name = "fra"
location = {{ lat = 50.11, lon = 8.68 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.41"] }}]
[[customers]]
name = "shop"
[[cdn]]
hostname = "cdn.shop.udn.example"
customer = "shop"
origins = ["www.shop.udn.example"]
"#
    )
}

/// A page check asked of the probe's admin listener as the control plane (mutual TLS).
fn page_check(probe: std::net::SocketAddr, body: &str) -> serde_json::Value {
    let r = pki_support::reqwest_blocking(&pki_support::ids().control)
        .post(format!("https://{probe}/v1/pagecheck"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    let s = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(s, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// From the attacker's side: a page check of a name that resolves into the provider's
/// network (`localhost`, where a real server holds a secret) is refused after
/// resolution and never reaches the server; a component on another host is skipped
/// as refused unless the request lists it in `allow_hosts`. The same checks with the
/// operator's allow list fetch the page, so the refusal is the policy's.
#[test]
fn page_checks_refuse_the_providers_network_and_foreign_components() {
    let site: probe_common::Site = Arc::new(Mutex::new(HashMap::new()));
    let addr = serve_site("127.0.0.1:0", site.clone());
    let port = addr.port();
    let page = format!(
        r#"<html><body><img src="/own.gif"><img src="http://127.0.0.1:{port}/other.gif"></body></html>"#
    );
    {
        let mut s = site.lock().unwrap();
        s.insert("/secret".into(), health("top secret", 200));
        s.insert("/page".into(), health(&page, 200));
        s.insert("/own.gif".into(), health("gif", 200));
        s.insert("/other.gif".into(), health("gif2", 200));
    }
    let dir = temp_dir("probe-ssrf");
    let path = dir.join("net.toml");
    let secret = format!(r#"{{"url":"http://localhost:{port}/secret"}}"#);

    std::fs::write(&path, names_only_config("")).unwrap();
    let probe = Udn::probe(&[
        "--config",
        path.to_str().unwrap(),
        "--pop",
        "fra",
        "--pki",
        pki_support::ids().probe.to_str().unwrap(),
    ]);
    let pc = page_check(probe.http, &secret);
    let row = &pc["reports"][0]["rows"][0];
    assert_eq!(row["err"], 7, "refused: {pc}");
    assert_eq!(row["len"], 0, "{pc}");
    assert!(row["hrc"].is_null() || row["hrc"] == 0, "{pc}");
    drop(probe);

    let allow = r#"[security]
allow_target_ranges = ["127.0.0.0/8"]"#;
    std::fs::write(&path, names_only_config(allow)).unwrap();
    let probe = Udn::probe(&[
        "--config",
        path.to_str().unwrap(),
        "--pop",
        "fra",
        "--pki",
        pki_support::ids().probe.to_str().unwrap(),
    ]);
    let pc = page_check(probe.http, &secret);
    let row = &pc["reports"][0]["rows"][0];
    assert_eq!(
        (row["err"].clone(), row["hrc"].clone()),
        (0.into(), 200.into()),
        "{pc}"
    );
    assert_eq!(row["len"], 10, "the secret's length: {pc}");

    // Components: only the page's host unless listed.
    let url = format!("http://localhost:{port}/page");
    let pc = page_check(probe.http, &format!(r#"{{"url":"{url}"}}"#));
    let rows = pc["reports"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{pc}");
    let by_url = |u: &str| {
        rows.iter()
            .find(|r| r["url"].as_str().is_some_and(|x| x.ends_with(u)))
            .unwrap_or_else(|| panic!("{u} in {pc}"))
            .clone()
    };
    assert_eq!(by_url("/own.gif")["hrc"], 200, "{pc}");
    let other = by_url("/other.gif");
    assert_eq!(other["err"], 7, "{pc}");
    assert_eq!(other["len"], 0, "{pc}");
    let pc = page_check(
        probe.http,
        &format!(r#"{{"url":"{url}","allow_hosts":["127.0.0.1"]}}"#),
    );
    let rows = pc["reports"][0]["rows"].as_array().unwrap();
    assert!(
        rows.iter().all(|r| r["err"] == 0 && r["hrc"] == 200),
        "listed host fetched: {pc}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
