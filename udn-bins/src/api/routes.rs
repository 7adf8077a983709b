//! The `/v1` handlers.

use super::auth::{self, Auth};
use super::backend::*;
use super::challenge::{self, Verification};
use super::fanout::{self, LocationCheck};
use super::openapi::{
    AuthErrors, ErrorResponse, Errors, JsonObject, OpsAnswer, PublicErrors, ReasonsAnswer,
    StreamingAnswer, TopAnswer,
};
use super::{ApiError, ApiState, FieldError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use udn_core::config::{
    CdnConfig, CustomerConfig, GtmConfig, OriginConfig, ServerConfig, ServiceConfig,
    StaticMappingConfig, TargetConfig, canonical_hostname,
};
use udn_core::{Config, Timestamp};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Marks a request that arrived over TLS (inserted by `portal::serve_https`), so session
/// cookies get the `Secure` attribute.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Whether the request came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct IsTls(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for IsTls {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<IsTls, Self::Rejection> {
        Ok(IsTls(parts.extensions.get::<OverTls>().is_some()))
    }
}

/// The client's address, when the server recorded it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientIp, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let text = r.body_text();
        if let JsonRejection::JsonDataError(_) = r {
            // "Failed to deserialize the JSON body into the target type: ttl: invalid ..."
            if let Some(rest) = text.split_once("target type: ").map(|(_, r)| r)
                && let Some((field, msg)) = rest.split_once(": ")
                && !field.contains(' ')
            {
                return ApiError::field(field, msg);
            }
            return ApiError::field("body", text);
        }
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            _ => ApiError::BadRequest(text),
        }
    }
}

type Body<T> = Result<Json<T>, JsonRejection>;
type ApiResult<T> = Result<T, ApiError>;

use super::page::{PageQuery, Part, page};

/// A sequence number or time as a sort-key part (they fit: ms since 1970, row ids).
fn to_i64_seq(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Live events read for one listing (the newest starts first), then paged.
const LIVE_EVENTS_READ: u32 = 10_000;

/// Every route: served over HTTPS.
pub(super) fn router(state: ApiState) -> Router {
    let (routes, _) = credential_routes()
        .merge(machine_routes())
        .split_for_parts();
    routes
        .layer(axum::middleware::from_fn(json_errors))
        .fallback(not_found)
        .with_state(state)
}

/// The routes without any that takes a password or issues a credential: served on the
/// plain-HTTP listener for roles.
pub(super) fn machine_router(state: ApiState) -> Router {
    let (routes, _) = machine_routes().split_for_parts();
    routes
        .layer(axum::middleware::from_fn(json_errors))
        .fallback(not_found_plain_http)
        .with_state(state)
}

/// The most of a non-JSON error body [`json_errors`] reads (axum's rejections are a line).
const MAX_ERROR_TEXT: usize = 4096;

/// Gives every error answer of the API a JSON body (`{"error": ..., "errors": [...]}`,
/// as [`ApiError`] renders): the extractors' rejections (a bad path parameter or query
/// string, a body over the size limit, a wrong content type) and 405 come from axum as
/// plain text or nothing, and are turned into JSON here with their status and headers
/// (`Allow`, `Retry-After`) kept. A query-string rejection names its field.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let errors = error
        .strip_prefix("Failed to deserialize query string: ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(field, _)| !field.is_empty() && !field.contains(' '))
        .map(|(field, message)| {
            vec![FieldError {
                field: field.to_owned(),
                message: message.to_owned(),
            }]
        })
        .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&super::ErrorBody { error, errors }).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// No such route: JSON under `/v1/`, a short page elsewhere (the portal's paths share
/// the listener).
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    if uri.path() == "/v1" || uri.path().starts_with("/v1/") {
        return no_route(&method, &uri, "");
    }
    (
        StatusCode::NOT_FOUND,
        Html("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found</title></head><body><h1>Not found</h1><p><a href=\"/\">UDN portal</a></p></body></html>\n"),
    )
        .into_response()
}

/// No such route on the plain-HTTP listener, which has no credential routes.
async fn not_found_plain_http(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let credential = ["/v1/auth/", "/v1/me/password", "/v1/users", "/v1/tokens"]
        .iter()
        .any(|p| uri.path().starts_with(p));
    let hint = if credential {
        ": passwords and credentials are taken over HTTPS only"
    } else {
        ""
    };
    no_route(&method, &uri, hint)
}

fn no_route(method: &axum::http::Method, uri: &axum::http::Uri, hint: &str) -> Response {
    // The path is echoed as JSON text, never as markup; a long one is cut.
    let path: String = uri.path().chars().take(200).collect();
    (
        StatusCode::NOT_FOUND,
        Json(super::ErrorBody {
            error: format!("no route {method} {path}{hint}"),
            errors: Vec::new(),
        }),
    )
        .into_response()
}

/// The routes that take a password or issue a credential (HTTPS only), with their
/// OpenAPI description ([`super::openapi`]).
pub(super) fn credential_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(token))
        .routes(routes!(change_password))
        .routes(routes!(users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(tokens_list, token_create))
        .routes(routes!(token_delete))
}

/// Every other route, with its OpenAPI description.
pub(super) fn machine_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(me))
        .routes(routes!(customers, create_customer))
        .routes(routes!(customer, update_customer, delete_customer))
        .routes(routes!(cdn_list, cdn_create))
        .routes(routes!(cdn_verify))
        .routes(routes!(gtm_verify))
        .routes(routes!(gtm_health_get))
        .routes(routes!(cdn_get, cdn_update, cdn_delete))
        .routes(routes!(gtm_list, gtm_create))
        .routes(routes!(gtm_get, gtm_update, gtm_delete))
        .routes(routes!(address_add))
        .routes(routes!(address_weight, address_remove))
        .routes(routes!(standby_set))
        .routes(routes!(monitor_get, monitor_set))
        .routes(routes!(mappings, mapping_add))
        .routes(routes!(mapping_delete))
        .routes(routes!(config_get, config_put))
        .routes(routes!(config_version))
        .routes(routes!(purge_list, purge_create))
        .routes(routes!(purge_get))
        .routes(routes!(purge_cancel))
        .routes(routes!(prefill))
        .routes(routes!(prefill_get))
        .routes(routes!(prefill_cancel))
        .routes(routes!(live_events, live_event_create))
        .routes(routes!(pagecheck))
        .routes(routes!(traffic_cdn))
        .routes(routes!(streaming))
        .routes(routes!(ops))
        .routes(routes!(traffic_cdn_locations))
        .routes(routes!(traffic_cdn_quality))
        .routes(routes!(traffic_cdn_top))
        .routes(routes!(traffic_gtm))
        .routes(routes!(traffic_gtm_locations))
        .routes(routes!(traffic_gtm_reasons))
        .routes(routes!(invoices))
        .routes(routes!(invoice))
        .routes(routes!(invoice_html))
        .routes(routes!(invoice_pdf))
        .routes(routes!(billing_run, billing_runs))
        .routes(routes!(billing_payment))
        .routes(routes!(signups_list))
        .routes(routes!(signup_approve))
        .routes(routes!(signup_refuse))
        .routes(routes!(billing_void))
        .routes(routes!(billing_credit))
}

#[utoipa::path(
    get, path = "/health", tag = "meta",
    summary = "Liveness",
    responses((status = 200, description = "success", body = String), PublicErrors),
    security(())
)]
async fn health() -> &'static str {
    "ok"
}

#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta",
    summary = "This document",
    responses((status = 200, description = "success"), PublicErrors),
    security(())
)]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::json(),
    )
        .into_response()
}

// ---------------------------------------------------------------- auth

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Login)]
struct LoginBody {
    username: String,
    #[schema(format = Password)]
    password: String,
}

/// A new login session: the user, the CSRF token to send as `X-CSRF-Token` on
/// changes, and when the session ends (ms since the epoch).
#[derive(Serialize, utoipa::ToSchema)]
struct LoginAnswer {
    user: User,
    csrf: String,
    expires_at: udn_core::Timestamp,
}

#[utoipa::path(
    post, path = "/v1/auth/login", tag = "auth",
    summary = "Log in; sets the HttpOnly SameSite=Strict session cookie `udn_session` and returns the CSRF token to send as `X-CSRF-Token` on changes",
    request_body = LoginBody,
    responses(
        (status = 200, description = "success", body = LoginAnswer),
        PublicErrors, (status = 429, response = ErrorResponse)
    ),
    security(())
)]
async fn login(
    State(st): State<ApiState>,
    IsTls(tls): IsTls,
    ClientIp(ip): ClientIp,
    body: Body<LoginBody>,
) -> ApiResult<Response> {
    let Json(b) = body?;
    let (user, s) = auth::login(&st, &b.username, &b.password, ip, SessionKind::Cookie).await?;
    let mut resp = Json(LoginAnswer {
        user,
        csrf: s.csrf,
        expires_at: s.expires_at,
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&s.token, tls)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "auth",
    summary = "End the session",
    responses((status = 204, description = "success"), Errors)
)]
async fn logout(State(st): State<ApiState>, IsTls(tls): IsTls, a: Auth) -> ApiResult<Response> {
    let t = a.token.clone();
    st.db(move |b| b.accounts.delete_session(&t)).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie(tls)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// A new API token (`Authorization: Bearer <token>`), its user and expiry.
#[derive(Serialize, utoipa::ToSchema)]
struct TokenAnswer {
    token: String,
    user: User,
    expires_at: udn_core::Timestamp,
}

/// Logs in and issues an API token named `login` with every scope, for a year: the
/// one-call way for scripts (`POST /v1/tokens` picks the name, scopes and expiry).
#[utoipa::path(
    post, path = "/v1/auth/token", tag = "auth",
    summary = "Log in and issue an API token named `login` with every scope for a year (HTTPS only; `POST /v1/tokens` chooses name, scopes and expiry)",
    request_body = LoginBody,
    responses(
        (status = 200, description = "success", body = TokenAnswer),
        PublicErrors, (status = 429, response = ErrorResponse)
    ),
    security(())
)]
async fn token(
    State(st): State<ApiState>,
    ClientIp(ip): ClientIp,
    body: Body<LoginBody>,
) -> ApiResult<Json<TokenAnswer>> {
    let Json(b) = body?;
    let user = auth::check_password(&st, &b.username, &b.password, ip)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let (tok, secret) = issue_token(
        &st,
        &user,
        "login".into(),
        Scope::ALL.to_vec(),
        auth::TOKEN_TTL_SECS,
    )
    .await?;
    Ok(Json(TokenAnswer {
        token: secret,
        user,
        expires_at: tok.expires_at,
    }))
}

