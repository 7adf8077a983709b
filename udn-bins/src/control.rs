//! `udn control`: the control plane. It always runs the log collector and the store
//! (`--listen`); with `--portal-listen` it also serves the customer portal and the REST
//! API over HTTPS (and, with `--api-listen`, the API over plain HTTP for scripts with an
//! API token). DNS servers, edges and probes fetch their configuration from `--listen`
//! over mutual TLS with their instance certificates. The portal's charts read the log
//! store's rollups ([`crate::api::StoreBackend`]).

use crate::collector::{self, Collector};
use crate::store::{self, Location};
use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Command-line arguments of `udn control`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// `billing …`: billing runs, invoices and payments (without it: run the control
    /// plane).
    #[command(subcommand)]
    pub command: Option<ControlCommand>,
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, quarantined log files); created on first start.
    #[arg(long, default_value = "udn-data")]
    pub data_dir: PathBuf,
    /// Address of the machine listener, served over mutual TLS with the control plane's
    /// instance certificate (`--pki`): the log collector (`POST /v1/logs`, `/health`,
    /// `/metrics`) and, with `--portal-listen`, the roles' configuration
    /// (`GET /v1/config` for enrolled dns, edge and probe instances).
    #[arg(long, default_value = "127.0.0.1:8480")]
    pub listen: SocketAddr,
    /// The control plane's own instance credentials (`cert.pem`, `key.pem`, `ca.pem`, as
    /// written by `udn control enroll control NAME`). Default: enrolled on first start
    /// into `<data-dir>/pki/self/` as `control/<hostname>`, valid for the listen
    /// addresses.
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Store in PostgreSQL at this URL (`postgres://user@host:port/db`) instead of SQLite:
    /// the log store, the control plane's own tables (users, sessions, config versions,
    /// purges) and billing's `billing_*` tables all go there.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Keep the log store (raw records, rollups, the file ledger: what the portal's
    /// charts and billing's usage read) in ClickHouse at this HTTP URL
    /// (`http://[user@]host:8123[/database]`, database `udn` by default, password in
    /// `UDN_CLICKHOUSE_PASSWORD`); the control plane's and billing's own tables stay in
    /// SQLite, or PostgreSQL with `--postgres`.
    #[arg(long, conflicts_with = "sqlite_max_pages")]
    pub clickhouse: Option<String>,
    /// Days to keep raw records (rollups and the file ledger are kept for good); 0 keeps
    /// raw records for good.
    #[arg(long, default_value_t = 30)]
    pub raw_retention_days: u64,
    /// Days to keep the per-minute rollups (charts of up to 2 days, and billing's
    /// usage: keep them past the longest period still to be billed); 0 keeps them for
    /// good. At least `--raw-retention-days` when both are set.
    #[arg(long, default_value_t = 0)]
    pub minute_rollup_retention_days: u64,
    /// Days to keep the hourly rollups (charts of up to 90 days); 0 keeps them for good.
    /// At least `--minute-rollup-retention-days` when both are set. The daily rollups
    /// are always kept.
    #[arg(long, default_value_t = 0)]
    pub hour_rollup_retention_days: u64,
    /// Caps the SQLite database at this many pages (4 KiB each); when full, files are
    /// answered 503 (and kept by the distributors) until space is made.
    #[arg(long)]
    pub sqlite_max_pages: Option<u64>,
    /// Store connections kept for queries (portal charts, API series, billing's
    /// usage reads) beside the one that ingests, so neither waits on the other; 0:
    /// queries share the ingesting connection.
    #[arg(long, default_value_t = 4)]
    pub store_readers: usize,
    /// Serve the customer portal and the REST API over HTTPS on this address.
    #[arg(long)]
    pub portal_listen: Option<SocketAddr>,
    /// Also serve the REST API over plain HTTP here (for scripts with an API token; no
    /// password routes; the roles fetch their configuration from `--listen`).
    #[arg(long, requires = "portal_listen")]
    pub api_listen: Option<SocketAddr>,
    /// Portal certificate (PEM); default: a self-signed one generated into the data
    /// directory on first start.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Portal private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Admin login created when the control plane has no users yet (`user:password`).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub bootstrap_admin: Option<String>,
    /// An edge's admin listener for purge and prefill fan-out (`name=https://ip:port`,
    /// reached with this control plane's instance credentials); repeatable.
    #[arg(long = "edge", value_name = "NAME=URL")]
    pub edges: Vec<String>,
    /// A probe's API for page checks (`pop=http://ip:port`); repeatable.
    #[arg(long = "probe", value_name = "POP=URL")]
    pub probes: Vec<String>,
    /// The directory of the zone files the configuration names (`dns.zones[].file`), the
    /// same files the DNS servers load: a version is accepted only if they load with it
    /// (no GTM or CDN hostname colliding with a zone-file name). Default: the directory
    /// of `--config`.
    #[arg(long, value_name = "DIR")]
    pub zone_dir: Option<PathBuf>,
    /// Days a new hostname may stay pending (its TXT challenge not found) before it is
    /// removed and its name is free again; 0 keeps pending hostnames for good.
    #[arg(long, default_value_t = 7)]
    pub pending_hostname_days: u64,
    /// The DNS resolver (`ip:port`) asked for the TXT challenge of a new hostname
    /// (default: the first `nameserver` of /etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    pub challenge_resolver: Option<std::net::SocketAddr>,
    /// How long after a billing period closes the scheduler bills it (a grace for late
    /// logs): `900` (seconds), `30s`, `15m`, `1h`.
    #[arg(long, default_value = "15m", value_parser = parse_grace)]
    pub billing_grace: Duration,
    /// Billing configuration (TOML, as `udn control billing --config`): with it the
    /// scheduler delivers the invoices it issues, and the portal shows its issuer.
    #[arg(long)]
    pub billing_config: Option<PathBuf>,
    /// Do not bill periods when they close (runs by `udn control billing run` or
    /// `POST /v1/billing/runs` only).
    #[arg(long)]
    pub no_billing_scheduler: bool,
    /// Lets prospective customers sign up in the portal (`/signup`): confirmed by an
    /// e-mail link through the `[smtp]` of `--billing-config`, then approved or refused
    /// by an operator (`/signups`).
    #[arg(long, requires = "billing_config", requires = "portal_listen")]
    pub self_signup: bool,
    /// The portal's public base URL, where sign-up confirmation links point (default:
    /// `https://` and the portal's listen address).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
}

