//! The portal in a real headless Chromium driven over WebDriver (chromedriver started on
//! a free loopback port): log in as a customer, see the domains table, purge a URL and
//! watch it propagate to both edges, open every chart page with inserted traffic, run a
//! page check, and fail to reach another customer's data. Screenshots of each page go to
//! `target/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages chromium and
//! chromium-driver); without them the test says so and returns (in CI, `CI=true`, it
//! fails). `portal_browser_demo.rs` runs the same journey against a running `udn demo`.

use crate::api_support;
use crate::browser_support;

use api_support::*;
use browser_support::*;
use fantoccini::Locator;
use serde_json::json;
use std::time::Duration;
use udn_bins::api::backend::InvoiceSummary;
use udn_core::Timestamp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_journey_in_headless_chromium() {
    if !tools_present(&[CHROMIUM, CHROMEDRIVER]) {
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
    let edge2 = h.serve_edge2().await;
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
        // Values on hover: what is under the pointer at a hover target's centre is that
        // target (on top of the drawing), and its title has a value.
        let under = c
            .execute(
                "const all = document.querySelectorAll('main svg g.hover rect');
                 const h = all[Math.floor(all.length / 2)];
                 if (!h) return 'not a hover target: none';
                 h.scrollIntoView({block: 'center'});
                 const r = h.getBoundingClientRect();
                 const e = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
                 const t = e && e.closest('g.hover') && e.querySelector('title');
                 return t ? t.textContent : (e ? 'not a hover target: ' + e.outerHTML.slice(0, 80) : 'nothing');",
                vec![],
            )
            .await
            .unwrap();
        let under = under.as_str().unwrap_or_default().to_owned();
        assert!(
            under.chars().any(|ch| ch.is_ascii_digit()) && !under.starts_with("not a"),
            "{path}: hover title {under:?}"
        );
        c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        shot(&c, name).await;
    }

    // On a phone (390 px wide) the chart pages fit the screen: no sideways scrolling,
    // charts scaled to the width.
    c.set_window_size(390, 844).await.unwrap();
    for (path, name) in [
        ("/activity/cdn", "05p-cdn-activity-phone"),
        ("/activity/cdn/locations", "06p-cdn-by-location-phone"),
        ("/activity/gtm", "07p-gtm-activity-phone"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        assert_fits_width(&c, &format!("{path} on a phone")).await;
        shot(&c, name).await;
    }
    c.set_window_size(1280, 1100).await.unwrap();

    // The date-range picker: an hour two hours ago, in Tokyo's time, one domain.
    let tz = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let start_ms = (now / 3_600_000 - 2) * 3_600_000;
    let local = |ms: u64| {
        jiff::Timestamp::from_millisecond(ms as i64)
            .unwrap()
            .to_zoned_datetime(tz.clone())
    };
    let (from_local, to_local) = (
        local(start_ms).strftime("%Y-%m-%dT%H:%M").to_string(),
        local(start_ms + 3_600_000)
            .strftime("%Y-%m-%dT%H:%M")
            .to_string(),
    );
    c.goto(&format!("{base}/activity/cdn")).await.unwrap();
    // datetime-local inputs are typed differently per locale: set their values.
    c.execute(
        "document.getElementById('range-from-input').value = arguments[0];
         document.getElementById('range-to-input').value = arguments[1];
         document.getElementById('tz-input').value = 'Asia/Tokyo';
         document.getElementById('host-select').value = 'cdn.shop.udn.example';",
        vec![json!(from_local), json!(to_local)],
    )
    .await
    .unwrap();
    c.find(Locator::Css("#range-apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let want_from = local(start_ms).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let want_to = local(start_ms + 3_600_000)
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string();
    // The new page has come when it states the zone chosen.
    wait_text(&c, "#range-tz", "Asia/Tokyo").await;
    let stated = c
        .find(Locator::Css("#range-from"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(stated, want_from, "the page states the range chosen");
    let stated_to = c
        .find(Locator::Css("#range-to"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(stated_to, want_to);
    assert!(want_from.ends_with("+09:00"), "{want_from}");
    shot(&c, "08b-range-picker").await;
    // The CSV link exports that range: every row's time inside it, in Tokyo's time.
    let csv = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('csv-link').href)
               .then(r => r.text()).then(done, e => done('error ' + e));",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap_or_default().to_owned();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("time,bytes,hits"), "{csv}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 60, "one row per minute of the hour: {csv}");
    for row in rows {
        let t = row.split(',').next().unwrap();
        assert!(t.ends_with("+09:00"), "{row}");
        let ms = t.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64;
        assert!((start_ms..start_ms + 3_600_000).contains(&ms), "{row}");
    }
    // A preset: the last 7 days, read per hour.
    c.find(Locator::LinkText("7 d"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#range-grain", "hour").await;
    assert!(source_contains(&c, "Traffic, last 168 h").await);

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

/// Waits (at most 20 s) until the element `css` shows `want`.
async fn wait_text(c: &fantoccini::Client, css: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    for _ in 0..200 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if t == want {
                return;
            }
            last = t;
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} shows {last:?}, not {want:?}");
}
