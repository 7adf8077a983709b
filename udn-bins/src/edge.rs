//! `udn edge`: the edge cache of a POP (or, with `--origin`, a single-origin caching
//! reverse proxy with no config file, like `varnishd -b`).

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use udn_cache::Router;
use udn_cache::server::{self, Edge, EdgeHandle, TlsCert};
use udn_core::log::{LogSink, NullSink, Role, RotationPolicy};

/// Command-line arguments of `udn edge` (boxed: they are many).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The options.
    #[command(flatten)]
    pub opts: Box<Options>,
}

/// The options of `udn edge`, also what [`start`] takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Network configuration file (TOML); serves its CDN hostnames (with `--pop`).
    #[arg(long, conflicts_with = "origin")]
    pub config: Option<PathBuf>,
    /// The POP this edge belongs to (serves the CDN hostnames of that POP).
    #[arg(long, default_value = "local")]
    pub pop: String,
    /// Single-origin mode: cache and serve everything from this base URL.
    #[arg(long)]
    pub origin: Option<String>,
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// HTTPS listen address (needs at least one --tls-cert).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// A certificate: `host1,host2=cert.pem:key.pem` (repeatable; chosen by SNI, the
    /// first is the default).
    #[arg(long = "tls-cert")]
    pub tls_certs: Vec<String>,
    /// Memory tier size in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: u64,
    /// Largest object kept in memory, in KiB (default: 1/8 of the memory tier).
    #[arg(long)]
    pub memory_object_kb: Option<u64>,
    /// Disk tier directory (kept across restarts); no disk tier without it.
    #[arg(long)]
    pub disk_dir: Option<PathBuf>,
    /// Disk tier size in MiB.
    #[arg(long, default_value_t = 4096)]
    pub disk_mb: u64,
    /// The admin listener (HTTPS, mutual TLS: only control-plane instance certificates
    /// are admitted): `POST /v1/purge`, `POST /v1/prefill`, `POST /v1/prefill-live`,
    /// `GET /v1/purges`,
    /// `GET /metrics`. Needs `--pki`; without it there is no admin listener.
    #[arg(long, requires = "pki")]
    pub admin_listen: Option<SocketAddr>,
    /// This edge's instance credentials (`cert.pem`, `key.pem`, `ca.pem` from
    /// `udn control enroll edge NAME --out DIR --san IP`).
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Access-log directory (rotated JSON Lines); no access log without it.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// With `--log-dir`: write the edge's operational statistics (its `/metrics`:
    /// requests by outcome, origin fetches, tier sizes) into the log every this many
    /// seconds, for the operators' views (`0`: never).
    #[arg(long, default_value_t = crate::logging::OPS_INTERVAL_SECS)]
    pub ops_interval_secs: u64,
    /// Single-origin mode: revalidate content not validated with the origin within
    /// this many seconds before serving it (network mode uses each CDN hostname's
    /// `check_interval_secs`).
    #[arg(long)]
    pub check_interval_secs: Option<u64>,
    /// Extra CA certificates (PEM) trusted for HTTPS origins, besides the system's.
    #[arg(long)]
    pub origin_ca: Option<PathBuf>,
    /// Origin response-header timeout in milliseconds (then 504, or stale-if-error).
    #[arg(long, default_value_t = 10_000)]
    pub origin_timeout_ms: u64,
    /// A fill is cut off (not stored, its clients' bodies aborted) when the origin
    /// sends no body bytes for this many milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub origin_body_timeout_ms: u64,
    /// A client of a fill waits at most this many milliseconds for its response to
    /// start or for its next body bytes (then 504, or an aborted body).
    #[arg(long, default_value_t = 30_000)]
    pub waiter_timeout_ms: u64,
    /// Customer listeners: time a client has to send a request's header, and the
    /// longest an idle keep-alive connection is kept, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Customer HTTPS listener: time a client has to complete the TLS handshake, in
    /// milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub tls_handshake_timeout_ms: u64,
    /// Customer listeners: largest request header in all, in KiB (then 431).
    #[arg(long, default_value_t = 32)]
    pub max_header_kb: usize,
    /// Customer listeners: longest request line (then 414) or header line (then 431),
    /// in KiB.
    #[arg(long, default_value_t = 8)]
    pub max_header_line_kb: usize,
    /// Customer listeners: concurrent connections at most (each listener).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Customer listeners: concurrent connections from one client address at most.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_client: usize,
    /// Follow the control plane's configuration (`https://ip:port` of its machine
    /// listener, `udn control --listen`, reached over mutual TLS with `--pki`): each new
    /// version's routes are built and swapped in without a restart, then it is written
    /// to `--config`; the revoked certificates it carries are refused by the admin
    /// listener.
    #[arg(long, requires_all = ["config", "pki"])]
    pub control: Option<String>,
    /// FTP listen address: serves the same cache over FTP (anonymous, read-only; the
    /// site from `HOST` or the user name `anonymous@HOSTNAME`); FTPS with `AUTH TLS`
    /// when `--tls-cert` is given. No FTP without it.
    #[arg(long)]
    pub ftp_listen: Option<SocketAddr>,
    /// FTP passive data ports, `FIRST-LAST`.
    #[arg(long, default_value = "50000-50100", value_parser = parse_port_range)]
    pub ftp_passive_ports: (u16, u16),
    /// The IPv4 address FTP's `PASV` names (default: the address the client connected
    /// to; set it behind NAT).
    #[arg(long)]
    pub ftp_passive_host: Option<std::net::Ipv4Addr>,
    /// FTP control connections at most.
    #[arg(long, default_value_t = 256)]
    pub ftp_max_sessions: usize,
    /// FTP control connections from one client address at most.
    #[arg(long, default_value_t = 8)]
    pub ftp_max_per_client: usize,
    /// An FTP connection not logged in within this many seconds is closed.
    #[arg(long, default_value_t = 20)]
    pub ftp_login_timeout_secs: u64,
    /// A logged-in FTP session idle for this many seconds is closed.
    #[arg(long, default_value_t = 120)]
    pub ftp_idle_timeout_secs: u64,
    /// An FTP download whose bytes stop arriving for this many seconds is aborted.
    #[arg(long, default_value_t = 30)]
    pub ftp_data_timeout_secs: u64,
    /// Entries in one FTP `LIST` / `MLSD` at most.
    #[arg(long, default_value_t = 1000)]
    pub ftp_list_max: usize,
    /// Certificates the admin listener refuses although they verify: kept current by
    /// `--control` (the demo shares its control plane's list).
    #[arg(skip)]
    pub revoked: crate::pki::Revocations,
}