impl Args {
    /// The file of `--billing-config`, read, if given.
    fn billing_config(&self) -> anyhow::Result<Option<crate::billing::cli::BillingConfig>> {
        self.billing_config
            .as_deref()
            .map(crate::billing::cli::read_doc::<crate::billing::cli::BillingConfig>)
            .transpose()
            .context("reading --billing-config")
    }

    /// The sign-up settings of `--self-signup`: the SMTP server of `--billing-config`,
    /// the key in `<data-dir>/signup.key`, the public URL.
    fn signup_options(
        &self,
        portal: SocketAddr,
    ) -> anyhow::Result<Option<crate::portal::signup::SignupOptions>> {
        if !self.self_signup {
            return Ok(None);
        }
        let smtp = self.billing_config()?.and_then(|c| c.smtp).context(
            "--self-signup sends confirmation e-mails: give --billing-config an [smtp] section",
        )?;
        let public_url = match &self.public_url {
            Some(u) if u.starts_with("https://") => u.trim_end_matches('/').to_owned(),
            Some(u) => anyhow::bail!("--public-url {u}: the portal is reached over https://"),
            None if portal.port() == 0 => anyhow::bail!(
                "--self-signup with --portal-listen on port 0: give --public-url (the links in the e-mails)"
            ),
            None => format!("https://{portal}"),
        };
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        Ok(Some(crate::portal::signup::SignupOptions {
            public_url,
            smtp,
            key: crate::portal::signup::SignupOptions::load_key(&self.data_dir.join("signup.key"))?,
            link_ttl: Duration::from_secs(24 * 3600),
        }))
    }
}