/// Creates an API token of `user` living `ttl_secs`, within the per-user cap.
async fn issue_token(
    st: &ApiState,
    user: &User,
    name: String,
    scopes: Vec<Scope>,
    ttl_secs: u64,
) -> ApiResult<(ApiToken, String)> {
    let id = user.id;
    let now = super::now();
    st.db(move |b| {
        let live = b
            .accounts
            .api_tokens(id)?
            .iter()
            .filter(|t| t.expires_at > now)
            .count();
        if live >= auth::MAX_TOKENS_PER_USER {
            return Ok(None);
        }
        let expires = now.plus(Duration::from_secs(ttl_secs));
        b.accounts
            .create_api_token(id, &name, &scopes, now, expires)
            .map(Some)
    })
    .await?
    .ok_or_else(|| {
        ApiError::Conflict(format!(
            "at most {} API tokens per user: revoke one first",
            auth::MAX_TOKENS_PER_USER
        ))
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    #[schema(value_type = Vec<Scope>)]
    scopes: Vec<String>,
    #[schema(minimum = 1, maximum = 365)]
    expires_in_days: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    #[serde(flatten)]
    token: ApiToken,
    /// `udn_` and 64 hex digits; send as `Authorization: Bearer <secret>`; stored only as
    /// its SHA-256 (shown only here).
    secret: String,
}

/// Refuses a request authenticated by an API token (credential changes need a login).
fn require_login_session(a: &Auth) -> ApiResult<()> {
    if a.scopes.is_some() {
        return Err(ApiError::Denied(
            "credentials are managed with a login session, not an API token".into(),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/v1/tokens", tag = "auth",
    summary = "Create an API token; the secret is in this answer only (login session only, HTTPS only)",
    request_body = NewToken,
    responses(
        (status = 201, description = "success", body = CreatedToken),
        Errors, (status = 409, response = ErrorResponse)
    )
)]
async fn token_create(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    require_login_session(&a)?;
    let Json(t) = body?;
    let name = t.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::field("name", "1-64 printable characters"));
    }
    let mut scopes = Vec::new();
    for s in &t.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::field(
                "scopes",
                format!("unknown scope {s:?} (read, purge, config, billing)"),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::field(
            "scopes",
            "at least one of read, purge, config, billing",
        ));
    }
    scopes.sort();
    if t.expires_in_days == 0 || t.expires_in_days > auth::MAX_TOKEN_DAYS {
        return Err(ApiError::field(
            "expires_in_days",
            format!("1 to {} days", auth::MAX_TOKEN_DAYS),
        ));
    }
    let (token, secret) =
        issue_token(&st, &a.user, name, scopes, t.expires_in_days * 86_400).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[utoipa::path(
    get, path = "/v1/tokens", tag = "auth",
    summary = "The caller's API tokens, without secrets (login session only, HTTPS only)",
    params(PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<ApiToken>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn tokens_list(
    State(st): State<ApiState>,
    a: Auth,
    uri: axum::http::Uri,
    Query(p): Query<PageQuery>,
) -> ApiResult<Response> {
    require_login_session(&a)?;
    let id = a.user.id;
    let list: Vec<ApiToken> = st.db(move |b| b.accounts.api_tokens(id)).await?;
    page(list, |t| vec![Part::Up(t.id)], &p, &uri)
}

#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "auth",
    summary = "Revoke one of the caller's API tokens",
    params(("id" = u64, Path, description = "Token id")),
    responses((status = 204, description = "success"), Errors)
)]
async fn token_delete(
    State(st): State<ApiState>,
    a: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_login_session(&a)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::field("id", "a token id (a number)"))?;
    let user = a.user.id;
    if st
        .db(move |b| b.accounts.delete_api_token(user, id))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    #[schema(format = Password)]
    current: String,
    #[schema(format = Password, min_length = 8, max_length = 1024)]
    new: String,
}

/// The rule for a new password.
fn check_new_password(field: &str, p: &str) -> ApiResult<()> {
    let n = p.chars().count();
    if !(8..=1024).contains(&n) {
        return Err(ApiError::field(field, "8 to 1024 characters"));
    }
    Ok(())
}

/// Changes the caller's password (the current one is checked through the login
/// limiter) and ends every other session of theirs.
#[utoipa::path(
    post, path = "/v1/me/password", tag = "auth",
    summary = "Change the caller's password (login session only; the current password goes through the login limiter); ends every other session of the user (HTTPS only)",
    request_body = inline(PasswordChange),
    responses(
        (status = 204, description = "success"),
        Errors, (status = 429, response = ErrorResponse)
    )
)]
async fn change_password(
    State(st): State<ApiState>,
    ClientIp(ip): ClientIp,
    a: Auth,
    body: Body<PasswordChange>,
) -> ApiResult<StatusCode> {
    require_login_session(&a)?;
    let Json(b) = body?;
    check_new_password("new", &b.new)?;
    if auth::check_password(&st, &a.user.username, &b.current, ip)
        .await?
        .is_none_or(|u| u.id != a.user.id)
    {
        return Err(ApiError::field("current", "wrong password"));
    }
    let (id, keep) = (a.user.id, a.token.clone());
    st.db(move |be| {
        be.accounts.set_password(id, &b.new)?;
        be.accounts.end_sessions(id, Some(&keep))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a user with their sessions and tokens: an admin any other user, a customer's
/// user another user of the same customer.
#[utoipa::path(
    delete, path = "/v1/users/{name}", tag = "users",
    summary = "Delete a user with their sessions and API tokens: an admin any other user, a customer's user another user of the same customer (HTTPS only)",
    params(("name" = String, Path, description = "Login name")),
    responses(
        (status = 204, description = "success"),
        Errors, (status = 409, response = ErrorResponse)
    )
)]
async fn delete_user(
    State(st): State<ApiState>,
    a: Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    require_login_session(&a)?;
    let users = st.db(|b| b.accounts.users()).await?;
    let target = users
        .into_iter()
        .find(|u| u.username == name)
        .ok_or(ApiError::NotFound)?;
    let allowed = match a.user.role {
        Role::Admin => true,
        Role::Customer => {
            target.role == Role::Customer
                && target.customer.is_some()
                && target.customer == a.user.customer
        }
    };
    if !allowed {
        return Err(ApiError::Forbidden);
    }
    if target.id == a.user.id {
        return Err(ApiError::Conflict("a user cannot delete themselves".into()));
    }
    let id = target.id;
    st.db(move |b| b.accounts.delete_user(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller and its CSRF token.
#[derive(Serialize, utoipa::ToSchema)]
struct MeAnswer {
    user: User,
    csrf: String,
}

#[utoipa::path(
    get, path = "/v1/me", tag = "auth",
    summary = "The caller and its CSRF token",
    responses((status = 200, description = "success", body = MeAnswer), Errors)
)]
async fn me(a: Auth) -> Json<MeAnswer> {
    Json(MeAnswer {
        user: a.user,
        csrf: a.csrf,
    })
}

#[utoipa::path(
    get, path = "/v1/users", tag = "users",
    summary = "List users (admin; HTTPS only)",
    params(PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<User>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn users(
    State(st): State<ApiState>,
    a: Auth,
    uri: axum::http::Uri,
    Query(p): Query<PageQuery>,
) -> ApiResult<Response> {
    a.require_admin()?;
    let list: Vec<User> = st.db(|b| b.accounts.users()).await?;
    page(list, |u| vec![Part::Asc(u.username.clone())], &p, &uri)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    #[schema(format = Password, min_length = 8, max_length = 1024)]
    password: String,
    role: Role,
    #[serde(default)]
    customer: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/users", tag = "users",
    summary = "Create a user (admin; HTTPS only)",
    request_body = NewUser,
    responses((status = 201, description = "success", body = User), Errors)
)]
async fn create_user(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    a.require_admin()?;
    let Json(u) = body?;
    if u.username.is_empty()
        || u.username.len() > 64
        || !u
            .username
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.@".contains(&c))
    {
        return Err(ApiError::field("username", "1-64 letters, digits or -_.@"));
    }
    check_new_password("password", &u.password)?;
    match (u.role, &u.customer) {
        (Role::Customer, None) => {
            return Err(ApiError::field("customer", "required for role customer"));
        }
        (Role::Customer, Some(c)) => {
            let snap = current(&st).await?;
            let cfg = &snap.config;
            if !cfg.customers.iter().any(|x| &x.name == c) {
                return Err(ApiError::field(
                    "customer",
                    format!("unknown customer {c:?}"),
                ));
            }
        }
        (Role::Admin, Some(_)) => {
            return Err(ApiError::field(
                "customer",
                "an admin belongs to no customer",
            ));
        }
        (Role::Admin, None) => {}
    }
    let user = st
        .db(move |b| {
            b.accounts
                .create_user(&u.username, &u.password, u.role, u.customer.as_deref())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

// ---------------------------------------------------------------- config helpers

/// 422 unless every role would load `cfg` ([`crate::distribution::roles_would_load`] and
/// [`crate::distribution::zone_check`], the checks the roles run themselves); fields are
/// named under `prefix`.
fn roles_check(st: &ApiState, cfg: &Config, prefix: &str) -> ApiResult<()> {
    let zones = || match &st.inner.opts.zone_dir {
        Some(dir) => crate::distribution::zone_check(cfg, dir),
        None => {
            let errs: Vec<(String, String)> = cfg
                .dns
                .zones
                .iter()
                .enumerate()
                .filter(|(_, z)| z.file.is_some())
                .map(|(i, _)| {
                    (
                        format!("dns.zones[{i}].file"),
                        "the control plane has no zone directory (udn control --zone-dir DIR), \
                         so it cannot check that the DNS servers would load this zone file"
                            .to_owned(),
                    )
                })
                .collect();
            if errs.is_empty() { Ok(()) } else { Err(errs) }
        }
    };
    crate::distribution::roles_would_load(cfg)
        .and_then(|()| zones())
        .map_err(|errs| {
            ApiError::Invalid(
                errs.into_iter()
                    .map(|(field, message)| FieldError {
                        field: format!("{prefix}{field}"),
                        message,
                    })
                    .collect(),
            )
        })
}

/// Applies `f` to a copy of the current config and commits it (validated) as the next
/// version; returns `f`'s value and the new version.
pub(crate) async fn mutate<T, F>(st: &ApiState, a: &Auth, f: F) -> ApiResult<(T, u64)>
where
    F: FnOnce(&mut Config) -> ApiResult<T>,
{
    let _guard = st.inner.config_write.lock().await;
    let snap = current(st).await?;
    let mut cfg = snap.config.clone();
    let out = f(&mut cfg)?;
    roles_check(st, &cfg, "")?;
    let author = a.user.username.clone();
    let base = snap.version;
    let now = super::now();
    let version = st
        .db(move |b| b.configs.commit_config(base, &cfg, &author, now))
        .await?;
    st.config_committed(version);
    Ok((out, version))
}

/// The current configuration: the cached parse when the stored version has not moved
/// (one cheap version query), else read, parsed and cached. Other control planes
/// sharing the database commit too, so the version is always asked. Shared, not copied:
/// most requests only read it.
pub(crate) async fn current(st: &ApiState) -> ApiResult<Arc<ConfigSnapshot>> {
    let state = st.clone();
    st.db(move |b| {
        let cache = &state.inner.config_cache;
        let version = b.configs.current_version()?;
        if let Some(snap) = cache.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && snap.version == version
        {
            return Ok(snap.clone());
        }
        let snap = Arc::new(b.configs.current_config()?);
        *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&snap));
        Ok(snap)
    })
    .await
}

fn same_host(a: &str, b: &str) -> bool {
    canonical_hostname(a) == canonical_hostname(b)
}

pub(crate) fn gtm_index(cfg: &Config, host: &str) -> Option<usize> {
    index_of::<GtmConfig>(cfg, host)
}

/// The origin site or POP that holds `server`.
pub(crate) fn site_of(cfg: &Config, server: &str) -> Option<String> {
    cfg.origins
        .iter()
        .find(|o| o.servers.iter().any(|s| s.name == server))
        .map(|o| o.name.clone())
        .or_else(|| {
            cfg.pops
                .iter()
                .find(|p| p.servers.iter().any(|s| s.name == server))
                .map(|p| p.name.clone())
        })
}

fn server_addresses(cfg: &Config, server: &str) -> Vec<IpAddr> {
    cfg.origins
        .iter()
        .flat_map(|o| o.servers.iter())
        .chain(cfg.pops.iter().flat_map(|p| p.servers.iter()))
        .find(|s| s.name == server)
        .map(|s| s.addresses.clone())
        .unwrap_or_default()
}

/// Whether origin site `site` serves GTM hostnames of a customer other than `customer`.
fn site_foreign(cfg: &Config, site: &str, customer: &str) -> bool {
    let Some(o) = cfg.origins.iter().find(|o| o.name == site) else {
        return false;
    };
    cfg.gtm.iter().any(|g| {
        g.customer != customer
            && g.targets
                .iter()
                .any(|t| o.servers.iter().any(|s| s.name == t.server))
    })
}

/// A customer may point its hostnames only at POP servers and at origin servers no
/// other customer uses.
fn check_targets(cfg: &Config, a: &Auth, g: &GtmConfig) -> ApiResult<()> {
    if a.user.role == Role::Admin {
        return Ok(());
    }
    for t in &g.targets {
        if let Some(site) = site_of(cfg, &t.server)
            && site_foreign(cfg, &site, &g.customer)
        {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(())
}

/// Fills in a missing `customer` with the caller's own and refuses another's.
fn own_customer(a: &Auth, v: &mut Value) -> ApiResult<String> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::field("body", "expected a JSON object"))?;
    match obj.get("customer").and_then(Value::as_str) {
        Some(c) => {
            a.require_customer(c)?;
            Ok(c.to_owned())
        }
        None => {
            let own = a
                .user
                .customer
                .clone()
                .ok_or_else(|| ApiError::field("customer", "required"))?;
            obj.insert("customer".into(), Value::String(own.clone()));
            Ok(own)
        }
    }
}

/// Refuses a customer destination address the network's target policy does not allow
/// (loopback, private, link-local, metadata...), naming the request field.
pub(crate) fn check_destination(cfg: &Config, field: &str, ip: IpAddr) -> ApiResult<()> {
    match cfg.security.target_policy().check(ip) {
        Ok(()) => Ok(()),
        Err(range) => Err(ApiError::field(
            field,
            format!(
                "{ip} is a {range} address; customer destinations may not reach it \
                 (an operator may allow the range in security.allow_target_ranges)"
            ),
        )),
    }
}

/// [`check_destination`] for every literal address of a CDN hostname: its origin URLs
/// and the origin domains fetched as `http://<domain>`.
fn check_cdn_destinations(cfg: &Config, c: &CdnConfig) -> ApiResult<()> {
    for (j, u) in c.origin_urls.iter().enumerate() {
        if let Some(ip) = udn_core::netpolicy::url_ip(u) {
            check_destination(cfg, &format!("origin_urls[{j}]"), ip)?;
        }
    }
    for (j, o) in c.origins.iter().enumerate().skip(c.origin_urls.len()) {
        if let Ok(ip) = o.parse::<IpAddr>() {
            check_destination(cfg, &format!("origins[{j}]"), ip)?;
        }
    }
    Ok(())
}

/// The customer owning `name` as a GTM hostname, a CDN hostname or an origin domain.
pub(crate) fn name_owner<'a>(cfg: &'a Config, name: &str) -> Option<&'a str> {
    cfg.gtm
        .iter()
        .find(|g| same_host(&g.hostname, name))
        .map(|g| g.customer.as_str())
        .or_else(|| {
            cfg.cdn
                .iter()
                .find(|c| {
                    same_host(&c.hostname, name) || c.origins.iter().any(|o| same_host(o, name))
                })
                .map(|c| c.customer.as_str())
        })
}

fn taken(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::Taken(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// Refuses (409 naming the field) a new hostname that is configured already, and a
/// hostname or origin domain another customer uses: each name has one owner.
pub(crate) fn check_names(
    cfg: &Config,
    customer: &str,
    new_hostname: Option<&str>,
    origins: &[String],
) -> ApiResult<()> {
    if let Some(h) = new_hostname {
        match name_owner(cfg, h) {
            Some(c) if c != customer => {
                return Err(taken(
                    "hostname",
                    format!("{h} is used by another customer"),
                ));
            }
            _ if index_of::<CdnConfig>(cfg, h).is_some() || gtm_index(cfg, h).is_some() => {
                return Err(taken("hostname", format!("{h} is already configured")));
            }
            _ => {}
        }
    }
    for (j, o) in origins.iter().enumerate() {
        if name_owner(cfg, o).is_some_and(|c| c != customer) {
            return Err(taken(
                format!("origins[{j}]"),
                format!("{o} is used by another customer"),
            ));
        }
    }
    Ok(())
}

/// Takes the admin-only `"verified": true` out of a hostname body (a client-given
/// `challenge` is dropped: the control plane sets it); whether the DNS check is skipped.
fn take_verified(a: &Auth, v: &mut Value) -> ApiResult<bool> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::field("body", "expected a JSON object"))?;
    obj.remove("challenge");
    obj.remove("verification");
    let verified = match obj.remove("verified") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(ApiError::field("verified", "expected true or false")),
    };
    if verified && a.user.role != Role::Admin {
        return Err(ApiError::field(
            "verified",
            "only an admin may skip the DNS TXT check (for zones the provider runs)",
        ));
    }
    Ok(verified)
}

/// Asks the challenge resolver for the TXT record of `hostname`: `Ok` when one of its
/// values is `token`, 422 naming `challenge` when none is, 502 when the resolver does
/// not answer.
async fn check_challenge(st: &ApiState, hostname: &str, token: &str) -> ApiResult<()> {
    let resolver =
        challenge::resolver(st.inner.opts.challenge_resolver).map_err(ApiError::Upstream)?;
    let name = udn_core::config::challenge_name(hostname);
    let values = challenge::txt_values(resolver, &name)
        .await
        .map_err(ApiError::Upstream)?;
    if values.iter().any(|v| v == token) {
        return Ok(());
    }
    Err(ApiError::field(
        "challenge",
        format!(
            "{name} has no TXT record {token:?} (found {} other value(s)); the hostname stays pending",
            values.len()
        ),
    ))
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ApiError::field(
            if path == "." { "body".into() } else { path },
            e.into_inner().to_string(),
        )
    })
}

// ---------------------------------------------------------------- customers

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CustomerQuery {
    /// Admin only: restrict to one customer (a customer may only name itself)
    customer: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/customers", tag = "customers",
    summary = "Customers the caller may see",
    params(PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<CustomerConfig>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn customers(
    State(st): State<ApiState>,
    a: Auth,
    uri: axum::http::Uri,
    Query(p): Query<PageQuery>,
) -> ApiResult<Response> {
    let snap = current(&st).await?;
    let cfg = &snap.config;
    let list: Vec<CustomerConfig> = cfg
        .customers
        .iter()
        .filter(|c| a.user.may_access(&c.name))
        .cloned()
        .collect();
    page(list, |c| vec![Part::Asc(c.name.clone())], &p, &uri)
}

#[utoipa::path(
    get, path = "/v1/customers/{name}", tag = "customers",
    summary = "One customer",
    params(("name" = String, Path, description = "Customer name")),
    responses((status = 200, description = "success", body = CustomerConfig), Errors)
)]
async fn customer(
    State(st): State<ApiState>,
    a: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<CustomerConfig>> {
    a.require_customer(&name)?;
    let snap = current(&st).await?;
    let cfg = &snap.config;
    cfg.customers
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .map(Json)
        .ok_or(ApiError::NotFound)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

#[utoipa::path(
    post, path = "/v1/customers", tag = "customers",
    summary = "Create a customer (admin)",
    request_body = CustomerConfig,
    responses((status = 201, description = "success", body = CustomerConfig), Errors)
)]
async fn create_customer(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<CustomerConfig>,
) -> ApiResult<(StatusCode, Json<CustomerConfig>)> {
    a.require_admin()?;
    let Json(c) = body?;
    if !valid_name(&c.name) {
        return Err(ApiError::field("name", "1-63 letters, digits, - or _"));
    }
    let out = c.clone();
    mutate(&st, &a, move |cfg| {
        cfg.customers.push(c);
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(
    put, path = "/v1/customers/{name}", tag = "customers",
    summary = "Change the display name",
    params(("name" = String, Path, description = "Customer name")),
    request_body = CustomerConfig,
    responses((status = 200, description = "success", body = CustomerConfig), Errors)
)]
async fn update_customer(
    State(st): State<ApiState>,
    a: Auth,
    Path(name): Path<String>,
    body: Body<CustomerConfig>,
) -> ApiResult<Json<CustomerConfig>> {
    a.require_customer(&name)?;
    let Json(c) = body?;
    if c.name != name {
        return Err(ApiError::field("name", "cannot be changed"));
    }
    let out = c.clone();
    mutate(&st, &a, move |cfg| {
        let slot = cfg
            .customers
            .iter_mut()
            .find(|x| x.name == name)
            .ok_or(ApiError::NotFound)?;
        *slot = c;
        Ok(())
    })
    .await?;
    Ok(Json(out))
}

#[utoipa::path(
    delete, path = "/v1/customers/{name}", tag = "customers",
    summary = "Delete a customer (admin)",
    params(("name" = String, Path, description = "Customer name")),
    responses((status = 204, description = "success"), Errors)
)]
async fn delete_customer(
    State(st): State<ApiState>,
    a: Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    a.require_admin()?;
    mutate(&st, &a, move |cfg| {
        let before = cfg.customers.len();
        cfg.customers.retain(|c| c.name != name);
        if cfg.customers.len() == before {
            return Err(ApiError::NotFound);
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- CDN

/// A CDN hostname with its verification state.
#[derive(Debug, Clone, Serialize)]
pub struct CdnView {
    /// The hostname's configuration.
    #[serde(flatten)]
    pub config: CdnConfig,
    /// Pending (with the TXT record to publish) or verified.
    pub verification: Verification,
}

// Described by hand from its parts: the derived schema of a flattened `CdnConfig`
// (`deny_unknown_fields`, so `additionalProperties: false`) would refuse `verification`.
impl utoipa::PartialSchema for CdnView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        super::openapi::flattened::<CdnConfig>(
            "A CDN hostname with its verification state.",
            [("verification", super::openapi::reference::<Verification>())],
        )
    }
}

impl utoipa::ToSchema for CdnView {
    fn schemas(
        out: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        super::openapi::collect::<CdnConfig>(out);
        super::openapi::collect::<Verification>(out);
    }
}

fn cdn_view(c: &CdnConfig) -> CdnView {
    CdnView {
        verification: challenge::verification(&c.hostname, c.challenge.as_deref()),
        config: c.clone(),
    }
}

// ---------------------------------------------------------------- GTM

/// One published address of a GTM hostname, with its site.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetView {
    /// The server name.
    pub server: String,
    /// Its origin site or POP.
    pub site: Option<String>,
    /// Its addresses.
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// Its weight.
    pub weight: u32,
}

/// A GTM hostname with its targets resolved to sites and addresses.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GtmView {
    /// The hostname's configuration.
    pub config: GtmConfig,
    /// Its published targets.
    pub targets: Vec<TargetView>,
    /// How its service is monitored.
    pub monitor: Option<ServiceConfig>,
    /// Pending (with the TXT record to publish) or verified.
    pub verification: Verification,
}

