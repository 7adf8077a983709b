//! `udn edge`: Edge cache.

/// Command-line arguments of `udn edge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Runs the role until it is stopped.
pub fn run(_args: Args) -> anyhow::Result<()> {
    Err(crate::NotBuilt {
        role: "edge",
        issue: 6,
    }
    .into())
}