/// `FIRST-LAST` as a port range.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: want FIRST-LAST, e.g. 50000-50100"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: want 1 <= FIRST <= LAST"));
    }
    Ok((a, b))
}

/// A running edge started by [`start`].
pub struct Handle {
    /// The edge server (addresses, the `Edge` itself).
    pub server: EdgeHandle,
    /// The admin listener's address, if there is one.
    pub admin_addr: Option<SocketAddr>,
    /// Certificates the admin listener refuses although they verify (kept current by
    /// `--control`).
    pub revoked: crate::pki::Revocations,
    admin: Option<tokio::task::JoinHandle<()>>,
    ftp: Option<server::FtpHandle>,
    log: Option<Arc<WriterSink>>,
    ops: Option<tokio::task::JoinHandle<()>>,
}

/// Access-log records handed to a writer thread, so a request never waits for a file
/// write, rotation or `fsync` (the rotating [`FileLog`](crate::logging::FileLog) does
/// all three). Records are never dropped: when the queue is full, requests wait.
struct WriterSink {
    tx: std::sync::mpsc::SyncSender<LogMsg>,
}

enum LogMsg {
    Record(udn_core::log::LogRecord),
    /// Complete the open file, then acknowledge.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl LogSink for WriterSink {
    fn record(&self, rec: udn_core::log::LogRecord) {
        match self.tx.try_send(LogMsg::Record(rec)) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(m)) => {
                let _ = self.tx.send(m);
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}

impl WriterSink {
    fn spawn(log: crate::logging::FileLog) -> anyhow::Result<WriterSink> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<LogMsg>(65_536);
        std::thread::Builder::new()
            .name("udn-edge-log".into())
            .spawn(move || {
                // Drain in batches every 20 ms instead of waking per record: a request
                // only pays for a queue push.
                let batch_every = Duration::from_millis(20);
                let tick_every = Duration::from_secs(1);
                let mut last_tick = std::time::Instant::now();
                loop {
                    std::thread::sleep(batch_every);
                    loop {
                        match rx.try_recv() {
                            Ok(LogMsg::Record(r)) => {
                                if let Err(e) = log.write_at(&r, crate::logging::now()) {
                                    tracing::error!(error = %e, "access log write failed");
                                }
                            }
                            Ok(LogMsg::Flush(ack)) => {
                                let _ = log.flush_complete();
                                let _ = ack.send(());
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                let _ = log.flush_complete();
                                return;
                            }
                        }
                    }
                    if last_tick.elapsed() >= tick_every {
                        last_tick = std::time::Instant::now();
                        let _ = log.tick(crate::logging::now());
                    }
                }
            })
            .context("starting the access-log writer")?;
        Ok(WriterSink { tx })
    }