/// Parses `--billing-grace`: seconds, or a number with `s`, `m` or `h`.
pub fn parse_grace(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected seconds, or a number with s, m or h"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .filter(|v| *v <= 366 * 86_400)
    .ok_or_else(|| format!("{s:?}: expected seconds, or a number with s, m or h, up to a year"))?;
    Ok(Duration::from_secs(secs))
}

/// Subcommands of `udn control`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ControlCommand {
    /// Billing: plans, accounts, usage, billing runs for a period, invoices (text/HTML),
    /// delivery, payments, credit notes and audits (see docs/billing.md). `--db` is the
    /// control plane's SQLite file (`<data-dir>/udn.sqlite`); `--postgres` the URL given
    /// to `udn control --postgres`.
    Billing(Box<crate::billing::BillingArgs>),
    /// Issues an instance certificate for a role (`dns`, `edge`, `probe`, `control`) and
    /// writes `cert.pem`, `key.pem` and `ca.pem` into `--out` (give that directory to the
    /// role as `--pki DIR`). Creates the instance CA in `<data-dir>/pki` on first use.
    Enroll(EnrollArgs),
    /// Revokes every certificate of an instance (by name or fingerprint); the running
    /// control plane and, within one configuration interval, every role refuse it.
    Revoke(RevokeArgs),
    /// Lists the instance certificates issued, with their revocation state.
    Instances(InstancesArgs),
}

/// `udn control enroll ROLE NAME --out DIR`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// The role: control, dns, edge or probe.
    pub role: crate::pki::InstanceRole,
    /// The instance's name (its POP, its DNS server name, ...).
    pub name: String,
    /// Directory to write the credentials into (created).
    #[arg(long)]
    pub out: PathBuf,
    /// A DNS name or IP address the instance serves its admin listener on; repeatable.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// The control plane's data directory (the CA is in its `pki/`).
    #[arg(long, default_value = "udn-data")]
    pub data_dir: PathBuf,
}

/// `udn control revoke NAME|FINGERPRINT`.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// Instance name or certificate fingerprint.
    pub what: String,
    /// Only certificates of this role.
    #[arg(long)]
    pub role: Option<crate::pki::InstanceRole>,
    /// The control plane's data directory (the CA is in its `pki/`).
    #[arg(long, default_value = "udn-data")]
    pub data_dir: PathBuf,
}

/// `udn control instances`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstancesArgs {
    /// The control plane's data directory (the CA is in its `pki/`).
    #[arg(long, default_value = "udn-data")]
    pub data_dir: PathBuf,
}

/// Runs an instance-identity subcommand against `<data_dir>/pki`; returns what to print.
pub fn pki_command(cmd: &ControlCommand) -> anyhow::Result<String> {
    let data_dir = match cmd {
        ControlCommand::Enroll(a) => &a.data_dir,
        ControlCommand::Revoke(a) => &a.data_dir,
        ControlCommand::Instances(a) => &a.data_dir,
        ControlCommand::Billing(_) => anyhow::bail!("not an instance-identity command"),
    };
    let ca = crate::pki::Ca::load_or_create(&data_dir.join("pki"))?;
    match cmd {
        ControlCommand::Enroll(a) => {
            let issued = ca.issue(a.role, &a.name, &a.sans, a.days)?;
            issued.write_to(&a.out)?;
            Ok(format!(
                "enrolled {}/{} (fingerprint {}); credentials in {}\n",
                a.role,
                a.name,
                issued.record.fingerprint,
                a.out.display()
            ))
        }
        ControlCommand::Revoke(a) => {
            let n = ca.revoke(&a.what, a.role)?;
            anyhow::ensure!(n > 0, "no live certificate named {:?}", a.what);
            Ok(format!("revoked {n} certificate(s) of {}\n", a.what))
        }
        ControlCommand::Instances(_) => {
            let mut out = String::new();
            for r in ca.instances()? {
                out.push_str(&format!(
                    "{}/{}\t{}\t{}\n",
                    r.role,
                    r.name,
                    r.fingerprint,
                    if r.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "live"
                    }
                ));
            }
            Ok(out)
        }
        ControlCommand::Billing(_) => anyhow::bail!("not an instance-identity command"),
    }
}

