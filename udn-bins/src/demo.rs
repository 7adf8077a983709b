//! `udn demo`: the whole network on loopback with the sample network.
//!
//! It starts, in one process and on fixed loopback addresses: the sample origin site
//! (one server per origin of the config), an edge and a probe per POP (each on the POP's
//! own 127.0.0.x address), two DNS servers that are peers of each other, the control
//! plane (log collector + SQLite store in the state directory) with a log distributor
//! per log directory, a world in miniature (simulated regional resolvers whose RTT to
//! each POP differs for real), optional background traffic, and a small drill API to
//! stop a POP or fail an origin. It writes `endpoints.json` into its state directory and
//! runs until Ctrl-C or SIGTERM.

pub mod billing;
mod traffic;

use anyhow::Context as _;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use udn_core::Config;
use udn_core::log::{LogSink, Role, RotationPolicy};
use udn_core::network::HostKind;

/// Command-line arguments of `udn demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A fault drill against a running demo instead of starting one.
    #[command(subcommand)]
    pub command: Option<DemoCommand>,
    /// Where the demo keeps its state (database, logs, endpoints.json).
    /// Default: a new directory under the system temp directory, printed at start.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Use this network config instead of the embedded sample.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write endpoints.json and exit instead of starting the network.
    #[arg(long)]
    pub no_wait: bool,
    /// Generate background traffic: simulated clients per region resolve the CDN
    /// hostname from their region's address and fetch the sample page and its objects
    /// through the answered edge (one page per region every 2 s, loopback only).
    #[arg(long)]
    pub traffic: bool,
}

/// Subcommands of `udn demo`.
#[derive(Debug, clap::Subcommand)]
pub enum DemoCommand {
    /// Run a fault drill against the running demo.
    Drill(DrillArgs),
    /// Bill the demo customer for a period (default: the last full hour) from the
    /// demo's store, and print the invoice.
    Billing(billing::BillingDemoArgs),
}

/// `udn demo drill ACTION TARGET`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: DrillAction,
    /// A POP name (pop-down, pop-up) or an origin server name (origin-fail,
    /// origin-restore).
    pub target: String,
    /// The demo's drill API (default: read from `<state-dir>/endpoints.json`, else
    /// the demo's fixed address).
    #[arg(long)]
    pub api: Option<String>,
    /// State directory of the running demo (to read `endpoints.json`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Fault drills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillAction {
    /// Stop a POP's edge (its probe reports it down; DNS moves away).
    PopDown,
    /// Start the POP's edge again.
    PopUp,
    /// Make an origin server fail its service test.
    OriginFail,
    /// Make it pass again.
    OriginRestore,
}

impl DrillAction {
    /// The name used on the command line and in the drill API.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillAction::PopDown => "pop-down",
            DrillAction::PopUp => "pop-up",
            DrillAction::OriginFail => "origin-fail",
            DrillAction::OriginRestore => "origin-restore",
        }
    }
}

/// The control plane's listeners in `endpoints.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlEndpoints {
    /// The log collector (`POST /v1/logs`; HTTPS with client certificates); `None`
    /// before the control plane started (`--no-wait`).
    #[serde(default)]
    pub collector: Option<String>,
    /// The customer portal (HTTPS, logins).
    #[serde(default)]
    pub portal: Option<String>,
    /// The REST API over HTTPS (`/v1/`; logins and tokens), on the portal's listener.
    #[serde(default)]
    pub api: Option<String>,
    /// The REST API over plain HTTP for machines on the internal network (no password or
    /// credential routes).
    #[serde(default)]
    pub internal_api: Option<String>,
}

