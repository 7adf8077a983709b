//! `udn probe`: the probe agent of one POP (ServiceProbe, LOADP, LatencyProbe and the
//! on-demand page check), and `udn probe check URL`.
//!
//! The agent tests every (server, service) of its scope at each service's interval,
//! reads the local machine's load, measures the RTT to the client resolvers the DNS
//! servers ask about (`GET /v1/refresh?pop=NAME`) and reports everything to every DNS
//! server (`POST /v1/metrics`) and to its probe log. Its HTTP API:
//!
//! * `POST /v1/pagecheck` `{"url": "...", "repeat": false}` -> `{"pop": ..., "reports": [...]}`
//! * `GET /v1/status`: service states, latency method statistics, report queues
//! * `GET /health`, `GET /metrics` (Prometheus text)
//!
//! With `--pki DIR` (the probe's instance credentials) the API is an admin listener:
//! HTTPS, and every route but `/health` only for role control. The reports to the DNS
//! servers (`https://` URLs then) present the same certificate. Without `--pki` the API
//! is plain HTTP, read-only and on a loopback address only (another `--http` address is
//! refused at start): `/v1/pagecheck` (which makes the probe fetch a URL) is refused.

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use udn_core::log::{LogRecord, LogSink, NullSink, ProbeRecord, Role, RotationPolicy};
use udn_core::network::Network;
use udn_core::{Cidr, LatencySample, Metric, ServiceSample, Timestamp};
use udn_probe::agent::fetch::DnsServer;
use udn_probe::agent::load::ProcSource;
use udn_probe::agent::methods::{DnsQuery, IcmpEcho, TcpConnect};
use udn_probe::agent::pagecheck::{PageCheckOptions, page_check};
use udn_probe::agent::report::{QueueStats, Reporter, ReporterOptions};
use udn_probe::agent::service::run_test;
use udn_probe::latency::{Escalation, LatencyMethod, MethodInfo, MethodStats, measure_with};
use udn_probe::pagecheck::PageReport;
use udn_probe::passive::PassiveTable;
use udn_probe::plan::{InFlight, ServerResult, ServiceTarget, median_sample, service_targets};
use udn_probe::service::{Hysteresis, UpDown};

pub use udn_probe::plan::representative;

use crate::logging::now;

/// Command-line arguments of `udn probe`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// `check URL`: a page check from the command line.
    #[command(subcommand)]
    pub command: Option<ProbeCommand>,
    /// The agent's options (when no subcommand is given).
    #[command(flatten)]
    pub agent: Box<AgentArgs>,
}

/// Subcommands of `udn probe`.
#[derive(Debug, clap::Subcommand)]
pub enum ProbeCommand {
    /// Download a page and every component it references; print the overall line and
    /// one row per component.
    Check(CheckArgs),
}

/// Arguments of `udn probe check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The page URL (http or https).
    pub url: String,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Run twice; the second pass reuses the first pass's name resolutions (warm DNS).
    #[arg(long)]
    pub repeat: bool,
    /// Components fetched at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Time limit per component, ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Fixed name resolution, `HOST:IP` (repeatable), like curl's `--resolve`.
    #[arg(long)]
    pub resolve: Vec<String>,
    /// Ask this DNS server (`IP:PORT`, like `dig @server`) for the other names instead
    /// of the system resolver; the lookups are timed (DRT).
    #[arg(long)]
    pub dns_server: Option<SocketAddr>,
    /// Local address those DNS queries are sent from (the client the server sees).
    #[arg(long, requires = "dns_server")]
    pub dns_source: Option<IpAddr>,
}

pub use udn_probe::plan::Scope;

