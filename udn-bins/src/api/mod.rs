//! The control plane's versioned REST API (`/v1/...`), its storage interface
//! ([`Backend`]), the snapshot every role fetches (read by
//! [`crate::distribution::config_watcher`]) and the purge, prefill and page-check
//! fan-out to edges and probes.
//!
//! `udn control` builds an [`ApiState`] from a [`Backend`] and [`ControlOptions`], starts
//! the purge distributor with [`ApiState::start_purge_distributor`], and serves
//! [`crate::portal::app`] (API + portal) over HTTPS with [`crate::portal::serve_https`]
//! and, for machines on the internal network, over plain HTTP with [`serve_http`].

pub mod auth;
pub mod challenge;
pub mod fanout;
pub mod openapi;
pub mod page;
pub(crate) mod routes;
pub mod store_backend;
pub mod timerange;

/// The control plane's tables (`udn-store`).
pub use udn_store::control::{backend, postgres, sqlite};

pub use auth::{Auth, LoginLimiter};
pub use backend::{
    Accounts, Backend, BackendError, Billing, Configs, ControlTables, Deliveries, Role, Traffic,
    User,
};
pub use fanout::{EdgeApi, ProbeApi};
pub use postgres::PgBackend;
pub use routes::{ClientIp, IsTls, OverTls};
pub use sqlite::SqliteBackend;
pub use store_backend::StoreBackend;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Mutex, watch};
use udn_core::{ConfigErrors, Timestamp};

/// Start-up options of the control plane's API.
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    /// Every edge and the base URL of its admin listener (purge and prefill go there).
    pub edges: Vec<EdgeApi>,
    /// Every probe, by location, and the base URL of its HTTP API (page checks).
    pub probes: Vec<ProbeApi>,
    /// The control plane's instance credentials (role control), presented to the edges'
    /// admin listeners (`https://` edge URLs); without them those calls fail.
    pub credentials: Option<crate::pki::Credentials>,
    /// The directory the configuration's zone files (`dns.zones[].file`) are read from
    /// to check, before accepting a version, that the DNS servers would load it
    /// ([`crate::distribution::zone_check`]); `None`: a version naming a zone file is refused.
    pub zone_dir: Option<std::path::PathBuf>,
    /// How long a hostname may stay pending (its TXT challenge not yet found) before it
    /// is removed, so nobody can hold a name they cannot prove; `None`: 7 days;
    /// `Some(ZERO)`: never.
    pub pending_ttl: Option<std::time::Duration>,
    /// Seconds between retries of a purge an edge did not acknowledge (default 2).
    pub purge_retry_secs: Option<u64>,
    /// The DNS resolver asked for hostname TXT challenges (default: the first
    /// `nameserver` of `/etc/resolv.conf`).
    pub challenge_resolver: Option<SocketAddr>,
    /// Self sign-up in the portal (`--self-signup`); `None`: off.
    pub signup: Option<crate::portal::signup::SignupOptions>,
}

/// How long a hostname may stay pending by default: 7 days.
pub const DEFAULT_PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// The stores behind the API, one per concern. A single [`Backend`] can serve them all
/// ([`Stores::of`], for tools and tests); `udn control` serves the traffic queries and
/// billing from the log and billing stores ([`StoreBackend`]) and the rest from the
/// control plane's own tables.
#[derive(Clone)]
pub struct Stores {
    /// Users, sessions, API tokens.
    pub accounts: Arc<dyn Accounts>,
    /// Configuration versions.
    pub configs: Arc<dyn Configs>,
    /// Purges, prefills, live events.
    pub deliveries: Arc<dyn Deliveries>,
    /// Traffic and GTM queries.
    pub traffic: Arc<dyn Traffic>,
    /// Invoices, billing runs, sign-ups.
    pub billing: Arc<dyn Billing>,
}

