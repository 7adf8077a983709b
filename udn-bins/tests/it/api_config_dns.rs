//! Config distribution end to end: a running `udn dns` fed by `config_watcher` (with
//! `write_and_reload`) answers with an address a customer published through the API a
//! moment earlier, asked with the real DNS client `dig`; while the control plane is down
//! it keeps answering from its last snapshot. The server reloads on SIGHUP (its HTTP
//! reload is an admin listener for role control: docs/dns.md).

use crate::api_support;
use crate::proc_support;

use api_support::*;
use proc_support::{dig_short, udn_dns};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use udn_bins::distribution::{config_watcher, write_and_reload};

fn dig(server: SocketAddr, name: &str) -> Vec<String> {
    dig_short(server, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_the_api_reaches_a_running_udn_dns_within_seconds() {
    if Command::new("dig").arg("-v").output().is_err() {
        assert!(std::env::var("CI").is_err(), "dig is required");
        eprintln!("SKIPPED: dig is not installed");
        return;
    }
    let h = Harness::start("api-config-dns").await;
    let dns_cfg = h.dir.join("dns-network.toml");

    // The watcher writes the first snapshot before udn dns starts.
    let watcher = config_watcher(
        h.machine_base.clone(),
        &h.ids["dns"],
        udn_bins::pki::Revocations::default(),
        Duration::from_millis(200),
        write_and_reload(dns_cfg.clone(), None),
    )
    .expect("watcher");
    assert!(
        eventually(10, || async { dns_cfg.exists() }).await,
        "first snapshot written"
    );
    let (_dns, dns_addr) = udn_dns(&["--config", dns_cfg.to_str().unwrap()]);
    assert!(
        eventually(20, || async {
            !dig(dns_addr, "www.shop.udn.example").is_empty()
        })
        .await,
        "udn dns answers"
    );
    let dns_pid = _dns.0.id();
    let before = dig(dns_addr, "www.shop.udn.example");
    assert!(
        before == ["127.0.0.21"] || before == ["127.0.0.22"],
        "{before:?}"
    );

    // The customer replaces its addresses with a new one.
    let shop = h.login("shopuser").await;
    let (st, v) = shop
        .send(
            "POST",
            "/v1/gtm/www.shop.udn.example/addresses",
            json!({"address": "127.0.0.77", "site": "shop-new"}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    for old in ["shop-east-1", "shop-west-1"] {
        let (st, _) = shop
            .send(
                "DELETE",
                &format!("/v1/gtm/www.shop.udn.example/addresses/{old}"),
                json!({}),
            )
            .await;
        assert_eq!(st, 200);
    }
    let started = std::time::Instant::now();
    assert!(
        eventually(10, || async {
            // The watcher writes each version it sees: wait for the last one (both old
            // addresses gone; an intermediate version may still answer .77 by chance).
            let text = std::fs::read_to_string(&dns_cfg).unwrap_or_default();
            let last = udn_core::Config::from_toml(&text).is_ok_and(|c| {
                c.gtm
                    .iter()
                    .find(|g| g.hostname == "www.shop.udn.example")
                    .is_some_and(|g| g.targets.len() == 1)
            });
            if !last {
                return false;
            }
            // The local operator's reload: SIGHUP after the watcher wrote the file.
            let _ = Command::new("kill")
                .args(["-HUP", &dns_pid.to_string()])
                .status();
            dig(dns_addr, "www.shop.udn.example") == ["127.0.0.77"]
        })
        .await,
        "the new address is answered"
    );
    eprintln!("config change visible in dig after {:?}", started.elapsed());

    // Control plane unreachable: udn dns keeps its last good snapshot.
    watcher.abort();
    for t in &h.tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dig(dns_addr, "www.shop.udn.example"), ["127.0.0.77"]);
}
