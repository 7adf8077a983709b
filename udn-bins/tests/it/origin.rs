//! The sample origin (`udn origin`) over real HTTP: conditional requests, generated
//! objects and the fault drill.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Origin {
    child: Child,
    base: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Origin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["origin", "--listen", "127.0.0.1:0", "--name", "t-origin"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    Origin { child, base }
}

#[tokio::test]
async fn conditional_requests_generated_objects_and_drill() {
    udn_bins::install_crypto();
    let o = start();
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/", o.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "t-origin");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let lm = r.headers()["last-modified"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(body.contains("/img/logo.svg"));

    let r = c
        .get(format!("{}/", o.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .get(format!("{}/css/site.css", o.base))
        .header("if-modified-since", &lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let r = c
        .get(format!("{}/gen/100000", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), 100_000);
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, b)| *b == udn_bins::origin::generated_byte(i as u64))
    );
    assert_eq!(
        c.get(format!("{}/gen/lots", o.base))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    assert_eq!(
        c.get(format!("{}/health", o.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    c.post(format!("{}/_drill/fail", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(format!("{}/health", o.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        c.get(format!("{}/", o.base)).send().await.unwrap().status(),
        503
    );
    c.post(format!("{}/_drill/restore", o.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(format!("{}/health", o.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