pub(crate) fn gtm_view(cfg: &Config, g: &GtmConfig) -> GtmView {
    GtmView {
        targets: g
            .targets
            .iter()
            .map(|t| TargetView {
                server: t.server.clone(),
                site: site_of(cfg, &t.server),
                addresses: server_addresses(cfg, &t.server),
                weight: t.weight,
            })
            .collect(),
        monitor: cfg
            .services
            .iter()
            .find(|s| s.name == g.service)
            .cloned()
            .map(redacted),
        verification: challenge::verification(&g.hostname, g.challenge.as_deref()),
        config: g.clone(),
    }
}

/// How far back the live health looks for probe tests.
const HEALTH_LOOKBACK_MS: u64 = 3_600_000;
/// Added to three test intervals before a probe's view counts as stale: the time its
/// log file takes to be completed, shipped and stored.
const HEALTH_SHIPPING_SLACK_MS: u64 = 30_000;

/// One probe's view of a GTM target.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProbeView {
    /// The probe's POP.
    pub pop: String,
    /// `up`, `down` or `stale` (no test within the stale limit).
    pub state: String,
    /// When it last tested the target, RFC 3339 UTC.
    pub last_check: String,
    /// Whether that test passed.
    pub last_ok: bool,
    /// The test's detail.
    pub detail: String,
}

/// A GTM target with its live health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetHealth {
    /// The target as [`gtm_view`] shows it.
    #[serde(flatten)]
    pub target: TargetView,
    /// `up` (most fresh probe views up), `down` (most down, or a tie), `stale` (no
    /// fresh view) or `unmonitored` (no probe has tested it in the last hour).
    pub status: String,
    /// The newest test of any probe, RFC 3339 UTC.
    pub last_check: Option<String>,
    /// Each probe's view.
    pub probes: Vec<ProbeView>,
}

/// A GTM hostname's targets with their live health at `now`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GtmHealth {
    /// The hostname.
    pub hostname: String,
    /// The service its targets are tested with.
    pub service: String,
    /// A probe's view older than this is stale.
    pub stale_after_secs: u64,
    /// The targets.
    pub targets: Vec<TargetHealth>,
}

fn rfc3339_utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The live health of `g`'s targets from the probes' latest tests `checks` at `now`.
pub(crate) fn gtm_health(
    cfg: &Config,
    g: &GtmConfig,
    checks: &[crate::store::health::ServiceCheck],
    now: Timestamp,
) -> GtmHealth {
    let interval = cfg
        .services
        .iter()
        .find(|s| s.name == g.service)
        .map_or(10, |s| s.interval_secs.max(1));
    let stale_ms = interval * 3_000 + HEALTH_SHIPPING_SLACK_MS;
    let view = gtm_view(cfg, g);
    let targets = view
        .targets
        .into_iter()
        .map(|t| {
            let mut probes: Vec<ProbeView> = checks
                .iter()
                .filter(|c| c.server == t.server && c.service == g.service)
                .map(|c| {
                    let fresh =
                        now.as_millis().saturating_sub(c.last_check.max(0) as u64) <= stale_ms;
                    ProbeView {
                        pop: c.pop.clone(),
                        state: if fresh {
                            c.state.clone()
                        } else {
                            "stale".into()
                        },
                        last_check: rfc3339_utc(c.last_check),
                        last_ok: c.last_ok,
                        detail: c.detail.clone(),
                    }
                })
                .collect();
            probes.sort_by(|a, b| a.pop.cmp(&b.pop));
            let up = probes.iter().filter(|p| p.state == "up").count();
            let down = probes.iter().filter(|p| p.state == "down").count();
            let status = match (probes.is_empty(), up + down) {
                (true, _) => "unmonitored",
                (false, 0) => "stale",
                _ if up > down => "up",
                _ => "down",
            };
            let last_check = checks
                .iter()
                .filter(|c| c.server == t.server && c.service == g.service)
                .map(|c| c.last_check)
                .max()
                .map(rfc3339_utc);
            TargetHealth {
                target: t,
                status: status.into(),
                last_check,
                probes,
            }
        })
        .collect();
    GtmHealth {
        hostname: g.hostname.clone(),
        service: g.service.clone(),
        stale_after_secs: stale_ms / 1000,
        targets,
    }
}

/// The probes' latest tests of the last hour (for [`gtm_health`]).
pub(crate) async fn recent_checks(
    st: &ApiState,
) -> ApiResult<(Vec<crate::store::health::ServiceCheck>, Timestamp)> {
    let now = super::now();
    let since = Timestamp::from_millis(now.as_millis().saturating_sub(HEALTH_LOOKBACK_MS));
    Ok((st.db(move |b| b.traffic.service_checks(since)).await?, now))
}

/// `GET /v1/gtm/{hostname}/health`: each target's live health (up, down, stale or
/// unmonitored), its last check and every probe's view, from the probes' service
/// records in the log store.
#[utoipa::path(
    get, path = "/v1/gtm/{hostname}/health", tag = "gtm",
    summary = "Live health of the hostname's targets: up, down, stale or unmonitored, the last check and each probe's view (from the probes' service records in the log store)",
    responses((status = 200, description = "each target with its health", body = GtmHealth), Errors)
)]
async fn gtm_health_get(
    State(st): State<ApiState>,
    a: Auth,
    Path(host): Path<String>,
) -> ApiResult<Json<GtmHealth>> {
    let snap = current(&st).await?;
    let cfg = &snap.config;
    let i = gtm_index(cfg, &host).ok_or(ApiError::NotFound)?;
    a.require_customer(&cfg.gtm[i].customer)?;
    let (checks, now) = recent_checks(&st).await?;
    Ok(Json(gtm_health(cfg, &cfg.gtm[i], &checks, now)))
}

/// Runs `f` on GTM hostname `host` after checking the caller owns it.
pub(crate) async fn with_gtm<T, F>(st: &ApiState, a: &Auth, host: String, f: F) -> ApiResult<T>
where
    F: FnOnce(&mut Config, usize) -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    with_entry::<GtmConfig, _, _>(st, a, host, f).await
}

/// The six handlers of a hostname section (`GET`/`POST /v1/{tag}`, `GET`/`PUT`/`DELETE
/// /v1/{tag}/{hostname}`, `POST .../verify`) over the [`Section`] functions, each with
/// its OpenAPI description.
macro_rules! section_handlers {
    (
        $cfg:ty, $view:ty, $tag:literal,
        list $list:ident $lp:literal $ls:literal,
        get $get:ident $gp:literal $gs:literal,
        create $create:ident $cp:literal $cs:literal,
        update $update:ident $up:literal $us:literal,
        verify $verify:ident $vp:literal $vs:literal,
        delete $delete:ident $dp:literal $ds:literal
    ) => {
        #[utoipa::path(
            get, path = $lp, tag = $tag, summary = $ls,
            params(CustomerQuery, PageQuery),
            responses(
                (status = 200, description = "success", body = Vec<$view>),
                Errors, (status = 400, response = ErrorResponse)
            )
        )]
        async fn $list(
            State(st): State<ApiState>,
            a: Auth,
            Query(q): Query<CustomerQuery>,
            uri: axum::http::Uri,
            Query(p): Query<PageQuery>,
        ) -> ApiResult<Response> {
            list_of::<$cfg>(&st, &a, &q, &uri, &p).await
        }

        #[utoipa::path(
            get, path = $gp, tag = $tag, summary = $gs,
            params(("hostname" = String, Path, description = "The hostname")),
            responses((status = 200, description = "success", body = $view), Errors)
        )]
        async fn $get(
            State(st): State<ApiState>,
            a: Auth,
            Path(host): Path<String>,
        ) -> ApiResult<Json<$view>> {
            one_of::<$cfg>(&st, &a, &host).await
        }

        #[utoipa::path(
            post, path = $cp, tag = $tag, summary = $cs,
            request_body = $cfg,
            responses((status = 201, description = "success", body = $view), Errors)
        )]
        async fn $create(
            State(st): State<ApiState>,
            a: Auth,
            body: Body<Value>,
        ) -> ApiResult<(StatusCode, Json<$view>)> {
            create_in::<$cfg>(&st, &a, body).await
        }

        #[utoipa::path(
            put, path = $up, tag = $tag, summary = $us,
            params(("hostname" = String, Path, description = "The hostname")),
            request_body = $cfg,
            responses((status = 200, description = "success", body = $view), Errors)
        )]
        async fn $update(
            State(st): State<ApiState>,
            a: Auth,
            Path(host): Path<String>,
            body: Body<Value>,
        ) -> ApiResult<Json<$view>> {
            update_in::<$cfg>(&st, &a, host, body).await
        }

        #[utoipa::path(
            post, path = $vp, tag = $tag, summary = $vs,
            params(("hostname" = String, Path, description = "The hostname")),
            responses(
                (status = 200, description = "verified (or already verified)", body = $view),
                Errors, (status = 502, response = ErrorResponse)
            )
        )]
        async fn $verify(
            State(st): State<ApiState>,
            a: Auth,
            Path(host): Path<String>,
        ) -> ApiResult<Json<$view>> {
            verify_in::<$cfg>(&st, &a, host).await
        }

        #[utoipa::path(
            delete, path = $dp, tag = $tag, summary = $ds,
            params(("hostname" = String, Path, description = "The hostname")),
            responses((status = 204, description = "success"), Errors)
        )]
        async fn $delete(
            State(st): State<ApiState>,
            a: Auth,
            Path(host): Path<String>,
        ) -> ApiResult<StatusCode> {
            delete_in::<$cfg>(&st, &a, host).await
        }
    };
}

section_handlers!(
    CdnConfig, CdnView, "cdn",
    list cdn_list "/v1/cdn" "CDN hostnames",
    get cdn_get "/v1/cdn/{hostname}" "One CDN hostname",
    create cdn_create "/v1/cdn" "Add a CDN hostname (customer defaults to the caller's)",
    update cdn_update "/v1/cdn/{hostname}" "Replace a CDN hostname",
    verify cdn_verify "/v1/cdn/{hostname}/verify" "Check the hostname's DNS TXT challenge (_udn-challenge.<hostname>) with a real DNS query; verified hostnames go live",
    delete cdn_delete "/v1/cdn/{hostname}" "Remove a CDN hostname"
);

section_handlers!(
    GtmConfig, GtmView, "gtm",
    list gtm_list "/v1/gtm" "GTM hostnames with their targets' sites and addresses",
    get gtm_get "/v1/gtm/{hostname}" "One GTM hostname",
    create gtm_create "/v1/gtm" "Add a GTM hostname",
    update gtm_update "/v1/gtm/{hostname}" "Replace a GTM hostname (weights, standby, persistence, weighting, TTL...)",
    verify gtm_verify "/v1/gtm/{hostname}/verify" "Check the hostname's DNS TXT challenge (_udn-challenge.<hostname>) with a real DNS query; verified hostnames go live",
    delete gtm_delete "/v1/gtm/{hostname}" "Remove a GTM hostname"
);

/// The accessors of [`Section`] that read the same fields in both sections.
macro_rules! section_fields {
    ($section:ident) => {
        fn entries(cfg: &Config) -> &Vec<Self> {
            &cfg.$section
        }
        fn entries_mut(cfg: &mut Config) -> &mut Vec<Self> {
            &mut cfg.$section
        }
        fn hostname(&self) -> &str {
            &self.hostname
        }
        fn customer(&self) -> &str {
            &self.customer
        }
        fn challenge(&self) -> Option<&str> {
            self.challenge.as_deref()
        }
        fn challenge_mut(&mut self) -> &mut Option<String> {
            &mut self.challenge
        }
        fn view_hostname(v: &Self::View) -> &str {
            &v.config.hostname
        }
    };
}

/// A configuration section of customer hostnames (CDN or GTM): what the handlers the
/// two share need of it.
trait Section: Clone + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// How the API shows an entry.
    type View: Serialize + Send + 'static;
    fn entries(cfg: &Config) -> &Vec<Self>;
    fn entries_mut(cfg: &mut Config) -> &mut Vec<Self>;
    fn hostname(&self) -> &str;
    fn customer(&self) -> &str;
    fn challenge(&self) -> Option<&str>;
    fn challenge_mut(&mut self) -> &mut Option<String>;
    fn view(cfg: &Config, e: &Self) -> Self::View;
    fn view_hostname(v: &Self::View) -> &str;
    /// Checks `e` against the rest of `cfg` before it is stored; `new_host` is its
    /// hostname when that is new to the configuration (a create).
    fn check(cfg: &Config, a: &Auth, e: &Self, new_host: Option<&str>) -> ApiResult<()>;
}

impl Section for CdnConfig {
    type View = CdnView;
    section_fields!(cdn);
    fn view(_: &Config, e: &Self) -> CdnView {
        cdn_view(e)
    }
    fn check(cfg: &Config, _: &Auth, c: &Self, new_host: Option<&str>) -> ApiResult<()> {
        check_names(cfg, &c.customer, new_host, &c.origins)?;
        check_cdn_destinations(cfg, c)
    }
}

impl Section for GtmConfig {
    type View = GtmView;
    section_fields!(gtm);
    fn view(cfg: &Config, e: &Self) -> GtmView {
        gtm_view(cfg, e)
    }
    fn check(cfg: &Config, a: &Auth, g: &Self, new_host: Option<&str>) -> ApiResult<()> {
        if new_host.is_some() {
            check_names(cfg, &g.customer, new_host, &[])?;
        }
        check_targets(cfg, a, g)
    }
}

fn index_of<S: Section>(cfg: &Config, host: &str) -> Option<usize> {
    S::entries(cfg)
        .iter()
        .position(|e| same_host(e.hostname(), host))
}

/// `GET /v1/{cdn,gtm}`: the entries the caller may see, a page at a time.
async fn list_of<S: Section>(
    st: &ApiState,
    a: &Auth,
    q: &CustomerQuery,
    uri: &axum::http::Uri,
    p: &PageQuery,
) -> ApiResult<Response> {
    let scope = a.scope(q.customer.as_deref())?;
    let snap = current(st).await?;
    let cfg = &snap.config;
    let list: Vec<S::View> = S::entries(cfg)
        .iter()
        .filter(|e| scope.is_none_or(|s| s == e.customer()))
        .map(|e| S::view(cfg, e))
        .collect();
    page(
        list,
        |v| vec![Part::Asc(S::view_hostname(v).to_owned())],
        p,
        uri,
    )
}

/// `GET /v1/{cdn,gtm}/{hostname}`.
async fn one_of<S: Section>(st: &ApiState, a: &Auth, host: &str) -> ApiResult<Json<S::View>> {
    let snap = current(st).await?;
    let cfg = &snap.config;
    let e = &S::entries(cfg)[index_of::<S>(cfg, host).ok_or(ApiError::NotFound)?];
    a.require_customer(e.customer())?;
    Ok(Json(S::view(cfg, e)))
}

