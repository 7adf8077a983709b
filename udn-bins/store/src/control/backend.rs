//! The control plane's storage interface: everything the REST API and the portal read
//! and write goes through [`Backend`], so the store behind it (SQLite by default,
//! PostgreSQL at scale, the log store and billing for traffic and invoices) can change
//! without touching a handler.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use udn_core::{Config, ConfigErrors, Timestamp};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Engineering staff: sees and changes everything.
    Admin,
    /// A customer's user: sees and changes only that customer's objects.
    Customer,
}

impl Role {
    /// The role's name in the store and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Customer => "customer",
        }
    }

    /// Parses [`Role::as_str`] output.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "customer" => Some(Role::Customer),
            _ => None,
        }
    }
}

/// A portal or API user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// The customer a [`Role::Customer`] user belongs to.
    pub customer: Option<String>,
}

impl User {
    /// Whether this user may see and change objects of `customer`.
    pub fn may_access(&self, customer: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Customer => self.customer.as_deref() == Some(customer),
        }
    }
}

/// How a session token is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A browser session cookie (expires, needs a CSRF token for changes).
    Cookie,
    /// A bearer token for machines (`Authorization: Bearer ...`).
    Bearer,
}

impl SessionKind {
    /// The kind's name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Cookie => "cookie",
            SessionKind::Bearer => "bearer",
        }
    }
}

/// A freshly created session: the secrets are only ever shown here.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The session token (cookie value or bearer token).
    pub token: String,
    /// The CSRF token bound to the session.
    pub csrf: String,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// A live session looked up by its token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who it belongs to.
    pub user: User,
    /// How the token is presented.
    pub kind: SessionKind,
    /// The CSRF token bound to it.
    pub csrf: String,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// What an API token may do. A token acts as its user, restricted to its scopes; every
/// route needs one scope (see `auth::required_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reading the user's objects (every `GET` outside billing).
    Read,
    /// Purges and prefills.
    Purge,
    /// Changes to CDN and GTM hostnames, customers, the configuration, page checks.
    Config,
    /// Invoices and billing runs.
    Billing,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Purge, Scope::Config, Scope::Billing];

    /// The scope's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Purge => "purge",
            Scope::Config => "config",
            Scope::Billing => "billing",
        }
    }

    /// Parses [`Scope::as_str`] output.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The stored form of a set of scopes: names joined by commas.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses [`Scope::join`] output (unknown names are dropped).
    pub fn split(s: &str) -> Vec<Scope> {
        s.split(',').filter_map(Scope::parse).collect()
    }
}

/// A named API token of a user (never its secret, which is shown once at creation and
/// stored only as its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    /// Row id (what `DELETE /v1/tokens/{id}` takes).
    pub id: i64,
    /// The name its owner gave it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created (ms since the epoch).
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was last used (updated at most once a minute), if ever.
    pub last_used: Option<Timestamp>,
}

/// Prefix of every API token secret (tells them apart from session tokens).
pub const API_TOKEN_PREFIX: &str = "udn_";

/// How often [`Accounts::api_token`] writes `last_used` for one token, ms.
pub const LAST_USED_EVERY_MS: i64 = 60_000;

/// One version of the network configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigSnapshot {
    /// Version number; 0 is the empty configuration before the first commit.
    pub version: u64,
    /// The configuration.
    pub config: Config,
    /// When it was committed (ms since the epoch).
    pub created_at: Timestamp,
    /// Who committed it.
    pub author: String,
}

/// What a purge covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PurgeScope {
    /// One URL.
    Url,
    /// A directory: every URL under the prefix.
    Prefix,
    /// A whole domain.
    Domain,
}

impl PurgeScope {
    /// The scope's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeScope::Url => "url",
            PurgeScope::Prefix => "prefix",
            PurgeScope::Domain => "domain",
        }
    }

    /// Parses [`PurgeScope::as_str`] output.
    pub fn parse(s: &str) -> Option<PurgeScope> {
        match s {
            "url" => Some(PurgeScope::Url),
            "prefix" => Some(PurgeScope::Prefix),
            "domain" => Some(PurgeScope::Domain),
            _ => None,
        }
    }
}

