//! Configuration distribution over mutual TLS, against real processes: `udn control`
//! serves `GET /v1/config` on its machine listener to enrolled dns/edge/probe instances
//! only; the answer carries the revoked certificates, which a `udn dns --control` puts
//! into its own HTTP API's revocation list, so a probe revoked with `udn control revoke`
//! is refused by the DNS server within seconds. A version the DNS server cannot load is
//! neither served nor written to its `--config`, so a restart comes up on the last good
//! version.

use crate::pki_support;
use crate::proc_support;

use pki_support::{Pki, reqwest_blocking};
use proc_support::{Killed, dig_short, udn_with_lines as udn};
use std::path::{Path, PathBuf};
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

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udn-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A running control plane: (process, machine listener URL, portal URL).
fn control(dir: &Path, data: &Path, seed: &str) -> (Killed, String, String) {
    let seed_file = dir.join("seed.toml");
    std::fs::write(&seed_file, seed).unwrap();
    let (p, lines) = udn(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--portal-listen",
            "127.0.0.1:0",
            "--bootstrap-admin",
            "admin:s3cret-pass",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            seed_file.to_str().unwrap(),
        ],
        2,
    );
    let machine = format!("https://{}", word_after(&lines[0], "listening on "));
    let portal = word_after(&lines[1], "portal on ");
    (p, machine, portal)
}