fn split_pair<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.split_once(['=', ':'])
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .with_context(|| format!("{what} must look like NAME=VALUE, got {s:?}"))
}

impl Args {
    /// The portal settings, if `--portal-listen` was given.
    pub fn portal_config(&self) -> anyhow::Result<Option<crate::portal::PortalConfig>> {
        let Some(https) = self.portal_listen else {
            return Ok(None);
        };
        let cert = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::portal::CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => crate::portal::CertSource::SelfSigned {
                dir: self.data_dir.join("tls"),
                names: vec!["localhost".into(), https.ip().to_string()],
            },
        };
        let mut edges = Vec::new();
        for e in &self.edges {
            let (name, url) = split_pair(e, "--edge")?;
            edges.push(crate::api::EdgeApi {
                name: name.into(),
                url: url.into(),
            });
        }
        let mut probes = Vec::new();
        for p in &self.probes {
            let (location, url) = p
                .split_once('=')
                .with_context(|| format!("--probe must look like POP=URL, got {p:?}"))?;
            probes.push(crate::api::ProbeApi {
                location: location.into(),
                url: url.into(),
            });
        }
        let seed_config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let cfg = udn_core::Config::from_toml(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                cfg.compile()
                    .with_context(|| format!("validating {}", path.display()))?;
                Some(cfg)
            }
            None => None,
        };
        let bootstrap_admin = match &self.bootstrap_admin {
            Some(s) => {
                let (u, p) = s
                    .split_once(':')
                    .filter(|(u, p)| !u.is_empty() && !p.is_empty())
                    .context("--bootstrap-admin must look like USER:PASSWORD")?;
                Some((u.to_string(), p.to_string()))
            }
            None => None,
        };
        Ok(Some(crate::portal::PortalConfig {
            https,
            http: self.api_listen,
            cert,
            options: crate::api::ControlOptions {
                edges,
                probes,
                credentials: Some(control_credentials(self)?),
                zone_dir: self.zone_dir.clone().or_else(|| {
                    self.config.as_ref().map(|c| {
                        c.parent()
                            .unwrap_or(std::path::Path::new("."))
                            .to_path_buf()
                    })
                }),
                pending_ttl: Some(Duration::from_secs(self.pending_hostname_days * 86_400)),
                purge_retry_secs: None,
                challenge_resolver: self.challenge_resolver,
                signup: self.signup_options(https)?,
            },
            seed_config,
            bootstrap_admin,
        }))
    }
}

impl Args {
    /// Where the store lives.
    pub fn location(&self) -> Location {
        if let Some(url) = &self.clickhouse {
            return Location::ClickHouse { url: url.clone() };
        }
        match &self.postgres {
            Some(url) => Location::Postgres { url: url.clone() },
            None => Location::Sqlite {
                dir: self.data_dir.clone(),
                max_pages: self.sqlite_max_pages,
            },
        }
    }
}

/// This host's name as an instance name (`control` when it has none that fits).
fn host_instance_name() -> String {
    let raw = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if crate::pki::valid_name(&raw) {
        raw
    } else {
        "control".into()
    }
}

/// How long the log store keeps each kind of row, in days (0: for good): raw records,
/// then per-minute, then hourly rollups, each kept at least as long as the one before
/// (the daily rollups are kept for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `--raw-retention-days`.
    pub raw: u64,
    /// `--minute-rollup-retention-days`.
    pub minute: u64,
    /// `--hour-rollup-retention-days`.
    pub hour: u64,
}

