//! Fan-out from the control plane to the edges (purge, prefill) and probes (page
//! check), over their HTTP APIs (contracts in `docs/api.md`). The edges' admin
//! listeners are HTTPS with mutual TLS: the control plane presents its instance
//! certificate (role control) and trusts only the instance CA.

use super::ApiState;
use super::backend::{DeliveryKind, Prefill, Purge};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An edge and the base URL of its admin listener (`https://127.0.0.11:9443`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeApi {
    /// The edge's name (its server name in the config, e.g. `fra-edge-1`).
    pub name: String,
    /// Base URL of its API.
    pub url: String,
}

/// A probe, by the location (POP) it runs in, and the base URL of its HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeApi {
    /// The POP name (`fra`).
    pub location: String,
    /// Base URL of its API.
    pub url: String,
}

/// A small HTTP/1 client for the fan-out: `https://` URLs go over mutual TLS with the
/// control plane's instance credentials (refused without them), `http://` URLs over
/// plain HTTP.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    mtls: Option<reqwest::Client>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a call to an edge or probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The URL is not a valid request target.
    #[error("bad URL: {0}")]
    Url(String),
    /// Connect or transfer failed.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The peer answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// The first bytes of the body.
        body: String,
    },
}

impl HttpClient {
    /// A client with a 2 s connect timeout.
    pub fn new() -> HttpClient {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        conn.set_nodelay(true);
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(conn),
            mtls: None,
        }
    }

    /// A client that also calls `https://` URLs, presenting `creds` and trusting only
    /// their CA.
    pub fn with_credentials(creds: &crate::pki::Credentials) -> anyhow::Result<HttpClient> {
        Ok(HttpClient {
            mtls: Some(creds.reqwest_client(Duration::from_secs(60))?),
            ..HttpClient::new()
        })
    }

    async fn call_tls(
        client: &reqwest::Client,
        method: axum::http::Method,
        url: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, axum::http::HeaderMap, Bytes), CallError> {
        let mut req = client.request(method, url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_builder() {
                CallError::Url(e.to_string())
            } else {
                CallError::Unreachable(format!("{e:#}"))
            }
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        Ok((status, headers, body))
    }

    /// Sends a request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: axum::http::Method,
        url: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, axum::http::HeaderMap, Bytes), CallError> {
        if url.starts_with("https://") {
            let Some(client) = &self.mtls else {
                return Err(CallError::Url(format!(
                    "{url}: an https peer needs the control plane's instance credentials \
                     (udn control --pki DIR)"
                )));
            };
            let (status, headers, body) =
                tokio::time::timeout(timeout, Self::call_tls(client, method, url, body, headers))
                    .await
                    .map_err(|_| CallError::Timeout)??;
            if !(200..300).contains(&status) && status != 304 {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(CallError::Status { status, body: text });
            }
            return Ok((status, headers, body));
        }
        let mut req = axum::http::Request::builder().method(method).uri(url);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CallError::Url(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, CallError>((status, headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| CallError::Timeout)??;
        if !(200..300).contains(&status) && status != 304 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(CallError::Status { status, body: text });
        }
        Ok((status, headers, body))
    }

    /// POSTs JSON and returns the 2xx body.
    pub async fn post_json<T: Serialize>(
        &self,
        url: &str,
        body: &T,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let json = serde_json::to_vec(body).map_err(|e| CallError::Url(e.to_string()))?;
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        self.call(axum::http::Method::POST, url, Some(json), &headers, timeout)
            .await
            .map(|(_, _, b)| b)
    }
}

fn join(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// The body of the edge contract's `POST /v1/purge`.
#[derive(Debug, Serialize)]
struct EdgePurge<'a> {
    scope: &'a str,
    target: &'a str,
    seq: u64,
}

/// Sends one purge to one edge.
pub async fn send_purge(http: &HttpClient, edge: &EdgeApi, p: &Purge) -> Result<(), CallError> {
    http.post_json(
        &join(&edge.url, "/v1/purge"),
        &EdgePurge {
            scope: p.scope.as_str(),
            target: &p.target,
            seq: p.seq,
        },
        None,
        Duration::from_secs(5),
    )
    .await
    .map(|_| ())
}