/// A purge request, numbered in the order it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Purge {
    /// Sequence number (strictly increasing).
    pub seq: u64,
    /// The customer it belongs to.
    pub customer: String,
    /// What it covers.
    pub scope: PurgeScope,
    /// The URL, directory URL or domain.
    pub target: String,
    /// Who asked for it.
    pub requested_by: String,
    /// When (ms since the epoch).
    pub requested_at: Timestamp,
}

/// A prefill request: URLs every edge should fetch into its cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prefill {
    /// Sequence number (strictly increasing, separate from purges).
    pub seq: u64,
    /// The customer it belongs to.
    pub customer: String,
    /// The URLs.
    pub urls: Vec<String>,
    /// Who asked for it.
    pub requested_by: String,
    /// When (ms since the epoch).
    pub requested_at: Timestamp,
}

/// A live event a customer registered: every edge prefills its playlist and the
/// segments it names ahead of the start (`POST /v1/live-events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LiveEvent {
    /// Its number.
    pub id: u64,
    /// The customer it belongs to.
    pub customer: String,
    /// The customer's CDN hostname it is served on.
    pub hostname: String,
    /// The playlist (master or media) on that hostname.
    pub playlist_url: String,
    /// When it starts (ms since the epoch).
    pub starts_at: Timestamp,
    /// When it ends, if known (ms since the epoch).
    pub ends_at: Option<Timestamp>,
    /// The most segments each edge prefills.
    pub max_segments: u32,
    /// Who registered it.
    pub created_by: String,
    /// When (ms since the epoch).
    pub created_at: Timestamp,
}

impl LiveEvent {
    /// How long an event without an end is taken to last (for its prefill window and
    /// the per-customer limit of open events), ms.
    pub const DEFAULT_DURATION_MS: u64 = 24 * 3600 * 1000;

    /// When it ends, or is taken to end.
    pub fn end(&self) -> Timestamp {
        self.ends_at.unwrap_or(Timestamp::from_millis(
            self.starts_at
                .as_millis()
                .saturating_add(Self::DEFAULT_DURATION_MS),
        ))
    }
}

/// The two delivery queues to the edges: purges and prefills (each with its own
/// sequence numbers, status rows and delivery task per edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryKind {
    /// `cp_purge_status`.
    Purge,
    /// `cp_prefill_status`.
    Prefill,
}

impl DeliveryKind {
    /// The status table of the queue.
    pub fn table(self) -> &'static str {
        match self {
            DeliveryKind::Purge => "cp_purge_status",
            DeliveryKind::Prefill => "cp_prefill_status",
        }
    }
}

/// Where one purge (or prefill) stands on one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet (being retried after a connection error or a 5xx).
    Pending,
    /// The edge applied (purge) or accepted (prefill) it.
    Applied,
    /// The edge refused it with a 4xx: never retried; `last_error` has its reason.
    Failed,
    /// An admin cancelled it before this edge applied it.
    Cancelled,
}

impl DeliveryState {
    /// The state's name in the store (`state` column) and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Applied => "applied",
            DeliveryState::Failed => "failed",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    /// Parses [`DeliveryState::as_str`] output (anything else reads as pending).
    pub fn parse(s: &str) -> DeliveryState {
        match s {
            "applied" => DeliveryState::Applied,
            "failed" => DeliveryState::Failed,
            "cancelled" => DeliveryState::Cancelled,
            _ => DeliveryState::Pending,
        }
    }
}

/// Whether one edge has applied one purge (or prefill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurgeEdgeStatus {
    /// The edge's name.
    pub edge: String,
    /// Where it stands on this edge.
    pub state: DeliveryState,
    /// Whether the edge acknowledged it.
    pub applied: bool,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last delivery error, if the last attempt failed.
    pub last_error: Option<String>,
    /// When it was applied.
    pub applied_at: Option<Timestamp>,
}

/// CDN traffic in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrafficPoint {
    /// Start of the minute (ms since the epoch).
    pub minute: Timestamp,
    /// Bytes served.
    pub bytes: u64,
    /// Requests served.
    pub hits: u64,
}

/// CDN traffic served by one location over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LocationTraffic {
    /// The POP name.
    pub pop: String,
    /// Bytes served.
    pub bytes: u64,
    /// Requests served.
    pub hits: u64,
}

