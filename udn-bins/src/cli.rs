//! The command line of `udn`.

use clap::{Parser, Subcommand};

/// UDN: a DNS-based global traffic manager fused with a caching CDN.
///
/// Each subcommand runs one role of the network; `udn demo` runs all of them on
/// loopback with a sample network.
#[derive(Debug, Parser)]
#[command(name = "udn", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles of a UDN network.
#[derive(Debug, Subcommand)]
// Parsed once at start; boxing the arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Authoritative GTM DNS server.
    Dns(crate::dns::Args),
    /// Edge cache (CDN POP server).
    Edge(crate::edge::Args),
    /// Probe agent (ServiceProbe, LOADP, LatencyProbe, page check).
    Probe(crate::probe::Args),
    /// LOADP on a server's host: reports its CPU, memory, swap and disk use to the DNS
    /// servers.
    Loadp(crate::loadp::Args),
    /// Control plane: log collector, store, REST API, portal, billing.
    Control(crate::control::Args),
    /// Run the whole network on loopback with a sample network.
    Demo(crate::demo::Args),
    /// Serve the sample customer origin site (for demos, drills and tests).
    Origin(crate::origin::Args),
    /// Log distributor: ship a role's complete log files to collectors.
    Distribute(crate::distributor::Args),
    /// Print the control-plane API's OpenAPI 3.1 document (what `GET /v1/openapi.json`
    /// serves; docs/openapi.json is this output).
    Openapi,
}