    /// Writes everything queued and completes the open file.
    fn flush(&self) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(LogMsg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Handle {
    /// The plain-HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr
    }

    /// The FTP listener's address, if there is one (`--ftp-listen`).
    pub fn ftp_addr(&self) -> Option<SocketAddr> {
        self.ftp.as_ref().map(|f| f.addr)
    }

    /// Stops the edge and completes the open access-log file.
    pub async fn shutdown(self) {
        if let Some(a) = &self.admin {
            a.abort();
        }
        if let Some(o) = &self.ops {
            o.abort();
        }
        if let Some(f) = self.ftp {
            f.shutdown().await;
        }
        self.server.shutdown().await;
        if let Some(l) = self.log {
            let _ = tokio::task::spawn_blocking(move || l.flush()).await;
        }
    }
}

fn parse_cert(s: &str) -> anyhow::Result<TlsCert> {
    let (hosts, files) = s
        .split_once('=')
        .context("--tls-cert wants host1,host2=cert.pem:key.pem")?;
    let (cert, key) = files
        .split_once(':')
        .context("--tls-cert wants host1,host2=cert.pem:key.pem")?;
    Ok(TlsCert {
        hostnames: hosts.split(',').map(str::to_string).collect(),
        cert: cert.into(),
        key: key.into(),
    })
}

impl Default for Options {
    /// The command line's defaults: no origin, no config, `127.0.0.1:8080`, 256 MiB of
    /// memory, no disk tier, no admin listener, no access log.
    fn default() -> Self {
        Options {
            config: None,
            pop: "local".into(),
            origin: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_listen: None,
            tls_certs: Vec::new(),
            memory_mb: 256,
            memory_object_kb: None,
            disk_dir: None,
            disk_mb: 4096,
            admin_listen: None,
            pki: None,
            log_dir: None,
            ops_interval_secs: crate::logging::OPS_INTERVAL_SECS,
            check_interval_secs: None,
            origin_ca: None,
            origin_timeout_ms: 10_000,
            origin_body_timeout_ms: 30_000,
            waiter_timeout_ms: 30_000,
            header_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 10_000,
            max_header_kb: 32,
            max_header_line_kb: 8,
            max_connections: 1024,
            max_connections_per_client: 64,
            control: None,
            ftp_listen: None,
            ftp_passive_ports: (50000, 50100),
            ftp_passive_host: None,
            ftp_max_sessions: 256,
            ftp_max_per_client: 8,
            ftp_login_timeout_secs: 20,
            ftp_idle_timeout_secs: 120,
            ftp_data_timeout_secs: 30,
            ftp_list_max: 1000,
            revoked: crate::pki::Revocations::default(),
        }
    }
}

impl Options {
    /// The customer listeners' limits these options ask for.
    pub fn limits(&self) -> server::listener::Limits {
        server::listener::Limits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            handshake_timeout: Duration::from_millis(self.tls_handshake_timeout_ms),
            max_header_bytes: self.max_header_kb << 10,
            max_line_bytes: self.max_header_line_kb << 10,
            max_connections: self.max_connections,
            max_per_client: self.max_connections_per_client,
        }
    }
}