/// How often one GTM address was given out in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnswerPoint {
    /// Start of the minute (ms since the epoch).
    pub minute: Timestamp,
    /// The GTM hostname.
    pub hostname: String,
    /// The address given out.
    pub address: String,
    /// How many answers carried it.
    pub answers: u64,
}

/// How often one address was given out, by the location of that address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LocationAnswers {
    /// The location (POP) of the address given out: the edge's POP, or for an origin
    /// server the POP that stands in for its site.
    pub pop: String,
    /// The address given out.
    pub address: String,
    /// How many answers carried it.
    pub answers: u64,
}

/// An issued invoice, without its rendered body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvoiceSummary {
    /// Row id.
    pub id: i64,
    /// Invoice number.
    pub number: String,
    /// The customer billed.
    pub customer: String,
    /// Start of the billed period (ms since the epoch).
    pub period_start: Timestamp,
    /// End of the billed period (exclusive).
    pub period_end: Timestamp,
    /// Total due.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub total: Decimal,
    /// ISO 4217 currency code.
    pub currency: String,
    /// When it was issued.
    pub issued_at: Timestamp,
}

/// An invoice with its rendered HTML body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invoice {
    /// The summary.
    pub summary: InvoiceSummary,
    /// The invoice as an HTML fragment, as billing rendered it.
    pub html: String,
}

/// A plan offered at sign-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignupPlan {
    /// Plan id.
    pub id: String,
    /// Its newest version.
    pub version: u32,
    /// Display name.
    pub name: String,
    /// Currency code.
    pub currency: String,
    /// Billing period (`month`, `hour`, ...).
    pub period: String,
    /// Whether it charges for CDN usage (then the account must choose GTM and CDN).
    pub uses_cdn: bool,
}

/// Where a sign-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignupStatus {
    /// Confirmed by e-mail; an operator has not decided yet (its domains cannot be
    /// verified, so nothing goes live).
    AwaitingApproval,
    /// Approved by an operator.
    Approved,
    /// Refused by an operator (the customer, its users and domains were removed).
    Refused,
}

impl SignupStatus {
    /// Stored code.
    pub fn code(self) -> i64 {
        match self {
            SignupStatus::AwaitingApproval => 0,
            SignupStatus::Approved => 1,
            SignupStatus::Refused => 2,
        }
    }

    /// From the stored code.
    pub fn from_code(c: i64) -> Option<SignupStatus> {
        match c {
            0 => Some(SignupStatus::AwaitingApproval),
            1 => Some(SignupStatus::Approved),
            2 => Some(SignupStatus::Refused),
            _ => None,
        }
    }

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            SignupStatus::AwaitingApproval => "awaiting operator approval",
            SignupStatus::Approved => "approved",
            SignupStatus::Refused => "refused",
        }
    }
}

/// A sign-up as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signup {
    /// The billing account (and customer) id.
    pub account: udn_billing::Account,
    /// The decision.
    pub status: SignupStatus,
}

/// What an admin does to an issued invoice ([`Billing::billing_invoice_action`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceAction {
    /// A payment received outside any card provider (a bank transfer).
    Pay {
        /// The amount, in the invoice's currency.
        amount: rust_decimal::Decimal,
        /// The payment's reference (bank statement line).
        reference: String,
    },
    /// Cancelled before payment; keeps its number.
    Void,
    /// Cancelled by a credit note.
    Credit,
}

/// A time range `[from, to)` read at a grain, with optional customer and hostname
/// filters (`None`: every customer, every hostname). Series answer one point per bucket
/// of `grain` (a point's `minute` is its bucket's start).
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// The customer, or `None` for all.
    pub customer: Option<&'a str>,
    /// Start (inclusive).
    pub from: Timestamp,
    /// End (exclusive).
    pub to: Timestamp,
    /// One hostname (a CDN or GTM hostname), or `None` for all.
    pub host: Option<&'a str>,
    /// The buckets of the series: per minute, hour or day ([`crate::logs::Grain`]).
    pub grain: crate::logs::Grain,
}