/// What the demo started, for people and scripts (`endpoints.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Endpoints {
    /// The zone apex served.
    pub zone: String,
    /// DNS servers (`ip:port`).
    pub dns: Vec<String>,
    /// The DNS servers' HTTP APIs (base URLs).
    #[serde(default)]
    pub dns_http: Vec<String>,
    /// GTM hostnames.
    pub gtm_hostnames: Vec<String>,
    /// CDN hostnames.
    pub cdn_hostnames: Vec<String>,
    /// Edges: POP name and HTTP base URL.
    pub edges: Vec<EdgeEndpoint>,
    /// Probes: POP name and the agent's HTTP API (`/v1/status`, `/metrics`).
    #[serde(default)]
    pub probes: Vec<EdgeEndpoint>,
    /// Origin base URLs.
    pub origins: Vec<String>,
    /// CDN URLs of the sample site's page and objects.
    pub sample_urls: Vec<String>,
    /// CDN URLs of the sample site's HLS streams: the live one's master playlist and the
    /// on-demand one's playlist.
    #[serde(default)]
    pub streams: Vec<String>,
    /// The control plane's URLs, each named by what it is.
    pub control: ControlEndpoints,
    /// Demo logins (filled when the portal lands).
    pub credentials: Vec<Credential>,
    /// The demo's drill API (base URL).
    #[serde(default)]
    pub drill: String,
    /// The control plane's instance credentials (directory with `ca.pem`, `cert.pem`,
    /// `key.pem`): what the edges' admin listeners admit (`curl --cacert --cert --key`).
    #[serde(default)]
    pub control_pki: String,
    /// The simulated regions of the world in miniature.
    #[serde(default)]
    pub regions: Vec<RegionEndpoint>,
    /// Instance credentials the demo enrolled (`control`, `edge-fra`, `dns-dns1`, ...)
    /// and the directory holding each one's `cert.pem`, `key.pem` and `ca.pem`.
    #[serde(default)]
    pub pki: BTreeMap<String, String>,
    /// The SQLite store of the control plane.
    #[serde(default)]
    pub store: String,
    /// Roles started, in start order.
    pub roles: Vec<String>,
}

/// An edge of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeEndpoint {
    /// POP name.
    pub pop: String,
    /// Base URL.
    pub http: String,
    /// Base URL of its admin listener (purge, prefill, metrics; control certificates
    /// only), for edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Its FTP listener as a URL (`ftp://ip:port/`), for edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftp: Option<String>,
}

/// A simulated region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionEndpoint {
    /// Region name.
    pub name: String,
    /// Its resolver's address: query the DNS servers from it (`dig -b`).
    pub resolver: IpAddr,
    /// The POP the injected delays make nearest.
    pub nearest_pop: String,
}

/// A demo login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// `customer` or `admin`.
    pub role: String,
}

/// How often the demo's roles write their operational records (the Operations page
/// fills within seconds; the command line's default is a minute).
const DEMO_OPS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Port of the edges and of the origin site.
pub const HTTP_PORT: u16 = 8080;
/// The DNS servers: peer name, DNS address, HTTP API address.
pub const DNS_SERVERS: [(&str, [u8; 4], u16, u16); 2] = [
    ("dns1", [127, 0, 0, 2], 5353, 8053),
    ("dns2", [127, 0, 0, 3], 5353, 8053),
];
/// Control plane (collector) address.
pub const CONTROL: ([u8; 4], u16) = ([127, 0, 0, 5], 8480);
/// Drill API address.
pub const DRILL: ([u8; 4], u16) = ([127, 0, 0, 5], 8479);
/// Port the simulated resolvers listen on (the probes' DNS-RTT method targets it).
pub const WORLD_PORT: u16 = 5300;
/// Port of the edges' FTP listeners on their POP address (anonymous, read-only; the
/// site from `HOST` or the user name `anonymous@HOSTNAME`).
pub const FTP_PORT: u16 = 2121;
/// The edges' FTP passive data ports (each edge binds them on its own POP address).
pub const FTP_PASSIVE_PORTS: (u16, u16) = (40000, 40049);
/// Port of the edges' admin listeners (HTTPS, control certificates only) on their POP
/// address.
pub const EDGE_ADMIN_PORT: u16 = 9443;
/// The portal (HTTPS) port on the control plane's address.
pub const PORTAL_PORT: u16 = 8443;
/// The REST API's plain-HTTP port on the control plane's address (config distribution).
pub const API_PORT: u16 = 8481;
/// The demo logins: (username, password, role, customer).
pub const LOGINS: [(&str, &str, &str, Option<&str>); 2] = [
    ("admin", "udn-demo-admin", "admin", None),
    ("shop", "udn-demo-shop", "customer", Some("shop")),
];
/// The probes' HTTP API port on each POP's address.
pub const PROBE_PORT: u16 = 8081;

/// A region of the world in miniature: name, resolver address (each in its own /24,
/// the unit of client identity), delay in ms per POP name.
pub type Region = (&'static str, [u8; 4], [(&'static str, u64); 3]);

/// The regions of the demo.
pub const REGIONS: [Region; 3] = [
    (
        "europe",
        [127, 0, 41, 1],
        [("fra", 10), ("nyc", 80), ("sin", 160)],
    ),
    (
        "america",
        [127, 0, 42, 1],
        [("nyc", 10), ("fra", 80), ("sin", 180)],
    ),
    (
        "asia",
        [127, 0, 43, 1],
        [("sin", 15), ("fra", 150), ("nyc", 190)],
    ),
];