impl Stores {
    /// Every concern from `backend`.
    pub fn of(backend: Arc<dyn Backend>) -> Stores {
        Stores {
            accounts: backend.clone(),
            configs: backend.clone(),
            deliveries: backend.clone(),
            traffic: backend.clone(),
            billing: backend,
        }
    }
}

impl From<Arc<dyn Backend>> for Stores {
    fn from(backend: Arc<dyn Backend>) -> Stores {
        Stores::of(backend)
    }
}

/// Shared state of the API and portal handlers.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) stores: Stores,
    pub(crate) opts: ControlOptions,
    /// The newest committed config version; long-polls wait on it.
    pub(crate) config_version: watch::Sender<u64>,
    /// The newest purge sequence number; the edges' purge delivery tasks wake on it.
    pub(crate) purge_seq: watch::Sender<u64>,
    /// Bumped by a new or cancelled prefill; the prefill delivery tasks wake on it.
    pub(crate) prefill_wake: watch::Sender<u64>,
    /// Serialises read-modify-write changes of the config.
    pub(crate) config_write: Mutex<()>,
    /// The last configuration read, parsed: reused while the stored version is the same
    /// (most requests read the config; parsing it each time was their main cost).
    pub(crate) config_cache: std::sync::Mutex<Option<Arc<backend::ConfigSnapshot>>>,
    pub(crate) limiter: std::sync::Mutex<LoginLimiter>,
    /// Sign-up submissions per client address.
    pub(crate) signup_limiter: std::sync::Mutex<crate::portal::signup::SignupLimiter>,
    pub(crate) http: fanout::HttpClient,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("edges", &self.inner.opts.edges)
            .field("probes", &self.inner.opts.probes)
            .finish()
    }
}

impl ApiState {
    /// Builds the state; reads the current config version and the last purge from the
    /// stores. Blocks (call it from a blocking thread).
    pub fn new(stores: impl Into<Stores>, opts: ControlOptions) -> Result<ApiState, BackendError> {
        let stores = stores.into();
        // A client that cannot be built leaves the edges unreachable (their calls fail
        // and are retried), never unauthenticated.
        let http = match opts
            .credentials
            .as_ref()
            .map(fanout::HttpClient::with_credentials)
        {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::error!("edge fan-out client: {e:#}");
                fanout::HttpClient::new()
            }
            None => fanout::HttpClient::new(),
        };
        let version = stores.configs.current_version()?;
        let last_purge = stores
            .deliveries
            .purges(None, 1, None)?
            .first()
            .map(|p| p.seq)
            .unwrap_or(0);
        Ok(ApiState {
            inner: Arc::new(Inner {
                stores,
                opts,
                config_version: watch::channel(version).0,
                purge_seq: watch::channel(last_purge).0,
                prefill_wake: watch::channel(0).0,
                config_write: Mutex::new(()),
                config_cache: std::sync::Mutex::new(None),
                limiter: std::sync::Mutex::new(LoginLimiter::default()),
                signup_limiter: std::sync::Mutex::new(Default::default()),
                http,
            }),
        })
    }

    /// The stores.
    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    /// The start-up options.
    pub fn options(&self) -> &ControlOptions {
        &self.inner.opts
    }

    /// Tells long-polling config readers that `version` was committed outside the API
    /// (for example by `udn control --config` at start).
    pub fn config_committed(&self, version: u64) {
        self.inner.config_version.send_replace(version);
    }

    /// Starts one delivery task per edge that sends every pending purge in sequence
    /// order and retries an edge that did not acknowledge until it does; returns the
    /// tasks' handles (abort them to stop).
    /// Also starts the task that removes expired pending hostnames
    /// ([`ControlOptions::pending_ttl`]).
    pub fn start_purge_distributor(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = fanout::start_distributor(self.clone());
        let ttl = self.inner.opts.pending_ttl.unwrap_or(DEFAULT_PENDING_TTL);
        if !ttl.is_zero() {
            let st = self.clone();
            let every = (ttl / 2).clamp(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(60),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match st.expire_pending(ttl).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(removed = n, "expired pending hostnames"),
                        Err(e) => tracing::warn!("expiring pending hostnames: {e:?}"),
                    }
                }
            }));
        }
        tasks
    }

    /// Removes the hostnames pending for `ttl` or longer in one new configuration
    /// version (author `pending-expiry`); returns how many.
    async fn expire_pending(&self, ttl: std::time::Duration) -> Result<usize, ApiError> {
        let _guard = self.inner.config_write.lock().await;
        let snap = routes::current(self).await?;
        let mut cfg = snap.config.clone();
        let now = now();
        let n = challenge::drop_expired(&mut cfg, ttl.as_secs(), now.as_millis() / 1000);
        if n == 0 {
            return Ok(0);
        }
        let base = snap.version;
        let version = self
            .db(move |b| b.configs.commit_config(base, &cfg, "pending-expiry", now))
            .await?;
        self.config_committed(version);
        Ok(n)
    }

    /// Runs a backend call off the async threads.
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Stores) -> Result<T, BackendError> + Send + 'static,
    {
        let b = self.inner.stores.clone();
        tokio::task::spawn_blocking(move || f(&b))
            .await
            .map_err(|_| ApiError::Internal("backend task failed".into()))?
            .map_err(ApiError::from)
    }
}

