//! The edge server (feature `server`): a caching reverse proxy on hyper 1 (HTTP/1.1 and
//! HTTP/2, HTTPS with per-hostname certificates by SNI) with a memory tier (moka,
//! weighed by bytes), a disk tier that survives restarts, request coalescing, Range,
//! stale-while-revalidate / stale-if-error, purge and prefill operations, Prometheus
//! metrics and an access log through [`udn_core::log::LogSink`].
//!
//! The listeners started here serve customer traffic only (and `GET /health`): every
//! other path, `/metrics` and `/v1/purge` included, goes to the origin like any URL.
//! Purge, prefill, the purge journal and the metrics are methods of [`Edge`] (and
//! [`EdgeHandle`]) for the embedding program to serve on an authenticated admin
//! listener of its own (`udn edge --admin-listen`).
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> Result<(), udn_cache::Error> {
//! use udn_cache::{Router, server::{Edge, start}};
//! let edge = Edge::builder(Router::single("http://127.0.0.1:8080")?)
//!     .memory_bytes(64 << 20)
//!     .disk("/var/cache/udn".into(), 1 << 30)
//!     .build()?;
//! let handle = start(edge, "127.0.0.1:0".parse().unwrap(), None).await?;
//! println!("edge on http://{}", handle.http_addr);
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

mod body;
mod fill;
pub mod ftp;
mod ftp_origin;
mod guard;
pub mod journal;
pub mod listener;
mod live;
pub mod store;
mod tls;
mod upstream;

/// The outcome of the access-log record each origin fill writes (its `fill_bytes`; no
/// client bytes, no request counted).
pub use fill::FILL_OUTCOME;
use fill::{FetchError, FillResult, Lead, Want};

pub use body::RespBody;
pub use ftp::{FtpHandle, FtpOptions, start_ftp};
pub use live::LivePrefill;
pub use tls::{TlsCert, tls_config};

use crate::invalidate::{Applied, InvalidationTree, Purge};
use crate::outcome::{BypassReason, CacheOutcome, DefaultHooks, EdgeHooks};
use crate::policy::{self, Action, StoredMeta};
use crate::route::{Route, Router};
use body::{LogInfo, LoggedBody, empty, file_body, full};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use store::{BodyLoc, DiskTier, Object};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{oneshot, watch};
use udn_core::Timestamp;
use udn_core::log::{LogSink, NullSink};

type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;
type OriginClient = Client<
    hyper_rustls::HttpsConnector<
        hyper_util::client::legacy::connect::HttpConnector<guard::GuardedResolver>,
    >,
    ReqBody,
>;

/// A clock: the binary passes the wall clock; tests may pass a virtual one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

fn system_clock() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

/// Prometheus metrics of an edge.
#[derive(Default)]
struct Metrics {
    requests: Family<Vec<(String, String)>, Counter>,
    outcomes: [std::sync::OnceLock<Counter>; 5],
    bytes_sent: Counter,
    origin_fetches: Counter,
    origin_bytes: Counter,
    seek_fetches: Counter,
    prefetches: Counter,
    purges: Counter,
    memory_bytes: Gauge,
    disk_bytes: Gauge,
}

impl Metrics {
    /// The request counter of an outcome (created once, then shared: no allocation
    /// per request).
    fn by_outcome(&self, outcome: CacheOutcome) -> &Counter {
        let i = match outcome {
            CacheOutcome::Hit => 0,
            CacheOutcome::Miss => 1,
            CacheOutcome::Revalidated => 2,
            CacheOutcome::Stale => 3,
            _ => 4,
        };
        self.outcomes[i].get_or_init(|| {
            self.requests
                .get_or_create(&vec![("outcome".to_string(), outcome.label().to_string())])
                .clone()
        })
    }
}

/// Builds an [`Edge`].
#[must_use]
pub struct EdgeBuilder {
    router: Router,
    pop: String,
    memory_bytes: u64,
    memory_object_max: Option<u64>,
    disk: Option<(PathBuf, u64)>,
    origin_timeout: Duration,
    body_timeout: Duration,
    waiter_timeout: Duration,
    origin_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    limits: listener::Limits,
    hooks: Arc<dyn EdgeHooks>,
    log: Arc<dyn LogSink>,
    clock: Clock,
    cdn_id: String,
}

impl EdgeBuilder {
    /// The token this edge adds to `CDN-Loop` and refuses to see there (RFC 8586;
    /// default `udn`): every edge of one network must share it so a loop through any
    /// of them is detected.
    pub fn cdn_id(mut self, id: &str) -> Self {
        self.cdn_id = id.to_string();
        self
    }

    /// Also trusts these CA certificates (PEM file) for HTTPS origins, besides the
    /// system's roots (for origins with a private CA).
    pub fn origin_ca_file(mut self, pem: &std::path::Path) -> Result<Self, crate::Error> {
        use rustls_pki_types::pem::PemObject as _;
        let bad = || {
            crate::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no certificates in {}", pem.display()),
            ))
        };
        for c in rustls_pki_types::CertificateDer::pem_file_iter(pem).map_err(|_| bad())? {
            self.origin_roots.push(c.map_err(|_| bad())?);
        }
        Ok(self)
    }

    /// The POP name written into access-log records (default `local`).
    pub fn pop(mut self, pop: &str) -> Self {
        self.pop = pop.to_string();
        self
    }
    /// Size of the memory tier in bytes (default 256 MiB).
    pub fn memory_bytes(mut self, n: u64) -> Self {
        self.memory_bytes = n;
        self
    }
    /// Largest object kept in memory (default 1/8 of the memory tier); larger ones
    /// stream to the disk tier (or, without one, through to the client uncached).
    pub fn memory_object_max(mut self, n: u64) -> Self {
        self.memory_object_max = Some(n);
        self
    }
    /// The disk tier: a directory and its size limit in bytes.
    pub fn disk(mut self, dir: PathBuf, max_bytes: u64) -> Self {
        self.disk = Some((dir, max_bytes));
        self
    }
    /// How long to wait for an origin's response headers (default 10 s).
    pub fn origin_timeout(mut self, d: Duration) -> Self {
        self.origin_timeout = d;
        self
    }
    /// How long a fill waits for the origin's next body bytes before it is cut off
    /// (not stored; its clients' responses are aborted). Default 30 s.
    pub fn origin_body_timeout(mut self, d: Duration) -> Self {
        self.body_timeout = d;
        self
    }
    /// How long a client of a fill waits for its response to start, or for its next
    /// body bytes (then 504, or an aborted body). Default 30 s.
    pub fn waiter_timeout(mut self, d: Duration) -> Self {
        self.waiter_timeout = d;
        self
    }
    /// The limits of the customer listeners [`start`] opens (default
    /// [`listener::Limits::default`]).
    pub fn listener_limits(mut self, limits: listener::Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Replaces the default hooks.
    pub fn hooks(mut self, hooks: Arc<dyn EdgeHooks>) -> Self {
        self.hooks = hooks;
        self
    }
    /// Where access-log records go (default: discarded).
    pub fn log_sink(mut self, log: Arc<dyn LogSink>) -> Self {
        self.log = log;
        self
    }
    /// The clock (default: the system's wall clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the disk tier (indexing what a previous run left), replays the purge
    /// journal, and returns the edge.
    pub fn build(self) -> Result<Arc<Edge>, crate::Error> {
        let object_max = self.memory_object_max.unwrap_or(self.memory_bytes / 8);
        let memory = moka::sync::Cache::builder()
            .max_capacity(self.memory_bytes)
            .weigher(|k: &String, v: &Arc<Object>| {
                let body = match &v.body {
                    BodyLoc::Memory(b) => b.len(),
                    BodyLoc::Disk(_) => 0,
                };
                u32::try_from(k.len() + body + 512).unwrap_or(u32::MAX)
            })
            .build();
        let mut tree = InvalidationTree::new();
        let (disk, journal) = match &self.disk {
            Some((dir, max)) => {
                let d = DiskTier::open(dir, *max)?;
                let journal = journal::PurgeJournal::open(dir, &mut tree, d.generation_range())?;
                (Some(d), Some(journal))
            }
            None => (None, None),
        };
        let (prefetch_tx, prefetch_rx) = tokio::sync::mpsc::channel(PREFETCH_QUEUE);
        // The Vary names of what the disk tier holds, so its variants stay hits.
        let vary = moka::sync::Cache::new(100_000);
        for (primary, names) in disk.iter().flat_map(|d| d.vary_names()) {
            vary.insert(primary, names);
        }
        let mut store = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = store.add(c);
        }
        for c in self.origin_roots {
            store.add(c)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
        let policy = guard::SharedPolicy::new(self.router.target_policy().clone());
        let client = origin_client(&tls, None, &policy);
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("udn_edge");
        registry.register(
            "requests",
            "Requests by cache outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "bytes_sent",
            "Body bytes sent to clients",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "origin_fetches",
            "Requests sent to origins",
            metrics.origin_fetches.clone(),
        );
        registry.register(
            "origin_bytes",
            "Body bytes received from origins",
            metrics.origin_bytes.clone(),
        );
        registry.register(
            "seek_fetches",
            "Ranged origin fetches for a Range far beyond what a running fill has stored",
            metrics.seek_fetches.clone(),
        );
        registry.register(
            "prefetches",
            "Segments named by a live HLS playlist fetched ahead of the viewers",
            metrics.prefetches.clone(),
        );
        registry.register("purges", "Purges applied", metrics.purges.clone());
        registry.register(
            "memory_bytes",
            "Bytes held by the memory tier",
            metrics.memory_bytes.clone(),
        );
        registry.register(
            "disk_bytes",
            "Bytes held by the disk tier",
            metrics.disk_bytes.clone(),
        );
        Ok(Arc::new(Edge {
            router: RwLock::new(Arc::new(self.router)),
            pop: self.pop,
            object_max,
            memory,
            vary,
            disk,
            journal: journal.map(Mutex::new),
            tree: RwLock::new(tree),
            inflight: Mutex::new(HashMap::new()),
            client,
            sni_clients: Mutex::new(HashMap::new()),
            tls,
            policy,
            origin_timeout: self.origin_timeout,
            body_timeout: self.body_timeout,
            waiter_timeout: self.waiter_timeout,
            limits: self.limits,
            hooks: self.hooks,
            log: self.log,
            clock: self.clock,
            cdn_id: self.cdn_id,
            unsafe_marks: moka::sync::Cache::new(100_000),
            metrics,
            registry,
            prefetch_tx,
            prefetch_rx: Mutex::new(Some(prefetch_rx)),
        }))
    }
}

