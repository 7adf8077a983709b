//! The probe's API from the attacker's side: `POST /v1/pagecheck` makes the probe fetch
//! a URL, so only the control plane (an instance certificate of role control) may ask
//! for one. A stranger, an edge or a probe is refused and the probe fetches nothing (a
//! loopback HTTP server counts the requests it gets).

use crate::pki_support;
use crate::probe_common;

use pki_support::{curl_args, curl_stranger, ids};
use probe_common::{Udn, temp_dir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A loopback HTTP server answering 200 "ok" and counting the requests it gets.
fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok",
            );
        }
    });
    (addr, n)
}

/// `curl` POST of a page check with `id`'s arguments: (status, body).
fn pagecheck(id: &[String], api: &str, target: SocketAddr) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(id)
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
        ])
        .arg(format!(r#"{{"url":"http://{target}/"}}"#))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{api}/v1/pagecheck"))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

fn probe(cfg: &std::path::Path, pki: bool) -> Udn {
    let mut args = vec![
        "--config".to_string(),
        cfg.display().to_string(),
        "--pop".into(),
        "fra".into(),
        "--latency-methods".into(),
        "dns".into(),
    ];
    if pki {
        args.extend([
            "--pki".into(),
            ids().probe.display().to_string(),
            "--dns-http".into(),
            "https://127.0.0.1:9".into(),
        ]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Udn::probe(&a)
}

#[test]
fn only_the_control_plane_may_ask_a_probe_for_a_page_check() {
    let dir = temp_dir("probe-api-trust");
    let cfg = dir.join("net.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let (target, fetched) = counting_server();
    let p = probe(&cfg, true);
    let api = format!("https://{}", p.http);
    let ids = ids();

    let (code, body) = pagecheck(&curl_stranger(&ids.probe), &api, target);
    assert_eq!(code, 401, "{body}");
    let (code, body) = pagecheck(&curl_args(&ids.edge), &api, target);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("allowed roles: control"), "{body}");
    let (code, _) = pagecheck(&curl_args(&ids.probe), &api, target);
    assert_eq!(code, 403);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        0,
        "a refused page check fetched"
    );

    // Status and metrics are the control plane's too; /health is open.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(curl_stranger(&ids.probe))
        .arg(format!("{api}/v1/status"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let out = Command::new("curl")
        .args(["-sS"])
        .args(curl_stranger(&ids.probe))
        .arg(format!("{api}/health"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");

    // The control plane gets its page check: the probe fetches the page.
    let (code, body) = pagecheck(&curl_args(&ids.control), &api, target);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reports"][0]["rows"][0]["hrc"], 200, "{body}");
    assert!(fetched.load(Ordering::SeqCst) >= 1);
    drop(p);

    // A probe without --pki serves no page checks at all.
    let before = fetched.load(Ordering::SeqCst);
    let plain = probe(&cfg, false);
    let (code, body) = pagecheck(&[], &format!("http://{}", plain.http), target);
    assert_eq!(code, 403, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fetched.load(Ordering::SeqCst), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_probe_without_credentials_serves_its_api_only_on_loopback() {
    let dir = temp_dir("probe-api-loopback");
    let cfg = dir.join("net.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    // Every address (0.0.0.0) without --pki: refused at start, nothing is bound.
    let o = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["probe", "--config", cfg.to_str().unwrap(), "--pop", "fra"])
        .args(["--latency-methods", "dns", "--http", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("only on a loopback address"), "{err}");
    // On loopback without credentials it starts (read-only: status and metrics).
    let p = probe(&cfg, false);
    assert!(p.http.ip().is_loopback());
    let _ = std::fs::remove_dir_all(&dir);
}