/// An admin API token (over the portal's HTTPS).
fn admin_token(portal: &str) -> (reqwest::blocking::Client, String) {
    let https = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let t: serde_json::Value = https
        .post(format!("{portal}/v1/auth/token"))
        .json(&serde_json::json!({"username": "admin", "password": "s3cret-pass"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    (https, t["token"].as_str().unwrap().to_owned())
}

fn put_config(portal: &str, cfg: &udn_core::Config) {
    let (https, token) = admin_token(portal);
    let r = https
        .put(format!("{portal}/v1/config"))
        .bearer_auth(token)
        .json(&serde_json::json!({"config": serde_json::to_value(cfg).unwrap()}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
}

#[test]
fn a_probe_revoked_at_the_control_plane_is_refused_by_the_dns_server() {
    udn_bins::install_crypto();
    let dir = temp("cfg-mtls-revoke");
    let data = dir.join("data");
    let seed = udn_core::config::SAMPLE;
    let (_control, machine, _portal) = control(&dir, &data, seed);
    let pki = Pki::new(&data);
    let dns_pki = pki.enroll("dns", "dns1", &["127.0.0.1"]);
    let probe_pki = pki.enroll("probe", "fra", &["127.0.0.1"]);

    // No certificate, no configuration; a certificate from another CA fails the
    // handshake.
    let ca = std::fs::read(dns_pki.join("ca.pem")).unwrap();
    let stranger = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let r = stranger.get(format!("{machine}/v1/config")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        !r.text().unwrap().contains("shop"),
        "no configuration leaked"
    );
    let other = Pki::new(&dir.join("other-ca"));
    let foreign = other.enroll("dns", "dns1", &["127.0.0.1"]);
    let foreign = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .identity(
            reqwest::Identity::from_pem(
                &[
                    std::fs::read(foreign.join("cert.pem")).unwrap(),
                    std::fs::read(foreign.join("key.pem")).unwrap(),
                ]
                .concat(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    assert!(
        foreign
            .get(format!("{machine}/v1/config"))
            .send()
            .map(|r| r.status() != 200)
            .unwrap_or(true),
        "a certificate of another CA gets no configuration"
    );
    // The role refuses to follow a plain-HTTP control URL.
    let dns_cfg = dir.join("dns.toml");
    std::fs::write(&dns_cfg, seed).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["dns", "--config", dns_cfg.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--control", "http://127.0.0.1:9"])
        .arg("--pki")
        .arg(&dns_pki)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mutual TLS"),
        "{o:?}"
    );

    // The DNS server follows the control plane with its certificate.
    let (_dns, lines) = udn(
        &[
            "dns",
            "--config",
            dns_cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--pki",
            dns_pki.to_str().unwrap(),
            "--control",
            &machine,
        ],
        2,
    );
    let api = word_after(&lines[1], "HTTP API on ");
    eventually(
        "the DNS server saves the configuration it loaded",
        20,
        || std::fs::read_to_string(&dns_cfg).is_ok_and(|t| t != seed),
    );

    // The probe reports to the DNS server: accepted.
    let probe = reqwest_blocking(&probe_pki);
    let report = || {
        probe
            .post(format!("{api}/v1/metrics"))
            .json(&serde_json::json!([]))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(report(), 200, "the enrolled probe is accepted before");

    // Revoked at the control plane: the DNS server learns it from the configuration
    // channel and refuses the probe.
    pki.revoke("fra");
    let took = eventually("the DNS server refuses the revoked probe", 15, || {
        report() != 200
    });
    println!("revocation reached the DNS server's API in {took:?}");
    for _ in 0..3 {
        assert_ne!(report(), 200, "stays refused");
    }
    // And the revoked probe gets no configuration either.
    assert!(
        probe
            .get(format!("{machine}/v1/config"))
            .send()
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the server answers the GTM name and the CDN name version 2 adds.
fn answers(dns: std::net::SocketAddr) -> (bool, bool) {
    (
        !dig_short(dns, "www.shop.udn.example").is_empty(),
        !dig_short(dns, "img.shop.udn.example").is_empty(),
    )
}

/// A port free for both UDP and TCP, below Linux's ephemeral range (32768-60999), so
/// no other test's outgoing connection takes it between now and the server's bind (the
/// DNS server of the test below binds it again after a restart).
fn free_port() -> u16 {
    let seed = std::process::id() as u64 ^ now_nanos();
    (0..10_000u64)
        .map(|i| {
            20_000
                + ((seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(i * 7919))
                    % 12_000) as u16
        })
        .find(|&p| {
            std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        })
        .expect("a free port below the ephemeral range")
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[test]
fn a_version_the_dns_server_cannot_load_is_not_served_nor_saved() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        assert!(std::env::var("CI").is_err(), "dig is not installed");
        eprintln!("SKIPPED: dig is not installed");
        return;
    }
    udn_bins::install_crypto();
    let dir = temp("cfg-mtls-unloadable");
    let data = dir.join("data");
    let port = free_port();
    let dns_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // One DNS server, `dns1`, in the peer list.
    let seed = format!(
        "{}\n[[dns.peers]]\nname = \"dns1\"\naddr = \"{dns_addr}\"\n",
        udn_core::config::SAMPLE
    );
    let (_control, machine, portal) = control(&dir, &data, &seed);
    let pki = Pki::new(&data);
    let dns_pki = pki.enroll("dns", "dns1", &["127.0.0.1"]);
    let dns_cfg = dir.join("dns.toml");
    std::fs::write(&dns_cfg, &seed).unwrap();
    let start_dns = || {
        udn(
            &[
                "dns",
                "--config",
                dns_cfg.to_str().unwrap(),
                "--listen",
                &dns_addr.to_string(),
                "--name",
                "dns1",
                "--pki",
                dns_pki.to_str().unwrap(),
                "--control",
                &machine,
            ],
            1,
        )
        .0
    };
    let dns = start_dns();
    eventually("version 1 saved", 20, || {
        std::fs::read_to_string(&dns_cfg).is_ok_and(|t| t != seed)
    });
    let good = answers(dns_addr);
    assert_eq!(good, (true, false), "version 1: no img hostname");
    let saved = std::fs::read_to_string(&dns_cfg).unwrap();

    // Version 2 adds a CDN hostname and names another peer set: the control plane
    // accepts it (dns1 may be retired), but dns1 cannot load a peer list without
    // itself.
    let mut cfg = udn_core::Config::from_toml(&seed).unwrap();
    let mut img = cfg.cdn[0].clone();
    img.hostname = "img.shop.udn.example".into();
    cfg.cdn.push(img);
    cfg.dns.peers[0].name = "dns2".into();
    put_config(&portal, &cfg);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(answers(dns_addr), good, "still serving version 1");
    assert_eq!(
        std::fs::read_to_string(&dns_cfg).unwrap(),
        saved,
        "the unloadable version is not written"
    );

    // A restart comes up on the last good version (and refuses version 2 again).
    drop(dns);
    let dns = start_dns();
    eventually("the restarted server answers", 20, || answers(dns_addr).0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(answers(dns_addr), good, "restarted on version 1");
    assert_eq!(std::fs::read_to_string(&dns_cfg).unwrap(), saved);

    // The channel was live all along: a loadable version 3 is applied and saved.
    cfg.dns.peers[0].name = "dns1".into();
    put_config(&portal, &cfg);
    eventually("version 3 served", 20, || answers(dns_addr) == (true, true));
    assert_ne!(std::fs::read_to_string(&dns_cfg).unwrap(), saved);
    drop(dns);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_probe_and_an_edge_follow_the_control_plane_over_mutual_tls() {
    udn_bins::install_crypto();
    let dir = temp("cfg-mtls-probe");
    let data = dir.join("data");
    let seed = udn_core::config::SAMPLE;
    let (_control, machine, portal) = control(&dir, &data, seed);
    let pki = Pki::new(&data);
    let probe_pki = pki.enroll("probe", "fra", &["127.0.0.1"]);
    let edge_pki = pki.enroll("edge", "fra", &["127.0.0.1"]);
    let probe_cfg = dir.join("probe.toml");
    let edge_cfg = dir.join("edge.toml");
    std::fs::write(&probe_cfg, seed).unwrap();
    std::fs::write(&edge_cfg, seed).unwrap();
    // `--control` without credentials is refused at start.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_udn"))
        .args([
            "probe",
            "--config",
            probe_cfg.to_str().unwrap(),
            "--pop",
            "fra",
        ])
        .args(["--control", &machine])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    let (_probe, _) = udn(
        &[
            "probe",
            "--config",
            probe_cfg.to_str().unwrap(),
            "--pop",
            "fra",
            "--latency-methods",
            "dns",
            "--pki",
            probe_pki.to_str().unwrap(),
            "--control",
            &machine,
        ],
        1,
    );
    let (_edge, _) = udn(
        &[
            "edge",
            "--config",
            edge_cfg.to_str().unwrap(),
            "--pop",
            "fra",
            "--listen",
            "127.0.0.1:0",
            "--pki",
            edge_pki.to_str().unwrap(),
            "--control",
            &machine,
        ],
        1,
    );
    for f in [&probe_cfg, &edge_cfg] {
        eventually("version 1 loaded and saved", 20, || {
            std::fs::read_to_string(f).is_ok_and(|t| t != seed)
        });
    }
    // A new version reaches both (each saves it once loaded).
    let mut cfg = udn_core::Config::from_toml(seed).unwrap();
    cfg.gtm[0].ttl = 45;
    put_config(&portal, &cfg);
    for f in [&probe_cfg, &edge_cfg] {
        eventually("version 2 loaded and saved", 20, || {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|t| udn_core::Config::from_toml(&t).ok())
                .is_some_and(|c| c.gtm[0].ttl == 45)
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
