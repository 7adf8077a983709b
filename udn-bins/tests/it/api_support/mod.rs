//! Shared set-up of the API and portal tests: a real SQLite file or PostgreSQL database,
//! the real router served on loopback, and small real HTTP servers standing in for edges
//! and probes that record what they receive.
#![allow(dead_code)]

use crate::pg_support;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use udn_bins::api::backend::{BackendResult, InvoiceSummary};
use udn_bins::api::{
    ApiState, Backend, ControlOptions, ControlTables, EdgeApi, PgBackend, ProbeApi, Role,
    SqliteBackend, serve_http,
};
use udn_core::{Config, Timestamp};

pub const PASSWORD: &str = "correct horse battery";

/// The sample network plus a second customer, `acme`, with its own GTM and CDN hostnames.
pub fn two_customer_config() -> Config {
    let mut text = udn_core::config::SAMPLE.to_owned();
    text.push_str(
        r#"
[[origins]]
name = "acme-site"
pop = "fra"
servers = [{ name = "acme-1", addresses = ["127.0.0.31"] }]

[[customers]]
name = "acme"
display_name = "Acme Corp."

[[gtm]]
hostname = "www.acme.udn.example"
customer = "acme"
service = "http"
targets = [{ server = "acme-1" }]

[[cdn]]
hostname = "cdn.acme.udn.example"
customer = "acme"
origins = ["www.acme.udn.example"]
"#,
    );
    Config::from_toml(&text).expect("test config parses")
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "udn-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// What a stand-in edge or probe received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A small real HTTP server recording `POST /v1/purge`, `/v1/prefill`, `/v1/prefill-live` and answering
/// `POST /v1/pagecheck` with rows.
#[derive(Clone)]
pub struct Recorder {
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub rows: Arc<Mutex<Value>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            calls: Arc::new(Mutex::new(Vec::new())),
            rows: Arc::new(Mutex::new(json!([]))),
        }
    }

    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }

    fn router(&self) -> Router {
        async fn record(
            State(r): State<Recorder>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            use axum::response::IntoResponse as _;
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let path = uri.path().to_owned();
            r.calls.lock().expect("lock").push(Call {
                path: path.clone(),
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body,
            });
            if path == "/v1/pagecheck" {
                let rows = r.rows.lock().expect("lock").clone();
                return axum::Json(rows).into_response();
            }
            axum::Json(json!({"ok": true})).into_response()
        }
        Router::new()
            .route("/v1/purge", post(record))
            .route("/v1/prefill", post(record))
            .route("/v1/prefill-live", post(record))
            .route("/v1/pagecheck", post(record))
            .with_state(self.clone())
    }

    /// Serves on `addr` until the returned task is aborted.
    pub async fn serve(&self, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind recorder");
        self.serve_listener(listener)
    }

    /// Serves on a socket held by [`reserve`] until the returned task is aborted.
    pub fn serve_reserved(&self, socket: tokio::net::TcpSocket) -> tokio::task::JoinHandle<()> {
        self.serve_listener(socket.listen(1024).expect("listen"))
    }

    fn serve_listener(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }
}

/// A loopback port held for a server that is down until the test starts it: bound but
/// not listening, so connections are refused (as by a stopped edge) and no parallel
/// test can take the port meanwhile.
pub fn reserve() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = s.local_addr().expect("addr");
    (s, addr)
}

/// A loopback port nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Which database holds the control plane's tables in a test.
#[derive(Debug, Clone)]
pub enum Store {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A fresh PostgreSQL database at this URL.
    Postgres(String),
}

impl Store {
    /// A fresh PostgreSQL database for `test`, or `None` when `UDN_TEST_POSTGRES` is
    /// unset outside CI (see `pg_support::fresh_database`). Blocks.
    pub fn postgres(test: &str) -> Option<Store> {
        pg_support::fresh_database(test).map(Store::Postgres)
    }
}