/// `POST /v1/{cdn,gtm}`: a new hostname, pending its TXT challenge unless an admin
/// marks it verified; the customer defaults to the caller's.
async fn create_in<S: Section>(
    st: &ApiState,
    a: &Auth,
    body: Body<Value>,
) -> ApiResult<(StatusCode, Json<S::View>)> {
    let Json(mut v) = body?;
    own_customer(a, &mut v)?;
    let verified = take_verified(a, &mut v)?;
    let mut e: S = from_value(v)?;
    *e.challenge_mut() = (!verified).then(challenge::new_token);
    let a2 = a.clone();
    let (view, _) = mutate(st, a, move |cfg| {
        S::check(cfg, &a2, &e, Some(e.hostname()))?;
        let view = S::view(cfg, &e);
        S::entries_mut(cfg).push(e);
        Ok(view)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `PUT /v1/{cdn,gtm}/{hostname}`: replaces the entry; moving it to another customer
/// makes it unproven again (a new challenge), unless an admin marks it verified.
async fn update_in<S: Section>(
    st: &ApiState,
    a: &Auth,
    host: String,
    body: Body<Value>,
) -> ApiResult<Json<S::View>> {
    let Json(mut v) = body?;
    own_customer(a, &mut v)?;
    let verified = take_verified(a, &mut v)?;
    let mut e: S = from_value(v)?;
    if !same_host(e.hostname(), &host) {
        return Err(ApiError::field("hostname", "must match the URL"));
    }
    let a2 = a.clone();
    let view = with_entry::<S, _, _>(st, a, host, move |cfg, i| {
        S::check(cfg, &a2, &e, None)?;
        let old = &S::entries(cfg)[i];
        let moved = old.customer() != e.customer();
        let kept = old.challenge().map(str::to_owned);
        if moved {
            check_names(cfg, e.customer(), None, &[e.hostname().to_owned()])?;
        }
        *e.challenge_mut() = if verified {
            None
        } else if moved {
            Some(challenge::new_token())
        } else {
            kept
        };
        let view = S::view(cfg, &e);
        S::entries_mut(cfg)[i] = e;
        Ok(view)
    })
    .await?;
    Ok(Json(view))
}

/// `POST /v1/{cdn,gtm}/{hostname}/verify`: checks the hostname's TXT challenge with a
/// real DNS query and, when it matches, makes the hostname live.
async fn verify_in<S: Section>(st: &ApiState, a: &Auth, host: String) -> ApiResult<Json<S::View>> {
    let snap = current(st).await?;
    let cfg = &snap.config;
    let e = &S::entries(cfg)[index_of::<S>(cfg, &host).ok_or(ApiError::NotFound)?];
    a.require_customer(e.customer())?;
    let Some(token) = e.challenge().map(str::to_owned) else {
        return Ok(Json(S::view(cfg, e)));
    };
    signup_gate(st, e.customer()).await?;
    check_challenge(st, e.hostname(), &token).await?;
    let out = with_entry::<S, _, _>(st, a, host, move |cfg, i| {
        let c = S::entries_mut(cfg)[i].challenge_mut();
        if c.as_deref() == Some(token.as_str()) {
            *c = None;
        }
        Ok(S::view(cfg, &S::entries(cfg)[i]))
    })
    .await?;
    Ok(Json(out))
}

/// `DELETE /v1/{cdn,gtm}/{hostname}`.
async fn delete_in<S: Section>(st: &ApiState, a: &Auth, host: String) -> ApiResult<StatusCode> {
    with_entry::<S, _, _>(st, a, host, |cfg, i| {
        S::entries_mut(cfg).remove(i);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Commits `f`'s change to entry `i` of section `S` (hostname `host`), after checking
/// that the caller may act for its customer: 404 when the hostname is not configured,
/// 403 when it is another customer's.
async fn with_entry<S: Section, T, F>(st: &ApiState, a: &Auth, host: String, f: F) -> ApiResult<T>
where
    F: FnOnce(&mut Config, usize) -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    let a2 = a.clone();
    let (out, _) = mutate(st, a, move |cfg| {
        let i = index_of::<S>(cfg, &host).ok_or(ApiError::NotFound)?;
        a2.require_customer(S::entries(cfg)[i].customer())?;
        f(cfg, i)
    })
    .await?;
    Ok(out)
}

/// Body of `POST /v1/gtm/{hostname}/addresses`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAddress {
    /// The address to publish (a server with it is created when none exists).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub address: Option<IpAddr>,
    /// An existing server to publish instead of an address.
    #[serde(default)]
    pub server: Option<String>,
    /// The origin site (location) a new server goes to (default `<customer>-origin`).
    #[serde(default)]
    pub site: Option<String>,
    /// Weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Adds an address to GTM hostname `i` of `cfg` (shared by the API and the portal).
pub(crate) fn add_address(cfg: &mut Config, i: usize, a: &Auth, n: &NewAddress) -> ApiResult<()> {
    let customer = cfg.gtm[i].customer.clone();
    let admin = a.user.role == Role::Admin;
    let server = match (&n.server, n.address) {
        (Some(s), _) => {
            let site = site_of(cfg, s)
                .ok_or_else(|| ApiError::field("server", format!("unknown server {s:?}")))?;
            if !admin && site_foreign(cfg, &site, &customer) {
                return Err(ApiError::Forbidden);
            }
            s.clone()
        }
        (None, Some(addr)) => {
            check_destination(cfg, "address", addr)?;
            let site = n
                .site
                .clone()
                .unwrap_or_else(|| format!("{customer}-origin"));
            if !valid_name(&site) {
                return Err(ApiError::field("site", "1-63 letters, digits, - or _"));
            }
            if cfg.pops.iter().any(|p| p.name == site) {
                return Err(ApiError::field("site", "is a POP, not an origin site"));
            }
            if !admin && site_foreign(cfg, &site, &customer) {
                return Err(ApiError::Forbidden);
            }
            let existing = cfg
                .origins
                .iter()
                .find(|o| o.name == site)
                .and_then(|o| o.servers.iter().find(|s| s.addresses == [addr]))
                .map(|s| s.name.clone());
            match existing {
                Some(s) => s,
                None => {
                    let name = format!("{site}-{}", addr.to_string().replace(['.', ':'], "-"));
                    let server = ServerConfig {
                        name: name.clone(),
                        addresses: vec![addr],
                    };
                    match cfg.origins.iter_mut().find(|o| o.name == site) {
                        Some(o) => o.servers.push(server),
                        None => cfg.origins.push(OriginConfig {
                            name: site,
                            pop: None,
                            location: None,
                            servers: vec![server],
                        }),
                    }
                    name
                }
            }
        }
        (None, None) => return Err(ApiError::field("address", "address or server required")),
    };
    if cfg.gtm[i].targets.iter().any(|t| t.server == server) {
        return Err(ApiError::field("address", "already published"));
    }
    cfg.gtm[i].targets.push(TargetConfig {
        server,
        weight: n.weight.unwrap_or(1),
    });
    Ok(())
}

/// Index of the target of GTM hostname `i` named by `key` (a server name or one of its
/// addresses).
pub(crate) fn target_index(cfg: &Config, i: usize, key: &str) -> Option<usize> {
    let ip: Option<IpAddr> = key.parse().ok();
    cfg.gtm[i].targets.iter().position(|t| {
        t.server == key || ip.is_some_and(|ip| server_addresses(cfg, &t.server).contains(&ip))
    })
}

#[utoipa::path(
    post, path = "/v1/gtm/{hostname}/addresses", tag = "gtm",
    summary = "Publish an address (creating its server in an origin site) or an existing server",
    params(("hostname" = String, Path, description = "The hostname")),
    request_body = NewAddress,
    responses((status = 201, description = "success", body = GtmView), Errors)
)]
async fn address_add(
    State(st): State<ApiState>,
    a: Auth,
    Path(host): Path<String>,
    body: Body<NewAddress>,
) -> ApiResult<(StatusCode, Json<GtmView>)> {
    let Json(n) = body?;
    let a2 = a.clone();
    let view = with_gtm(&st, &a, host, move |cfg, i| {
        add_address(cfg, i, &a2, &n)?;
        Ok(gtm_view(cfg, &cfg.gtm[i]))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

#[utoipa::path(
    put, path = "/v1/gtm/{hostname}/addresses/{address}", tag = "gtm",
    summary = "Change a target's weight",
    params(("hostname" = String, Path, description = "The hostname"), ("address" = String, Path, description = "An address or server name")),
    request_body = inline(WeightBody),
    responses((status = 200, description = "success", body = GtmView), Errors)
)]
async fn address_weight(
    State(st): State<ApiState>,
    a: Auth,
    Path((host, key)): Path<(String, String)>,
    body: Body<WeightBody>,
) -> ApiResult<Json<GtmView>> {
    let Json(w) = body?;
    let view = with_gtm(&st, &a, host, move |cfg, i| {
        let t = target_index(cfg, i, &key).ok_or(ApiError::NotFound)?;
        cfg.gtm[i].targets[t].weight = w.weight;
        Ok(gtm_view(cfg, &cfg.gtm[i]))
    })
    .await?;
    Ok(Json(view))
}

#[utoipa::path(
    delete, path = "/v1/gtm/{hostname}/addresses/{address}", tag = "gtm",
    summary = "Stop publishing an address",
    params(("hostname" = String, Path, description = "The hostname"), ("address" = String, Path, description = "An address or server name")),
    responses((status = 200, description = "success", body = GtmView), Errors)
)]
async fn address_remove(
    State(st): State<ApiState>,
    a: Auth,
    Path((host, key)): Path<(String, String)>,
) -> ApiResult<Json<GtmView>> {
    let view = with_gtm(&st, &a, host, move |cfg, i| {
        let t = target_index(cfg, i, &key).ok_or(ApiError::NotFound)?;
        cfg.gtm[i].targets.remove(t);
        Ok(gtm_view(cfg, &cfg.gtm[i]))
    })
    .await?;
    Ok(Json(view))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StandbyBody {
    /// IPv4 or IPv6 addresses.
    #[schema(value_type = Vec<String>)]
    standby: Vec<IpAddr>,
}

#[utoipa::path(
    put, path = "/v1/gtm/{hostname}/standby", tag = "gtm",
    summary = "Set the hidden standby addresses",
    params(("hostname" = String, Path, description = "The hostname")),
    request_body = inline(StandbyBody),
    responses((status = 200, description = "success", body = GtmView), Errors)
)]
async fn standby_set(
    State(st): State<ApiState>,
    a: Auth,
    Path(host): Path<String>,
    body: Body<StandbyBody>,
) -> ApiResult<Json<GtmView>> {
    let Json(s) = body?;
    let view = with_gtm(&st, &a, host, move |cfg, i| {
        for (k, ip) in s.standby.iter().enumerate() {
            check_destination(cfg, &format!("standby[{k}]"), *ip)?;
        }
        cfg.gtm[i].standby = s.standby;
        Ok(gtm_view(cfg, &cfg.gtm[i]))
    })
    .await?;
    Ok(Json(view))
}

#[utoipa::path(
    get, path = "/v1/gtm/{hostname}/monitor", tag = "gtm",
    summary = "How the hostname's service is monitored",
    params(("hostname" = String, Path, description = "The hostname")),
    responses((status = 200, description = "success", body = ServiceConfig), Errors)
)]
async fn monitor_get(
    State(st): State<ApiState>,
    a: Auth,
    Path(host): Path<String>,
) -> ApiResult<Json<ServiceConfig>> {
    let snap = current(&st).await?;
    let cfg = &snap.config;
    let i = gtm_index(cfg, &host).ok_or(ApiError::NotFound)?;
    a.require_customer(&cfg.gtm[i].customer)?;
    cfg.services
        .iter()
        .find(|s| s.name == cfg.gtm[i].service)
        .cloned()
        .map(|s| Json(redacted(s)))
        .ok_or(ApiError::NotFound)
}

/// A service as shown to customers: an FTP password is never sent back (it may be an
/// operator's, on a shared service); `"ftp_password": "(set)"` says one is saved.
fn redacted(mut s: ServiceConfig) -> ServiceConfig {
    if s.ftp_password.is_some() {
        s.ftp_password = Some("(set)".into());
    }
    s
}

/// The per-hostname service a monitor change creates, so that other hostnames sharing
/// the old service are unaffected.
pub(crate) fn monitor_name(host: &str) -> String {
    format!("mon-{}", canonical_hostname(host))
}

/// Sets how GTM hostname `i` is monitored (shared by the API and the portal).
pub(crate) fn set_monitor(cfg: &mut Config, i: usize, mut v: Value) -> ApiResult<ServiceConfig> {
    let name = monitor_name(&cfg.gtm[i].hostname);
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::field("body", "expected a JSON object"))?;
    obj.insert("name".into(), Value::String(name.clone()));
    // The FTP password is never shown back: absent or `"(set)"` keeps the one saved on
    // this hostname's own monitor (never a shared service's, which may be an operator's).
    let keep = match obj.get("ftp_password") {
        None => true,
        Some(Value::String(p)) => p == "(set)",
        Some(_) => false,
    };
    if keep {
        obj.remove("ftp_password");
        let saved = cfg
            .services
            .iter()
            .find(|s| s.name == name && cfg.gtm[i].service == name)
            .and_then(|s| s.ftp_password.clone());
        if let Some(p) = saved {
            obj.insert("ftp_password".into(), Value::String(p));
        }
    }
    let svc: ServiceConfig = from_value(v)?;
    match cfg.services.iter_mut().find(|s| s.name == name) {
        Some(s) => *s = svc.clone(),
        None => cfg.services.push(svc.clone()),
    }
    cfg.gtm[i].service = name;
    Ok(svc)
}

#[utoipa::path(
    put, path = "/v1/gtm/{hostname}/monitor", tag = "gtm",
    summary = "Change monitoring (creates the hostname's own service `mon-<hostname>`)",
    params(("hostname" = String, Path, description = "The hostname")),
    request_body = ServiceConfig,
    responses((status = 200, description = "success", body = ServiceConfig), Errors)
)]
async fn monitor_set(
    State(st): State<ApiState>,
    a: Auth,
    Path(host): Path<String>,
    body: Body<Value>,
) -> ApiResult<Json<ServiceConfig>> {
    let Json(v) = body?;
    let svc = with_gtm(&st, &a, host, move |cfg, i| set_monitor(cfg, i, v)).await?;
    Ok(Json(redacted(svc)))
}

// ---------------------------------------------------------------- static mappings

fn host_owner(cfg: &Config, host: &str) -> Option<String> {
    cfg.gtm
        .iter()
        .find(|g| same_host(&g.hostname, host))
        .map(|g| g.customer.clone())
        .or_else(|| {
            cfg.cdn
                .iter()
                .find(|c| same_host(&c.hostname, host))
                .map(|c| c.customer.clone())
        })
}

fn mapping_visible(cfg: &Config, a: &Auth, m: &StaticMappingConfig) -> bool {
    a.user.role == Role::Admin
        || (!m.hostnames.is_empty()
            && m.hostnames
                .iter()
                .all(|h| host_owner(cfg, h).is_some_and(|c| a.user.may_access(&c))))
}

#[derive(Serialize)]
struct MappingView {
    index: usize,
    #[serde(flatten)]
    mapping: StaticMappingConfig,
}

// Described by hand from its parts, as [`CdnView`] is.
impl utoipa::PartialSchema for MappingView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        super::openapi::flattened::<StaticMappingConfig>(
            "A static mapping with its index in the list.",
            [("index", <usize as utoipa::PartialSchema>::schema())],
        )
    }
}

impl utoipa::ToSchema for MappingView {
    fn schemas(
        out: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        super::openapi::collect::<StaticMappingConfig>(out);
    }
}