/// Options of the probe agent.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Network configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Follow the control plane's configuration (`https://ip:port` of its machine
    /// listener, `udn control --listen`, reached over mutual TLS with `--pki`): each new
    /// version is applied without a restart and then written to `--config`; the revoked
    /// certificates it carries are refused by the probe's API.
    #[arg(long, requires_all = ["config", "pki"])]
    pub control: Option<String>,
    /// This probe's POP.
    #[arg(long)]
    pub pop: Option<String>,
    /// HTTP base URL of a DNS server (`http://ip:port`), repeatable: metrics go to
    /// every one, refresh requests come from every one.
    #[arg(long = "dns-http")]
    pub dns_http: Vec<String>,
    /// Address of the agent's HTTP API (page check, status, metrics).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// This probe's instance credentials (cert.pem, key.pem, ca.pem as written by
    /// `udn control enroll probe POP --out DIR`): its API becomes HTTPS for role
    /// control, and it presents them to the DNS servers (`--dns-http https://...`).
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Directory of the probe log (rotated JSON Lines); none: no log.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Which servers to test: `own` (its POP's and the origin sites it is named for)
    /// or `all`.
    #[arg(long, default_value = "own")]
    pub scope: Scope,
    /// Latency methods, comma-separated, among passive, icmp, dns, tcp (tried
    /// cheapest first, whatever the order here); passive needs `--passive-table`.
    #[arg(long, default_value = "passive,icmp,dns,tcp", value_delimiter = ',')]
    pub latency_methods: Vec<String>,
    /// Port of the DNS-query and TCP-connect latency methods.
    #[arg(long, default_value_t = 53)]
    pub latency_port: u16,
    /// Name asked by the DNS-query latency method.
    #[arg(long, default_value = ".")]
    pub latency_qname: String,
    /// Time limit of one latency measurement, ms.
    #[arg(long, default_value_t = 1000)]
    pub latency_timeout_ms: u64,
    /// Samples per latency measurement: the median RTT is reported, losses counted.
    #[arg(long, default_value_t = 3)]
    pub latency_samples: u8,
    /// Local address latency measurements are sent from (the POP's address).
    #[arg(long)]
    pub source_ip: Option<IpAddr>,
    /// Passive latency table (`CIDR RTT_MS` lines).
    #[arg(long)]
    pub passive_table: Option<PathBuf>,
    /// Client networks measured periodically, besides the DNS servers' requests.
    #[arg(long = "latency-target")]
    pub latency_targets: Vec<Cidr>,
    /// Seconds between measurements of the `--latency-target` networks.
    #[arg(long, default_value_t = 30)]
    pub latency_interval_secs: u64,
    /// Milliseconds between refresh requests to the DNS servers.
    #[arg(long, default_value_t = 1000)]
    pub refresh_interval_ms: u64,
    /// Seconds between LOADP readings.
    #[arg(long, default_value_t = 5)]
    pub load_interval_secs: u64,
    /// Servers running on this probe's own host, whose load (LOADP) it reports; none by
    /// default (each server's host runs `udn loadp`, see docs/probe.md).
    #[arg(long = "load-server")]
    pub load_servers: Vec<String>,
    /// Port override for a service, `NAME=PORT` (repeatable).
    #[arg(long = "service-port", value_parser = parse_service_port)]
    pub service_ports: Vec<(String, u16)>,
    /// Age in seconds at which a probe log file is completed.
    #[arg(long, default_value_t = 10)]
    pub log_max_age_secs: u64,
    /// With `--log-dir`: write the probe's operational statistics (service tests by
    /// result, latency samples by method, dropped reports) into the log every this
    /// many seconds, for the operators' views (`0`: never).
    #[arg(long, default_value_t = crate::logging::OPS_INTERVAL_SECS)]
    pub ops_interval_secs: u64,
    /// Metrics held per DNS server while it is unreachable (oldest dropped first).
    #[arg(long, default_value_t = 10_000)]
    pub queue_capacity: usize,
    /// DNS server the page checks ask for names (`IP:PORT`, like `dig @server`) instead
    /// of the system resolver.
    #[arg(long)]
    pub pagecheck_dns: Option<SocketAddr>,
    /// Local address the page checks' DNS queries are sent from (the client the DNS
    /// server sees, so a GTM answers as it would for this location's users).
    #[arg(long, requires = "pagecheck_dns")]
    pub pagecheck_dns_source: Option<IpAddr>,
}

/// Everything [`start`] needs (the demo builds it directly).
#[derive(Clone)]
pub struct ProbeOptions {
    /// The compiled network.
    pub network: Arc<Network>,
    /// This probe's POP.
    pub pop: String,
    /// DNS servers' HTTP base URLs.
    pub dns_http: Vec<String>,
    /// Address of the HTTP API.
    pub http: SocketAddr,
    /// Where results are logged.
    pub log: Arc<dyn LogSink>,
    /// Which servers to test.
    pub scope: Scope,
    /// The latency methods, in any order.
    pub methods: Vec<Arc<dyn LatencyMethod>>,
    /// Client networks measured periodically.
    pub latency_targets: Vec<Cidr>,
    /// Period of the `latency_targets` measurements.
    pub latency_interval: Duration,
    /// Samples per latency measurement (the median is reported).
    pub latency_samples: u8,
    /// Period of the refresh requests.
    pub refresh_interval: Duration,
    /// Period of LOADP.
    pub load_interval: Duration,
    /// Servers the load is reported for (empty: the POP's).
    pub load_servers: Vec<String>,
    /// Reporting settings.
    pub report: ReporterOptions,
    /// Per-service port overrides (`service name`, port), for networks whose servers
    /// listen on other ports than the config says (the demo on loopback).
    pub service_ports: Vec<(String, u16)>,
    /// Fixed name resolutions (`host` -> address) of the page checks this agent runs
    /// for the control plane (`POST /v1/pagecheck`), like curl's `--resolve`; empty:
    /// the system resolver. The demo points its hostnames at its own loopback servers.
    pub pagecheck_resolve: Vec<(String, IpAddr)>,
    /// The DNS server the page checks ask for the other names (`None`: the system
    /// resolver).
    pub pagecheck_dns: Option<DnsServer>,
    /// The probe's instance credentials: the API's TLS (role control only) and the
    /// certificate presented to the DNS servers. `None`: a plain, read-only API.
    pub pki: Option<crate::pki::Credentials>,
    /// Certificates the API refuses although they verify (kept current by the
    /// configuration watcher; empty without `--control`).
    pub revoked: crate::pki::Revocations,
    /// Operational records into `log` this often (`None`: never).
    pub ops_interval: Option<Duration>,
}

impl ProbeOptions {
    /// Defaults for POP `pop` of `network`: scope `own`, methods ICMP, DNS and TCP
    /// connect on port 53, API on an ephemeral loopback port, no log.
    pub fn new(network: Arc<Network>, pop: &str, dns_http: Vec<String>) -> ProbeOptions {
        ProbeOptions {
            network,
            pop: pop.to_string(),
            dns_http,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::new(NullSink),
            scope: Scope::Own,
            methods: default_methods(53, ".", None, Duration::from_secs(1)),
            latency_targets: Vec::new(),
            latency_interval: Duration::from_secs(30),
            latency_samples: 3,
            refresh_interval: Duration::from_secs(1),
            load_interval: Duration::from_secs(5),
            load_servers: Vec::new(),
            report: ReporterOptions::default(),
            service_ports: Vec::new(),
            pagecheck_resolve: Vec::new(),
            pagecheck_dns: None,
            pki: None,
            revoked: crate::pki::Revocations::default(),
            ops_interval: None,
        }
    }
}

