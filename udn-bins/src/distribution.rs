//! The client side of config distribution: a task that long-polls the control plane's
//! machine listener (`GET /v1/config` over mutual TLS, with the role's instance
//! credentials) and hands every new snapshot to the role. Each answer also carries the
//! revoked certificate fingerprints, which the task puts into the role's own admin
//! listener's [`Revocations`]. When the control plane cannot be reached the role keeps
//! running on its last good snapshot (and revocation list) and the task retries.

use crate::api::backend::ConfigSnapshot;
use crate::api::fanout::HttpClient;
use crate::pki::{Credentials, Revocations};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use udn_core::Config;

/// The answer of the roles' `GET /v1/config`: the live configuration and the revoked
/// instance certificates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleSnapshot {
    /// The configuration version (verified hostnames only).
    #[serde(flatten)]
    pub snapshot: ConfigSnapshot,
    /// SHA-256 fingerprints (lowercase hex) of every revoked instance certificate.
    #[serde(default)]
    pub revoked: Vec<String>,
}

/// A new configuration snapshot delivered by [`config_watcher`].
#[derive(Debug, Clone)]
pub struct ConfigUpdate {
    /// Its version number.
    pub version: u64,
    /// The configuration (already validated by the control plane; the role compiles it
    /// again and keeps its old snapshot if that fails).
    pub config: Config,
}