#[utoipa::path(
    get, path = "/v1/static-mappings", tag = "gtm",
    summary = "Static mappings of the caller's hostnames (with their index)",
    params(PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<MappingView>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn mappings(
    State(st): State<ApiState>,
    a: Auth,
    uri: axum::http::Uri,
    Query(p): Query<PageQuery>,
) -> ApiResult<Response> {
    let snap = current(&st).await?;
    let cfg = &snap.config;
    let out = cfg
        .static_mappings
        .iter()
        .enumerate()
        .filter(|(_, m)| mapping_visible(cfg, &a, m))
        .filter_map(|(index, m)| {
            serde_json::to_value(MappingView {
                index,
                mapping: m.clone(),
            })
            .ok()
        })
        .collect();
    let out: Vec<Value> = out;
    page(
        out,
        |v| vec![Part::Up(v["index"].as_i64().unwrap_or(0))],
        &p,
        &uri,
    )
}

#[utoipa::path(
    post, path = "/v1/static-mappings", tag = "gtm",
    summary = "Add a static mapping (customers must name their hostnames)",
    request_body = StaticMappingConfig,
    responses((status = 201, description = "success", body = StaticMappingConfig), Errors)
)]
async fn mapping_add(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<Value>,
) -> ApiResult<(StatusCode, Json<StaticMappingConfig>)> {
    let Json(v) = body?;
    let m: StaticMappingConfig = from_value(v)?;
    if a.user.role != Role::Admin && m.hostnames.is_empty() {
        return Err(ApiError::field(
            "hostnames",
            "name the hostnames the mapping applies to",
        ));
    }
    let out = m.clone();
    let a2 = a.clone();
    mutate(&st, &a, move |cfg| {
        for (i, h) in m.hostnames.iter().enumerate() {
            match host_owner(cfg, h) {
                None => {
                    return Err(ApiError::field(
                        format!("hostnames[{i}]"),
                        format!("unknown hostname {h:?}"),
                    ));
                }
                Some(c) => a2.require_customer(&c)?,
            }
        }
        cfg.static_mappings.push(m);
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(
    delete, path = "/v1/static-mappings/{index}", tag = "gtm",
    summary = "Remove a static mapping",
    params(("index" = u64, Path, description = "Index in the list")),
    responses((status = 204, description = "success"), Errors)
)]
async fn mapping_delete(
    State(st): State<ApiState>,
    a: Auth,
    Path(index): Path<usize>,
) -> ApiResult<StatusCode> {
    let a2 = a.clone();
    mutate(&st, &a, move |cfg| {
        let m = cfg.static_mappings.get(index).ok_or(ApiError::NotFound)?;
        if !mapping_visible(cfg, &a2, m) {
            return Err(ApiError::Forbidden);
        }
        cfg.static_mappings.remove(index);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- config distribution

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConfigQuery {
    /// The version the caller has
    since: Option<u64>,
    /// Seconds to wait for a newer version
    wait: Option<u64>,
    /// `toml` for TOML text
    format: Option<String>,
}

fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

#[utoipa::path(
    get, path = "/v1/config", tag = "config",
    summary = "Current network configuration snapshot (admins; the roles read theirs on the control plane's mutual-TLS machine listener, see docs/api.md). Conditional GET with If-None-Match (ETag `\"v<version>\"`) answers 304; `since=V&wait=S` long-polls up to S (max 60) seconds for a version other than V",
    params(ConfigQuery),
    responses(
        (status = 200, description = "success", body = ConfigSnapshot),
        (status = 304, description = "not modified"),
        Errors
    )
)]
async fn config_get(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ConfigQuery>,
    _reader: ConfigReader,
) -> ApiResult<Response> {
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The version the caller already has: `since`, or the one its ETag names.
    let known = q.since.or_else(|| {
        inm.as_deref()
            .and_then(|t| t.trim_matches('"').strip_prefix('v'))
            .and_then(|v| v.parse().ok())
    });
    let mut rx = st.inner.config_version.subscribe();
    if let (Some(known), Some(wait)) = (known, q.wait) {
        let wait = Duration::from_secs(wait.min(60));
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v != known)).await;
    }
    let snap = current(&st).await?;
    if known == Some(snap.version) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag(snap.version)) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return Ok(resp);
    }
    let mut resp = if q.format.as_deref() == Some("toml") {
        let text = toml::to_string(&snap.config)
            .map_err(|e| ApiError::Internal(format!("config as TOML: {e}")))?;
        ([(header::CONTENT_TYPE, "application/toml")], text).into_response()
    } else {
        Json(&*snap).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag(snap.version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&snap.version.to_string()) {
        resp.headers_mut().insert("x-config-version", v);
    }
    Ok(resp)
}

/// An admin (session or API token): the full configuration, pending hostnames included.
struct ConfigReader;

impl FromRequestParts<ApiState> for ConfigReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> ApiResult<ConfigReader> {
        let a = Auth::from_request_parts(parts, st).await?;
        a.require_admin()?;
        Ok(ConfigReader)
    }
}

/// The configuration channel of the roles, served on the control plane's machine
/// listener (`udn control --listen`, mutual TLS): `GET /v1/config?wait=S` admits roles
/// dns, edge and probe by their instance certificate (401 without one, 403 another
/// role). The answer is the live configuration (verified hostnames only) and the revoked
/// certificate fingerprints ([`crate::distribution::RoleSnapshot`]); its ETag
/// (`"v<version>-r<revocations tag>"`) changes with either, so a long-poll waiting on
/// `If-None-Match` wakes on a new version and on a revocation.
pub fn role_config_router(state: ApiState, revoked: crate::pki::Revocations) -> Router {
    use crate::pki::InstanceRole;
    Router::new()
        .route("/v1/config", axum::routing::get(role_config_get))
        .route_layer(axum::middleware::from_fn(|req, next| {
            crate::pki::require_roles(
                &[InstanceRole::Dns, InstanceRole::Edge, InstanceRole::Probe],
                req,
                next,
            )
        }))
        .with_state((state, revoked))
}

fn role_etag(version: u64, revoked: &crate::pki::Revocations) -> String {
    format!("\"v{version}-r{}\"", revoked.tag())
}

#[derive(Deserialize)]
struct RoleConfigQuery {
    wait: Option<u64>,
}

async fn role_config_get(
    State((st, revoked)): State<(ApiState, crate::pki::Revocations)>,
    headers: HeaderMap,
    Query(q): Query<RoleConfigQuery>,
) -> ApiResult<Response> {
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut versions = st.inner.config_version.subscribe();
    let mut revocations = revoked.subscribe();
    let current_tag = |v: u64| role_etag(v, &revoked);
    if let (Some(inm), Some(wait)) = (inm.as_deref(), q.wait)
        && inm == current_tag(*versions.borrow_and_update())
    {
        let wait = Duration::from_secs(wait.min(60));
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = versions.changed() => {}
                _ = revocations.changed() => {}
            }
        })
        .await;
    }
    let mut snap = ConfigSnapshot::clone(&*current(&st).await?);
    // The roles serve only verified hostnames (and never see the tokens).
    snap.config = snap.config.live();
    let tag = current_tag(snap.version);
    let mut resp = if inm.as_deref() == Some(tag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(crate::distribution::RoleSnapshot {
            snapshot: snap.clone(),
            revoked: revoked.list(),
        })
        .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&snap.version.to_string()) {
        resp.headers_mut().insert("x-config-version", v);
    }
    Ok(resp)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConfigPut {
    /// The version this change is based on: refused (409) when another is current.
    base: Option<u64>,
    /// The new configuration (read as JSON here, then checked field by field).
    #[schema(value_type = Config)]
    config: Value,
}

/// The version a change was stored as.
#[derive(Serialize, utoipa::ToSchema)]
struct VersionAnswer {
    version: u64,
}

#[utoipa::path(
    put, path = "/v1/config", tag = "config",
    summary = "Replace the whole configuration (admin); `base` guards against lost updates",
    request_body = inline(ConfigPut),
    responses(
        (status = 200, description = "success", body = inline(VersionAnswer)),
        Errors, (status = 409, response = ErrorResponse)
    )
)]
async fn config_put(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<ConfigPut>,
) -> ApiResult<Json<VersionAnswer>> {
    a.require_admin()?;
    let Json(p) = body?;
    let new: Config = from_value(p.config).map_err(|e| match e {
        ApiError::Invalid(mut errs) => {
            for f in &mut errs {
                f.field = format!("config.{}", f.field);
            }
            ApiError::Invalid(errs)
        }
        e => e,
    })?;
    roles_check(&st, &new, "config.")?;
    let _guard = st.inner.config_write.lock().await;
    let base = match p.base {
        Some(b) => b,
        None => current(&st).await?.version,
    };
    let author = a.user.username.clone();
    let now = super::now();
    let version = st
        .db(move |b| b.configs.commit_config(base, &new, &author, now))
        .await?;
    st.config_committed(version);
    Ok(Json(VersionAnswer { version }))
}

#[utoipa::path(
    get, path = "/v1/config/versions/{version}", tag = "config",
    summary = "One past configuration version (admin)",
    params(("version" = u64, Path, description = "Version number")),
    responses((status = 200, description = "success", body = ConfigSnapshot), Errors)
)]
async fn config_version(
    State(st): State<ApiState>,
    a: Auth,
    Path(version): Path<u64>,
) -> ApiResult<Json<ConfigSnapshot>> {
    a.require_admin()?;
    st.db(move |b| b.configs.config_at(version))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

// ---------------------------------------------------------------- purge, prefill, page check

/// The host part of an `http(s)://host[:port]/...` URL.
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']').map(|(h, _)| &h[1..])?
    } else {
        host.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// The customer owning CDN content of `host`: a CDN hostname or one of its origin
/// domains.
pub(crate) fn cdn_owner(cfg: &Config, host: &str) -> Option<String> {
    cfg.cdn
        .iter()
        .find(|c| same_host(&c.hostname, host) || c.origins.iter().any(|o| same_host(o, host)))
        .map(|c| c.customer.clone())
}

/// The reason text of a target the edges' parser refuses.
fn purge_reason(e: &udn_cache::PurgeError) -> String {
    match e {
        udn_cache::PurgeError::BadTarget(why) => why.clone(),
        other => other.to_string(),
    }
}

/// A purge request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PurgeRequest)]
pub struct PurgeBody {
    /// `url`, `prefix` or `domain`.
    pub scope: PurgeScope,
    /// The URL, directory URL or domain.
    pub target: String,
}

/// A purge with its propagation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurgeView {
    /// The purge.
    #[serde(flatten)]
    pub purge: Purge,
    /// Edges that applied it.
    pub applied: usize,
    /// Edges it goes to.
    pub total: usize,
    /// Per-edge status.
    pub edges: Vec<PurgeEdgeStatus>,
}

pub(crate) async fn purge_view(st: &ApiState, p: Purge) -> ApiResult<PurgeView> {
    let seq = p.seq;
    let edges = st.db(move |b| b.deliveries.purge_status(seq)).await?;
    Ok(PurgeView {
        applied: edges.iter().filter(|e| e.applied).count(),
        total: edges.len(),
        edges,
        purge: p,
    })
}

/// Validates, authorises and records a purge and wakes the edge delivery tasks
/// (shared by the API and the portal).
pub(crate) async fn start_purge(st: &ApiState, a: &Auth, b: PurgeBody) -> ApiResult<PurgeView> {
    // The edges' own parser: a target accepted here is one every edge applies.
    let t = udn_cache::target::parse_purge_target(b.scope.as_str(), &b.target)
        .map_err(|e| ApiError::field("target", purge_reason(&e)))?;
    let (host, target) = (t.host, t.target);
    let snap = current(st).await?;
    let cfg = &snap.config;
    let customer = cdn_owner(cfg, &host).ok_or_else(|| {
        ApiError::field(
            "target",
            format!("{host} is not a CDN hostname or origin domain"),
        )
    })?;
    a.require_customer(&customer)?;
    let edges: Vec<String> = st.inner.opts.edges.iter().map(|e| e.name.clone()).collect();
    let by = a.user.username.clone();
    let scope = b.scope;
    let now = super::now();
    let p = st
        .db(move |b| {
            b.deliveries
                .create_purge(&customer, scope, &target, &by, &edges, now)
        })
        .await?;
    st.inner.purge_seq.send_replace(p.seq);
    purge_view(st, p).await
}

#[utoipa::path(
    post, path = "/v1/purge", tag = "purge",
    summary = "Invalidate a URL, directory (prefix) or domain on every edge; answers at once with the sequence number, delivery continues in the background and retries edges that are down",
    request_body = PurgeBody,
    responses((status = 202, description = "success", body = PurgeView), Errors)
)]
async fn purge_create(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<PurgeBody>,
) -> ApiResult<(StatusCode, Json<PurgeView>)> {
    let Json(b) = body?;
    let v = start_purge(&st, &a, b).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Admin only: restrict to one customer (a customer may only name itself)
    customer: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/purge", tag = "purge",
    summary = "Recent purges with their propagation",
    params(ListQuery, PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<PurgeView>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn purge_list(
    State(st): State<ApiState>,
    a: Auth,
    Query(q): Query<ListQuery>,
    uri: axum::http::Uri,
    Query(pq): Query<PageQuery>,
) -> ApiResult<Response> {
    let scope = a.scope(q.customer.as_deref())?.map(str::to_owned);
    // Newest first, read from the database a page (and one more) past the cursor.
    let limit = pq.limit()?;
    let before = match pq.after()?.as_deref() {
        None => None,
        Some([Part::Down(seq)]) => Some(u64::try_from(*seq).unwrap_or(0)),
        Some(_) => {
            return Err(ApiError::BadParam(FieldError {
                field: "cursor".into(),
                message: "not a cursor of this list (use the one a Link header gave)".into(),
            }));
        }
    };
    let fetch = u32::try_from(limit + 1).unwrap_or(u32::MAX);
    let list = st
        .db(move |b| b.deliveries.purges(scope.as_deref(), fetch, before))
        .await?;
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        out.push(purge_view(&st, p).await?);
    }
    page(
        out,
        |p| vec![Part::Down(to_i64_seq(p.purge.seq))],
        &pq,
        &uri,
    )
}

#[utoipa::path(
    get, path = "/v1/purge/{seq}", tag = "purge",
    summary = "One purge and how many edges applied it",
    params(("seq" = u64, Path, description = "Sequence number")),
    responses((status = 200, description = "success", body = PurgeView), Errors)
)]
async fn purge_get(
    State(st): State<ApiState>,
    a: Auth,
    Path(seq): Path<u64>,
) -> ApiResult<Json<PurgeView>> {
    let p = st
        .db(move |b| b.deliveries.purge(seq))
        .await?
        .ok_or(ApiError::NotFound)?;
    a.require_customer(&p.customer)?;
    Ok(Json(purge_view(&st, p).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PrefillBody {
    urls: Vec<String>,
}

/// A prefill with its propagation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrefillView {
    /// The prefill.
    #[serde(flatten)]
    pub prefill: Prefill,
    /// Edges that accepted it.
    pub applied: usize,
    /// Edges it goes to.
    pub total: usize,
    /// Per-edge status.
    pub edges: Vec<PurgeEdgeStatus>,
}

async fn prefill_view(st: &ApiState, p: Prefill) -> ApiResult<PrefillView> {
    let seq = p.seq;
    let edges = st.db(move |b| b.deliveries.prefill_status(seq)).await?;
    Ok(PrefillView {
        applied: edges.iter().filter(|e| e.applied).count(),
        total: edges.len(),
        edges,
        prefill: p,
    })
}

#[utoipa::path(
    post, path = "/v1/prefill", tag = "purge",
    summary = "Ask every edge to fetch URLs into its cache; numbered and retried like purges (delivered after pending purges)",
    request_body = inline(PrefillBody),
    responses((status = 202, description = "success", body = PrefillView), Errors)
)]
async fn prefill(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<PrefillBody>,
) -> ApiResult<(StatusCode, Json<PrefillView>)> {
    let Json(b) = body?;
    if b.urls.is_empty() || b.urls.len() > 1000 {
        return Err(ApiError::field("urls", "1 to 1000 URLs"));
    }
    let snap = current(&st).await?;
    let cfg = &snap.config;
    let mut customer = None;
    for (i, u) in b.urls.iter().enumerate() {
        let field = format!("urls[{i}]");
        let parsed = udn_cache::target::parse_url(u)
            .map_err(|e| ApiError::field(&field, purge_reason(&e)))?;
        let owner = cdn_owner(cfg, &parsed.host)
            .ok_or_else(|| ApiError::field(&field, "not a CDN hostname or origin domain"))?;
        a.require_customer(&owner)?;
        match &customer {
            None => customer = Some(owner),
            Some(c) if *c != owner => {
                return Err(ApiError::field(&field, "one customer's URLs per prefill"));
            }
            Some(_) => {}
        }
    }
    let customer = customer.unwrap_or_default();
    let edges: Vec<String> = st.inner.opts.edges.iter().map(|e| e.name.clone()).collect();
    let by = a.user.username.clone();
    let now = super::now();
    let urls = b.urls;
    let p = st
        .db(move |b| {
            b.deliveries
                .create_prefill(&customer, &urls, &by, &edges, now)
        })
        .await?;
    st.inner.prefill_wake.send_modify(|n| *n += 1);
    Ok((StatusCode::ACCEPTED, Json(prefill_view(&st, p).await?)))
}