/// Generates, for each named `async fn test(store: Store)`, a `sqlite::test` and a
/// `postgres::test` (the latter skipped loudly without `UDN_TEST_POSTGRES`, failing in
/// CI), so the same test runs against both control-plane stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::run_on(super::Store::Sqlite, super::$name);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(store) = super::Store::postgres(stringify!($name)) {
                        super::run_on(store, super::$name);
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

/// Runs an async test on a fresh current-thread runtime (what `#[tokio::test]` does).
pub fn run_on<F, Fut>(store: Store, test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test(store));
}

/// The harness's control store. Each call runs on a thread of its own, so tests can
/// call it from async code (the PostgreSQL client refuses to block an async thread).
#[derive(Clone)]
pub struct TestDb(pub Arc<dyn ControlTables>);

impl TestDb {
    /// Runs `f` on the store, off the async thread.
    pub fn run<T: Send>(&self, f: impl FnOnce(&dyn ControlTables) -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| f(self.0.as_ref()))
                .join()
                .expect("store call panicked")
        })
    }

    pub fn record_cdn_traffic(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        minute: Timestamp,
        bytes: u64,
        hits: u64,
    ) -> BackendResult<()> {
        self.run(|db| db.record_cdn_traffic(customer, hostname, pop, minute, bytes, hits))
    }

    pub fn record_gtm_answers(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        address: &str,
        minute: Timestamp,
        answers: u64,
    ) -> BackendResult<()> {
        self.run(|db| db.record_gtm_answers(customer, hostname, pop, address, minute, answers))
    }

    pub fn insert_invoice(&self, summary: &InvoiceSummary, html: &str) -> BackendResult<i64> {
        self.run(|db| db.insert_invoice(summary, html))
    }
}

/// A running control plane API with two edges (the first up, the second down until the
/// test starts it) and two probes (`fra`, `nyc`).
pub struct Harness {
    pub dir: PathBuf,
    pub db: TestDb,
    pub state: ApiState,
    pub base: String,
    /// The API and portal over HTTPS (self-signed certificate `cert_pem`).
    pub https_base: String,
    pub cert_pem: String,
    pub edge1: Recorder,
    pub edge2: Recorder,
    pub edge2_addr: SocketAddr,
    /// edge2's port, held until [`Harness::serve_edge2`].
    edge2_socket: std::sync::Mutex<Option<tokio::net::TcpSocket>>,
    pub probe_fra: Recorder,
    pub probe_nyc: Recorder,
    /// The control plane's machine listener (mutual TLS): the roles' `GET /v1/config`.
    pub machine_base: String,
    /// The revocation list that listener enforces and publishes.
    pub revoked: udn_bins::pki::Revocations,
    /// Instance credentials from the harness's CA, by role: `dns`, `edge`, `probe`,
    /// `control` (each in `<dir>/ids/<role>/`).
    pub ids: std::collections::HashMap<&'static str, udn_bins::pki::Credentials>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    /// A harness on a SQLite file.
    pub async fn start(tag: &str) -> Harness {
        Harness::start_on(Store::Sqlite, tag).await
    }

    /// A harness on `store`, seeded with [`two_customer_config`] and the users `admin`,
    /// `shopuser` and `acmeuser` (password [`PASSWORD`]).
    pub async fn start_on(store: Store, tag: &str) -> Harness {
        Harness::start_full(store, tag, None).await
    }

    /// A SQLite harness whose control plane asks `resolver` for hostname TXT challenges.
    pub async fn start_with_resolver(tag: &str, resolver: SocketAddr) -> Harness {
        Harness::start_full(Store::Sqlite, tag, Some(resolver)).await
    }

    /// A SQLite harness whose pending hostnames expire after `ttl`.
    pub async fn start_with_pending_ttl(tag: &str, ttl: std::time::Duration) -> Harness {
        Harness::start_opts(Store::Sqlite, tag, None, Some(ttl)).await
    }

