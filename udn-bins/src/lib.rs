//! The roles behind the `udn` binary. Each module wires the pure library crates to real
//! sockets, files and clocks; `main.rs` only parses the command line and dispatches here.
#![forbid(unsafe_code)]

pub mod api;
pub mod billing;
pub mod cli;
pub mod collector;
pub mod config_file;
pub mod control;
pub mod demo;
pub mod distribution;
pub mod distributor;
pub mod dns;
pub mod edge;
pub mod listener;
pub mod loadp;
pub mod logging;
pub mod origin;
pub mod pki;
pub mod portal;
pub mod probe;
pub mod world;

/// The storage layer (`udn-store`), re-exported under the names the roles use.
pub use udn_store::{logs as store, migrate};

use std::fmt;

/// Returned by a role that is not built yet; `udn` exits with code 2 for it.
#[derive(Debug, Clone, Copy)]
pub struct NotBuilt {
    /// The subcommand, e.g. `"dns"`.
    pub role: &'static str,
    /// The issue that builds it.
    pub issue: u32,
}

impl fmt::Display for NotBuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`udn {}` is not built yet (tracked in issue #{})",
            self.role, self.issue
        )
    }
}

impl std::error::Error for NotBuilt {}

/// Exit code for an error: 2 for a role that is not built yet or bad usage, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> std::process::ExitCode {
    if err.downcast_ref::<NotBuilt>().is_some() {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::from(1)
    }
}

/// Installs `ring` as the process-wide rustls crypto provider (idempotent). The `udn`
/// binary calls it first thing; tests that build a `reqwest` client call it too. The
/// workspace builds rustls with exactly one provider (ring: it builds quickly here),
/// and reqwest without its bundled aws-lc-rs provider.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sets up `tracing` output on stderr: `RUST_LOG` if set, else by verbosity.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Builds the multi-threaded tokio runtime every long-running role uses.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
