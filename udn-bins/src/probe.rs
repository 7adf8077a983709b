//! `udn probe`: Probe agent.

/// Command-line arguments of `udn probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Runs the role until it is stopped.
pub fn run(_args: Args) -> anyhow::Result<()> {
    Err(crate::NotBuilt {
        role: "probe",
        issue: 5,
    }
    .into())
}