pub use crate::config_file::{load_config, load_config_text};

/// Creates (or reuses) the state directory.
pub fn state_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match arg {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("udn-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    Ok(dir)
}

/// The endpoints known from the config alone (before any role starts).
pub fn base_endpoints(cfg: &Config) -> anyhow::Result<Endpoints> {
    let net = cfg.compile().context("compiling the demo network")?;
    let mut ep = Endpoints {
        zone: cfg
            .dns
            .zones
            .first()
            .map(|z| z.apex.clone())
            .unwrap_or_default(),
        ..Default::default()
    };
    for h in &net.hosts {
        match h.kind {
            HostKind::Gtm(_) => ep.gtm_hostnames.push(h.name.clone()),
            HostKind::Cdn(_) => ep.cdn_hostnames.push(h.name.clone()),
        }
    }
    Ok(ep)
}

/// Writes `endpoints.json` atomically (temp file + rename).
pub fn write_endpoints(dir: &Path, ep: &Endpoints) -> anyhow::Result<PathBuf> {
    let path = dir.join("endpoints.json");
    let tmp = dir.join("endpoints.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(ep)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

/// The first address of each POP of `cfg` (the POP's edge and probe bind it).
pub fn pop_addresses(cfg: &Config) -> Vec<(String, IpAddr)> {
    cfg.pops
        .iter()
        .filter_map(|p| {
            let ip = p.servers.first()?.addresses.first()?;
            Some((p.name.clone(), *ip))
        })
        .collect()
}

/// Origin servers of `cfg`: name and first address.
pub fn origin_servers(cfg: &Config) -> Vec<(String, IpAddr)> {
    cfg.origins
        .iter()
        .flat_map(|o| o.servers.iter())
        .filter_map(|s| Some((s.name.clone(), *s.addresses.first()?)))
        .collect()
}

/// How the probe of POP `pop` resolves names in the page checks the portal asks for
/// (the demo's names are in no system resolver): it asks the demo's first DNS server,
/// from the resolver address of the region nearest to the POP, so the GTM answers as it
/// does for that region's users (the CDN hostname with the POP's own edge once the
/// region is measured) and the lookup is timed like a real one.
pub fn pagecheck_dns(pop: &str) -> udn_probe::agent::fetch::DnsServer {
    let (_, [a, b, c, d], port, _) = DNS_SERVERS[0];
    let source = REGIONS
        .iter()
        .filter_map(|(_, addr, delays)| {
            let ms = delays.iter().find(|(p, _)| *p == pop)?.1;
            Some((ms, IpAddr::from(*addr)))
        })
        .min_by_key(|(ms, _)| *ms)
        .map(|(_, ip)| ip);
    udn_probe::agent::fetch::DnsServer {
        source,
        ..udn_probe::agent::fetch::DnsServer::new(SocketAddr::from(([a, b, c, d], port)))
    }
}

/// Runs `udn demo` (or a drill).
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(DemoCommand::Drill(d)) => return drill(d),
        Some(DemoCommand::Billing(b)) => {
            print!("{}", billing::run(b)?);
            return Ok(());
        }
        None => {}
    }
    let (mut cfg, text) = load_config_text(args.config.as_deref())?;
    let dir = state_dir(args.state_dir)?;
    if args.no_wait {
        let ep = base_endpoints(&cfg)?;
        let path = write_endpoints(&dir, &ep)?;
        println!("udn demo: endpoints written to {}", path.display());
        return Ok(());
    }
    // The two DNS servers are peers of each other.
    if cfg.dns.peers.is_empty() {
        for (name, ip, port, _) in DNS_SERVERS {
            cfg.dns.peers.push(udn_core::config::PeerConfig {
                name: name.into(),
                addr: sa(ip, port),
            });
        }
    }
    let net_file = dir.join("network.toml");
    std::fs::write(&net_file, &text).with_context(|| format!("writing {}", net_file.display()))?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let demo = start(cfg, &net_file, &dir, args.traffic).await?;
        let path = write_endpoints(&dir, &demo.endpoints)?;
        print_tour(&dir, &path, &demo.endpoints);
        crate::control::wait_for_signal().await;
        println!("udn demo: stopping");
        demo.shutdown().await;
        println!("udn demo: stopped");
        Ok(())
    })
}

