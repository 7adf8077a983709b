//! Reading the network configuration file every role may be given (`--config`), or
//! the embedded sample network when none is named.

use anyhow::Context;
use std::path::Path;
use udn_core::Config;

/// Loads the network config from `path`, or the embedded sample when `path` is `None`.
/// Returns it with its text (the control plane stores the text as the first version).
pub fn load_config_text(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    let (text, what) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            udn_core::config::SAMPLE.to_string(),
            "the embedded sample config".to_string(),
        ),
    };
    let cfg = Config::from_toml(&text).with_context(|| format!("parsing {what}"))?;
    Ok((cfg, text))
}

/// Loads the network config from `path`, or the embedded sample when `path` is `None`.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    load_config_text(path).map(|(cfg, _)| cfg)
}