impl Retention {
    /// The retention of the flags, refused when a coarser kind would go before a finer
    /// one (rollups outlive the rows they sum).
    pub fn check(raw: u64, minute: u64, hour: u64) -> anyhow::Result<Retention> {
        let r = Retention { raw, minute, hour };
        // 0 means for good: the longest.
        let days = |d: u64| if d == 0 { u64::MAX } else { d };
        anyhow::ensure!(
            days(minute) >= days(raw),
            "--minute-rollup-retention-days {minute} is shorter than --raw-retention-days \
             {raw}: rollups are kept at least as long as raw records"
        );
        anyhow::ensure!(
            days(hour) >= days(minute),
            "--hour-rollup-retention-days {hour} is shorter than \
             --minute-rollup-retention-days {minute}"
        );
        Ok(r)
    }

    /// Whether anything is ever pruned.
    pub fn any(&self) -> bool {
        self.raw > 0 || self.minute > 0 || self.hour > 0
    }
}

/// The control plane's credentials: `--pki`, else its own enrollment in
/// `<data-dir>/pki/self/` (kept across restarts).
pub fn control_credentials(args: &Args) -> anyhow::Result<crate::pki::Credentials> {
    if let Some(dir) = &args.pki {
        let c = crate::pki::Credentials::load(dir)?;
        anyhow::ensure!(
            c.identity().role == crate::pki::InstanceRole::Control,
            "{}: the certificate is for {}, not a control instance",
            dir.display(),
            c.identity()
        );
        return Ok(c);
    }
    let pki = args.data_dir.join("pki");
    let ca = crate::pki::Ca::load_or_create(&pki)?;
    let mut sans = vec!["localhost".to_string()];
    for a in [Some(args.listen), args.api_listen, args.portal_listen]
        .into_iter()
        .flatten()
    {
        let ip = a.ip().to_string();
        if !sans.contains(&ip) {
            sans.push(ip);
        }
    }
    ca.enroll_into(
        crate::pki::InstanceRole::Control,
        &host_instance_name(),
        &sans,
        &pki.join("self"),
    )
}

/// A running control plane.
pub struct Handle {
    /// The bound collector address (HTTPS, mutual TLS).
    pub addr: SocketAddr,
    /// The control plane's instance credentials.
    pub credentials: crate::pki::Credentials,
    /// The revocation list in force (from `<data-dir>/pki/instances.json`).
    pub revoked: crate::pki::Revocations,
    /// The collector (and through it the store).
    pub collector: Arc<Collector>,
    /// The portal and REST API, if started.
    pub portal: Option<crate::portal::PortalHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// Stops serving and waits for the server to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(p) = self.portal.as_mut() {
            p.shutdown();
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        Ok(())
    }
}