/// The shared state of the drill API.
struct Drills {
    edges: tokio::sync::Mutex<BTreeMap<String, Option<crate::edge::Handle>>>,
    edge_opts: BTreeMap<String, crate::edge::Options>,
    origins: BTreeMap<String, Arc<crate::origin::Origin>>,
}

/// A running demo.
pub struct Demo {
    /// What it started.
    pub endpoints: Endpoints,
    drills: Arc<Drills>,
    origins: Vec<crate::origin::Handle>,
    dns: Vec<Arc<crate::dns::Handle>>,
    world: Vec<crate::world::Handle>,
    probes: Vec<crate::probe::ProbeHandle>,
    probe_logs: Vec<(Arc<crate::logging::FileLog>, tokio::task::JoinHandle<()>)>,
    distributors: Vec<crate::distributor::Handle>,
    control: crate::control::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drill_stop: tokio::sync::watch::Sender<bool>,
}

/// Starts every role of the demo on the current runtime.
pub async fn start(
    cfg: Config,
    net_file: &Path,
    dir: &Path,
    traffic: bool,
) -> anyhow::Result<Demo> {
    let mut ep = base_endpoints(&cfg)?;
    let net = Arc::new(cfg.compile().context("compiling the demo network")?);
    let logs = dir.join("logs");

    // Control plane: collector + SQLite store.
    let control_dir = dir.join("control");
    let edge_apis = cfg
        .pops
        .iter()
        .filter_map(|p| {
            let srv = p.servers.first()?;
            let ip = srv.addresses.first()?;
            Some(format!(
                "{}=https://{}",
                srv.name,
                SocketAddr::new(*ip, EDGE_ADMIN_PORT)
            ))
        })
        .collect();
    let probe_apis = pop_addresses(&cfg)
        .into_iter()
        .map(|(pop, ip)| format!("{pop}=https://{}", SocketAddr::new(ip, PROBE_PORT)))
        .collect();
    // The instance CA: each DNS server and probe gets its certificate (its address as
    // SAN) in <state>/pki/<role>-<name>/; the control plane enrolls itself.
    let ca = crate::pki::Ca::load_or_create(&control_dir.join("pki"))
        .context("the demo's instance CA")?;
    let enroll = |role: crate::pki::InstanceRole, name: &str, ip: IpAddr| {
        ca.enroll_into(
            role,
            name,
            &[ip.to_string()],
            &dir.join("pki").join(format!("{role}-{name}")),
        )
        .with_context(|| format!("enrolling {role} {name}"))
    };
    let control = crate::control::start(&crate::control::Args {
        command: None,
        config: Some(net_file.to_path_buf()),
        data_dir: control_dir.clone(),
        listen: sa(CONTROL.0, CONTROL.1),
        pki: None,
        postgres: None,
        clickhouse: None,
        raw_retention_days: 30,
        minute_rollup_retention_days: 0,
        hour_rollup_retention_days: 0,
        sqlite_max_pages: None,
        store_readers: 2,
        portal_listen: Some(sa(CONTROL.0, PORTAL_PORT)),
        api_listen: Some(sa(CONTROL.0, API_PORT)),
        tls_cert: None,
        tls_key: None,
        bootstrap_admin: Some(format!("{}:{}", LOGINS[0].0, LOGINS[0].1)),
        edges: edge_apis,
        probes: probe_apis,
        zone_dir: None,
        pending_hostname_days: 7,
        challenge_resolver: None,
        // A short grace: the scheduler bills the last full hour within seconds of the
        // demo's start (and each hour a few seconds after it closes).
        billing_grace: billing::DEMO_GRACE,
        billing_config: Some(billing::write_config(&control_dir)?),
        no_billing_scheduler: false,
        self_signup: false,
        public_url: None,
    })
    .await
    .context("starting the control plane")?;
    // The demo plan and an hourly account per demo customer, subscribed since the
    // epoch: the scheduler's first tick bills the previous hour.
    billing::seed(&control_dir.join(crate::store::sqlite::DB_FILE), &cfg)
        .context("the demo's billing accounts")?;
    let collector_url = format!("https://{}", control.addr);
    ep.control.collector = Some(collector_url.clone());
    ep.pki.insert(
        "control".into(),
        control.credentials.dir().display().to_string(),
    );
    // The instance CA is the control plane's (`<state>/control/pki`); every role the
    // demo runs is enrolled from it into `<state>/pki/<role>-<name>/`.
    ep.store = control_dir
        .join(crate::store::sqlite::DB_FILE)
        .display()
        .to_string();
    // The customer portal and its logins.
    if let Some(portal) = &control.portal {
        ep.control.portal = Some(format!("https://{}/", portal.https));
        ep.control.api = Some(format!("https://{}/v1/", portal.https));
        ep.control.internal_api = portal.http.map(|api| format!("http://{api}/v1/"));
        let backend = portal.state.stores().accounts.clone();
        let existing: Vec<String> = backend
            .users()
            .context("listing portal users")?
            .into_iter()
            .map(|u| u.username)
            .collect();
        for (user, password, role, customer) in LOGINS {
            if !existing.iter().any(|u| u == user) {
                let r = if role == "admin" {
                    crate::api::Role::Admin
                } else {
                    crate::api::Role::Customer
                };
                backend
                    .create_user(user, password, r, customer)
                    .with_context(|| format!("creating the demo login {user}"))?;
            }
            ep.credentials.push(Credential {
                username: user.into(),
                password: password.into(),
                role: role.into(),
            });
        }
    }
    ep.roles.push("control".into());

    // The sample origin site, one server per origin of the config.
    let mut origins = Vec::new();
    let mut origin_states = BTreeMap::new();
    for (name, ip) in origin_servers(&cfg) {
        let h = crate::origin::start(&crate::origin::Args {
            listen: SocketAddr::new(ip, HTTP_PORT),
            name: name.clone(),
            max_age: 60,
        })
        .await
        .with_context(|| format!("starting origin {name}"))?;
        ep.origins.push(format!("http://{}", h.addr));
        origin_states.insert(name, h.origin.clone());
        origins.push(h);
    }
    ep.roles.push("origin".into());

    // Two DNS servers, peers of each other.
    let mut dns = Vec::new();
    for (name, ip, port, http) in DNS_SERVERS {
        let mut o = crate::dns::Options::new(crate::dns::Source::Config {
            config: Box::new(cfg.clone()),
            base: dir.to_path_buf(),
        });
        o.listen = vec![sa(ip, port)];
        o.http = Some(sa(ip, http));
        // The demo's roles share the control plane's revocation list (read from
        // `instances.json` every second): `udn control revoke` reaches them at once.
        o.revoked = control.revoked.clone();
        o.pki = Some(enroll(
            crate::pki::InstanceRole::Dns,
            name,
            IpAddr::from(ip),
        )?);
        o.name = Some(name.into());
        o.log_dir = Some(logs.join("dns").join(name));
        o.ops_interval = Some(DEMO_OPS_INTERVAL);
        let h = crate::dns::start(o)
            .await
            .with_context(|| format!("starting DNS server {name}"))?;
        ep.dns.extend(h.dns.iter().map(|a| a.to_string()));
        if let Some(a) = h.http {
            ep.dns_http.push(format!("https://{a}"));
        }
        dns.push(h);
    }
    ep.roles.push("dns".into());

    // The world in miniature.
    let pops = pop_addresses(&cfg);
    let mut world = Vec::new();
    for (region, ip, delays) in REGIONS {
        let mut d = HashMap::new();
        for (pop, ms) in delays {
            if let Some((_, a)) = pops.iter().find(|(p, _)| p == pop) {
                d.insert(*a, Duration::from_millis(ms));
            }
        }
        let nearest = delays
            .iter()
            .filter(|(p, _)| pops.iter().any(|(q, _)| q == p))
            .min_by_key(|(_, ms)| *ms)
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let h = crate::world::start(crate::world::Resolver {
            region: region.into(),
            listen: sa(ip, WORLD_PORT),
            delays: d,
            default_delay: Duration::from_millis(250),
        })
        .await?;
        ep.regions.push(RegionEndpoint {
            name: region.into(),
            resolver: h.addr.ip(),
            nearest_pop: nearest,
        });
        world.push(h);
    }
    ep.roles.push("world".into());

    // An edge and a probe per POP; each edge enrolled with the control plane's CA.
    let ca = crate::pki::Ca::load_or_create(&control_dir.join("pki"))?;
    ep.control_pki = control_dir.join("pki").join("self").display().to_string();
    let mut edges = BTreeMap::new();
    let mut edge_opts = BTreeMap::new();
    let mut probes = Vec::new();
    let mut probe_logs = Vec::new();
    for (pop, ip) in &pops {
        let edge_pki = dir.join("pki").join(format!("edge-{pop}"));
        ca.enroll_into(
            crate::pki::InstanceRole::Edge,
            pop,
            &[ip.to_string()],
            &edge_pki,
        )
        .with_context(|| format!("enrolling the edge of {pop}"))?;
        let o = crate::edge::Options {
            config: Some(net_file.to_path_buf()),
            pop: pop.clone(),
            origin: None,
            listen: SocketAddr::new(*ip, HTTP_PORT),
            tls_listen: None,
            tls_certs: Vec::new(),
            memory_mb: 64,
            memory_object_kb: None,
            disk_dir: None,
            disk_mb: 0,
            admin_listen: Some(SocketAddr::new(*ip, EDGE_ADMIN_PORT)),
            ftp_listen: Some(SocketAddr::new(*ip, FTP_PORT)),
            ftp_passive_ports: FTP_PASSIVE_PORTS,
            pki: Some(edge_pki),
            log_dir: Some(logs.join("edge").join(pop)),
            ops_interval_secs: DEMO_OPS_INTERVAL.as_secs(),
            check_interval_secs: None,
            origin_timeout_ms: 5_000,
            revoked: control.revoked.clone(),
            ..Default::default()
        };
        let h = crate::edge::start(o.clone())
            .await
            .with_context(|| format!("starting the edge of {pop}"))?;
        ep.edges.push(EdgeEndpoint {
            pop: pop.clone(),
            http: format!("http://{}", h.http_addr()),
            admin: h.admin_addr.map(|a| format!("https://{a}")),
            ftp: h.ftp_addr().map(|a| format!("ftp://{a}/")),
        });
        edges.insert(pop.clone(), Some(h));
        edge_opts.insert(pop.clone(), o);

        let log = Arc::new(crate::logging::FileLog::new(
            &logs.join("probe").join(pop),
            Role::Probe,
            pop,
            RotationPolicy::default(),
        )?);
        let ticker = crate::logging::spawn_ticker(log.clone(), Duration::from_secs(1));
        let mut po = crate::probe::ProbeOptions::new(net.clone(), pop, ep.dns_http.clone());
        po.log = log.clone() as Arc<dyn LogSink>;
        po.ops_interval = Some(DEMO_OPS_INTERVAL);
        po.http = SocketAddr::new(*ip, PROBE_PORT);
        // Only the DNS-query method: ICMP and TCP to a loopback resolver would measure
        // the kernel, not the world's injected delays.
        po.methods =
            crate::probe::default_methods(WORLD_PORT, ".", Some(*ip), Duration::from_millis(1000))
                .into_iter()
                .filter(|m| m.info().name == "dns")
                .collect();
        po.service_ports = cfg
            .services
            .iter()
            .map(|s| (s.name.clone(), HTTP_PORT))
            .collect();
        po.pagecheck_dns = Some(pagecheck_dns(pop));
        po.pki = Some(enroll(crate::pki::InstanceRole::Probe, pop, *ip)?);
        po.revoked = control.revoked.clone();
        let p = crate::probe::start(po)
            .await
            .with_context(|| format!("starting the probe of {pop}"))?;
        ep.probes.push(EdgeEndpoint {
            pop: pop.clone(),
            http: format!("https://{}", p.http),
            admin: None,
            ftp: None,
        });
        probes.push(p);
        probe_logs.push((log, ticker));
    }
    ep.roles.push("edge".into());
    ep.roles.push("probe".into());

    // Sample URLs through the CDN.
    if let Some(host) = ep.cdn_hostnames.first() {
        for p in crate::origin::site_paths() {
            ep.sample_urls.push(format!("http://{host}{p}"));
        }
        for p in ["/live/master.m3u8", "/vod/index.m3u8"] {
            ep.streams.push(format!("http://{host}{p}"));
        }
    }

    // A distributor per log directory.
    let mut distributors = Vec::new();
    let mut log_dirs = Vec::new();
    for (name, ..) in DNS_SERVERS {
        log_dirs.push((
            crate::pki::InstanceRole::Dns,
            name.to_string(),
            logs.join("dns").join(name),
        ));
    }
    for (pop, _) in &pops {
        log_dirs.push((
            crate::pki::InstanceRole::Edge,
            pop.to_string(),
            logs.join("edge").join(pop),
        ));
        log_dirs.push((
            crate::pki::InstanceRole::Probe,
            pop.to_string(),
            logs.join("probe").join(pop),
        ));
    }
    for (role, name, d) in log_dirs {
        std::fs::create_dir_all(&d)?;
        let key = format!("{role}-{name}");
        let pki_dir = dir.join("pki").join(&key);
        ca.enroll_into(role, &name, &[], &pki_dir)
            .with_context(|| format!("enrolling {role}/{name}"))?;
        ep.pki.insert(key, pki_dir.display().to_string());
        distributors.push(
            crate::distributor::start(&crate::distributor::Args {
                dir: d,
                collectors: vec![collector_url.clone()],
                pki: Some(pki_dir),
                poll_ms: 500,
                min_backoff_ms: 200,
                max_backoff_ms: 5_000,
                parallel: 1,
                metrics: None,
                drain: false,
            })
            .await?,
        );
    }
    ep.roles.push("distribute".into());

    // The drill API.
    let drills = Arc::new(Drills {
        edges: tokio::sync::Mutex::new(edges),
        edge_opts,
        origins: origin_states,
    });
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/drill", get(drill_status))
        .route("/v1/drill/{action}/{target}", post(drill_handler))
        .with_state(drills.clone());
    let listener = tokio::net::TcpListener::bind(sa(DRILL.0, DRILL.1))
        .await
        .context("binding the drill API")?;
    ep.drill = format!("http://{}", listener.local_addr()?);
    let (drill_stop, mut rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "drill API stopped");
        }
    })];

    if traffic {
        tasks.extend(traffic::spawn(&ep));
        ep.roles.push("traffic".into());
    }

    Ok(Demo {
        endpoints: ep,
        drills,
        origins,
        dns,
        world,
        probes,
        probe_logs,
        distributors,
        control,
        tasks,
        drill_stop,
    })
}

