//! The client side of config distribution: a task that long-polls the control plane's
//! `GET /v1/config` and hands every new snapshot to the role. When the control plane
//! cannot be reached the role keeps running on its last good snapshot and the task
//! retries.

use super::backend::ConfigSnapshot;
use super::fanout::HttpClient;
use std::time::Duration;
use udn_core::Config;

/// A new configuration snapshot delivered by [`config_watcher`].
#[derive(Debug, Clone)]
pub struct ConfigUpdate {
    /// Its version number.
    pub version: u64,
    /// The configuration (already validated by the control plane; the role compiles it
    /// again and keeps its old snapshot if that fails).
    pub config: Config,
}

/// Long-polls `{control_url}/v1/config?since=V&wait=25` (with `If-None-Match`) and
/// calls `on_update` with every newer snapshot. Errors (control plane down, bad answer)
/// are logged and retried after `retry`; the role keeps its last snapshot meanwhile.
/// `token` is an agent bearer token (`ControlOptions::agent_tokens`).
///
/// Runs until the returned task is aborted.
pub fn config_watcher<F>(
    control_url: String,
    token: Option<String>,
    retry: Duration,
    mut on_update: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(ConfigUpdate) + Send + 'static,
{
    tokio::spawn(async move {
        let http = HttpClient::new();
        let mut version: u64 = 0;
        let base = control_url.trim_end_matches('/').to_owned();
        loop {
            let url = format!("{base}/v1/config?since={version}&wait=25");
            let etag = format!("\"v{version}\"");
            let auth = token.as_ref().map(|t| format!("Bearer {t}"));
            let mut headers: Vec<(&str, &str)> = vec![("if-none-match", etag.as_str())];
            if let Some(a) = auth.as_deref() {
                headers.push(("authorization", a));
            }
            match http
                .call(
                    axum::http::Method::GET,
                    &url,
                    None,
                    &headers,
                    Duration::from_secs(40),
                )
                .await
            {
                Ok((304, _, _)) => {}
                Ok((_, _, body)) => match serde_json::from_slice::<ConfigSnapshot>(&body) {
                    Ok(snap) if snap.version > version => {
                        version = snap.version;
                        on_update(ConfigUpdate {
                            version: snap.version,
                            config: snap.config,
                        });
                    }
                    Ok(_) => tokio::time::sleep(retry).await,
                    Err(e) => {
                        tracing::warn!("config from {base}: {e}; keeping version {version}");
                        tokio::time::sleep(retry).await;
                    }
                },
                Err(e) => {
                    tracing::warn!("config from {base}: {e}; keeping version {version}");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    })
}

/// An `on_update` for roles that read their config from a file and reload on
/// `POST /v1/reload` (such as `udn dns --config FILE --http ADDR`): writes each snapshot
/// as TOML to `path` (through a temporary file and a rename, so the role never reads a
/// half-written file), then posts `reload_url` if given. Must be called inside a tokio
/// runtime (the reload request runs as a task).
/// Writes `u`'s configuration to `path` as TOML, atomically (a temporary file renamed
/// over it), so a role that re-reads `path` never sees half a file.
pub fn write_config(path: &std::path::Path, u: &ConfigUpdate) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = toml::to_string(&u.config)
        .with_context(|| format!("config version {} as TOML", u.version))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing config version {} to {}", u.version, path.display()))
}

/// Whether every role would load `cfg`: the checks the roles run on their load path
/// beyond parsing (today: each service's `expect_regex` compiles within the probe's
/// size limit, [`udn_probe::service::check_services`]). The control plane refuses a
/// version that fails (422 naming the field) and a role refuses to write or apply one.
pub fn roles_would_load(cfg: &udn_core::Config) -> Result<(), Vec<(String, String)>> {
    let errs = udn_probe::service::check_services(cfg);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// Runs [`config_watcher`] for a role whose configuration lives in `path`: each new
/// version is written there and `apply` is called to load it (the role keeps its old
/// snapshot if `apply` fails).
pub fn follow_control(
    control_url: String,
    token: Option<String>,
    path: std::path::PathBuf,
    apply: impl Fn() -> anyhow::Result<()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    config_watcher(control_url, token, Duration::from_secs(2), move |u| {
        let version = u.version;
        // A version no role would load is neither written (a restart comes up on the
        // last good one) nor applied.
        if let Err(errs) = roles_would_load(&u.config) {
            let why: Vec<String> = errs.iter().map(|(f, m)| format!("{f}: {m}")).collect();
            tracing::warn!(
                version,
                "configuration from the control plane refused: {}",
                why.join("; ")
            );
            return;
        }
        // The role loads from `path`: keep the last good file, and put it back if the
        // role cannot load the new one, so a restart comes up on the last good version.
        let previous = std::fs::read(&path).ok();
        match write_config(&path, &u).and_then(|_| apply()) {
            Ok(()) => tracing::info!(version, "applied configuration from the control plane"),
            Err(e) => {
                tracing::warn!(
                    version,
                    "configuration from the control plane not applied: {e:#}"
                );
                if let Some(old) = previous {
                    let tmp = path.with_extension("tmp");
                    if let Err(e) =
                        std::fs::write(&tmp, old).and_then(|_| std::fs::rename(&tmp, &path))
                    {
                        tracing::error!("restoring {}: {e}", path.display());
                    }
                }
            }
        }
    })
}

pub fn write_and_reload(
    path: std::path::PathBuf,
    reload_url: Option<String>,
) -> impl FnMut(ConfigUpdate) + Send + 'static {
    let http = HttpClient::new();
    move |u: ConfigUpdate| {
        if let Err(e) = write_config(&path, &u) {
            tracing::warn!("{e:#}");
            return;
        }
        if let Some(url) = reload_url.clone() {
            let http = http.clone();
            let version = u.version;
            tokio::spawn(async move {
                if let Err(e) = http
                    .call(
                        axum::http::Method::POST,
                        &url,
                        Some(Vec::new()),
                        &[],
                        Duration::from_secs(10),
                    )
                    .await
                {
                    tracing::warn!("reload after config version {version}: {e}");
                }
            });
        }
    }
}