/// Opens the store, binds `args.listen` and serves the control plane's HTTP API until
/// [`Handle::shutdown`].
pub async fn start(args: &Args) -> anyhow::Result<Handle> {
    let portal_cfg = args.portal_config()?;
    let loc = args.location();
    let readers = args.store_readers;
    let (store, readers) = tokio::task::spawn_blocking(move || {
        // The writer first: it runs the migrations the readers then find done.
        let w = store::open(&loc)?;
        let r = (0..readers)
            .map(|_| store::open(&loc))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, store::Error>((w, r))
    })
    .await
    .context("store task")?
    .context("opening the store")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let credentials = control_credentials(args)?;
    let revoked = crate::pki::Revocations::default();
    let pki_dir = args.data_dir.join("pki");
    revoked.replace(crate::pki::revoked_in(&pki_dir).unwrap_or_default());
    let mut tasks = vec![crate::pki::watch_revocations(
        pki_dir,
        revoked.clone(),
        Duration::from_secs(1),
    )];
    let collector = Arc::new(
        Collector::new(store, &args.data_dir)
            .with_readers(readers)
            .with_revocations(revoked.clone()),
    );
    if let Some(cfg) = portal_cfg.as_ref().and_then(|p| p.seed_config.as_ref()) {
        collector.set_config(cfg);
    } else if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg = udn_core::Config::from_toml(&text)
            .with_context(|| format!("parsing {}", path.display()))?;
        collector.set_config(&cfg);
    }

    let mut registry = Registry::default();
    collector.metrics.register(&mut registry);
    let registry = Arc::new(registry);

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let reg = registry.clone();
                async move { collector::render_metrics(&reg) }
            })
            .route_layer(axum::middleware::from_fn(|req, next| {
                crate::pki::require_roles(&[crate::pki::InstanceRole::Control], req, next)
            })),
        )
        .merge(collector::router(collector.clone()));

    let retention = Retention::check(
        args.raw_retention_days,
        args.minute_rollup_retention_days,
        args.hour_rollup_retention_days,
    )?;
    if retention.any() {
        let c = collector.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let c = c.clone();
                let now = crate::logging::now().as_millis();
                let before = move |days: u64| {
                    udn_core::Timestamp::from_millis(now.saturating_sub(days * 86_400_000))
                };
                let r = tokio::task::spawn_blocking(move || {
                    c.with_store(|s| {
                        let mut n = 0;
                        if retention.raw > 0 {
                            n += s.prune_raw(before(retention.raw))?;
                        }
                        if retention.minute > 0 {
                            n += s.prune_rollups(
                                crate::store::Grain::Minute,
                                before(retention.minute),
                            )?;
                        }
                        if retention.hour > 0 {
                            n +=
                                s.prune_rollups(crate::store::Grain::Hour, before(retention.hour))?;
                        }
                        Ok::<u64, crate::store::Error>(n)
                    })
                })
                .await;
                match r {
                    Ok(Ok(n)) => tracing::info!(rows = n, "pruned raw records and rollups"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed"),
                    Err(e) => tracing::warn!(error = %e, "pruning task failed"),
                }
            }
        });
    }

    let portal = match portal_cfg {
        Some(cfg) => {
            // The control plane's own tables answer accounts, configuration versions and
            // deliveries; the log and billing stores answer traffic and billing.
            let control: Arc<dyn crate::api::Backend> = match &args.postgres {
                Some(url) => {
                    let url = url.clone();
                    Arc::new(
                        tokio::task::spawn_blocking(move || crate::api::PgBackend::connect(&url))
                            .await
                            .context("control store task")?
                            .context("opening the control plane's tables in PostgreSQL")?,
                    )
                }
                None => {
                    let db = args.data_dir.join("control.db");
                    Arc::new(
                        crate::api::SqliteBackend::open(&db)
                            .with_context(|| format!("opening {}", db.display()))?,
                    )
                }
            };
            let backend = crate::api::StoreBackend::new(control.clone(), collector.clone());
            // Billing keeps its `billing_*` tables next to the log store: in
            // `<data-dir>/udn.sqlite`, or in the PostgreSQL database with `--postgres`
            // (no SQLite file then); it reads usage from the log store either way.
            let billing = match &args.postgres {
                Some(url) => crate::billing::BillingLocation::Postgres(url.clone()),
                None => crate::billing::BillingLocation::Sqlite(
                    args.data_dir.join(crate::store::sqlite::DB_FILE),
                ),
            };
            let mut backend = backend.with_billing(billing);
            let delivery = args.billing_config()?;
            if let Some(c) = &delivery {
                backend = backend.with_issuer(c.issuer.clone());
            }
            if !args.no_billing_scheduler {
                backend = backend.with_scheduler(crate::billing::schedule::Scheduler::new(
                    args.billing_grace,
                    delivery,
                ));
            }
            let backend = Arc::new(backend);
            if !args.no_billing_scheduler {
                // Each period is billed when it closes plus the grace; ticks are short
                // for a short grace (the demo) and at most a minute apart.
                let every =
                    (args.billing_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
                let b = backend.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let b2 = b.clone();
                        let r = tokio::task::spawn_blocking(move || {
                            crate::api::Billing::billing_tick(&*b2, crate::logging::now())
                        })
                        .await;
                        match r {
                            Ok(Ok(v)) if v.as_array().is_some_and(|a| !a.is_empty()) => {
                                tracing::info!(runs = %v, "billing scheduler")
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!("billing scheduler: {e}"),
                            Err(e) => tracing::warn!("billing scheduler task: {e}"),
                        }
                        tokio::time::sleep(every).await;
                    }
                }));
            }
            // The portal seeds an empty store; only then is the configuration the
            // owners come from.
            let stores = crate::api::Stores {
                traffic: backend.clone(),
                billing: backend.clone(),
                ..crate::api::Stores::of(control.clone())
            };
            let portal = crate::portal::start(stores, cfg).await?;
            // The collector checks HTTP records against the hostnames' owners in the
            // current configuration.
            let (b, c) = (control.clone(), collector.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let (b2, c2) = (b.clone(), c.clone());
                    let r = tokio::task::spawn_blocking(move || {
                        b2.current_config().map(|snap| c2.set_config(&snap.config))
                    })
                    .await;
                    if let Ok(Err(e)) = r {
                        tracing::warn!("collector: reading the configuration: {e}");
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }));
            Some(portal)
        }
        None => None,
    };

    // The machine listener: the collector and, with the portal's store, the roles'
    // configuration channel (`GET /v1/config`, roles dns/edge/probe by certificate).
    let app = match &portal {
        Some(p) => app.merge(crate::api::role_config_router(
            p.state.clone(),
            revoked.clone(),
        )),
        None => app,
    };
    crate::install_crypto();
    let tls = crate::listener::Tls {
        config: credentials.server_config()?,
        revoked: revoked.clone(),
    };
    let (addr, task) = crate::listener::bind_and_serve(
        args.listen,
        app,
        Some(tls),
        crate::listener::Limits::default(),
    )
    .await
    .with_context(|| format!("binding {}", args.listen))?;
    tasks.push(task);

    Ok(Handle {
        addr,
        credentials,
        revoked,
        collector,
        portal,
        tasks,
    })
}