/// ICMP echo, DNS query and TCP connect methods.
pub fn default_methods(
    port: u16,
    qname: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Vec<Arc<dyn LatencyMethod>> {
    vec![
        Arc::new(IcmpEcho { timeout }),
        Arc::new(DnsQuery {
            port,
            qname: qname.to_string(),
            source,
            timeout,
        }),
        Arc::new(TcpConnect {
            port,
            source,
            timeout,
        }),
    ]
}

/// The state of one tested (server, service).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Server name.
    pub server: String,
    /// Service name.
    pub service: String,
    /// Up/down after the thresholds.
    pub state: UpDown,
    /// Tests run.
    pub checks: u64,
    /// Tests failed.
    pub failures: u64,
    /// Reason of the last verdict.
    pub last_reason: String,
    /// Response time of the last test, ms.
    pub last_ms: f32,
    /// When it was last tested.
    pub last_at: Timestamp,
}

/// The last latency sample of a client network.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStatus {
    /// Client network.
    pub client: Cidr,
    /// The address measured.
    pub addr: IpAddr,
    /// RTT, µs (none: no method gave a result).
    pub rtt_us: Option<u32>,
    /// The method that gave it.
    pub method: Option<String>,
    /// Samples sent.
    pub sent: u8,
    /// Samples lost (no method gave an RTT).
    pub lost: u8,
    /// When.
    pub at: Timestamp,
}