pub(crate) fn start_distributor(state: ApiState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for edge in state.inner.opts.edges.clone() {
        tasks.push(tokio::spawn(deliver_purges(state.clone(), edge.clone())));
        tasks.push(tokio::spawn(deliver_prefills(state.clone(), edge.clone())));
        tasks.push(tokio::spawn(deliver_live_prefills(state.clone(), edge)));
    }
    tasks
}

/// Whether a failed call means the edge refused the item itself (a 4xx about the
/// request: bad target, bad body, too large), so retrying it can never succeed. An
/// authentication or routing answer (401, 403, 404), a timeout (408), a rate limit (429),
/// a 5xx or a connection error is about the channel, not the item: it is retried.
pub fn is_item_rejection(e: &CallError) -> bool {
    matches!(e, CallError::Status { status, .. }
        if (400..500).contains(status) && ![401, 403, 404, 408, 429].contains(status))
}

/// What one delivery attempt did.
enum Attempt {
    /// Applied (or refused for good): go on with the next item.
    Done,
    /// Not delivered: stop this pass and retry after the interval.
    Retry,
}

/// Records the result of one attempt and says whether to go on.
async fn record(
    state: &ApiState,
    kind: DeliveryKind,
    edge: &EdgeApi,
    seq: u64,
    result: Result<(), CallError>,
) -> Attempt {
    let (name, now) = (edge.name.clone(), super::now());
    let (stored, next) = match result {
        Ok(()) => (
            state
                .db(move |b| match kind {
                    DeliveryKind::Purge => {
                        b.deliveries.record_purge_attempt(seq, &name, Ok(()), now)
                    }
                    DeliveryKind::Prefill => {
                        b.deliveries.record_prefill_attempt(seq, &name, Ok(()), now)
                    }
                })
                .await,
            Attempt::Done,
        ),
        Err(e) if is_item_rejection(&e) => {
            let reason = e.to_string();
            tracing::warn!(
                "{} {seq} refused by {}: {reason}; marked failed",
                kind_name(kind),
                edge.name
            );
            (
                state
                    .db(move |b| b.deliveries.fail_delivery(kind, seq, &name, &reason, now))
                    .await,
                Attempt::Done,
            )
        }
        Err(e) => {
            tracing::info!("{} {seq} to {}: {e}", kind_name(kind), edge.name);
            let r = Err(e.to_string());
            (
                state
                    .db(move |b| match kind {
                        DeliveryKind::Purge => {
                            b.deliveries.record_purge_attempt(seq, &name, r, now)
                        }
                        DeliveryKind::Prefill => {
                            b.deliveries.record_prefill_attempt(seq, &name, r, now)
                        }
                    })
                    .await,
                Attempt::Retry,
            )
        }
    };
    if let Err(e) = stored {
        tracing::warn!("recording {} {seq}: {}", kind_name(kind), e.message());
        // Not recorded: it is still pending, so the next pass sends it again.
        return Attempt::Retry;
    }
    next
}

fn kind_name(kind: DeliveryKind) -> &'static str {
    match kind {
        DeliveryKind::Purge => "purge",
        DeliveryKind::Prefill => "prefill",
    }
}

