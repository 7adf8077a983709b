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
pub fn write_and_reload(
    path: std::path::PathBuf,
    reload_url: Option<String>,
) -> impl FnMut(ConfigUpdate) + Send + 'static {
    let http = HttpClient::new();
    move |u: ConfigUpdate| {
        let text = match toml::to_string(&u.config) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("config version {} as TOML: {e}", u.version);
                return;
            }
        };
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(
                "writing config version {} to {}: {e}",
                u.version,
                path.display()
            );
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