/// What `GET /v1/status` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// POP.
    pub pop: String,
    /// Tested services.
    pub services: Vec<ServiceStatus>,
    /// Latency methods in the order they are tried, with their operational data.
    pub methods: Vec<(MethodInfo, MethodStats)>,
    /// Latest latency per client network.
    pub latency: Vec<LatencyStatus>,
    /// Report queues per DNS server.
    pub queues: Vec<QueueStats>,
    /// Last LOADP percent.
    pub load_percent: Option<f64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CheckLabels {
    service: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

struct Shared {
    opts: ProbeOptions,
    /// The network in force (replaced on reload).
    network: Mutex<Arc<Network>>,
    reporter: Reporter,
    policy: Mutex<Escalation>,
    services: Mutex<BTreeMap<(String, String), ServiceStatus>>,
    latency: Mutex<BTreeMap<Cidr, LatencyStatus>>,
    in_flight: Mutex<InFlight>,
    load_percent: Mutex<Option<f64>>,
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    samples: Family<MethodLabels, Counter>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn emit(&self, metric: Metric, rec: ProbeRecord) {
        self.reporter.push(std::slice::from_ref(&metric));
        self.opts.log.record(LogRecord::Probe(rec));
    }

    fn status(&self) -> Status {
        let policy = lock(&self.policy);
        Status {
            pop: self.opts.pop.clone(),
            services: lock(&self.services).values().cloned().collect(),
            methods: policy
                .order()
                .iter()
                .map(|&i| (policy.methods()[i].clone(), policy.stats()[i].clone()))
                .collect(),
            latency: lock(&self.latency).values().cloned().collect(),
            queues: self.reporter.stats(),
            load_percent: *lock(&self.load_percent),
        }
    }
}

/// A running probe agent.
pub struct ProbeHandle {
    /// The bound address of the HTTP API.
    pub http: SocketAddr,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    service_tasks: tokio::task::JoinSet<()>,
}

impl ProbeHandle {
    /// The agent's current status.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Replaces the network: the service tests restart with the new servers, services
    /// and thresholds (a config that does not name this probe's POP is refused and the
    /// old tests keep running). Status entries of servers no longer tested are removed.
    pub async fn reload(&mut self, net: Arc<Network>) -> anyhow::Result<usize> {
        let targets = targets_of(&self.shared.opts, &net)?;
        let n = targets.len();
        self.service_tasks.abort_all();
        while self.service_tasks.join_next().await.is_some() {}
        {
            let keep: HashSet<(String, String)> = targets
                .iter()
                .map(|t| (t.server.clone(), t.spec.name.clone()))
                .collect();
            lock(&self.shared.services).retain(|k, _| keep.contains(k));
        }
        spawn_service_loops(&mut self.service_tasks, &self.shared, &net, targets);
        *lock(&self.shared.network) = net;
        tracing::info!(tests = n, "probe configuration reloaded");
        Ok(n)
    }

    /// Stops every task of the agent.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.service_tasks.abort_all();
        self.tasks.abort_all();
        while self.service_tasks.join_next().await.is_some() {}
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The service targets of `opts` in `net`, with the port overrides applied.
fn targets_of(opts: &ProbeOptions, net: &Network) -> anyhow::Result<Vec<ServiceTarget>> {
    Ok(service_targets(
        net,
        &opts.pop,
        opts.scope,
        &opts.service_ports,
    )?)
}

fn spawn_service_loops(
    set: &mut tokio::task::JoinSet<()>,
    sh: &Arc<Shared>,
    net: &Network,
    targets: Vec<ServiceTarget>,
) {
    let hysteresis = (net.health.up_after, net.health.down_after);
    let policy = Arc::new(net.target_policy.clone());
    for t in targets {
        let policy = t.customer.then(|| policy.clone());
        set.spawn(service_loop(sh.clone(), t, hysteresis, policy));
    }
}

/// Starts the agent on the current tokio runtime: binds the HTTP API and spawns the
/// service, load, refresh and latency tasks.
pub async fn start(mut opts: ProbeOptions) -> anyhow::Result<ProbeHandle> {
    // Without credentials the API is plain HTTP with nobody to check: only this host may
    // reach it.
    if opts.pki.is_none() && !opts.http.ip().is_loopback() {
        anyhow::bail!(
            "--http {}: without --pki the probe's API (status, metrics) is plain HTTP for \
             anyone who can reach it, so it is served only on a loopback address; give the \
             probe its credentials (--pki DIR) or --http 127.0.0.1:PORT",
            opts.http
        );
    }
    let targets = targets_of(&opts, &opts.network)?;
    if let Some(creds) = &opts.pki {
        if let Some(u) = opts.dns_http.iter().find(|u| !u.starts_with("https://")) {
            anyhow::bail!(
                "--dns-http {u}: with --pki the DNS servers' API is reached over https://"
            );
        }
        if opts.report.tls.is_none() {
            opts.report.tls = Some(Arc::new(creds.client_config()?));
        }
    }
    let reporter = Reporter::new(&opts.dns_http, opts.report.clone());
    let infos = opts.methods.iter().map(|m| m.info()).collect();
    let mut registry = Registry::default();
    let checks = Family::<CheckLabels, Counter>::default();
    let samples = Family::<MethodLabels, Counter>::default();
    registry.register(
        "udn_probe_service_checks",
        "Service tests by service and result",
        checks.clone(),
    );
    registry.register(
        "udn_probe_latency_samples",
        "Latency samples by the method that gave them (none: no result)",
        samples.clone(),
    );
    let shared = Arc::new(Shared {
        network: Mutex::new(opts.network.clone()),
        opts: opts.clone(),
        reporter: reporter.clone(),
        policy: Mutex::new(Escalation::new(infos)),
        services: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(BTreeMap::new()),
        in_flight: Mutex::new(InFlight::new(LATENCY_JOBS * 4)),
        load_percent: Mutex::new(None),
        registry,
        checks,
        samples,
    });
    let listener = tokio::net::TcpListener::bind(opts.http)
        .await
        .with_context(|| format!("binding the probe API on {}", opts.http))?;
    let http = listener.local_addr()?;
    let (shutdown, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for h in reporter.spawn() {
        tasks.spawn(async move {
            let _ = h.await;
        });
    }
    let mut service_tasks = tokio::task::JoinSet::new();
    spawn_service_loops(&mut service_tasks, &shared, &opts.network, targets);
    tasks.spawn(load_loop(shared.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel::<(Cidr, IpAddr)>(1024);
    tasks.spawn(latency_loop(shared.clone(), rx));
    for base in &opts.dns_http {
        tasks.spawn(refresh_loop(shared.clone(), base.clone(), tx.clone()));
    }
    tasks.spawn(static_targets_loop(shared.clone(), tx));
    if let Some(every) = opts.ops_interval {
        let sh = shared.clone();
        let ops = crate::logging::spawn_ops(opts.log.clone(), every, move || metrics_text(&sh));
        tasks.spawn(async move {
            let _ops = AbortOnDrop(ops);
            std::future::pending::<()>().await
        });
    }
    let routes = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/v1/status", get(status_handler));
    let (app, tls) = match &opts.pki {
        Some(creds) => {
            use crate::pki::{InstanceRole, require_roles};
            let app = routes
                .route("/v1/pagecheck", post(pagecheck_handler))
                .route_layer(axum::middleware::from_fn(|req, next| {
                    require_roles(&[InstanceRole::Control], req, next)
                }));
            let tls = crate::listener::Tls {
                config: creds.server_config()?,
                revoked: opts.revoked.clone(),
            };
            (app, Some(tls))
        }
        None => (routes.route("/v1/pagecheck", post(pagecheck_refused)), None),
    };
    let app = app
        .route("/health", get(|| async { "ok" }))
        .with_state(shared.clone());
    let server = AbortOnDrop(crate::listener::serve(
        listener,
        app,
        tls,
        crate::listener::Limits::default(),
    ));
    tasks.spawn(async move {
        let _server = server;
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    tracing::info!(pop = %opts.pop, %http, "probe agent started");
    Ok(ProbeHandle {
        http,
        shared,
        shutdown,
        tasks,
        service_tasks,
    })
}

async fn service_loop(
    sh: Arc<Shared>,
    target: ServiceTarget,
    (up_after, down_after): (u32, u32),
    policy: Option<Arc<udn_core::netpolicy::TargetPolicy>>,
) {
    let ServiceTarget {
        server,
        addrs,
        spec,
        ..
    } = target;
    let mut hyst = Hysteresis::new(up_after, down_after);
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The server passes when every one of its addresses passes.
        let mut verdicts = Vec::with_capacity(addrs.len());
        for &ip in &addrs {
            let obs = match policy.as_ref().map(|p| p.check(ip)) {
                Some(Err(range)) => udn_probe::service::Observation {
                    error: Some((
                        udn_probe::service::FailPhase::Connect,
                        format!("refused: {ip} is a {range} address (not a permitted target)"),
                    )),
                    ..Default::default()
                },
                _ => run_test(&spec, ip).await,
            };
            verdicts.push((ip, spec.evaluate(&obs), obs.error.map(|(_, d)| d)));
        }
        let ServerResult {
            ok,
            response_ms,
            reason,
            detail,
        } = ServerResult::fold(
            verdicts
                .iter()
                .map(|(ip, v, e)| (*ip, v.clone(), e.as_deref())),
        );
        let at = now();
        let change = hyst.handle(ok);
        if let Some(state) = change {
            tracing::info!(%server, service = %spec.name, state = state.as_str(), "service state changed");
        }
        sh.checks
            .get_or_create(&CheckLabels {
                service: spec.name.clone(),
                result: if ok { "ok" } else { "fail" }.into(),
            })
            .inc();
        {
            let mut services = lock(&sh.services);
            let st = services
                .entry((server.clone(), spec.name.clone()))
                .or_insert_with(|| ServiceStatus {
                    server: server.clone(),
                    service: spec.name.clone(),
                    state: UpDown::Unknown,
                    checks: 0,
                    failures: 0,
                    last_reason: String::new(),
                    last_ms: 0.0,
                    last_at: at,
                });
            st.state = hyst.state();
            st.checks += 1;
            st.failures += u64::from(!ok);
            st.last_reason = reason.to_owned();
            st.last_ms = response_ms;
            st.last_at = at;
        }
        let metric = Metric::Service {
            server: server.clone(),
            service: spec.name.clone(),
            sample: ServiceSample {
                ok,
                response_ms,
                at,
            },
        };
        let rec = ProbeRecord {
            ts: at,
            pop: sh.opts.pop.clone(),
            kind: "service".into(),
            target: server.clone(),
            method: spec.name.clone(),
            ok,
            value: f64::from(response_ms),
            detail: match change {
                Some(s) => format!("{detail} state={}", s.as_str()).trim().to_string(),
                None => detail,
            },
        };
        sh.emit(metric, rec);
    }
}

async fn load_loop(sh: Arc<Shared>) {
    // The probe's host load describes only the servers on this host (none unless
    // named): a POP's other servers report their own through `udn loadp`.
    let servers: Vec<String> = sh.opts.load_servers.clone();
    let src = ProcSource::default();
    let mut tick = tokio::time::interval(sh.opts.load_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = now();
        match udn_probe::loadp::read_load(&src) {
            Ok(r) => {
                *lock(&sh.load_percent) = Some(r.percent);
                for server in &servers {
                    let detail = format!(
                        "load1={:.2} cpu={:.1}% mem={:.1}% swap={:.1}% disk={}",
                        r.load1,
                        r.cpu_percent,
                        r.mem_percent,
                        r.swap_percent,
                        r.disks
                            .iter()
                            .map(|d| format!("{}:{:.1}%", d.mount, d.used_percent))
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    sh.emit(
                        Metric::Load {
                            server: server.clone(),
                            percent: r.percent as f32,
                            at,
                            parts: Some(r.parts()),
                        },
                        ProbeRecord {
                            ts: at,
                            pop: sh.opts.pop.clone(),
                            kind: "load".into(),
                            target: server.clone(),
                            method: "loadp".into(),
                            ok: true,
                            value: r.percent,
                            detail,
                        },
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "LOADP reading failed"),
        }
    }
}

/// One item of a `GET /v1/refresh` answer: the client network the result is keyed by
/// and `addr`, the resolver the DNS server saw asking for it. An item without `addr` is
/// not measured (no address inside the network is guessed).
#[derive(Debug, Clone, Deserialize)]
struct RefreshItem {
    client: Cidr,
    #[serde(default)]
    pop: Option<String>,
    #[serde(default)]
    addr: Option<IpAddr>,
}

/// Asks one DNS server for pending latency measurements, forever (one task per DNS
/// server, so a slow one does not hold up the others).
async fn refresh_loop(
    sh: Arc<Shared>,
    base: String,
    tx: tokio::sync::mpsc::Sender<(Cidr, IpAddr)>,
) {
    use udn_probe::agent::fetch::{FetchRequest, Resolver, fetch};
    let mut tick = tokio::time::interval(sh.opts.refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        {
            let url = format!(
                "{}/v1/refresh?pop={}",
                base.trim_end_matches('/'),
                sh.opts.pop
            );
            let Ok(u) = udn_probe::url::HttpUrl::parse(&url) else {
                continue;
            };
            let mut req = FetchRequest::get(u);
            req.timeout = Duration::from_secs(2);
            req.keep = 4 << 20;
            req.tls = sh.opts.report.tls.clone();
            match fetch(&req, &Resolver::system()).await {
                Ok(f) if f.status == 200 => {
                    match serde_json::from_slice::<Vec<RefreshItem>>(&f.body) {
                        Ok(items) => {
                            for it in items {
                                if it.pop.as_deref().is_some_and(|p| p != sh.opts.pop) {
                                    continue;
                                }
                                let Some(addr) = it.addr else {
                                    tracing::debug!(client = %it.client, "refresh item without an address: not measured");
                                    continue;
                                };
                                let _ = tx.try_send((it.client, addr));
                            }
                        }
                        Err(e) => tracing::warn!(%url, error = %e, "bad refresh answer"),
                    }
                }
                Ok(f) => tracing::debug!(%url, status = f.status, "refresh request refused"),
                Err(e) => tracing::debug!(%url, error = %e.error, "refresh request failed"),
            }
        }
    }
}

async fn static_targets_loop(sh: Arc<Shared>, tx: tokio::sync::mpsc::Sender<(Cidr, IpAddr)>) {
    if sh.opts.latency_targets.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(sh.opts.latency_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for c in &sh.opts.latency_targets {
            let _ = tx.send((*c, representative(*c))).await;
        }
    }
}

/// How many latency measurements run at once.
const LATENCY_JOBS: usize = 16;

async fn latency_loop(sh: Arc<Shared>, mut rx: tokio::sync::mpsc::Receiver<(Cidr, IpAddr)>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(LATENCY_JOBS));
    while let Some((client, addr)) = rx.recv().await {
        if !lock(&sh.in_flight).start(client) {
            continue;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            let _permit = permit;
            measure_one(&sh, client, addr).await;
            lock(&sh.in_flight).finish(client);
        });
    }
}

async fn measure_one(sh: &Shared, client: Cidr, addr: IpAddr) {
    // A measurement is the median of a few samples; a sample no method answered is lost.
    let n = sh.opts.latency_samples.max(1);
    let infos: Vec<MethodInfo> = lock(&sh.policy).methods().to_vec();
    let mut rtts: Vec<(std::time::Duration, usize)> = Vec::new();
    let mut tried: Vec<String> = Vec::new();
    for _ in 0..n {
        let attempt = measure_with(&sh.policy, &sh.opts.methods, addr, now).await;
        for (m, o) in attempt.tried() {
            let name = infos.get(*m).map_or("?", |i| i.name.as_str());
            tried.push(match o {
                udn_probe::latency::Outcome::Rtt(d) => format!("{name}={}us", d.as_micros()),
                udn_probe::latency::Outcome::NoResult(r) => format!("{name}: {r}"),
                udn_probe::latency::Outcome::Unavailable(r) => format!("{name} unavailable: {r}"),
            });
        }
        if let Some(s) = attempt.result() {
            rtts.push((s.rtt, s.method));
        }
    }
    let at = now();
    let lost = n - rtts.len() as u8;
    let detail = format!("addr={addr} sent={n} lost={lost} {}", tried.join("; "));
    match median_sample(&mut rtts) {
        Some((rtt, m)) => {
            let method = infos
                .get(m)
                .map_or_else(|| "?".to_string(), |i| i.name.clone());
            let rtt_us = rtt.as_micros().clamp(1, u128::from(u32::MAX - 1)) as u32;
            sh.samples
                .get_or_create(&MethodLabels {
                    method: method.clone(),
                })
                .inc();
            lock(&sh.latency).insert(
                client,
                LatencyStatus {
                    client,
                    addr,
                    rtt_us: Some(rtt_us),
                    method: Some(method.clone()),
                    sent: n,
                    lost,
                    at,
                },
            );
            sh.emit(
                Metric::Latency {
                    client,
                    pop: sh.opts.pop.clone(),
                    sample: LatencySample { rtt_us, at },
                },
                ProbeRecord {
                    ts: at,
                    pop: sh.opts.pop.clone(),
                    kind: "latency".into(),
                    target: client.to_string(),
                    method,
                    ok: true,
                    value: f64::from(rtt_us) / 1000.0,
                    detail,
                },
            );
        }
        None => {
            sh.samples
                .get_or_create(&MethodLabels {
                    method: "none".into(),
                })
                .inc();
            lock(&sh.latency).insert(
                client,
                LatencyStatus {
                    client,
                    addr,
                    rtt_us: None,
                    method: None,
                    sent: n,
                    lost,
                    at,
                },
            );
            // The DNS servers back off before asking for this target again.
            sh.emit(
                Metric::Unreachable {
                    client,
                    pop: sh.opts.pop.clone(),
                    sent: n,
                    at,
                },
                ProbeRecord {
                    ts: at,
                    pop: sh.opts.pop.clone(),
                    kind: "latency".into(),
                    target: client.to_string(),
                    method: "none".into(),
                    ok: false,
                    value: 0.0,
                    detail,
                },
            );
        }
    }
}

async fn status_handler(State(sh): State<Arc<Shared>>) -> axum::Json<Status> {
    axum::Json(sh.status())
}

async fn metrics_handler(State(sh): State<Arc<Shared>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics_text(&sh),
    )
}

/// The OpenMetrics text of the probe's registry and report queues.
fn metrics_text(sh: &Shared) -> String {
    let mut text = String::new();
    if encode(&mut text, &sh.registry).is_err() {
        text.clear();
    }
    // Queue counters, read at scrape time.
    let text = text.trim_end_matches("# EOF\n").to_string();
    let mut extra = String::from(
        "# HELP udn_probe_report_dropped Metrics dropped from a full report queue.\n# TYPE udn_probe_report_dropped counter\n",
    );
    for q in sh.reporter.stats() {
        extra.push_str(&format!(
            "udn_probe_report_dropped_total{{server=\"{}\"}} {}\n",
            q.server, q.dropped
        ));
    }
    extra.push_str("# EOF\n");
    text + &extra
}

/// Aborts a task when dropped (the API's accept loop ends with the agent).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `POST /v1/pagecheck` on a probe without `--pki`: a page check makes the probe fetch
/// any URL, so only the control plane, proven by its certificate, may ask for one.
async fn pagecheck_refused() -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    (
        axum::http::StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": "page checks are served only to the control plane over the admin \
                      listener: start the probe with --pki DIR"
        })),
    )
}

/// Body of `POST /v1/pagecheck`.
#[derive(Debug, Deserialize)]
pub struct PageCheckRequest {
    /// The page URL.
    pub url: String,
    /// Run twice (the second pass with warm DNS).
    #[serde(default)]
    pub repeat: bool,
    /// Hosts components may be fetched from besides the page's host and its owner's
    /// hostnames and origin domains.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

/// Answer of `POST /v1/pagecheck` and of `udn probe check --json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PageCheckAnswer {
    /// The POP that ran it (none from the command line).
    pub pop: Option<String>,
    /// One report per pass.
    pub reports: Vec<PageReport>,
}

async fn pagecheck_handler(
    State(sh): State<Arc<Shared>>,
    axum::Json(req): axum::Json<PageCheckRequest>,
) -> axum::Json<PageCheckAnswer> {
    let net = lock(&sh.network).clone();
    let mut hosts = req.allow_hosts.clone();
    if let Some(owner) = udn_probe::url::HttpUrl::parse(&req.url)
        .ok()
        .and_then(|u| owner_of(&net, &u.host))
    {
        hosts.extend(customer_hostnames(&net, &owner));
    }
    let opts = PageCheckOptions {
        resolve: sh.opts.pagecheck_resolve.clone(),
        dns: sh.opts.pagecheck_dns.clone(),
        policy: Some(Arc::new(net.target_policy.clone())),
        component_hosts: Some(hosts),
        ..PageCheckOptions::default()
    };
    let reports = page_check(&req.url, req.repeat, &opts).await;
    for r in &reports {
        let at = now();
        sh.opts.log.record(LogRecord::Probe(ProbeRecord {
            ts: at,
            pop: sh.opts.pop.clone(),
            kind: "pagecheck".into(),
            target: r.overall.url.clone(),
            method: format!("pass{}", r.overall.pass),
            ok: r.overall.errors == 0,
            value: r.overall.total_us as f64 / 1000.0,
            detail: format!("objects={} bytes={}", r.overall.objects, r.overall.bytes),
        }));
    }
    axum::Json(PageCheckAnswer {
        pop: Some(sh.opts.pop.clone()),
        reports,
    })
}

/// The customer owning `host`: a GTM or CDN hostname or a CDN origin domain.
fn owner_of(net: &Network, host: &str) -> Option<String> {
    let host = udn_core::config::canonical_hostname(host);
    let cfg = &net.config;
    cfg.gtm
        .iter()
        .find(|g| udn_core::config::canonical_hostname(&g.hostname) == host)
        .map(|g| g.customer.clone())
        .or_else(|| {
            cfg.cdn
                .iter()
                .find(|c| {
                    udn_core::config::canonical_hostname(&c.hostname) == host
                        || c.origins
                            .iter()
                            .any(|o| udn_core::config::canonical_hostname(o) == host)
                })
                .map(|c| c.customer.clone())
        })
}

/// Every GTM and CDN hostname and CDN origin domain of `customer`.
fn customer_hostnames(net: &Network, customer: &str) -> Vec<String> {
    let cfg = &net.config;
    let gtm = cfg
        .gtm
        .iter()
        .filter(|g| g.customer == customer)
        .map(|g| g.hostname.clone());
    let cdn = cfg
        .cdn
        .iter()
        .filter(|c| c.customer == customer)
        .flat_map(|c| std::iter::once(c.hostname.clone()).chain(c.origins.iter().cloned()));
    gtm.chain(cdn).collect()
}

/// Reads, parses and compiles a network config file.
fn load_network(path: &std::path::Path) -> anyhow::Result<Arc<Network>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = udn_core::Config::from_toml(&text)
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(Arc::new(cfg.compile().with_context(|| {
        format!("validating {}", path.display())
    })?))
}

fn parse_service_port(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PORT"))?;
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("{s:?}: bad port: {e}"))?;
    Ok((name.to_string(), port))
}