/// Delivers every pending purge to one edge, in sequence order. An item the edge
/// refuses (a 4xx) is marked failed and the next one goes on; on a connection error or
/// a 5xx it waits for the retry interval (or a new purge, or a cancel) and starts again
/// from the oldest pending one. Prefills have their own task, so a long prefill never
/// holds a purge back.
async fn deliver_purges(state: ApiState, edge: EdgeApi) {
    let mut wake = state.inner.purge_seq.subscribe();
    let retry = Duration::from_secs(state.inner.opts.purge_retry_secs.unwrap_or(2).max(1));
    loop {
        // Mark the current sequence number seen *before* reading the pending purges, so
        // a purge recorded while this pass runs wakes the next pass instead of being
        // missed.
        wake.mark_unchanged();
        let name = edge.name.clone();
        let pending = match state.db(move |b| b.deliveries.pending_purges(&name)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("pending purges of {}: {}", edge.name, e.message());
                Vec::new()
            }
        };
        let mut failed = false;
        for p in pending {
            let result = send_purge(&state.inner.http, &edge, &p).await;
            if let Attempt::Retry = record(&state, DeliveryKind::Purge, &edge, p.seq, result).await
            {
                failed = true;
                break;
            }
        }
        // After a failure retry soon; otherwise sleep until a new purge (with a slow
        // sweep for purges recorded by another control-plane process).
        let wait = if failed { retry } else { retry * 30 };
        if let Ok(Err(_)) = tokio::time::timeout(wait, wake.changed()).await {
            return;
        }
    }
}

/// Delivers every pending prefill to one edge, in sequence order, like
/// [`deliver_purges`]; a prefill waits while the edge still has a purge pending that was
/// made before it, so a prefill made after a purge brings fresh content.
async fn deliver_prefills(state: ApiState, edge: EdgeApi) {
    let mut wake = state.inner.prefill_wake.subscribe();
    let retry = Duration::from_secs(state.inner.opts.purge_retry_secs.unwrap_or(2).max(1));
    loop {
        wake.mark_unchanged();
        let name = edge.name.clone();
        let pending = match state
            .db(move |b| b.deliveries.pending_prefills(&name))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("pending prefills of {}: {}", edge.name, e.message());
                Vec::new()
            }
        };
        let mut failed = false;
        for p in pending {
            let name = edge.name.clone();
            let older_purge = state
                .db(move |b| b.deliveries.pending_purges(&name))
                .await
                .map(|list| list.iter().any(|q| q.requested_at <= p.requested_at))
                .unwrap_or(true);
            if older_purge {
                failed = true;
                break;
            }
            let result = send_prefill(&state.inner.http, &edge, &p).await;
            if let Attempt::Retry =
                record(&state, DeliveryKind::Prefill, &edge, p.seq, result).await
            {
                failed = true;
                break;
            }
        }
        let wait = if failed { retry } else { retry * 30 };
        if let Ok(Err(_)) = tokio::time::timeout(wait, wake.changed()).await {
            return;
        }
    }
}

/// How long before a live event's start the edges prefill it.
pub const LIVE_PREFILL_LEAD: Duration = Duration::from_secs(10 * 60);

/// Attempts per edge and live event before its prefill there is given up (its status
/// keeps the last error).
pub const MAX_LIVE_ATTEMPTS: u32 = 100;

/// Prefills the live events that are due on one edge: each event from
/// [`LIVE_PREFILL_LEAD`] before its start until its end, until the edge prefilled it (or
/// [`MAX_LIVE_ATTEMPTS`] failed). It looks every retry interval (and when an event is
/// registered), so an edge that was down prefills the events due meanwhile when it
/// comes back.
async fn deliver_live_prefills(state: ApiState, edge: EdgeApi) {
    let mut wake = state.inner.prefill_wake.subscribe();
    let retry = Duration::from_secs(state.inner.opts.purge_retry_secs.unwrap_or(2).max(1));
    let lead = LIVE_PREFILL_LEAD.as_millis() as u64;
    loop {
        wake.mark_unchanged();
        let (name, now) = (edge.name.clone(), super::now());
        let due = match state
            .db(move |b| {
                b.deliveries
                    .due_live_events(&name, now, lead, MAX_LIVE_ATTEMPTS)
            })
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("due live events of {}: {}", edge.name, e.message());
                Vec::new()
            }
        };
        for ev in due {
            let result = send_live_prefill(&state.inner.http, &edge, &ev).await;
            if let Err(e) = &result {
                tracing::info!("live event {} prefill on {}: {e}", ev.id, edge.name);
            }
            let (name, now, id) = (edge.name.clone(), super::now(), ev.id);
            let r = result.map_err(|e| e.to_string());
            if let Err(e) = state
                .db(move |b| b.deliveries.record_live_prefill(id, &name, r, now))
                .await
            {
                tracing::warn!("recording live event {id}: {}", e.message());
            }
        }
        if let Ok(Err(_)) = tokio::time::timeout(retry, wake.changed()).await {
            return;
        }
    }
}

