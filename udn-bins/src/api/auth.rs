//! Authentication: session cookies (browser, with a CSRF token), named API tokens with
//! scopes (machines, `Authorization: Bearer udn_...`), and login rate limiting.

use super::backend::{API_TOKEN_PREFIX, Scope, SessionKind, User};
use super::{ApiError, ApiState};
use axum::extract::FromRequestParts;
use axum::http::{Method, header, request::Parts};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "udn_session";
/// Header carrying the CSRF token on cookie-authenticated API changes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Lifetime of a browser session, seconds.
pub const SESSION_TTL_SECS: u64 = 8 * 3600;
/// Lifetime of the API token `POST /v1/auth/token` issues, seconds.
pub const TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;
/// The longest lifetime of an API token, days.
pub const MAX_TOKEN_DAYS: u64 = 365;
/// API tokens one user may hold.
pub const MAX_TOKENS_PER_USER: usize = 50;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Who.
    pub user: User,
    /// Cookie or bearer.
    pub kind: SessionKind,
    /// The session's CSRF token.
    pub csrf: String,
    /// The session token itself (for logout).
    pub token: String,
    /// For an API token, what it may do (`None`: a login session, everything the user
    /// may do).
    pub scopes: Option<Vec<Scope>>,
}

impl Auth {
    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.role == super::Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Fails with 403 unless the caller may access `customer`'s objects.
    pub fn require_customer(&self, customer: &str) -> Result<(), ApiError> {
        if self.user.may_access(customer) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The customer whose objects a listing shows: the caller's own, or for an admin
    /// `requested` (`None`: all customers).
    pub fn scope<'a>(&'a self, requested: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
        match self.user.role {
            super::Role::Admin => Ok(requested),
            super::Role::Customer => {
                let own = self.user.customer.as_deref().ok_or(ApiError::Forbidden)?;
                match requested {
                    Some(r) if r != own => Err(ApiError::Forbidden),
                    _ => Ok(Some(own)),
                }
            }
        }
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Looks the caller up from a bearer token or the session cookie.
pub async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Option<Auth>, ApiError> {
    let token = match bearer(parts).or_else(|| cookie(parts, SESSION_COOKIE)) {
        Some(t) if !t.is_empty() && t.len() <= 256 => t.to_owned(),
        _ => return Ok(None),
    };
    let now = super::now();
    let t = token.clone();
    if token.starts_with(API_TOKEN_PREFIX) {
        let found = state.db(move |b| b.accounts.api_token(&t, now)).await?;
        return Ok(found.map(|(user, tok)| Auth {
            user,
            kind: SessionKind::Bearer,
            csrf: String::new(),
            token,
            scopes: Some(tok.scopes),
        }));
    }
    let session = state.db(move |b| b.accounts.session(&t, now)).await?;
    Ok(session.map(|s| Auth {
        user: s.user,
        kind: s.kind,
        csrf: s.csrf,
        token,
        scopes: None,
    }))
}

/// The scope an API token needs for `method path`; `Err` for the routes that manage
/// credentials (tokens, passwords, users, sessions), which only a login session may use
/// (a token must not mint a wider token or change the password).
pub fn required_scope(method: &Method, path: &str) -> Result<Scope, &'static str> {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if under("/v1/tokens") || under("/v1/users") || under("/v1/auth") || under("/v1/me/password") {
        return Err("credentials are managed with a login session, not an API token");
    }
    if under("/v1/invoices") || under("/v1/billing") {
        return Ok(Scope::Billing);
    }
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if read {
        return Ok(Scope::Read);
    }
    if under("/v1/purge") || under("/v1/prefill") || under("/v1/live-events") {
        return Ok(Scope::Purge);
    }
    Ok(Scope::Config)
}

/// Compares two secrets without an early exit.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Auth, ApiError> {
        let auth = authenticate(parts, state)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if let Some(scopes) = &auth.scopes {
            let need = required_scope(&parts.method, parts.uri.path())
                .map_err(|m| ApiError::Denied(m.into()))?;
            if !scopes.contains(&need) {
                return Err(ApiError::Denied(format!(
                    "this API token lacks the scope {:?} this request needs",
                    need.as_str()
                )));
            }
        }
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        // API changes made with a cookie must carry the CSRF token in a header; portal
        // forms carry it in a form field and check it themselves.
        if auth.kind == SessionKind::Cookie && unsafe_method && parts.uri.path().starts_with("/v1/")
        {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(sent, &auth.csrf) {
                return Err(ApiError::Csrf);
            }
        }
        Ok(auth)
    }
}