/// Response extension: the body comes straight from the origin (it is this request's
/// origin traffic, logged as `fill_bytes`).
#[derive(Clone, Copy)]
struct FromOrigin;

/// A running edge's shared state.
pub struct Edge {
    router: RwLock<Arc<Router>>,
    pop: String,
    object_max: u64,
    memory: moka::sync::Cache<String, Arc<Object>>,
    vary: moka::sync::Cache<String, Arc<Vec<HeaderName>>>,
    disk: Option<DiskTier>,
    journal: Option<Mutex<journal::PurgeJournal>>,
    tree: RwLock<InvalidationTree>,
    inflight: Mutex<HashMap<String, fill::Inflight>>,
    client: OriginClient,
    /// Clients for HTTPS origins fetched by address (`origin_urls`) whose certificate
    /// names the origin domain: SNI and verification use the domain.
    sni_clients: Mutex<HashMap<String, OriginClient>>,
    tls: rustls::ClientConfig,
    /// The router's target policy, shared with the clients' resolver.
    policy: guard::SharedPolicy,
    origin_timeout: Duration,
    body_timeout: Duration,
    waiter_timeout: Duration,
    limits: listener::Limits,
    hooks: Arc<dyn EdgeHooks>,
    log: Arc<dyn LogSink>,
    clock: Clock,
    /// The CDN-Loop token.
    cdn_id: String,
    /// Store keys invalidated by an unsafe request (RFC 9111 4.4) and when: an object
    /// of that key fetched no later is dropped on lookup (bounded; the plain object is
    /// also removed at once).
    unsafe_marks: moka::sync::Cache<String, Timestamp>,
    metrics: Metrics,
    registry: Registry,
    /// Segments to fetch ahead (named by a live HLS playlist just filled); a bounded
    /// queue: when it is full, a prefetch is skipped (the viewers' own requests fill).
    prefetch_tx: tokio::sync::mpsc::Sender<Route>,
    /// Its receiver, taken by [`start`]'s prefetch task.
    prefetch_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Route>>>,
}