/// Long-polls `{control_url}/v1/config?wait=25` (with `If-None-Match` of the last ETag)
/// over mutual TLS with `creds`, puts each answer's revoked fingerprints into `revoked`
/// and awaits `on_update` with every newer configuration version. Errors (control plane
/// down, a refusal, a bad answer) are logged and retried after `retry`; the role keeps
/// its last snapshot meanwhile. `control_url` must be `https://` (the control plane's
/// `--listen`).
///
/// Runs until the returned task is aborted.
pub fn config_watcher<F, Fut>(
    control_url: String,
    creds: &Credentials,
    revoked: Revocations,
    retry: Duration,
    mut on_update: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    F: FnMut(ConfigUpdate) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    anyhow::ensure!(
        control_url.starts_with("https://"),
        "--control {control_url:?}: configuration comes over mutual TLS from the control \
         plane's machine listener (https://IP:PORT of udn control --listen)"
    );
    let http = creds.reqwest_client(Duration::from_secs(40))?;
    Ok(tokio::spawn(async move {
        let mut version: u64 = 0;
        let mut etag: Option<String> = None;
        let base = control_url.trim_end_matches('/').to_owned();
        loop {
            match fetch(&http, &base, etag.as_deref()).await {
                Ok(None) => {}
                Ok(Some((tag, snap))) => {
                    etag = tag;
                    let n = snap.revoked.len();
                    if revoked.replace(snap.revoked) {
                        tracing::info!("instance revocations from the control plane: {n} revoked");
                    }
                    if snap.snapshot.version > version {
                        version = snap.snapshot.version;
                        on_update(ConfigUpdate {
                            version,
                            config: snap.snapshot.config,
                        })
                        .await;
                    } else if etag.is_none() {
                        tokio::time::sleep(retry).await;
                    }
                }
                Err(e) => {
                    tracing::warn!("config from {base}: {e:#}; keeping version {version}");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }))
}

/// One long-poll: `None` for 304, else the answer's ETag and snapshot. The answering
/// server must be a control instance of the CA (its certificate's role), so no other
/// enrolled instance can hand a role its configuration.
async fn fetch(
    http: &reqwest::Client,
    base: &str,
    etag: Option<&str>,
) -> anyhow::Result<Option<(Option<String>, RoleSnapshot)>> {
    use anyhow::Context as _;
    let mut req = http.get(format!("{base}/v1/config?wait=25"));
    if let Some(t) = etag {
        req = req.header(axum::http::header::IF_NONE_MATCH, t);
    }
    let resp = req.send().await.context("unreachable")?;
    match crate::pki::server_identity(&resp) {
        Some(id) if id.role == crate::pki::InstanceRole::Control => {}
        other => anyhow::bail!(
            "the configuration server is {}, not a control instance: refused",
            other.map_or("unidentified".to_owned(), |i| i.to_string())
        ),
    }
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let tag = resp
        .headers()
        .get(axum::http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await.context("reading the answer")?;
    anyhow::ensure!(
        status.is_success(),
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    let snap = serde_json::from_slice::<RoleSnapshot>(&body).context("the answer")?;
    Ok(Some((tag, snap)))
}

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

/// How a role follows the control plane: `--control URL` with its `--pki` credentials,
/// and the revocation list of its admin listener to keep up to date.
#[derive(Debug, Clone)]
pub struct ControlChannel {
    /// `https://IP:PORT` of the control plane's machine listener.
    pub url: String,
    /// The role's instance credentials.
    pub credentials: Credentials,
    /// The role's admin listener's revocation list.
    pub revoked: Revocations,
}

/// Whether the DNS servers would load `cfg` with the zone files in `zone_dir`: the DNS
/// role's own load ([`crate::dns::load_config`]: zone files parsed, GTM and CDN
/// hostnames placed in their zones), run with every pending hostname counted as
/// verified, so a name a zone file already has is refused when it is registered, not
/// only once it is proven. Errors name the config field: `gtm[i].hostname` /
/// `cdn[i].hostname` for a hostname that collides with a zone-file name,
/// `dns.zones[i].file` for a zone file the control plane cannot read or parse. Errors
/// of the configuration itself are left to `Config::compile` (which names them).
pub fn zone_check(cfg: &Config, zone_dir: &std::path::Path) -> Result<(), Vec<(String, String)>> {
    let mut errs = Vec::new();
    for (i, z) in cfg.dns.zones.iter().enumerate() {
        if let Some(f) = &z.file
            && !zone_dir.join(f).is_file()
        {
            errs.push((
                format!("dns.zones[{i}].file"),
                format!(
                    "zone file {f:?} is not readable by the control plane in {} (udn control \
                     --zone-dir DIR, default: the directory of --config), so it cannot check \
                     that the DNS servers would load this configuration",
                    zone_dir.display()
                ),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut all = cfg.clone();
    for g in &mut all.gtm {
        g.challenge = None;
    }
    for c in &mut all.cdn {
        c.challenge = None;
    }
    let e = match crate::dns::load_config(all, zone_dir) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let same = |a: &str, b: &str| {
        udn_core::config::canonical_hostname(a) == udn_core::config::canonical_hostname(b)
    };
    match e.downcast_ref::<udn_dns::Error>() {
        Some(udn_dns::Error::Conflict { zone, name }) => {
            let field = cfg
                .gtm
                .iter()
                .position(|g| same(&g.hostname, name))
                .map(|i| format!("gtm[{i}].hostname"))
                .or_else(|| {
                    cfg.cdn
                        .iter()
                        .position(|c| same(&c.hostname, name))
                        .map(|i| format!("cdn[{i}].hostname"))
                })
                .unwrap_or_else(|| "dns.zones".into());
            Err(vec![(
                field,
                format!(
                    "{name} already has records in the zone file of {zone}: the DNS servers \
                     could not load this configuration"
                ),
            )])
        }
        Some(other) => Err(vec![("dns.zones".into(), other.to_string())]),
        // The configuration's own errors: `Config::compile` names their fields.
        None if e.downcast_ref::<udn_core::Error>().is_some() => Ok(()),
        None => Err(vec![("dns.zones".into(), format!("{e:#}"))]),
    }
}

/// Runs [`config_watcher`] for a role whose configuration lives in `path`: each new
/// version is first loaded by `apply` (from memory); only a version the role loaded is
/// then written to `path`, so a restart comes up on the last version the role served.
/// A version `apply` refuses leaves both the running snapshot and the file as they were.
pub fn follow_control<F, Fut>(
    control: ControlChannel,
    path: std::path::PathBuf,
    mut apply: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    F: FnMut(ConfigUpdate) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    config_watcher(
        control.url,
        &control.credentials,
        control.revoked,
        Duration::from_secs(2),
        move |u| {
            let path = path.clone();
            let checked = roles_would_load(&u.config);
            let version = u.version;
            let written = u.clone();
            let applied = checked.is_ok().then(|| apply(u));
            async move {
                // A version no role would load is neither applied nor written.
                if let Err(errs) = checked {
                    let why: Vec<String> = errs.iter().map(|(f, m)| format!("{f}: {m}")).collect();
                    tracing::warn!(
                        version,
                        "configuration from the control plane refused: {}",
                        why.join("; ")
                    );
                    return;
                }
                let Some(applied) = applied else { return };
                match applied.await {
                    Ok(()) => match write_config(&path, &written) {
                        Ok(()) => {
                            tracing::info!(version, "applied configuration from the control plane")
                        }
                        Err(e) => tracing::error!(
                            version,
                            "applied, but not saved (a restart comes up on the previous \
                             version): {e:#}"
                        ),
                    },
                    Err(e) => tracing::warn!(
                        version,
                        "configuration from the control plane not loaded; keeping the last \
                         good version: {e:#}"
                    ),
                }
            }
        },
    )
}

/// An `on_update` for [`config_watcher`] that writes each snapshot to `path` as TOML and
/// then posts `reload_url` if given (a role reloading from a file, such as a test's
/// `udn dns --config FILE`). Must be called inside a tokio runtime.
pub fn write_and_reload(
    path: std::path::PathBuf,
    reload_url: Option<String>,
) -> impl FnMut(ConfigUpdate) -> std::future::Ready<()> + Send + 'static {
    let http = HttpClient::new();
    move |u: ConfigUpdate| {
        if let Err(e) = write_config(&path, &u) {
            tracing::warn!("{e:#}");
            return std::future::ready(());
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
        std::future::ready(())
    }
}
