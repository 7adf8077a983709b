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
