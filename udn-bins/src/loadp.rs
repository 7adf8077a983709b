//! `udn loadp`: LOADP on each server. A small process on the host a server runs on reads
//! that host's CPU (1-minute load average per CPU), memory, swap and disk use and
//! reports them, as `Metric::Load` with the four figures, for the server(s) it names to
//! every DNS server over the mTLS probe channel (`POST /v1/metrics`).
//!
//! It presents an instance identity of role `loadp` (`udn control enroll loadp SERVER
//! --out DIR`), whose name is the server it reports for: the DNS servers accept from a
//! loadp identity only the load of the server named as itself, and nothing else (no
//! service or latency results). `--server` defaults to that name. (An identity of role
//! probe may also report load, for any server: `udn probe --load-server` on a probe that
//! shares a server's host.)
//!
//! `--from-file PATH` (for tests and drills only) reads the four figures from a file
//! instead of `/proc` and `statvfs`, re-read at every interval, so a test can raise one
//! server's load:
//!
//! ```text
//! cpu = 95.0
//! memory = 40.0
//! swap = 0.0
//! disk = 10.0
//! ```

use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use udn_core::Metric;
use udn_core::load::LoadParts;
use udn_probe::agent::load::ProcSource;
use udn_probe::agent::report::{Reporter, ReporterOptions};

/// Arguments of `udn loadp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance credentials (cert.pem, key.pem, ca.pem) of role loadp (or probe), as
    /// written by `udn control enroll loadp SERVER --out DIR`.
    #[arg(long)]
    pub pki: PathBuf,
    /// HTTPS base URL of a DNS server's API (`https://ip:port`), repeatable: the load
    /// goes to every one.
    #[arg(long = "dns-http", required = true)]
    pub dns_http: Vec<String>,
    /// Server (by its name in the network config) running on this host, repeatable;
    /// default: the identity's name.
    #[arg(long = "server")]
    pub servers: Vec<String>,
    /// Milliseconds between readings.
    #[arg(long, default_value_t = 5000)]
    pub interval_ms: u64,
    /// Mount points whose use counts as disk use (the fullest one is reported).
    #[arg(long = "mount", default_value = "/")]
    pub mounts: Vec<PathBuf>,
    /// Directory of the proc file system.
    #[arg(long, default_value = "/proc")]
    pub proc: PathBuf,
    /// For tests and drills only: read `cpu`, `memory`, `swap` and `disk` (percent,
    /// `key = value` lines) from this file at every interval instead of `/proc`.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParts {
    cpu: f32,
    memory: f32,
    swap: f32,
    disk: f32,
}

/// Parses the `--from-file` format.
pub fn parse_parts_file(text: &str) -> anyhow::Result<LoadParts> {
    let f: FileParts = toml::from_str(text).context("expected cpu, memory, swap, disk = N")?;
    for (k, v) in [
        ("cpu", f.cpu),
        ("memory", f.memory),
        ("swap", f.swap),
        ("disk", f.disk),
    ] {
        anyhow::ensure!(
            v.is_finite() && (0.0..=100.0).contains(&v),
            "{k} = {v}: a percentage 0..=100"
        );
    }
    Ok(LoadParts {
        cpu: f.cpu,
        memory: f.memory,
        swap: f.swap,
        disk: f.disk,
    })
}

fn read(args: &Args, src: &ProcSource) -> anyhow::Result<(LoadParts, f32)> {
    match &args.from_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let p = parse_parts_file(&text).with_context(|| path.display().to_string())?;
            Ok((p, p.cpu.max(p.memory)))
        }
        None => {
            let r = udn_probe::loadp::read_load(src)?;
            Ok((r.parts(), r.percent as f32))
        }
    }
}

/// Runs `udn loadp` until killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let creds = crate::pki::Credentials::load(&args.pki)?;
    if let Some(u) = args.dns_http.iter().find(|u| !u.starts_with("https://")) {
        anyhow::bail!("--dns-http {u}: the DNS servers' API is reached over https://");
    }
    let servers = if args.servers.is_empty() {
        vec![creds.identity().name.clone()]
    } else {
        args.servers.clone()
    };
    let opts = ReporterOptions {
        tls: Some(Arc::new(creds.client_config()?)),
        ..ReporterOptions::default()
    };
    let src = ProcSource {
        proc: args.proc.clone(),
        mounts: args.mounts.clone(),
    };
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let reporter = Reporter::new(&args.dns_http, opts);
        let _senders = reporter.spawn();
        println!(
            "{}",
            serde_json::json!({ "loadp": creds.identity().to_string(), "servers": servers })
        );
        let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let at = crate::logging::now();
            match read(&args, &src) {
                Ok((parts, percent)) => {
                    tracing::debug!(?parts, "LOADP reading");
                    let metrics: Vec<Metric> = servers
                        .iter()
                        .map(|s| Metric::Load {
                            server: s.clone(),
                            percent,
                            at,
                            parts: Some(parts),
                        })
                        .collect();
                    reporter.push(&metrics);
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "LOADP reading failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_parts_file;

    #[test]
    fn parts_file() {
        let p = parse_parts_file("cpu = 95\nmemory = 40.5\nswap = 0\ndisk = 10\n").unwrap();
        assert_eq!((p.cpu, p.memory, p.swap, p.disk), (95.0, 40.5, 0.0, 10.0));
        assert!(parse_parts_file("cpu = 101\nmemory = 0\nswap = 0\ndisk = 0").is_err());
        assert!(parse_parts_file("cpu = 1\nmemory = 0\nswap = 0").is_err());
        assert!(parse_parts_file("cpu = 1\nmemory = 0\nswap = 0\ndisk = 0\nx = 1").is_err());
    }
}