fn build_options(
    a: AgentArgs,
) -> anyhow::Result<(ProbeOptions, Option<Arc<crate::logging::FileLog>>)> {
    let path = a
        .config
        .context("--config is required (or use `udn probe check URL`)")?;
    let net = load_network(&path)?;
    let pop = a.pop.context("--pop NAME is required")?;
    let timeout = Duration::from_millis(a.latency_timeout_ms.max(1));
    let mut methods: Vec<Arc<dyn LatencyMethod>> = Vec::new();
    for m in &a.latency_methods {
        match m.trim() {
            "passive" => {
                if let Some(p) = &a.passive_table {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    methods.push(Arc::new(
                        PassiveTable::parse(&text)
                            .with_context(|| format!("parsing {}", p.display()))?,
                    ));
                }
            }
            "icmp" => methods.push(Arc::new(IcmpEcho { timeout })),
            "dns" => methods.push(Arc::new(DnsQuery {
                port: a.latency_port,
                qname: a.latency_qname.clone(),
                source: a.source_ip,
                timeout,
            })),
            "tcp" => methods.push(Arc::new(TcpConnect {
                port: a.latency_port,
                source: a.source_ip,
                timeout,
            })),
            other => anyhow::bail!("unknown latency method {other:?} (passive, icmp, dns, tcp)"),
        }
    }
    let file_log = match &a.log_dir {
        Some(dir) => Some(Arc::new(crate::logging::FileLog::new(
            dir,
            Role::Probe,
            &pop,
            RotationPolicy {
                max_age: Duration::from_secs(a.log_max_age_secs.max(1)),
                ..RotationPolicy::default()
            },
        )?)),
        None => None,
    };
    let log: Arc<dyn LogSink> = match &file_log {
        Some(f) => f.clone(),
        None => Arc::new(NullSink),
    };
    let mut opts = ProbeOptions::new(net, &pop, a.dns_http);
    opts.http = a.http;
    opts.log = log;
    opts.scope = a.scope;
    opts.methods = methods;
    opts.latency_targets = a.latency_targets;
    opts.latency_interval = Duration::from_secs(a.latency_interval_secs.max(1));
    opts.latency_samples = a.latency_samples.clamp(1, 15);
    opts.refresh_interval = Duration::from_millis(a.refresh_interval_ms.max(10));
    opts.load_interval = Duration::from_secs(a.load_interval_secs.max(1));
    opts.load_servers = a.load_servers;
    opts.report.capacity = a.queue_capacity.max(1);
    opts.service_ports = a.service_ports;
    if file_log.is_some() && a.ops_interval_secs > 0 {
        opts.ops_interval = Some(Duration::from_secs(a.ops_interval_secs));
    }
    opts.pagecheck_dns = a.pagecheck_dns.map(|server| DnsServer {
        source: a.pagecheck_dns_source,
        ..DnsServer::new(server)
    });
    if let Some(d) = &a.pki {
        opts.pki = Some(crate::pki::Credentials::load(d)?);
    }
    Ok((opts, file_log))
}