impl Demo {
    /// Stops every role and completes the open log files (the distributors ship them
    /// at the next start).
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.drill_stop.send(true);
        for p in self.probes {
            p.shutdown().await;
        }
        let edges = std::mem::take(&mut *self.drills.edges.lock().await);
        for h in edges.into_values().flatten() {
            h.shutdown().await;
        }
        for d in &self.dns {
            let d = d.clone();
            let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
        }
        for (log, ticker) in self.probe_logs {
            ticker.abort();
            let _ = log.flush_complete();
        }
        // Give the distributors a moment to ship the files just completed.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for d in self.distributors {
            d.shutdown().await;
        }
        for w in self.world {
            w.stop();
        }
        for o in self.origins {
            o.stop();
        }
        let _ = self.control.shutdown().await;
    }
}

#[derive(Serialize)]
struct DrillStatus {
    pops_down: Vec<String>,
    origins_failing: Vec<String>,
}

async fn drill_status(AxState(d): AxState<Arc<Drills>>) -> axum::Json<DrillStatus> {
    let edges = d.edges.lock().await;
    axum::Json(DrillStatus {
        pops_down: edges
            .iter()
            .filter(|(_, h)| h.is_none())
            .map(|(p, _)| p.clone())
            .collect(),
        origins_failing: d
            .origins
            .iter()
            .filter(|(_, o)| o.is_failing())
            .map(|(n, _)| n.clone())
            .collect(),
    })
}