    async fn start_full(store: Store, tag: &str, resolver: Option<SocketAddr>) -> Harness {
        Harness::start_opts(store, tag, resolver, None).await
    }

    async fn start_opts(
        store: Store,
        tag: &str,
        resolver: Option<SocketAddr>,
        pending_ttl: Option<std::time::Duration>,
    ) -> Harness {
        udn_bins::install_crypto();
        let dir = temp_dir(tag);
        let db_file = dir.join("control.db");
        let db = std::thread::scope(|s| {
            s.spawn(|| -> Arc<dyn ControlTables> {
                let db: Arc<dyn ControlTables> = match &store {
                    Store::Sqlite => Arc::new(SqliteBackend::open(&db_file).expect("open db")),
                    Store::Postgres(url) => {
                        Arc::new(PgBackend::connect(url).expect("open postgres"))
                    }
                };
                db.commit_config(0, &two_customer_config(), "test", udn_bins::logging::now())
                    .expect("seed config");
                db.create_user("admin", PASSWORD, Role::Admin, None)
                    .expect("admin");
                db.create_user("shopuser", PASSWORD, Role::Customer, Some("shop"))
                    .expect("shop user");
                db.create_user("acmeuser", PASSWORD, Role::Customer, Some("acme"))
                    .expect("acme user");
                db
            })
            .join()
            .expect("seeding the store")
        });
        let db = TestDb(db);

        let mut tasks = Vec::new();
        let edge1 = Recorder::new();
        let edge1_addr = free_addr();
        tasks.push(edge1.serve(edge1_addr).await);
        let edge2 = Recorder::new();
        let (edge2_socket, edge2_addr) = reserve();
        let probe_fra = Recorder::new();
        let fra_addr = free_addr();
        tasks.push(probe_fra.serve(fra_addr).await);
        let probe_nyc = Recorder::new();
        let nyc_addr = free_addr();
        tasks.push(probe_nyc.serve(nyc_addr).await);

        let opts = ControlOptions {
            edges: vec![
                EdgeApi {
                    name: "fra-edge-1".into(),
                    url: format!("http://{edge1_addr}"),
                },
                EdgeApi {
                    name: "nyc-edge-1".into(),
                    url: format!("http://{edge2_addr}"),
                },
            ],
            probes: vec![
                ProbeApi {
                    location: "fra".into(),
                    url: format!("http://{fra_addr}"),
                },
                ProbeApi {
                    location: "nyc".into(),
                    url: format!("http://{nyc_addr}"),
                },
            ],
            credentials: None,
            // Zone files named by the configuration are read from `<dir>/zones`.
            zone_dir: Some(dir.join("zones")),
            pending_ttl,
            purge_retry_secs: Some(1),
            challenge_resolver: resolver,
            signup: None,
        };
        let backend: Arc<dyn Backend> = db.0.clone();
        let state = db.run(|_| ApiState::new(backend, opts).expect("state"));
        tasks.extend(state.start_purge_distributor());
        let app = udn_bins::api::router(state.clone());
        let (addr, task) = serve_http("127.0.0.1:0".parse().expect("addr"), app)
            .await
            .expect("serve");
        tasks.push(task);
        let (tls, cert_pem) =
            udn_bins::portal::server_config(&udn_bins::portal::CertSource::SelfSigned {
                dir: dir.join("tls"),
                names: vec!["localhost".into(), "127.0.0.1".into()],
            })
            .expect("certificate");
        let (https, task) = udn_bins::portal::serve_https(
            "127.0.0.1:0".parse().expect("addr"),
            udn_bins::portal::app(state.clone()),
            tls,
        )
        .await
        .expect("serve https");
        tasks.push(task);
        // The machine listener, as `udn control --listen` serves it: mutual TLS with the
        // control plane's certificate from the instance CA.
        udn_bins::install_crypto();
        let ca = udn_bins::pki::Ca::load_or_create(&dir.join("pki")).expect("CA");
        let mut ids = std::collections::HashMap::new();
        for (role, r) in [
            ("dns", udn_bins::pki::InstanceRole::Dns),
            ("edge", udn_bins::pki::InstanceRole::Edge),
            ("probe", udn_bins::pki::InstanceRole::Probe),
            ("control", udn_bins::pki::InstanceRole::Control),
        ] {
            let c = ca
                .enroll_into(r, role, &["127.0.0.1".into()], &dir.join("ids").join(role))
                .expect("enroll");
            ids.insert(role, c);
        }
        let revoked = udn_bins::pki::Revocations::default();
        let (machine, task) = udn_bins::listener::bind_and_serve(
            "127.0.0.1:0".parse().expect("addr"),
            udn_bins::api::role_config_router(state.clone(), revoked.clone()),
            Some(udn_bins::listener::Tls {
                config: ids["control"].server_config().expect("server config"),
                revoked: revoked.clone(),
            }),
            udn_bins::listener::Limits::default(),
        )
        .await
        .expect("serve machine listener");
        tasks.push(task);
        Harness {
            machine_base: format!("https://{machine}"),
            revoked,
            ids,
            dir,
            db,
            state,
            base: format!("http://{addr}"),
            https_base: format!("https://127.0.0.1:{}", https.port()),
            cert_pem,
            edge1,
            edge2,
            edge2_addr,
            edge2_socket: std::sync::Mutex::new(Some(edge2_socket)),
            probe_fra,
            probe_nyc,
            tasks,
        }
    }