/// The versioned REST API: every `/v1/...` route and `/health`.
pub fn router(state: ApiState) -> axum::Router {
    routes::router(state)
}

/// The roles' configuration channel (`GET /v1/config` for instance roles dns, edge and
/// probe, with the revoked fingerprints of `revoked`), for the control plane's
/// mutual-TLS machine listener; see `docs/api.md`.
pub fn role_config_router(state: ApiState, revoked: crate::pki::Revocations) -> axum::Router {
    routes::role_config_router(state, revoked)
}

/// The API for the plain-HTTP listener: [`router`] without the routes that take a
/// password or issue a credential (`/v1/auth/*`, `/v1/me/password`, `/v1/users`,
/// `/v1/tokens`), which exist only over HTTPS.
pub fn machine_router(state: ApiState) -> axum::Router {
    routes::machine_router(state)
}

/// Serves `app` over plain HTTP on `addr` (the internal listener for machines: config
/// distribution to DNS servers, edges and probes). Returns the bound address and the
/// server task.
pub async fn serve_http(
    addr: SocketAddr,
    app: axum::Router,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::listener::bind_and_serve(addr, app, None, crate::listener::Limits::default()).await
}

/// The wall clock, in the type the backend takes.
pub(crate) fn now() -> Timestamp {
    crate::logging::now()
}

/// One field at fault in a request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field (in the config: `gtm[0].targets[1].server`; in a request body:
    /// the body's field name).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// An API error, rendered as JSON `{"error": "...", "errors": [{"field", "message"}]}`.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request body or query is malformed.
    BadRequest(String),
    /// 400: a query parameter has a value that cannot be used; the parameter is named.
    BadParam(FieldError),
    /// 413: the request body is over the limit.
    TooLarge(String),
    /// 415: the request body is not `application/json`.
    UnsupportedMediaType(String),
    /// 422: validation failed; each field at fault is named.
    Invalid(Vec<FieldError>),
    /// 401: not logged in.
    Unauthorized,
    /// 403: logged in, but the object belongs to someone else (or needs an admin).
    Forbidden,
    /// 403: a cookie-authenticated change without a valid CSRF token.
    Csrf,
    /// 403 with the reason (an API token without the scope a route needs).
    Denied(String),
    /// 404.
    NotFound,
    /// 409: a name is taken or the config changed underneath.
    Conflict(String),
    /// 409: a hostname or origin domain belongs to another customer; the field is named.
    Taken(FieldError),
    /// 429: too many failed logins.
    TooManyAttempts(u64),
    /// 502: an edge or probe could not be reached.
    Upstream(String),
    /// 500.
    Internal(String),
    /// 503: a store the request needs failed (retry later); the reason is given.
    Unavailable(String),
}

