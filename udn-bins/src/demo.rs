//! `udn demo`: the whole network on loopback with the sample network.
//!
//! It grows with every role: today it compiles the embedded sample network, starts the
//! roles that exist, writes `endpoints.json` into its state directory and runs until
//! Ctrl-C.

use anyhow::Context as _;
use serde::Serialize;
use std::path::{Path, PathBuf};
use udn_core::Config;
use udn_core::network::HostKind;

/// Command-line arguments of `udn demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the demo keeps its state (database, logs, certificates, endpoints.json).
    /// Default: a new directory under the system temp directory, printed at start.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Use this network config instead of the embedded sample.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write endpoints.json and exit instead of running until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

/// What the demo started, for people and scripts (`endpoints.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Endpoints {
    /// The zone apex served.
    pub zone: String,
    /// DNS servers (`ip:port`).
    pub dns: Vec<String>,
    /// GTM hostnames.
    pub gtm_hostnames: Vec<String>,
    /// CDN hostnames.
    pub cdn_hostnames: Vec<String>,
    /// Edges: POP name and HTTP base URL.
    pub edges: Vec<EdgeEndpoint>,
    /// Origin base URLs.
    pub origins: Vec<String>,
    /// CDN URLs of the sample site's page and objects.
    pub sample_urls: Vec<String>,
    /// Control plane URLs.
    pub control: Vec<String>,
    /// Demo logins.
    pub credentials: Vec<Credential>,
    /// Roles started, in start order.
    pub roles: Vec<String>,
}

/// An edge of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeEndpoint {
    /// POP name.
    pub pop: String,
    /// Base URL.
    pub http: String,
}

/// A demo login.
#[derive(Debug, Clone, Serialize)]
pub struct Credential {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// `customer` or `admin`.
    pub role: String,
}

/// Loads the demo network config: `path` or the embedded sample.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("parsing {}", p.display()))
        }
        None => Config::from_toml(udn_core::config::SAMPLE).context("embedded sample config"),
    }
}

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

/// Runs the demo until Ctrl-C (or once, with `--no-wait`).
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = load_config(args.config.as_deref())?;
    let dir = state_dir(args.state_dir)?;
    let ep = base_endpoints(&cfg)?;
    let path = write_endpoints(&dir, &ep)?;
    println!("udn demo: state directory {}", dir.display());
    println!("udn demo: endpoints written to {}", path.display());
    println!(
        "udn demo: network has {} GTM and {} CDN hostnames; roles started: {}",
        ep.gtm_hostnames.len(),
        ep.cdn_hostnames.len(),
        if ep.roles.is_empty() {
            "none yet".to_string()
        } else {
            ep.roles.join(", ")
        }
    );
    if args.no_wait {
        return Ok(());
    }
    println!("udn demo: running; press Ctrl-C to stop");
    let rt = crate::runtime()?;
    rt.block_on(async { tokio::signal::ctrl_c().await.context("waiting for Ctrl-C") })?;
    println!("udn demo: stopped");
    Ok(())
}
