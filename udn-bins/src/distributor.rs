//! The log distributor: ships complete log files (`*.jsonl`) from a role's log directory
//! to collectors and deletes each only after a collector acknowledged it.
//!
//! Run it as `udn distribute --dir DIR --collector URL [--collector URL ...]` next to
//! any role, or embed it in a role with [`start`]. Per file:
//! - the file goes to the next collector in round-robin order; if that one fails
//!   (connection refused, timeout, 5xx), to the next one (fail-over); when every
//!   collector failed, the distributor waits with exponential backoff and tries again.
//!   A collector that is down costs delay, never data;
//! - `2xx` (inserted, or "already have it"): the file is deleted;
//! - `422` (the collector rejected and quarantined it), `403` (this instance may not
//!   ship this file: another role's records) or `413` (too large for the
//!   collector): the file is moved to `DIR/rejected/` with a `.reason` file, never
//!   deleted and never retried.
//!
//! Files still being written end in `.jsonl.open` and are never touched.

use crate::collector::{CHECKSUM_HEADER, FILE_NAME_HEADER, sha256_hex};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Command-line arguments of `udn distribute`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Log directory to watch (the role's `FileLog` directory).
    #[arg(long)]
    pub dir: PathBuf,
    /// Collector base URL (`https://host:port`); repeat for fail-over and round-robin.
    #[arg(long = "collector", required = true)]
    pub collectors: Vec<String>,
    /// The instance credentials presented to the collectors (`cert.pem`, `key.pem`,
    /// `ca.pem` from `udn control enroll ROLE NAME`); the collector takes only the
    /// records of this instance's role.
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// How often to look for complete files, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// First retry delay after every collector failed, in milliseconds (doubles up to
    /// `--max-backoff-ms`).
    #[arg(long, default_value_t = 200)]
    pub min_backoff_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub max_backoff_ms: u64,
    /// Files shipped at once.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Serve `/metrics` and `/health` on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Exit once the directory has no complete file left (for batch use and tests).
    #[arg(long)]
    pub drain: bool,
}

impl Args {
    /// The defaults of the command line for `dir` and `collectors` (for roles that embed
    /// the distributor with [`start`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let args = udn_bins::distributor::Args::new("/var/log/udn".into(), vec!["http://127.0.0.1:8480".into()]);
    /// assert_eq!(args.poll_ms, 500);
    /// ```
    pub fn new(dir: PathBuf, collectors: Vec<String>) -> Args {
        Args {
            dir,
            collectors,
            pki: None,
            poll_ms: 500,
            min_backoff_ms: 200,
            max_backoff_ms: 30_000,
            parallel: 2,
            metrics: None,
            drain: false,
        }
    }
}

/// Progress counters of a distributor.
#[derive(Debug, Default)]
pub struct Stats {
    /// Files acknowledged and deleted.
    pub files_shipped: AtomicU64,
    /// Of those, files the collector already had.
    pub duplicates: AtomicU64,
    /// Records the collectors acknowledged.
    pub records_shipped: AtomicU64,
    /// Bytes of acknowledged files.
    pub bytes_shipped: AtomicU64,
    /// Files rejected (422) and moved to `rejected/`.
    pub files_rejected: AtomicU64,
    /// Failed attempts (a collector down, 5xx, timeout).
    pub failed_attempts: AtomicU64,
    /// Rounds in which every collector failed (each followed by a backoff).
    pub backoffs: AtomicU64,
}