async fn drill_handler(
    AxState(d): AxState<Arc<Drills>>,
    UrlPath((action, target)): UrlPath<(String, String)>,
) -> (StatusCode, String) {
    match apply_drill(&d, &action, &target).await {
        Ok(msg) => (StatusCode::OK, msg),
        Err((code, msg)) => (code, msg),
    }
}

async fn apply_drill(
    d: &Drills,
    action: &str,
    target: &str,
) -> Result<String, (StatusCode, String)> {
    let not_found = |what: &str| {
        (
            StatusCode::NOT_FOUND,
            format!("no {what} named {target:?}\n"),
        )
    };
    match action {
        "pop-down" => {
            let mut edges = d.edges.lock().await;
            let slot = edges.get_mut(target).ok_or_else(|| not_found("POP"))?;
            match slot.take() {
                Some(h) => {
                    h.shutdown().await;
                    Ok(format!("POP {target} is down (its edge stopped)\n"))
                }
                None => Ok(format!("POP {target} was already down\n")),
            }
        }
        "pop-up" => {
            let mut edges = d.edges.lock().await;
            let slot = edges.get_mut(target).ok_or_else(|| not_found("POP"))?;
            if slot.is_some() {
                return Ok(format!("POP {target} is already up\n"));
            }
            let opts = d
                .edge_opts
                .get(target)
                .cloned()
                .ok_or_else(|| not_found("POP"))?;
            let h = crate::edge::start(opts)
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")))?;
            *slot = Some(h);
            Ok(format!("POP {target} is up (its edge started)\n"))
        }
        "origin-fail" | "origin-restore" => {
            let o = d
                .origins
                .get(target)
                .ok_or_else(|| not_found("origin server"))?;
            let fail = action == "origin-fail";
            o.set_failing(fail);
            Ok(format!(
                "origin {target} {}\n",
                if fail {
                    "now fails its service test"
                } else {
                    "passes its service test again"
                }
            ))
        }
        other => Err((
            StatusCode::NOT_FOUND,
            format!("unknown drill {other:?} (pop-down, pop-up, origin-fail, origin-restore)\n"),
        )),
    }
}