fn run_check(a: CheckArgs) -> anyhow::Result<()> {
    let mut opts = PageCheckOptions {
        parallel: a.parallel.max(1),
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        ..Default::default()
    };
    opts.dns = a.dns_server.map(|server| DnsServer {
        source: a.dns_source,
        ..DnsServer::new(server)
    });
    for r in &a.resolve {
        let (h, ip) = r
            .rsplit_once(':')
            .with_context(|| format!("--resolve {r:?}: expected HOST:IP"))?;
        let (h, ip) = if let Some((h6, ip6)) = r.split_once(":[") {
            (h6, ip6.trim_end_matches(']'))
        } else {
            (h, ip)
        };
        let ip: IpAddr = ip
            .parse()
            .with_context(|| format!("--resolve {r:?}: bad address"))?;
        opts.resolve.push((h.to_ascii_lowercase(), ip));
    }
    let rt = crate::runtime()?;
    let reports = rt.block_on(page_check(&a.url, a.repeat, &opts));
    let failed = reports
        .first()
        .and_then(|r| r.rows.first())
        .is_none_or(|page| page.err != 0);
    if a.json {
        let answer = PageCheckAnswer { pop: None, reports };
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        for r in &reports {
            print!("{}", r.to_text());
        }
    }
    if failed {
        anyhow::bail!("the page itself could not be fetched");
    }
    Ok(())
}