impl<'a> Window<'a> {
    /// `[from, to)` for `customer`, every hostname, at the grain the rule picks for its
    /// length ([`crate::logs::Grain::for_span`]).
    pub fn new(customer: Option<&'a str>, from: Timestamp, to: Timestamp) -> Window<'a> {
        Window {
            customer,
            from,
            to,
            host: None,
            grain: crate::logs::Grain::for_span(to.as_millis().saturating_sub(from.as_millis())),
        }
    }
}

/// What can go wrong in a [`Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The object does not exist.
    #[error("not found")]
    NotFound,
    /// A unique name is taken.
    #[error("{0} already exists")]
    Duplicate(String),
    /// Someone committed another config version first.
    #[error("config version conflict: based on {base}, current is {current}")]
    Conflict {
        /// The version the change was based on.
        base: u64,
        /// The current version.
        current: u64,
    },
    /// The configuration does not validate; every field at fault is named.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The configuration could not be compiled for another reason.
    #[error("config: {0}")]
    Config(#[from] udn_core::Error),
    /// A stored value could not be decoded.
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A password hash could not be computed or parsed.
    #[error("password hash: {0}")]
    Hash(argon2::password_hash::Error),
    /// The database failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (or could not be reached).
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool for another reason than the
    /// database's (which is [`BackendError::Postgres`]).
    #[error("postgres pool: {0}")]
    PostgresPool(deadpool_postgres::PoolError),
    /// The schema could not be brought up to date (see [`crate::migrate`]).
    #[error("{0}")]
    Migrate(#[from] crate::migrate::Error),
    /// A lock was poisoned by a panicking thread.
    #[error("store lock poisoned")]
    Poisoned,
    /// A stored value has a type the store does not expect (a schema mismatch).
    #[error("column {index} of {query:?} has an unexpected type or is missing")]
    Column {
        /// The column's index.
        index: usize,
        /// The start of the query.
        query: String,
    },
    /// The log store (traffic and answer rollups) failed.
    #[error("log store: {0}")]
    LogStore(#[from] crate::logs::Error),
    /// This backend does not do that (for example billing runs without a billing store).
    #[error("not supported here: {0}")]
    Unsupported(&'static str),
    /// A billing period label does not parse.
    #[error("period: {0}")]
    BadPeriod(udn_billing::Error),
    /// A billing run failed.
    #[error("billing: {0:#}")]
    Billing(anyhow::Error),
}

impl From<deadpool_postgres::PoolError> for BackendError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => BackendError::Postgres(e),
            e => BackendError::PostgresPool(e),
        }
    }
}

/// Result of a [`Backend`] call.
pub type BackendResult<T> = Result<T, BackendError>;

/// Users, their passwords, sessions and API tokens.
pub trait Accounts: Send + Sync + 'static {
    /// Creates a user with an argon2 hash of `password`.
    fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        customer: Option<&str>,
    ) -> BackendResult<User>;

    /// Checks a password; `None` when the user is unknown or the password wrong.
    fn verify_login(&self, username: &str, password: &str) -> BackendResult<Option<User>>;

    /// Every user.
    fn users(&self) -> BackendResult<Vec<User>>;

    /// Replaces a user's password with an argon2 hash of `password`.
    fn set_password(&self, user_id: i64, password: &str) -> BackendResult<()>;

    /// Deletes a user with every session and API token of theirs.
    fn delete_user(&self, user_id: i64) -> BackendResult<()>;

    /// Opens a session for `user_id` that lives `ttl_secs` from `now`.
    fn create_session(
        &self,
        user_id: i64,
        kind: SessionKind,
        now: Timestamp,
        ttl_secs: u64,
    ) -> BackendResult<NewSession>;

    /// The live session for `token`, if any and not expired at `now`.
    fn session(&self, token: &str, now: Timestamp) -> BackendResult<Option<Session>>;

    /// Ends a session (logout).
    fn delete_session(&self, token: &str) -> BackendResult<()>;

    /// Ends every session of `user_id` except the one of `keep` (a session token).
    fn end_sessions(&self, user_id: i64, keep: Option<&str>) -> BackendResult<()>;

    /// Creates an API token for `user_id`; returns it and its secret (`udn_` + 64 hex
    /// digits), which is stored only as its SHA-256. Removes the user's expired tokens.
    fn create_api_token(
        &self,
        user_id: i64,
        name: &str,
        scopes: &[Scope],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> BackendResult<(ApiToken, String)>;

    /// The API tokens of `user_id`, oldest first.
    fn api_tokens(&self, user_id: i64) -> BackendResult<Vec<ApiToken>>;

    /// Revokes (deletes) token `id` of `user_id`; `false` when the user has no such token.
    fn delete_api_token(&self, user_id: i64, id: i64) -> BackendResult<bool>;

    /// The user and token for a token secret, if it exists and is not expired at `now`;
    /// records `now` as its last use when the stored one is older than a minute.
    fn api_token(&self, secret: &str, now: Timestamp) -> BackendResult<Option<(User, ApiToken)>>;
}