/// `udn demo drill`: asks the running demo's drill API.
fn drill(a: DrillArgs) -> anyhow::Result<()> {
    let api = match (&a.api, &a.state_dir) {
        (Some(u), _) => u.clone(),
        (None, Some(dir)) => {
            let p = dir.join("endpoints.json");
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let ep: Endpoints =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            ep.drill
        }
        (None, None) => format!("http://{}", sa(DRILL.0, DRILL.1)),
    };
    let url = format!(
        "{}/v1/drill/{}/{}",
        api.trim_end_matches('/'),
        a.action.as_str(),
        a.target
    );
    crate::runtime()?.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("POST {url} (is `udn demo` running?)"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "drill refused ({status}): {}",
            body.trim()
        );
        print!("{body}");
        Ok(())
    })
}

fn print_tour(dir: &Path, path: &Path, ep: &Endpoints) {
    println!("udn demo: state directory {}", dir.display());
    println!("udn demo: endpoints written to {}", path.display());
    println!("udn demo: roles started: {}", ep.roles.join(", "));
    println!(
        "udn demo: instance credentials (cert.pem, key.pem, ca.pem; CA in {}/control/pki): {}",
        dir.display(),
        ep.pki
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(portal) = &ep.control.portal {
        let logins: Vec<String> = ep
            .credentials
            .iter()
            .map(|c| format!("{} / {} ({})", c.username, c.password, c.role))
            .collect();
        println!(
            "udn demo: portal {portal} (self-signed certificate); logins: {}",
            logins.join(", ")
        );
    }
    let (dns_ip, dns_port) = ep
        .dns
        .first()
        .and_then(|d| d.parse::<SocketAddr>().ok())
        .map(|a| (a.ip().to_string(), a.port()))
        .unwrap_or_default();
    let cdn = ep.cdn_hostnames.first().cloned().unwrap_or_default();
    let gtm = ep.gtm_hostnames.first().cloned().unwrap_or_default();
    println!();
    println!("Try (the probes measure each region within a few seconds of its first query):");
    for r in &ep.regions {
        println!(
            "  dig +short -b {} @{dns_ip} -p {dns_port} {cdn}    # {} -> nearest POP {}",
            r.resolver, r.name, r.nearest_pop
        );
    }
    println!(
        "  dig +short -b {} @{dns_ip} -p {dns_port} {gtm}",
        ep.regions
            .first()
            .map(|r| r.resolver.to_string())
            .unwrap_or_default()
    );
    if let Some(e) = ep.edges.first() {
        let host_port = e.http.trim_start_matches("http://");
        println!(
            "  curl -si --resolve {cdn}:{HTTP_PORT}:{} http://{cdn}:{HTTP_PORT}/index.html | grep -i x-cache",
            host_port.split(':').next().unwrap_or("")
        );
        if let Some(ftp) = &e.ftp {
            println!("  curl -s -u anonymous@{cdn}: {ftp}index.html | head -3");
        }
        if let Some(admin) = &e.admin {
            let d = &ep.control_pki;
            println!(
                "  curl -s --cacert {d}/ca.pem --cert {d}/cert.pem --key {d}/key.pem -d '{{\"scope\":\"url\",\"target\":\"http://{cdn}/index.html\",\"seq\":1}}' {admin}/v1/purge",
            );
        }
    }
    println!(
        "  udn demo drill pop-down fra --state-dir {}",
        dir.display()
    );
    println!("  udn demo drill pop-up fra --state-dir {}", dir.display());
    println!(
        "  udn demo drill origin-fail shop-east-1 --state-dir {}",
        dir.display()
    );
    println!(
        "  udn demo drill origin-restore shop-east-1 --state-dir {}",
        dir.display()
    );
    let c = &ep.control;
    for (what, url) in [
        ("log collector", &c.collector),
        ("portal", &c.portal),
        ("API", &c.api),
        ("internal API", &c.internal_api),
    ] {
        if let Some(u) = url {
            println!("  {what}: {u}");
        }
    }
    println!("udn demo: running; press Ctrl-C to stop");
}