/// Runs the role until it is stopped (Ctrl-C or SIGTERM).
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(ControlCommand::Billing(b)) = &args.command {
        print!("{}", crate::billing::execute(b, crate::logging::now())?);
        return Ok(());
    }
    if let Some(cmd) = &args.command {
        print!("{}", pki_command(cmd)?);
        return Ok(());
    }
    crate::runtime()?.block_on(async move {
        let handle = start(&args).await?;
        // One line on stdout so scripts and tests learn the bound address.
        println!("udn control: listening on {}", handle.addr);
        if let Some(p) = &handle.portal {
            println!("udn control: portal on https://{}", p.https);
            if let Some(h) = p.http {
                println!("udn control: API on http://{h}");
            }
        }
        tracing::info!(
            "collector over mutual TLS as {} (credentials in {})",
            handle.credentials.identity(),
            handle.credentials.dir().display()
        );
        wait_for_signal().await;
        handle.shutdown().await
    })
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod grace_tests {
    use super::{Retention, parse_grace};
    use std::time::Duration;

    #[test]
    fn billing_grace_parses_seconds_minutes_and_hours() {
        assert_eq!(parse_grace("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_grace("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_grace("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_grace("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "m", "15x", "-1", "99999999999999999999h", "9000h"] {
            assert!(parse_grace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rollups_are_kept_at_least_as_long_as_what_they_sum() {
        assert!(Retention::check(30, 0, 0).is_ok());
        assert!(Retention::check(30, 30, 90).is_ok());
        assert!(Retention::check(0, 0, 0).is_ok_and(|r| !r.any()));
        assert!(Retention::check(30, 400, 0).is_ok_and(|r| r.any()));
        // Minute rollups going before raw rows, or hourly before minute ones: refused.
        let e = Retention::check(30, 10, 0).unwrap_err().to_string();
        assert!(e.contains("--minute-rollup-retention-days 10"), "{e}");
        assert!(Retention::check(0, 10, 0).is_err(), "raw kept for good");
        assert!(Retention::check(30, 100, 50).is_err());
        assert!(Retention::check(30, 0, 50).is_err(), "minute kept for good");
    }
}