impl Options {
    /// The FTP listener these options ask for, on `listen`, with FTPS by `tls`.
    pub fn ftp_options(
        &self,
        listen: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<server::FtpOptions> {
        let (lo, hi) = self.ftp_passive_ports;
        anyhow::ensure!(
            lo >= 1 && lo <= hi,
            "--ftp-passive-ports wants 1 <= FIRST <= LAST"
        );
        anyhow::ensure!(
            self.ftp_max_sessions >= 1 && self.ftp_max_per_client >= 1,
            "--ftp-max-sessions and --ftp-max-per-client must be at least 1"
        );
        Ok(server::FtpOptions {
            listen,
            passive_ports: lo..=hi,
            passive_host: self.ftp_passive_host,
            max_sessions: self.ftp_max_sessions,
            max_per_client: self.ftp_max_per_client,
            login_timeout: Duration::from_secs(self.ftp_login_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.ftp_idle_timeout_secs.max(1)),
            data_timeout: Duration::from_secs(self.ftp_data_timeout_secs.max(1)),
            list_max: self.ftp_list_max.clamp(1, 100_000),
            tls,
        })
    }
}

/// The routes `opts` asks for: `--origin` (single origin) or `--config` + `--pop`.
pub fn router(opts: &Options) -> anyhow::Result<Router> {
    match (&opts.origin, &opts.config) {
        (Some(o), _) => Ok(Router::single(o)
            .with_context(|| format!("--origin {o}"))?
            .with_check_interval(opts.check_interval_secs.map(Duration::from_secs))),
        (None, Some(path)) => {
            let cfg = crate::config_file::load_config(Some(path))?;
            router_for(&cfg, &opts.pop).with_context(|| path.display().to_string())
        }
        (None, None) => anyhow::bail!("udn edge needs --origin URL or --config FILE"),
    }
}

/// The routes of POP `pop` in the network configuration `cfg` (validated first).
pub fn router_for(cfg: &udn_core::Config, pop: &str) -> anyhow::Result<Router> {
    cfg.compile().context("validating the network config")?;
    if !cfg.pops.iter().any(|p| p.name == pop) {
        let known: Vec<&str> = cfg.pops.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "--pop {pop:?} is not a POP of the configuration (known: {})",
            known.join(", ")
        );
    }
    Router::for_pop(cfg, pop).context("building the edge routes")
}

/// Builds and starts an edge from `args`: binds its addresses and returns them with a
/// shutdown handle.
pub async fn start(args: Options) -> anyhow::Result<Handle> {
    let router = router(&args)?;
    start_with_router(router, args).await
}

