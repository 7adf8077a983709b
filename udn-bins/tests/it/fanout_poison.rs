//! One bad item cannot block the fan-out to real `udn edge` processes: a purge target the
//! edges would refuse (a URL with userinfo) is refused at submission by the same parser;
//! one still in the queue (recorded by an older control plane) is marked failed with the
//! edge's reason and a later purge is applied (the edge then answers MISS); a long prefill
//! does not delay a purge made after it; an admin cancels a stuck item (a customer gets
//! 403) and the queue moves on.

use crate::api_support;
use crate::proc_support;

use api_support::*;
use axum::Router;
use proc_support::Killed as Edge;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use udn_bins::api::backend::PurgeScope;
use udn_bins::api::{
    Accounts as _, ApiState, Backend, Configs as _, ControlOptions, Deliveries as _, EdgeApi, Role,
    SqliteBackend,
};
use udn_bins::pki::InstanceRole;

async fn start_edge(
    config: &std::path::Path,
    pop: &str,
    addr: SocketAddr,
    admin: SocketAddr,
    pki: &std::path::Path,
) -> Edge {
    let child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["edge", "--listen", &addr.to_string(), "--pop", pop])
        .args(["--config", config.to_str().unwrap()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--pki")
        .arg(pki)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start udn edge");
    let edge = Edge(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return edge;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("udn edge did not start on {addr}");
}

/// A real origin: paths under `/slow/` answer after 4 s; every answer is cacheable.
async fn start_origin() -> SocketAddr {
    let app = Router::new().fallback(|uri: axum::http::Uri| async move {
        if uri.path().starts_with("/slow/") {
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        ([("cache-control", "max-age=3600")], uri.path().to_owned())
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

async fn x_cache(edge: SocketAddr, path: &str) -> String {
    let r = reqwest::Client::new()
        .get(format!("http://{edge}{path}"))
        .header("host", "cdn.shop.udn.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn login(api: SocketAddr, user: &str) -> Session {
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let v: Value = client
        .post(format!("http://{api}/v1/auth/login"))
        .json(&json!({"username": user, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Session {
        client,
        csrf: v["csrf"].as_str().expect("logged in").to_owned(),
        base: format!("http://{api}"),
    }
}

/// The per-edge row of `edge` in a purge or prefill view.
fn edge_row(view: &Value, edge: &str) -> Value {
    view["edges"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["edge"] == edge))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_purge_neither_enters_nor_blocks_the_queue() {
    udn_bins::install_crypto();
    let dir = temp_dir("fanout-poison");
    let origin = start_origin().await;
    let mut cfg = two_customer_config();
    cfg.cdn[0].origin_urls = vec![format!("http://{origin}")];
    let toml_path = dir.join("network.toml");
    std::fs::write(&toml_path, toml::to_string(&cfg).unwrap()).unwrap();

    let db = Arc::new(SqliteBackend::open(&dir.join("control.db")).unwrap());
    db.commit_config(0, &cfg, "test", udn_bins::logging::now())
        .unwrap();
    db.create_user("shopuser", PASSWORD, Role::Customer, Some("shop"))
        .unwrap();
    db.create_user("root", PASSWORD, Role::Admin, None).unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a_admin, b_admin) = (free_addr(), free_addr());
    let ca = udn_bins::pki::Ca::load_or_create(&dir.join("pki")).unwrap();
    let san = ["127.0.0.1".to_string()];
    let (a_pki, b_pki) = (dir.join("edge-fra"), dir.join("edge-nyc"));
    ca.enroll_into(InstanceRole::Edge, "fra", &san, &a_pki)
        .unwrap();
    ca.enroll_into(InstanceRole::Edge, "nyc", &san, &b_pki)
        .unwrap();
    let control = ca
        .enroll_into(InstanceRole::Control, "control", &san, &dir.join("control"))
        .unwrap();
    let edges = vec![
        EdgeApi {
            name: "fra-edge-1".into(),
            url: format!("https://{a_admin}"),
        },
        EdgeApi {
            name: "nyc-edge-1".into(),
            url: format!("https://{b_admin}"),
        },
    ];
    let names: Vec<String> = edges.iter().map(|e| e.name.clone()).collect();
    // The poison item: a purge an older control plane accepted, first in every queue.
    let poison = db
        .create_purge(
            "shop",
            PurgeScope::Url,
            "http://user:pw@cdn.shop.udn.example/x",
            "old-control-plane",
            &names,
            udn_bins::logging::now(),
        )
        .unwrap()
        .seq;
    let opts = ControlOptions {
        edges,
        credentials: Some(control.clone()),
        purge_retry_secs: Some(1),
        ..ControlOptions::default()
    };
    let backend: Arc<dyn Backend> = db.clone();
    let state = ApiState::new(backend, opts).unwrap();
    let _edge_a = start_edge(&toml_path, "fra", a_addr, a_admin, &a_pki).await;
    assert_eq!(x_cache(a_addr, "/img/a.gif").await, "MISS");
    assert_eq!(x_cache(a_addr, "/img/a.gif").await, "HIT");
    let delivery = state.start_purge_distributor();
    let (api, server) = udn_bins::api::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        udn_bins::portal::app(state.clone()),
    )
    .await
    .unwrap();
    let shop = login(api, "shopuser").await;
    let root = login(api, "root").await;

    // 1. At submission the control plane refuses what the edges would: 422, nothing kept.
    let (st, e) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "http://user:pw@cdn.shop.udn.example/x"}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(e["errors"][0]["field"], "target", "{e}");
    assert!(e.to_string().contains("userinfo"), "{e}");
    let (st, e) = shop
        .send(
            "POST",
            "/v1/prefill",
            json!({"urls": ["http://user:pw@cdn.shop.udn.example/x"]}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    let (_, list) = shop.get("/v1/purge").await;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "only the old poison item"
    );

    // 2. The poison item in the queue: the running edge refuses it (400), it is marked
    // failed with the edge's reason, and a later purge is applied: the edge MISSes.
    let (st, p) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "http://cdn.shop.udn.example/img/a.gif"}),
        )
        .await;
    assert_eq!(st, 202, "{p}");
    let later = p["seq"].as_u64().unwrap();
    assert!(
        eventually(10, || async {
            edge_row(
                &shop.get(&format!("/v1/purge/{later}")).await.1,
                "fra-edge-1",
            )["state"]
                == "applied"
        })
        .await,
        "the purge after the poison one is applied"
    );
    assert_eq!(x_cache(a_addr, "/img/a.gif").await, "MISS");
    let (_, v) = shop.get(&format!("/v1/purge/{poison}")).await;
    let fra = edge_row(&v, "fra-edge-1");
    assert_eq!(fra["state"], "failed", "{v}");
    let reason = fra["last_error"].as_str().unwrap_or("");
    assert!(
        reason.contains("400") && reason.contains("userinfo"),
        "{reason}"
    );
    // The edge that is down keeps both pending (a connection error is retried).
    assert_eq!(edge_row(&v, "nyc-edge-1")["state"], "pending", "{v}");
    // The portal's Cache Control page shows it failed on that edge, with the reason.
    let page = shop
        .client
        .get(format!("http://{api}/cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let row = page
        .split(&format!("id=\"purge-{poison}\""))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_default();
    assert!(
        row.contains("fra-edge-1: <span class=\"failed\">failed</span>")
            && row.contains("userinfo"),
        "{row}"
    );

    // 3. A long prefill does not delay a purge made after it.
    let slow: Vec<String> = (0..3)
        .map(|i| format!("http://cdn.shop.udn.example/slow/{i}"))
        .collect();
    let (st, pf) = shop
        .send("POST", "/v1/prefill", json!({ "urls": slow }))
        .await;
    assert_eq!(st, 202, "{pf}");
    let pf_seq = pf["seq"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the prefill is being sent
    assert_eq!(x_cache(a_addr, "/img/b.gif").await, "MISS");
    assert_eq!(x_cache(a_addr, "/img/b.gif").await, "HIT");
    let started = Instant::now();
    let (_, p) = shop
        .send(
            "POST",
            "/v1/purge",
            json!({"scope": "url", "target": "http://cdn.shop.udn.example/img/b.gif"}),
        )
        .await;
    let b_seq = p["seq"].as_u64().unwrap();
    assert!(
        eventually(10, || async {
            edge_row(
                &shop.get(&format!("/v1/purge/{b_seq}")).await.1,
                "fra-edge-1",
            )["state"]
                == "applied"
        })
        .await
    );
    let took = started.elapsed();
    let (_, v) = shop.get(&format!("/v1/prefill/{pf_seq}")).await;
    assert_eq!(
        edge_row(&v, "fra-edge-1")["state"],
        "pending",
        "the purge was applied while the prefill still ran ({took:?})"
    );
    assert!(took < Duration::from_secs(3), "purge took {took:?}");
    assert_eq!(x_cache(a_addr, "/img/b.gif").await, "MISS");
    assert!(
        eventually(15, || async {
            edge_row(
                &shop.get(&format!("/v1/prefill/{pf_seq}")).await.1,
                "fra-edge-1",
            )["state"]
                == "applied"
        })
        .await,
        "the prefill completes afterwards"
    );

    // 4. An admin cancels the items stuck on the edge that is down; a customer may not.
    let (st, _) = shop
        .send("POST", &format!("/v1/purge/{poison}/cancel"), json!({}))
        .await;
    assert_eq!(st, 403);
    let (st, _) = shop
        .send("POST", &format!("/v1/prefill/{pf_seq}/cancel"), json!({}))
        .await;
    assert_eq!(st, 403);
    let (st, v) = root
        .send("POST", &format!("/v1/purge/{later}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(edge_row(&v, "nyc-edge-1")["state"], "cancelled", "{v}");
    assert_eq!(edge_row(&v, "fra-edge-1")["state"], "applied", "{v}");
    assert_eq!(
        root.send("POST", "/v1/purge/999999/cancel", json!({}))
            .await
            .0,
        404
    );
    // The edge comes back: it is sent the rest but not the cancelled purge, and its
    // poison row fails too.
    let _edge_b = start_edge(&toml_path, "nyc", b_addr, b_admin, &b_pki).await;
    assert!(
        eventually(15, || async {
            edge_row(
                &shop.get(&format!("/v1/purge/{b_seq}")).await.1,
                "nyc-edge-1",
            )["state"]
                == "applied"
        })
        .await
    );
    let since: Value = control
        .reqwest_client(Duration::from_secs(10))
        .unwrap()
        .get(format!("https://{b_admin}/v1/purges?since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = since
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![b_seq], "{since}");
    let (_, v) = shop.get(&format!("/v1/purge/{poison}")).await;
    assert_eq!(edge_row(&v, "nyc-edge-1")["state"], "failed", "{v}");

    for t in delivery {
        t.abort();
    }
    server.abort();
    let _ = std::fs::remove_dir_all(dir);
}