/// The versioned network configuration: every committed version, the current one.
pub trait Configs: Send + Sync + 'static {
    /// The newest configuration (version 0, empty, before the first commit).
    fn current_config(&self) -> BackendResult<ConfigSnapshot>;

    /// The newest version number (0 before the first commit), without reading the
    /// configuration itself: lets callers keep a parsed snapshot until it changes.
    fn current_version(&self) -> BackendResult<u64> {
        Ok(self.current_config()?.version)
    }

    /// One past version.
    fn config_at(&self, version: u64) -> BackendResult<Option<ConfigSnapshot>>;

    /// Validates `config` with [`Config::compile`] and stores it as version `base + 1`;
    /// fails with [`BackendError::Conflict`] unless `base` is the current version.
    fn commit_config(
        &self,
        base: u64,
        config: &Config,
        author: &str,
        now: Timestamp,
    ) -> BackendResult<u64>;
}

/// What the control plane delivers to the edges: purges, prefills and live events, each
/// with one status row per edge (pending, applied, failed, cancelled).
pub trait Deliveries: Send + Sync + 'static {
    /// Records a purge with the next sequence number, pending on every edge in `edges`.
    fn create_purge(
        &self,
        customer: &str,
        scope: PurgeScope,
        target: &str,
        requested_by: &str,
        edges: &[String],
        now: Timestamp,
    ) -> BackendResult<Purge>;

    /// One purge.
    fn purge(&self, seq: u64) -> BackendResult<Option<Purge>>;

    /// The newest purges first, of one customer or all.
    fn purges(
        &self,
        customer: Option<&str>,
        limit: u32,
        before: Option<u64>,
    ) -> BackendResult<Vec<Purge>>;

    /// Per-edge delivery status of one purge.
    fn purge_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>>;

    /// Records one delivery attempt: `Ok` when the edge applied it.
    fn record_purge_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()>;

    /// Purges not yet applied by `edge`, oldest first.
    fn pending_purges(&self, edge: &str) -> BackendResult<Vec<Purge>>;

    /// Records a prefill with the next sequence number, pending on every edge in `edges`.
    fn create_prefill(
        &self,
        customer: &str,
        urls: &[String],
        requested_by: &str,
        edges: &[String],
        now: Timestamp,
    ) -> BackendResult<Prefill>;

    /// One prefill.
    fn prefill(&self, seq: u64) -> BackendResult<Option<Prefill>>;

    /// Per-edge delivery status of one prefill.
    fn prefill_status(&self, seq: u64) -> BackendResult<Vec<PurgeEdgeStatus>>;

    /// Records one prefill delivery attempt: `Ok` when the edge accepted it.
    fn record_prefill_attempt(
        &self,
        seq: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()>;

    /// Prefills not yet accepted by `edge`, oldest first.
    fn pending_prefills(&self, edge: &str) -> BackendResult<Vec<Prefill>>;

    /// Records a live event (its `id` is assigned) with a pending prefill on every edge in
    /// `edges`, unless its customer already has `max_open` events that have not ended
    /// at `now` (then `None`, nothing recorded); the count and the insert are atomic.
    fn create_live_event(
        &self,
        event: &LiveEvent,
        edges: &[String],
        max_open: u32,
        now: Timestamp,
    ) -> BackendResult<Option<LiveEvent>>;

    /// Live events, newest start first, at most `limit`; only `customer`'s when given.
    fn live_events(&self, customer: Option<&str>, limit: u32) -> BackendResult<Vec<LiveEvent>>;

    /// Per-edge prefill status of one live event.
    fn live_event_status(&self, id: u64) -> BackendResult<Vec<PurgeEdgeStatus>>;

    /// The live events `edge` should prefill now: pending there, with fewer than
    /// `max_attempts` attempts, starting within `lead_ms` of `now` (or started) and not
    /// ended; soonest first.
    fn due_live_events(
        &self,
        edge: &str,
        now: Timestamp,
        lead_ms: u64,
        max_attempts: u32,
    ) -> BackendResult<Vec<LiveEvent>>;

    /// Records one live prefill attempt on `edge`: `Ok` when the edge prefilled it.
    fn record_live_prefill(
        &self,
        id: u64,
        edge: &str,
        result: Result<(), String>,
        now: Timestamp,
    ) -> BackendResult<()>;

    /// Marks a purge or prefill failed on `edge` (the edge refused it with a 4xx):
    /// it leaves the edge's queue for good, with `reason` as its `last_error`. Only a
    /// pending row changes.
    fn fail_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        edge: &str,
        reason: &str,
        now: Timestamp,
    ) -> BackendResult<()>;

    /// Cancels a purge or prefill on every edge that has not applied it yet (their
    /// rows become `cancelled`, `last_error` says by whom); returns how many rows.
    fn cancel_delivery(
        &self,
        kind: DeliveryKind,
        seq: u64,
        by: &str,
        now: Timestamp,
    ) -> BackendResult<u64>;
}