// ---------------------------------------------------------------- live events

/// The most live events one customer may have that have not ended (a registration
/// over it is refused with 409).
pub const MAX_LIVE_EVENTS_PER_CUSTOMER: u32 = 20;
/// Segments each edge prefills per event unless the event says otherwise.
pub const DEFAULT_LIVE_SEGMENTS: u32 = 10;
/// The furthest ahead an event may start, ms (a year).
pub const MAX_LIVE_LEAD_MS: u64 = 366 * 24 * 3600 * 1000;
/// The longest event, ms (7 days).
pub const MAX_LIVE_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;
/// How far in the past a start may be (clock skew, a late registration), ms.
pub const LIVE_START_GRACE_MS: u64 = 5 * 60 * 1000;

/// `POST /v1/live-events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LiveEventBody {
    /// A verified CDN hostname of the caller's
    hostname: String,
    /// An HLS playlist (.m3u8) URL on that hostname, at most 2048 bytes
    playlist_url: String,
    /// Start, ms since the epoch: at most 5 minutes past, at most a year ahead
    starts_at: u64,
    /// End, ms since the epoch: after the start, at most 7 days later (default a day
    /// after the start)
    #[serde(default)]
    ends_at: Option<u64>,
    /// Segments each edge prefills, all variants together (default 10)
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    max_segments: Option<u32>,
}

/// A live event with its prefill's progress on the edges.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveEventView {
    /// The event.
    #[serde(flatten)]
    pub event: LiveEvent,
    /// Edges that prefilled it.
    pub prefilled: usize,
    /// Edges it goes to.
    pub total: usize,
    /// Per-edge status (`pending` until the edge prefilled it, then `applied`).
    pub edges: Vec<PurgeEdgeStatus>,
}

async fn live_event_view(st: &ApiState, event: LiveEvent) -> ApiResult<LiveEventView> {
    let id = event.id;
    let edges = st.db(move |b| b.deliveries.live_event_status(id)).await?;
    Ok(LiveEventView {
        prefilled: edges.iter().filter(|e| e.applied).count(),
        total: edges.len(),
        edges,
        event,
    })
}

/// Checks a live event's fields against the configuration `cfg` at `now`, for the
/// caller `a`: the hostname is a verified CDN hostname of the caller's own (an admin
/// may name any customer's), the playlist an `.m3u8` URL on it, the times in order and
/// in range. Returns the event to record (its customer the hostname's).
fn check_live_event(
    cfg: &Config,
    a: &Auth,
    b: LiveEventBody,
    now: Timestamp,
) -> ApiResult<LiveEvent> {
    let mut errors = Vec::new();
    let mut bad = |field: &str, msg: String| {
        errors.push(super::FieldError {
            field: field.into(),
            message: msg,
        })
    };
    let hostname = canonical_hostname(&b.hostname);
    let cdn = cfg.cdn.iter().find(|c| same_host(&c.hostname, &hostname));
    let customer = match cdn {
        None => {
            bad("hostname", format!("{hostname:?} is not a CDN hostname"));
            None
        }
        Some(c) if !a.user.may_access(&c.customer) => {
            // Another customer's hostname: refused like a hostname that does not exist
            // would be, without saying whose it is.
            return Err(ApiError::Forbidden);
        }
        Some(c) if c.challenge.is_some() => {
            bad(
                "hostname",
                format!("{hostname} is not verified yet (its DNS TXT challenge is pending)"),
            );
            None
        }
        Some(c) => Some(c.customer.clone()),
    };
    if b.playlist_url.len() > udn_cache::hls::MAX_URI_LEN {
        bad("playlist_url", "at most 2048 bytes".into());
    } else {
        match udn_cache::target::parse_url(&b.playlist_url) {
            Err(e) => bad("playlist_url", purge_reason(&e)),
            Ok(u) if !same_host(&u.host, &hostname) => bad(
                "playlist_url",
                format!("must be on the event's hostname {hostname}"),
            ),
            Ok(u) => {
                let path = u.key.splitn(4, '/').nth(3).unwrap_or("");
                if !udn_cache::hls::is_playlist(&format!("/{path}"), None) {
                    bad("playlist_url", "must name an HLS playlist (.m3u8)".into());
                }
            }
        }
    }
    let now_ms = now.as_millis();
    if b.starts_at.saturating_add(LIVE_START_GRACE_MS) < now_ms {
        bad("starts_at", "is in the past".into());
    } else if b.starts_at > now_ms.saturating_add(MAX_LIVE_LEAD_MS) {
        bad("starts_at", "at most a year ahead".into());
    }
    if let Some(end) = b.ends_at {
        if end <= b.starts_at {
            bad("ends_at", "must be after starts_at".into());
        } else if end - b.starts_at > MAX_LIVE_DURATION_MS {
            bad("ends_at", "an event lasts at most 7 days".into());
        }
    }
    let max_segments = b.max_segments.unwrap_or(DEFAULT_LIVE_SEGMENTS);
    let cap = udn_cache::live::MAX_SEGMENTS as u32;
    if !(1..=cap).contains(&max_segments) {
        bad("max_segments", format!("1 to {cap}"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    Ok(LiveEvent {
        id: 0,
        customer: customer.unwrap_or_default(),
        hostname,
        playlist_url: b.playlist_url,
        starts_at: Timestamp::from_millis(b.starts_at),
        ends_at: b.ends_at.map(Timestamp::from_millis),
        max_segments,
        created_by: a.user.username.clone(),
        created_at: now,
    })
}

/// `POST /v1/live-events`: registers a live event; every edge prefills its playlist
/// and segments from [`super::fanout::LIVE_PREFILL_LEAD`] before its start.
#[utoipa::path(
    post, path = "/v1/live-events", tag = "purge",
    summary = "Register a live event: every edge prefills its playlist and segments from 10 minutes before the start until the end; at most 20 events that have not ended per customer (409 beyond)",
    request_body = inline(LiveEventBody),
    responses(
        (status = 201, description = "success", body = LiveEventView),
        Errors, (status = 409, response = ErrorResponse)
    )
)]
async fn live_event_create(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<LiveEventBody>,
) -> ApiResult<(StatusCode, Json<LiveEventView>)> {
    let Json(b) = body?;
    let snap = current(&st).await?;
    let cfg = &snap.config;
    let now = super::now();
    let ev = check_live_event(cfg, &a, b, now)?;
    let edges: Vec<String> = st.inner.opts.edges.iter().map(|e| e.name.clone()).collect();
    let created = st
        .db(move |b| {
            b.deliveries
                .create_live_event(&ev, &edges, MAX_LIVE_EVENTS_PER_CUSTOMER, now)
        })
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "at most {MAX_LIVE_EVENTS_PER_CUSTOMER} live events that have not ended"
            ))
        })?;
    st.inner.prefill_wake.send_modify(|n| *n += 1);
    Ok((
        StatusCode::CREATED,
        Json(live_event_view(&st, created).await?),
    ))
}

/// `GET /v1/live-events[?customer=]`: the caller's events (an admin's: all, or one
/// customer's), newest start first.
#[utoipa::path(
    get, path = "/v1/live-events", tag = "purge",
    summary = "The caller's live events (an admin's: all, or one customer's), newest start first, each with its prefill's progress per edge",
    params(ListQuery, PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<LiveEventView>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn live_events(
    State(st): State<ApiState>,
    a: Auth,
    Query(q): Query<ListQuery>,
    uri: axum::http::Uri,
    Query(pq): Query<PageQuery>,
) -> ApiResult<Response> {
    let scope = a.scope(q.customer.as_deref())?.map(str::to_owned);
    pq.limit()?;
    let list = st
        .db(move |b| b.deliveries.live_events(scope.as_deref(), LIVE_EVENTS_READ))
        .await?;
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        out.push(live_event_view(&st, e).await?);
    }
    page(
        out,
        |e| {
            vec![
                Part::Down(to_i64_seq(e.event.starts_at.as_millis())),
                Part::Down(to_i64_seq(e.event.id)),
            ]
        },
        &pq,
        &uri,
    )
}

#[utoipa::path(
    get, path = "/v1/prefill/{seq}", tag = "purge",
    summary = "One prefill and how many edges accepted it",
    params(("seq" = u64, Path, description = "Sequence number")),
    responses((status = 200, description = "success", body = PrefillView), Errors)
)]
async fn prefill_get(
    State(st): State<ApiState>,
    a: Auth,
    Path(seq): Path<u64>,
) -> ApiResult<Json<PrefillView>> {
    let p = st
        .db(move |b| b.deliveries.prefill(seq))
        .await?
        .ok_or(ApiError::NotFound)?;
    a.require_customer(&p.customer)?;
    Ok(Json(prefill_view(&st, p).await?))
}

/// `POST /v1/purge/{seq}/cancel` (admins): the purge becomes `cancelled` on every
/// edge that has not applied it, and their queues move on.
#[utoipa::path(
    post, path = "/v1/purge/{seq}/cancel", tag = "purge",
    summary = "Admins: cancel a purge on every edge that has not applied it (its state there becomes `cancelled`; delivery moves on)",
    params(("seq" = u64, Path, description = "Sequence number")),
    responses(
        (status = 200, description = "the purge with its per-edge states", body = PurgeView),
        AuthErrors
    )
)]
async fn purge_cancel(
    State(st): State<ApiState>,
    a: Auth,
    Path(seq): Path<u64>,
) -> ApiResult<Json<PurgeView>> {
    a.require_admin()?;
    let p = st
        .db(move |b| b.deliveries.purge(seq))
        .await?
        .ok_or(ApiError::NotFound)?;
    let (by, now) = (a.user.username.clone(), super::now());
    st.db(move |b| {
        b.deliveries
            .cancel_delivery(DeliveryKind::Purge, seq, &by, now)
    })
    .await?;
    st.inner.purge_seq.send_modify(|_| {});
    Ok(Json(purge_view(&st, p).await?))
}

/// `POST /v1/prefill/{seq}/cancel` (admins), like [`purge_cancel`].
#[utoipa::path(
    post, path = "/v1/prefill/{seq}/cancel", tag = "purge",
    summary = "Admins: cancel a prefill on every edge that has not applied it (its state there becomes `cancelled`; delivery moves on)",
    params(("seq" = u64, Path, description = "Sequence number")),
    responses(
        (status = 200, description = "the prefill with its per-edge states", body = PrefillView),
        AuthErrors
    )
)]
async fn prefill_cancel(
    State(st): State<ApiState>,
    a: Auth,
    Path(seq): Path<u64>,
) -> ApiResult<Json<PrefillView>> {
    a.require_admin()?;
    let p = st
        .db(move |b| b.deliveries.prefill(seq))
        .await?
        .ok_or(ApiError::NotFound)?;
    let (by, now) = (a.user.username.clone(), super::now());
    st.db(move |b| {
        b.deliveries
            .cancel_delivery(DeliveryKind::Prefill, seq, &by, now)
    })
    .await?;
    st.inner.prefill_wake.send_modify(|n| *n += 1);
    Ok(Json(prefill_view(&st, p).await?))
}

/// A page-check request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PageCheckRequest)]
pub struct PageCheckBody {
    /// The page.
    pub url: String,
    /// The probe locations (POP names) to run it from.
    pub locations: Vec<String>,
    /// Fetch the page a second time with warm DNS (default false).
    #[serde(default)]
    pub repeat: bool,
    /// Hosts components may also be fetched from, besides the page's host and the
    /// customer's own hostnames and origin domains (others are skipped and reported
    /// as refused).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

/// Page-check results per location.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PageCheckAnswer {
    /// The page.
    pub url: String,
    /// One entry per requested location.
    pub results: Vec<LocationCheck>,
}

/// Validates, authorises and runs a page check (shared by the API and the portal).
pub(crate) async fn run_pagecheck(
    st: &ApiState,
    a: &Auth,
    b: PageCheckBody,
) -> ApiResult<PageCheckAnswer> {
    let host = url_host(&b.url)
        .ok_or_else(|| ApiError::field("url", "expected an http:// or https:// URL"))?;
    let snap = current(st).await?;
    let cfg = &snap.config;
    let owner = cdn_owner(cfg, host)
        .or_else(|| host_owner(cfg, host))
        .ok_or_else(|| {
            ApiError::field("url", format!("{host} is not a hostname of this network"))
        })?;
    a.require_customer(&owner)?;
    if b.locations.is_empty() {
        return Err(ApiError::field("locations", "choose at least one location"));
    }
    let mut errs = Vec::new();
    for (i, l) in b.locations.iter().enumerate() {
        if !st.inner.opts.probes.iter().any(|p| &p.location == l) {
            errs.push(FieldError {
                field: format!("locations[{i}]"),
                message: format!("no probe at location {l:?}"),
            });
        }
    }
    if b.allow_hosts.len() > 64 {
        errs.push(FieldError {
            field: "allow_hosts".into(),
            message: "at most 64 hosts".into(),
        });
    }
    for (i, h) in b.allow_hosts.iter().enumerate() {
        if !udn_core::config::is_valid_hostname(h) {
            errs.push(FieldError {
                field: format!("allow_hosts[{i}]"),
                message: format!("not a valid hostname: {h:?}"),
            });
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let results = fanout::pagecheck(st, &b.url, &b.locations, b.repeat, &b.allow_hosts).await;
    Ok(PageCheckAnswer {
        url: b.url,
        results,
    })
}

#[utoipa::path(
    post, path = "/v1/pagecheck", tag = "tests",
    summary = "Run a page check from the chosen probe locations",
    request_body = PageCheckBody,
    responses((status = 200, description = "success", body = PageCheckAnswer), Errors)
)]
async fn pagecheck(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<PageCheckBody>,
) -> ApiResult<Json<PageCheckAnswer>> {
    let Json(b) = body?;
    Ok(Json(run_pagecheck(&st, &a, b).await?))
}

// ---------------------------------------------------------------- traffic, invoices

/// The query of every traffic series: the range ([`super::timerange::RangeParams`]:
/// `from`, `to`, `tz`, `hours`), the customer (admins), one hostname (`host`), and the
/// answer's format (`format=csv|json`; without it `Accept: text/csv` asks for CSV).
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TrafficQuery {
    /// Admin only: restrict to one customer (a customer may only name itself)
    pub(crate) customer: Option<String>,
    /// One CDN or GTM hostname (default all)
    pub(crate) host: Option<String>,
    /// Start of the range: RFC 3339 (`2026-12-01T00:00:00Z`) or a local date-time
    /// (`2026-12-01T00:00`) read in `tz`
    pub(crate) from: Option<String>,
    /// End of the range (exclusive), same forms; default the end of the last complete
    /// minute
    pub(crate) to: Option<String>,
    /// IANA time zone of the answer's times and of local `from`/`to` (default UTC)
    pub(crate) tz: Option<String>,
    /// Without `from`: the last N hours before `to`, 1..43920 (default 24)
    pub(crate) hours: Option<u64>,
    /// `json` (default) or `csv`; `Accept: text/csv` also asks for CSV
    pub(crate) format: Option<String>,
}

impl TrafficQuery {
    /// The range parameters.
    pub(crate) fn range(&self) -> super::timerange::RangeParams {
        super::timerange::RangeParams {
            from: self.from.clone(),
            to: self.to.clone(),
            tz: self.tz.clone(),
            hours: self.hours,
        }
    }