    /// Starts edge2 (down until now) on its address; again after it was stopped.
    pub async fn serve_edge2(&self) -> tokio::task::JoinHandle<()> {
        let held = self
            .edge2_socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match held {
            Some(socket) => self.edge2.serve_reserved(socket),
            None => self.edge2.serve(self.edge2_addr).await,
        }
    }

    /// A client that trusts only the portal's certificate, keeps cookies and does not
    /// follow redirects.
    pub fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only(
                [reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("pem")],
            )
            .build()
            .expect("client")
    }

    pub fn https(&self, path: &str) -> String {
        format!("{}{}", self.https_base, path)
    }

    /// A URL on the machine listener.
    pub fn machine(&self, path: &str) -> String {
        format!("{}{}", self.machine_base, path)
    }

    /// A client presenting the credentials of `role` (see [`Harness::ids`]).
    pub fn role_client(&self, role: &str) -> reqwest::Client {
        self.ids[role]
            .reqwest_client(std::time::Duration::from_secs(60))
            .expect("client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A client logged in as `user` with a cookie; returns it and the CSRF token.
    pub async fn login(&self, user: &str) -> Session {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .expect("client");
        let resp = client
            .post(self.url("/v1/auth/login"))
            .json(&json!({"username": user, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(resp.status(), 200, "login as {user}");
        let body: Value = resp.json().await.expect("json");
        Session {
            client,
            csrf: body["csrf"].as_str().expect("csrf").to_owned(),
            base: self.base.clone(),
        }
    }
}

/// A logged-in client that sends the CSRF header on changes.
pub struct Session {
    pub client: reqwest::Client,
    pub csrf: String,
    pub base: String,
}

impl Session {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .expect("GET");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self
            .client
            .request(m, format!("{}{}", self.base, path))
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .expect("request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

/// Polls `f` every 100 ms for up to `secs` seconds until it returns true.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// What is wrong with `body` as the `200` answer of `GET path` by `doc` (docs/openapi.json:
/// OpenAPI 3.1 schemas are JSON Schema 2020-12, checked with the document's components
/// for `$ref`s): at most five errors; `None` when the document describes no JSON answer.
pub fn schema_errors(doc: &Value, path: &str, body: &Value) -> Option<Vec<String>> {
    let schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        .get("schema")?;
    let root = serde_json::json!({"allOf": [schema], "components": doc["components"]});
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("{path}: the schema does not compile: {e}"));
    Some(
        validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .take(5)
            .collect(),
    )
}