/// Runs the role until it is stopped (or runs `check`).
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(ProbeCommand::Check(c)) = args.command {
        return run_check(c);
    }
    let config_path = args.agent.config.clone().unwrap_or_default();
    let control_url = args.agent.control.clone();
    let (opts, file_log) = build_options(*args.agent)?;
    let tls = opts.pki.is_some();
    let control = match (control_url, &opts.pki) {
        (Some(url), Some(creds)) => Some(crate::distribution::ControlChannel {
            url,
            credentials: creds.clone(),
            revoked: opts.revoked.clone(),
        }),
        _ => None,
    };
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let handle = start(opts).await?;
        // One JSON line on stdout so scripts and tests learn the bound address.
        println!(
            "{}",
            serde_json::json!({ "http": handle.http.to_string(), "tls": tls })
        );
        let ticker = file_log.clone().map(|log| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if let Err(e) = log.tick(now()) {
                        tracing::error!(error = %e, "completing a probe log file");
                    }
                }
            })
        });
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        // A new version from the control plane is compiled and applied by the loop
        // below (like a SIGHUP); the watcher writes it to the config file only once the
        // probe has loaded it.
        type Applied = tokio::sync::oneshot::Sender<anyhow::Result<()>>;
        let (tx, mut from_control) =
            tokio::sync::mpsc::unbounded_channel::<(udn_core::Config, Applied)>();
        let follow = match control {
            Some(c) => Some(crate::distribution::follow_control(
                c,
                config_path.clone(),
                move |u| {
                    let (done, result) = tokio::sync::oneshot::channel();
                    let sent = tx.send((u.config, done));
                    async move {
                        sent.map_err(|_| anyhow::anyhow!("the probe is stopping"))?;
                        result
                            .await
                            .map_err(|_| anyhow::anyhow!("the probe is stopping"))?
                    }
                },
            )?),
            None => None,
        };
        let mut handle = handle;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    r.context("waiting for Ctrl-C")?;
                    break;
                }
                _ = term.recv() => break,
                Some((cfg, done)) = from_control.recv() => {
                    let r = match cfg.compile() {
                        Ok(net) => handle.reload(Arc::new(net)).await.map(|_| ()),
                        Err(e) => Err(anyhow::Error::from(e).context("validating the configuration")),
                    };
                    if let Err(e) = &r {
                        tracing::error!(error = %format!("{e:#}"), "control-plane config refused; keeping the running config");
                    }
                    let _ = done.send(r);
                }
                _ = hup.recv() => match load_network(&config_path) {
                    Ok(net) => {
                        if let Err(e) = handle.reload(net).await {
                            tracing::error!(error = %format!("{e:#}"), "reload refused");
                        }
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running config"),
                },
            }
        }
        if let Some(f) = follow {
            f.abort();
        }
        handle.shutdown().await;
        if let Some(t) = ticker {
            t.abort();
        }
        if let Some(log) = file_log {
            log.flush_complete().context("completing the probe log")?;
        }
        Ok(())
    })
}