    /// The hostname filter (empty: every hostname); at most 253 bytes, as DNS allows.
    pub(crate) fn host(&self) -> ApiResult<Option<String>> {
        match self
            .host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            None => Ok(None),
            Some(h) if h.len() > 253 => Err(ApiError::BadParam(FieldError {
                field: "host".into(),
                message: "longer than a hostname".into(),
            })),
            Some(h) => Ok(Some(udn_core::config::canonical_hostname(h))),
        }
    }

    /// Whether the answer is CSV: `format=csv`, or no `format` and an `Accept` that
    /// names `text/csv`.
    fn csv(&self, headers: &HeaderMap) -> ApiResult<bool> {
        match self
            .format
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
        {
            Some(f) if f.eq_ignore_ascii_case("csv") => Ok(true),
            Some(f) if f.eq_ignore_ascii_case("json") => Ok(false),
            Some(_) => Err(ApiError::BadParam(FieldError {
                field: "format".into(),
                message: "csv or json".into(),
            })),
            None => Ok(headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains("text/csv"))),
        }
    }
}

/// A traffic answer: the range it covers (`from`, `to`: RFC 3339 in `tz`; `from_ms`,
/// `to_ms`: ms since the epoch), the bucket of its points (`granularity`, `step_ms`; a
/// point's `minute` is its bucket's start) and the filters applied.
#[derive(Serialize, utoipa::ToSchema)]
struct Series<T> {
    /// The customer in scope (`null`: all).
    customer: Option<String>,
    /// The hostname in scope (`null`: all).
    host: Option<String>,
    /// Start of the range covered (widened to whole buckets), RFC 3339 in `tz`
    #[schema(format = DateTime)]
    from: String,
    /// End of the range covered (exclusive), RFC 3339 in `tz`
    #[schema(format = DateTime)]
    to: String,
    /// `from` in ms since the epoch.
    from_ms: udn_core::Timestamp,
    /// `to` in ms since the epoch.
    to_ms: udn_core::Timestamp,
    /// The answer's time zone.
    tz: String,
    /// minute up to 2 days, hour up to 90 days, day beyond
    #[schema(value_type = String, pattern = "^(minute|hour|day)$")]
    granularity: &'static str,
    /// The buckets' length in ms.
    step_ms: u64,
    /// One point per bucket (and key).
    points: Vec<T>,
}

/// A row of a series' CSV export (times in RFC 3339 in the answer's zone).
pub(crate) trait CsvRow {
    /// The column names.
    const HEADER: &'static [&'static str];
    /// One row's cells.
    fn cells(&self, r: &super::timerange::Resolved) -> Vec<String>;
}

impl CsvRow for TrafficPoint {
    const HEADER: &'static [&'static str] = &["time", "bytes", "hits"];
    fn cells(&self, r: &super::timerange::Resolved) -> Vec<String> {
        vec![
            r.rfc3339(self.minute),
            self.bytes.to_string(),
            self.hits.to_string(),
        ]
    }
}

impl CsvRow for LocationTraffic {
    const HEADER: &'static [&'static str] = &["location", "bytes", "hits"];
    fn cells(&self, _: &super::timerange::Resolved) -> Vec<String> {
        vec![
            self.pop.clone(),
            self.bytes.to_string(),
            self.hits.to_string(),
        ]
    }
}

impl CsvRow for AnswerPoint {
    const HEADER: &'static [&'static str] = &["time", "hostname", "address", "answers"];
    fn cells(&self, r: &super::timerange::Resolved) -> Vec<String> {
        vec![
            r.rfc3339(self.minute),
            self.hostname.clone(),
            self.address.clone(),
            self.answers.to_string(),
        ]
    }
}

impl CsvRow for LocationAnswers {
    const HEADER: &'static [&'static str] = &["location", "address", "answers"];
    fn cells(&self, _: &super::timerange::Resolved) -> Vec<String> {
        vec![
            self.pop.clone(),
            self.address.clone(),
            self.answers.to_string(),
        ]
    }
}

/// Runs a traffic query for `q` on behalf of `a`: the customer in scope, the hostname,
/// the range resolved at the wall clock. Returns the rows and the resolved range.
pub(crate) async fn traffic_rows<T: Send + 'static>(
    st: &ApiState,
    a: &Auth,
    q: &TrafficQuery,
    query: fn(&dyn Traffic, Window<'_>) -> BackendResult<T>,
) -> ApiResult<(
    T,
    super::timerange::Resolved,
    Option<String>,
    Option<String>,
)> {
    let customer = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let host = q.host()?;
    let r = super::timerange::resolve(&q.range(), super::now())?;
    let (c, h, range, grain) = (customer.clone(), host.clone(), r.range, r.grain);
    let rows = st
        .db(move |b| {
            query(
                b.traffic.as_ref(),
                Window {
                    customer: c.as_deref(),
                    from: range.from,
                    to: range.to,
                    host: h.as_deref(),
                    grain,
                },
            )
        })
        .await?;
    Ok((rows, r, customer, host))
}

/// A traffic series handler `$name` at `GET $path` reading `Traffic::$method` rows of
/// `$ty` (CSV file name `$file`), described by `$summary` and its answer by `$ok`.
macro_rules! traffic_handler {
    ($name:ident, $method:ident, $ty:ty, $file:literal, $path:literal, $summary:literal, $ok:literal) => {
        #[utoipa::path(
                    get, path = $path, tag = "traffic",
                    summary = $summary,
                    params(TrafficQuery),
                    responses(
                        (status = 200, description = $ok, content(
                            (inline(Series<$ty>) = "application/json"), (String = "text/csv")
                        )),
                        Errors, (status = 400, response = ErrorResponse)
                    )
                )]
        async fn $name(
            State(st): State<ApiState>,
            a: Auth,
            headers: HeaderMap,
            Query(q): Query<TrafficQuery>,
        ) -> ApiResult<Response> {
            let csv = q.csv(&headers)?;
            let (points, r, customer, host) =
                traffic_rows(&st, &a, &q, |b, w| b.$method(w)).await?;
            let (from, to) = (r.rfc3339(r.range.from), r.rfc3339(r.range.to));
            if csv {
                let body = super::timerange::csv(
                    <$ty as CsvRow>::HEADER,
                    points.iter().map(|p| p.cells(&r)),
                );
                let name = format!(
                    "attachment; filename=\"{}-{}-{}.csv\"",
                    $file,
                    r.local_input(r.range.from).replace(':', ""),
                    r.local_input(r.range.to).replace(':', "")
                );
                let mut resp = body.into_response();
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                );
                for (k, v) in [
                    (header::CONTENT_DISPOSITION, name),
                    (header::HeaderName::from_static("x-udn-from"), from),
                    (header::HeaderName::from_static("x-udn-to"), to),
                    (
                        header::HeaderName::from_static("x-udn-granularity"),
                        r.grain.name().to_owned(),
                    ),
                ] {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        h.insert(k, v);
                    }
                }
                return Ok(resp);
            }
            Ok(Json(Series {
                customer,
                host,
                from,
                to,
                from_ms: r.range.from,
                to_ms: r.range.to,
                tz: r.tz_name.clone(),
                granularity: r.grain.name(),
                step_ms: r.grain.millis(),
                points,
            })
            .into_response())
        }
    };
}

traffic_handler!(
    traffic_cdn,
    cdn_traffic,
    TrafficPoint,
    "cdn-traffic",
    "/v1/traffic/cdn",
    "CDN bytes and hits per bucket (minute, hour or day by the range's length)",
    "the series as JSON, or as CSV (`format=csv`)"
);
traffic_handler!(
    traffic_cdn_quality,
    cdn_quality,
    crate::store::quality::QualityPoint,
    "cdn-quality",
    "/v1/traffic/cdn/quality",
    "CDN service quality per bucket: status classes, cache outcomes and hit ratio, origin errors, response-time percentiles (p50, p95, p99) from the per-rollup histogram",
    "the series as JSON, or as CSV (`format=csv`: time,requests,s1xx..s5xx,hits,misses,stale,revalidated,bypass,hit_ratio,origin_errors,p50_ms,p95_ms,p99_ms)"
);

impl CsvRow for crate::store::quality::QualityPoint {
    const HEADER: &'static [&'static str] = &[
        "time",
        "requests",
        "s1xx",
        "s2xx",
        "s3xx",
        "s4xx",
        "s5xx",
        "hits",
        "misses",
        "stale",
        "revalidated",
        "bypass",
        "hit_ratio",
        "origin_errors",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    ];
    fn cells(&self, r: &super::timerange::Resolved) -> Vec<String> {
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
        let mut c = vec![
            r.rfc3339(Timestamp::from_millis(self.minute.max(0) as u64)),
            self.requests.to_string(),
        ];
        c.extend(self.status.iter().map(|n| n.to_string()));
        c.extend(
            [
                self.hits,
                self.misses,
                self.stale,
                self.revalidated,
                self.bypass,
            ]
            .iter()
            .map(|n| n.to_string()),
        );
        c.push(opt(self.hit_ratio));
        c.push(self.origin_errors.to_string());
        c.extend([opt(self.p50_ms), opt(self.p95_ms), opt(self.p99_ms)]);
        c
    }
}

/// `GET /v1/traffic/gtm/reasons`: the GTM's answers per decision reason (`latency`,
/// `sticky`, `static`, `standby`, `weighted`, ...) over the range, most first, for the
/// customer in scope (and `host`). CSV: `reason,answers`.
#[utoipa::path(
    get, path = "/v1/traffic/gtm/reasons", tag = "traffic",
    summary = "GTM answers per decision reason (latency, sticky, static, standby, weighted, ...) over the range, most first",
    params(TrafficQuery),
    responses(
        (status = 200, description = "the reasons as JSON, or as CSV (`format=csv`: reason,answers)", content((inline(ReasonsAnswer) = "application/json"), (String = "text/csv"))),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn traffic_gtm_reasons(
    State(st): State<ApiState>,
    a: Auth,
    headers: HeaderMap,
    Query(q): Query<TrafficQuery>,
) -> ApiResult<Response> {
    let csv = q.csv(&headers)?;
    let (reasons, r, customer, host) = traffic_rows(&st, &a, &q, |b, w| b.gtm_reasons(w)).await?;
    if csv {
        let body = super::timerange::csv(
            &["reason", "answers"],
            reasons.iter().map(|(k, n)| vec![k.clone(), n.to_string()]),
        );
        return Ok(csv_response(body));
    }
    let reasons: Vec<Value> = reasons
        .into_iter()
        .map(|(reason, answers)| serde_json::json!({"reason": reason, "answers": answers}))
        .collect();
    Ok(ranged_answer(
        &r,
        serde_json::json!({
            "customer": customer,
            "host": host,
        }),
        serde_json::json!({
            "reasons": reasons,
        }),
    ))
}

/// `GET /v1/traffic/cdn/top`: the 20 URLs and the 20 client networks (/24, /48) with
/// the most responses in the range, for the customer in scope (and `host`), read from
/// the raw records (so within the raw retention). CSV: `list,host,key,requests,bytes`.
#[utoipa::path(
    get, path = "/v1/traffic/cdn/top", tag = "traffic",
    summary = "The 20 URLs and the 20 client networks (/24, /48) with the most responses in the range (from the raw records, within the raw retention)",
    params(TrafficQuery),
    responses(
        (status = 200, description = "the lists as JSON, or as CSV (`format=csv`: list,host,key,requests,bytes)", content((inline(TopAnswer) = "application/json"), (String = "text/csv"))),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn traffic_cdn_top(
    State(st): State<ApiState>,
    a: Auth,
    headers: HeaderMap,
    Query(q): Query<TrafficQuery>,
) -> ApiResult<Response> {
    let csv = q.csv(&headers)?;
    let (top, r, customer, host) = traffic_rows(&st, &a, &q, |b, w| b.cdn_top(w)).await?;
    if csv {
        let rows = top
            .urls
            .iter()
            .map(|u| {
                vec![
                    "url".to_owned(),
                    u.host.clone(),
                    u.path.clone(),
                    u.requests.to_string(),
                    u.bytes.to_string(),
                ]
            })
            .chain(top.networks.iter().map(|n| {
                vec![
                    "network".to_owned(),
                    String::new(),
                    n.network.clone(),
                    n.requests.to_string(),
                    n.bytes.to_string(),
                ]
            }));
        let body = super::timerange::csv(&["list", "host", "key", "requests", "bytes"], rows);
        return Ok(csv_response(body));
    }
    Ok(ranged_answer(
        &r,
        serde_json::json!({
            "customer": customer,
            "host": host,
        }),
        serde_json::json!({
            "urls": top.urls,
            "networks": top.networks,
        }),
    ))
}
traffic_handler!(
    traffic_cdn_locations,
    cdn_traffic_by_location,
    LocationTraffic,
    "cdn-locations",
    "/v1/traffic/cdn/locations",
    "CDN bytes and hits per POP over the range",
    "the series as JSON, or as CSV (`format=csv`)"
);
traffic_handler!(
    traffic_gtm,
    gtm_answers,
    AnswerPoint,
    "gtm-answers",
    "/v1/traffic/gtm",
    "GTM answers per bucket, hostname and address",
    "the series as JSON, or as CSV (`format=csv`)"
);
traffic_handler!(
    traffic_gtm_locations,
    gtm_answers_by_location,
    LocationAnswers,
    "gtm-locations",
    "/v1/traffic/gtm/locations",
    "GTM answers per answering location and address over the range",
    "the series as JSON, or as CSV (`format=csv`)"
);

/// The longest range `/v1/streaming` reads (its rollups are per minute only).
const STREAMING_MAX_MS: u64 = 7 * 86_400_000;

/// `GET /v1/streaming`: the streaming statistics (HLS, DASH) of the customer in scope
/// over the range (`hours`, `from`/`to`, `tz`, `host` as for the traffic series; at most
/// seven days): per-stream totals, the per-minute series and the top viewers.
#[utoipa::path(
    get, path = "/v1/streaming", tag = "traffic",
    summary = "Streaming statistics (HLS, DASH) per stream, per minute and stream, and top viewers (at most 7 days)",
    params(TrafficQuery),
    responses(
        (status = 200, description = "the streams' totals (most bytes first), the per-minute series and the top 100 viewers", body = inline(StreamingAnswer)),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn streaming(
    State(st): State<ApiState>,
    a: Auth,
    headers: HeaderMap,
    Query(q): Query<TrafficQuery>,
) -> ApiResult<Response> {
    check_streaming_range(&q)?;
    let csv = q.csv(&headers)?;
    let (report, r, customer, host) = traffic_rows(&st, &a, &q, |b, w| b.streaming(w)).await?;
    if csv {
        let body = super::timerange::csv(
            &[
                "hostname",
                "stream",
                "viewers",
                "requests",
                "segments",
                "playlists",
                "bytes",
                "origin_fetches",
                "origin_bytes",
                "fill_ms_max",
            ],
            report.streams.iter().map(|s| {
                vec![
                    s.host.clone(),
                    s.stream.clone(),
                    s.viewers.to_string(),
                    s.agg.requests.to_string(),
                    s.agg.segments.to_string(),
                    s.agg.playlists.to_string(),
                    s.agg.bytes.to_string(),
                    (s.agg.segment_fills + s.agg.playlist_fills).to_string(),
                    s.agg.fill_bytes.to_string(),
                    (s.agg.fill_us_max / 1000).to_string(),
                ]
            }),
        );
        return Ok(csv_response(body));
    }
    Ok(ranged_answer(
        &r,
        serde_json::json!({
            "customer": customer,
            "host": host,
        }),
        serde_json::json!({
            "streams": report.streams,
            "series": report.series,
            "clients": report.clients,
        }),
    ))
}

/// A JSON answer about a range: `head` (the filters), then the range it covers
/// (`from`, `to` in RFC 3339 in `tz`, `from_ms`, `to_ms`, `tz`), then `body`.
fn ranged_answer(
    r: &super::timerange::Resolved,
    head: serde_json::Value,
    body: serde_json::Value,
) -> Response {
    let mut out = match head {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    out.insert("from".into(), r.rfc3339(r.range.from).into());
    out.insert("to".into(), r.rfc3339(r.range.to).into());
    out.insert("from_ms".into(), serde_json::json!(r.range.from));
    out.insert("to_ms".into(), serde_json::json!(r.range.to));
    out.insert("tz".into(), r.tz_name.clone().into());
    if let Value::Object(m) = body {
        out.extend(m);
    }
    Json(Value::Object(out)).into_response()
}

/// A CSV document as an answer (`text/csv; charset=utf-8`).
fn csv_response(body: String) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    resp
}

/// Refuses a streaming range over [`STREAMING_MAX_MS`] (a 400 naming `from`).
pub(crate) fn check_streaming_range(q: &TrafficQuery) -> ApiResult<()> {
    let r = super::timerange::resolve(&q.range(), super::now())?;
    let span = r
        .range
        .to
        .as_millis()
        .saturating_sub(r.range.from.as_millis());
    if span > STREAMING_MAX_MS {
        return Err(ApiError::BadParam(FieldError {
            field: "from".into(),
            message: "the streaming statistics cover at most 7 days".into(),
        }));
    }
    Ok(())
}

/// The query of `GET /v1/ops`: the range as for the traffic series, one role, and the
/// answer's format.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct OpsQuery {
    /// One role: `dns`, `edge` or `probe` (default all)
    #[param(pattern = "^(dns|edge|probe)$")]
    role: Option<String>,
    /// Start of the range: RFC 3339 (`2026-12-01T00:00:00Z`) or a local date-time
    /// (`2026-12-01T00:00`) read in `tz`
    from: Option<String>,
    /// End of the range (exclusive), same forms; default the end of the last complete
    /// minute
    to: Option<String>,
    /// IANA time zone of the answer's times and of local `from`/`to` (default UTC)
    tz: Option<String>,
    /// Without `from`: the last N hours before `to`, 1..43920 (default 24)
    hours: Option<u64>,
    /// `csv` (`time,role,instance,metric,kind,sum,max,samples`) or `json` (default)
    #[param(pattern = "^(csv|json)$")]
    format: Option<String>,
}

/// `GET /v1/ops?role=dns|edge|probe` (admin): the operational statistics the DNS
/// servers, edges and probes wrote into their own logs (queries by answer path,
/// decisions by reason, drops; requests by outcome, origin fetches, tier sizes;
/// service tests, latency samples by method), per bucket, instance and metric, with
/// the probes' per-method results. CSV with `format=csv`.
#[utoipa::path(
    get, path = "/v1/ops", tag = "traffic",
    summary = "Operational statistics of the DNS servers, edges and probes, from their own logs (admins only)",
    params(OpsQuery),
    responses(
        (status = 200, description = "per bucket, role, instance and metric, and the probes' results per method", content((inline(OpsAnswer) = "application/json"), (String = "text/csv"))),
        AuthErrors, (status = 400, response = ErrorResponse)
    )
)]
async fn ops(
    State(st): State<ApiState>,
    a: Auth,
    headers: HeaderMap,
    Query(q): Query<OpsQuery>,
) -> ApiResult<Response> {
    a.require_admin()?;
    let role = match q.role.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        None => None,
        Some(r @ ("dns" | "edge" | "probe")) => Some(r.to_owned()),
        Some(_) => {
            return Err(ApiError::BadParam(FieldError {
                field: "role".into(),
                message: "dns, edge or probe".into(),
            }));
        }
    };
    let tq = TrafficQuery {
        from: q.from.clone(),
        to: q.to.clone(),
        tz: q.tz.clone(),
        hours: q.hours,
        format: q.format.clone(),
        ..TrafficQuery::default()
    };
    let csv = tq.csv(&headers)?;
    let r = super::timerange::resolve(&tq.range(), super::now())?;
    let (from, to, grain, want) = (r.range.from, r.range.to, r.grain, role.clone());
    let report = st
        .db(move |b| b.traffic.ops(from, to, grain, want.as_deref()))
        .await?;
    if csv {
        let body = super::timerange::csv(
            &[
                "time", "role", "instance", "metric", "kind", "sum", "max", "samples",
            ],
            report.points.iter().map(|p| {
                vec![
                    r.rfc3339(Timestamp::from_millis(p.minute.max(0) as u64)),
                    p.role.clone(),
                    p.instance.clone(),
                    p.metric.clone(),
                    p.kind.clone(),
                    p.sum.to_string(),
                    p.max.to_string(),
                    p.samples.to_string(),
                ]
            }),
        );
        return Ok(csv_response(body));
    }
    Ok(ranged_answer(
        &r,
        serde_json::json!({
            "role": role,
        }),
        serde_json::json!({
            "granularity": report.grain,
            "truncated": report.truncated,
            "points": report.points,
            "probe_methods": report.probe_methods,
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BillingRunBody {
    period: String,
}

/// `POST /v1/billing/runs {"period": "2026-11"}` (admin): issues the period's invoices.
#[utoipa::path(
    post, path = "/v1/billing/runs", tag = "invoices",
    summary = "Admin: a billing run for a period (2026-11, 2026-Q4, 2026-W48, 2026-11-26T13, 2026); issues gap-free numbered invoices, and nothing new when the period was billed already",
    request_body = inline(BillingRunBody),
    responses((status = 200, description = "success", body = inline(JsonObject)), Errors)
)]
async fn billing_run(
    State(st): State<ApiState>,
    a: Auth,
    body: Body<BillingRunBody>,
) -> ApiResult<Json<serde_json::Value>> {
    a.require_admin()?;
    let Json(b) = body?;
    let now = super::now();
    Ok(Json(
        st.db(move |be| be.billing.billing_run(&b.period, now))
            .await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RunsQuery {
    /// At most this many runs, newest first (default 50)
    limit: Option<u32>,
}

/// `GET /v1/billing/runs?limit=50` (admin): the newest billing runs (CLI, API,
/// scheduler) with outcome, attempt and report or error.
#[utoipa::path(
    get, path = "/v1/billing/runs", tag = "invoices",
    summary = "Admin: the newest billing runs (CLI, API, scheduler) with outcome, attempt and report or error",
    params(RunsQuery),
    responses((status = 200, description = "success", body = inline(JsonObject)), Errors)
)]
async fn billing_runs(
    State(st): State<ApiState>,
    a: Auth,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    a.require_admin()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(st.db(move |be| be.billing.billing_runs(limit)).await?))
}

#[utoipa::path(
    get, path = "/v1/invoices", tag = "invoices",
    summary = "Issued invoices",
    params(CustomerQuery, PageQuery),
    responses(
        (status = 200, description = "success", body = Vec<InvoiceSummary>),
        Errors, (status = 400, response = ErrorResponse)
    )
)]
async fn invoices(
    State(st): State<ApiState>,
    a: Auth,
    Query(q): Query<CustomerQuery>,
    uri: axum::http::Uri,
    Query(p): Query<PageQuery>,
) -> ApiResult<Response> {
    let c = a.scope(q.customer.as_deref())?.map(str::to_owned);
    let list: Vec<InvoiceSummary> = st.db(move |b| b.billing.invoices(c.as_deref())).await?;
    page(list, |i| vec![Part::Down(i.id)], &p, &uri)
}

