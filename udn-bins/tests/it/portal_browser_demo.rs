//! The portal in a real headless Chromium against a running `udn demo --traffic` (the
//! real binary with its real edges, probes, DNS servers, log store and background
//! traffic): log in through the form as the demo customer `shop`, see the domains table
//! with the demo's hostnames, purge a URL and see it applied on the three edges (and a
//! real HTTP client's next fetch through each edge miss after it hit), wait until the
//! background traffic has gone edge/DNS -> log file -> distributor -> collector -> store
//! and open every chart page with those numbers, run a page check on the demo's probes,
//! and fail to reach a second customer's objects (added over the REST API as admin).
//! Screenshots of each page go to `target/screenshots/demo-*.png`.
//!
//! The demo binds fixed loopback addresses, so this file holds one test and must not run
//! alongside another demo. Needs chromium, chromedriver, dig and curl: without them the
//! test says so and returns, except in CI (`CI=true`) where it fails. Every wait is a
//! poll with a deadline; no sleep is an assertion.

use crate::browser_support;

use browser_support::*;
use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use std::future::Future;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use udn_bins::demo::{API_PORT, CONTROL, DRILL, HTTP_PORT, LOGINS, PORTAL_PORT, PROBE_PORT};

/// The purged object: one the background traffic never asks for, so nothing but this
/// test fills it again between the purge and the check.
const PURGED_PATH: &str = "/gen/3071";
const CDN_HOST: &str = "cdn.shop.udn.example";
const GTM_HOST: &str = "www.shop.udn.example";
/// The edges of the sample network: POP, edge address.
const EDGES: [(&str, &str); 3] = [
    ("fra", "127.0.0.11"),
    ("nyc", "127.0.0.12"),
    ("sin", "127.0.0.13"),
];
/// Log files complete after 10 s (`RotationPolicy::default`), the distributors poll
/// every 0.5 s, and the charts end at the last complete minute: data show within about
/// 75 s of the first request. The bound leaves slack for a loaded 2-core machine.
const DATA_BOUND: Duration = Duration::from_secs(120);

