//! The REST API over real HTTP on loopback: every endpoint, its authorisation (a customer
//! never reaches another customer's objects) and bad input. Every test runs twice, on a
//! real SQLite file (`sqlite::…`) and on a real PostgreSQL database (`postgres::…`, from
//! `UDN_TEST_POSTGRES`; see scripts/start-postgres.sh).

use crate::api_support;
use crate::api_support::on_both_stores;

use api_support::*;
use serde_json::{Value, json};
use std::time::Duration;
use udn_bins::api::backend::InvoiceSummary;
use udn_core::Timestamp;

on_both_stores!(
    login_cookie_is_httponly_samesite_and_wrong_password_is_refused,
    login_is_rate_limited_per_user,
    cookie_changes_need_the_csrf_token_and_logout_ends_the_session,
    bearer_tokens_work_without_csrf,
    customers_and_users_are_admin_business,
    cdn_crud_is_validated_versioned_and_owner_only,
    gtm_domains_addresses_standby_and_monitors,
    static_mappings_are_owner_only,
    config_distribution_by_etag_and_long_poll,
    config_watcher_follows_changes_and_survives_an_outage,
    purge_fans_out_with_sequence_numbers_and_catches_up_a_returning_edge,
    prefill_fans_out_to_every_edge,
    live_events_are_validated_owner_only_capped_and_fanned_out_ahead_of_their_start,
    page_check_runs_on_the_chosen_probes,
    traffic_queries_sum_own_rows_only,
    traffic_ranges_are_absolute_zoned_filtered_and_exported,
    invoices_are_the_customers_own,
    openapi_document_describes_every_route,
    openapi_schemas_describe_the_answers,
    openapi_document_is_checked_in,
    a_config_committed_elsewhere_is_served_at_once,
    customer_destinations_in_the_providers_network_are_refused,
    a_config_no_probe_can_load_is_refused,
    a_hostname_colliding_with_a_zone_file_name_is_refused,
    every_rejection_is_json,
    lists_are_paged_by_cursor,
    a_hostnames_health_and_the_operators_views_are_not_anyones,
);

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn login_cookie_is_httponly_samesite_and_wrong_password_is_refused(store: Store) {
    let h = Harness::start_on(store, "api-login").await;
    let c = reqwest::Client::new();
    let r = c
        .post(h.url("/v1/auth/login"))
        .json(&json!({"username": "shopuser", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("udn_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["customer"], "shop");
    assert_eq!(body["user"]["role"], "customer");

    let r = c
        .post(h.url("/v1/auth/login"))
        .json(&json!({"username": "shopuser", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    // Malformed body: the missing field is named.
    let r = c
        .post(h.url("/v1/auth/login"))
        .json(&json!({"username": "shopuser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // Not logged in.
    let r = c.get(h.url("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

async fn login_is_rate_limited_per_user(store: Store) {
    let h = Harness::start_on(store, "api-ratelimit").await;
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = c
            .post(h.url("/v1/auth/login"))
            .json(&json!({"username": "acmeuser", "password": "guess"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[401; 5]);
    assert_eq!(&statuses[5..], &[429, 429]);
    // Even the right password is refused while the limit holds.
    let r = c
        .post(h.url("/v1/auth/login"))
        .json(&json!({"username": "acmeuser", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // Another user is not affected.
    h.login("shopuser").await;
}

async fn cookie_changes_need_the_csrf_token_and_logout_ends_the_session(store: Store) {
    let h = Harness::start_on(store, "api-csrf").await;
    let s = h.login("shopuser").await;
    let body = json!({"scope": "url", "target": "http://cdn.shop.udn.example/a.gif"});
    let r = s
        .client
        .post(h.url("/v1/purge"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no CSRF header");
    let r = s
        .client
        .post(h.url("/v1/purge"))
        .header("x-csrf-token", "not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "wrong CSRF header");
    let (st, _) = s.send("POST", "/v1/purge", body).await;
    assert_eq!(st, 202);

    let (st, me) = s.get("/v1/me").await;
    assert_eq!(st, 200);
    assert_eq!(me["user"]["username"], "shopuser");
    let (st, _) = s.send("POST", "/v1/auth/logout", json!({})).await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/v1/me").await;
    assert_eq!(st, 401);
}

async fn bearer_tokens_work_without_csrf(store: Store) {
    let h = Harness::start_on(store, "api-bearer").await;
    let c = reqwest::Client::new();
    let r: Value = c
        .post(h.url("/v1/auth/token"))
        .json(&json!({"username": "shopuser", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().unwrap();
    let r = c
        .post(h.url("/v1/purge"))
        .bearer_auth(token)
        .json(&json!({"scope": "domain", "target": "cdn.shop.udn.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["target"], "http://cdn.shop.udn.example/",
        "a domain as its root URL"
    );
    let r = c
        .post(h.url("/v1/purge"))
        .bearer_auth(token)
        .json(&json!({"scope": "url", "target": "https://cdn.shop.udn.example/a.css"}))
        .send()
        .await
        .unwrap();
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["target"], "http://cdn.shop.udn.example/a.css",
        "cache-key form"
    );
    let r = c
        .get(h.url("/v1/cdn"))
        .bearer_auth("0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn customers_and_users_are_admin_business(store: Store) {
    let h = Harness::start_on(store, "api-customers").await;
    let shop = h.login("shopuser").await;
    let admin = h.login("admin").await;

    let (st, list) = shop.get("/v1/customers").await;
    assert_eq!(st, 200);
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("shop")]);
    let (st, list) = admin.get("/v1/customers").await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);

    assert_eq!(shop.get("/v1/customers/acme").await.0, 403);
    assert_eq!(shop.get("/v1/customers/shop").await.0, 200);
    assert_eq!(
        shop.send(
            "PUT",
            "/v1/customers/acme",
            json!({"name": "acme", "display_name": "x"})
        )
        .await
        .0,
        403
    );
    let (st, c) = shop
        .send(
            "PUT",
            "/v1/customers/shop",
            json!({"name": "shop", "display_name": "Shop 2"}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        shop.send("POST", "/v1/customers", json!({"name": "new"}))
            .await
            .0,
        403
    );
    assert_eq!(
        shop.send("DELETE", "/v1/customers/acme", json!({})).await.0,
        403
    );
    assert_eq!(shop.get("/v1/users").await.0, 403);

    let (st, e) = admin
        .send("POST", "/v1/customers", json!({"name": "bad name!"}))
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["name"]);
    let (st, _) = admin
        .send("POST", "/v1/customers", json!({"name": "newco"}))
        .await;
    assert_eq!(st, 201);
    let (st, e) = admin
        .send("POST", "/v1/customers", json!({"name": "newco"}))
        .await;
    assert_eq!(st, 422, "duplicate customer: {e}");
    assert!(
        fields(&e).iter().any(|f| f.starts_with("customers[")),
        "{e}"
    );
    // Deleting a customer that still owns hostnames names the references.
    let (st, e) = admin.send("DELETE", "/v1/customers/acme", json!({})).await;
    assert_eq!(st, 422);
    assert!(fields(&e).iter().any(|f| f.ends_with(".customer")), "{e}");

    let (st, e) = admin
        .send(
            "POST",
            "/v1/users",
            json!({"username": "newbie", "password": "short", "role": "customer", "customer": "newco"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["password"]);
    let (st, e) = admin
        .send(
            "POST",
            "/v1/users",
            json!({"username": "newbie", "password": PASSWORD, "role": "customer", "customer": "ghost"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["customer"]);
    let (st, _) = admin
        .send(
            "POST",
            "/v1/users",
            json!({"username": "newbie", "password": PASSWORD, "role": "customer", "customer": "newco"}),
        )
        .await;
    assert_eq!(st, 201);
    let newbie = h.login("newbie").await;
    assert_eq!(newbie.get("/v1/cdn").await.1, json!([]));
    let (st, users) = admin.get("/v1/users").await;
    assert_eq!(st, 200);
    assert_eq!(users.as_array().unwrap().len(), 4);
}

async fn cdn_crud_is_validated_versioned_and_owner_only(store: Store) {
    let h = Harness::start_on(store, "api-cdn").await;
    let shop = h.login("shopuser").await;
    let admin = h.login("admin").await;
    let v0 = h.db.run(|db| db.current_config()).unwrap().version;

    let (st, list) = shop.get("/v1/cdn").await;
    assert_eq!(st, 200);
    let hosts: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hostname"].clone())
        .collect();
    assert_eq!(hosts, vec![json!("cdn.shop.udn.example")]);
    assert_eq!(shop.get("/v1/cdn?customer=acme").await.0, 403);
    assert_eq!(admin.get("/v1/cdn").await.1.as_array().unwrap().len(), 2);
    assert_eq!(
        admin
            .get("/v1/cdn?customer=acme")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let new = json!({"hostname": "img.shop.udn.example", "origins": ["www.shop.udn.example"]});
    let (st, c) = shop.send("POST", "/v1/cdn", new.clone()).await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["customer"], "shop");
    assert_eq!(h.db.run(|db| db.current_config()).unwrap().version, v0 + 1);
    let (st, e) = shop.send("POST", "/v1/cdn", new).await;
    assert_eq!(st, 409, "same hostname twice");
    assert_eq!(e["errors"][0]["field"], "hostname", "{e}");
    let (st, c) = shop.get("/v1/cdn/img.shop.udn.example").await;
    assert_eq!(
        (st, c["origins"].clone()),
        (200, json!(["www.shop.udn.example"]))
    );

    // Bad input names the field.
    let (st, e) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "x.shop.udn.example", "origins": ["ok.example"], "ttl": "soon"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["ttl"]);
    let (st, e) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "y.shop.udn.example", "origins": ["bad host!"]}),
        )
        .await;
    assert_eq!(st, 422);
    assert!(
        fields(&e)[0].starts_with("cdn[") && fields(&e)[0].ends_with("origins[0]"),
        "{e}"
    );
    let (st, e) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "z.shop.udn.example", "origins": [], "colour": 1}),
        )
        .await;
    assert_eq!(st, 422, "{e}");

    // Another customer's objects.
    let (st, _) = shop
        .send("POST", "/v1/cdn", json!({"hostname": "evil.acme.udn.example", "customer": "acme", "origins": ["www.acme.udn.example"]}))
        .await;
    assert_eq!(st, 403);
    assert_eq!(shop.get("/v1/cdn/cdn.acme.udn.example").await.0, 403);
    let (st, _) = shop
        .send(
            "PUT",
            "/v1/cdn/cdn.acme.udn.example",
            json!({"hostname": "cdn.acme.udn.example", "origins": ["www.acme.udn.example"]}),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        shop.send("DELETE", "/v1/cdn/cdn.acme.udn.example", json!({}))
            .await
            .0,
        403
    );
    assert_eq!(shop.get("/v1/cdn/nothing.udn.example").await.0, 404);

    let (st, c) = shop
        .send("PUT", "/v1/cdn/img.shop.udn.example", json!({"hostname": "img.shop.udn.example", "origins": ["www.shop.udn.example"], "ttl": 60}))
        .await;
    assert_eq!((st, c["ttl"].clone()), (200, json!(60)));
    let (st, _) = shop
        .send(
            "PUT",
            "/v1/cdn/img.shop.udn.example",
            json!({"hostname": "other.shop.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(
        shop.send("DELETE", "/v1/cdn/img.shop.udn.example", json!({}))
            .await
            .0,
        204
    );
    assert_eq!(shop.get("/v1/cdn/img.shop.udn.example").await.0, 404);
    // acme's hostname is untouched.
    assert_eq!(admin.get("/v1/cdn/cdn.acme.udn.example").await.0, 200);
}

async fn gtm_domains_addresses_standby_and_monitors(store: Store) {
    let h = Harness::start_on(store, "api-gtm").await;
    let shop = h.login("shopuser").await;
    let acme = h.login("acmeuser").await;

    let (st, list) = shop.get("/v1/gtm").await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let view = &list[0];
    assert_eq!(view["config"]["hostname"], "www.shop.udn.example");
    let sites: Vec<_> = view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["site"].clone())
        .collect();
    assert_eq!(sites, vec![json!("shop-east"), json!("shop-west")]);
    assert_eq!(view["targets"][0]["addresses"], json!(["127.0.0.21"]));

    // Create a domain, add an address in a new site, weight it, remove it.
    let (st, v) = shop
        .send("POST", "/v1/gtm", json!({"hostname": "api.shop.udn.example", "service": "http", "targets": [{"server": "shop-east-1"}]}))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = shop
        .send(
            "POST",
            "/v1/gtm/api.shop.udn.example/addresses",
            json!({"address": "127.0.0.41", "site": "shop-south", "weight": 3}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let t = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["site"] == "shop-south")
        .unwrap()
        .clone();
    assert_eq!(
        (t["addresses"].clone(), t["weight"].clone()),
        (json!(["127.0.0.41"]), json!(3))
    );
    let (st, v) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/addresses/127.0.0.41",
            json!({"weight": 5}),
        )
        .await;
    assert_eq!(st, 200);
    assert!(
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["weight"] == 5)
    );
    let (st, e) = shop
        .send(
            "POST",
            "/v1/gtm/api.shop.udn.example/addresses",
            json!({"address": "not-an-ip"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["address"]);
    let (st, e) = shop
        .send(
            "POST",
            "/v1/gtm/api.shop.udn.example/addresses",
            json!({"server": "nope-1"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["server"]);
    // acme's site cannot be borrowed.
    let (st, _) = shop
        .send(
            "POST",
            "/v1/gtm/api.shop.udn.example/addresses",
            json!({"server": "acme-1"}),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = shop
        .send(
            "POST",
            "/v1/gtm/api.shop.udn.example/addresses",
            json!({"address": "127.0.0.42", "site": "acme-site"}),
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = shop
        .send(
            "DELETE",
            "/v1/gtm/api.shop.udn.example/addresses/127.0.0.41",
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["targets"].as_array().unwrap().len(), 1);
    assert_eq!(
        shop.send(
            "DELETE",
            "/v1/gtm/api.shop.udn.example/addresses/127.0.0.99",
            json!({})
        )
        .await
        .0,
        404
    );

    // A bad reference is named by its config path.
    let (st, e) = shop
        .send("PUT", "/v1/gtm/api.shop.udn.example", json!({"hostname": "api.shop.udn.example", "service": "http", "targets": [{"server": "ghost-1"}]}))
        .await;
    assert_eq!(st, 422);
    let f = fields(&e);
    assert!(
        f.iter()
            .any(|f| f.starts_with("gtm[") && f.ends_with("targets[0].server")),
        "{e}"
    );
    let (st, e) = shop
        .send("PUT", "/v1/gtm/api.shop.udn.example", json!({"hostname": "api.shop.udn.example", "service": "http", "answers": 0, "targets": [{"server": "shop-east-1"}]}))
        .await;
    assert_eq!(st, 422);
    assert!(fields(&e).iter().any(|f| f.ends_with(".answers")), "{e}");

    // Standby and persistence via PUT.
    let (st, v) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/standby",
            json!({"standby": ["127.0.0.49"]}),
        )
        .await;
    assert_eq!(
        (st, v["config"]["standby"].clone()),
        (200, json!(["127.0.0.49"]))
    );
    let (st, v) = shop
        .send("PUT", "/v1/gtm/api.shop.udn.example", json!({"hostname": "api.shop.udn.example", "service": "http", "persistence": {"secs": 600}, "targets": [{"server": "shop-east-1", "weight": 2}]}))
        .await;
    assert_eq!(
        (st, v["config"]["persistence"]["secs"].clone()),
        (200, json!(600))
    );

    // Monitor change creates the hostname's own service, leaving the shared one alone.
    let (st, m) = shop.get("/v1/gtm/api.shop.udn.example/monitor").await;
    assert_eq!((st, m["name"].clone()), (200, json!("http")));
    let (st, m) = shop
        .send("PUT", "/v1/gtm/api.shop.udn.example/monitor", json!({"kind": "https", "path": "/status", "interval_secs": 30, "expect_content": "up"}))
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["name"], "mon-api.shop.udn.example");
    let cfg = h.db.run(|db| db.current_config()).unwrap().config;
    assert_eq!(
        cfg.services.iter().find(|s| s.name == "http").unwrap().path,
        "/health"
    );
    let (st, e) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/monitor",
            json!({"kind": "carrier-pigeon"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["kind"]);
    let (st, e) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/monitor",
            json!({"interval_secs": 0}),
        )
        .await;
    assert_eq!(st, 422);
    assert!(
        fields(&e).iter().any(|f| f.ends_with("interval_secs")),
        "{e}"
    );
    // An FTP monitor: a command smuggled after a line break is refused, the password is
    // kept but never shown back, and sending the shown "(set)" back keeps it.
    let (st, e) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/monitor",
            json!({"kind": "ftp", "path": "health.txt\r\nDELE index.html"}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    assert!(fields(&e).iter().any(|f| f.ends_with(".path")), "{e}");
    let (st, m) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/monitor",
            json!({"kind": "ftp", "path": "health.txt", "ftp_user": "mon", "ftp_password": "s3cret"}),
        )
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["ftp_password"], "(set)");
    let (_, m) = shop.get("/v1/gtm/api.shop.udn.example/monitor").await;
    assert_eq!(
        (m["kind"].clone(), m["ftp_password"].clone()),
        (json!("ftp"), json!("(set)"))
    );
    let (st, _) = shop
        .send(
            "PUT",
            "/v1/gtm/api.shop.udn.example/monitor",
            json!({"kind": "ftp", "path": "health.txt", "ftp_user": "mon", "ftp_password": "(set)"}),
        )
        .await;
    assert_eq!(st, 200);
    let cfg = h.db.run(|db| db.current_config()).unwrap().config;
    let mon = cfg
        .services
        .iter()
        .find(|s| s.name == "mon-api.shop.udn.example")
        .unwrap();
    assert_eq!(mon.ftp_password.as_deref(), Some("s3cret"));

    // Every GTM endpoint refuses another customer's hostname.
    let other = "/v1/gtm/api.shop.udn.example";
    assert_eq!(acme.get(other).await.0, 403);
    assert_eq!(acme.get(&format!("{other}/monitor")).await.0, 403);
    assert_eq!(
        acme.send(
            "PUT",
            other,
            json!({"hostname": "api.shop.udn.example", "service": "http", "targets": []})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        acme.send(
            "POST",
            &format!("{other}/addresses"),
            json!({"address": "127.0.0.50"})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        acme.send(
            "PUT",
            &format!("{other}/addresses/shop-east-1"),
            json!({"weight": 9})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        acme.send(
            "DELETE",
            &format!("{other}/addresses/shop-east-1"),
            json!({})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        acme.send("PUT", &format!("{other}/standby"), json!({"standby": []}))
            .await
            .0,
        403
    );
    assert_eq!(
        acme.send("PUT", &format!("{other}/monitor"), json!({"kind": "tcp"}))
            .await
            .0,
        403
    );
    assert_eq!(acme.send("DELETE", other, json!({})).await.0, 403);
    assert_eq!(acme.get("/v1/gtm?customer=shop").await.0, 403);
    let (_, acme_list) = acme.get("/v1/gtm").await;
    assert_eq!(acme_list.as_array().unwrap().len(), 1);

    assert_eq!(shop.send("DELETE", other, json!({})).await.0, 204);
    assert_eq!(shop.get(other).await.0, 404);
}

async fn static_mappings_are_owner_only(store: Store) {
    let h = Harness::start_on(store, "api-static").await;
    let shop = h.login("shopuser").await;
    let acme = h.login("acmeuser").await;
    let (st, e) = shop
        .send(
            "POST",
            "/v1/static-mappings",
            json!({"network": "198.51.100.0/24", "target": "shop-west-1"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["hostnames"]);
    let (st, e) = shop
        .send("POST", "/v1/static-mappings", json!({"network": "not a cidr", "target": "shop-west-1", "hostnames": ["www.shop.udn.example"]}))
        .await;
    assert_eq!(st, 422, "{e}");
    let (st, _) = shop
        .send("POST", "/v1/static-mappings", json!({"network": "198.51.100.0/24", "target": "shop-west-1", "hostnames": ["www.acme.udn.example"]}))
        .await;
    assert_eq!(st, 403);
    let (st, m) = shop
        .send("POST", "/v1/static-mappings", json!({"network": "198.51.100.0/24", "target": "shop-west-1", "hostnames": ["www.shop.udn.example"]}))
        .await;
    assert_eq!(st, 201, "{m}");
    let (_, list) = shop.get("/v1/static-mappings").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["target"], "shop-west-1");
    let (_, list) = acme.get("/v1/static-mappings").await;
    assert_eq!(list, json!([]));
    assert_eq!(
        acme.send("DELETE", "/v1/static-mappings/0", json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        shop.send("DELETE", "/v1/static-mappings/7", json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        shop.send("DELETE", "/v1/static-mappings/0", json!({}))
            .await
            .0,
        204
    );
}

async fn config_distribution_by_etag_and_long_poll(store: Store) {
    let h = Harness::start_on(store, "api-config").await;
    let c = reqwest::Client::new();
    // On the API, the configuration is for admins only.
    let r = c.get(h.url("/v1/config")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let shop = h.login("shopuser").await;
    assert_eq!(shop.get("/v1/config").await.0, 403);
    let r = c
        .get(h.url("/v1/config"))
        .bearer_auth("agent-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no bearer agent tokens any more");

    // The roles' channel: mutual TLS, roles dns, edge and probe only.
    let stranger = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.ids["dns"].ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = stranger.get(h.machine("/v1/config")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no certificate, no configuration");
    let r = h
        .role_client("control")
        .get(h.machine("/v1/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "role control is not a configuration reader"
    );
    let dns = h.role_client("dns");
    let r = dns.get(h.machine("/v1/config")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let snap: Value = r.json().await.unwrap();
    let v1 = snap["version"].as_u64().unwrap();
    assert!(etag.starts_with(&format!("\"v{v1}-r")), "{etag}");
    assert_eq!(snap["config"]["gtm"][0]["hostname"], "www.shop.udn.example");
    assert_eq!(snap["revoked"], json!([]));

    let r = dns
        .get(h.machine("/v1/config"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // A long poll returns as soon as a change is committed.
    let poll = |etag: String| {
        let c = dns.clone();
        let url = h.machine("/v1/config?wait=20");
        tokio::spawn(async move {
            let r = c
                .get(url)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            let etag = r.headers()["etag"].to_str().unwrap().to_owned();
            (r.status().as_u16(), etag, r.json::<Value>().await.unwrap())
        })
    };
    let waiting = poll(etag.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "long poll answered before any change"
    );
    let (st, _) = shop
        .send(
            "PUT",
            "/v1/gtm/www.shop.udn.example/standby",
            json!({"standby": ["127.0.0.28"]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, etag2, snap) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("long poll answers after the change")
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(snap["version"].as_u64().unwrap(), v1 + 1);
    assert_eq!(snap["config"]["gtm"][0]["standby"], json!(["127.0.0.28"]));
    assert_ne!(etag2, etag);

    // A revocation changes the ETag too: a waiting role wakes and learns the fingerprint.
    let waiting = poll(etag2.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "long poll answered before any change"
    );
    let fp = h.ids["probe"].identity().fingerprint.clone();
    h.revoked.replace([fp.clone()]);
    let (st, etag3, snap) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("long poll answers after the revocation")
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(snap["version"].as_u64().unwrap(), v1 + 1, "same version");
    assert_eq!(snap["revoked"], json!([fp]));
    assert_ne!(etag3, etag2);

    // A long poll with nothing new ends in 304.
    let r = dns
        .get(h.machine("/v1/config?wait=1"))
        .header("if-none-match", &etag3)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // TOML form for operators, and admin-only whole-config replacement.
    let admin = h.login("admin").await;
    let text = admin
        .client
        .get(h.url("/v1/config?format=toml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed = udn_core::Config::from_toml(&text).unwrap();
    assert_eq!(
        parsed.gtm[0].standby,
        vec!["127.0.0.28".parse::<std::net::IpAddr>().unwrap()]
    );
    let mut cfg = serde_json::to_value(&parsed).unwrap();
    cfg["gtm"][0]["answers"] = json!(0);
    let (st, e) = admin
        .send("PUT", "/v1/config", json!({"config": cfg}))
        .await;
    assert_eq!(st, 422);
    assert!(fields(&e).contains(&"gtm[0].answers".to_owned()), "{e}");
    cfg["gtm"][0]["answers"] = json!(1);
    cfg["gtm"][0]["ttl"] = json!(45);
    let (st, e) = admin
        .send(
            "PUT",
            "/v1/config",
            json!({"base": v1, "config": cfg.clone()}),
        )
        .await;
    assert_eq!(st, 409, "stale base: {e}");
    let (st, v) = admin
        .send("PUT", "/v1/config", json!({"config": cfg}))
        .await;
    assert_eq!((st, v["version"].as_u64()), (200, Some(v1 + 2)));
    assert_eq!(
        shop.send("PUT", "/v1/config", json!({"config": {}}))
            .await
            .0,
        403
    );
    let (st, old) = admin.get(&format!("/v1/config/versions/{v1}")).await;
    assert_eq!(
        (st, old["config"]["gtm"][0]["ttl"].clone()),
        (200, json!(20))
    );
    assert_eq!(shop.get(&format!("/v1/config/versions/{v1}")).await.0, 403);
}

async fn config_watcher_follows_changes_and_survives_an_outage(store: Store) {
    let h = Harness::start_on(store, "api-watcher").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // First point the watcher at a control plane that is not there.
    let dead = free_addr();
    let revoked = udn_bins::pki::Revocations::default();
    let w = udn_bins::distribution::config_watcher(
        format!("https://{dead}"),
        &h.ids["edge"],
        revoked.clone(),
        Duration::from_millis(200),
        {
            let tx = tx.clone();
            move |u| {
                let _ = tx.send(u);
                std::future::ready(())
            }
        },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing delivered while unreachable"
    );
    w.abort();

    let w = udn_bins::distribution::config_watcher(
        h.machine_base.clone(),
        &h.ids["edge"],
        revoked.clone(),
        Duration::from_millis(200),
        move |u| {
            let _ = tx.send(u);
            std::future::ready(())
        },
    )
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.config.gtm.len(), 2);
    let shop = h.login("shopuser").await;
    shop.send("DELETE", "/v1/cdn/cdn.shop.udn.example", json!({}))
        .await;
    let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(second.config.cdn.len(), 1);
    // A server with another role's certificate of the same CA (an edge posing as the
    // control plane) hands out no configuration.
    let (fake, fake_task) = udn_bins::listener::bind_and_serve(
        "127.0.0.1:0".parse().unwrap(),
        udn_bins::api::role_config_router(h.state.clone(), udn_bins::pki::Revocations::default()),
        Some(udn_bins::listener::Tls {
            config: h.ids["edge"].server_config().unwrap(),
            revoked: udn_bins::pki::Revocations::default(),
        }),
        udn_bins::listener::Limits::default(),
    )
    .await
    .unwrap();
    let (ftx, mut frx) = tokio::sync::mpsc::unbounded_channel();
    let fw = udn_bins::distribution::config_watcher(
        format!("https://{fake}"),
        &h.ids["dns"],
        udn_bins::pki::Revocations::default(),
        Duration::from_millis(200),
        move |u| {
            let _ = ftx.send(u);
            std::future::ready(())
        },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        frx.try_recv().is_err(),
        "nothing taken from a non-control server"
    );
    fw.abort();
    fake_task.abort();
    // A revocation reaches the watcher's list without a new version.
    let fp = h.ids["probe"].identity().fingerprint.clone();
    assert!(!revoked.is_revoked(&fp));
    h.revoked.replace([fp.clone()]);
    let start = std::time::Instant::now();
    while !revoked.is_revoked(&fp) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "revocation not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rx.try_recv().is_err(),
        "no new version delivered for a revocation"
    );
    w.abort();
}

async fn purge_fans_out_with_sequence_numbers_and_catches_up_a_returning_edge(store: Store) {
    let h = Harness::start_on(store, "api-purge").await;
    let shop = h.login("shopuser").await;
    let acme = h.login("acmeuser").await;

    let (st, p) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "http://www.shop.udn.example/img/a.gif"}),
        )
        .await;
    assert_eq!(st, 202, "{p}");
    let seq1 = p["seq"].as_u64().unwrap();
    assert_eq!(p["total"], 2);
    let (st, p2) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "prefix", "target": "http://cdn.shop.udn.example/img/"}),
        )
        .await;
    assert_eq!(st, 202);
    let seq2 = p2["seq"].as_u64().unwrap();
    assert!(seq2 > seq1);

    // The live edge receives both, in order.
    assert!(eventually(10, || async { h.edge1.calls("/v1/purge").len() == 2 }).await);
    let calls = h.edge1.calls("/v1/purge");
    assert_eq!(
        calls[0].body,
        json!({"scope": "url", "target": "http://www.shop.udn.example/img/a.gif", "seq": seq1})
    );
    assert_eq!(calls[1].body["seq"], seq2);
    // No bearer token: a real edge admits the control plane by its instance
    // certificate on its admin listener (tests/edge.rs, tests/portal_edges.rs).
    assert_eq!(calls[0].authorization, None);
    let (_, status) = shop.get(&format!("/v1/purge/{seq1}")).await;
    assert_eq!(status["applied"], 1);
    let down = status["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["edge"] == "nyc-edge-1")
        .unwrap()
        .clone();
    assert_eq!(down["applied"], false);
    assert!(down["last_error"].as_str().is_some());

    // The edge that was down comes back and gets what it missed, in order.
    let task = h.serve_edge2().await;
    assert!(eventually(15, || async { h.edge2.calls("/v1/purge").len() == 2 }).await);
    let seqs: Vec<_> = h
        .edge2
        .calls("/v1/purge")
        .iter()
        .map(|c| c.body["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(seq1), json!(seq2)]);
    assert!(
        eventually(5, || async {
            shop.get(&format!("/v1/purge/{seq2}")).await.1["applied"] == 2
        })
        .await
    );
    task.abort();

    // Listing shows own purges only; another customer is refused.
    let (_, list) = shop.get("/v1/purge").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, list) = acme.get("/v1/purge").await;
    assert_eq!(list, json!([]));
    assert_eq!(acme.get(&format!("/v1/purge/{seq1}")).await.0, 403);
    assert_eq!(acme.get("/v1/purge?customer=shop").await.0, 403);
    assert_eq!(
        acme.send(
            "POST",
            "/v1/purge",
            json!({"scope": "domain", "target": "cdn.shop.udn.example"})
        )
        .await
        .0,
        403
    );
    assert_eq!(shop.get("/v1/purge/99999").await.0, 404);

    // Bad input.
    let (st, e) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "everything", "target": "x"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["scope"]);
    let (st, e) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "cdn.shop.udn.example/a"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["target"]);
    let (st, e) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "http://elsewhere.example/a"}),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(fields(&e), vec!["target"]);
    let (st, _) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "domain", "target": "bad domain"}),
        )
        .await;
    assert_eq!(st, 422);
}

async fn prefill_fans_out_to_every_edge(store: Store) {
    let h = Harness::start_on(store, "api-prefill").await;
    let shop = h.login("shopuser").await;
    let urls = json!([
        "http://cdn.shop.udn.example/a.gif",
        "http://cdn.shop.udn.example/b.gif"
    ]);
    let (st, r) = shop
        .send("POST", "/v1/prefill", json!({"urls": urls}))
        .await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["urls"], urls);
    assert_eq!(r["total"], 2);
    let seq = r["seq"].as_u64().unwrap();
    assert!(eventually(10, || async { h.edge1.calls("/v1/prefill").len() == 1 }).await);
    let calls = h.edge1.calls("/v1/prefill");
    assert_eq!(calls[0].body, json!({"urls": urls}));
    // No bearer token: a real edge admits the control plane by its instance
    // certificate on its admin listener (tests/edge.rs, tests/portal_edges.rs).
    assert_eq!(calls[0].authorization, None);
    let (_, v) = shop.get(&format!("/v1/prefill/{seq}")).await;
    assert_eq!(v["applied"], 1);
    // The edge that was down gets the prefill when it comes back.
    let task = h.serve_edge2().await;
    assert!(eventually(15, || async { h.edge2.calls("/v1/prefill").len() == 1 }).await);
    assert!(
        eventually(5, || async {
            shop.get(&format!("/v1/prefill/{seq}")).await.1["applied"] == 2
        })
        .await
    );
    task.abort();
    assert_eq!(
        h.login("acmeuser")
            .await
            .get(&format!("/v1/prefill/{seq}"))
            .await
            .0,
        403
    );
    assert_eq!(shop.get("/v1/prefill/4242").await.0, 404);

    let acme = h.login("acmeuser").await;
    assert_eq!(
        acme.send("POST", "/v1/prefill", json!({"urls": urls}))
            .await
            .0,
        403
    );
    let (st, e) = shop.send("POST", "/v1/prefill", json!({"urls": []})).await;
    assert_eq!((st, fields(&e)), (422, vec!["urls".to_owned()]));
    let (st, e) = shop
        .send(
            "POST",
            "/v1/prefill",
            json!({"urls": ["http://cdn.shop.udn.example/a", "ftp://x"]}),
        )
        .await;
    assert_eq!((st, fields(&e)), (422, vec!["urls[1]".to_owned()]));
}

async fn live_events_are_validated_owner_only_capped_and_fanned_out_ahead_of_their_start(
    store: Store,
) {
    let h = Harness::start_on(store, "api-live").await;
    let shop = h.login("shopuser").await;
    let now = udn_bins::logging::now().as_millis();
    let playlist = "http://cdn.shop.udn.example/live/master.m3u8";
    let event = |starts_at: u64| {
        json!({"hostname": "cdn.shop.udn.example", "playlist_url": playlist,
               "starts_at": starts_at, "max_segments": 5})
    };
    // An event starting in a minute: inside the prefill lead, so every edge gets it now.
    let (st, ev) = shop
        .send("POST", "/v1/live-events", event(now + 60_000))
        .await;
    assert_eq!(st, 201, "{ev}");
    assert_eq!(
        (ev["customer"].as_str(), ev["total"].as_u64()),
        (Some("shop"), Some(2))
    );
    let id = ev["id"].as_i64().unwrap();
    assert!(
        eventually(10, || async {
            !h.edge1.calls("/v1/prefill-live").is_empty()
        })
        .await
    );
    let calls = h.edge1.calls("/v1/prefill-live");
    assert_eq!(calls[0].body, json!({"url": playlist, "max_segments": 5}));
    // The edge that was down prefills it when it comes back.
    let task = h.serve_edge2().await;
    assert!(
        eventually(15, || async {
            !h.edge2.calls("/v1/prefill-live").is_empty()
        })
        .await
    );
    let prefilled = || async {
        let (_, list) = shop.get("/v1/live-events").await;
        list.as_array()
            .and_then(|l| l.iter().find(|e| e["id"] == id))
            .and_then(|e| e["prefilled"].as_u64())
            == Some(2)
    };
    assert!(
        eventually(5, prefilled).await,
        "both edges prefilled the event"
    );

    // An event a day ahead is recorded, not delivered yet (nor re-delivered: the first
    // event went to each edge once).
    let later = "http://cdn.shop.udn.example/vod/index.m3u8";
    let (st, ev2) = shop
        .send(
            "POST",
            "/v1/live-events",
            json!({"hostname": "cdn.shop.udn.example", "playlist_url": later,
                   "starts_at": now + 86_400_000, "ends_at": now + 90_000_000}),
        )
        .await;
    assert_eq!(st, 201, "{ev2}");
    assert_eq!(ev2["max_segments"], 10, "the default");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for edge in [&h.edge1, &h.edge2] {
        let bodies: Vec<_> = edge
            .calls("/v1/prefill-live")
            .into_iter()
            .map(|c| c.body)
            .collect();
        assert_eq!(bodies, vec![json!({"url": playlist, "max_segments": 5})]);
    }
    task.abort();

    // Another customer can neither register an event on the shop's hostname nor see
    // the shop's events; the admin sees every customer's.
    let acme = h.login("acmeuser").await;
    assert_eq!(
        acme.send("POST", "/v1/live-events", event(now + 60_000))
            .await
            .0,
        403
    );
    let (st, mine) = acme.get("/v1/live-events").await;
    assert_eq!((st, mine), (200, json!([])));
    assert_eq!(acme.get("/v1/live-events?customer=shop").await.0, 403);
    let admin = h.login("admin").await;
    let (_, all) = admin.get("/v1/live-events?customer=shop").await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");

    // Bad fields are named, each.
    let bad = |body: Value, field: &'static str| {
        let shop = &shop;
        async move {
            let (st, e) = shop.send("POST", "/v1/live-events", body.clone()).await;
            assert_eq!(
                (st, fields(&e)),
                (422, vec![field.to_owned()]),
                "{body}: {e}"
            );
        }
    };
    let mut b = event(now + 60_000);
    b["playlist_url"] = json!("http://cdn.acme.udn.example/live/master.m3u8");
    bad(b, "playlist_url").await;
    let mut b = event(now + 60_000);
    b["playlist_url"] = json!("http://cdn.shop.udn.example/index.html");
    bad(b, "playlist_url").await;
    let mut b = event(now + 60_000);
    b["playlist_url"] = json!("file:///etc/passwd.m3u8");
    bad(b, "playlist_url").await;
    bad(event(now - 3_600_000), "starts_at").await;
    bad(event(now + 400 * 86_400_000), "starts_at").await;
    let mut b = event(now + 60_000);
    b["ends_at"] = json!(now);
    bad(b, "ends_at").await;
    let mut b = event(now + 60_000);
    b["max_segments"] = json!(0);
    bad(b, "max_segments").await;
    let mut b = event(now + 60_000);
    b["hostname"] = json!("nope.udn.example");
    b["playlist_url"] = json!("http://nope.udn.example/live/master.m3u8");
    bad(b, "hostname").await;
    let mut b = event(now + 60_000);
    b["extra"] = json!(1);
    let (st, _) = shop.send("POST", "/v1/live-events", b).await;
    assert!(st == 400 || st == 422, "an unknown field is refused: {st}");

    // At most 20 events that have not ended per customer.
    for i in 2..20 {
        let (st, e) = shop
            .send("POST", "/v1/live-events", event(now + 86_400_000 + i))
            .await;
        assert_eq!(st, 201, "event {i}: {e}");
    }
    let (st, e) = shop
        .send("POST", "/v1/live-events", event(now + 86_400_000))
        .await;
    assert_eq!(st, 409, "{e}");
    // The cap is the customer's own: acme still may register on its hostname.
    let (st, e) = acme
        .send(
            "POST",
            "/v1/live-events",
            json!({"hostname": "cdn.acme.udn.example",
                   "playlist_url": "http://cdn.acme.udn.example/tv/index.m3u8",
                   "starts_at": now + 86_400_000}),
        )
        .await;
    assert_eq!(st, 201, "{e}");
}

async fn page_check_runs_on_the_chosen_probes(store: Store) {
    let h = Harness::start_on(store, "api-pagecheck").await;
    *h.probe_fra.rows.lock().unwrap() = json!([
        {"URL": "http://cdn.shop.udn.example/", "IP": "127.0.0.11", "ERR": null, "HRC": 200, "LEN": 5120, "CHK": "ok",
         "STT": 0.0, "DRT": 1.5, "COT": 0.5, "TLS": 0.0, "DST": 3.0, "FNT": 2.0, "END": 7.0},
        {"URL": "http://cdn.shop.udn.example/a.gif", "IP": "127.0.0.11", "HRC": 200, "LEN": 43,
         "STT": 7.0, "DRT": 0.0, "COT": 0.4, "TLS": 0.0, "DST": 1.0, "FNT": 0.6, "END": 9.0}
    ]);
    let shop = h.login("shopuser").await;
    let (st, r) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://cdn.shop.udn.example/", "locations": ["fra"], "repeat": true}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let res = &r["results"][0];
    assert_eq!(
        (res["location"].clone(), res["ok"].clone()),
        (json!("fra"), json!(true))
    );
    assert_eq!(res["rows"].as_array().unwrap().len(), 2);
    assert_eq!(res["rows"][1]["url"], "http://cdn.shop.udn.example/a.gif");
    assert_eq!(res["rows"][1]["end"], 9.0);
    let calls = h.probe_fra.calls("/v1/pagecheck");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body,
        json!({"url": "http://cdn.shop.udn.example/", "repeat": true, "allow_hosts": []})
    );
    assert!(
        h.probe_nyc.calls("/v1/pagecheck").is_empty(),
        "nyc not chosen"
    );

    // The probe's own answer form: passes, times in µs, error code and message.
    *h.probe_nyc.rows.lock().unwrap() = json!({"pop": "nyc", "reports": [
        {"overall": {"url": "http://cdn.shop.udn.example/", "pass": 1}, "rows": [
            {"url": "http://cdn.shop.udn.example/", "ip": "127.0.0.12", "err": 0, "hrc": 200, "len": 10, "chk": 305419896,
             "stt_us": 0, "drt_us": 1500, "cot_us": 250, "tls_us": 0, "dst_us": 3000, "fnt_us": 250, "end_us": 5000},
            {"url": "http://cdn.shop.udn.example/gone.gif", "ip": null, "err": 3, "error": {"Connect": "refused"}, "hrc": 0, "len": 0, "chk": 0,
             "stt_us": 5000, "drt_us": 0, "cot_us": 1000, "tls_us": 0, "dst_us": 0, "fnt_us": 0, "end_us": 6000}]},
        {"overall": {"url": "http://cdn.shop.udn.example/", "pass": 2}, "rows": [
            {"url": "http://cdn.shop.udn.example/", "ip": "127.0.0.12", "err": 0, "hrc": 200, "len": 10, "chk": 305419896,
             "stt_us": 0, "drt_us": 0, "cot_us": 250, "tls_us": 0, "dst_us": 2000, "fnt_us": 250, "end_us": 2500}]}
    ]});
    let (st, r) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://cdn.shop.udn.example/", "locations": ["nyc"]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let rows = &r["results"][0]["rows"];
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(
        (
            rows[0]["pass"].clone(),
            rows[0]["drt"].clone(),
            rows[0]["end"].clone()
        ),
        (json!(1), json!(1.5), json!(5.0))
    );
    assert_eq!(rows[1]["err"], json!("{\"Connect\":\"refused\"}"));
    assert_eq!(rows[1]["hrc"], Value::Null);
    assert_eq!(
        (rows[2]["pass"].clone(), rows[2]["end"].clone()),
        (json!(2), json!(2.5))
    );
    assert_eq!(
        h.probe_nyc.calls("/v1/pagecheck")[0].body,
        json!({"url": "http://cdn.shop.udn.example/", "repeat": false, "allow_hosts": []})
    );

    let (st, e) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://cdn.shop.udn.example/", "locations": ["fra", "mars"]}),
        )
        .await;
    assert_eq!((st, fields(&e)), (422, vec!["locations[1]".to_owned()]));
    let (st, e) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://cdn.shop.udn.example/", "locations": ["fra"], "repeat": 50}),
        )
        .await;
    assert_eq!((st, fields(&e)), (422, vec!["repeat".to_owned()]));
    let (st, e) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "nonsense", "locations": ["fra"]}),
        )
        .await;
    assert_eq!((st, fields(&e)), (422, vec!["url".to_owned()]));
    let (st, _) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://www.acme.udn.example/", "locations": ["fra"]}),
        )
        .await;
    assert_eq!(st, 403);
}

async fn traffic_queries_sum_own_rows_only(store: Store) {
    let h = Harness::start_on(store, "api-traffic").await;
    let now = udn_bins::logging::now().as_millis();
    let minute = |ago: u64| Timestamp::from_millis((now - ago * 60_000) / 60_000 * 60_000);
    h.db.record_cdn_traffic("shop", "cdn.shop.udn.example", "fra", minute(5), 1000, 10)
        .unwrap();
    h.db.record_cdn_traffic("shop", "cdn.shop.udn.example", "nyc", minute(5), 500, 5)
        .unwrap();
    h.db.record_cdn_traffic("shop", "cdn.shop.udn.example", "fra", minute(3), 700, 7)
        .unwrap();
    h.db.record_cdn_traffic(
        "shop",
        "cdn.shop.udn.example",
        "fra",
        minute(60 * 30),
        9999,
        99,
    )
    .unwrap();
    h.db.record_cdn_traffic("acme", "cdn.acme.udn.example", "sin", minute(5), 123_456, 1)
        .unwrap();
    h.db.record_gtm_answers(
        "shop",
        "www.shop.udn.example",
        "fra",
        "127.0.0.21",
        minute(4),
        40,
    )
    .unwrap();
    h.db.record_gtm_answers(
        "shop",
        "www.shop.udn.example",
        "nyc",
        "127.0.0.22",
        minute(4),
        2,
    )
    .unwrap();
    h.db.record_gtm_answers(
        "acme",
        "www.acme.udn.example",
        "fra",
        "127.0.0.31",
        minute(4),
        77,
    )
    .unwrap();

    let shop = h.login("shopuser").await;
    let (st, t) = shop.get("/v1/traffic/cdn").await;
    assert_eq!(st, 200);
    assert_eq!(
        t["points"],
        json!([
            {"minute": minute(5).as_millis(), "bytes": 1500, "hits": 15},
            {"minute": minute(3).as_millis(), "bytes": 700, "hits": 7}
        ])
    );
    let (_, t) = shop.get("/v1/traffic/cdn?hours=48").await;
    assert_eq!(t["points"].as_array().unwrap().len(), 3);
    let (_, t) = shop.get("/v1/traffic/cdn/locations").await;
    assert_eq!(
        t["points"],
        json!([{"pop": "fra", "bytes": 1700, "hits": 17}, {"pop": "nyc", "bytes": 500, "hits": 5}])
    );
    let (_, t) = shop.get("/v1/traffic/gtm").await;
    assert_eq!(t["points"].as_array().unwrap().len(), 2);
    assert_eq!(t["points"][0]["address"], "127.0.0.21");
    assert_eq!(t["points"][0]["answers"], 40);
    let (_, t) = shop.get("/v1/traffic/gtm/locations").await;
    assert_eq!(
        t["points"],
        json!([{"pop": "fra", "address": "127.0.0.21", "answers": 40}, {"pop": "nyc", "address": "127.0.0.22", "answers": 2}])
    );
    for path in [
        "/v1/traffic/cdn",
        "/v1/traffic/cdn/locations",
        "/v1/traffic/gtm",
        "/v1/traffic/gtm/locations",
    ] {
        assert_eq!(
            shop.get(&format!("{path}?customer=acme")).await.0,
            403,
            "{path}"
        );
    }
    let (st, e) = shop.get("/v1/traffic/cdn?hours=0").await;
    assert_eq!((st, fields(&e)), (400, vec!["hours".to_owned()]));
    let admin = h.login("admin").await;
    let (_, t) = admin.get("/v1/traffic/cdn/locations?customer=acme").await;
    assert_eq!(
        t["points"],
        json!([{"pop": "sin", "bytes": 123456, "hits": 1}])
    );
    let (_, t) = admin.get("/v1/traffic/cdn/locations").await;
    assert_eq!(t["points"].as_array().unwrap().len(), 3);
}

/// `from`/`to` (RFC 3339 or local in `tz`), the grain the span is read at, the covered
/// range stated in the answer, the `host` filter, CSV by `format=csv` and by `Accept`
/// with formula cells escaped, and every bad value a 400 naming its parameter.
async fn traffic_ranges_are_absolute_zoned_filtered_and_exported(store: Store) {
    let h = Harness::start_on(store, "api-ranges").await;
    let at = |s: &str| {
        Timestamp::from_millis(s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64)
    };
    let cdn = "cdn.shop.udn.example";
    let img = "img.shop.udn.example";
    for (host, t, bytes) in [
        (cdn, "2026-06-01T10:05:00Z", 100),
        (cdn, "2026-06-01T10:40:00Z", 20),
        (img, "2026-06-01T10:41:00Z", 3),
        (cdn, "2026-06-20T08:00:00Z", 4000),
        (cdn, "2025-12-31T23:59:00Z", 50_000),
    ] {
        h.db.record_cdn_traffic("shop", host, "fra", at(t), bytes, 1)
            .unwrap();
    }
    h.db.record_gtm_answers(
        "shop",
        "=HYPERLINK(\"x\")",
        "fra",
        "127.0.0.21",
        at("2026-06-01T10:05:00Z"),
        9,
    )
    .unwrap();
    let shop = h.login("shopuser").await;
    let points = |v: &Value| -> Vec<(u64, u64)> {
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["minute"].as_u64().unwrap(), p["bytes"].as_u64().unwrap()))
            .collect()
    };

    // An hour in Berlin (UTC+2 in June), given as local times: read per minute.
    let (st, v) = shop
        .get("/v1/traffic/cdn?from=2026-06-01T12:00&to=2026-06-01T13:00&tz=Europe/Berlin")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["from"], "2026-06-01T12:00:00+02:00", "{v}");
    assert_eq!(v["to"], "2026-06-01T13:00:00+02:00", "{v}");
    assert_eq!(v["tz"], "Europe/Berlin");
    assert_eq!(v["granularity"], "minute");
    assert_eq!(v["from_ms"], at("2026-06-01T10:00:00Z").as_millis());
    assert_eq!(
        points(&v),
        vec![
            (at("2026-06-01T10:05:00Z").as_millis(), 100),
            (at("2026-06-01T10:40:00Z").as_millis(), 20),
            (at("2026-06-01T10:41:00Z").as_millis(), 3),
        ]
    );
    // The same hour in RFC 3339, one domain only.
    let (_, v) = shop
        .get(&format!(
            "/v1/traffic/cdn?from=2026-06-01T10:00:00Z&to=2026-06-01T11:00:00%2B00:00&host={img}"
        ))
        .await;
    assert_eq!(v["host"], img);
    assert_eq!(
        points(&v),
        vec![(at("2026-06-01T10:41:00Z").as_millis(), 3)]
    );
    // Two months: per hour, the range widened to whole hours.
    let (_, v) = shop
        .get("/v1/traffic/cdn?from=2026-05-01T00:30:00Z&to=2026-07-01T00:00:00Z")
        .await;
    assert_eq!(v["granularity"], "hour", "{v}");
    assert_eq!(v["from"], "2026-05-01T00:00:00+00:00");
    assert_eq!(v["step_ms"], 3_600_000);
    assert_eq!(
        points(&v),
        vec![
            (at("2026-06-01T10:00:00Z").as_millis(), 123),
            (at("2026-06-20T08:00:00Z").as_millis(), 4000),
        ]
    );
    // A year: per day.
    let (_, v) = shop
        .get("/v1/traffic/cdn?from=2025-07-01T00:00:00Z&to=2026-07-01T00:00:00Z&tz=Asia/Tokyo")
        .await;
    assert_eq!(v["granularity"], "day", "{v}");
    assert_eq!(v["from"], "2025-07-01T09:00:00+09:00");
    assert_eq!(
        points(&v),
        vec![
            (at("2025-12-31T00:00:00Z").as_millis(), 50_000),
            (at("2026-06-01T00:00:00Z").as_millis(), 123),
            (at("2026-06-20T00:00:00Z").as_millis(), 4000),
        ]
    );
    let (_, v) = shop
        .get("/v1/traffic/cdn/locations?from=2025-07-01T00:00:00Z&to=2026-07-01T00:00:00Z")
        .await;
    assert_eq!(
        v["points"],
        json!([{"pop": "fra", "bytes": 54_123, "hits": 5}])
    );

    // CSV, by parameter and by Accept; the times in the zone asked.
    let r = shop
        .client
        .get(h.url(
            "/v1/traffic/cdn?from=2026-06-01T12:00&to=2026-06-01T13:00&tz=Europe/Berlin&format=csv",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(r.headers()["x-udn-from"], "2026-06-01T12:00:00+02:00");
    assert_eq!(
        r.text().await.unwrap(),
        "time,bytes,hits\r\n2026-06-01T12:05:00+02:00,100,1\r\n\
         2026-06-01T12:40:00+02:00,20,1\r\n2026-06-01T12:41:00+02:00,3,1\r\n"
    );
    let r = shop
        .client
        .get(h.url("/v1/traffic/gtm?from=2026-06-01T10:00:00Z&to=2026-06-01T11:00:00Z"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        "time,hostname,address,answers\r\n\
         2026-06-01T10:05:00+00:00,\"'=HYPERLINK(\"\"x\"\")\",127.0.0.21,9\r\n",
        "a formula in a cell is text"
    );
    // JSON stays the default.
    let (st, v) = shop
        .get("/v1/traffic/gtm?from=2026-06-01T10:00:00Z&to=2026-06-01T11:00:00Z&format=json")
        .await;
    assert_eq!((st, v["points"][0]["answers"].clone()), (200, json!(9)));

    // Bad values: 400, the parameter named.
    for (query, field) in [
        ("from=yesterday", "from"),
        ("from=2026-06-01T10:00:00Z&to=2026-13-01T00:00:00Z", "to"),
        ("tz=Mars/Olympus_Mons", "tz"),
        ("from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z", "to"),
        ("from=2016-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("format=xml", "format"),
        ("hours=100000", "hours"),
    ] {
        let (st, e) = shop.get(&format!("/v1/traffic/cdn?{query}")).await;
        assert_eq!(
            (st, fields(&e)),
            (400, vec![field.to_owned()]),
            "{query}: {e}"
        );
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
}

async fn invoices_are_the_customers_own(store: Store) {
    let h = Harness::start_on(store, "api-invoices").await;
    let inv = |number: &str, customer: &str, total: &str| InvoiceSummary {
        id: 0,
        number: number.into(),
        customer: customer.into(),
        period_start: Timestamp::from_secs(1_761_955_200),
        period_end: Timestamp::from_secs(1_764_547_200),
        total: total.parse().unwrap(),
        currency: "EUR".into(),
        issued_at: Timestamp::from_secs(1_764_547_300),
    };
    let shop_id =
        h.db.insert_invoice(
            &inv("2025-11-0001", "shop", "1234.50"),
            "<p>Shop invoice 2025-11-0001</p>",
        )
        .unwrap();
    let acme_id =
        h.db.insert_invoice(&inv("2025-11-0002", "acme", "99.00"), "<p>Acme invoice</p>")
            .unwrap();
    let shop = h.login("shopuser").await;
    let (st, list) = shop.get("/v1/invoices").await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["number"], "2025-11-0001");
    assert_eq!(list[0]["total"], "1234.50");
    let (st, one) = shop.get(&format!("/v1/invoices/{shop_id}")).await;
    assert_eq!(
        (st, one["html"].clone()),
        (200, json!("<p>Shop invoice 2025-11-0001</p>"))
    );
    let html = shop
        .client
        .get(h.url(&format!("/v1/invoices/{shop_id}/html")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Shop invoice"));
    assert_eq!(shop.get(&format!("/v1/invoices/{acme_id}")).await.0, 403);
    assert_eq!(
        shop.get(&format!("/v1/invoices/{acme_id}/html")).await.0,
        403
    );
    assert_eq!(shop.get("/v1/invoices?customer=acme").await.0, 403);
    assert_eq!(shop.get("/v1/invoices/424242").await.0, 404);
    assert_eq!(
        shop.get(&format!("/v1/invoices/{acme_id}/pdf")).await.0,
        403
    );
    // Payments, voids and credits are an admin's: a customer cannot mark its own
    // invoice paid or cancel it.
    for (path, body) in [
        (
            "/v1/billing/invoices/2025-11-0001/payments",
            json!({"amount": "1234.50", "reference": "trust me"}),
        ),
        ("/v1/billing/invoices/2025-11-0001/void", json!({})),
        ("/v1/billing/invoices/2025-11-0001/credit", json!({})),
    ] {
        assert_eq!(shop.send("POST", path, body).await.0, 403, "{path}");
    }
    let admin = h.login("admin").await;
    assert_eq!(
        admin.get("/v1/invoices").await.1.as_array().unwrap().len(),
        2
    );
}

/// The served document and the router agree exactly, both ways. The routers are built
/// with `utoipa_axum`'s `routes!`, which registers a handler and its description
/// together; a plain `.route(` there would serve an undescribed route, so the source
/// must have none. Then, over HTTP: every (path, method) the document names is routed
/// (never the router's "no route" 404 nor 405), and every other method on a
/// documented path is 405.
async fn openapi_document_describes_every_route(store: Store) {
    let h = Harness::start_on(store, "api-openapi").await;
    let r = reqwest::get(h.url("/v1/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let src = include_str!("../../src/api/routes.rs");
    let start = src.find("fn credential_routes()").unwrap();
    let machine = src.find("fn machine_routes()").unwrap();
    let builders = &src[start..machine + src[machine..].find("\n}\n").unwrap()];
    for raw in [".route(", ".route_service(", ".nest(", ".nest_service("] {
        assert!(
            !builders.contains(raw),
            "the API's routers register a route with {raw} (not in the OpenAPI document); use .routes(routes!(handler))"
        );
    }

    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    let fill = |p: &str| {
        p.replace("{hostname}", "www.shop.udn.example")
            .replace("{address}", "192.0.2.1")
            .replace("{number}", "X-1")
            .replace("{account}", "nobody")
            .replace("{name}", "nobody")
            .replace("{id}", "999999")
            .replace("{seq}", "999999")
            .replace("{version}", "999999")
            .replace("{index}", "999999")
    };
    let c = reqwest::Client::new();
    let mut documented = 0;
    let mut wrong = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = fill(path);
        assert!(
            !url.contains('{'),
            "a path parameter this test cannot fill: {path}"
        );
        for m in methods {
            let described = item.get(m.to_ascii_lowercase()).is_some();
            documented += usize::from(described);
            let r = c
                .request(m.parse().unwrap(), h.url(&url))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let no_route = status == 404
                && body["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no route"));
            let routed = !no_route && status != 405;
            if routed != described {
                wrong.push(format!(
                    "{m} {path}: {} in the document, answered {status} {body}",
                    if described { "described" } else { "not" }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the document and the router disagree:\n{}",
        wrong.join("\n")
    );
    assert!(documented > 60, "found {documented} operations");
}

/// docs/openapi.json is the served document, byte for byte (`udn openapi` writes it;
/// `UDN_BLESS=1` makes this test write it instead).
async fn openapi_document_is_checked_in(store: Store) {
    let h = Harness::start_on(store, "api-openapi-file").await;
    let served = reqwest::get(h.url("/v1/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    if std::env::var_os("UDN_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(file, &served).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(file).unwrap_or_default();
    assert!(
        checked_in == served,
        "docs/openapi.json is not the served document: run `cargo run -p udn-bins --bin udn -- openapi > docs/openapi.json` (or this test with UDN_BLESS=1)"
    );
}

/// Every GET route the document describes answers, as the admin and as a customer,
/// a body its `200` schema accepts (OpenAPI 3.1 schemas are JSON Schema 2020-12, checked
/// by the jsonschema crate with the document's components for `$ref`s); routes this
/// backend does not serve (404) are counted, not checked.
async fn openapi_schemas_describe_the_answers(store: Store) {
    let h = Harness::start_on(store, "api-openapi-schemas").await;
    let doc: Value = reqwest::get(h.url("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = h.login("admin").await;
    let shop = h.login("shopuser").await;
    // Path parameters: objects the harness's configuration has.
    let fill = |p: &str| {
        p.replace("{hostname}", "www.shop.udn.example")
            .replace("{name}", "shop")
    };
    let mut checked = Vec::new();
    let mut skipped = Vec::new();
    let mut mismatches = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item["get"]["responses"]["200"]["content"]["application/json"]
            .get("schema")
            .is_none()
        {
            continue;
        }
        if path.contains('{') && !(path.contains("{hostname}") || path.contains("{name}")) {
            continue;
        }
        if path == "/v1/openapi.json" || path.starts_with("/v1/cdn/{") {
            continue;
        }
        for (who, s) in [("admin", &admin), ("shop", &shop)] {
            let (st, body) = s.get(&fill(path)).await;
            if st != 200 {
                skipped.push(format!("{who} {path} {st}"));
                continue;
            }
            let errors = schema_errors(&doc, path, &body).unwrap_or_default();
            if !errors.is_empty() {
                let text = body.to_string();
                mismatches.push(format!(
                    "{who} GET {path}: {errors:?}\n  {}",
                    &text[..text.len().min(600)]
                ));
            }
            checked.push(format!("{who} {path}"));
        }
    }
    eprintln!("checked {checked:?}; not served here: {skipped:?}");
    assert!(
        mismatches.is_empty(),
        "answers that do not match the OpenAPI document:\n{}",
        mismatches.join("\n")
    );
    assert!(checked.len() >= 20, "{checked:?} / {skipped:?}");
}

/// The API keeps the parsed configuration while the stored version stays the same; a
/// version committed by another control plane sharing the database (here: straight
/// into the store) is served by the next request.
async fn a_config_committed_elsewhere_is_served_at_once(store: Store) {
    let h = Harness::start_on(store, "api-config-cache").await;
    let shop = h.login("shopuser").await;
    let hosts = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["hostname"].as_str().unwrap().to_owned())
            .collect()
    };
    let (st, list) = shop.get("/v1/cdn").await;
    assert_eq!(st, 200);
    assert_eq!(hosts(&list), ["cdn.shop.udn.example"]);
    let snap = h.db.run(|db| db.current_config()).unwrap();
    let mut cfg = snap.config.clone();
    let mut extra = cfg.cdn[0].clone();
    extra.hostname = "static.shop.udn.example".into();
    cfg.cdn.push(extra);
    let v =
        h.db.run(|db| db.commit_config(snap.version, &cfg, "elsewhere", udn_bins::logging::now()))
            .unwrap();
    let (_, list) = shop.get("/v1/cdn").await;
    assert_eq!(
        hosts(&list),
        ["cdn.shop.udn.example", "static.shop.udn.example"]
    );
    let (_, c) = h.login("admin").await.get("/v1/config").await;
    assert_eq!(c["version"], v, "{c}");
}

/// From the attacker's side: a customer names destinations inside the provider's
/// network (a real server with a secret listens on 127.0.0.1) and every one is refused
/// with 422 naming the field; the configuration does not change and nothing connects
/// to the server. The operator's allow list here covers only the sample's origins
/// (127.0.0.16/28), and an origin there is accepted, so the refusal is the policy's.
async fn customer_destinations_in_the_providers_network_are_refused(store: Store) {
    let h = Harness::start_on(store, "api-ssrf").await;
    let shop = h.login("shopuser").await;
    let admin = h.login("admin").await;
    let secret = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    secret.set_nonblocking(true).unwrap();
    let port = secret.local_addr().unwrap().port();

    let mut cfg = h.db.run(|db| db.current_config()).unwrap().config;
    cfg.security.allow_target_ranges = vec!["127.0.0.16/28".parse().unwrap()];
    let (st, b) = admin
        .send("PUT", "/v1/config", json!({"config": cfg.clone()}))
        .await;
    assert_eq!(st, 200, "{b}");
    let v0 = h.db.run(|db| db.current_config()).unwrap().version;

    for (url, range) in [
        (format!("http://127.0.0.1:{port}/"), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "cloud-metadata",
        ),
        ("https://10.0.0.1/".into(), "private"),
    ] {
        let (st, b) = shop
            .send(
                "POST",
                "/v1/cdn",
                json!({"hostname": "evil.shop.udn.example", "origins": ["www.evil.example"],
                       "origin_urls": [url]}),
            )
            .await;
        assert_eq!(st, 422, "{url}: {b}");
        assert_eq!(fields(&b), vec!["origin_urls[0]"], "{b}");
        assert!(b["error"].as_str().unwrap().contains(range), "{b}");
    }
    let (st, b) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "evil.shop.udn.example", "origins": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(
        (st, fields(&b)),
        (422, vec!["origins[0]".to_string()]),
        "{b}"
    );
    let (st, b) = shop
        .send(
            "POST",
            "/v1/gtm/www.shop.udn.example/addresses",
            json!({"address": "100.64.0.1"}),
        )
        .await;
    assert_eq!((st, fields(&b)), (422, vec!["address".to_string()]), "{b}");
    let (st, b) = shop
        .send(
            "PUT",
            "/v1/gtm/www.shop.udn.example/standby",
            json!({"standby": ["127.0.0.29", "::1"]}),
        )
        .await;
    assert_eq!(
        (st, fields(&b)),
        (422, vec!["standby[1]".to_string()]),
        "{b}"
    );
    // The same rule holds for a whole configuration, with the config's field path.
    let mut bad = cfg.clone();
    bad.origins[0].servers[0].addresses = vec!["127.0.0.1".parse().unwrap()];
    let (st, b) = admin
        .send("PUT", "/v1/config", json!({"config": bad}))
        .await;
    assert_eq!(st, 422, "{b}");
    assert_eq!(
        fields(&b),
        vec!["origins[0].servers[0].addresses[0]"],
        "{b}"
    );
    assert_eq!(h.db.run(|db| db.current_config()).unwrap().version, v0);
    assert!(
        matches!(secret.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the provider's server"
    );

    // Inside the operator's allow list: accepted.
    let (st, b) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "ok.shop.udn.example", "origins": ["www.ok.example"],
                   "origin_urls": ["http://127.0.0.21:8080"]}),
        )
        .await;
    assert_eq!(st, 201, "{b}");

    // Page checks: extra component hosts must be hostnames, and reach the probe.
    let (st, b) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://www.shop.udn.example/", "locations": ["fra"],
                   "allow_hosts": ["bad host!"]}),
        )
        .await;
    assert_eq!(
        (st, fields(&b)),
        (422, vec!["allow_hosts[0]".to_string()]),
        "{b}"
    );
    let (st, b) = shop
        .send(
            "POST",
            "/v1/pagecheck",
            json!({"url": "http://www.shop.udn.example/", "locations": ["fra"],
                   "allow_hosts": ["static.example"]}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let calls = h.probe_fra.calls("/v1/pagecheck");
    assert_eq!(
        calls.last().unwrap().body["allow_hosts"],
        json!(["static.example"])
    );
}

/// A monitor regex no probe can compile (over the probe's size limit) is refused with
/// 422 naming the field, by the probe's own check, and never becomes a version; a
/// compilable one is accepted.
async fn a_config_no_probe_can_load_is_refused(store: Store) {
    let h = Harness::start_on(store, "api-roles-load").await;
    let admin = h.login("admin").await;
    let text = admin
        .client
        .get(h.url("/v1/config?format=toml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut cfg = udn_core::Config::from_toml(&text).unwrap();
    let n = cfg.services.len();
    cfg.services
        .push(toml::from_str("name = \"evil\"\nexpect_regex = \"(a{1000}){1000}\"").unwrap());
    let (st, e) = admin
        .send("PUT", "/v1/config", json!({ "config": cfg.clone() }))
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(
        fields(&e),
        vec![format!("config.services[{n}].expect_regex")],
        "{e}"
    );
    let now = admin
        .client
        .get(h.url("/v1/config?format=toml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !now.contains("evil"),
        "the refused version was not committed"
    );
    cfg.services[n].expect_regex = Some("ok|fine".into());
    let (st, v) = admin
        .send("PUT", "/v1/config", json!({ "config": cfg }))
        .await;
    assert_eq!(st, 200, "{v}");
}

async fn a_hostname_colliding_with_a_zone_file_name_is_refused(store: Store) {
    let h = Harness::start_on(store, "api-zone-collide").await;
    let admin = h.login("admin").await;
    let text = admin
        .client
        .get(h.url("/v1/config?format=toml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut cfg = udn_core::Config::from_toml(&text).unwrap();
    // A zone file the control plane cannot read is refused, naming the field.
    cfg.dns.zones[0].file = Some("udn.zone".into());
    let (st, e) = admin
        .send("PUT", "/v1/config", json!({ "config": cfg.clone() }))
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(
        fields(&e),
        vec!["config.dns.zones[0].file".to_owned()],
        "{e}"
    );
    // The operator's zone file has a static name.
    std::fs::create_dir_all(h.dir.join("zones")).unwrap();
    std::fs::write(
        h.dir.join("zones").join("udn.zone"),
        "$ORIGIN udn.example.\n$TTL 60\n\
         @ IN SOA ns1 hostmaster ( 1 7200 900 1209600 60 )\n@ IN NS ns1\n\
         ns1 IN A 127.0.0.53\nstatic.shop IN A 127.0.0.54\n",
    )
    .unwrap();
    let (st, e) = admin
        .send("PUT", "/v1/config", json!({ "config": cfg.clone() }))
        .await;
    assert_eq!(st, 200, "{e}");
    // The DNS role refuses the colliding configuration itself with the same function.
    let mut colliding = cfg.clone();
    colliding.cdn[0].hostname = "static.shop.udn.example".into();
    assert!(udn_bins::dns::load_config(colliding.clone(), &h.dir.join("zones")).is_err());

    // A customer cannot register that name, as GTM or CDN hostname (pending or not).
    let shop = h.login("shopuser").await;
    let n_cdn = cfg.cdn.len();
    let (st, e) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "static.shop.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(fields(&e), vec![format!("cdn[{n_cdn}].hostname")], "{e}");
    let n_gtm = cfg.gtm.len();
    let (st, e) = shop
        .send(
            "POST",
            "/v1/gtm",
            json!({"hostname": "static.shop.udn.example", "service": cfg.gtm[0].service.clone(),
                   "targets": [{"server": cfg.gtm[0].targets[0].server.clone()}]}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(fields(&e), vec![format!("gtm[{n_gtm}].hostname")], "{e}");
    // Nor can an admin commit it whole.
    let (st, e) = admin
        .send("PUT", "/v1/config", json!({ "config": colliding }))
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(fields(&e), vec!["config.cdn[0].hostname".to_owned()], "{e}");
    // A name the zone file does not have is fine.
    let (st, e) = shop
        .send(
            "POST",
            "/v1/cdn",
            json!({"hostname": "fresh.shop.udn.example", "origins": ["www.shop.udn.example"]}),
        )
        .await;
    assert_eq!(st, 201, "{e}");
}

/// Unknown routes, bad path parameters and query strings, a wrong method and a body over
/// the limit all answer JSON `{"error": ...}` with their status; the portal's unknown
/// paths get a page; the plain-HTTP listener says where credentials go.
async fn every_rejection_is_json(store: Store) {
    let h = Harness::start_on(store, "api-rejections").await;
    let shop = h.login("shopuser").await;
    let check = |want: u16, (st, v): (u16, Value)| -> Value {
        assert_eq!(st, want, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        v
    };
    let v = check(404, shop.get("/v1/no-such-thing").await);
    assert_eq!(v["error"], "no route GET /v1/no-such-thing");
    check(400, shop.get("/v1/invoices/not-a-number").await);
    let v = check(400, shop.get("/v1/traffic/cdn?hours=many").await);
    assert_eq!(fields(&v), vec!["hours"], "{v}");
    // 405 keeps its Allow header
    let r = shop
        .client
        .delete(h.url("/v1/traffic/cdn"))
        .header("x-csrf-token", &shop.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().contains_key("allow"));
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "{:?}",
        r.headers()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "method not allowed");
    // a body that is not JSON at all
    let r = shop
        .client
        .put(h.url("/v1/gtm/api.shop.udn.example/standby"))
        .header("x-csrf-token", &shop.csrf)
        .header("content-type", "text/plain")
        .body("purge everything")
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v = check(415, (st, r.json().await.unwrap_or(Value::Null)));
    assert!(
        v["error"].as_str().unwrap().contains("application/json"),
        "{v}"
    );
    // a body over the limit
    let r = shop
        .client
        .put(h.url("/v1/gtm/api.shop.udn.example/standby"))
        .header("x-csrf-token", &shop.csrf)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"standby\": [{}\"\"]}}",
            "\"192.0.2.1\",".repeat(400_000)
        ))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    check(413, (st, v));
    // the portal's unknown path is a page, not JSON
    let r = h
        .https_client()
        .get(h.https("/no-such-page"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("<h1>Not found</h1>"));
    // the plain-HTTP listener has no credential routes, and says so
    let (plain, task) = udn_bins::api::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        udn_bins::api::machine_router(h.state.clone()),
    )
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{plain}/v1/auth/login"))
        .json(&json!({"username": "shopuser", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("HTTPS only"), "{v}");
    task.abort();
}

/// GETs `path` with the session, returning the status, the body and the `Link` header.
async fn get_with_link(s: &Session, path: &str) -> (u16, Value, Option<String>) {
    let r = s
        .client
        .get(format!("{}{}", s.base, path))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), link)
}

/// The path of a `Link: <PATH>; rel="next"` header.
fn next_path(link: &str) -> String {
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    link.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned()
}

async fn lists_are_paged_by_cursor(store: Store) {
    let h = Harness::start_on(store, "api-pages").await;
    let shop = h.login("shopuser").await;
    // Five purges (newest first) in pages of two: every one once, in order, with the
    // other parameters kept in the next link.
    let mut seqs = Vec::new();
    for i in 0..5 {
        let (st, p) = shop
            .send(
                "POST",
                "/v1/purge",
                json!({"scope": "url", "target": format!("http://www.shop.udn.example/p{i}")}),
            )
            .await;
        assert_eq!(st, 202, "{p}");
        seqs.push(p["seq"].as_u64().unwrap());
    }
    seqs.reverse();
    let mut path = "/v1/purge?customer=shop&limit=2".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (st, v, link) = get_with_link(&shop, &path).await;
        assert_eq!(st, 200, "{path}: {v}");
        let items = v.as_array().expect("an array");
        assert!(items.len() <= 2, "{v}");
        seen.extend(items.iter().map(|p| p["seq"].as_u64().unwrap()));
        pages += 1;
        match link {
            Some(l) => {
                path = next_path(&l);
                assert!(
                    path.contains("customer=shop") && path.contains("limit=2"),
                    "{path}"
                );
            }
            None => break,
        }
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(seen, seqs, "every purge once, newest first");
    assert_eq!(pages, 3);

    // A name-sorted list: GTM hostnames, one per page; an item added between pages
    // neither repeats nor shifts the rest.
    let admin = h.login("admin").await;
    let (_, all, _) = get_with_link(&admin, "/v1/gtm?limit=1000").await;
    let mut names: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["config"]["hostname"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 2, "{all}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by hostname");
    let (_, first, link) = get_with_link(&admin, "/v1/gtm?limit=1").await;
    assert_eq!(first[0]["config"]["hostname"], names[0].as_str());
    // Sorts before the cursor: it is not on the next page, nor does it shift it.
    let (st, v) = shop
        .send(
            "POST",
            "/v1/gtm",
            json!({"hostname": "aaa.shop.udn.example", "service": "http",
                   "targets": [{"server": "shop-east-1"}]}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, second, _) = get_with_link(&admin, &next_path(&link.expect("a next page"))).await;
    assert_eq!(
        second[0]["config"]["hostname"],
        names.remove(1).as_str(),
        "{second}"
    );

    // Bad parameters: a 400 that names them.
    for (q, field) in [
        ("/v1/gtm?limit=0", "limit"),
        ("/v1/gtm?limit=1001", "limit"),
        ("/v1/gtm?limit=many", "limit"),
        ("/v1/gtm?cursor=zz", "cursor"),
        ("/v1/customers?cursor=7b7d", "cursor"),
    ] {
        let (st, v) = admin.get(q).await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(fields(&v), vec![field.to_string()], "{q}: {v}");
    }
    // A cursor of another list.
    let (_, _, link) = get_with_link(&shop, "/v1/purge?limit=1").await;
    let purge_cursor = next_path(&link.unwrap());
    let c = purge_cursor.split("cursor=").nth(1).unwrap();
    let (st, v) = admin.get(&format!("/v1/customers?cursor={c}")).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(fields(&v), vec!["cursor".to_string()]);
}

/// The live health of a GTM hostname is its owner's (another customer gets 403, even
/// for a name that does not exist: 404 only after the ownership check), and the
/// operators' statistics are the admins' alone.
async fn a_hostnames_health_and_the_operators_views_are_not_anyones(store: Store) {
    let h = Harness::start_on(store, "api-health-owner").await;
    let acme = h.login("acmeuser").await;
    let (st, v) = acme.get("/v1/gtm/www.shop.udn.example/health").await;
    assert_eq!(st, 403, "{v}");
    assert!(!v.to_string().contains("shop-east-1"), "{v}");
    let (st, _) = acme.get("/v1/gtm/nope.shop.udn.example/health").await;
    assert_eq!(st, 404);
    for path in ["/v1/ops", "/v1/ops?role=dns&format=csv"] {
        let (st, v) = acme.get(path).await;
        assert_eq!(st, 403, "{path}: {v}");
    }
    // Paging does not widen the scope: another customer's purges stay refused.
    let (st, v) = acme.get("/v1/purge?customer=shop&limit=1").await;
    assert_eq!(st, 403, "{v}");
}
