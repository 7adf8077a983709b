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
    /// Bearer token for POST /v1/purge and /v1/prefill (else $UDN_PURGE_TOKEN; without
    /// either, both are refused).
    #[arg(long)]
    pub purge_token: Option<String>,
    /// Access-log directory (rotated JSON Lines); no access log without it.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Revalidate content older than this with the origin before serving (overrides
    /// the config's check_interval_secs in single-origin mode).
    #[arg(long)]
    pub check_interval_secs: Option<u64>,
    /// Origin response-header timeout in milliseconds (then 504, or stale-if-error).
    #[arg(long, default_value_t = 10_000)]
    pub origin_timeout_ms: u64,
}

/// A running edge started by [`start`].
pub struct Handle {
    /// The edge server (addresses, the `Edge` itself).
    pub server: EdgeHandle,
    log: Option<Arc<crate::logging::FileLog>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// The plain-HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr
    }

    /// Stops the edge and completes the open access-log file.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(l) = self.log {
            let _ = l.flush_complete();
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

/// Builds and starts an edge from `args`: binds its addresses and returns them with a
/// shutdown handle (the demo calls this once per POP).
pub async fn start(args: Options) -> anyhow::Result<Handle> {
    let router = match (&args.origin, &args.config) {
        (Some(o), _) => Router::single(o)
            .with_context(|| format!("--origin {o}"))?
            .with_check_interval(args.check_interval_secs.map(Duration::from_secs)),
        (None, Some(path)) => {
            let cfg = crate::demo::load_config(Some(path))?;
            cfg.compile().context("validating the network config")?;
            Router::for_pop(&cfg, &args.pop).context("building the edge routes")?
        }
        (None, None) => anyhow::bail!("udn edge needs --origin URL or --config FILE"),
    };
    let (sink, log): (Arc<dyn LogSink>, _) = match &args.log_dir {
        Some(dir) => {
            let l = Arc::new(crate::logging::FileLog::new(
                dir,
                Role::Edge,
                &args.pop,
                RotationPolicy::default(),
            )?);
            (l.clone(), Some(l))
        }
        None => (Arc::new(NullSink), None),
    };
    let mut b = Edge::builder(router)
        .pop(&args.pop)
        .memory_bytes(args.memory_mb << 20)
        .origin_timeout(Duration::from_millis(args.origin_timeout_ms))
        .log_sink(sink)
        .clock(Arc::new(crate::logging::now));
    if let Some(kb) = args.memory_object_kb {
        b = b.memory_object_max(kb << 10);
    }
    if let Some(dir) = &args.disk_dir {
        b = b.disk(dir.clone(), args.disk_mb << 20);
    }
    let token = args
        .purge_token
        .clone()
        .or_else(|| std::env::var("UDN_PURGE_TOKEN").ok());
    if let Some(t) = &token {
        b = b.purge_token(t);
    }
    let edge = b.build().context("starting the edge cache")?;
    let https = match args.tls_listen {
        Some(addr) => {
            let certs = args
                .tls_certs
                .iter()
                .map(|s| parse_cert(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(
                !certs.is_empty(),
                "--tls-listen needs at least one --tls-cert"
            );
            Some((
                addr,
                server::tls_config(&certs).context("loading TLS certificates")?,
            ))
        }
        None => None,
    };
    let server = server::start(edge, args.listen, https)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ticker = log.clone().map(|l| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = l.tick(crate::logging::now());
            }
        })
    });
    Ok(Handle {
        server,
        log,
        ticker,
    })
}

/// Runs the role until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let h = start(*args.opts).await?;
        println!("udn edge: listening on http://{}", h.server.http_addr);
        if let Some(a) = h.server.https_addr {
            println!("udn edge: listening on https://{a}");
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        h.shutdown().await;
        Ok(())
    })
}
