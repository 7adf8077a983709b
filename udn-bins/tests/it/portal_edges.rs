//! Purge fan-out to real `udn edge` processes: a customer purges a URL through the API;
//! the running edge serves a fresh copy from the origin at once; a second edge that was
//! down when the purge was made gets it (with its sequence number) when it starts.

use crate::api_support;
use crate::proc_support;

use api_support::*;
use axum::Router;
use proc_support::Killed as Edge;
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use udn_bins::api::{
    Accounts as _, ApiState, Backend, Configs as _, ControlOptions, EdgeApi, Role, SqliteBackend,
};
use udn_bins::pki::InstanceRole;

/// A real `udn edge` serving customers on `addr` and its admin listener on `admin`,
/// with the credentials in `pki`.
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
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && tokio::net::TcpStream::connect(admin).await.is_ok()
        {
            return edge;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("udn edge did not start on {addr}");
}

/// A real origin: every path answers its own name, cacheable for an hour; counts hits.
async fn start_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move |uri: axum::http::Uri| {
        let h = h.clone();
        async move {
            let n = h.fetch_add(1, Ordering::SeqCst) + 1;
            (
                [("cache-control", "max-age=3600")],
                format!("{} #{n}", uri.path()),
            )
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, hits)
}

async fn fetch(edge: SocketAddr, path: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{edge}{path}"))
        .header("host", "cdn.shop.udn.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cache = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (cache, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_reaches_running_udn_edges_and_one_that_starts_later() {
    udn_bins::install_crypto();
    let dir = temp_dir("portal-edges");
    let (origin, hits) = start_origin().await;
    let mut cfg = two_customer_config();
    cfg.cdn[0].origin_urls = vec![format!("http://{origin}")];
    let toml_path = dir.join("network.toml");
    std::fs::write(&toml_path, toml::to_string(&cfg).unwrap()).unwrap();

    let db = Arc::new(SqliteBackend::open(&dir.join("control.db")).unwrap());
    db.commit_config(0, &cfg, "test", udn_bins::logging::now())
        .unwrap();
    db.create_user("shopuser", PASSWORD, Role::Customer, Some("shop"))
        .unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a_admin, b_admin) = (free_addr(), free_addr());
    // The instance CA; the edges and the control plane enrolled with it.
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
    let opts = ControlOptions {
        edges: vec![
            EdgeApi {
                name: "fra-edge-1".into(),
                url: format!("https://{a_admin}"),
            },
            EdgeApi {
                name: "nyc-edge-1".into(),
                url: format!("https://{b_admin}"),
            },
        ],
        credentials: Some(control.clone()),
        purge_retry_secs: Some(1),
        ..ControlOptions::default()
    };
    let backend: Arc<dyn Backend> = db.clone();
    let state = ApiState::new(backend, opts).unwrap();
    let delivery = state.start_purge_distributor();
    let (api, server) = udn_bins::api::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        udn_bins::api::router(state.clone()),
    )
    .await
    .unwrap();

    let _edge_a = start_edge(&toml_path, "fra", a_addr, a_admin, &a_pki).await;
    assert_eq!(fetch(a_addr, "/img/a.gif").await.0, "MISS");
    let (cache, body) = fetch(a_addr, "/img/a.gif").await;
    assert_eq!((cache.as_str(), body.as_str()), ("HIT", "/img/a.gif #1"));

    // Log in as the customer and purge the URL.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let login: serde_json::Value = client
        .post(format!("http://{api}/v1/auth/login"))
        .json(&json!({"username": "shopuser", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let csrf = login["csrf"].as_str().unwrap().to_owned();
    let p: serde_json::Value = client
        .post(format!("http://{api}/v1/purge"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"scope": "url", "target": "http://cdn.shop.udn.example/img/a.gif"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seq = p["seq"].as_u64().unwrap();
    let status = |client: reqwest::Client| async move {
        let v: serde_json::Value = client
            .get(format!("http://{api}/v1/purge/{seq}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["applied"].as_u64().unwrap_or(0)
    };
    assert!(
        eventually(10, || {
            let c = client.clone();
            async move { status(c).await == 1 }
        })
        .await,
        "applied by the running edge"
    );
    // The running edge now fetches a fresh copy.
    let (cache, body) = fetch(a_addr, "/img/a.gif").await;
    assert_eq!((cache.as_str(), body.as_str()), ("MISS", "/img/a.gif #2"));
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // The second edge was down; when it starts it receives the purge it missed.
    let _edge_b = start_edge(&toml_path, "nyc", b_addr, b_admin, &b_pki).await;
    assert!(
        eventually(15, || {
            let c = client.clone();
            async move { status(c).await == 2 }
        })
        .await,
        "applied by the edge that came back"
    );
    let since = control
        .reqwest_client(Duration::from_secs(10))
        .unwrap()
        .get(format!("https://{b_admin}/v1/purges?since=0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(since.contains(&format!("\"seq\":{seq}")), "{since}");

    for t in delivery {
        t.abort();
    }
    server.abort();
    let _ = std::fs::remove_dir_all(dir);
}

/// A live event registered through the API is prefilled on a running `udn edge` ahead
/// of its start, from the real demo origin (`udn origin`'s HLS stream); the event's
/// viewers, a real ffmpeg among them, are then served from the cache: the origin sends
/// no segment twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_event_is_prefilled_on_a_running_edge_before_its_viewers_come() {
    udn_bins::install_crypto();
    let dir = temp_dir("live-event-edge");
    let origin = udn_bins::origin::start(&udn_bins::origin::Args {
        listen: "127.0.0.1:0".parse().unwrap(),
        name: "o1".into(),
        max_age: 60,
    })
    .await
    .unwrap();
    let mut cfg = two_customer_config();
    cfg.cdn[0].origin_urls = vec![format!("http://{}", origin.addr)];
    let toml_path = dir.join("network.toml");
    std::fs::write(&toml_path, toml::to_string(&cfg).unwrap()).unwrap();
    let db = Arc::new(SqliteBackend::open(&dir.join("control.db")).unwrap());
    db.commit_config(0, &cfg, "test", udn_bins::logging::now())
        .unwrap();
    db.create_user("shopuser", PASSWORD, Role::Customer, Some("shop"))
        .unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let ca = udn_bins::pki::Ca::load_or_create(&dir.join("pki")).unwrap();
    let san = ["127.0.0.1".to_string()];
    let edge_pki = dir.join("edge-fra");
    ca.enroll_into(InstanceRole::Edge, "fra", &san, &edge_pki)
        .unwrap();
    let control = ca
        .enroll_into(InstanceRole::Control, "control", &san, &dir.join("control"))
        .unwrap();
    let opts = ControlOptions {
        edges: vec![EdgeApi {
            name: "fra-edge-1".into(),
            url: format!("https://{admin}"),
        }],
        credentials: Some(control),
        purge_retry_secs: Some(1),
        ..ControlOptions::default()
    };
    let backend: Arc<dyn Backend> = db.clone();
    let state = ApiState::new(backend, opts).unwrap();
    let delivery = state.start_purge_distributor();
    let (api, server) = udn_bins::api::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        udn_bins::api::router(state.clone()),
    )
    .await
    .unwrap();
    let _edge = start_edge(&toml_path, "fra", addr, admin, &edge_pki).await;

    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let login: serde_json::Value = client
        .post(format!("http://{api}/v1/auth/login"))
        .json(&json!({"username": "shopuser", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let csrf = login["csrf"].as_str().unwrap().to_owned();
    // The on-demand stream of the sample site (four segments), starting in 5 minutes:
    // inside the prefill lead, so the edge prefills it at once.
    let starts = udn_bins::logging::now().as_millis() + 300_000;
    let r = client
        .post(format!("http://{api}/v1/live-events"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"hostname": "cdn.shop.udn.example",
                      "playlist_url": "http://cdn.shop.udn.example/vod/index.m3u8",
                      "starts_at": starts, "max_segments": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].clone();
    let prefilled = || {
        let c = client.clone();
        let id = id.clone();
        async move {
            let v: serde_json::Value = c
                .get(format!("http://{api}/v1/live-events"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v.as_array()
                .and_then(|l| l.iter().find(|e| e["id"] == id))
                .is_some_and(|e| e["prefilled"] == 1)
        }
    };
    assert!(
        eventually(20, prefilled).await,
        "the edge prefilled the event"
    );
    assert_eq!(
        origin.origin.segments(),
        4,
        "the prefill fetched the four segments"
    );

    // The viewers: every segment is a hit, and a real ffmpeg plays the whole stream.
    for n in 0..4 {
        let (cache, _) = fetch_any(addr, &format!("/vod/seg{n}.ts")).await;
        assert_eq!(cache, "HIT", "seg{n}.ts");
    }
    let url = format!("http://{addr}/vod/index.m3u8");
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error"])
        .args(["-headers", "Host: cdn.shop.udn.example\r\n", "-i", &url])
        .args(["-c", "copy", "-f", "null", "-"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("ffmpeg (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        origin.origin.segments(),
        4,
        "no segment was fetched from the origin again"
    );

    for t in delivery {
        t.abort();
    }
    server.abort();
    origin.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// `GET` through the edge as the shop's CDN hostname: the `X-Cache` and the status.
async fn fetch_any(edge: SocketAddr, path: &str) -> (String, u16) {
    let r = reqwest::Client::new()
        .get(format!("http://{edge}{path}"))
        .header("host", "cdn.shop.udn.example")
        .send()
        .await
        .unwrap();
    let cache = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (cache, r.status().as_u16())
}
