//! Self sign-up against the real `udn control --self-signup`, in real headless Chromium,
//! with the confirmation e-mail read from a real SMTP server (aiosmtpd) on loopback:
//! register, confirm the address by the link, choose a password, log in, and see the
//! plan and the first domain pending its DNS check. A duplicate and a malformed sign-up
//! are refused with the field named; a tampered link is refused; the domain cannot be
//! verified until an operator approves; a refusal removes the customer and its user.
//!
//! Needs chromium, chromedriver and aiosmtpd (scripts/install-deps.sh); without the
//! browser the test says so and returns (in CI it fails).

use crate::billing_common;
use crate::browser_support;
use crate::smtp_support;

use browser_support::*;
use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use smtp_support::{SmtpServer, text_body};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `udn control --self-signup` with its portal on `portal_port`; returns the process
/// and the API's plain-HTTP base URL.
fn start_control(dir: &Path, portal_port: u16, smtp_port: u16) -> (Proc, String) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    // A published plan, put into the billing tables with the CLI.
    let plan = dir.join("plan.json");
    std::fs::write(
        &plan,
        serde_json::to_string(&billing_common::cdn_plan()).unwrap(),
    )
    .unwrap();
    let db = data.join("udn.sqlite");
    let out = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["control", "billing", "--db"])
        .arg(&db)
        .arg("plan-add")
        .arg(&plan)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let billing = dir.join("billing.toml");
    std::fs::write(
        &billing,
        format!(
            "print_dir = {:?}\n[issuer]\nname = \"UDN Test Networks\"\naddress = [\"1 Loopback\"]\nemail = \"billing@udn.example\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\nfrom = \"UDN <signup@udn.example>\"\n",
            dir.join("print").display().to_string()
        ),
    )
    .unwrap();
    let portal = format!("127.0.0.1:{portal_port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["control", "--listen", "127.0.0.1:0"])
        .args(["--portal-listen", &portal])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--public-url", &format!("https://{portal}")])
        .args(["--bootstrap-admin", "admin:correct-horse"])
        .arg("--self-signup")
        .arg("--no-billing-scheduler")
        .arg("--billing-config")
        .arg(&billing)
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("control.stderr")).unwrap())
        .spawn()
        .expect("start udn control");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut api = None;
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.contains("API on") {
            api = line.split_whitespace().last().map(str::to_owned);
        }
    }
    (Proc(child), api.expect("the API's address"))
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn fill(c: &Client, id: &str, text: &str) {
    let e = c.find(Locator::Css(&format!("#{id}"))).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// Fills the sign-up form and sends it.
async fn sign_up(c: &Client, base: &str, account: &str, email: &str, domain: &str) {
    sign_up_at(c, base, account, email, domain, "127.0.0.66").await
}

/// Fills the sign-up form, with `ip` as the first domain's address, and sends it.
async fn sign_up_at(c: &Client, base: &str, account: &str, email: &str, domain: &str, ip: &str) {
    c.goto(&format!("{base}/signup")).await.unwrap();
    fill(c, "company", "Beta Widgets GmbH").await;
    fill(c, "address", "Hauptstr. 1\n10115 Berlin").await;
    fill(c, "contact", "Kim Beta").await;
    fill(c, "email", email).await;
    fill(c, "account", account).await;
    fill(c, "username", &format!("{account}-kim")).await;
    fill(c, "domain", domain).await;
    fill(c, "ip", ip).await;
    click(c, "input[name=service][value=gtm_cdn]").await;
    click(c, "input[name=invoicing][value=post]").await;
    click(c, "#signup-submit").await;
}

/// Waits for `n` e-mails and returns the confirmation link of the one containing
/// `needle`.
fn link_in_mail(smtp: &SmtpServer, n: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mail = smtp.received();
        if mail.len() >= n {
            let bodies: Vec<String> = mail.iter().map(|m| text_body(m)).collect();
            let body = bodies
                .iter()
                .find(|b| b.contains("/signup/confirm?t=") && b.contains(needle))
                .unwrap_or_else(|| panic!("no link for {needle} in {bodies:?}"));
            let start = body.find("https://").unwrap();
            return body[start..].split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no confirmation e-mail arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bearer token for `user` from `POST {base}/v1/auth/token`; `None` when refused.
async fn token_for(http: &reqwest::Client, base: &str, user: &str, pass: &str) -> Option<String> {
    let r = http
        .post(format!("{base}/v1/auth/token"))
        .json(&json!({"username": user, "password": pass}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap_or_default();
    v["token"].as_str().map(str::to_owned)
}

/// `POST url` as the holder of `token`: the status and the body.
async fn post_as(http: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let r = http.post(url).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get_json(http: &reqwest::Client, url: String, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prospective_customer_signs_up_confirms_and_logs_in() {
    if !tools_present(&[CHROMIUM, CHROMEDRIVER]) {
        return;
    }
    udn_bins::install_crypto();
    let tmp = std::env::temp_dir().join(format!("udn-signup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let smtp = SmtpServer::start(&tmp.join("maildir"));
    let portal_port = free_port();
    let (_control, api) = start_control(&tmp, portal_port, smtp.port);
    let base = format!("https://127.0.0.1:{portal_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", portal_port)).is_err() {
        assert!(Instant::now() < deadline, "the portal did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_driver, c) = start_browser(&tmp.join("profile")).await;

    // Register.
    sign_up(&c, &base, "beta", "kim@beta.example", "www.beta.example").await;
    c.wait()
        .for_element(Locator::Css("#signup-sent"))
        .await
        .expect("the 'check your e-mail' page");
    shot(&c, "signup-1-sent").await;
    let link = link_in_mail(&smtp, 1, "\"beta\"");
    assert!(
        link.starts_with(&format!("{base}/signup/confirm?t=")),
        "{link}"
    );

    // A tampered link is refused.
    let tampered = format!("{}0", link.trim_end_matches(char::is_alphanumeric));
    c.goto(&tampered).await.unwrap();
    assert!(!source_contains(&c, "Choose your password").await);

    // Confirm and choose the password.
    c.goto(&link).await.unwrap();
    c.wait()
        .for_element(Locator::Css("#confirm"))
        .await
        .expect("the password form");
    fill(&c, "password", "beta-secret-42").await;
    fill(&c, "password2", "beta-secret-42").await;
    click(&c, "#confirm-submit").await;
    c.wait()
        .for_element(Locator::Css("#signup-done"))
        .await
        .expect("the account is created");
    shot(&c, "signup-2-done").await;

    // Log in: the plan, the sign-up's state and the domain pending its DNS check.
    c.goto(&format!("{base}/login")).await.unwrap();
    fill(&c, "username", "beta-kim").await;
    fill(&c, "password", "beta-secret-42").await;
    click(&c, "#login-submit").await;
    let status = c
        .wait()
        .for_element(Locator::Css("#signup-status"))
        .await
        .expect("the domains page with the sign-up's state")
        .text()
        .await
        .unwrap();
    assert!(status.contains("cdn-standard"), "{status}");
    assert!(status.contains("awaiting operator approval"), "{status}");
    let pending = c
        .find(Locator::Css("#gtm-pending"))
        .await
        .expect("the pending domains table")
        .text()
        .await
        .unwrap();
    assert!(pending.contains("www.beta.example"), "{pending}");
    shot(&c, "signup-3-domains").await;

    // The same account again, and a malformed e-mail: refused, the fields named.
    c.goto(&format!("{base}/login")).await.unwrap();
    sign_up(&c, &base, "beta", "kim2@beta.example", "www2.beta.example").await;
    c.wait()
        .for_element(Locator::Css("#signup-errors"))
        .await
        .expect("the duplicate is refused");
    assert!(source_contains(&c, "data-field=\"account\"").await);
    assert!(source_contains(&c, "data-field=\"username\"").await);
    // (The browser checks the e-mail field itself; the server checks every field.)
    sign_up(&c, &base, "gamma", "kim@gamma.example", "not a host name").await;
    c.wait()
        .for_element(Locator::Css("#signup-errors"))
        .await
        .expect("the malformed sign-up is refused");
    assert!(source_contains(&c, "data-field=\"domain\"").await);
    assert!(!source_contains(&c, "data-field=\"account\"").await);
    // An address in the provider's own network is refused at sign-up.
    sign_up_at(
        &c,
        &base,
        "epsilon",
        "kim@epsilon.example",
        "www.epsilon.example",
        "10.1.2.3",
    )
    .await;
    c.wait()
        .for_element(Locator::Css("#signup-errors"))
        .await
        .expect("the provider's network is refused");
    assert!(source_contains(&c, "data-field=\"ip\"").await);
    shot(&c, "signup-4-refused-fields").await;
    assert_eq!(smtp.received().len(), 1, "no mail for refused sign-ups");

    // The operator's side, over the API. Tokens are issued over HTTPS only.
    let plain = reqwest::Client::new();
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true) // the portal's self-signed certificate, loopback
        .build()
        .unwrap();
    assert!(
        token_for(&plain, &api, "admin", "correct-horse")
            .await
            .is_none(),
        "no tokens over HTTP"
    );
    let admin = token_for(&https, &base, "admin", "correct-horse")
        .await
        .expect("an admin token");
    let kim = token_for(&https, &base, "beta-kim", "beta-secret-42")
        .await
        .expect("the new customer's token");
    let list = get_json(&https, format!("{base}/v1/signups"), &admin).await;
    let one = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["account"]["id"] == "beta")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(one["status"], "awaiting_approval");
    assert_eq!(one["account"]["delivery"], "post");
    assert_eq!(one["account"]["services"], "gtm_cdn");
    assert_eq!(one["account"]["subscriptions"][0]["plan"], "cdn-standard");
    assert_eq!(one["account"]["invoicing"]["email"], "kim@beta.example");
    // The customer cannot approve itself, nor verify its domain before approval.
    let approve = format!("{base}/v1/signups/beta/approve");
    let verify = format!("{base}/v1/gtm/www.beta.example/verify");
    assert_eq!(post_as(&https, &approve, &kim).await.0, 403);
    let (st, body) = post_as(&https, &verify, &kim).await;
    assert_eq!(st, 409);
    assert!(body.contains("approval"), "{body}");
    assert_eq!(post_as(&https, &approve, &admin).await.0, 200);
    // After approval the domain goes to its DNS check (which fails here: no TXT record).
    let (_, body) = post_as(&https, &verify, &kim).await;
    assert!(!body.contains("approval"), "{body}");

    // A second sign-up, refused: the customer and its user are gone.
    c.goto(&format!("{base}/login")).await.unwrap();
    sign_up(&c, &base, "delta", "kim@delta.example", "www.delta.example").await;
    c.wait()
        .for_element(Locator::Css("#signup-sent"))
        .await
        .unwrap();
    let link = link_in_mail(&smtp, 2, "\"delta\"");
    c.goto(&link).await.unwrap();
    fill(&c, "password", "delta-secret-42").await;
    fill(&c, "password2", "delta-secret-42").await;
    click(&c, "#confirm-submit").await;
    c.wait()
        .for_element(Locator::Css("#signup-done"))
        .await
        .unwrap();
    let refuse = format!("{base}/v1/signups/delta/refuse");
    assert_eq!(post_as(&https, &refuse, &admin).await.0, 200);
    let customers = get_json(&https, format!("{base}/v1/customers"), &admin).await;
    assert!(!customers.to_string().contains("\"delta\""), "{customers}");
    assert!(
        token_for(&https, &base, "delta-kim", "delta-secret-42")
            .await
            .is_none(),
        "the refused customer's user is gone"
    );
    // A decision is made once.
    let approve = format!("{base}/v1/signups/delta/approve");
    assert_eq!(post_as(&https, &approve, &admin).await.0, 409);
    let _ = c.close().await;
    let _ = std::fs::remove_dir_all(&tmp);
}
