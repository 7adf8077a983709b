//! The `udn` binary. All logic lives in the `udn_bins` library; this file parses the
//! command line, sets up logging and maps errors to exit codes.

use clap::Parser;
use udn_bins::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    udn_bins::install_crypto();
    let cli = Cli::parse();
    udn_bins::init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Dns(args) => udn_bins::dns::run(args),
        Command::Edge(args) => udn_bins::edge::run(args),
        Command::Probe(args) => udn_bins::probe::run(args),
        Command::Loadp(args) => udn_bins::loadp::run(args),
        Command::Control(args) => udn_bins::control::run(args),
        Command::Demo(args) => udn_bins::demo::run(args),
        Command::Origin(args) => udn_bins::origin::run(args),
        Command::Distribute(args) => udn_bins::distributor::run(args),
        Command::Openapi => udn_bins::api::openapi::print(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("udn: error: {err:#}");
            udn_bins::exit_code(&err)
        }
    }
}
