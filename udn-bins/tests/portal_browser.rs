//! The portal in a real headless Chromium driven over WebDriver (chromedriver started on
//! a free loopback port): log in as a customer, see the domains table, purge a URL and
//! watch it propagate to both edges, open every chart page with inserted traffic, run a
//! page check, and fail to reach another customer's data. Screenshots of each page go to
//! `target/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages chromium and
//! chromium-driver); without them the test says so and returns.

mod api_support;

use api_support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use udn_bins::api::backend::InvoiceSummary;
use udn_core::Timestamp;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("write png");
}

async fn start_browser(profile: &std::path::Path) -> (Driver, Client) {
    let port = free_addr().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().expect("object").clone();
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("could not start a browser session: {last:?}");
}

async fn source_contains(c: &Client, needle: &str) -> bool {
    c.source()
        .await
        .map(|s| s.contains(needle))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_journey_in_headless_chromium() {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        eprintln!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is not installed");
        return;
    }
    let h = Harness::start("portal-browser").await;
    // Real rows for the charts, the page check and the invoices.
    let now = udn_bins::logging::now().as_millis();
    let minute = |ago: u64| Timestamp::from_millis((now - ago * 60_000) / 60_000 * 60_000);
    for ago in 1..1440 {
        let wave = (ago as f64 / 180.0).sin().abs();
        h.db.record_cdn_traffic(
            "shop",
            "cdn.shop.udn.example",
            "fra",
            minute(ago),
            (2e6 * wave) as u64 + 1000,
            (900.0 * wave) as u64 + 10,
        )
        .unwrap();
        h.db.record_cdn_traffic(
            "shop",
            "cdn.shop.udn.example",
            "sin",
            minute(ago),
            (5e5 * wave) as u64,
            (200.0 * wave) as u64,
        )
        .unwrap();
        // A failover 3 hours ago: east stops being given out, west takes over.
        let (east, west) = if ago > 180 { (60, 5) } else { (0, 65) };
        h.db.record_gtm_answers(
            "shop",
            "www.shop.udn.example",
            "fra",
            "127.0.0.21",
            minute(ago),
            east,
        )
        .unwrap();
        h.db.record_gtm_answers(
            "shop",
            "www.shop.udn.example",
            "nyc",
            "127.0.0.22",
            minute(ago),
            west,
        )
        .unwrap();
    }
    h.db.record_cdn_traffic(
        "acme",
        "cdn.acme.udn.example",
        "nyc",
        minute(3),
        777_777,
        7777,
    )
    .unwrap();
    let acme_invoice =
        h.db.insert_invoice(
            &InvoiceSummary {
                id: 0,
                number: "ACME-1".into(),
                customer: "acme".into(),
                period_start: Timestamp::from_secs(1_761_955_200),
                period_end: Timestamp::from_secs(1_764_547_200),
                total: "10.00".parse().unwrap(),
                currency: "EUR".into(),
                issued_at: Timestamp::from_secs(1_764_547_300),
            },
            "<p>acme secret line</p>",
        )
        .unwrap();
    *h.probe_fra.rows.lock().unwrap() = json!([
        {"URL": "http://cdn.shop.udn.example/", "IP": "127.0.0.11", "HRC": 200, "LEN": 5120, "CHK": "ok",
         "STT": 0.0, "DRT": 3.0, "COT": 1.0, "TLS": 0.0, "DST": 6.0, "FNT": 4.0, "END": 14.0},
        {"URL": "http://cdn.shop.udn.example/css/site.css", "IP": "127.0.0.11", "HRC": 200, "LEN": 900,
         "STT": 14.0, "DRT": 0.0, "COT": 0.8, "TLS": 0.0, "DST": 2.0, "FNT": 1.2, "END": 18.0},
        {"URL": "http://cdn.shop.udn.example/img/logo.gif", "IP": "127.0.0.11", "HRC": 200, "LEN": 43,
         "STT": 14.5, "DRT": 0.0, "COT": 0.7, "TLS": 0.0, "DST": 1.5, "FNT": 0.3, "END": 17.0}
    ]);

    let profile = h.dir.join("chromium-profile");
    let (_driver, c) = start_browser(&profile).await;
    let base = h.https_base.clone();

    // Log in as the customer.
    c.goto(&format!("{base}/domains")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login"))
        .await
        .unwrap();
    shot(&c, "01-login").await;
    c.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("shopuser")
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The domains table.
    let table = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#gtm-domains"))
        .await
        .unwrap();
    let text = table.text().await.unwrap();
    assert!(
        text.contains("www.shop.udn.example") && text.contains("127.0.0.21"),
        "{text}"
    );
    let cdn = c
        .find(Locator::Css("#cdn-domains"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        cdn.contains("cdn.shop.udn.example") && !cdn.contains("acme"),
        "{cdn}"
    );
    shot(&c, "02-domains").await;

    // Purge a URL and watch it propagate: one edge at once, the other when it returns.
    c.goto(&format!("{base}/cache")).await.unwrap();
    let target = "http://cdn.shop.udn.example/img/logo.gif";
    c.find(Locator::Css("#purge-target"))
        .await
        .unwrap()
        .send_keys(target)
        .await
        .unwrap();
    c.find(Locator::Css("#purge-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if source_contains(&c, "1 of 2 edges").await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "purge shown as applied on the live edge");
    shot(&c, "03-cache-pending").await;
    let edge2 = h.edge2.serve(h.edge2_addr).await;
    let mut ok = false;
    // The page refreshes itself every 2 s while a purge is pending.
    for _ in 0..150 {
        if source_contains(&c, "2 of 2 edges").await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "propagation reached both edges without reloading by hand"
    );
    assert_eq!(h.edge2.calls("/v1/purge")[0].body["target"], target);
    edge2.abort();
    shot(&c, "04-cache-propagated").await;

    // Every chart page renders its SVG.
    for (path, name, needle) in [
        ("/activity/cdn", "05-cdn-activity", "Hits per second (total"),
        (
            "/activity/cdn/locations",
            "06-cdn-by-location",
            "Bytes served by location",
        ),
        (
            "/activity/gtm",
            "07-gtm-activity",
            "127.0.0.22 (www.shop.udn.example)",
        ),
        (
            "/activity/gtm/locations",
            "08-gtm-by-location",
            "Addresses given out at nyc",
        ),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let svgs = c.find_all(Locator::Css("main svg")).await.unwrap();
        assert!(!svgs.is_empty(), "{path} has a chart");
        assert!(source_contains(&c, needle).await, "{path} shows {needle}");
        assert!(
            !source_contains(&c, "7777").await,
            "{path} leaks acme's traffic"
        );
        shot(&c, name).await;
    }

    // A page check from fra.
    c.goto(&format!("{base}/tests")).await.unwrap();
    c.find(Locator::Css("#pagecheck-url"))
        .await
        .unwrap()
        .send_keys("http://cdn.shop.udn.example/")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=locations][value=fra]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#pagecheck-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let _wf = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#waterfall-fra-1 svg"))
        .await
        .unwrap();
    let overall = c
        .find(Locator::Css("#pagecheck-overall"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        overall.contains("fra") && overall.contains("18.0"),
        "{overall}"
    );
    shot(&c, "09-page-check").await;

    c.goto(&format!("{base}/gtm")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#gtm-add"))
        .await
        .unwrap();
    shot(&c, "10-gtm-configuration").await;
    c.goto(&format!("{base}/invoices")).await.unwrap();
    assert!(!source_contains(&c, "ACME-1").await);
    shot(&c, "11-invoices").await;

    // Another customer's data is out of reach.
    c.goto(&format!("{base}/invoices/{acme_invoice}"))
        .await
        .unwrap();
    let err = c
        .find(Locator::Css("#error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(err, "Not allowed");
    assert!(!source_contains(&c, "acme secret line").await);
    shot(&c, "12-other-customer-invoice").await;
    c.goto(&format!("{base}/activity/cdn/locations?customer=acme"))
        .await
        .unwrap();
    assert_eq!(
        c.find(Locator::Css("#error"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "Not allowed"
    );
    c.goto(&format!("{base}/v1/gtm/www.acme.udn.example"))
        .await
        .unwrap();
    assert!(source_contains(&c, "not allowed").await);
    shot(&c, "13-other-customer-api").await;

    // Log out: the portal is closed again.
    c.goto(&format!("{base}/domains")).await.unwrap();
    c.find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login"))
        .await
        .unwrap();
    c.goto(&format!("{base}/domains")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login"))
        .await
        .unwrap();
    c.close().await.unwrap();
}