/// `Set-Cookie` value for a new session.
pub fn session_cookie(token: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_SECS}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Counts login attempts in a sliding window, before the password is hashed (so a
/// burst of parallel attempts cannot all slip past the check), under three keys:
/// `pair:USER@ADDR` (`max_failures`), `ip:ADDR` (four times that: several users may share
/// an address) and `user:USER` (twenty times that, against guessing from many
/// addresses). An attacker's burst from one address against a user therefore locks
/// only that (user, address) pair, and only for the window; the user logs in from
/// elsewhere. A successful login forgets the pair and gives its attempt back to the
/// other two keys.
#[derive(Debug)]
pub struct LoginLimiter {
    attempts: HashMap<String, VecDeque<Instant>>,
    /// Attempts allowed per (user, address) within `window`.
    pub max_failures: usize,
    /// The sliding window.
    pub window: Duration,
}

/// Keys the limiter tracks at most (a bound on its memory); beyond it every attempt is
/// refused until the window frees some.
const MAX_LIMITER_KEYS: usize = 100_000;

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            attempts: HashMap::new(),
            max_failures: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// One counted login attempt (see [`LoginLimiter::begin`]).
#[derive(Debug)]
pub struct Attempt {
    keys: Vec<String>,
    at: Instant,
}

impl LoginLimiter {
    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.attempts.retain(|_, q| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    fn limit(&self, key: &str) -> usize {
        if key.starts_with("ip:") {
            self.max_failures * 4
        } else if key.starts_with("user:") {
            self.max_failures * 20
        } else {
            self.max_failures
        }
    }

    /// Counts an attempt of `username` from `client` now, before its password is
    /// checked; `Err(seconds to wait)` when one of its keys is at its limit (then
    /// nothing is counted).
    pub fn begin(
        &mut self,
        username: &str,
        client: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<Attempt, u64> {
        self.prune(now);
        let ip = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        let keys = vec![
            format!("pair:{username}@{ip}"),
            format!("ip:{ip}"),
            format!("user:{username}"),
        ];
        if self.attempts.len() + keys.len() > MAX_LIMITER_KEYS {
            return Err(self.window.as_secs().max(1));
        }
        for k in &keys {
            if let Some(q) = self.attempts.get(k)
                && q.len() >= self.limit(k)
            {
                let oldest = q.front().copied().unwrap_or(now);
                let wait = self.window.saturating_sub(now.duration_since(oldest));
                return Err(wait.as_secs().max(1));
            }
        }
        for k in &keys {
            self.attempts.entry(k.clone()).or_default().push_back(now);
        }
        Ok(Attempt { keys, at: now })
    }

    /// The password of `attempt` was right: forgets its (user, address) pair and takes
    /// the attempt back from the address and user counts.
    pub fn succeed(&mut self, attempt: &Attempt) {
        if let Some(pair) = attempt.keys.first() {
            self.attempts.remove(pair);
        }
        for k in attempt.keys.iter().skip(1) {
            if let Some(q) = self.attempts.get_mut(k)
                && let Some(i) = q.iter().position(|t| *t == attempt.at)
            {
                q.remove(i);
            }
        }
    }
}

/// Checks the rate limit (counting the attempt first) and verifies `username`'s
/// password (an unknown user costs the same argon2 time): the user when it is right.
pub async fn check_password(
    state: &ApiState,
    username: &str,
    password: &str,
    client: Option<std::net::IpAddr>,
) -> Result<Option<User>, ApiError> {
    let lock = || {
        state
            .inner
            .limiter
            .lock()
            .map_err(|_| ApiError::Internal("limiter lock".into()))
    };
    let attempt = lock()?
        .begin(username, client, Instant::now())
        .map_err(ApiError::TooManyAttempts)?;
    let (u, p) = (username.to_owned(), password.to_owned());
    let user = state.db(move |b| b.accounts.verify_login(&u, &p)).await?;
    if user.is_some() {
        lock()?.succeed(&attempt);
    }
    Ok(user)
}

/// Checks the rate limit, verifies the password and opens a session: the shared login
/// path of the API and the portal.
pub async fn login(
    state: &ApiState,
    username: &str,
    password: &str,
    client: Option<std::net::IpAddr>,
    kind: SessionKind,
) -> Result<(User, super::backend::NewSession), ApiError> {
    let user = check_password(state, username, password, client)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let ttl = match kind {
        SessionKind::Cookie => SESSION_TTL_SECS,
        SessionKind::Bearer => TOKEN_TTL_SECS,
    };
    let now = super::now();
    let id = user.id;
    let session = state
        .db(move |b| b.accounts.create_session(id, kind, now, ttl))
        .await?;
    Ok((user, session))
}
