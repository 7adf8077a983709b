//! The portal over real HTTPS on loopback (self-signed certificate, verified by the
//! client), against a real SQLite file: login with CSRF and rate limiting, every page
//! with rows the test inserted, forms with CSRF, and another customer's data refused.

use crate::api_support;

use api_support::*;
use udn_bins::api::backend::InvoiceSummary;
use udn_core::Timestamp;

/// Extracts `name="csrf" value="..."` from a page.
fn csrf_of(page: &str) -> String {
    let i = page.find("name=\"csrf\" value=\"").expect("a CSRF field");
    let rest = &page[i + 19..];
    rest[..rest.find('"').expect("end quote")].to_owned()
}

async fn portal_login(h: &Harness, user: &str) -> (reqwest::Client, String) {
    let c = h.https_client();
    let page = c
        .get(h.https("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = csrf_of(&page);
    let r = c
        .post(h.https("/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", user),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "login as {user}");
    let page = c
        .get(h.https("/domains"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    (c, csrf)
}

async fn page(c: &reqwest::Client, url: String) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn login_over_https_sets_a_secure_cookie_and_needs_the_form_token() {
    let h = Harness::start("portal-login").await;
    let c = h.https_client();
    let r = c.get(h.https("/domains")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");

    let login = c
        .get(h.https("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = csrf_of(&login);
    // Without the form token.
    let r = c
        .post(h.https("/login"))
        .form(&[("username", "shopuser"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // With a fresh form (the failed attempt rotated the token).
    let login = c
        .get(h.https("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token2 = csrf_of(&login);
    assert_ne!(token, token2);
    let r = c
        .post(h.https("/login"))
        .form(&[
            ("csrf", token2.as_str()),
            ("username", "shopuser"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("udn_session="))
        .unwrap();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    let (st, body) = page(&c, h.https("/domains")).await;
    assert_eq!(st, 200);
    assert!(body.contains("shopuser (shop)"));

    // Logout needs the CSRF token, then the session is gone.
    let csrf = csrf_of(&body);
    let r = c
        .post(h.https("/logout"))
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(h.https("/logout"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        c.get(h.https("/domains")).send().await.unwrap().status(),
        303
    );
}

#[tokio::test]
async fn portal_login_is_rate_limited() {
    let h = Harness::start("portal-ratelimit").await;
    let c = h.https_client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let login = c
            .get(h.https("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let t = csrf_of(&login);
        let r = c
            .post(h.https("/login"))
            .form(&[
                ("csrf", t.as_str()),
                ("username", "shopuser"),
                ("password", "wrong"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429]);
}

#[tokio::test]
async fn self_signed_certificate_is_kept_across_restarts() {
    let dir = temp_dir("portal-cert");
    let src = udn_bins::portal::CertSource::SelfSigned {
        dir: dir.clone(),
        names: vec!["localhost".into()],
    };
    let (_, a) = udn_bins::portal::server_config(&src).unwrap();
    let (_, b) = udn_bins::portal::server_config(&src).unwrap();
    assert!(a.contains("BEGIN CERTIFICATE"));
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn domains_table_shows_own_domains_only() {
    let h = Harness::start("portal-domains").await;
    let (c, _) = portal_login(&h, "shopuser").await;
    let (st, body) = page(&c, h.https("/domains")).await;
    assert_eq!(st, 200);
    assert!(body.contains("cdn.shop.udn.example"));
    assert!(body.contains("www.shop.udn.example"));
    assert!(body.contains("shop-east"));
    assert!(body.contains("127.0.0.21"));
    assert!(body.contains("127.0.0.29"), "standby shown");
    assert!(!body.contains("acme"), "another customer's domains leak");
    assert_eq!(page(&c, h.https("/domains?customer=acme")).await.0, 403);

    let (c, _) = portal_login(&h, "admin").await;
    let (_, body) = page(&c, h.https("/domains")).await;
    assert!(body.contains("cdn.acme.udn.example") && body.contains("cdn.shop.udn.example"));
}

#[tokio::test]
async fn cache_control_purges_and_shows_propagation() {
    let h = Harness::start("portal-cache").await;
    let (c, csrf) = portal_login(&h, "shopuser").await;
    let target = "http://cdn.shop.udn.example/img/logo.gif";
    let r = c
        .post(h.https("/cache"))
        .form(&[("scope", "url"), ("target", target)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = c
        .post(h.https("/cache"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "url"),
            ("target", target),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(eventually(10, || async { h.edge1.calls("/v1/purge").len() == 1 }).await);
    let (st, body) = page(&c, h.https("/cache")).await;
    assert_eq!(st, 200);
    assert!(body.contains(target));
    assert!(body.contains("1 of 2 edges"), "{body}");
    assert!(
        body.contains("http-equiv=\"refresh\""),
        "refreshes while pending"
    );
    let t = h.serve_edge2().await;
    assert!(
        eventually(15, || async {
            page(&c, h.https("/cache")).await.1.contains("2 of 2 edges")
        })
        .await
    );
    t.abort();
    // Another customer's URL is refused; nonsense names the field.
    let r = c
        .post(h.https("/cache"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "url"),
            ("target", "http://cdn.acme.udn.example/x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(h.https("/cache"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "url"),
            ("target", "not a url"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("target:"));
    // acme sees none of shop's purges.
    let (c2, _) = portal_login(&h, "acmeuser").await;
    assert!(!page(&c2, h.https("/cache")).await.1.contains(target));
}

#[tokio::test]
async fn activity_pages_chart_the_inserted_rows() {
    let h = Harness::start("portal-activity").await;
    let now = udn_bins::logging::now().as_millis();
    let minute = |ago: u64| Timestamp::from_millis((now - ago * 60_000) / 60_000 * 60_000);
    h.db.record_cdn_traffic(
        "shop",
        "cdn.shop.udn.example",
        "fra",
        minute(10),
        600_000,
        1200,
    )
    .unwrap();
    h.db.record_cdn_traffic("shop", "cdn.shop.udn.example", "sin", minute(2), 60_000, 34)
        .unwrap();
    h.db.record_cdn_traffic("acme", "cdn.acme.udn.example", "nyc", minute(2), 1, 99_999)
        .unwrap();
    h.db.record_gtm_answers(
        "shop",
        "www.shop.udn.example",
        "fra",
        "127.0.0.21",
        minute(20),
        50,
    )
    .unwrap();
    h.db.record_gtm_answers(
        "shop",
        "www.shop.udn.example",
        "fra",
        "127.0.0.22",
        minute(5),
        70,
    )
    .unwrap();
    h.db.record_gtm_answers(
        "shop",
        "www.shop.udn.example",
        "nyc",
        "127.0.0.22",
        minute(5),
        7,
    )
    .unwrap();
    let (c, _) = portal_login(&h, "shopuser").await;

    let (st, body) = page(&c, h.https("/activity/cdn")).await;
    assert_eq!(st, 200);
    assert!(
        body.contains("Hits per second (total 1234 hits)"),
        "total in the title"
    );
    assert!(
        body.contains("id=\"total-bytes\">660000<"),
        "{}",
        &body[..200]
    );
    assert!(body.contains("<svg"));

    let (st, body) = page(&c, h.https("/activity/cdn/locations")).await;
    assert_eq!(st, 200);
    assert!(body.contains("<td>fra</td><td class=\"num\">600000</td><td class=\"num\">1200</td>"));
    assert!(body.contains("<td>sin</td>"));
    assert!(!body.contains("<td>nyc</td>"), "acme's location leaks");
    assert!(body.contains("<circle"), "locations drawn on the map");
    assert!(body.contains("<polygon"), "countries drawn");

    let (st, body) = page(&c, h.https("/activity/gtm")).await;
    assert_eq!(st, 200);
    assert!(body.contains("127.0.0.21 (www.shop.udn.example)"));
    assert!(body.contains("<td>127.0.0.22</td><td class=\"num\">77</td>"));

    let (st, body) = page(&c, h.https("/activity/gtm/locations")).await;
    assert_eq!(st, 200);
    assert!(body.contains("Addresses given out at fra"));
    assert!(body.contains("Addresses given out at nyc"));
    assert!(body.contains("<td>fra</td><td>127.0.0.22</td><td class=\"num\">70</td>"));

    for p in [
        "/activity/cdn",
        "/activity/cdn/locations",
        "/activity/gtm",
        "/activity/gtm/locations",
        "/invoices",
        "/cache",
        "/gtm",
    ] {
        let (st, body) = page(&c, h.https(&format!("{p}?customer=acme"))).await;
        assert_eq!(st, 403, "{p}");
        assert!(body.contains("Not allowed"));
    }
}

/// The chart pages take an absolute range in a time zone and a domain: the picker shows
/// the range chosen, the page states the range it covers and its grain, and its CSV and
/// JSON links name the same range.
#[tokio::test]
async fn activity_pages_take_a_range_a_time_zone_and_a_domain() {
    let h = Harness::start("portal-range").await;
    let at = |s: &str| {
        Timestamp::from_millis(s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64)
    };
    h.db.record_cdn_traffic(
        "shop",
        "cdn.shop.udn.example",
        "fra",
        at("2026-03-10T09:30:00Z"),
        5000,
        50,
    )
    .unwrap();
    h.db.record_cdn_traffic(
        "shop",
        "img.shop.udn.example",
        "fra",
        at("2026-03-10T09:31:00Z"),
        7,
        7,
    )
    .unwrap();
    h.db.record_cdn_traffic(
        "shop",
        "cdn.shop.udn.example",
        "fra",
        at("2025-05-10T09:30:00Z"),
        100_000,
        1,
    )
    .unwrap();
    let (c, _) = portal_login(&h, "shopuser").await;

    // Two hours in New York (UTC-4 in March after the 8th), given as local times.
    let (st, body) = page(
        &c,
        h.https("/activity/cdn?from=2026-03-10T05:00&to=2026-03-10T07:00&tz=America/New_York"),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("id=\"range-from\" datetime=\"2026-03-10T05:00:00-04:00\""),
        "{body}"
    );
    assert!(body.contains(">2026-03-10T07:00:00-04:00</time>"), "{body}");
    assert!(body.contains("id=\"range-grain\">minute<"));
    assert!(
        body.contains("value=\"2026-03-10T05:00\""),
        "picker keeps the range"
    );
    assert!(body.contains("value=\"America/New_York\""));
    assert!(body.contains("id=\"total-bytes\">5007<"), "both domains");
    assert!(
        body.contains("<option value=\"cdn.shop.udn.example\">"),
        "domain select"
    );
    assert!(
        !body.contains("cdn.acme.udn.example"),
        "another customer's domain"
    );
    assert!(body.contains(
        "href=\"/v1/traffic/cdn?from=2026-03-10T05%3A00%3A00-04%3A00&amp;to=2026-03-10T07%3A00%3A00-04%3A00&amp;tz=America%2FNew_York&amp;format=csv\""
    ), "{body}");
    // One domain.
    let (_, body) = page(
        &c,
        h.https("/activity/cdn?from=2026-03-10T05:00&to=2026-03-10T07:00&tz=America/New_York&host=img.shop.udn.example"),
    )
    .await;
    assert!(body.contains("id=\"total-bytes\">7<"), "{body}");
    assert!(body.contains("<option value=\"\">All domains"));
    // A year: per day, back to the first data.
    let (_, body) = page(&c, h.https("/activity/cdn?hours=8760&tz=UTC")).await;
    assert!(body.contains("id=\"range-grain\">day<"), "{body}");
    let (_, body) = page(
        &c,
        h.https("/activity/cdn/locations?from=2025-01-01T00:00&to=2026-12-01T00:00"),
    )
    .await;
    assert!(
        body.contains("<td>fra</td><td class=\"num\">105007</td>"),
        "{body}"
    );
    // A bad value is a 400 page naming the parameter.
    let (st, body) = page(&c, h.https("/activity/gtm?tz=Nowhere/Land")).await;
    assert_eq!(st, 400);
    assert!(body.contains("tz: unknown time zone"), "{body}");
}

#[tokio::test]
async fn page_check_shows_overall_table_waterfall_and_rows() {
    let h = Harness::start("portal-tests").await;
    *h.probe_nyc.rows.lock().unwrap() = serde_json::json!([
        {"URL": "http://cdn.shop.udn.example/", "IP": "127.0.0.12", "HRC": 200, "LEN": 2048, "CHK": "ok",
         "STT": 0.0, "DRT": 2.0, "COT": 1.0, "TLS": 0.0, "DST": 4.0, "FNT": 3.0, "END": 10.0},
        {"URL": "http://cdn.shop.udn.example/logo.gif", "IP": "127.0.0.12", "HRC": 200, "LEN": 43,
         "STT": 10.0, "DRT": 0.0, "COT": 0.0, "TLS": 0.0, "DST": 1.5, "FNT": 0.5, "END": 12.0}
    ]);
    let (c, csrf) = portal_login(&h, "shopuser").await;
    let (_, form) = page(&c, h.https("/tests")).await;
    assert!(form.contains("value=\"fra\"") && form.contains("value=\"nyc\""));
    let r = c
        .post(h.https("/tests"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("url", "http://cdn.shop.udn.example/"),
            ("locations", "nyc"),
            ("repeat", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(
            "<td>nyc</td><td>1</td><td class=\"ok\">ok</td><td class=\"num\">2</td><td class=\"num\">12.0</td><td class=\"num\">2091</td>"
        ),
        "overall row"
    );
    assert!(body.contains("id=\"waterfall-nyc-1\""));
    assert!(body.contains("http://cdn.shop.udn.example/logo.gif"));
    assert!(body.contains("<th>FNT</th>"));
    assert!(h.probe_fra.calls("/v1/pagecheck").is_empty());

    let r = c
        .post(h.https("/tests"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("url", "http://cdn.shop.udn.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("locations: choose at least one location")
    );
    let r = c
        .post(h.https("/tests"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("url", "http://www.acme.udn.example/"),
            ("locations", "fra"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn gtm_configuration_forms_change_the_config() {
    let h = Harness::start("portal-gtm").await;
    let (c, csrf) = portal_login(&h, "shopuser").await;
    let v0 = h.state.stores().configs.current_config().unwrap().version;
    let post = |path: &str, form: Vec<(&str, &str)>| {
        let c = c.clone();
        let url = h.https(path);
        let mut form: Vec<(String, String)> = form
            .into_iter()
            .map(|(a, b)| (a.into(), b.into()))
            .collect();
        form.push(("csrf".into(), csrf.clone()));
        async move { c.post(url).form(&form).send().await.unwrap() }
    };
    let r = post(
        "/gtm/add",
        vec![
            ("hostname", "shop2.shop.udn.example"),
            ("address", "127.0.0.51"),
            ("site", "shop-north"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post(
        "/gtm/shop2.shop.udn.example/addresses",
        vec![
            ("address", "127.0.0.52"),
            ("site", "shop-north"),
            ("weight", "4"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post(
        "/gtm/shop2.shop.udn.example/monitor",
        vec![
            ("kind", "https"),
            ("path", "/"),
            ("interval_secs", "15"),
            ("timeout_ms", "900"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let cfg = h.state.stores().configs.current_config().unwrap();
    assert_eq!(cfg.version, v0 + 3);
    let g = cfg
        .config
        .gtm
        .iter()
        .find(|g| g.hostname == "shop2.shop.udn.example")
        .unwrap();
    assert_eq!(g.customer, "shop");
    assert_eq!(g.targets.len(), 2);
    assert_eq!(g.targets[1].weight, 4);
    let svc = cfg
        .config
        .services
        .iter()
        .find(|s| s.name == g.service)
        .unwrap();
    assert_eq!((svc.interval_secs, svc.timeout_ms), (15, 900));
    // The "check the certificate" box was not ticked: HTTPS accepts any certificate.
    assert!(!svc.tls_verify);
    let (_, body) = page(&c, h.https("/gtm")).await;
    assert!(body.contains("name=\"tls_verify\""), "the form offers it");
    let (_, body) = page(&c, h.https("/gtm")).await;
    assert!(body.contains("shop2.shop.udn.example") && body.contains("127.0.0.52"));

    let r = post(
        "/gtm/shop2.shop.udn.example/addresses",
        vec![("address", "banana")],
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("address: not an IP address")
    );
    let r = post(
        "/gtm/shop2.shop.udn.example/monitor",
        vec![("interval_secs", "0")],
    )
    .await;
    assert_eq!(r.status(), 422);
    let r = post(
        "/gtm/shop2.shop.udn.example/addresses/127.0.0.51/delete",
        vec![],
    )
    .await;
    assert_eq!(r.status(), 303);
    // acme's domain cannot be touched.
    for (path, form) in [
        ("/gtm/www.acme.udn.example/delete", vec![]),
        (
            "/gtm/www.acme.udn.example/addresses",
            vec![("address", "127.0.0.60")],
        ),
        ("/gtm/www.acme.udn.example/addresses/acme-1/delete", vec![]),
        ("/gtm/www.acme.udn.example/monitor", vec![("kind", "tcp")]),
    ] {
        assert_eq!(post(path, form).await.status(), 403, "{path}");
    }
    // Ticked, the certificate is checked.
    let r = post(
        "/gtm/shop2.shop.udn.example/monitor",
        vec![("kind", "https"), ("tls_verify", "on")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let cfg = h.state.stores().configs.current_config().unwrap().config;
    let g = cfg
        .gtm
        .iter()
        .find(|g| g.hostname == "shop2.shop.udn.example")
        .unwrap();
    assert!(
        cfg.services
            .iter()
            .any(|s| s.name == g.service && s.tls_verify)
    );
    let r = post("/gtm/shop2.shop.udn.example/delete", vec![]).await;
    assert_eq!(r.status(), 303);
    let cfg = h.state.stores().configs.current_config().unwrap().config;
    assert!(
        !cfg.gtm
            .iter()
            .any(|g| g.hostname == "shop2.shop.udn.example")
    );
    assert!(cfg.gtm.iter().any(|g| g.hostname == "www.acme.udn.example"));
}

#[tokio::test]
async fn invoices_list_and_show_own_only() {
    let h = Harness::start("portal-invoices").await;
    let inv = |number: &str, customer: &str| InvoiceSummary {
        id: 0,
        number: number.into(),
        customer: customer.into(),
        period_start: Timestamp::from_secs(1_761_955_200),
        period_end: Timestamp::from_secs(1_764_547_200),
        total: "250.00".parse().unwrap(),
        currency: "EUR".into(),
        issued_at: Timestamp::from_secs(1_764_547_300),
    };
    let shop =
        h.db.insert_invoice(
            &inv("INV-7", "shop"),
            "<table><tr><td>Traffic</td><td>250.00</td></tr></table>",
        )
        .unwrap();
    let acme =
        h.db.insert_invoice(&inv("INV-8", "acme"), "<p>acme secret</p>")
            .unwrap();
    let (c, _) = portal_login(&h, "shopuser").await;
    let (st, body) = page(&c, h.https("/invoices")).await;
    assert_eq!(st, 200);
    assert!(body.contains("INV-7") && !body.contains("INV-8"));
    assert!(body.contains("2025-11-01 00:00 UTC"));
    let (st, body) = page(&c, h.https(&format!("/invoices/{shop}"))).await;
    assert_eq!(st, 200);
    // billing's document, framed (sandboxed, attribute-escaped)
    assert!(body.contains("&lt;td&gt;Traffic&lt;/td&gt;"), "{body}");
    assert!(body.contains("sandbox=\"\""), "{body}");
    let (st, body) = page(&c, h.https(&format!("/invoices/{acme}"))).await;
    assert_eq!(st, 403);
    assert!(!body.contains("acme secret"));
}

#[tokio::test]
async fn start_seeds_an_empty_store_once_and_serves_both_listeners() {
    use std::sync::Arc;
    use udn_bins::api::{Backend, ControlOptions, SqliteBackend};
    udn_bins::install_crypto();
    let dir = temp_dir("portal-start");
    let cfg = |seed: udn_core::Config| udn_bins::portal::PortalConfig {
        https: "127.0.0.1:0".parse().unwrap(),
        http: Some("127.0.0.1:0".parse().unwrap()),
        cert: udn_bins::portal::CertSource::SelfSigned {
            dir: dir.join("tls"),
            names: vec!["127.0.0.1".into()],
        },
        options: ControlOptions::default(),
        seed_config: Some(seed),
        bootstrap_admin: Some(("root".into(), PASSWORD.into())),
    };
    let open = || -> Arc<dyn Backend> { Arc::new(SqliteBackend::open(&dir.join("c.db")).unwrap()) };
    let h = udn_bins::portal::start(open(), cfg(two_customer_config()))
        .await
        .unwrap();
    let http = h.http.unwrap();
    let r = reqwest::Client::new()
        .get(format!("http://{http}/v1/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the plain listener needs a credential");
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = c
        .post(format!(
            "https://127.0.0.1:{}/v1/auth/login",
            h.https.port()
        ))
        .json(&serde_json::json!({"username": "root", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = c
        .post(format!(
            "https://127.0.0.1:{}/v1/auth/token",
            h.https.port()
        ))
        .json(&serde_json::json!({"username": "root", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let snap: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/v1/config"))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap["version"], 1);
    assert_eq!(snap["config"]["customers"].as_array().unwrap().len(), 2);
    let pem = h.cert_pem.clone();
    drop(h);

    // A restart keeps the store, the users and the certificate; the seed is not reapplied.
    let h = udn_bins::portal::start(open(), cfg(udn_core::Config::default()))
        .await
        .unwrap();
    assert_eq!(
        h.state.stores().configs.current_config().unwrap().version,
        1
    );
    assert_eq!(h.state.stores().accounts.users().unwrap().len(), 1);
    assert_eq!(h.cert_pem, pem);
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
}
