//! The tenant namespace, tried from the attacker's side against the real control plane:
//! a customer cannot take another customer's hostname or origin domain (409 naming the
//! field, also refused in a raw configuration), a new hostname goes live only after its
//! TXT challenge is found by a real DNS query (at a real `udn dns` serving the record),
//! and a customer cannot purge another customer's URLs.

use crate::api_support;
use crate::proc_support;

use api_support::*;
use proc_support::{dig_short, udn_dns, udn_with_lines};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use udn_bins::distribution::{config_watcher, write_and_reload};

fn field(v: &Value) -> &str {
    v["errors"][0]["field"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_hostname_or_origin_domain_is_refused_with_409() {
    let h = Harness::start("tenant-names").await;
    let acme = h.login("acmeuser").await;
    let admin = h.login("admin").await;
    let (_, before) = admin.get("/v1/config").await;

    // shop's CDN hostname, as acme's.
    let (st, v) = acme
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "cdn.shop.udn.example", "origins": ["www.acme.udn.example"]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(field(&v), "hostname", "{v}");
    // shop's GTM hostname (also shop's origin domain), as an acme GTM hostname.
    let (st, v) = acme
        .send(
            "POST",
            "/v1/gtm",
            json!({"hostname": "WWW.shop.udn.example.", "service": "http",
                   "targets": [{"server": "acme-1"}]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(field(&v), "hostname", "{v}");
    // shop's origin domain behind a new acme CDN hostname.
    let (st, v) = acme
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "cdn2.acme.udn.example",
                   "origins": ["www.acme.udn.example", "www.shop.udn.example"],
                   "origin_urls": ["http://127.0.0.31", "http://127.0.0.31"]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(field(&v), "origins[1]", "{v}");
    // ... or added to acme's existing CDN hostname.
    let (st, v) = acme
        .send(
            "PUT",
            "/v1/cdn/cdn.acme.udn.example",
            json!({"hostname": "cdn.acme.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(field(&v), "origins[0]", "{v}");
    // Nothing changed.
    let (_, after) = admin.get("/v1/config").await;
    assert_eq!(before["version"], after["version"]);

    // A raw configuration where acme serves shop's origin domain is invalid too.
    let mut cfg = after["config"].clone();
    let acme_cdn = cfg["cdn"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["customer"] == "acme")
        .unwrap();
    acme_cdn["origins"] = json!(["www.shop.udn.example"]);
    let (st, v) = admin
        .send("PUT", "/v1/config", json!({"config": cfg}))
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["errors"].as_array().unwrap().iter().any(|e| e["field"]
            .as_str()
            .unwrap_or("")
            .ends_with(".origins[0]")
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("another customer")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_another_customers_url_is_refused_and_never_reaches_an_edge() {
    let h = Harness::start("tenant-purge").await;
    let acme = h.login("acmeuser").await;
    let shop = h.login("shopuser").await;
    for (scope, target) in [
        ("url", "http://cdn.shop.udn.example/img/a.gif"),
        ("url", "https://user@www.shop.udn.example/img/a.gif"),
        ("prefix", "http://www.shop.udn.example/"),
        ("domain", "cdn.shop.udn.example"),
    ] {
        let (st, v) = acme
            .send(
                "POST",
                "/v1/purge",
                json!({"scope": scope, "target": target}),
            )
            .await;
        // A userinfo URL is refused by the shared target parser (422) before ownership
        // is looked at; every other target by ownership (403).
        let want = if target.contains('@') { 422 } else { 403 };
        assert_eq!(st, want, "{target}: {v}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.edge1.calls("/v1/purge").is_empty(), "no purge sent");
    // The owner's own purge does reach the edge (the check above can fail).
    let (st, v) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "http://cdn.shop.udn.example/img/a.gif"}),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert!(
        eventually(10, || async { !h.edge1.calls("/v1/purge").is_empty() }).await,
        "the owner's purge reaches the edge"
    );
}

/// `dig TXT +short`.
fn dig_txt(server: SocketAddr, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            name,
            "TXT",
            "+short",
            "+tries=1",
            "+time=2",
        ])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_hostname_goes_live_only_after_its_txt_challenge_is_found_in_dns() {
    if Command::new("dig").arg("-v").output().is_err() {
        assert!(std::env::var("CI").is_err(), "dig is required");
        eprintln!("SKIPPED: dig is not installed");
        return;
    }
    // The challenge resolver's address is fixed before its zone (which holds the
    // tokens the API hands out) is written.
    let resolver = free_addr();
    let h = Harness::start_with_resolver("tenant-verify", resolver).await;
    let acme = h.login("acmeuser").await;

    let mut tokens = Vec::new();
    for host in ["right", "wrong", "missing"] {
        let hostname = format!("cdn-{host}.acme.udn.example");
        let (st, v) = acme
            .send(
                "POST",
                "/v1/cdn",
                json!({"hostname": hostname, "origins": ["www.acme.udn.example"]}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["verification"]["status"], "pending", "{v}");
        assert_eq!(
            v["verification"]["record"]["name"],
            format!("_udn-challenge.{hostname}")
        );
        let token = v["verification"]["record"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, g) = acme.get(&format!("/v1/cdn/{hostname}")).await;
        assert_eq!(g["verification"]["record"]["value"], token.as_str());
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1]);
    // A customer may not skip the check.
    let (st, v) = acme
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "cdn-skip.acme.udn.example", "verified": true,
                   "origins": ["www.acme.udn.example"]}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(field(&v), "verified");
    // Nor take over a pending name.
    let shop = h.login("shopuser").await;
    let (st, v) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "cdn-wrong.acme.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");

    // The customer's zone, on a real udn dns: the right token for one name, another
    // value for the second, nothing for the third.
    let zone = h.dir.join("challenge.zone");
    std::fs::write(
        &zone,
        format!(
            "$ORIGIN udn.example.\n$TTL 60\n\
             @ IN SOA ns1 hostmaster ( 1 7200 900 1209600 60 )\n@ IN NS ns1\nns1 IN A 127.0.0.53\n\
             _udn-challenge.cdn-right.acme IN TXT \"{}\"\n\
             _udn-challenge.cdn-wrong.acme IN TXT \"udn-verify-not-the-token\"\n",
            tokens[0]
        ),
    )
    .unwrap();
    let (_challenge_dns, lines) = udn_with_lines(
        &[
            "dns",
            "--zone",
            zone.to_str().unwrap(),
            "--listen",
            &resolver.to_string(),
        ],
        1,
    );
    assert!(lines[0].contains(&resolver.to_string()), "{lines:?}");
    assert!(dig_txt(resolver, "_udn-challenge.cdn-right.acme.udn.example").contains(&tokens[0]));

    // A udn dns fed by the control plane's configuration.
    let dns_cfg = h.dir.join("dns-network.toml");
    let _watcher = config_watcher(
        h.machine_base.clone(),
        &h.ids["dns"],
        udn_bins::pki::Revocations::default(),
        Duration::from_millis(200),
        write_and_reload(dns_cfg.clone(), None),
    )
    .expect("watcher");
    assert!(eventually(10, || async { dns_cfg.exists() }).await);
    let (_dns, dns_addr) = udn_dns(&["--config", dns_cfg.to_str().unwrap()]);
    assert!(
        eventually(20, || async {
            !dig_short(dns_addr, "cdn.acme.udn.example").is_empty()
        })
        .await,
        "the fed udn dns answers acme's verified hostname"
    );
    let roles_see = std::fs::read_to_string(&dns_cfg).unwrap();
    assert!(
        !roles_see.contains("cdn-right"),
        "pending names are not sent"
    );
    assert!(!roles_see.contains(&tokens[0]), "nor their tokens");

    // Wrong value, no record: still pending, still not served.
    for host in ["wrong", "missing"] {
        let (st, v) = acme
            .send(
                "POST",
                &format!("/v1/cdn/cdn-{host}.acme.udn.example/verify"),
                json!({}),
            )
            .await;
        assert_eq!(st, 422, "{host}: {v}");
        assert_eq!(field(&v), "challenge", "{v}");
        let (_, g) = acme
            .get(&format!("/v1/cdn/cdn-{host}.acme.udn.example"))
            .await;
        assert_eq!(g["verification"]["status"], "pending");
    }
    // Another customer cannot verify (or learn about) acme's name.
    let (st, _) = shop
        .send(
            "POST",
            "/v1/cdn/cdn-right.acme.udn.example/verify",
            json!({}),
        )
        .await;
    assert_eq!(st, 403);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(dig_short(dns_addr, "cdn-right.acme.udn.example").is_empty());
    assert!(dig_short(dns_addr, "cdn-wrong.acme.udn.example").is_empty());

    // The right value: verified, and the name goes live.
    let (st, v) = acme
        .send(
            "POST",
            "/v1/cdn/cdn-right.acme.udn.example/verify",
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["verification"]["status"], "verified", "{v}");
    // The DNS server reloads its file on SIGHUP (its HTTP API needs --pki).
    let pid = _dns.0.id().to_string();
    assert!(
        eventually(20, || async {
            let _ = Command::new("kill").args(["-HUP", &pid]).status();
            !dig_short(dns_addr, "cdn-right.acme.udn.example").is_empty()
        })
        .await,
        "the verified hostname is served"
    );
    assert!(dig_short(dns_addr, "cdn-wrong.acme.udn.example").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_hostname_expires_and_frees_its_name() {
    let h = Harness::start_with_pending_ttl("tenant-expiry", Duration::from_secs(2)).await;
    let acme = h.login("acmeuser").await;
    let shop = h.login("shopuser").await;
    let squat = json!({"hostname": "cdn-squat.udn.example", "origins": ["www.acme.udn.example"]});
    let (st, v) = acme.send("POST", "/v1/cdn", squat.clone()).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["verification"]["status"], "pending", "{v}");
    // While pending it reserves the name ...
    let (st, v) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "cdn-squat.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    // ... a verified hostname never expires ...
    let (st, _) = acme.get("/v1/cdn/cdn.acme.udn.example").await;
    assert_eq!(st, 200);
    // ... and once its time is up (2 s here; 7 days by default) it is gone.
    assert!(
        eventually(10, || async {
            acme.get("/v1/cdn/cdn-squat.udn.example").await.0 == 404
        })
        .await,
        "the pending hostname expired"
    );
    let (st, _) = acme.get("/v1/cdn/cdn.acme.udn.example").await;
    assert_eq!(st, 200, "verified hostnames stay");
    let (st, v) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "cdn-squat.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 201, "the name is free again: {v}");
}
