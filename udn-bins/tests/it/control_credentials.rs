//! Customer credentials against a real `udn control`: passwords are taken only over
//! HTTPS (the plain-HTTP listener for roles has no password route and never checks
//! one), named API tokens with scopes, expiry, last use and revocation (stored as
//! SHA-256 only, on SQLite and PostgreSQL), password change ending other sessions,
//! user deletion, and the login limiter tried as an attacker would: a parallel burst, a
//! burst from one address against a user, unknown-user timing.

use crate::pg_support;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("udn-creds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const ADMIN_PW: &str = "correct-horse";

/// A running control plane: its HTTPS portal, its plain-HTTP API and its data directory.
struct Control {
    _proc: Proc,
    portal: String,
    api: String,
    data: PathBuf,
}

fn start_control(extra: &[&str], dir: &Path) -> Control {
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, udn_core::config::SAMPLE).unwrap();
    let data = dir.join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(["control", "--listen", "127.0.0.1:0"])
        .args(extra)
        .args(["--portal-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--bootstrap-admin", &format!("admin:{ADMIN_PW}")])
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("control.stderr")).expect("stderr file"))
        .spawn()
        .expect("start udn control");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut portal, mut api) = (None, None);
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).expect("read stdout");
        let addr = line.split_whitespace().last().unwrap_or("").to_string();
        if line.contains("portal on") {
            portal = Some(addr);
        } else if line.contains("API on") {
            api = Some(addr);
        }
    }
    Control {
        _proc: Proc(child),
        portal: portal.expect("portal address"),
        api: api.expect("API address"),
        data,
    }
}

