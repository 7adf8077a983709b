//! `udn control`: Control plane.

/// Command-line arguments of `udn control`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Runs the role until it is stopped.
pub fn run(_args: Args) -> anyhow::Result<()> {
    Err(crate::NotBuilt {
        role: "control",
        issue: 9,
    }
    .into())
}