/// The traffic queries of the portal and the API: CDN traffic and GTM answers per
/// bucket and location, and, where a log store is behind them, health, decision
/// reasons, quality, top lists, streaming and the operators' statistics (elsewhere
/// [`BackendError::Unsupported`]).
pub trait Traffic: Send + Sync + 'static {
    /// CDN bytes and hits per bucket of `w.grain` (summed over hostnames and POPs).
    ///
    /// The SQLite implementation reads `cp_cdn_traffic_minute(customer, hostname, pop,
    /// minute, bytes, hits)`; the log store re-backs it from its per-minute rollups.
    fn cdn_traffic(&self, w: Window<'_>) -> BackendResult<Vec<TrafficPoint>>;

    /// CDN bytes and hits per POP over the window (same table as [`Traffic::cdn_traffic`]).
    fn cdn_traffic_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationTraffic>>;

    /// GTM answers per (bucket of `w.grain`, hostname, address).
    ///
    /// The SQLite implementation reads `cp_gtm_answers_minute(customer, hostname, pop,
    /// address, minute, answers)`; the log store re-backs it from DNS query logs.
    fn gtm_answers(&self, w: Window<'_>) -> BackendResult<Vec<AnswerPoint>>;

    /// GTM answers per (POP of the address given out, address) over the window.
    fn gtm_answers_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationAnswers>>;

    /// Every probe's latest view of every server's service tested since `since` (the
    /// GTM pages' live health). Backends without a log store answer
    /// [`BackendError::Unsupported`].
    fn service_checks(
        &self,
        since: Timestamp,
    ) -> BackendResult<Vec<crate::logs::health::ServiceCheck>> {
        let _ = since;
        Err(BackendError::Unsupported("service checks"))
    }

    /// GTM answers per decision reason over the window, most first. Backends without a
    /// log store answer [`BackendError::Unsupported`].
    fn gtm_reasons(&self, w: Window<'_>) -> BackendResult<Vec<(String, i64)>> {
        let _ = w;
        Err(BackendError::Unsupported("decision reasons"))
    }

    /// The CDN's service quality per bucket of the window (status classes, cache
    /// outcomes and hit ratio, origin errors, response-time percentiles). Backends
    /// without a log store answer [`BackendError::Unsupported`].
    fn cdn_quality(&self, w: Window<'_>) -> BackendResult<Vec<crate::logs::quality::QualityPoint>> {
        let _ = w;
        Err(BackendError::Unsupported("CDN quality series"))
    }

    /// The window's top URLs and client networks (from the raw records). Backends
    /// without a log store answer [`BackendError::Unsupported`].
    fn cdn_top(&self, w: Window<'_>) -> BackendResult<crate::logs::quality::Top> {
        let _ = w;
        Err(BackendError::Unsupported("top URLs and networks"))
    }

    /// The streaming statistics (HLS, DASH) of the window's range, of one customer or
    /// all (per stream, per minute and stream, top viewers). Backends without a log
    /// store answer [`BackendError::Unsupported`].
    fn streaming(&self, w: Window<'_>) -> BackendResult<crate::logs::stream::StreamReport> {
        let _ = w;
        Err(BackendError::Unsupported("streaming statistics"))
    }

    /// The roles' operational statistics (DNS servers, edges, probes: their own
    /// records, [`crate::logs::ops`]) over `from..to`, of one role or all. Backends
    /// without a log store answer [`BackendError::Unsupported`].
    fn ops(
        &self,
        from: Timestamp,
        to: Timestamp,
        grain: crate::logs::Grain,
        role: Option<&str>,
    ) -> BackendResult<crate::logs::ops::OpsReport> {
        let _ = (from, to, grain, role);
        Err(BackendError::Unsupported("operational statistics"))
    }
}

/// Invoices and what produces them: billing runs, invoice actions, sign-ups (where a
/// billing store is behind them; elsewhere [`BackendError::Unsupported`], except the
/// `cp_invoices` table that [`ControlTables`] writes).
pub trait Billing: Send + Sync + 'static {
    /// Issued invoices, newest first, of one customer or all.
    ///
    /// The SQLite implementation reads `cp_invoices(id, number, customer, period_start,
    /// period_end, total, currency, issued_at, html)`; billing re-backs it.
    fn invoices(&self, customer: Option<&str>) -> BackendResult<Vec<InvoiceSummary>>;

    /// One invoice with its HTML body.
    fn invoice(&self, id: i64) -> BackendResult<Option<Invoice>>;

    /// Runs billing for the period `label` (`2026-11`, `2026-Q4`, `2026-W48`,
    /// `2026-11-26T13`, `2026`) at `now` and returns the run report (issued invoices;
    /// a period already billed issues nothing new). Backends without a billing store
    /// answer [`BackendError::Unsupported`].
    fn billing_run(&self, label: &str, now: Timestamp) -> BackendResult<serde_json::Value> {
        let _ = (label, now);
        Err(BackendError::Unsupported("billing runs"))
    }

    /// The newest `limit` billing runs (by the CLI, the API and the scheduler), with
    /// their outcome, attempt and report or error, newest first.
    fn billing_runs(&self, limit: u32) -> BackendResult<serde_json::Value> {
        let _ = limit;
        Err(BackendError::Unsupported("billing runs"))
    }

    /// An admin's action on an issued document, by number: record a payment, void it, or
    /// cancel it by a credit note. Rule violations (a paid invoice voided, an amount
    /// that does not match) are [`BackendError::Billing`] like a run's.
    fn billing_invoice_action(
        &self,
        number: &str,
        action: &InvoiceAction,
        now: Timestamp,
    ) -> BackendResult<serde_json::Value> {
        let _ = (number, action, now);
        Err(BackendError::Unsupported("billing actions"))
    }

    /// The PDF of the billed invoice with portal id `id`: its file name and bytes
    /// (`None`: no such billed invoice).
    fn invoice_pdf(&self, id: i64) -> BackendResult<Option<(String, Vec<u8>)>> {
        let _ = id;
        Ok(None)
    }

    /// The plans a prospective customer may choose at sign-up: the newest version of
    /// each plan in the billing store.
    fn signup_plans(&self) -> BackendResult<Vec<SignupPlan>> {
        Err(BackendError::Unsupported("sign-up"))
    }

    /// Records the billing account of a confirmed sign-up, awaiting an operator's
    /// decision.
    fn signup_account(&self, account: &udn_billing::Account) -> BackendResult<()> {
        let _ = account;
        Err(BackendError::Unsupported("sign-up"))
    }

    /// Every sign-up, newest account first, with its decision.
    fn signups(&self) -> BackendResult<Vec<Signup>> {
        Err(BackendError::Unsupported("sign-up"))
    }

    /// `account`'s sign-up with its billing account (`None`: it did not sign up).
    fn signup(&self, account: &str) -> BackendResult<Option<Signup>> {
        let _ = account;
        Ok(None)
    }

    /// The decision on `account`'s sign-up (`None`: the account did not sign up).
    fn signup_status(&self, account: &str) -> BackendResult<Option<SignupStatus>> {
        let _ = account;
        Ok(None)
    }

    /// Records an operator's decision on a sign-up.
    fn signup_decide(&self, account: &str, status: SignupStatus) -> BackendResult<()> {
        let _ = (account, status);
        Err(BackendError::Unsupported("sign-up"))
    }

    /// One tick of the billing scheduler (bills every period due at `now`); backends
    /// without a billing store or scheduler do nothing.
    fn billing_tick(&self, now: Timestamp) -> BackendResult<serde_json::Value> {
        let _ = now;
        Ok(serde_json::Value::Null)
    }
}