pub(crate) async fn load_invoice(st: &ApiState, a: &Auth, id: i64) -> ApiResult<Invoice> {
    let inv = st
        .db(move |b| b.billing.invoice(id))
        .await?
        .ok_or(ApiError::NotFound)?;
    a.require_customer(&inv.summary.customer)?;
    Ok(inv)
}

#[utoipa::path(
    get, path = "/v1/invoices/{id}", tag = "invoices",
    summary = "One invoice with its HTML body",
    params(("id" = u64, Path, description = "Invoice id")),
    responses((status = 200, description = "success", body = Invoice), Errors)
)]
async fn invoice(
    State(st): State<ApiState>,
    a: Auth,
    Path(id): Path<i64>,
) -> ApiResult<Json<Invoice>> {
    Ok(Json(load_invoice(&st, &a, id).await?))
}

#[utoipa::path(
    get, path = "/v1/invoices/{id}/html", tag = "invoices",
    summary = "The invoice as HTML",
    params(("id" = u64, Path, description = "Invoice id")),
    responses(
        (status = 200, description = "success", body = String, content_type = "text/html"),
        Errors
    )
)]
async fn invoice_html(
    State(st): State<ApiState>,
    a: Auth,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let inv = load_invoice(&st, &a, id).await?;
    let mut resp = Html(inv.html).into_response();
    // The body is billing's HTML: no scripts, no framing.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
        ),
    );
    Ok(resp)
}

/// `GET /v1/signups` (admin): every self sign-up with its billing account and decision.
#[utoipa::path(
    get, path = "/v1/signups", tag = "customers",
    summary = "Admin: every self sign-up (portal /signup) with its billing account and status: awaiting_approval, approved or refused",
    responses(
        (status = 200, description = "success", body = inline(JsonObject)),
        AuthErrors, (status = 409, response = ErrorResponse)
    )
)]
async fn signups_list(State(st): State<ApiState>, a: Auth) -> ApiResult<Json<Value>> {
    a.require_admin()?;
    let list = st.db(|b| b.billing.signups()).await?;
    Ok(Json(
        serde_json::to_value(list).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

/// `POST /v1/signups/{account}/approve` (admin).
#[utoipa::path(
    post, path = "/v1/signups/{account}/approve", tag = "customers",
    summary = "Admin: approves a sign-up; its domains may then be verified and go live",
    params(("account" = String, Path, description = "The account (customer) name")),
    responses(
        (status = 200, description = "success", body = inline(JsonObject)),
        AuthErrors, (status = 409, response = ErrorResponse)
    )
)]
async fn signup_approve(
    State(st): State<ApiState>,
    a: Auth,
    Path(account): Path<String>,
) -> ApiResult<Json<Value>> {
    a.require_admin()?;
    let s = crate::portal::signup::decide(&st, &account, true).await?;
    Ok(Json(serde_json::json!({"account": account, "status": s})))
}

/// `POST /v1/signups/{account}/refuse` (admin): removes the customer, its users and
/// domains.
#[utoipa::path(
    post, path = "/v1/signups/{account}/refuse", tag = "customers",
    summary = "Admin: refuses a sign-up; the customer, its users and its domains are removed",
    params(("account" = String, Path, description = "The account (customer) name")),
    responses(
        (status = 200, description = "success", body = inline(JsonObject)),
        AuthErrors, (status = 409, response = ErrorResponse)
    )
)]
async fn signup_refuse(
    State(st): State<ApiState>,
    a: Auth,
    Path(account): Path<String>,
) -> ApiResult<Json<Value>> {
    a.require_admin()?;
    let s = crate::portal::signup::decide(&st, &account, false).await?;
    Ok(Json(serde_json::json!({"account": account, "status": s})))
}

/// A customer that signed up may not verify domains (so nothing it configured goes
/// live) until an operator approved the sign-up.
async fn signup_gate(st: &ApiState, customer: &str) -> ApiResult<()> {
    let c = customer.to_owned();
    match st.db(move |b| b.billing.signup_status(&c)).await? {
        Some(SignupStatus::AwaitingApproval) => Err(ApiError::Conflict(
            "the account awaits an operator's approval of its sign-up; domains are verified after it"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// `GET /v1/invoices/{id}/pdf`: the invoice as the PDF that is printed and mailed
/// (the owner or an admin).
#[utoipa::path(
    get, path = "/v1/invoices/{id}/pdf", tag = "invoices",
    summary = "The invoice as PDF (A4; the document printed for post and attached to the e-mail), as an attachment named after its number",
    params(("id" = u64, Path, description = "Invoice id")),
    responses(
        (status = 200, description = "the PDF", body = Vec<u8>, content_type = "application/pdf"),
        Errors, (status = 409, response = ErrorResponse), (status = 503, response = ErrorResponse)
    )
)]
async fn invoice_pdf(
    State(st): State<ApiState>,
    a: Auth,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    load_invoice(&st, &a, id).await?;
    let (name, pdf) = st
        .db(move |b| b.billing.invoice_pdf(id))
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut resp = pdf.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    // The name is an invoice number (`INV-000001.pdf`): letters, digits and dashes.
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    /// A decimal string in the invoice's currency, `"998.26"`.
    amount: String,
    reference: String,
}

/// `POST /v1/billing/invoices/{number}/payments {"amount": "998.26", "reference": "..."}`
/// (admin): records a payment received by transfer.
#[utoipa::path(
    post, path = "/v1/billing/invoices/{number}/payments", tag = "invoices",
    summary = "Admin: records a payment received by transfer; the invoice is paid when the payments reach its total",
    params(("number" = String, Path, description = "Invoice number (INV-000001)")),
    request_body = inline(PaymentBody),
    responses(
        (status = 200, description = "success", body = inline(JsonObject)),
        Errors, (status = 409, response = ErrorResponse), (status = 503, response = ErrorResponse)
    )
)]
async fn billing_payment(
    State(st): State<ApiState>,
    a: Auth,
    Path(number): Path<String>,
    body: Body<PaymentBody>,
) -> ApiResult<Json<Value>> {
    a.require_admin()?;
    let Json(b) = body?;
    let amount: rust_decimal::Decimal = b
        .amount
        .trim()
        .parse()
        .map_err(|_| ApiError::field("amount", "a decimal number such as \"998.26\""))?;
    if b.reference.trim().is_empty() || b.reference.len() > 200 {
        return Err(ApiError::field("reference", "1 to 200 characters"));
    }
    let action = InvoiceAction::Pay {
        amount,
        reference: b.reference,
    };
    billing_action(&st, number, action).await
}

/// `POST /v1/billing/invoices/{number}/void` (admin): cancels an unpaid invoice.
#[utoipa::path(
    post, path = "/v1/billing/invoices/{number}/void", tag = "invoices",
    summary = "Admin: voids an unpaid invoice (it keeps its number)",
    params(("number" = String, Path, description = "Invoice number (INV-000001)")),
    responses(
        (status = 200, description = "success", body = inline(JsonObject)),
        Errors, (status = 409, response = ErrorResponse), (status = 503, response = ErrorResponse)
    )
)]
async fn billing_void(
    State(st): State<ApiState>,
    a: Auth,
    Path(number): Path<String>,
) -> ApiResult<Json<Value>> {
    a.require_admin()?;
    billing_action(&st, number, InvoiceAction::Void).await
}

/// `POST /v1/billing/invoices/{number}/credit` (admin): cancels an invoice by a credit
/// note (numbered, delivered like an invoice).
#[utoipa::path(
    post, path = "/v1/billing/invoices/{number}/credit", tag = "invoices",
    summary = "Admin: cancels an invoice by a numbered credit note, delivered like an invoice",
    params(("number" = String, Path, description = "Invoice number (INV-000001)")),
    responses(
        (status = 200, description = "success", body = inline(JsonObject)),
        Errors, (status = 409, response = ErrorResponse), (status = 503, response = ErrorResponse)
    )
)]
async fn billing_credit(
    State(st): State<ApiState>,
    a: Auth,
    Path(number): Path<String>,
) -> ApiResult<Json<Value>> {
    a.require_admin()?;
    billing_action(&st, number, InvoiceAction::Credit).await
}

async fn billing_action(
    st: &ApiState,
    number: String,
    action: InvoiceAction,
) -> ApiResult<Json<Value>> {
    let now = super::now();
    Ok(Json(
        st.db(move |be| be.billing.billing_invoice_action(&number, &action, now))
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn url_host_never_panics(s in ".*") {
            let _ = url_host(&s);
        }

        #[test]
        fn url_host_finds_the_host(
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,20}){0,3}",
            port in proptest::option::of(1u16..),
            path in "(/[a-zA-Z0-9._~%-]{0,10}){0,4}",
            tls in any::<bool>(),
        ) {
            let url = format!(
                "{}://{host}{}{path}",
                if tls { "https" } else { "http" },
                port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            prop_assert_eq!(url_host(&url), Some(host.as_str()));
        }

        #[test]
        fn page_rows_from_arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = super::fanout::parse_rows(&b);
        }
    }

    #[test]
    fn url_host_handles_ipv6_and_userinfo() {
        assert_eq!(url_host("http://[::1]:8080/a"), Some("::1"));
        assert_eq!(
            url_host("https://user:pw@cdn.example/x"),
            Some("cdn.example")
        );
        assert_eq!(url_host("ftp://cdn.example/"), None);
        assert_eq!(url_host("http:///nohost"), None);
    }
}