/// Sends one live event's prefill to one edge (`POST /v1/prefill-live {"url": ...,
/// "max_segments": N}`); the edge answers when its cache holds them.
pub async fn send_live_prefill(
    http: &HttpClient,
    edge: &EdgeApi,
    ev: &super::backend::LiveEvent,
) -> Result<(), CallError> {
    http.post_json(
        &join(&edge.url, "/v1/prefill-live"),
        &serde_json::json!({ "url": ev.playlist_url, "max_segments": ev.max_segments }),
        None,
        Duration::from_secs(60),
    )
    .await
    .map(|_| ())
}

/// Sends one prefill to one edge (`POST /v1/prefill {"urls": [...]}`).
pub async fn send_prefill(http: &HttpClient, edge: &EdgeApi, p: &Prefill) -> Result<(), CallError> {
    http.post_json(
        &join(&edge.url, "/v1/prefill"),
        &serde_json::json!({ "urls": p.urls }),
        None,
        Duration::from_secs(30),
    )
    .await
    .map(|_| ())
}

/// One row of a page check in ms: STT and END are offsets from the start of the page,
/// DRT (DNS), COT (connect), TLS, DST (wait for the first byte) and FNT (receive)
/// durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PageRow {
    /// Which pass (1, or 2 for the warm repeat).
    #[serde(default = "first_pass")]
    pub pass: u8,
    /// The component's URL.
    pub url: String,
    /// The server address it came from.
    #[serde(default)]
    pub ip: Option<String>,
    /// The error (message or code), if it failed.
    #[serde(default)]
    pub err: Option<serde_json::Value>,
    /// HTTP response code.
    #[serde(default)]
    pub hrc: Option<u16>,
    /// Body length in bytes.
    #[serde(default)]
    pub len: Option<u64>,
    /// Content check (CRC-32 of the body, or a verdict).
    #[serde(default)]
    pub chk: Option<serde_json::Value>,
    /// Start offset.
    #[serde(default)]
    pub stt: f64,
    /// DNS resolution.
    #[serde(default)]
    pub drt: f64,
    /// TCP connect.
    #[serde(default)]
    pub cot: f64,
    /// TLS handshake.
    #[serde(default)]
    pub tls: f64,
    /// Wait for the first byte.
    #[serde(default)]
    pub dst: f64,
    /// Receive.
    #[serde(default)]
    pub fnt: f64,
    /// End offset.
    #[serde(default)]
    pub end: f64,
}

fn first_pass() -> u8 {
    1
}

impl PageRow {
    /// Whether the component failed (an error, or an HTTP status of 400 or more).
    pub fn failed(&self) -> bool {
        let err = match &self.err {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(s)) => !s.is_empty(),
            Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(_) => true,
        };
        err || self.hrc.is_some_and(|h| h >= 400)
    }
}

/// One location's page-check result.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LocationCheck {
    /// The location (POP).
    pub location: String,
    /// Whether the probe answered.
    pub ok: bool,
    /// Its error, when not.
    pub error: Option<String>,
    /// The rows of every pass.
    pub rows: Vec<PageRow>,
}

