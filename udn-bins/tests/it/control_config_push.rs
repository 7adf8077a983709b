//! Config distribution: a change made through the control plane's API reaches a
//! running `udn dns` and a running `udn edge` (both started with `--control` and their
//! enrolled `--pki` credentials, over mutual TLS) within seconds, without a restart.

use crate::pki_support;
use crate::proc_support;

use proc_support::{dig_short, udn_with_lines as udn};
use std::time::{Duration, Instant};

fn word_after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("{marker:?} not in {line:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn dig(server: &str, name: &str) -> String {
    dig_short(server.parse().expect("DNS address"), name).join("\n")
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn api_changes_reach_running_dns_and_edge() {
    udn_bins::install_crypto();
    let dir = std::env::temp_dir().join(format!("udn-cfgpush-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (_origin, lines) = udn(&["origin", "--listen", "127.0.0.1:0", "--name", "o1"], 1);
    let origin_url = word_after(&lines[0], "on ");
    let text = udn_core::config::SAMPLE.replace("http://127.0.0.21:8080", &origin_url);
    let seed = dir.join("seed.toml");
    std::fs::write(&seed, &text).unwrap();
    for role in ["dns", "edge"] {
        std::fs::write(dir.join(format!("{role}.toml")), &text).unwrap();
    }

    let data = dir.join("data");
    let (_control, lines) = udn(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--portal-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--bootstrap-admin",
            "admin:s3cret-pass",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            seed.to_str().unwrap(),
        ],
        3,
    );
    let api = word_after(&lines[2], "API on ");
    let portal = word_after(&lines[1], "portal on ");
    // The roles fetch their configuration from the machine listener with certificates
    // from the control plane's CA.
    let control = format!("https://{}", word_after(&lines[0], "listening on "));
    let pki = pki_support::Pki::new(&data);
    let dns_pki = pki.enroll("dns", "dns1", &["127.0.0.1"]);
    let edge_pki = pki.enroll("edge", "fra", &["127.0.0.1"]);

    let dns_cfg = dir.join("dns.toml");
    let (_dns, lines) = udn(
        &[
            "dns",
            "--config",
            dns_cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--control",
            &control,
            "--pki",
            dns_pki.to_str().unwrap(),
        ],
        1,
    );
    let dns = word_after(&lines[0], "DNS on ");
    let edge_cfg = dir.join("edge.toml");
    let (_edge, lines) = udn(
        &[
            "edge",
            "--config",
            edge_cfg.to_str().unwrap(),
            "--pop",
            "fra",
            "--listen",
            "127.0.0.1:0",
            "--control",
            &control,
            "--pki",
            edge_pki.to_str().unwrap(),
        ],
        1,
    );
    let edge = word_after(&lines[0], "on ");

    let http = reqwest::blocking::Client::new();
    let img = |edge: &str| {
        http.get(format!("{edge}/img/logo.svg"))
            .header("host", "img.shop.udn.example")
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    // Before: both sites answer, and the new CDN name is unknown everywhere.
    assert!(!dig(&dns, "www.shop.udn.example").is_empty());
    assert_eq!(dig(&dns, "img.shop.udn.example"), "");
    assert_eq!(img(&edge), 403, "an unconfigured host is refused");

    // The admin drops the east site from the GTM pool and adds a CDN hostname.
    // Passwords only over HTTPS (the portal's self-signed certificate, on loopback); the
    // token then works on the plain-HTTP API.
    let https = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let token: serde_json::Value = https
        .post(format!("{portal}/v1/auth/token"))
        .json(&serde_json::json!({"username": "admin", "password": "s3cret-pass"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let mut cfg = udn_core::Config::from_toml(&text).unwrap();
    cfg.gtm[0].targets.retain(|t| t.server == "shop-west-1");
    let mut img_cdn = cfg.cdn[0].clone();
    img_cdn.hostname = "img.shop.udn.example".into();
    cfg.cdn.push(img_cdn);
    let r = http
        .put(format!("{api}/v1/config"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"config": serde_json::to_value(&cfg).unwrap()}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());

    let t_dns = eventually("dns follows the GTM change", || {
        (0..5).all(|_| dig(&dns, "www.shop.udn.example") == "127.0.0.22")
            && !dig(&dns, "img.shop.udn.example").is_empty()
    });
    let t_edge = eventually("edge serves the new CDN hostname", || img(&edge) == 200);
    println!("config change reached udn dns in {t_dns:?} and udn edge in {t_edge:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