impl Stats {
    fn prometheus(&self) -> String {
        let mut s = String::new();
        for (name, help, v) in [
            (
                "udn_distributor_files_shipped_total",
                "Files acknowledged and deleted",
                &self.files_shipped,
            ),
            (
                "udn_distributor_duplicates_total",
                "Acknowledged files the collector already had",
                &self.duplicates,
            ),
            (
                "udn_distributor_records_shipped_total",
                "Records acknowledged",
                &self.records_shipped,
            ),
            (
                "udn_distributor_bytes_shipped_total",
                "Bytes acknowledged",
                &self.bytes_shipped,
            ),
            (
                "udn_distributor_files_rejected_total",
                "Files rejected by a collector and kept in rejected/",
                &self.files_rejected,
            ),
            (
                "udn_distributor_failed_attempts_total",
                "Attempts that failed (collector down, 5xx, timeout)",
                &self.failed_attempts,
            ),
            (
                "udn_distributor_backoffs_total",
                "Rounds where every collector failed",
                &self.backoffs,
            ),
        ] {
            s.push_str(&format!(
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        s
    }
}

/// A running distributor.
pub struct Handle {
    /// Progress counters.
    pub stats: Arc<Stats>,
    /// The `/metrics` address, if one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops after the files in flight and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits until the distributor ends by itself (`drain` mode).
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

/// The complete files in `dir`, oldest name first.
pub fn complete_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let is_done = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(crate::logging::DONE_SUFFIX) && !n.starts_with('.'));
        if is_done && e.file_type()?.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

enum Shipped {
    Acked { rows: u64, duplicate: bool },
    Rejected(String),
    Gone,
}

struct Shipper {
    client: reqwest::Client,
    collectors: Vec<String>,
    next: AtomicU64,
    min_backoff: Duration,
    max_backoff: Duration,
    stats: Arc<Stats>,
}

impl Shipper {
    /// Ships one file until it is acknowledged or rejected (or `stop` is set).
    async fn ship(&self, path: &Path, stop: &tokio::sync::watch::Receiver<bool>) -> Shipped {
        let body = match tokio::fs::read(path).await {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Shipped::Gone,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read log file");
                return Shipped::Gone;
            }
        };
        let b2 = body.clone();
        let sum = tokio::task::spawn_blocking(move || sha256_hex(&b2))
            .await
            .unwrap_or_default();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
            .to_owned();
        let mut attempt = 0u32;
        loop {
            let n = self.collectors.len() as u64;
            let first = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let base = &self.collectors[((first + i) % n) as usize];
                let url = format!("{}/v1/logs", base.trim_end_matches('/'));
                let res = self
                    .client
                    .post(&url)
                    .header(CHECKSUM_HEADER, &sum)
                    .header(FILE_NAME_HEADER, &name)
                    .body(body.clone())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        let text = r.bytes().await.unwrap_or_default();
                        let v: serde_json::Value =
                            serde_json::from_slice(&text).unwrap_or_default();
                        let rows = v.get("rows").and_then(|r| r.as_u64()).unwrap_or(0);
                        let duplicate =
                            v.get("status").and_then(|s| s.as_str()) == Some("duplicate");
                        self.stats
                            .bytes_shipped
                            .fetch_add(body.len() as u64, Ordering::Relaxed);
                        return Shipped::Acked { rows, duplicate };
                    }
                    // 422: rejected and quarantined; 413: larger than the collector takes;
                    // 403: this instance may not ship this file (another role's records).
                    Ok(r) if matches!(r.status().as_u16(), 403 | 413 | 422) => {
                        let text = r.text().await.unwrap_or_default();
                        return Shipped::Rejected(format!("{url}: {text}"));
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        tracing::warn!(%url, %status, body = %text, file = %name, "collector did not take the file");
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, file = %name, "collector unreachable");
                    }
                }
                self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.backoffs.fetch_add(1, Ordering::Relaxed);
            let exp = self
                .min_backoff
                .saturating_mul(1u32 << attempt.min(16))
                .min(self.max_backoff);
            // Jitter: 50..100 % of the delay, from the clock's low bits.
            let jitter = 50 + crate::logging::now().as_millis() % 51;
            let delay = exp.mul_f64(jitter as f64 / 100.0);
            attempt = attempt.saturating_add(1);
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|v| *v) => return Shipped::Gone,
            }
        }
    }
}

fn move_to_rejected(dir: &Path, path: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let rejected = dir.join("rejected");
    std::fs::create_dir_all(&rejected)?;
    let name = path.file_name().unwrap_or_default();
    let dest = rejected.join(name);
    std::fs::rename(path, &dest)?;
    let mut reason_path = dest.clone().into_os_string();
    reason_path.push(".reason");
    std::fs::write(PathBuf::from(reason_path), format!("{reason}\n"))?;
    Ok(dest)
}