/// Reads one row: the probe's form (`stt_us` ... in µs, `err` code plus `error`
/// message, `chk` CRC-32) or the column form (`STT` ... in ms, either case).
fn page_row(v: &serde_json::Value, pass: u8) -> Option<PageRow> {
    use serde_json::Value;
    let o = v.as_object()?;
    let get = |k: &str| o.get(k).or_else(|| o.get(&k.to_ascii_uppercase()));
    let ms = |k: &str| match o.get(&format!("{k}_us")).and_then(Value::as_f64) {
        Some(us) => us / 1000.0,
        None => get(k).and_then(Value::as_f64).unwrap_or(0.0),
    };
    let err = match (o.get("error"), get("err")) {
        (Some(e), _) if !e.is_null() => Some(match e {
            Value::String(_) => e.clone(),
            other => Value::String(other.to_string()),
        }),
        (_, Some(Value::Number(n))) if n.as_f64() == Some(0.0) => None,
        (_, Some(Value::Null)) | (_, None) => None,
        (_, Some(e)) => Some(e.clone()),
    };
    Some(PageRow {
        pass,
        url: get("url")?.as_str()?.to_owned(),
        ip: get("ip")
            .or_else(|| o.get("server_ip"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        err,
        hrc: get("hrc")
            .and_then(Value::as_u64)
            .and_then(|h| u16::try_from(h).ok())
            .filter(|h| *h != 0),
        len: get("len").and_then(Value::as_u64),
        chk: get("chk").filter(|c| !c.is_null()).cloned(),
        stt: ms("stt"),
        drt: ms("drt"),
        cot: ms("cot"),
        tls: ms("tls"),
        dst: ms("dst"),
        fnt: ms("fnt"),
        end: ms("end"),
    })
}

/// Reads a probe's page-check answer: `{"pop", "reports": [{"overall": {"pass"},
/// "rows": [...]}]}` (the probe's form), `{"rows": [...]}` or a bare array of rows.
pub(crate) fn parse_rows(body: &[u8]) -> Result<Vec<PageRow>, String> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut push = |rows: &[Value], pass: u8| -> Result<(), String> {
        for r in rows {
            out.push(page_row(r, pass).ok_or("a page-check row without a URL")?);
        }
        Ok(())
    };
    match &v {
        Value::Array(rows) => push(rows, 1)?,
        Value::Object(m) => {
            if let Some(Value::Array(reports)) = m.get("reports") {
                for (i, r) in reports.iter().enumerate() {
                    let pass = r
                        .get("overall")
                        .and_then(|o| o.get("pass"))
                        .and_then(Value::as_u64)
                        .and_then(|p| u8::try_from(p).ok())
                        .unwrap_or(u8::try_from(i + 1).unwrap_or(u8::MAX));
                    if let Some(Value::Array(rows)) = r.get("rows") {
                        push(rows, pass)?;
                    }
                }
            } else if let Some(Value::Array(rows)) = m.get("rows") {
                push(rows, 1)?;
            } else {
                return Err("page check answer has no reports or rows".into());
            }
        }
        _ => return Err("page check answer is not a JSON array or object".into()),
    }
    Ok(out)
}

/// Runs a page check of `url` on the probes of `locations` at once.
pub async fn pagecheck(
    state: &ApiState,
    url: &str,
    locations: &[String],
    repeat: bool,
    allow_hosts: &[String],
) -> Vec<LocationCheck> {
    let body = serde_json::json!({ "url": url, "repeat": repeat, "allow_hosts": allow_hosts });
    let calls = locations.iter().map(|loc| {
        let body = &body;
        async move {
            let Some(probe) = state.inner.opts.probes.iter().find(|p| &p.location == loc) else {
                return LocationCheck {
                    location: loc.clone(),
                    ok: false,
                    error: Some("no probe at this location".into()),
                    rows: Vec::new(),
                };
            };
            let target = join(&probe.url, "/v1/pagecheck");
            // https probes are reached with the control plane's instance certificate.
            let r = state
                .inner
                .http
                .post_json(&target, body, None, Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| parse_rows(&b));
            match r {
                Ok(rows) => LocationCheck {
                    location: loc.clone(),
                    ok: true,
                    error: None,
                    rows,
                },
                Err(e) => LocationCheck {
                    location: loc.clone(),
                    ok: false,
                    error: Some(e),
                    rows: Vec::new(),
                },
            }
        }
    });
    futures_util::future::join_all(calls).await
}