/// Storage of the control plane, by concern: [`Accounts`], [`Configs`], [`Deliveries`],
/// [`Traffic`] and [`Billing`]. Anything that implements all five is a `Backend`; the
/// API holds each concern separately (so a store that answers only the traffic queries,
/// like the log store's, implements only [`Traffic`]).
///
/// Methods are synchronous (the SQLite implementation runs them under a mutex); the HTTP
/// layer calls them from `spawn_blocking`.
pub trait Backend: Accounts + Configs + Deliveries + Traffic + Billing {}

impl<T: Accounts + Configs + Deliveries + Traffic + Billing + ?Sized> Backend for T {}

/// A [`Backend`] on its own `cp_*` tables ([`super::SqliteBackend`],
/// [`super::PgBackend`]): also writes the per-minute traffic and answer tables and the
/// invoice table its traffic and invoice queries read, for tools, examples and tests
/// that need traffic without running edges (a running control plane serves those
/// queries from the log store and billing instead, see `udn_bins::api::StoreBackend`).
pub trait ControlTables: Backend {
    /// Adds per-minute CDN traffic of one (customer, hostname, POP).
    fn record_cdn_traffic(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        minute: Timestamp,
        bytes: u64,
        hits: u64,
    ) -> BackendResult<()>;

    /// Adds per-minute GTM answer counts of one (customer, hostname, POP, address).
    fn record_gtm_answers(
        &self,
        customer: &str,
        hostname: &str,
        pop: &str,
        address: &str,
        minute: Timestamp,
        answers: u64,
    ) -> BackendResult<()>;

