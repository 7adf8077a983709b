//! Shared machinery of the browser tests: headless Chromium driven over WebDriver by
//! chromedriver (started on a free loopback port, in its own process group so the
//! browser goes with it), screenshots into the ignored target directory, and the rule
//! for missing tools (skip locally, fail in CI).
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether a command is on the `PATH` (or an absolute path exists).
pub fn have(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `true` when every tool is there. A missing one is a skip (with the reason printed)
/// on a developer's machine and a failure in CI (`CI=true`).
pub fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed (Debian packages: scripts/install-deps.sh)",
        missing.join(", ")
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {msg}"
    );
    eprintln!("SKIPPED: {msg}");
    false
}

/// chromedriver (and the Chromium it started), killed as a process group on drop.
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

/// Saves a screenshot of the current page as `target/screenshots/{name}.png`.
pub async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("write png");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts chromedriver and a headless Chromium session (self-signed certificates
/// accepted) with its profile in `profile`.
pub async fn start_browser(profile: &Path) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().expect("object").clone();
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("could not start a browser session: {last:?}");
}

pub async fn source_contains(c: &Client, needle: &str) -> bool {
    c.source()
        .await
        .map(|s| s.contains(needle))
        .unwrap_or(false)
}

/// Asserts that the page `c` shows fits its window's width: no sideways scrolling, and
/// the first chart in `main` no wider than the window (the phone layout).
pub async fn assert_fits_width(c: &Client, what: &str) {
    let fit = c
        .execute(
            "const d = document.documentElement;
             const svg = document.querySelector('main svg');
             return [d.scrollWidth, d.clientWidth, svg ? svg.getBoundingClientRect().right : 0];",
            vec![],
        )
        .await
        .unwrap();
    let v: Vec<f64> = fit
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::MAX))
        .collect();
    assert!(v[0] <= v[1] + 1.0, "{what} scrolls sideways: {v:?}");
    assert!(
        v[2] <= v[1] + 1.0,
        "{what}'s chart is wider than the window: {v:?}"
    );
}
