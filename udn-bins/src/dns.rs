//! `udn dns`: the authoritative GTM DNS server.
//!
//! Two ways to run it:
//! * `udn dns --zone FILE --listen ADDR` serves one BIND zone file with no other
//!   configuration (how an operator tries a new authoritative server);
//! * `udn dns --config network.toml --listen ADDR --http ADDR [--name N]` serves the
//!   full GTM: the configured zones (with their zone files), GTM and CDN hostnames
//!   answered by the decision engine, peer proxying among `dns.peers`.
//!
//! The HTTP API (on `--http`) is the contract with probes and the control plane. It is an
//! admin listener (HTTPS with the server's `--pki` credentials, client certificates
//! checked against the instance CA): `POST /v1/metrics` (a JSON array of
//! `udn_core::Metric`) for roles probe and loadp (a loadp instance only the load of the
//! server named as itself), `GET /v1/refresh?pop=NAME` for role probe; `POST /v1/reload`
//! and `GET /metrics` (Prometheus text) for role control; `GET /health` open. SIGHUP
//! (the local operator) reloads too. A sample dated more than [`MAX_FUTURE_SKEW`] ahead
//! of this server's clock, or older than [`MAX_SAMPLE_AGE`], is refused with the reason;
//! what is accepted is stamped with this server's receive time, and health and load go
//! stale by that time, never by the probe's clock. Each probe identity is one vote in the
//! health quorum. See `docs/dns.md`.

use anyhow::Context as _;
use axum::extract::{Query as UrlQuery, State as AxState};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use udn_core::log::{DnsRecord, LogRecord, LogSink, Role, RotationPolicy};
use udn_core::{Cidr, ClientPrefix, Config, Engine, Family as AddrFamily, Metric, PopId, Reason};
use udn_dns::Authority;
use udn_dns::hickory_proto::op::ResponseCode;
use udn_dns::server::{AnswerPath, Answered, Limits, Observer, Peers, Served, Server};

/// Command-line arguments of `udn dns`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Network configuration file (TOML): zones, GTM and CDN hostnames, peers.
    #[arg(long, conflicts_with = "zone")]
    pub config: Option<PathBuf>,
    /// Serve this BIND zone file alone (no GTM configuration needed).
    #[arg(long)]
    pub zone: Option<PathBuf>,
    /// The zone's origin when the file has no `$ORIGIN` (with `--zone`).
    #[arg(long, requires = "zone")]
    pub origin: Option<String>,
    /// DNS address to serve UDP and TCP on (repeat for IPv4 and IPv6; port 0 = free).
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub listen: Vec<SocketAddr>,
    /// HTTP API address (metrics from probes, refresh list, reload, /health, /metrics);
    /// served over HTTPS with the `--pki` credentials.
    #[arg(long, requires = "pki")]
    pub http: Option<SocketAddr>,
    /// This server's instance credentials (cert.pem, key.pem, ca.pem as written by
    /// `udn control enroll dns NAME --out DIR`): the HTTP API's TLS and the roles it
    /// admits.
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// This server's name among `dns.peers` (turns peer proxying on) and in the logs.
    #[arg(long)]
    pub name: Option<String>,
    /// Write the query log (every GTM/CDN decision) into this directory.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// With `--log-dir`: write the server's operational statistics (its `/metrics`:
    /// queries by answer path, decisions by reason, drops) into the log every this
    /// many seconds, for the operators' views (`0`: never).
    #[arg(long, default_value_t = crate::logging::OPS_INTERVAL_SECS)]
    pub ops_interval_secs: u64,
    /// UDP sockets per address (SO_REUSEPORT); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    pub udp_sockets: usize,
    /// Most open TCP connections.
    #[arg(long, default_value_t = 512)]
    pub tcp_max_connections: usize,
    /// Idle TCP connections are closed after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub tcp_idle_ms: u64,
    /// A TCP query (or answer write) taking longer than this many ms cuts the client off.
    #[arg(long, default_value_t = 3_000)]
    pub tcp_read_ms: u64,
    /// How long a forwarded query waits for the owning peer, ms.
    #[arg(long, default_value_t = 300)]
    pub peer_timeout_ms: u64,
    /// Worker threads of the runtime (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Bytes of the answer caches of all UDP sockets together (static and negative
    /// answers; see docs/dns.md for the cost of an entry).
    #[arg(long, default_value_t = 16 << 20)]
    pub answer_cache_bytes: usize,
    /// Bytes of the answer cache of each TCP connection.
    #[arg(long, default_value_t = 16 << 10)]
    pub tcp_answer_cache_bytes: usize,
    /// Follow the control plane's configuration (`https://ip:port` of its machine
    /// listener, `udn control --listen`, reached over mutual TLS with `--pki`): each new
    /// version is loaded without dropping a query and then written to `--config`; the
    /// revoked certificates it carries are refused by the HTTP API.
    #[arg(long, requires_all = ["config", "pki"])]
    pub control: Option<String>,
    /// Response rate limiting: UDP responses per second per client network, answer
    /// class and name (docs/dns.md); 0 turns it off.
    #[arg(long, default_value_t = 200)]
    pub rrl_rate: u32,
    /// Every Nth rate-limited response goes out truncated (TC=1), the rest are dropped;
    /// 0 drops them all.
    #[arg(long, default_value_t = 2)]
    pub rrl_slip: u32,
    /// IPv4 clients share a rate-limit bucket per this prefix length.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub rrl_ipv4_prefix: u8,
    /// IPv6 clients share a rate-limit bucket per this prefix length.
    #[arg(long, default_value_t = 56, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub rrl_ipv6_prefix: u8,
    /// Buckets in the rate-limit table (8 bytes each; fixed at start).
    #[arg(long, default_value_t = 1 << 18)]
    pub rrl_table_size: usize,
    /// Clients never rate limited (CIDR; repeat).
    #[arg(long)]
    pub rrl_exempt: Vec<udn_core::Cidr>,
    /// DNS Cookies server secret: a file holding 32 hexadecimal digits (shared by the
    /// servers of one name for RFC 9018 interoperability). Without it a random secret
    /// is made at start.
    #[arg(long, conflicts_with = "no_cookies")]
    pub cookie_secret_file: Option<PathBuf>,
    /// Ignore DNS Cookies (no server cookies, no BADCOOKIE).
    #[arg(long)]
    pub no_cookies: bool,
    /// The NSID (RFC 5001) sent to clients that ask for it (text, at most 128 bytes).
    #[arg(long)]
    pub nsid: Option<String>,
}