/// Like [`start`], with routes built by the caller (the demo: one edge per POP of an
/// in-memory config, `Router::for_pop(&cfg, pop)`); `args.origin` and `args.config`
/// are ignored.
pub async fn start_with_router(router: Router, args: Options) -> anyhow::Result<Handle> {
    let (sink, log): (Arc<dyn LogSink>, _) = match &args.log_dir {
        Some(dir) => {
            let l = crate::logging::FileLog::new(
                dir,
                Role::Edge,
                &args.pop,
                RotationPolicy::default(),
            )?;
            let w = Arc::new(WriterSink::spawn(l)?);
            (w.clone() as Arc<dyn LogSink>, Some(w))
        }
        None => (Arc::new(NullSink), None),
    };
    let mut b = Edge::builder(router)
        .pop(&args.pop)
        .memory_bytes(args.memory_mb << 20)
        .origin_timeout(Duration::from_millis(args.origin_timeout_ms))
        .origin_body_timeout(Duration::from_millis(args.origin_body_timeout_ms))
        .waiter_timeout(Duration::from_millis(args.waiter_timeout_ms))
        .listener_limits(args.limits())
        .log_sink(sink)
        .clock(Arc::new(crate::logging::now));
    if let Some(kb) = args.memory_object_kb {
        b = b.memory_object_max(kb << 10);
    }
    if let Some(ca) = &args.origin_ca {
        b = b
            .origin_ca_file(ca)
            .with_context(|| format!("--origin-ca {}", ca.display()))?;
    }
    if let Some(dir) = &args.disk_dir {
        b = b.disk(dir.clone(), args.disk_mb << 20);
    }
    let edge = b.build().context("starting the edge cache")?;
    let certs = args
        .tls_certs
        .iter()
        .map(|s| parse_cert(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = if certs.is_empty() {
        None
    } else {
        Some(server::tls_config(&certs).context("loading TLS certificates")?)
    };
    let https = match (args.tls_listen, &tls) {
        (Some(addr), Some(cfg)) => Some((addr, cfg.clone())),
        (Some(_), None) => anyhow::bail!("--tls-listen needs at least one --tls-cert"),
        (None, _) => None,
    };
    let server = server::start(edge, args.listen, https)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ftp = match args.ftp_listen {
        Some(addr) => Some(
            server::start_ftp(server.edge.clone(), args.ftp_options(addr, tls.clone())?)
                .await
                .with_context(|| format!("binding the FTP listener {addr}"))?,
        ),
        None => None,
    };
    let ops = match (&log, args.ops_interval_secs) {
        (Some(w), secs) if secs > 0 => {
            let edge = server.edge.clone();
            Some(crate::logging::spawn_ops(
                w.clone(),
                Duration::from_secs(secs),
                move || edge.metrics_text().unwrap_or_default(),
            ))
        }
        _ => None,
    };
    let revoked = args.revoked.clone();
    let (admin_addr, admin) = match (args.admin_listen, &args.pki) {
        (Some(addr), Some(dir)) => {
            let creds = crate::pki::Credentials::load(dir)
                .with_context(|| format!("--pki {}", dir.display()))?;
            let tls = crate::listener::Tls {
                config: creds.server_config()?,
                revoked: revoked.clone(),
            };
            let (bound, task) = crate::listener::bind_and_serve(
                addr,
                admin_router(server.edge.clone()),
                Some(tls),
                crate::listener::Limits::default(),
            )
            .await
            .with_context(|| format!("binding the admin listener {addr}"))?;
            (Some(bound), Some(task))
        }
        (Some(_), None) => anyhow::bail!("--admin-listen needs --pki DIR"),
        (None, _) => (None, None),
    };
    Ok(Handle {
        server,
        admin_addr,
        revoked,
        admin,
        ftp,
        log,
        ops,
    })
}

/// A JSON error answer `{"error": ...}`.
fn admin_error(
    status: axum::http::StatusCode,
    msg: impl std::fmt::Display,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.to_string() })),
    )
        .into_response()
}