impl ApiError {
    /// One invalid field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadParam(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Csrf | ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Taken(_) => StatusCode::CONFLICT,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A one-line description.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m) | ApiError::TooLarge(m) | ApiError::UnsupportedMediaType(m) => {
                m.clone()
            }
            ApiError::Invalid(errs) => errs
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::Unauthorized => "login required".into(),
            ApiError::Forbidden => "not allowed".into(),
            ApiError::Csrf => "missing or wrong CSRF token".into(),
            ApiError::Denied(m) => m.clone(),
            ApiError::NotFound => "not found".into(),
            ApiError::Conflict(m) => m.clone(),
            ApiError::Taken(e) | ApiError::BadParam(e) => format!("{}: {}", e.field, e.message),
            ApiError::TooManyAttempts(s) => format!("too many failed logins; retry in {s} s"),
            ApiError::Upstream(m) => m.clone(),
            ApiError::Internal(m) => m.clone(),
            ApiError::Unavailable(m) => m.clone(),
        }
    }

    pub(crate) fn from_config_errors(errs: &ConfigErrors) -> ApiError {
        ApiError::Invalid(
            errs.0
                .iter()
                .map(|e| {
                    let full = e.to_string();
                    let message = full
                        .strip_prefix(&format!("{}: ", e.path))
                        .unwrap_or(&full)
                        .to_owned();
                    FieldError {
                        field: e.path.clone(),
                        message,
                    }
                })
                .collect(),
        )
    }
}

/// A billing failure as an answer: a rule violation is 409 (422 for a period that is
/// not over, naming `period`), a fee-engine refusal (an invalid account or plan, an
/// amount beyond the decimal range) 422 with the reason, anything else a storage
/// failure: 503.
fn billing_error(e: &anyhow::Error) -> ApiError {
    use crate::billing::run::RuleViolation;
    for cause in e.chain() {
        if let Some(v) = cause.downcast_ref::<RuleViolation>() {
            return match v {
                RuleViolation::PeriodNotOver { .. } => ApiError::field("period", v.to_string()),
                RuleViolation::State(_) => ApiError::Conflict(v.to_string()),
            };
        }
        if let Some(b) = cause.downcast_ref::<udn_billing::Error>() {
            return ApiError::field("billing", b.to_string());
        }
    }
    tracing::error!("billing: {e:#}");
    ApiError::Unavailable("billing store unavailable; retry later".into())
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> ApiError {
        match e {
            BackendError::NotFound => ApiError::NotFound,
            BackendError::Duplicate(n) => ApiError::Conflict(format!("{n} already exists")),
            BackendError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            BackendError::Invalid(errs) => ApiError::from_config_errors(&errs),
            BackendError::Config(udn_core::Error::Invalid(errs)) => {
                ApiError::from_config_errors(&errs)
            }
            BackendError::BadPeriod(e) => ApiError::field("period", e.to_string()),
            BackendError::Unsupported(_) => ApiError::NotFound,
            BackendError::Billing(e) => billing_error(&e),
            other => {
                tracing::error!("backend: {other}");
                ApiError::Internal("storage error".into())
            }
        }
    }
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
struct ErrorBody {
    /// What went wrong.
    error: String,
    /// The fields at fault (validation errors), when any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let errors = match &self {
            ApiError::Invalid(e) => e.clone(),
            ApiError::Taken(e) | ApiError::BadParam(e) => vec![e.clone()],
            _ => Vec::new(),
        };
        let retry = match &self {
            ApiError::TooManyAttempts(s) => Some(*s),
            _ => None,
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.message(),
                errors,
            }),
        )
            .into_response();
        if let Some(s) = retry
            && let Ok(v) = axum::http::HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