/// The cookie secret and NSID of `args`.
fn protocol_extras(args: &Args) -> anyhow::Result<udn_dns::cookie::Extras> {
    use udn_dns::cookie::CookieSecret;
    let cookies = if args.no_cookies {
        None
    } else if let Some(path) = &args.cookie_secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cookie secret {}", path.display()))?;
        Some(
            CookieSecret::from_hex(&text)
                .map_err(|e| anyhow::anyhow!("cookie secret {}: {e}", path.display()))?,
        )
    } else {
        Some(CookieSecret::generate().context("generating a cookie secret")?)
    };
    let nsid = match &args.nsid {
        Some(n) if n.is_empty() || n.len() > 128 => {
            anyhow::bail!("--nsid must be 1 to 128 bytes")
        }
        Some(n) => Some(n.as_bytes().to_vec()),
        None => None,
    };
    Ok(udn_dns::cookie::Extras { cookies, nsid })
}

/// Where the served data comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A network configuration file; zone files are relative to its directory.
    ConfigFile(PathBuf),
    /// A configuration in memory; zone files are relative to `base`.
    Config {
        /// The configuration.
        config: Box<Config>,
        /// Directory zone-file paths are relative to.
        base: PathBuf,
    },
    /// One BIND zone file.
    ZoneFile {
        /// The file.
        path: PathBuf,
        /// Its origin if the file has no `$ORIGIN`.
        origin: Option<String>,
    },
}

impl Source {
    /// Loads and compiles the data (reads the files).
    pub fn load(&self) -> anyhow::Result<Authority> {
        match self {
            Source::ConfigFile(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let cfg = Config::from_toml(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                load_config(cfg, &base).with_context(|| format!("loading {}", path.display()))
            }
            Source::Config { config, base } => load_config((**config).clone(), base),
            Source::ZoneFile { path, origin } => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                Authority::from_zone_file_in(
                    &text,
                    origin.as_deref(),
                    Some(dir.unwrap_or(Path::new("."))),
                )
                .with_context(|| format!("loading zone file {}", path.display()))
            }
        }
    }
}

/// Compiles `cfg` and builds the DNS authority with its zone files read relative to
/// `base`: what a DNS server runs when it loads a configuration, and what the control
/// plane runs before accepting one ([`crate::distribution::zone_check`]).
pub fn load_config(cfg: Config, base: &Path) -> anyhow::Result<Authority> {
    let net = Arc::new(cfg.compile().context("compiling the network")?);
    let mut files = HashMap::new();
    for z in &net.config.dns.zones {
        if let Some(f) = &z.file {
            let p = base.join(f);
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("reading zone file {} of {}", p.display(), z.apex))?;
            files.insert(f.clone(), text);
        }
    }
    let auth = Authority::new_in(net, &files, Some(base))?;
    for h in auth.unserved_hosts() {
        tracing::warn!(hostname = %h, "hostname lies in no configured zone: not answered");
    }
    Ok(auth)
}

/// Options of [`start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// What to serve.
    pub source: Source,
    /// DNS addresses (UDP + TCP each).
    pub listen: Vec<SocketAddr>,
    /// HTTP API address (needs `pki`).
    pub http: Option<SocketAddr>,
    /// The instance credentials the HTTP API serves TLS with.
    pub pki: Option<crate::pki::Credentials>,
    /// Certificates the HTTP API refuses although they verify (kept current by the
    /// configuration watcher; empty without `--control`).
    pub revoked: crate::pki::Revocations,
    /// Our peer name (proxying on when it is one of `dns.peers`).
    pub name: Option<String>,
    /// Query-log directory.
    pub log_dir: Option<PathBuf>,
    /// Operational records into the query log this often (`None`: never).
    pub ops_interval: Option<Duration>,
    /// Server limits.
    pub limits: Limits,
    /// Wait for the owning peer this long.
    pub peer_timeout: Duration,
}

impl Options {
    /// Options for a source with defaults: loopback port 0, no HTTP, no log.
    pub fn new(source: Source) -> Options {
        Options {
            source,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            http: None,
            pki: None,
            revoked: crate::pki::Revocations::default(),
            name: None,
            log_dir: None,
            ops_interval: None,
            limits: Limits::default(),
            peer_timeout: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    transport: &'static str,
    rcode: &'static str,
    path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    transport: &'static str,
    reason: &'static str,
}

/// A latency histogram updated with atomics only (prometheus-client's `Histogram`
/// takes a write lock per observation, which two answering threads contend on).
/// Buckets are powers of two of microseconds, 1 µs .. ~2 s, plus +Inf.
#[derive(Debug, Clone)]
struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug)]
struct LatencyInner {
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BUCKETS: usize = 22;

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram {
            inner: Arc::new(LatencyInner {
                buckets: (0..=LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                sum_ns: AtomicU64::new(0),
                count: AtomicU64::new(0),
            }),
        }
    }

    fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        // Bucket i holds values <= 2^i µs.
        let us = ns.div_ceil(1000).max(1);
        let i = (64 - (us - 1).leading_zeros()) as usize;
        self.inner.buckets[i.min(LATENCY_BUCKETS)].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl prometheus_client::metrics::TypedMetric for LatencyHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for LatencyHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let upper = if i == LATENCY_BUCKETS {
                    f64::MAX
                } else {
                    (1u64 << i) as f64 * 1e-6
                };
                (upper, c.load(Ordering::Relaxed))
            })
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.inner.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            self.inner.count.load(Ordering::Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The role's counters and histogram.
struct Metrics {
    queries: Family<QueryLabels, Counter>,
    /// Every (transport, rcode, path) counter of `queries`, created up front so the hot
    /// path increments an atomic without a lookup.
    query_counters: Vec<Counter>,
    /// Every reason counter of `decisions`, in [`REASONS`] order.
    decision_counters: Vec<Counter>,
    decisions: Family<ReasonLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    latency: LatencyHistogram,
    metrics_applied: Counter,
    metrics_rejected: Counter,
    reloads: Counter,
    tcp_connections: Gauge,
    latency_samples: Gauge,
    persistence_entries: Gauge,
    log_dropped: Counter,
}

const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];
const PATHS: [AnswerPath; 3] = [
    AnswerPath::Local,
    AnswerPath::Relayed,
    AnswerPath::PeerTimeout,
];
const TRANSPORTS: [udn_dns::Transport; 2] = [udn_dns::Transport::Udp, udn_dns::Transport::Tcp];
const REASONS: [Reason; 7] = [
    Reason::Static,
    Reason::Sticky,
    Reason::Latency,
    Reason::Weighted,
    Reason::Standby,
    Reason::LastResort,
    Reason::NoData,
];

fn rcode_index(r: ResponseCode) -> usize {
    match u16::from(r) {
        c @ 0..=5 => c as usize,
        16 => 6,
        _ => 7,
    }
}

/// Index of a (transport, rcode, path) counter in [`Metrics::query_counters`].
fn query_index(t: udn_dns::Transport, rcode: usize, path: AnswerPath) -> usize {
    let t = TRANSPORTS.iter().position(|x| *x == t).unwrap_or(0);
    let p = PATHS.iter().position(|x| *x == path).unwrap_or(0);
    (t * RCODES.len() + rcode) * PATHS.len() + p
}

fn transport_str(t: udn_dns::Transport) -> &'static str {
    match t {
        udn_dns::Transport::Udp => "udp",
        udn_dns::Transport::Tcp => "tcp",
    }
}

/// A decision to log, as the answering thread hands it over: plain values and the
/// snapshot, so the strings of the [`DnsRecord`] are built on the writer thread.
struct Decided {
    ts: udn_core::Timestamp,
    net: Arc<udn_core::Network>,
    gtm: udn_dns::GtmAnswer,
}

fn dns_record(d: &Decided, server: &str) -> Option<DnsRecord> {
    let net = &d.net;
    let g = &d.gtm;
    let host = net.hosts.get(g.host.index())?;
    let dec = &g.decision;
    Some(DnsRecord {
        ts: d.ts,
        hostname: host.name.clone(),
        qtype: match g.family {
            AddrFamily::V4 => "A".into(),
            AddrFamily::V6 => "AAAA".into(),
        },
        client: g.client,
        ecs: g.ecs,
        addrs: dec.addrs.as_slice().to_vec(),
        reason: dec.reason.as_str().into(),
        pop: dec
            .server
            .and_then(|s| net.site_pop(s))
            .and_then(|p| net.pops.get(p.index()))
            .map(|p| p.name.clone()),
        customer: net
            .customers
            .get(host.customer.index())
            .map(|c| c.name.clone()),
        server: server.to_owned(),
    })
}