fn ip4(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn portal() -> String {
    format!("https://{}:{PORTAL_PORT}", ip4(CONTROL.0))
}

fn api() -> String {
    format!("http://{}:{API_PORT}", ip4(CONTROL.0))
}

/// A running `udn demo`, in its own process group: SIGTERM on drop (SIGKILL if it has
/// not stopped within 20 s).
struct Demo {
    child: Child,
    dir: PathBuf,
    /// This test's turn at the demo's fixed addresses (released after the demo stopped).
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Demo {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        None
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fixed TCP addresses the demo binds (portal, API, collector, drill API, edges,
/// origins, probes, DNS servers' HTTP APIs).
fn demo_tcp_addresses() -> Vec<String> {
    let c = ip4(CONTROL.0);
    let mut v = vec![
        format!("{c}:{PORTAL_PORT}"),
        format!("{c}:{API_PORT}"),
        format!("{c}:{}", CONTROL.1),
        format!("{}:{}", ip4(DRILL.0), DRILL.1),
    ];
    for (_, ip) in EDGES {
        v.push(format!("{ip}:{HTTP_PORT}"));
        v.push(format!("{ip}:{PROBE_PORT}"));
    }
    for ip in ["127.0.0.21", "127.0.0.22"] {
        v.push(format!("{ip}:{HTTP_PORT}"));
    }
    for (_, ip, _, http) in udn_bins::demo::DNS_SERVERS {
        v.push(format!("{}:{http}", ip4(ip)));
    }
    v
}

fn start_demo(dir: &Path) -> Demo {
    let turn = crate::ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    for a in demo_tcp_addresses() {
        if let Err(e) = std::net::TcpListener::bind(&a) {
            panic!(
                "cannot start `udn demo`: its address {a} is taken ({e}); is another demo \
                 (or its test, udn-bins/tests/it/demo.rs) running? Stop it and run again."
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["demo", "--state-dir", dir.to_str().unwrap(), "--traffic"])
        .process_group(0)
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .expect("start udn demo");
    Demo {
        child,
        dir: dir.to_path_buf(),
        _turn: turn,
    }
}

/// Polls `f` every 250 ms until it answers or `within` has passed.
async fn poll<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Fut,
) -> (T, Duration) {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, t.elapsed());
        }
        assert!(t.elapsed() < within, "timed out after {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `X-Cache` of a GET of the CDN hostname's `path` through the edge at `ip`, by curl.
fn x_cache(ip: &str, path: &str) -> String {
    let url = format!("http://{CDN_HOST}:{HTTP_PORT}{path}");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "10"])
        .args(["--resolve", &format!("{CDN_HOST}:{HTTP_PORT}:{ip}"), &url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-cache")
                .then(|| v.trim().to_ascii_uppercase())
        })
        .unwrap_or_default()
}

/// `dig +short` of the GTM hostname at the first DNS server, from `src`.
fn dig_gtm(src: &str) -> String {
    let (_, dns, port, _) = udn_bins::demo::DNS_SERVERS[0];
    let out = Command::new("dig")
        .args(["+short", "+time=2", "+tries=1", "-b", src])
        .arg(format!("@{}", ip4(dns)))
        .args(["-p", &port.to_string(), GTM_HOST])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn type_into(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The rows of the table `css` (cells' text), header excluded.
async fn rows(c: &Client, css: &str) -> Vec<Vec<String>> {
    rows_of(c, &format!("{css} tr")).await
}

/// The cells' text of the rows `tr_css` selects (rows without `td` left out).
async fn rows_of(c: &Client, tr_css: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let Ok(trs) = c.find_all(Locator::Css(tr_css)).await else {
        return out;
    };
    for tr in trs {
        let Ok(tds) = tr.find_all(Locator::Css("td")).await else {
            continue;
        };
        let mut row = Vec::new();
        for td in tds {
            row.push(td.text().await.unwrap_or_default());
        }
        if !row.is_empty() {
            out.push(row);
        }
    }
    out
}

fn num(s: &str) -> f64 {
    s.trim().parse().unwrap_or(0.0)
}

/// Number of `<svg>` elements inside `css`.
async fn svgs(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(&format!("{css} svg")))
        .await
        .map(|v| v.len())
        .unwrap_or(0)
}

/// Loads `path` until `check` accepts the page (or the deadline passes).
async fn page_until<T, Fut: Future<Output = Option<T>>>(
    c: &Client,
    path: &str,
    deadline: Instant,
    mut check: impl FnMut() -> Fut,
) -> T {
    loop {
        c.goto(&format!("{}{path}", portal())).await.unwrap();
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not show the demo's traffic within {DATA_BOUND:?}: {}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// The REST API over the demo's internal plain-HTTP address, with a bearer token.
struct Rest {
    http: reqwest::Client,
    token: String,
}

impl Rest {
    async fn login(user: &str, password: &str) -> Rest {
        udn_bins::install_crypto();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        // Passwords only over HTTPS (the demo's self-signed portal certificate, on
        // loopback); the token then works on the plain-HTTP API.
        let https = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let v: Value = https
            .post(format!("{}/v1/auth/token", portal()))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("token for {user}: {v}"))
            .to_string();
        Rest { http, token }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rq = self
            .http
            .request(m, format!("{}{path}", api()))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_journey_against_the_running_demo() {
    if !tools_present(&[CHROMIUM, CHROMEDRIVER, "dig", "curl"]) {
        return;
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("udn-browser-demo-{}", std::process::id()));
    eprintln!("demo state directory {}", dir.display());
    let mut demo = start_demo(&dir);

    // endpoints.json says what runs (written once every role has started).
    let (ep, took) = poll("endpoints.json", Duration::from_secs(90), || {
        let exited = demo.child.try_wait().ok().flatten();
        if let Some(st) = exited {
            panic!(
                "`udn demo` exited ({st}) before it was up; its stderr:\n{}",
                demo.stderr()
            );
        }
        let ep = std::fs::read_to_string(dir.join("endpoints.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        async move { ep }
    })
    .await;
    eprintln!("demo up in {took:?}");
    assert!(
        ep["roles"].as_array().unwrap().contains(&json!("traffic")),
        "{ep}"
    );
    assert_eq!(
        ep["control"]["portal"],
        json!(format!("{}/", portal())),
        "{ep}"
    );
    let (shop_user, shop_pass) = (LOGINS[1].0, LOGINS[1].1);
    let (admin_user, admin_pass) = (LOGINS[0].0, LOGINS[0].1);
    assert_eq!(LOGINS[1].3, Some("shop"));

    // The GTM hostname's answers come from real queries: ask it from each region.
    let regions: Vec<String> = ep["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resolver"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(regions.len(), 3);
    let mut gtm_answers = Vec::new();
    for r in &regions {
        let (a, _) = poll(
            &format!("{GTM_HOST} from {r}"),
            Duration::from_secs(20),
            || {
                let a = dig_gtm(r);
                async move { (!a.is_empty()).then_some(a) }
            },
        )
        .await;
        gtm_answers.push(a);
    }
    eprintln!("{GTM_HOST} answered {gtm_answers:?}");
    assert!(
        gtm_answers
            .iter()
            .all(|a| a == "127.0.0.21" || a == "127.0.0.22"),
        "{gtm_answers:?}"
    );

    let profile = dir.join("chromium-profile");
    let (_driver, c) = start_browser(&profile).await;
    let base = portal();

    // Log in through the form as the customer.
    c.goto(&format!("{base}/domains")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#login"))
        .await
        .unwrap();
    shot(&c, "demo-01-login").await;
    type_into(&c, "#username", shop_user).await;
    type_into(&c, "#password", shop_pass).await;
    click(&c, "#login-submit").await;

    // The domains table: CDN domain -> origins; GTM domain -> location -> addresses.
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#gtm-domains"))
        .await
        .unwrap();
    assert!(text(&c, "#who").await.contains("shop (shop)"));
    let cdn = rows(&c, "#cdn-domains").await;
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(cdn[0][0], CDN_HOST);
    assert!(
        cdn[0][1].contains(GTM_HOST) && cdn[0][1].contains("http://127.0.0.21:8080"),
        "{cdn:?}"
    );
    let gtm = text(&c, "#gtm-domains").await;
    for needle in [
        GTM_HOST,
        "shop-east (near nyc)",
        "127.0.0.21 (weight 1)",
        "shop-west (near fra)",
        "127.0.0.22 (weight 1)",
        "standby (hidden)",
        "127.0.0.29",
    ] {
        assert!(
            gtm.contains(needle),
            "domains table lacks {needle:?}: {gtm}"
        );
    }
    shot(&c, "demo-02-domains").await;

    // Cache Control: a URL cached on every edge (a real client sees MISS then HIT) ...
    for (pop, ip) in EDGES {
        let first = x_cache(ip, PURGED_PATH);
        assert_eq!(first, "MISS", "first fetch through {pop}");
        assert_eq!(
            x_cache(ip, PURGED_PATH),
            "HIT",
            "second fetch through {pop}"
        );
    }
    // ... is purged from the page, which shows it applied on all three edges ...
    let target = format!("http://{CDN_HOST}{PURGED_PATH}");
    c.goto(&format!("{base}/cache")).await.unwrap();
    type_into(&c, "#purge-target", &target).await;
    click(&c, "#purge-submit").await;
    let ((), took) = poll(
        "purge applied on 3 of 3 edges",
        Duration::from_secs(30),
        || {
            let c = c.clone();
            let target = target.clone();
            async move {
                // The newest purge is the first row, marked `new` (the page refreshes
                // itself every 2 s while a purge is pending).
                let row = rows_of(&c, "#purges tr.new").await;
                let row = row.first()?;
                (row[2] == target && row[4] == "3 of 3 edges").then_some(())?;
                let edges = &row[5];
                EDGES
                    .iter()
                    .all(|(pop, _)| edges.contains(&format!("{pop}-edge-1: applied")))
                    .then_some(())
            }
        },
    )
    .await;
    eprintln!("purge shown applied on 3 of 3 edges after {took:?}");
    assert!(!source_contains(&c, "Propagating").await);
    shot(&c, "demo-03-cache-control").await;
    // ... and the next fetch through each edge is a miss again.
    for (pop, ip) in EDGES {
        assert_eq!(x_cache(ip, PURGED_PATH), "MISS", "after the purge, {pop}");
    }

    // A second customer, as admin over the REST API: acme with a GTM and a CDN domain.
    let admin = Rest::login(admin_user, admin_pass).await;
    let (st, v) = admin
        .send(
            "POST",
            "/v1/customers",
            Some(json!({"name": "acme", "display_name": "Acme Corp."})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // Its origin site, by a whole-config change (admin only) ...
    let (st, cur) = admin.send("GET", "/v1/config", None).await;
    assert_eq!(st, 200, "{cur}");
    let mut cfg = cur["config"].clone();
    cfg["origins"].as_array_mut().unwrap().push(json!({
        "name": "acme-site",
        "servers": [{"name": "acme-1", "addresses": ["127.0.0.31"]}]
    }));
    let (st, v) = admin
        .send(
            "PUT",
            "/v1/config",
            Some(json!({"base": cur["version"], "config": cfg})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // ... then its GTM and CDN domains.
    let (st, v) = admin
        .send(
            "POST",
            "/v1/gtm",
            Some(
                json!({"hostname": "www.acme.udn.example", "customer": "acme",
                        "service": "http", "targets": [{"server": "acme-1"}]}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = admin
        .send(
            "POST",
            "/v1/cdn",
            Some(
                json!({"hostname": "cdn.acme.udn.example", "customer": "acme",
                        "origins": ["www.acme.udn.example"]}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // They exist: the admin reads them back.
    for path in [
        "/v1/customers/acme",
        "/v1/gtm/www.acme.udn.example",
        "/v1/cdn/cdn.acme.udn.example",
    ] {
        let (st, v) = admin.send("GET", path, None).await;
        assert_eq!(st, 200, "{path}: {v}");
    }

    // The background traffic reaches the store: edge/DNS -> log file -> distributor ->
    // collector -> SQLite store, read through the customer's API.
    let shop = Rest::login(shop_user, shop_pass).await;
    let wait_started = Instant::now();
    let deadline = wait_started + DATA_BOUND;
    let (hits, took) = poll("CDN traffic in the store", DATA_BOUND, || {
        let shop = &shop;
        async move {
            let (st, v) = shop.send("GET", "/v1/traffic/cdn", None).await;
            (st == 200).then_some(())?;
            let hits: u64 = v["points"]
                .as_array()?
                .iter()
                .filter_map(|p| p["hits"].as_u64())
                .sum();
            (hits > 0).then_some(hits)
        }
    })
    .await;
    eprintln!("background traffic reached the log store after {took:?} ({hits} hits)");

    // Every chart page, reloaded until its last complete minute holds the data.
    let (total_hits, t) = page_until(&c, "/activity/cdn", deadline, || {
        let c = c.clone();
        async move {
            let src = c.source().await.ok()?;
            let title = src.split("Hits per second (total ").nth(1)?;
            let n: u64 = title.split(' ').next()?.parse().ok()?;
            (n > 0).then_some((n, Instant::now()))
        }
    })
    .await;
    eprintln!(
        "CDN Recent Activity shows {total_hits} hits after {:?}",
        t - wait_started
    );
    assert_eq!(svgs(&c, "#traffic-chart").await, 1);
    assert_eq!(svgs(&c, "#hits-chart").await, 1);
    assert_eq!(num(&text(&c, "#total-hits").await) as u64, total_hits);
    assert!(num(&text(&c, "#total-bytes").await) > 0.0);
    assert!(source_contains(&c, "Traffic, last 24 h (total ").await);
    shot(&c, "demo-04-cdn-activity").await;

    let locs = page_until(&c, "/activity/cdn/locations", deadline, || {
        let c = c.clone();
        async move {
            let r = rows(&c, "#locations").await;
            EDGES
                .iter()
                .all(|(pop, _)| r.iter().any(|x| x[0] == *pop && num(&x[2]) > 0.0))
                .then_some(r)
        }
    })
    .await;
    eprintln!(
        "CDN By Location shows {locs:?} after {:?}",
        wait_started.elapsed()
    );
    assert_eq!(svgs(&c, "#map").await, 1);
    assert_eq!(svgs(&c, "#bytes-by-location").await, 1);
    assert_eq!(svgs(&c, "#hits-by-location").await, 1);
    assert!(source_contains(&c, "Bytes served by location, last 24 h").await);
    for (pop, _) in EDGES {
        // The map labels every POP that served traffic.
        let map = c
            .find(Locator::Css("#map"))
            .await
            .unwrap()
            .html(true)
            .await
            .unwrap();
        assert!(map.contains(pop), "map lacks {pop}");
    }
    shot(&c, "demo-05-cdn-by-location").await;

    let answers = page_until(&c, "/activity/gtm", deadline, || {
        let c = c.clone();
        async move {
            let r = rows(&c, "#answers").await;
            let edges_ok = EDGES.iter().all(|(_, ip)| {
                r.iter()
                    .any(|x| x[0] == CDN_HOST && x[1] == *ip && num(&x[2]) > 0.0)
            });
            let origin_ok = r.iter().any(|x| {
                x[0] == GTM_HOST
                    && (x[1] == "127.0.0.21" || x[1] == "127.0.0.22")
                    && num(&x[2]) > 0.0
            });
            (edges_ok && origin_ok).then_some(r)
        }
    })
    .await;
    eprintln!(
        "GTM Recent Activity shows {answers:?} after {:?}",
        wait_started.elapsed()
    );
    assert_eq!(svgs(&c, "#answers-chart").await, 1);
    for (_, ip) in EDGES {
        assert!(source_contains(&c, &format!("{ip} ({CDN_HOST})")).await);
    }
    shot(&c, "demo-06-gtm-activity").await;

    let by_loc = page_until(&c, "/activity/gtm/locations", deadline, || {
        let c = c.clone();
        async move {
            let r = rows(&c, "#answers-by-location").await;
            EDGES
                .iter()
                .all(|(pop, ip)| {
                    r.iter()
                        .any(|x| x[0] == *pop && x[1] == *ip && num(&x[2]) > 0.0)
                })
                .then_some(r)
        }
    })
    .await;
    eprintln!(
        "GTM By Location shows {by_loc:?} after {:?}",
        wait_started.elapsed()
    );
    assert_eq!(svgs(&c, "#map").await, 1);
    assert!(svgs(&c, ".location-bars").await >= 3);
    for (pop, _) in EDGES {
        assert!(source_contains(&c, &format!("Addresses given out at {pop}")).await);
    }
    // The origin addresses given out for the GTM hostname are counted at the POP that
    // stands in for their site (shop-east-1 at nyc, shop-west-1 at fra), and every
    // answer has a location.
    assert!(
        by_loc
            .iter()
            .any(|x| ((x[0] == "nyc" && x[1] == "127.0.0.21")
                || (x[0] == "fra" && x[1] == "127.0.0.22"))
                && num(&x[2]) > 0.0),
        "{by_loc:?}"
    );
    assert!(by_loc.iter().all(|x| !x[0].is_empty()), "{by_loc:?}");
    shot(&c, "demo-07-gtm-by-location").await;

    // A page check from two chosen locations: the demo's probes fetch the page and its
    // objects through their POPs' edges.
    c.goto(&format!("{base}/tests")).await.unwrap();
    let page = format!("http://{CDN_HOST}:{HTTP_PORT}/index.html");
    type_into(&c, "#pagecheck-url", &page).await;
    click(&c, "input[name=locations][value=fra]").await;
    click(&c, "input[name=locations][value=sin]").await;
    click(&c, "#pagecheck-submit").await;
    for pop in ["fra", "sin"] {
        c.wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css(&format!("#waterfall-{pop}-1 svg")))
            .await
            .unwrap_or_else(|e| panic!("waterfall of {pop}: {e}"));
    }
    let overall = rows(&c, "#pagecheck-overall").await;
    eprintln!("page check overall: {overall:?}");
    assert_eq!(overall.len(), 2, "{overall:?}");
    for (row, pop) in overall.iter().zip(["fra", "sin"]) {
        // Location, pass, result, components, page time, bytes, errors.
        assert_eq!(row[0], pop, "{row:?}");
        assert_eq!(row[2], "ok", "{row:?}");
        assert_eq!(
            row[3], "7",
            "the page, its stylesheet, script and 4 images: {row:?}"
        );
        assert!(num(&row[4]) > 0.0, "{row:?}");
        assert!(num(&row[5]) > 1000.0, "{row:?}");
        assert_eq!(row[6], "0", "{row:?}");
    }
    for (pop, ip) in [EDGES[0], EDGES[2]] {
        let raw = c
            .find(Locator::XPath(&format!(
                "//div[@id='waterfall-{pop}-1']/following-sibling::table[1]"
            )))
            .await
            .unwrap();
        let mut lines = Vec::new();
        for tr in raw.find_all(Locator::Css("tr")).await.unwrap() {
            let cells: Vec<String> = {
                let mut v = Vec::new();
                for td in tr.find_all(Locator::Css("td")).await.unwrap() {
                    v.push(td.text().await.unwrap());
                }
                v
            };
            if !cells.is_empty() {
                lines.push(cells);
            }
        }
        assert_eq!(lines.len(), 7, "{pop}: {lines:?}");
        for l in &lines {
            // URL, IP, ERR, HRC: every component fetched through this POP's edge.
            assert!(l[0].starts_with(&format!("http://{CDN_HOST}:")), "{l:?}");
            assert_eq!(l[1], ip, "{pop}: {l:?}");
            assert_eq!(l[3], "200", "{pop}: {l:?}");
            // CHK: the body's CRC-32 in hex, as `udn probe check` prints it.
            assert!(
                l[5].len() == 8 && l[5].chars().all(|c| c.is_ascii_hexdigit()),
                "{pop}: {l:?}"
            );
        }
        assert!(lines.iter().any(|l| l[0].ends_with("/img/logo.svg")));
        // The probe asked the demo's DNS server for the page's name: a timed lookup
        // (DRT, ms) on the page's row.
        assert!(num(&lines[0][7]) > 0.0, "{pop}: {:?}", lines[0]);
    }
    shot(&c, "demo-08-page-check").await;

    // Another customer's data is out of reach for shop.
    c.goto(&format!("{base}/domains")).await.unwrap();
    let tables = format!(
        "{}\n{}",
        text(&c, "#cdn-domains").await,
        text(&c, "#gtm-domains").await
    );
    assert!(tables.contains(CDN_HOST), "{tables}");
    assert!(!tables.contains("acme"), "{tables}");
    shot(&c, "demo-09-domains-without-acme").await;
    for path in [
        "/domains?customer=acme",
        "/activity/cdn?customer=acme",
        "/activity/cdn/locations?customer=acme",
        "/activity/gtm?customer=acme",
        "/activity/gtm/locations?customer=acme",
        "/cache?customer=acme",
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        assert_eq!(text(&c, "#error").await, "Not allowed", "{path}");
    }
    shot(&c, "demo-10-acme-traffic-refused").await;
    for path in [
        "/v1/gtm/www.acme.udn.example",
        "/v1/cdn/cdn.acme.udn.example",
        "/v1/customers/acme",
        "/v1/traffic/cdn?customer=acme",
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let body = c.source().await.unwrap();
        assert!(body.contains("not allowed"), "{path}: {body}");
        assert!(!body.contains("127.0.0.31"), "{path}: {body}");
        let (st, _) = shop.send("GET", path, None).await;
        assert_eq!(st, 403, "{path} over the API as shop");
    }
    shot(&c, "demo-11-acme-api-refused").await;
    // A page check of acme's hostname is refused too.
    c.goto(&format!("{base}/tests")).await.unwrap();
    type_into(&c, "#pagecheck-url", "http://cdn.acme.udn.example/").await;
    click(&c, "input[name=locations][value=nyc]").await;
    click(&c, "#pagecheck-submit").await;
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#error"))
        .await
        .unwrap();
    assert_eq!(text(&c, "#error").await, "Not allowed");
    shot(&c, "demo-12-acme-page-check-refused").await;
    // The operators' page is not the customer's.
    c.goto(&format!("{base}/ops")).await.unwrap();
    assert_eq!(text(&c, "#error").await, "Not allowed", "/ops");

    // The admin's: every DNS server, edge and probe of the demo has written its own
    // statistics into its log, shipped and stored (the demo's interval is 10 s).
    let now = jiff::Timestamp::now().as_millisecond();
    let rfc = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let ops_path = format!(
        "/v1/ops?from={}&to={}",
        rfc(now - 3_600_000),
        rfc(now + 600_000)
    );
    let (instances, took) = poll("every role's statistics", Duration::from_secs(90), || {
        let (admin, path) = (&admin, ops_path.clone());
        async move {
            let (st, v) = admin.send("GET", &path, None).await;
            assert_eq!(st, 200, "{v}");
            let mut seen = std::collections::BTreeSet::new();
            let mut headlines = std::collections::BTreeSet::new();
            for p in v["points"].as_array().unwrap() {
                let (role, instance) = (p["role"].as_str()?, p["instance"].as_str()?);
                seen.insert(format!("{role}/{instance}"));
                let base = p["metric"].as_str()?.split('{').next()?;
                headlines.insert(format!("{role}/{instance}/{base}"));
            }
            // Two DNS servers, three edges, three probes; and the counters the page is
            // checked for below (a role's first records may hold only its gauges).
            let counted = [
                "dns/dns1/udn_dns_queries_total",
                "edge/fra/udn_edge_requests_total",
                "probe/fra/udn_probe_service_checks_total",
            ]
            .iter()
            .all(|h| headlines.contains(*h));
            (seen.len() >= 8 && counted).then_some(seen)
        }
    })
    .await;
    eprintln!("operational statistics of {instances:?} after {took:?}");
    for role in ["dns", "edge", "probe"] {
        assert!(
            instances.iter().any(|i| i.starts_with(&format!("{role}/"))),
            "{role}: {instances:?}"
        );
    }

    // Log out: the portal is closed again.
    c.goto(&format!("{base}/domains")).await.unwrap();
    click(&c, "#logout").await;
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#login"))
        .await
        .unwrap();

    // The operator logs in through the same form: the Operations page shows the DNS
    // servers, the edges and the probes with their metrics, and the probes' methods.
    type_into(&c, "#username", admin_user).await;
    type_into(&c, "#password", admin_pass).await;
    click(&c, "#login-submit").await;
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#who"))
        .await
        .unwrap();
    c.goto(&format!(
        "{base}/ops?{}",
        ops_path.split_once('?').unwrap().1
    ))
    .await
    .unwrap();
    for (table, instance, metric) in [
        ("#ops-dns-metrics", "dns1", "udn_dns_queries_total"),
        ("#ops-edge-metrics", "fra", "udn_edge_requests_total"),
        (
            "#ops-probe-metrics",
            "fra",
            "udn_probe_service_checks_total",
        ),
    ] {
        let r = rows(&c, table).await;
        assert!(
            r.iter()
                .any(|row| row[0] == instance && row[1].starts_with(metric)),
            "{table}: {r:?}"
        );
    }
    assert!(
        svgs(&c, "#ops-dns").await >= 1,
        "a chart of the DNS servers' queries"
    );
    shot(&c, "demo-13-operations").await;
    // The new pages on a phone: no sideways scrolling (wide tables scroll inside).
    c.set_window_size(390, 844).await.unwrap();
    for (path, name) in [
        ("/ops", "demo-13p-operations-phone"),
        ("/activity/cdn/quality", "demo-13q-cdn-quality-phone"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        assert_fits_width(&c, &format!("{path} on a phone")).await;
        shot(&c, name).await;
    }
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&format!("{base}/activity/cdn/quality"))
        .await
        .unwrap();
    assert!(
        svgs(&c, "#times-chart").await >= 1,
        "the response-time chart"
    );
    let requests = num(&text(&c, "#total-requests").await);
    assert!(requests > 0.0, "the demo's traffic is on the quality page");
    shot(&c, "demo-13q-cdn-quality").await;

    // A drill takes an origin server down: the GTM page shows its address down (the
    // probe's records, shipped and stored), and up again after the restore.
    let drill = |action: &'static str| async move {
        let (ip, port) = DRILL;
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!(
                "http://{}:{port}/v1/drill/{action}/shop-west-1",
                ip4(ip)
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "drill {action}: {}", r.status());
    };
    let health_of = |server: &'static str| {
        let c = &c;
        async move {
            let css = format!("section[id='gtm-{GTM_HOST}'] tr[data-server='{server}'] td.health");
            text(c, &css).await
        }
    };
    drill("origin-fail").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    page_until(&c, "/gtm", deadline, || async {
        (health_of("shop-west-1").await == "down").then_some(())
    })
    .await;
    assert_eq!(
        health_of("shop-east-1").await,
        "up",
        "the other site stays up"
    );
    shot(&c, "demo-14-gtm-origin-down").await;
    drill("origin-restore").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    page_until(&c, "/gtm", deadline, || async {
        (health_of("shop-west-1").await == "up").then_some(())
    })
    .await;
    c.close().await.unwrap();

    // SIGTERM stops the demo cleanly.
    let status = demo.stop().expect("the demo stops on SIGTERM within 20 s");
    assert!(status.success(), "demo exited with {status}");
    eprintln!("journey against the demo took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