/// Starts a distributor for `args.dir` in the current tokio runtime.
pub async fn start(args: &Args) -> anyhow::Result<Handle> {
    anyhow::ensure!(!args.collectors.is_empty(), "no collector given");
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating log directory {}", args.dir.display()))?;
    crate::install_crypto();
    let pki = args.pki.as_ref().context(
        "--pki DIR is required: the collectors take log files only from enrolled instances",
    )?;
    let client = crate::pki::Credentials::load(pki)?.reqwest_client(Duration::from_secs(120))?;
    let stats = Arc::new(Stats::default());
    let shipper = Arc::new(Shipper {
        client,
        collectors: args.collectors.clone(),
        next: AtomicU64::new(0),
        min_backoff: Duration::from_millis(args.min_backoff_ms.max(1)),
        max_backoff: Duration::from_millis(args.max_backoff_ms.max(args.min_backoff_ms)),
        stats: stats.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let metrics_addr = match args.metrics {
        Some(addr) => {
            let s = stats.clone();
            let app = axum::Router::new()
                .route("/health", axum::routing::get(|| async { "ok" }))
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let s = s.clone();
                        async move { s.prometheus() }
                    }),
                );
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let bound = l.local_addr()?;
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|v| *v).await;
                    })
                    .await;
            });
            Some(bound)
        }
        None => None,
    };

    let dir = args.dir.clone();
    let poll = Duration::from_millis(args.poll_ms.max(10));
    let parallel = args.parallel.max(1);
    let drain = args.drain;
    let st = stats.clone();
    let task = tokio::spawn(async move {
        let mut stop = stop_rx;
        loop {
            if *stop.borrow() {
                break;
            }
            let d = dir.clone();
            let files = tokio::task::spawn_blocking(move || complete_files(&d))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let files = match files {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot list log directory");
                    Vec::new()
                }
            };
            if files.is_empty() {
                if drain {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.wait_for(|v| *v) => break,
                }
                continue;
            }
            let mut set = tokio::task::JoinSet::new();
            for path in files {
                while set.len() >= parallel {
                    let _ = set.join_next().await;
                }
                if *stop.borrow() {
                    break;
                }
                let shipper = shipper.clone();
                let stop = stop.clone();
                let dir = dir.clone();
                let st = st.clone();
                set.spawn(async move {
                    match shipper.ship(&path, &stop).await {
                        Shipped::Acked { rows, duplicate } => {
                            if let Err(e) = tokio::fs::remove_file(&path).await {
                                tracing::error!(file = %path.display(), error = %e, "cannot delete shipped file");
                            }
                            st.files_shipped.fetch_add(1, Ordering::Relaxed);
                            st.records_shipped.fetch_add(rows, Ordering::Relaxed);
                            if duplicate {
                                st.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::info!(file = %path.display(), rows, duplicate, "shipped");
                        }
                        Shipped::Rejected(reason) => {
                            st.files_rejected.fetch_add(1, Ordering::Relaxed);
                            match move_to_rejected(&dir, &path, &reason) {
                                Ok(dest) => tracing::error!(file = %dest.display(), %reason, "collector rejected file; kept in rejected/"),
                                Err(e) => tracing::error!(file = %path.display(), error = %e, %reason, "collector rejected file; could not move it"),
                            }
                        }
                        Shipped::Gone => {}
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    });
    Ok(Handle {
        stats,
        metrics_addr,
        stop: stop_tx,
        task,
    })
}

/// Runs `udn distribute` until stopped (or, with `--drain`, until the directory is empty).
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async move {
        let handle = start(&args).await?;
        if let Some(a) = handle.metrics_addr {
            println!("udn distribute: metrics on {a}");
        }
        let stats = handle.stats.clone();
        if args.drain {
            handle.finished().await;
        } else {
            crate::control::wait_for_signal().await;
            handle.shutdown().await;
        }
        println!(
            "udn distribute: shipped {} files ({} records, {} duplicates), rejected {}",
            stats.files_shipped.load(Ordering::Relaxed),
            stats.records_shipped.load(Ordering::Relaxed),
            stats.duplicates.load(Ordering::Relaxed),
            stats.files_rejected.load(Ordering::Relaxed),
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn embedded_defaults_match_the_command_line() {
        let cli = crate::cli::Cli::try_parse_from([
            "udn",
            "distribute",
            "--dir",
            "/x",
            "--collector",
            "http://a",
        ])
        .unwrap();
        let crate::cli::Command::Distribute(a) = cli.command else {
            panic!("not distribute");
        };
        let b = Args::new("/x".into(), vec!["http://a".into()]);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