/// The query log: decisions are handed to a writer thread, which builds each
/// [`DnsRecord`] and writes it through the [`LogSink`] (the rotating `FileLog`), so
/// answering never waits on formatting or the disk; when the queue is full, records are
/// counted as dropped.
struct QueuedLog {
    /// The file the writer thread writes (operational records go straight to it).
    file: Arc<crate::logging::FileLog>,
    tx: std::sync::mpsc::SyncSender<Option<Decided>>,
    dropped: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueuedLog {
    fn new(inner: Arc<crate::logging::FileLog>, server: String) -> QueuedLog {
        let file = inner.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Decided>>(65_536);
        let writer = std::thread::Builder::new()
            .name("udn-dns-log".into())
            .spawn(move || {
                // Poll in batches instead of blocking on each record: a blocked receiver
                // would make every answering thread pay a futex wake-up per record.
                let mut last_tick = std::time::Instant::now();
                loop {
                    let mut closed = false;
                    loop {
                        match rx.try_recv() {
                            Ok(Some(d)) => {
                                if let Some(rec) = dns_record(&d, &server) {
                                    inner.record(LogRecord::Dns(rec));
                                }
                            }
                            Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        }
                    }
                    if closed {
                        if let Err(e) = inner.flush_complete() {
                            tracing::error!(error = %e, "closing the query log failed");
                        }
                        return;
                    }
                    if last_tick.elapsed() >= Duration::from_secs(1) {
                        last_tick = std::time::Instant::now();
                        if let Err(e) = inner.tick(crate::logging::now()) {
                            tracing::error!(error = %e, "log rotation failed");
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .ok();
        QueuedLog {
            file,
            tx,
            dropped: AtomicU64::new(0),
            writer: Mutex::new(writer),
        }
    }
}

impl QueuedLog {
    fn push(&self, d: Decided) {
        if self.tx.try_send(Some(d)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Latency measurements requested by decisions, per POP name, until probes fetch them,
/// and when each (client prefix, POP) may be requested again.
#[derive(Default)]
struct RefreshQueue {
    inner: Mutex<RefreshState>,
}

impl RefreshQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, RefreshState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct RefreshState {
    /// Pending measurements per POP name: client prefix -> the resolver to measure (the
    /// first one seen asking for that prefix while none was pending).
    by_pop: HashMap<String, HashMap<ClientPrefix, IpAddr>>,
    /// (client prefix, POP) -> not to be requested again before `until` (a request is
    /// pending, or the probe reported the target unreachable `failures` times).
    backoff: HashMap<(ClientPrefix, PopId), Backoff>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: udn_core::Timestamp,
    failures: u8,
}

/// Pending measurements per POP at most (further requests wait for the next query).
const MAX_REFRESH_PER_POP: usize = 10_000;
/// (client prefix, POP) back-off entries at most.
const MAX_BACKOFF: usize = 200_000;

impl RefreshState {
    /// Queues a measurement of `prefix` from `pop` through `target`, unless one is
    /// pending or backed off; `retry` is how long a request stays pending.
    fn request(
        &mut self,
        net: &udn_core::Network,
        prefix: ClientPrefix,
        pop: PopId,
        target: IpAddr,
        now: udn_core::Timestamp,
    ) {
        let Some(p) = net.pops.get(pop.index()) else {
            return;
        };
        let retry = Duration::from_secs(net.config.latency.request_retry_secs);
        let key = (prefix, pop);
        match self.backoff.get_mut(&key) {
            Some(b) if b.until > now => return,
            Some(b) => b.until = now.plus(retry),
            None => {
                if self.backoff.len() >= MAX_BACKOFF {
                    self.sweep(now, net);
                    if self.backoff.len() >= MAX_BACKOFF {
                        return;
                    }
                }
                self.backoff.insert(
                    key,
                    Backoff {
                        until: now.plus(retry),
                        failures: 0,
                    },
                );
            }
        }
        let set = match self.by_pop.get_mut(p.name.as_str()) {
            Some(s) => s,
            None => self.by_pop.entry(p.name.clone()).or_default(),
        };
        if set.len() < MAX_REFRESH_PER_POP {
            set.entry(prefix).or_insert(target);
        }
    }

    /// A probe of `pop` reported `prefix` unreachable: back off, doubling each time.
    fn unreachable(
        &mut self,
        net: &udn_core::Network,
        prefix: ClientPrefix,
        pop: PopId,
        now: udn_core::Timestamp,
    ) {
        let l = &net.config.latency;
        let b = self.backoff.entry((prefix, pop)).or_insert(Backoff {
            until: now,
            failures: 0,
        });
        b.failures = b.failures.saturating_add(1);
        let secs = l
            .unreachable_backoff_secs
            .saturating_mul(1u64 << u32::from(b.failures - 1).min(20))
            .min(
                l.unreachable_max_backoff_secs
                    .max(l.unreachable_backoff_secs),
            );
        b.until = now.plus(Duration::from_secs(secs));
    }

    /// Drops back-off entries whose time has passed long enough ago.
    fn sweep(&mut self, now: udn_core::Timestamp, net: &udn_core::Network) {
        let keep = Duration::from_secs(net.config.latency.unreachable_max_backoff_secs);
        self.backoff
            .retain(|_, b| b.until > now || (b.failures > 0 && now.since(b.until) <= keep));
    }
}

/// One item of `GET /v1/refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshItem {
    /// The client network to measure (results are keyed by it).
    pub client: Cidr,
    /// The POP to measure from.
    pub pop: String,
    /// The address to measure: the resolver that asked (see `docs/probe.md`).
    pub addr: IpAddr,
}

/// The observer: counters, query log and refresh requests.
struct DnsObserver {
    metrics: Metrics,
    log: Option<Arc<QueuedLog>>,
    refresh: RefreshQueue,
}

impl Observer for DnsObserver {
    fn answered(&self, a: &Answered<'_>) {
        if let Some(c) =
            self.metrics
                .query_counters
                .get(query_index(a.transport, rcode_index(a.rcode), a.path))
        {
            c.inc();
        }
        self.metrics.latency.observe(a.elapsed);
        let Some(g) = a.gtm else { return };
        let d = &g.decision;
        if let Some(i) = REASONS.iter().position(|r| *r == d.reason) {
            self.metrics.decision_counters[i].inc();
        }
        let net = a.network;
        // What is measured is the resolver that asked (a.client): for its own prefix, or
        // for the ECS prefix it sent when it is on the operator's allow-list. ECS from
        // any other resolver asks for nothing, so no one can aim the probes at a network
        // they name. A request lost to contention is asked again by the next decision
        // for that client, so answering never waits for this lock.
        // A query a configured peer proxied here names the resolver that sent it to the
        // peer, and whether the ECS is that resolver's own or the peer's addition.
        let from_peer = net
            .config
            .dns
            .peers
            .iter()
            .any(|p| p.addr.ip() == a.client.ip());
        let (resolver, own_ecs) = match g.proxied_for {
            Some((r, own)) if from_peer => (r, own),
            _ => (a.client.ip(), g.ecs.is_some_and(|c| !c.is_empty())),
        };
        let measurable = !own_ecs
            || net
                .config
                .latency
                .ecs_measure_resolvers
                .iter()
                .any(|r| r.contains(resolver));
        if measurable
            && !d.refresh.is_empty()
            && let Ok(mut q) = self.refresh.inner.try_lock()
        {
            for (prefix, pop) in d.refresh.as_slice() {
                q.request(net, *prefix, *pop, resolver, a.now);
            }
        }
        if let Some(log) = &self.log {
            log.push(Decided {
                ts: a.now,
                net: a.network.clone(),
                gtm: *g,
            });
        }
    }

    fn dropped(&self, transport: udn_dns::Transport, reason: &'static str) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                transport: transport_str(transport),
                reason,
            })
            .inc();
    }
}

/// A running `udn dns`.
pub struct Handle {
    /// DNS addresses bound (UDP and TCP share each).
    pub dns: Vec<SocketAddr>,
    /// The HTTP API address, if any.
    pub http: Option<SocketAddr>,
    /// The server's shared state.
    pub server: Arc<Server>,
    source: Source,
    name: Option<String>,
    peer_timeout: Duration,
    observer: Arc<DnsObserver>,
    registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    ops: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("dns", &self.dns)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// The served snapshot and engine, to read (a panicked writer's lock is taken over:
    /// the snapshot is replaced whole).
    fn served(&self) -> std::sync::RwLockReadGuard<'_, Served> {
        self.server.served.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The served snapshot and engine, to change.
    fn served_mut(&self) -> std::sync::RwLockWriteGuard<'_, Served> {
        self.server
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reloads the source and swaps the snapshot atomically (the engine's state carries
    /// over by name; zones, hostnames and peers change together). On error (including
    /// a peer list without this server's `--name`) the old snapshot stays.
    pub fn reload(&self) -> anyhow::Result<usize> {
        self.load(&self.source)
    }

    /// Loads `source` (instead of the configured one) and swaps the snapshot like
    /// [`Handle::reload`]; the old snapshot stays on error.
    pub fn load(&self, source: &Source) -> anyhow::Result<usize> {
        let auth = Arc::new(source.load()?);
        let zones = auth.zones().len();
        let peers = peers_of(auth.network(), self.name.as_deref(), self.peer_timeout)?;
        let mut g = self.served_mut();
        g.replace(auth);
        g.set_peers(peers);
        drop(g);
        // POP ids may have changed: back-off entries start over.
        self.observer.refresh.lock().backoff.clear();
        self.observer.metrics.reloads.inc();
        Ok(zones)
    }

    /// The POP a probe's certificate speaks for: its instance name, which must be a POP
    /// of the served configuration (`udn control enroll probe POP`); otherwise why not.
    fn probe_pop(&self, peer: Option<&crate::pki::Peer>) -> Result<String, String> {
        let Some(id) = peer.and_then(|p| p.identity.as_ref()) else {
            return Err("no instance certificate".into());
        };
        let g = self.served();
        if g.engine.network().pops.iter().any(|p| p.name == id.name) {
            Ok(id.name.clone())
        } else {
            Err(format!(
                "probe certificate {id} names no POP of this configuration: a probe is \
                 enrolled under its POP's name (udn control enroll probe POP)"
            ))
        }
    }

    /// Applies metrics received at `received` (this server's clock); returns (applied,
    /// rejected (index, error)). A sample dated more than [`MAX_FUTURE_SKEW`] after
    /// `received`, or more than [`MAX_SAMPLE_AGE`] before it, is rejected: a probe's
    /// clock is trusted only within that window, so no sample can pin a state by being
    /// dated in the future.
    pub fn apply_metrics(
        &self,
        items: &[serde_json::Value],
        received: udn_core::Timestamp,
    ) -> (usize, Vec<(usize, String)>) {
        self.apply_metrics_from(items, received, None)
    }

    /// [`Handle::apply_metrics`] for the instance `from` (the verified client
    /// certificate): a probe's service results count as its vote in the health quorum
    /// (see `udn_core::health`); an instance of role `loadp` may report only the load of
    /// the server named as itself (anything else is rejected with the reason). `None`:
    /// one anonymous reporter (embedders, tests).
    pub fn apply_metrics_from(
        &self,
        items: &[serde_json::Value],
        received: udn_core::Timestamp,
        from: Option<&crate::pki::Identity>,
    ) -> (usize, Vec<(usize, String)>) {
        let mut parsed = Vec::with_capacity(items.len());
        let mut rejected = Vec::new();
        for (i, v) in items.iter().enumerate() {
            match serde_json::from_value::<Metric>(v.clone()) {
                Ok(m) => match sample_time_error(&m, received).or_else(|| role_error(&m, from)) {
                    None => parsed.push((i, m)),
                    Some(e) => rejected.push((i, e)),
                },
                Err(e) => rejected.push((i, e.to_string())),
            }
        }
        let reporter = from.map_or("", |id| id.name.as_str());
        let mut applied = 0;
        {
            let mut g = self.served_mut();
            for (i, m) in &parsed {
                match g.engine.apply_from(m, reporter, received) {
                    Ok(_) => applied += 1,
                    Err(e) => rejected.push((*i, e.to_string())),
                }
            }
            // Results settle the refresh requests: a sample ends the back-off, an
            // unreachable report lengthens it.
            let net = g.engine.network().clone();
            drop(g);
            let mut q = self.observer.refresh.lock();
            for (_, m) in &parsed {
                match m {
                    Metric::Latency { client, pop, .. } => {
                        if let Some(p) = net.pop_id(pop) {
                            q.backoff.remove(&(ClientPrefix::of(client.addr()), p));
                        }
                    }
                    Metric::Unreachable { client, pop, .. } => {
                        if let Some(p) = net.pop_id(pop) {
                            q.unreachable(&net, ClientPrefix::of(client.addr()), p, received);
                        }
                    }
                    _ => {}
                }
            }
        }
        rejected.sort_by_key(|r| r.0);
        self.observer.metrics.metrics_applied.inc_by(applied as u64);
        self.observer
            .metrics
            .metrics_rejected
            .inc_by(rejected.len() as u64);
        (applied, rejected)
    }

    /// Takes the pending latency measurements for `pop`.
    pub fn take_refresh(&self, pop: &str) -> Vec<RefreshItem> {
        let mut q = self.observer.refresh.lock();
        let mut items: Vec<RefreshItem> = q
            .by_pop
            .remove(pop)
            .unwrap_or_default()
            .into_iter()
            .map(|(p, addr)| RefreshItem {
                client: p.network(),
                pop: pop.to_owned(),
                addr,
            })
            .collect();
        items.sort_by_key(|i| i.client.to_string());
        items
    }

    /// Drops latency samples older than `latency.expire_secs`, expired persistence
    /// entries and spent refresh back-offs; returns (latency, persistence) dropped.
    pub fn sweep(&self, now: udn_core::Timestamp) -> (usize, usize) {
        let mut g = self.served_mut();
        let net = g.engine.network().clone();
        let st = g.engine.state_mut();
        let lat = st.latency.expire(now, net.latency.expire);
        let per = st.expire_persistence(now);
        drop(g);
        self.observer.refresh.lock().sweep(now, &net);
        (lat, per)
    }

    /// (latency samples, persistence entries) held now.
    pub fn state_sizes(&self) -> (usize, usize) {
        let g = self.served();
        (
            g.engine.state().latency.len(),
            g.engine.state().persistence_len(),
        )
    }

    /// Prometheus text of the role's metrics.
    pub fn metrics_text(&self) -> String {
        self.observer
            .metrics
            .tcp_connections
            .set(self.server.tcp_connections() as i64);
        let (lat, per) = self.state_sizes();
        self.observer.metrics.latency_samples.set(lat as i64);
        self.observer.metrics.persistence_entries.set(per as i64);
        if let Some(l) = &self.observer.log {
            let d = l.dropped.load(Ordering::Relaxed);
            let c = self.observer.metrics.log_dropped.get();
            if d > c {
                self.observer.metrics.log_dropped.inc_by(d - c);
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Stops serving (UDP, TCP and HTTP tasks end) and completes the open query-log
    /// file.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if let Some(o) = self.ops.lock().unwrap_or_else(|e| e.into_inner()).take() {
            o.abort();
        }
        if let Some(l) = &self.observer.log {
            // Drain the queue and complete the open file before returning.
            let _ = l.tx.send(None);
            let writer = l.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = writer {
                let _ = w.join();
            }
        }
    }
}

/// How often expired latency samples, persistence entries and back-offs are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How far ahead of this server's clock a probe's sample may be dated.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(30);
/// How old a probe's sample may be when it arrives (a probe queues samples while a DNS
/// server is unreachable; older ones describe a state long gone).
pub const MAX_SAMPLE_AGE: Duration = Duration::from_secs(3600);

/// Why a sample's time is refused, if it is: too far in the future or the past of
/// `received`.
fn sample_time_error(m: &Metric, received: udn_core::Timestamp) -> Option<String> {
    let at = match m {
        Metric::Service { sample, .. } => sample.at,
        Metric::Load { at, .. } => *at,
        Metric::Latency { sample, .. } => sample.at,
        Metric::Unreachable { at, .. } => *at,
    };
    let (at, now) = (at.as_millis(), received.as_millis());
    let ahead = at.saturating_sub(now);
    let behind = now.saturating_sub(at);
    if ahead > MAX_FUTURE_SKEW.as_millis() as u64 {
        Some(format!(
            "sample dated {ahead} ms after this server received it (at {at}, received {now}): \
             more than {} s ahead; check the probe's clock",
            MAX_FUTURE_SKEW.as_secs()
        ))
    } else if behind > MAX_SAMPLE_AGE.as_millis() as u64 {
        Some(format!(
            "sample dated {behind} ms before this server received it (at {at}, received \
             {now}): older than {} s",
            MAX_SAMPLE_AGE.as_secs()
        ))
    } else {
        None
    }
}

/// Why an instance may not report `m`, if it may not: role `loadp` reports only the
/// load of the server named as its identity.
fn role_error(m: &Metric, from: Option<&crate::pki::Identity>) -> Option<String> {
    let id = from.filter(|id| id.role == crate::pki::InstanceRole::Loadp)?;
    match m {
        Metric::Load { server, .. } if *server == id.name => None,
        Metric::Load { server, .. } => Some(format!(
            "instance {id} may report only the load of server {:?}, not of {server:?}",
            id.name
        )),
        _ => Some(format!(
            "instance {id} (role loadp) may report only load, not service or latency results"
        )),
    }
}

/// The peers of `net` with this server (`name`) among them; `None` (no proxying) without
/// a name or peers. A name that is not among the peers is an error.
fn peers_of(
    net: &udn_core::Network,
    name: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Option<Peers>> {
    let Some(name) = name else {
        return Ok(None);
    };
    if net.peers.is_empty() {
        return Ok(None);
    }
    let me = net
        .peers
        .iter()
        .position(|p| p.name == name)
        .with_context(|| format!("--name {name} is not one of dns.peers"))?;
    let mut p = Peers::new(
        net.peers.iter().map(|p| p.name.clone()).collect(),
        net.peers.iter().map(|p| p.addr).collect(),
        me,
    );
    p.timeout = timeout;
    Ok(Some(p))
}

/// Binds the DNS and HTTP addresses and starts serving on the current tokio runtime.
pub async fn start(opts: Options) -> anyhow::Result<Arc<Handle>> {
    let auth = Arc::new(opts.source.load()?);
    let net = auth.network().clone();
    let peers = peers_of(&net, opts.name.as_deref(), opts.peer_timeout)?;
    let name = opts.name.clone().unwrap_or_else(|| "dns".into());

    let mut registry = Registry::with_prefix("udn_dns");
    let queries = Family::<QueryLabels, Counter>::default();
    let mut query_counters = Vec::new();
    for t in TRANSPORTS {
        for rcode in RCODES {
            for path in PATHS {
                query_counters.push(
                    queries
                        .get_or_create(&QueryLabels {
                            transport: transport_str(t),
                            rcode,
                            path: path.as_str(),
                        })
                        .clone(),
                );
            }
        }
    }
    let decisions = Family::<ReasonLabels, Counter>::default();
    let decision_counters = REASONS
        .iter()
        .map(|r| {
            decisions
                .get_or_create(&ReasonLabels { reason: r.as_str() })
                .clone()
        })
        .collect();
    let metrics = Metrics {
        queries,
        query_counters,
        decision_counters,
        decisions,
        dropped: Family::default(),
        latency: LatencyHistogram::new(),
        metrics_applied: Counter::default(),
        metrics_rejected: Counter::default(),
        reloads: Counter::default(),
        tcp_connections: Gauge::default(),
        latency_samples: Gauge::default(),
        persistence_entries: Gauge::default(),
        log_dropped: Counter::default(),
    };
    // (field of `metrics`, exported name, help)
    macro_rules! register {
        ($(($field:ident, $name:literal, $help:literal)),* $(,)?) => {
            $(registry.register($name, $help, metrics.$field.clone());)*
        };
    }
    register!(
        (
            queries,
            "queries",
            "DNS queries answered, by transport, response code and path"
        ),
        (decisions, "decisions", "GTM/CDN decisions by reason"),
        (
            dropped,
            "dropped",
            "Queries dropped or TCP clients cut off, by reason"
        ),
        (
            latency,
            "answer_seconds",
            "Time from receiving a query to having its answer"
        ),
        (metrics_applied, "metrics_applied", "Probe metrics applied"),
        (
            metrics_rejected,
            "metrics_rejected",
            "Probe metrics rejected"
        ),
        (reloads, "reloads", "Successful reloads"),
        (tcp_connections, "tcp_connections", "Open TCP connections"),
        (
            latency_samples,
            "latency_samples",
            "(client prefix, POP) latency samples held"
        ),
        (
            persistence_entries,
            "persistence_entries",
            "Persistence entries held (expired ones until the next sweep)"
        ),
        (
            log_dropped,
            "log_dropped",
            "Query-log records dropped because the writer fell behind"
        ),
    );

    let log = match &opts.log_dir {
        Some(dir) => {
            let file =
                crate::logging::FileLog::new(dir, Role::Dns, &name, RotationPolicy::default())?;
            Some(Arc::new(QueuedLog::new(Arc::new(file), name.clone())))
        }
        None => None,
    };
    let observer = Arc::new(DnsObserver {
        metrics,
        log,
        refresh: RefreshQueue::default(),
    });
    let engine = Engine::new(net);
    let server = Server::new(
        Served {
            engine,
            authority: auth,
            peers: peers.map(Arc::new),
        },
        opts.limits.clone(),
        observer.clone(),
        crate::logging::now,
    );
    let (tx, rx) = watch::channel(false);
    let bound = server
        .spawn(&opts.listen, rx.clone())
        .await
        .context("binding the DNS addresses")?;
    let mut handle = Handle {
        dns: bound.addrs,
        http: None,
        server,
        source: opts.source.clone(),
        name: opts.name.clone(),
        peer_timeout: opts.peer_timeout,
        observer,
        registry: Arc::new(registry),
        shutdown: tx,
        ops: Mutex::new(None),
    };
    let http_listener = match opts.http {
        Some(addr) => {
            let creds = opts.pki.as_ref().with_context(|| {
                format!("the HTTP API ({addr}) is an admin listener: give --pki DIR")
            })?;
            let tls = crate::listener::Tls {
                config: creds.server_config()?,
                revoked: opts.revoked.clone(),
            };
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP {addr}"))?;
            Some((l, tls))
        }
        None => None,
    };
    if let Some((l, _)) = &http_listener {
        handle.http = Some(l.local_addr()?);
    }
    let handle = Arc::new(handle);
    {
        // Expiry of the latency and persistence tables.
        let h = handle.clone();
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => { h.sweep(crate::logging::now()); }
                    _ = rx.wait_for(|v| *v) => return,
                }
            }
        });
    }
    if let (Some(l), Some(every)) = (&handle.observer.log, opts.ops_interval) {
        // The task holds only a weak reference: the handle's owner decides its life.
        let weak = Arc::downgrade(&handle);
        let task = crate::logging::spawn_ops(l.file.clone(), every, move || {
            weak.upgrade().map(|h| h.metrics_text()).unwrap_or_default()
        });
        *handle.ops.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }
    if let Some((listener, tls)) = http_listener {
        let app = router(handle.clone());
        let task =
            crate::listener::serve(listener, app, Some(tls), crate::listener::Limits::default());
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let _ = rx.wait_for(|v| *v).await;
            task.abort();
        });
    }
    Ok(handle)
}

#[derive(Debug, Serialize)]
struct Rejected {
    index: usize,
    error: String,
}

#[derive(Debug, Serialize)]
struct MetricsReply {
    applied: usize,
    rejected: Vec<Rejected>,
    /// When this server received the batch (ms since the epoch, its own clock).
    received_at: udn_core::Timestamp,
}

/// Why a metric (JSON) may not come from a probe of `pop`: a latency sample of another
/// POP (or any latency sample when the sender's POP is unknown, `Err`).
fn other_pop_latency(v: &serde_json::Value, pop: &Result<String, String>) -> Option<String> {
    // Latency samples and unreachable reports (which back off a measurement) alike.
    if !matches!(
        v.get("kind").and_then(|k| k.as_str()),
        Some("latency" | "unreachable")
    ) {
        return None;
    }
    let claimed = v.get("pop").and_then(|p| p.as_str()).unwrap_or("");
    match pop {
        Ok(own) if own == claimed => None,
        Ok(own) => Some(format!(
            "the probe of POP {own} may report latency only for its own POP, not {claimed:?}"
        )),
        Err(why) => Some(why.clone()),
    }
}

#[derive(Debug, Deserialize)]
struct RefreshParams {
    pop: String,
}

/// The HTTP API: probes' routes for role probe, the operator's for role control,
/// `/health` for anyone.
fn router(h: Arc<Handle>) -> axum::Router {
    use crate::pki::{InstanceRole, require_roles};
    let metrics = axum::Router::new()
        .route(
            "/v1/metrics",
            post(
                |AxState(h): AxState<Arc<Handle>>,
                 peer: Option<axum::Extension<crate::pki::Peer>>,
                 body: axum::Json<Vec<serde_json::Value>>| async move {
                    // Stamped on arrival: freshness is judged on this server's clock.
                    let received_at = crate::logging::now();
                    // Latency samples only for the sender's own POP.
                    let pop = h.probe_pop(peer.as_ref().map(|p| &p.0));
                    let mut own = Vec::with_capacity(body.0.len());
                    let mut index = Vec::with_capacity(body.0.len());
                    let mut rejected = Vec::new();
                    for (i, v) in body.0.into_iter().enumerate() {
                        match other_pop_latency(&v, &pop) {
                            Some(why) => rejected.push(Rejected {
                                index: i,
                                error: why,
                            }),
                            None => {
                                own.push(v);
                                index.push(i);
                            }
                        }
                    }
                    let from = peer.as_ref().and_then(|p| p.identity.as_ref());
                    let (applied, refused) = h.apply_metrics_from(&own, received_at, from);
                    rejected.extend(refused.into_iter().map(|(i, error)| Rejected {
                        index: index[i],
                        error,
                    }));
                    rejected.sort_by_key(|r| r.index);
                    axum::Json(MetricsReply {
                        applied,
                        rejected,
                        received_at,
                    })
                },
            ),
        )
        .route_layer(axum::middleware::from_fn(|req, next| {
            require_roles(&[InstanceRole::Probe, InstanceRole::Loadp], req, next)
        }));
    let probe = axum::Router::new()
        .route(
            "/v1/refresh",
            get(
                |AxState(h): AxState<Arc<Handle>>,
                 peer: Option<axum::Extension<crate::pki::Peer>>,
                 q: UrlQuery<RefreshParams>| async move {
                    match h.probe_pop(peer.as_ref().map(|p| &p.0)) {
                        Ok(pop) if pop == q.pop => {
                            axum::Json(h.take_refresh(&q.pop)).into_response()
                        }
                        Ok(pop) => (
                            StatusCode::FORBIDDEN,
                            axum::Json(serde_json::json!({"error": format!(
                                "the probe of POP {pop} may take only its own refresh requests, \
                                 not those of {:?}", q.pop)})),
                        )
                            .into_response(),
                        Err(why) => (
                            StatusCode::FORBIDDEN,
                            axum::Json(serde_json::json!({ "error": why })),
                        )
                            .into_response(),
                    }
                },
            ),
        )
        .route_layer(axum::middleware::from_fn(|req, next| {
            require_roles(&[InstanceRole::Probe], req, next)
        }));
    let control = axum::Router::new()
        .route(
            "/metrics",
            get(|AxState(h): AxState<Arc<Handle>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics_text(),
                )
            }),
        )
        .route(
            "/v1/reload",
            post(|AxState(h): AxState<Arc<Handle>>| async move {
                match tokio::task::spawn_blocking(move || h.reload()).await {
                    Ok(Ok(zones)) => (
                        StatusCode::OK,
                        axum::Json(serde_json::json!({ "reloaded": true, "zones": zones })),
                    )
                        .into_response(),
                    Ok(Err(e)) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(
                            serde_json::json!({ "reloaded": false, "error": format!("{e:#}") }),
                        ),
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }),
        )
        .route_layer(axum::middleware::from_fn(|req, next| {
            require_roles(&[InstanceRole::Control], req, next)
        }));
    axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(metrics)
        .merge(probe)
        .merge(control)
        .with_state(h)
}

/// Runs the role until Ctrl-C or SIGTERM; SIGHUP reloads.
pub fn run(args: Args) -> anyhow::Result<()> {
    let source = match (&args.config, &args.zone) {
        (Some(c), None) => Source::ConfigFile(c.clone()),
        (None, Some(z)) => Source::ZoneFile {
            path: z.clone(),
            origin: args.origin.clone(),
        },
        _ => anyhow::bail!("give exactly one of --config FILE or --zone FILE"),
    };
    let revoked = crate::pki::Revocations::default();
    let opts = Options {
        source,
        listen: args.listen.clone(),
        http: args.http,
        pki: match &args.pki {
            Some(d) => Some(crate::pki::Credentials::load(d)?),
            None => None,
        },
        revoked: revoked.clone(),
        name: args.name.clone(),
        log_dir: args.log_dir.clone(),
        ops_interval: (args.ops_interval_secs > 0)
            .then(|| Duration::from_secs(args.ops_interval_secs)),
        limits: Limits {
            udp_sockets: args.udp_sockets,
            tcp_max_connections: args.tcp_max_connections,
            tcp_idle: Duration::from_millis(args.tcp_idle_ms),
            tcp_read: Duration::from_millis(args.tcp_read_ms),
            answer_cache_bytes: args.answer_cache_bytes,
            tcp_answer_cache_bytes: args.tcp_answer_cache_bytes,
            rrl: udn_dns::rrl::RrlConfig {
                rate: args.rrl_rate.min(udn_dns::rrl::MAX_RATE),
                slip: args.rrl_slip,
                ipv4_prefix: args.rrl_ipv4_prefix,
                ipv6_prefix: args.rrl_ipv6_prefix,
                table_size: args.rrl_table_size,
                exempt: args.rrl_exempt.clone(),
            },
            extras: protocol_extras(&args)?,
            ..Limits::default()
        },
        peer_timeout: Duration::from_millis(args.peer_timeout_ms),
    };
    let credentials = opts.pki.clone();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        b.worker_threads(args.threads);
    }
    let rt = b
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let h = start(opts).await?;
        for a in &h.dns {
            println!("udn dns: serving DNS on {a} (UDP and TCP)");
        }
        if let Some(a) = h.http {
            println!("udn dns: HTTP API on https://{a}");
        }
        let follow = match (&args.control, &args.config, &credentials) {
            (Some(url), Some(path), Some(creds)) => {
                let h = h.clone();
                let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                let control = crate::distribution::ControlChannel {
                    url: url.clone(),
                    credentials: creds.clone(),
                    revoked: revoked.clone(),
                };
                Some(crate::distribution::follow_control(
                    control,
                    path.clone(),
                    move |u| {
                        let (h, base) = (h.clone(), base.clone());
                        async move {
                            let source = Source::Config {
                                config: Box::new(u.config),
                                base,
                            };
                            tokio::task::spawn_blocking(move || h.load(&source))
                                .await
                                .context("loading task")?
                                .map(|_| ())
                        }
                    },
                )?)
            }
            _ => None,
        };
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM")?;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let h = h.clone();
                    match tokio::task::spawn_blocking(move || h.reload()).await {
                        Ok(Ok(z)) => tracing::info!(zones = z, "reloaded on SIGHUP"),
                        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the old snapshot"),
                        Err(e) => tracing::error!(error = %e, "reload task failed"),
                    }
                }
                _ = term.recv() => break,
                r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; break; }
            }
        }
        if let Some(f) = follow {
            f.abort();
        }
        h.shutdown();
        Ok(())
    })
}