/// The admin listener's routes: purge, prefill, the purge journal and the metrics of
/// `edge`, for control-plane instances only (`/health` is open).
pub fn admin_router(edge: Arc<server::Edge>) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use axum::routing::{get, post};
    type St = State<Arc<server::Edge>>;

    async fn purge(State(edge): St, body: bytes::Bytes) -> axum::response::Response {
        let req: server::PurgeRecord = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("bad purge body: {e}")),
        };
        match edge.purge_request(&req) {
            Ok(o) => axum::Json(o).into_response(),
            Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
        }
    }
    async fn prefill(State(edge): St, body: bytes::Bytes) -> axum::response::Response {
        #[derive(serde::Deserialize)]
        struct Prefill {
            urls: Vec<String>,
        }
        let req: Prefill = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return admin_error(StatusCode::BAD_REQUEST, format!("bad prefill body: {e}"));
            }
        };
        let results = edge.prefill(req.urls).await;
        axum::Json(serde_json::json!({ "results": results })).into_response()
    }
    /// `POST /v1/prefill-live {"url": PLAYLIST, "max_segments": N}`: a live event's
    /// prefill (the playlist, its variants and their segments; see
    /// [`server::Edge::prefill_live`]). 400 for a bad body, 502 when the playlist cannot
    /// be fetched or is not one (the control plane retries).
    async fn prefill_live(State(edge): St, body: bytes::Bytes) -> axum::response::Response {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct LivePrefill {
            url: String,
            max_segments: usize,
        }
        let req: LivePrefill = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return admin_error(
                    StatusCode::BAD_REQUEST,
                    format!("bad live prefill body: {e}"),
                );
            }
        };
        if req.url.len() > 2048 {
            return admin_error(StatusCode::BAD_REQUEST, "url: at most 2048 bytes");
        }
        if !(1..=udn_cache::live::MAX_SEGMENTS).contains(&req.max_segments) {
            return admin_error(
                StatusCode::BAD_REQUEST,
                format!("max_segments: 1 to {}", udn_cache::live::MAX_SEGMENTS),
            );
        }
        if let Err(e) = udn_cache::target::parse_url(&req.url) {
            return admin_error(StatusCode::BAD_REQUEST, format!("url: {e}"));
        }
        match edge.prefill_live(&req.url, req.max_segments).await {
            Ok(r) => axum::Json(r).into_response(),
            Err(e) => admin_error(StatusCode::BAD_GATEWAY, e),
        }
    }
    #[derive(serde::Deserialize)]
    struct Since {
        #[serde(default)]
        since: u64,
    }
    async fn purges(
        State(edge): St,
        q: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
    ) -> axum::response::Response {
        let Ok(Query(q)) = q else {
            return admin_error(StatusCode::BAD_REQUEST, "since must be a sequence number");
        };
        match edge.purges_since(q.since) {
            Some(list) => axum::Json(list).into_response(),
            None => admin_error(
                StatusCode::GONE,
                "purges since that sequence number were forgotten",
            ),
        }
    }
    async fn metrics(State(edge): St) -> axum::response::Response {
        match edge.metrics_text() {
            Ok(text) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(_) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed"),
        }
    }
    axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/purge", post(purge))
        .route("/v1/prefill", post(prefill))
        .route("/v1/prefill-live", post(prefill_live))
        .route("/v1/purges", get(purges))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(axum::middleware::from_fn(|req, next| {
            crate::pki::require_roles(&[crate::pki::InstanceRole::Control], req, next)
        }))
        .with_state(edge)
}

/// Runs the role until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let args_for_reload = (*args.opts).clone();
        let h = start(*args.opts).await?;
        println!("udn edge: listening on http://{}", h.server.http_addr);
        if let Some(a) = h.server.https_addr {
            println!("udn edge: listening on https://{a}");
        }
        if let Some(a) = h.admin_addr {
            println!("udn edge: admin on https://{a}");
        }
        if let Some(a) = h.ftp_addr() {
            println!("udn edge: FTP on ftp://{a}");
        }
        let follow = match (
            &args_for_reload.control,
            &args_for_reload.config,
            &args_for_reload.pki,
        ) {
            (Some(url), Some(path), Some(pki)) => {
                let pop = args_for_reload.pop.clone();
                let edge = h.server.edge.clone();
                let control = crate::distribution::ControlChannel {
                    url: url.clone(),
                    credentials: crate::pki::Credentials::load(pki)
                        .with_context(|| format!("--pki {}", pki.display()))?,
                    revoked: h.revoked.clone(),
                };
                Some(crate::distribution::follow_control(
                    control,
                    path.clone(),
                    move |u| {
                        let r = router_for(&u.config, &pop).map(|r| edge.set_router(r));
                        std::future::ready(r)
                    },
                )?)
            }
            _ => None,
        };
        wait_for_stop(&args_for_reload, &h).await?;
        if let Some(f) = follow {
            f.abort();
        }
        h.shutdown().await;
        Ok(())
    })
}

/// Waits for Ctrl-C or SIGTERM; on SIGHUP re-reads `--config` and swaps the routes
/// without dropping traffic (a bad config is reported and the old routes stay).
async fn wait_for_stop(opts: &Options, h: &Handle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("waiting for Ctrl-C"),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => match router(opts) {
                Ok(r) => {
                    h.server.edge.set_router(r);
                    tracing::info!("routes reloaded");
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the old routes"),
            },
        }
    }
}