    /// Stores an issued invoice; returns its id. A number already stored is
    /// [`BackendError::Duplicate`].
    fn insert_invoice(&self, summary: &InvoiceSummary, html: &str) -> BackendResult<i64>;
}

/// A PostgreSQL error with the server's message ("db error" alone says nothing).
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A random secret of `bytes` bytes, hex-encoded (session tokens, CSRF tokens, salts).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    udn_core::hex::encode(&buf)
}

/// What the store keeps of a session token: its SHA-256, hex-encoded (a stolen database
/// yields no usable token).
pub fn token_hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    udn_core::hex::encode(d.as_ref())
}

/// The argon2id PHC string of `password` with a fresh random salt.
pub(crate) fn hash_password(password: &str) -> BackendResult<String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::encode_b64(random_hex(16).as_bytes()).map_err(BackendError::Hash)?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(BackendError::Hash)?
        .to_string())
}

/// A fresh API token secret: [`API_TOKEN_PREFIX`] and 32 random bytes in hex.
pub(crate) fn new_api_secret() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_hex(32))
}

/// An argon2 hash (same parameters as every stored one) of a password nobody knows:
/// a login for an unknown user is verified against it, so it costs the same time as a
/// login for a known one.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&random_hex(32)).unwrap_or_else(|_| {
            // Unreachable (hashing a fixed-size input does not fail); a valid PHC string
            // of the default parameters keeps the timing anyway.
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()
        })
    })
}

/// Checks `password` against a user's stored hash, or against [`dummy_hash`] when the
/// user is unknown (`None`): both cost one argon2 verification.
pub(crate) fn check_login(
    found: Option<(User, String)>,
    password: &str,
) -> BackendResult<Option<User>> {
    match found {
        Some((user, hash)) => Ok(password_matches(password, &hash)?.then_some(user)),
        None => {
            let _ = password_matches(password, dummy_hash());
            Ok(None)
        }
    }
}

/// Whether `password` matches the stored PHC string `hash`.
pub(crate) fn password_matches(password: &str, hash: &str) -> BackendResult<bool> {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    let parsed = PasswordHash::new(hash).map_err(BackendError::Hash)?;
    Ok(argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// A stored millisecond count as a [`Timestamp`] (negative values, which no writer
/// produces, read as the epoch).
pub(crate) fn ts(v: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(v).unwrap_or(0))
}

/// A [`Timestamp`] as the stored millisecond count.
pub(crate) fn ms(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// A count or sequence number as a database integer (saturating).
pub(crate) fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A database integer as a count or sequence number (negative reads as 0).
pub(crate) fn from_db_int(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
