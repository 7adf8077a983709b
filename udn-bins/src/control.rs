//! `udn control`: Control plane. Today: the log collector and the store; the REST API,
//! portal and billing runs mount their routers next to the collector's in [`start`].

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
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, quarantined log files); created on first start.
    #[arg(long, default_value = "udn-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API (log collector `POST /v1/logs`, `/health`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:8480")]
    pub listen: SocketAddr,
    /// Store in PostgreSQL at this URL (`postgres://user@host:port/db`) instead of SQLite.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Days to keep raw records (rollups and the file ledger are kept for good); 0 keeps
    /// raw records for good.
    #[arg(long, default_value_t = 30)]
    pub raw_retention_days: u64,
    /// Caps the SQLite database at this many pages (4 KiB each); when full, files are
    /// answered 503 (and kept by the distributors) until space is made.
    #[arg(long)]
    pub sqlite_max_pages: Option<u64>,
}

impl Args {
    /// Where the store lives.
    pub fn location(&self) -> Location {
        match &self.postgres {
            Some(url) => Location::Postgres { url: url.clone() },
            None => Location::Sqlite {
                dir: self.data_dir.clone(),
                max_pages: self.sqlite_max_pages,
            },
        }
    }
}

/// A running control plane.
pub struct Handle {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// The collector (and through it the store).
    pub collector: Arc<Collector>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Handle {
    /// Stops serving and waits for the server to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("control server task")??;
        Ok(())
    }
}

/// Opens the store, binds `args.listen` and serves the control plane's HTTP API until
/// [`Handle::shutdown`].
pub async fn start(args: &Args) -> anyhow::Result<Handle> {
    let loc = args.location();
    let store = tokio::task::spawn_blocking(move || store::open(&loc))
        .await
        .context("store task")?
        .context("opening the store")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let collector = Arc::new(Collector::new(store, &args.data_dir));

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
            }),
        )
        .merge(collector::router(collector.clone()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
    });

    if args.raw_retention_days > 0 {
        let c = collector.clone();
        let keep = Duration::from_secs(args.raw_retention_days * 86_400);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let c = c.clone();
                let before = udn_core::Timestamp::from_millis(
                    crate::logging::now()
                        .as_millis()
                        .saturating_sub(keep.as_millis() as u64),
                );
                let r = tokio::task::spawn_blocking(move || c.with_store(|s| s.prune_raw(before)))
                    .await;
                match r {
                    Ok(Ok(n)) => tracing::info!(rows = n, "pruned raw records"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "pruning raw records failed"),
                    Err(e) => tracing::warn!(error = %e, "pruning task failed"),
                }
            }
        });
    }

    Ok(Handle {
        addr,
        collector,
        shutdown: tx,
        task,
    })
}

/// Runs the role until it is stopped (Ctrl-C or SIGTERM).
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async move {
        let handle = start(&args).await?;
        // One line on stdout so scripts and tests learn the bound address.
        println!("udn control: listening on {}", handle.addr);
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