impl Control {
    /// A client from `from` (a loopback address) that trusts only the portal's
    /// certificate and keeps cookies.
    fn client(&self, from: &str) -> reqwest::blocking::Client {
        udn_bins::install_crypto();
        let pem = std::fs::read(self.data.join("tls").join("portal-cert.pem")).unwrap();
        reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .cookie_store(true)
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    fn login_status(&self, c: &reqwest::blocking::Client, user: &str, pw: &str) -> u16 {
        c.post(format!("{}/v1/auth/login", self.portal))
            .json(&json!({"username": user, "password": pw}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    /// A cookie session of `user` over HTTPS.
    fn login(&self, user: &str, pw: &str) -> Session {
        let client = self.client("127.0.0.1");
        let r = client
            .post(format!("{}/v1/auth/login", self.portal))
            .json(&json!({"username": user, "password": pw}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "login as {user}");
        let v: Value = r.json().unwrap();
        Session {
            client,
            csrf: v["csrf"].as_str().unwrap().to_owned(),
            base: self.portal.clone(),
        }
    }
}

struct Session {
    client: reqwest::blocking::Client,
    csrf: String,
    base: String,
}

impl Session {
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.base))
            .header("x-csrf-token", &self.csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let st = r.status().as_u16();
        (st, r.json().unwrap_or(Value::Null))
    }
}

/// A bearer-token call (no cookies) to `url`.
fn bearer(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(m, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn plain_http_listener_takes_no_passwords() {
    let dir = tmp("plain");
    let c = start_control(&[], &dir);
    assert!(c.api.starts_with("http://"), "{}", c.api);
    let http = reqwest::blocking::Client::new();
    // The right password on the plain listener: no route, no cookie, no token.
    for path in ["/v1/auth/login", "/v1/auth/token"] {
        let r = http
            .post(format!("{}{path}", c.api))
            .json(&json!({"username": "admin", "password": ADMIN_PW}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the plain listener");
        assert!(r.headers().get("set-cookie").is_none(), "{path}");
    }
    for (path, body) in [
        (
            "/v1/users",
            json!({"username": "x", "password": "long enough pw", "role": "admin"}),
        ),
        (
            "/v1/me/password",
            json!({"current": ADMIN_PW, "new": "another password"}),
        ),
        (
            "/v1/tokens",
            json!({"name": "t", "scopes": ["read"], "expires_in_days": 1}),
        ),
    ] {
        let r = http
            .post(format!("{}{path}", c.api))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the plain listener");
    }
    // The password is never checked there: twenty wrong guesses from this address (the
    // limiter allows five per user and address) leave the HTTPS login open to it.
    for _ in 0..20 {
        let r = http
            .post(format!("{}/v1/auth/login", c.api))
            .json(&json!({"username": "admin", "password": "guess"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(
        c.login_status(&c.client("127.0.0.1"), "admin", ADMIN_PW),
        200
    );
    // The roles' routes are still there.
    assert_eq!(
        http.get(format!("{}/health", c.api))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn login_limiter_counts_before_hashing_and_locks_only_the_pair() {
    let dir = tmp("limiter");
    let c = start_control(&[], &dir);
    // A burst of 30 parallel wrong logins against admin from one address: at most five
    // reach the password check (401); the rest are refused before it (429).
    let attacker = c.client("127.0.0.2");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..30)
            .map(|i| {
                let (c, cl) = (&c, attacker.clone());
                s.spawn(move || c.login_status(&cl, "admin", &format!("guess-{i}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 30, "{statuses:?}");
    assert!(
        (1..=5).contains(&checked),
        "{checked} of 30 parallel guesses reached the password check: {statuses:?}"
    );
    // Even the right password is refused from the attacker's address for the window...
    let r = attacker
        .post(format!("{}/v1/auth/login", c.portal))
        .json(&json!({"username": "admin", "password": ADMIN_PW}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // ...but the real admin, from another address, logs in.
    assert_eq!(
        c.login_status(&c.client("127.0.0.3"), "admin", ADMIN_PW),
        200
    );

    // An unknown user costs the same argon2 verification as a wrong password for a
    // known one (medians, loose factor; each series from its own address).
    let median = |from: &str, user: &dyn Fn(usize) -> String| {
        let cl = c.client(from);
        let mut t: Vec<Duration> = (0..5)
            .map(|i| {
                let start = Instant::now();
                assert_eq!(c.login_status(&cl, &user(i), "wrong password"), 401);
                start.elapsed()
            })
            .collect();
        t.sort();
        t[2]
    };
    let known = median("127.0.0.4", &|_| "admin".to_owned());
    let unknown = median("127.0.0.5", &|i| format!("nobody-{i}"));
    assert!(
        unknown.as_secs_f64() >= 0.5 * known.as_secs_f64(),
        "unknown user {unknown:?} vs known user {known:?}"
    );
}

#[test]
fn customer_credentials_on_sqlite() {
    let dir = tmp("sqlite");
    let c = start_control(&[], &dir);
    let db = c.data.join("control.db");
    customer_credentials(&c, &|sql| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(sql).unwrap();
        let mut st = conn
            .prepare("SELECT name, token_hash, scopes FROM cp_api_tokens")
            .unwrap();
        st.query_map([], |r| {
            Ok(format!(
                "{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    });
}

#[test]
fn customer_credentials_on_postgres() {
    let Some(url) = pg_support::fresh_database("customer_credentials") else {
        return;
    };
    let dir = tmp("pg");
    let c = start_control(&["--postgres", &url], &dir);
    customer_credentials(&c, &|sql| {
        let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        pg.batch_execute(sql).unwrap();
        pg.query("SELECT name, token_hash, scopes FROM cp_api_tokens", &[])
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2)
                )
            })
            .collect()
    });
}

/// The token, password and user life cycle; `db(sql)` runs `sql` on the control
/// plane's store and returns its `cp_api_tokens` rows as `name|token_hash|scopes`.
fn customer_credentials(c: &Control, db: &dyn Fn(&str) -> Vec<String>) {
    let admin = c.login("admin", ADMIN_PW);
    let (st, v) = admin.send(
        "POST",
        "/v1/customers",
        Some(json!({"name": "other", "display_name": "Other Co"})),
    );
    assert_eq!(st, 201, "{v}");
    for (user, customer) in [
        ("shopuser", "shop"),
        ("shopmate", "shop"),
        ("otheruser", "other"),
    ] {
        let (st, v) = admin.send(
            "POST",
            "/v1/users",
            Some(json!({"username": user, "password": "first password",
                        "role": "customer", "customer": customer})),
        );
        assert_eq!(st, 201, "{v}");
    }
    let shop = c.login("shopuser", "first password");
    let shop_b = c.login("shopuser", "first password");

    // Bad token requests are refused with the field named.
    for (body, field) in [
        (
            json!({"name": "x", "scopes": ["write"], "expires_in_days": 1}),
            "scopes",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_in_days": 1}),
            "scopes",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "expires_in_days": 366}),
            "expires_in_days",
        ),
        (
            json!({"name": "", "scopes": ["read"], "expires_in_days": 1}),
            "name",
        ),
    ] {
        let (st, v) = shop.send("POST", "/v1/tokens", Some(body.clone()));
        assert_eq!(
            (st, v["errors"][0]["field"].as_str()),
            (422, Some(field)),
            "{body}: {v}"
        );
    }

    let make = |name: &str, scopes: Value| -> (i64, String) {
        let (st, v) = shop.send(
            "POST",
            "/v1/tokens",
            Some(json!({"name": name, "scopes": scopes, "expires_in_days": 30})),
        );
        assert_eq!(st, 201, "{v}");
        let secret = v["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("udn_") && secret.len() == 68, "{secret}");
        (v["id"].as_i64().unwrap(), secret)
    };
    let (read_id, read) = make("ci-read", json!(["read"]));
    let (_, purge) = make("ci-purge", json!(["purge", "read"]));
    let (keep_id, keep) = make("keep", json!(["read"]));

    // A token acts as its user within its scopes, on either listener.
    let (st, v) = bearer("GET", &format!("{}/v1/me", c.api), &read, None);
    assert_eq!(
        (st, v["user"]["username"].as_str()),
        (200, Some("shopuser")),
        "{v}"
    );
    let (st, _) = bearer("GET", &format!("{}/v1/cdn", c.portal), &read, None);
    assert_eq!(st, 200);
    let purge_body = json!({"scope": "url", "target": "http://cdn.shop.udn.example/a.css"});
    let (st, v) = bearer(
        "POST",
        &format!("{}/v1/purge", c.api),
        &read,
        Some(purge_body.clone()),
    );
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"purge\""), "{v}");
    let (st, v) = bearer("GET", &format!("{}/v1/invoices", c.api), &read, None);
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"billing\""), "{v}");
    let (st, v) = bearer(
        "POST",
        &format!("{}/v1/customers", c.api),
        &purge,
        Some(json!({"name": "evil", "display_name": "Evil"})),
    );
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"config\""), "{v}");
    // A token cannot mint a wider token or change the password.
    let (st, _) = bearer(
        "POST",
        &format!("{}/v1/tokens", c.portal),
        &read,
        Some(json!({"name": "wider", "scopes": ["config"], "expires_in_days": 1})),
    );
    assert_eq!(st, 403);
    let (st, _) = bearer(
        "POST",
        &format!("{}/v1/purge", c.api),
        &purge,
        Some(purge_body.clone()),
    );
    assert_eq!(st, 202);

    // Listed without secrets, with the last use; stored as SHA-256 only.
    let (st, list) = shop.send("GET", "/v1/tokens", None);
    assert_eq!(st, 200);
    let text = list.to_string();
    assert!(!text.contains(&read) && !text.contains("secret"), "{text}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci-read", "ci-purge", "keep"]);
    let row = &list[0];
    assert_eq!(row["scopes"], json!(["read"]));
    assert!(row["last_used"].as_u64().is_some(), "{row}");
    assert!(list[2]["last_used"].is_null(), "{list}");
    assert!(row["expires_at"].as_u64() > row["created_at"].as_u64());
    let rows = db("SELECT 1");
    let all = rows.join("\n");
    for secret in [&read, &purge, &keep] {
        assert!(!all.contains(secret.as_str()), "{all}");
        let h = hex(&Sha256::digest(secret.as_bytes()));
        assert!(all.contains(&h), "{all}");
    }

    // Another customer's user can neither see nor revoke them.
    let other = c.login("otheruser", "first password");
    let (_, olist) = other.send("GET", "/v1/tokens", None);
    assert_eq!(olist, json!([]));
    let (st, _) = other.send("DELETE", &format!("/v1/tokens/{keep_id}"), None);
    assert_eq!(st, 404);
    assert_eq!(
        bearer("GET", &format!("{}/v1/me", c.api), &keep, None).0,
        200
    );

    // Revoked and expired tokens are refused.
    let (st, _) = shop.send("DELETE", &format!("/v1/tokens/{read_id}"), None);
    assert_eq!(st, 204);
    assert_eq!(
        bearer("GET", &format!("{}/v1/me", c.api), &read, None).0,
        401
    );
    let (st, _) = shop.send("DELETE", &format!("/v1/tokens/{read_id}"), None);
    assert_eq!(st, 404);
    db("UPDATE cp_api_tokens SET expires_at = 1 WHERE name = 'ci-purge'");
    assert_eq!(
        bearer("GET", &format!("{}/v1/me", c.api), &purge, None).0,
        401
    );

    // Password change: the current password is checked; other sessions end.
    let (st, v) = shop.send(
        "POST",
        "/v1/me/password",
        Some(json!({"current": "not it", "new": "second password"})),
    );
    assert_eq!(
        (st, v["errors"][0]["field"].as_str()),
        (422, Some("current")),
        "{v}"
    );
    let (st, v) = shop.send(
        "POST",
        "/v1/me/password",
        Some(json!({"current": "first password", "new": "second password"})),
    );
    assert_eq!(st, 204, "{v}");
    assert_eq!(shop.send("GET", "/v1/me", None).0, 200);
    assert_eq!(shop_b.send("GET", "/v1/me", None).0, 401);
    let fresh = c.client("127.0.0.6");
    assert_eq!(c.login_status(&fresh, "shopuser", "first password"), 401);
    assert_eq!(c.login_status(&fresh, "shopuser", "second password"), 200);

    // User deletion: not across customers; an admin deletes with sessions and tokens.
    let (st, _) = other.send("DELETE", "/v1/users/shopuser", None);
    assert_eq!(st, 403);
    let (st, _) = other.send("DELETE", "/v1/users/admin", None);
    assert_eq!(st, 403);
    assert_eq!(shop.send("GET", "/v1/me", None).0, 200);
    let (st, _) = admin.send("DELETE", "/v1/users/shopuser", None);
    assert_eq!(st, 204);
    assert_eq!(shop.send("GET", "/v1/me", None).0, 401);
    assert_eq!(
        bearer("GET", &format!("{}/v1/me", c.api), &keep, None).0,
        401
    );
    assert_eq!(c.login_status(&fresh, "shopuser", "second password"), 401);
    assert!(db("SELECT 1").is_empty(), "the user's tokens are gone");
    let (st, _) = admin.send("DELETE", "/v1/users/shopuser", None);
    assert_eq!(st, 404);
    // Nor a user of another customer who is still there.
    let mate = c.login("shopmate", "first password");
    let (st, _) = other.send("DELETE", "/v1/users/shopmate", None);
    assert_eq!(st, 403);
    assert_eq!(mate.send("GET", "/v1/me", None).0, 200);
}