/// How far beyond what a running fill has stored a Range may start and still be
/// served from the fill (4 MiB, about a second of a high-bitrate video at loopback
/// speeds); one starting further ahead gets a ranged origin fetch of its own
/// (the edge's seek path).
pub const SEEK_AHEAD: u64 = 4 << 20;

/// Segments of one live playlist fetched ahead: the newest few (a player starts a few
/// segments behind the live edge and then asks for each new one).
pub const PREFETCH_SEGMENTS: usize = 3;
/// Prefetches waiting at most.
const PREFETCH_QUEUE: usize = 256;
/// Prefetches running at once.
const PREFETCH_CONCURRENCY: usize = 4;

/// A pooled HTTP/1.1 + HTTP/2 client for origins over HTTP or HTTPS; with `sni`, TLS
/// names and verifies that server name instead of the URL's host.
/// Names resolve through `policy` (addresses it refuses are dropped, so a name that
/// resolves only into the provider's network is never connected to).
fn origin_client(
    tls: &rustls::ClientConfig,
    sni: Option<String>,
    policy: &guard::SharedPolicy,
) -> OriginClient {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http();
    let b = match sni {
        Some(name) => b.with_server_name_resolver(move |_: &http::Uri| {
            rustls_pki_types::ServerName::try_from(name.clone())
        }),
        None => b,
    };
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(
        guard::GuardedResolver::new(policy.clone()),
    );
    // The HTTPS connector checks the scheme.
    http.enforce_http(false);
    let connector = b.enable_http1().enable_http2().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too (RFC 9110 7.6.1).
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

fn simple(status: StatusCode, text: &str) -> Response<RespBody> {
    let mut r = Response::new(full(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A single `bytes=` range resolved against a length: `Ok(Some((start, len)))`,
/// `Ok(None)` for no (or an ignored) Range header, `Err(())` when unsatisfiable.
fn parse_range(h: Option<&HeaderValue>, total: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(s) = h.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = s.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // multi-range: serve the whole object
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (total.saturating_sub(n), total.saturating_sub(1))
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            total.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(total.saturating_sub(1))
        };
        (start, end)
    };
    if total == 0 || start >= total || end < start {
        return Err(());
    }
    Ok(Some((start, end - start + 1)))
}

impl Edge {
    /// Starts building an edge that serves `router`'s origins.
    pub fn builder(router: Router) -> EdgeBuilder {
        EdgeBuilder {
            router,
            pop: "local".into(),
            memory_bytes: 256 << 20,
            memory_object_max: None,
            disk: None,
            origin_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            waiter_timeout: Duration::from_secs(30),
            origin_roots: Vec::new(),
            limits: listener::Limits::default(),
            hooks: Arc::new(DefaultHooks),
            log: Arc::new(NullSink),
            clock: Arc::new(system_clock),
            cdn_id: upstream::DEFAULT_CDN_ID.to_string(),
        }
    }

    /// The client for a route's origin: the shared one, or, for an HTTPS origin URL
    /// whose host is not the origin domain, one whose TLS server name is the domain.
    fn client_for(&self, route: &Route) -> OriginClient {
        let o = &route.origin;
        let Some(rest) = o.base_url.strip_prefix("https://") else {
            return self.client.clone();
        };
        let authority = rest.split('/').next().unwrap_or("");
        let url_host = match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        let domain = o.domain.split(':').next().unwrap_or(&o.domain);
        if url_host.eq_ignore_ascii_case(domain) {
            return self.client.clone();
        }
        let mut map = self.sni_clients.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(o.domain.clone())
            .or_insert_with(|| origin_client(&self.tls, Some(domain.to_string()), &self.policy))
            .clone()
    }

    /// Replaces the router (config reload) without dropping traffic.
    pub fn set_router(&self, router: Router) {
        self.policy.set(router.target_policy().clone());
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(router);
    }

    fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Applies a purge (and journals it when there is a disk tier).
    pub fn purge(&self, p: &Purge) -> Applied {
        let applied = self
            .tree
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(p);
        if let Applied::New(generation) = applied {
            self.metrics.purges.inc();
            if let Some(j) = &self.journal {
                let mut j = j.lock().unwrap_or_else(|e| e.into_inner());
                let res = j.append(p, generation, || {
                    let tree = self.tree.read().unwrap_or_else(|e| e.into_inner());
                    tree.export(0)
                });
                if let Err(e) = res {
                    tracing::error!(error = %e, "purge journal write failed");
                }
            }
        }
        applied
    }

    /// Maps a purge URL that names a CDN hostname (or the origin in the path) to the
    /// cache-key form; other URLs are taken as cache keys already. A domain purge of a
    /// CDN hostname covers every origin domain of that hostname (the first purge keeps
    /// the sequence number, the others are unsequenced).
    fn purge_targets(&self, p: Purge) -> Vec<Purge> {
        let Some((host, _)) = crate::route::key_parts(&p.target) else {
            return vec![p];
        };
        let router = self.router();
        if router.origin(host).is_some() {
            return vec![p];
        }
        if p.scope == crate::Scope::Domain
            && let Some(origins) = router.cdn_origins(host)
            && !origins.is_empty()
        {
            return origins
                .iter()
                .enumerate()
                .map(|(i, o)| Purge {
                    scope: p.scope,
                    target: format!("http://{}/", o.domain),
                    seq: if i == 0 { p.seq } else { 0 },
                })
                .collect();
        }
        let path = &p.target["http://".len() + host.len()..];
        let path = if path.is_empty() { "/" } else { path };
        match router.route(host, path) {
            Ok(r) => vec![Purge { target: r.key, ..p }],
            Err(_) => vec![p],
        }
    }

    /// Reads an object from the disk tier (blocking: call on a blocking thread); small
    /// bodies are read into memory for promotion to the memory tier.
    fn load_from_disk(&self, full_key: &str) -> Option<Object> {
        let o = self.disk.as_ref()?.get(full_key)?;
        if o.len > self.object_max {
            return Some(o);
        }
        match &o.body {
            BodyLoc::Disk(p) => match std::fs::read(p) {
                Ok(b) if b.len() as u64 == o.len => Some(Object {
                    body: BodyLoc::Memory(Bytes::from(b)),
                    ..o
                }),
                _ => None,
            },
            BodyLoc::Memory(_) => Some(o),
        }
    }

    async fn lookup(self: &Arc<Self>, full_key: &str, primary: &str) -> Option<Arc<Object>> {
        let obj = match self.memory.get(full_key) {
            // A body on disk may have been evicted from the disk tier meanwhile.
            Some(o)
                if matches!(o.body, BodyLoc::Disk(_))
                    && !self.disk.as_ref().is_some_and(|d| d.touch(full_key)) =>
            {
                self.memory.invalidate(full_key);
                return None;
            }
            Some(o) => o,
            None => {
                if !self.disk.as_ref()?.contains(full_key) {
                    return None;
                }
                let edge = self.clone();
                let key = full_key.to_string();
                let o = tokio::task::spawn_blocking(move || edge.load_from_disk(&key))
                    .await
                    .ok()
                    .flatten()?;
                let o = Arc::new(o);
                self.memory.insert(full_key.to_string(), o.clone());
                o
            }
        };
        let valid = self
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_valid(primary, obj.generation);
        // Invalidated by a later unsafe request to its URL (RFC 9111 4.4)?
        let store_key = full_key.split('\n').next().unwrap_or(full_key);
        let valid = valid
            && self
                .unsafe_marks
                .get(store_key)
                .is_none_or(|at| obj.meta.request_time > at);
        if !valid {
            self.memory.invalidate(full_key);
            if let Some(d) = &self.disk {
                d.remove(full_key);
            }
            return None;
        }
        Some(obj)
    }

    /// What the edge holds (memory and disk tiers, still valid) whose store key starts
    /// with `route`'s (a directory's route): at most `max` of them, as (the rest of the
    /// key after the prefix, length, metadata), for FTP's LIST and MLSD.
    pub(crate) async fn known_under(
        self: &Arc<Self>,
        route: &Route,
        max: usize,
    ) -> Vec<(String, u64, StoredMeta)> {
        let prefix = route.store_key();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let valid = |rest: &str, generation: u64| {
            self.tree
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_valid(&format!("{}{rest}", route.key), generation)
        };
        for (k, o) in self.memory.iter() {
            if out.len() >= max {
                return out;
            }
            let Some(rest) = k.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let rest = rest.split('\n').next().unwrap_or(rest);
            if valid(rest, o.generation) && seen.insert(rest.to_string()) {
                out.push((rest.to_string(), o.len, o.meta.clone()));
            }
        }
        if self.disk.is_some() {
            let edge = self.clone();
            let (p, left) = (prefix.clone(), max - out.len());
            let found = tokio::task::spawn_blocking(move || {
                let disk = edge.disk.as_ref()?;
                let keys = disk.keys_with_prefix(&p, left.saturating_mul(2));
                Some(
                    keys.into_iter()
                        .filter_map(|k| disk.get(&k))
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            for o in found {
                if out.len() >= max {
                    break;
                }
                let Some(rest) = o.key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let rest = rest.split('\n').next().unwrap_or(rest);
                if valid(rest, o.generation) && seen.insert(rest.to_string()) {
                    out.push((rest.to_string(), o.len, o.meta.clone()));
                }
            }
        }
        out
    }

    /// The route of `path` on `host` (as a request for it would be routed).
    pub(crate) fn route_for(&self, host: &str, path: &str) -> Result<Route, crate::RouteError> {
        self.hooks.cache_key(&self.router(), host, path)
    }

    fn full_key(&self, route: &Route, req: &HeaderMap) -> String {
        let primary = route.store_key();
        let names = self.vary.get(&primary).or_else(|| {
            // More primary keys than the map holds: the disk tier has them too.
            self.disk.as_ref().and_then(|d| d.vary(&primary))
        });
        match names {
            Some(names) if !names.is_empty() => {
                format!("{primary}\n{}", policy::secondary_key(&names, req))
            }
            _ => primary,
        }
    }

    /// After an unsafe request answered with 2xx or 3xx: invalidates its target and
    /// the `Location` / `Content-Location` on the same origin (the origin domain, as
    /// the origin names its own URLs; RFC 9111 4.4). Objects whose fetch started no
    /// later than the response's arrival are dropped when next looked up.
    fn invalidate_after_unsafe(&self, route: &Route, method: &Method, resp: &Response<RespBody>) {
        let sent = self.now();
        let host = route.origin.domain.clone();
        let paths =
            policy::invalidated_paths(method, resp.status(), &host, &route.path, resp.headers());
        if paths.is_empty() {
            return;
        }
        let router = self.router();
        // The target is `route`; the other paths are on the same origin domain.
        let mut keys = vec![route.store_key()];
        for p in &paths[1..] {
            if let Ok(r) = self.hooks.cache_key(&router, &host, p) {
                keys.push(r.store_key());
            }
        }
        for k in keys {
            tracing::debug!(key = %k, %method, "invalidated by an unsafe request");
            self.unsafe_marks.insert(k.clone(), sent);
            self.memory.invalidate(&k);
            if let Some(d) = &self.disk {
                d.remove(&k);
            }
        }
    }

    /// Answers from a stored object: conditional requests, Range, HEAD, Age, X-Cache.
    async fn serve_object(
        &self,
        obj: &Object,
        method: &Method,
        req: &HeaderMap,
        outcome: CacheOutcome,
        now: Timestamp,
    ) -> Response<RespBody> {
        let mut headers = obj.meta.headers.clone();
        headers.remove(header::SET_COOKIE);
        upstream::strip_targeted(&mut headers);
        let age = obj.meta.current_age(now).as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
        headers.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.remove(header::CONTENT_LENGTH);
        // Conditional requests from the client (RFC 9110 13.2.2).
        let mut use_range = true;
        if obj.meta.status == StatusCode::OK {
            use crate::conditional::Precondition;
            match crate::conditional::evaluate(method, req, &headers) {
                Precondition::NotModified => {
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::NOT_MODIFIED;
                    *r.headers_mut() = headers;
                    return r;
                }
                Precondition::Failed => {
                    let mut r = simple(StatusCode::PRECONDITION_FAILED, "precondition failed");
                    for n in [
                        header::ETAG,
                        header::LAST_MODIFIED,
                        header::AGE,
                        HeaderName::from_static("x-cache"),
                    ] {
                        if let Some(v) = headers.get(&n) {
                            r.headers_mut().insert(n, v.clone());
                        }
                    }
                    return r;
                }
                Precondition::Proceed { range } => use_range = range,
            }
        }
        let range = if obj.meta.status == StatusCode::OK && use_range {
            parse_range(req.get(header::RANGE), obj.len)
        } else {
            Ok(None)
        };
        let (status, start, len) = match range {
            Err(()) => {
                let mut r = simple(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", obj.len)) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r.headers_mut()
                    .insert("x-cache", HeaderValue::from_static(outcome.as_str()));
                return r;
            }
            Ok(None) => (obj.meta.status, 0, obj.len),
            Ok(Some((s, l))) => {
                if let Ok(v) =
                    HeaderValue::from_str(&format!("bytes {}-{}/{}", s, s + l - 1, obj.len))
                {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::PARTIAL_CONTENT, s, l)
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = if method == Method::HEAD {
            empty()
        } else {
            match &obj.body {
                BodyLoc::Memory(b) => full(b.slice(start as usize..(start + len) as usize)),
                BodyLoc::Disk(p) => match file_body(p, start, len).await {
                    Ok(b) => b,
                    Err(_) => return simple(StatusCode::BAD_GATEWAY, "cached object unreadable"),
                },
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }

    fn error_response(e: FetchError) -> Response<RespBody> {
        match e {
            FetchError::Timeout => simple(StatusCode::GATEWAY_TIMEOUT, "origin timed out"),
            FetchError::Unreachable => simple(StatusCode::BAD_GATEWAY, "origin unreachable"),
            FetchError::Refused(range) => {
                let mut r = simple(
                    StatusCode::BAD_GATEWAY,
                    &format!("origin refused: its address is {range} (not a permitted target)"),
                );
                r.headers_mut().insert(
                    guard::REFUSED_HEADER,
                    HeaderValue::from_static(range.as_str()),
                );
                r
            }
            FetchError::FtpReply(code) => simple(
                StatusCode::BAD_GATEWAY,
                &format!("FTP origin refused the request (reply {code})"),
            ),
            FetchError::Status(s) => simple(
                if s == StatusCode::GATEWAY_TIMEOUT {
                    s
                } else {
                    StatusCode::BAD_GATEWAY
                },
                &format!("origin answered {}", s.as_u16()),
            ),
        }
    }

    /// Sends one request to the route's origin within the origin timeout. An origin URL
    /// whose host is an address the policy refuses is not connected to; a name is
    /// resolved and filtered by the clients' resolver ([`guard::GuardedResolver`]).
    async fn send(
        &self,
        route: &Route,
        oreq: Request<ReqBody>,
    ) -> Result<Response<Incoming>, FetchError> {
        if let Some(ip) = udn_core::netpolicy::url_ip(&route.fetch_url)
            && let Err(range) = self.policy.get().check(ip)
        {
            tracing::warn!(url = %route.fetch_url, %ip, range = range.as_str(),
                "origin fetch refused: the address is not a permitted target");
            return Err(FetchError::Refused(range));
        }
        match tokio::time::timeout(self.origin_timeout, self.client_for(route).request(oreq)).await
        {
            Err(_) => Err(FetchError::Timeout),
            Ok(Err(e)) => {
                if let Some(r) = guard::refusal_in(&e) {
                    tracing::warn!(url = %route.fetch_url, reason = %r,
                        "origin fetch refused: the name resolves only to addresses that are not permitted targets");
                    return Err(FetchError::Refused(r.range));
                }
                tracing::debug!(error = %e, url = %route.fetch_url, "origin fetch failed");
                Err(FetchError::Unreachable)
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// One exchange with the route's origin: HTTP(S) through [`send`](Self::send), or
    /// an FTP session for an `ftp://` origin ([`ftp_origin`]), answered alike.
    async fn origin_fetch(
        &self,
        route: &Route,
        oreq: Request<ReqBody>,
    ) -> Result<Response<RespBody>, FetchError> {
        if route.fetch_url.starts_with("ftp://") {
            let timeouts = ftp_origin::FtpTimeouts {
                connect: self.origin_timeout,
                login: self.origin_timeout,
                transfer: self.body_timeout,
            };
            let policy = self.policy.get();
            return ftp_origin::fetch(
                &route.fetch_url,
                oreq.method(),
                oreq.headers(),
                &policy,
                timeouts,
            )
            .await;
        }
        let resp = self.send(route, oreq).await?;
        Ok(resp.map(|b| b.map_err(std::io::Error::other).boxed_unsync()))
    }

    /// A Range far beyond what the running fill `g` has stored (more than
    /// [`SEEK_AHEAD`] bytes past it: a player seeking in a cold large file) is
    /// answered by a ranged fetch of its own from the origin (HTTP `Range` with
    /// `If-Range`, FTP `REST`) instead of waiting for the fill to get there; the fill
    /// goes on. `None`: serve it from the fill (not far ahead, no strong validator to
    /// tie the range to the fill's version, or the origin did not answer with exactly
    /// that range).
    async fn seek_ahead(
        &self,
        route: &Route,
        g: &fill::Growing,
        method: &Method,
        req: &HeaderMap,
    ) -> Option<Response<RespBody>> {
        if method != Method::GET || g.status != StatusCode::OK {
            return None;
        }
        let total = g.total?;
        let Ok(Some((start, len))) = parse_range(req.get(header::RANGE), total) else {
            return None;
        };
        if start <= g.written().saturating_add(SEEK_AHEAD) {
            return None;
        }
        let validator = g
            .headers
            .get(header::ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/"))
            .or_else(|| g.headers.get(header::LAST_MODIFIED))?
            .clone();
        let end = start + len - 1;
        let mut extra = HeaderMap::new();
        extra.insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes={start}-{end}")).ok()?,
        );
        extra.insert(header::IF_RANGE, validator);
        let oreq = upstream::origin_request(route, Method::GET, req, extra, false, &self.cdn_id);
        self.metrics.origin_fetches.inc();
        self.metrics.seek_fetches.inc();
        let resp = self.origin_fetch(route, oreq).await.ok()?;
        let want = format!("bytes {start}-{end}/{total}");
        let got = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        if resp.status() != StatusCode::PARTIAL_CONTENT || got != Some(want.as_str()) {
            tracing::debug!(url = %route.fetch_url, status = resp.status().as_u16(), ?got,
                "ranged origin fetch not usable: served from the fill");
            return None;
        }
        tracing::debug!(url = %route.fetch_url, start, len, stored = g.written(),
            "Range far beyond the fill: fetched on its own");
        let mut r = self.passthrough(resp);
        r.headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        Some(r)
    }

    /// Passes a request through to the origin without caching.
    async fn pass(&self, route: &Route, req: Request<ReqBody>) -> Response<RespBody> {
        let (parts, body) = req.into_parts();
        // Conditionals and ranges are the client's own here: all are forwarded.
        let mut oreq = upstream::origin_request(
            route,
            parts.method.clone(),
            &parts.headers,
            HeaderMap::new(),
            true,
            &self.cdn_id,
        );
        *oreq.body_mut() = body;
        self.metrics.origin_fetches.inc();
        match self.origin_fetch(route, oreq).await {
            Err(e) => Self::error_response(e),
            Ok(resp) => self.passthrough(resp),
        }
    }

    fn passthrough(&self, resp: Response<RespBody>) -> Response<RespBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        upstream::strip_targeted(&mut parts.headers);
        parts.version = http::Version::default();
        parts.extensions.insert(FromOrigin);
        Response::from_parts(parts, body)
    }

    /// The Prometheus text of the edge's metrics (OpenMetrics format).
    pub fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        self.memory.run_pending_tasks();
        self.metrics
            .memory_bytes
            .set(self.memory.weighted_size() as i64);
        if let Some(d) = &self.disk {
            self.metrics.disk_bytes.set(d.used() as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The purges applied after sequence number `since` (the journal a restarted or
    /// lagging peer catches up from); `None` when those were forgotten already.
    pub fn purges_since(&self, since: u64) -> Option<Vec<PurgeRecord>> {
        let tree = self.tree.read().unwrap_or_else(|e| e.into_inner());
        tree.since(since).map(|list| {
            list.iter()
                .map(|p| PurgeRecord {
                    scope: p.scope.as_str().into(),
                    target: p.target.clone(),
                    seq: p.seq,
                })
                .collect()
        })
    }

    /// Parses and applies one purge (`scope` `url`, `prefix` or `domain`): a URL that
    /// names a CDN hostname is mapped to its cache keys first.
    pub fn purge_request(&self, req: &PurgeRecord) -> Result<PurgeOutcome, crate::PurgeError> {
        let targets = self.purge_targets(Purge::parse(&req.scope, &req.target, req.seq)?);
        let first = self.purge(&targets[0]);
        if first != Applied::Duplicate {
            for q in &targets[1..] {
                self.purge(q);
            }
        }
        let p = &targets[0];
        let (applied, generation) = match first {
            Applied::New(g) => (true, g),
            Applied::Duplicate => (
                false,
                self.tree
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .generation(),
            ),
        };
        Ok(PurgeOutcome {
            applied,
            seq: p.seq,
            scope: p.scope.as_str().into(),
            target: p.target.clone(),
            targets: targets.iter().map(|q| q.target.clone()).collect(),
            generation,
        })
    }

    /// Fetches each URL (at most 10,000) into the cache unless it is fresh there.
    pub async fn prefill(self: &Arc<Self>, urls: Vec<String>) -> Vec<PrefillResult> {
        let mut results = Vec::new();
        let mut tasks = Vec::new();
        for url in urls.into_iter().take(10_000) {
            let edge = self.clone();
            tasks.push(tokio::spawn(async move {
                let r = edge.prefill_one(&url).await;
                (url, r)
            }));
        }
        for t in tasks {
            if let Ok((url, r)) = t.await {
                results.push(match r {
                    Ok(o) => PrefillResult {
                        url,
                        outcome: Some(o.into()),
                        error: None,
                    },
                    Err(e) => PrefillResult {
                        url,
                        outcome: None,
                        error: Some(e),
                    },
                });
            }
        }
        results
    }

    async fn prefill_one(self: &Arc<Self>, url: &str) -> Result<&'static str, String> {
        let u = crate::target::parse_url(url).map_err(|e| e.to_string())?;
        let rest = &u.key["http://".len()..];
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let route = self
            .hooks
            .cache_key(&self.router(), host, path)
            .map_err(|e| e.to_string())?;
        let req = HeaderMap::new();
        let full = self.full_key(&route, &req);
        if let Some(o) = self.lookup(&full, &route.key).await
            && policy::evaluate(&o.meta, &req, self.now(), route.origin.check_interval)
                == Action::Fresh
        {
            return Ok("cached");
        }
        match self.fill(&route, &req, None, Want::RESULT).await {
            Err(FillResult::Stored(_)) | Err(FillResult::Revalidated(_)) => Ok("stored"),
            Err(FillResult::NotStored) => Ok("not-storable"),
            Err(FillResult::Failed(e)) => Err(format!("origin: {e:?}")),
            Ok(_) => Ok("stored"),
        }
    }

    /// Serves one request.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<RespBody> {
        self.serve(req.map(|b| b.boxed_unsync()), client, None)
            .await
    }

    /// Serves one request whose body is boxed already (HTTP, or a request made for an
    /// FTP command); `log_method` names what the access log records as the method (the
    /// FTP command), the request's method without it.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
        client: SocketAddr,
        log_method: Option<&'static str>,
    ) -> Response<RespBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let mut info = LogInfo {
            customer: None,
            host: host.clone(),
            path: path.clone(),
            method: log_method.map_or_else(|| method.to_string(), str::to_string),
            outcome: "admin",
            fill_from_sent: false,
            client: client.ip(),
            pop: self.pop.clone(),
            started,
        };
        let refused = upstream::refusal(req.method(), req.headers(), &self.cdn_id);
        let resp = if req.uri().path() == "/health" && req.method() == Method::GET {
            simple(StatusCode::OK, "ok")
        } else if let Some((status, why)) = refused {
            tracing::info!(%client, %method, %host, %path, status = status.as_u16(), why, "request refused");
            info.outcome = "refused";
            let mut r = simple(status, why);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        } else {
            let version = req.version();
            upstream::prepare(
                req.headers_mut(),
                client.ip(),
                version,
                &self.cdn_id,
                &self.pop,
            );
            match self.hooks.cache_key(&self.router(), &host, &path) {
                Err(e) => {
                    info.outcome = "refused";
                    let status = match e {
                        crate::RouteError::UnknownHost(_) => StatusCode::FORBIDDEN,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    simple(status, &e.to_string())
                }
                Ok(route) => {
                    info.customer = route.origin.customer.clone();
                    let (r, outcome) = self.cached(route, req).await;
                    info.outcome = outcome.label();
                    let mut r = r;
                    r.headers_mut()
                        .insert("x-cache", HeaderValue::from_static(outcome.as_str()));
                    if !r.headers().contains_key(header::AGE) {
                        r.headers_mut()
                            .insert(header::AGE, HeaderValue::from_static("0"));
                    }
                    self.metrics.by_outcome(outcome).inc();
                    r
                }
            }
        };
        let (mut parts, body) = resp.into_parts();
        if !parts.headers.contains_key("x-cache") {
            // Refused and admin responses: nothing came from the cache.
            parts
                .headers
                .insert("x-cache", HeaderValue::from_static("BYPASS"));
        }
        if !parts.headers.contains_key(header::AGE) {
            parts
                .headers
                .insert(header::AGE, HeaderValue::from_static("0"));
        }
        let status = parts.status.as_u16();
        info.fill_from_sent = parts.extensions.get::<FromOrigin>().is_some();
        let body = LoggedBody::new(
            body,
            info,
            status,
            self.log.clone(),
            self.clock.clone(),
            self.metrics.bytes_sent.clone(),
        );
        Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
    }

    async fn cached(
        self: &Arc<Self>,
        route: Route,
        req: Request<ReqBody>,
    ) -> (Response<RespBody>, CacheOutcome) {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            let r = self.pass(&route, req).await;
            self.invalidate_after_unsafe(&route, &method, &r);
            return (r, CacheOutcome::Bypass(BypassReason::Method));
        }
        let headers = req.headers().clone();
        let full_key = self.full_key(&route, &headers);
        let now = self.now();
        let only_if_cached = policy::CacheControl::parse(&headers).only_if_cached;
        let stale = match self.lookup(&full_key, &route.key).await {
            Some(obj) => {
                match policy::evaluate(&obj.meta, &headers, now, route.origin.check_interval) {
                    Action::Fresh => {
                        return (
                            self.serve_object(&obj, &method, &headers, CacheOutcome::Hit, now)
                                .await,
                            CacheOutcome::Hit,
                        );
                    }
                    Action::StaleAllowed => {
                        return (
                            self.serve_object(&obj, &method, &headers, CacheOutcome::Stale, now)
                                .await,
                            CacheOutcome::Stale,
                        );
                    }
                    Action::StaleWhileRevalidate => {
                        let edge = self.clone();
                        let (r, h, o) = (route.clone(), headers.clone(), obj.clone());
                        tokio::spawn(async move {
                            let _ = edge.fill(&r, &h, Some(o), Want::RESULT).await;
                        });
                        return (
                            self.serve_object(&obj, &method, &headers, CacheOutcome::Stale, now)
                                .await,
                            CacheOutcome::Stale,
                        );
                    }
                    Action::Revalidate => Some(obj),
                }
            }
            None => None,
        };
        if only_if_cached {
            return (
                simple(StatusCode::GATEWAY_TIMEOUT, "only-if-cached: not in cache"),
                CacheOutcome::Miss,
            );
        }
        if method == Method::HEAD && stale.is_none() {
            return (
                self.pass(&route, req).await,
                CacheOutcome::Bypass(BypassReason::Method),
            );
        }
        // A GET without a conditional reads the body as it arrives (a Range when the
        // length is known); only one without Range takes an unstorable response.
        let conditional = crate::conditional::is_conditional(&headers);
        let want = Want {
            pass: method == Method::GET && !headers.contains_key(header::RANGE),
            stream: method == Method::GET && !conditional,
        };
        let had_stale = stale.clone();
        let res = self.fill(&route, &headers, stale, want).await;
        let now = self.now();
        match res {
            Ok(Lead::Growing(g, started)) => {
                if let Some(r) = self.seek_ahead(&route, &g, &method, &headers).await {
                    return (r, CacheOutcome::Miss);
                }
                // The fill logs its own origin bytes (`fill::FillLog`): the client's
                // record carries none, however much of it the client reads.
                (
                    self.serve_growing(&g, &method, &headers, started),
                    CacheOutcome::Miss,
                )
            }
            Ok(Lead::Pass(resp, reason)) => (self.passthrough(resp), CacheOutcome::Bypass(reason)),
            Err(FillResult::Stored(_))
            | Err(FillResult::Revalidated(_))
            | Err(FillResult::NotStored) => {
                let revalidated = matches!(res, Err(FillResult::Revalidated(_)));
                let full_key = self.full_key(&route, &headers);
                let filled = match res {
                    Err(FillResult::Stored(o)) | Err(FillResult::Revalidated(o))
                        if o.key == full_key =>
                    {
                        Some(o)
                    }
                    // Another variant: only if it needs no revalidation of its own.
                    _ => self.lookup(&full_key, &route.key).await.filter(|o| {
                        policy::evaluate(&o.meta, &headers, now, route.origin.check_interval)
                            != Action::Revalidate
                    }),
                };
                match filled {
                    Some(obj) => {
                        let outcome = if revalidated {
                            CacheOutcome::Revalidated
                        } else {
                            CacheOutcome::Miss
                        };
                        (
                            self.serve_object(&obj, &method, &headers, outcome, now)
                                .await,
                            outcome,
                        )
                    }
                    // Another variant, or not storable: fetch on our own.
                    None => (
                        self.pass(&route, req).await,
                        CacheOutcome::Bypass(BypassReason::Hook),
                    ),
                }
            }
            Err(FillResult::Failed(e)) => match had_stale {
                // Still fresh by HTTP (only the customer's check interval was due), or
                // allowed stale by stale-if-error.
                Some(obj)
                    if obj.meta.is_fresh(now)
                        || self.hooks.serve_stale(&obj.meta, &headers, now) =>
                {
                    (
                        self.serve_object(&obj, &method, &headers, CacheOutcome::Stale, now)
                            .await,
                        CacheOutcome::Stale,
                    )
                }
                _ => (Self::error_response(e), CacheOutcome::Miss),
            },
        }
    }
}

/// A purge as sent to and listed by an edge: `{"scope", "target", "seq"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    /// `url`, `prefix` or `domain`.
    pub scope: String,
    /// The URL (or URL prefix, or `http://domain/`).
    pub target: String,
    /// The control plane's sequence number (0: unsequenced, always applied).
    #[serde(default)]
    pub seq: u64,
}

/// What [`Edge::purge_request`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeOutcome {
    /// Newly applied (false: a purge with this sequence number was applied before).
    pub applied: bool,
    /// Its sequence number.
    pub seq: u64,
    /// Its scope.
    pub scope: String,
    /// The first cache key it names.
    pub target: String,
    /// Every cache key it names (a CDN hostname's domain purge covers its origins).
    pub targets: Vec<String>,
    /// The invalidation tree's generation after it.
    pub generation: u64,
}

/// One URL of a prefill: `outcome` (`cached`, `stored`, `not-storable`) or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrefillResult {
    /// The URL.
    pub url: String,
    /// What happened, when it worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Why not, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A running edge: its bound addresses and a way to stop it.
pub struct EdgeHandle {
    /// The plain-HTTP address.
    pub http_addr: SocketAddr,
    /// The HTTPS address, if TLS is on.
    pub https_addr: Option<SocketAddr>,
    /// The edge (for purges and reloads from the embedding program).
    pub edge: Arc<Edge>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EdgeHandle {
    /// Applies a purge ([`Edge::purge_request`]).
    pub fn purge(&self, req: &PurgeRecord) -> Result<PurgeOutcome, crate::PurgeError> {
        self.edge.purge_request(req)
    }

    /// Prefills URLs ([`Edge::prefill`]).
    pub async fn prefill(&self, urls: Vec<String>) -> Vec<PrefillResult> {
        self.edge.prefill(urls).await
    }

    /// Prefills a live event's playlist and segments ([`Edge::prefill_live`]).
    pub async fn prefill_live(
        &self,
        url: &str,
        max_segments: usize,
    ) -> Result<LivePrefill, String> {
        self.edge.prefill_live(url, max_segments).await
    }

    /// The purges after `since` ([`Edge::purges_since`]).
    pub fn purges_since(&self, since: u64) -> Option<Vec<PurgeRecord>> {
        self.edge.purges_since(since)
    }

    /// The metrics as Prometheus text ([`Edge::metrics_text`]).
    pub fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        self.edge.metrics_text()
    }

    /// Stops accepting connections, closes the open ones and waits for the accept
    /// loops to end.
    pub async fn shutdown(self) {
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Binds `http` (and `https` with its TLS config) and serves `edge` on them through
/// [`listener::serve`] with the edge's limits until the handle is shut down.
pub async fn start(
    edge: Arc<Edge>,
    http: SocketAddr,
    https: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
) -> Result<EdgeHandle, crate::Error> {
    let l = tokio::net::TcpListener::bind(http).await?;
    let http_addr = l.local_addr()?;
    let prefetch = edge
        .prefetch_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map(|rx| tokio::spawn(prefetch_worker(edge.clone(), rx)));
    let mut tasks = vec![listener::serve(
        l,
        None,
        edge.limits,
        EdgeAccept(edge.clone()),
    )];
    let mut https_addr = None;
    if let Some((addr, cfg)) = https {
        let l = tokio::net::TcpListener::bind(addr).await?;
        https_addr = Some(l.local_addr()?);
        tasks.push(listener::serve(
            l,
            Some(cfg),
            edge.limits,
            EdgeAccept(edge.clone()),
        ));
    }
    tasks.extend(prefetch);
    Ok(EdgeHandle {
        http_addr,
        https_addr,
        edge,
        tasks,
    })
}

/// Runs the prefetches [`Edge::prefetch_next_segments`] queues, a few at a time: each is
/// an ordinary fill (coalesced with viewers asking for the same segment), skipped when
/// the segment is fresh in the cache already.
async fn prefetch_worker(edge: Arc<Edge>, mut rx: tokio::sync::mpsc::Receiver<Route>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PREFETCH_CONCURRENCY));
    while let Some(route) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let req = HeaderMap::new();
            let full = edge.full_key(&route, &req);
            if let Some(o) = edge.lookup(&full, &route.key).await
                && policy::evaluate(&o.meta, &req, edge.now(), route.origin.check_interval)
                    == Action::Fresh
            {
                return;
            }
            edge.metrics.prefetches.inc();
            let _ = edge.fill(&route, &req, None, Want::RESULT).await;
        });
    }
}

/// The customer listeners' connections: each request goes to [`Edge::handle`].
struct EdgeAccept(Arc<Edge>);

impl listener::Accept for EdgeAccept {
    type Service = EdgeService;
    type Body = RespBody;
    fn accept(&self, conn: &listener::Conn) -> Option<EdgeService> {
        Some(EdgeService {
            edge: self.0.clone(),
            peer: conn.addr,
        })
    }
}

struct EdgeService {
    edge: Arc<Edge>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<RespBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;
    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (edge, peer) = (self.edge.clone(), self.peer);
        Box::pin(async move { Ok(edge.handle(req, peer).await) })
    }
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("pop", &self.pop)
            .finish_non_exhaustive()
    }
}
