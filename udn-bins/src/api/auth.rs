//! Authentication: session cookies (browser, with a CSRF token) or bearer tokens
//! (machines), and login rate limiting.

use super::backend::{SessionKind, User};
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
/// Lifetime of a bearer token, seconds.
pub const TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;

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
    let session = state.db(move |b| b.session(&t, now)).await?;
    Ok(session.map(|s| Auth {
        user: s.user,
        kind: s.kind,
        csrf: s.csrf,
        token,
    }))
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

/// Counts failed logins per user name (keys `user:NAME`) and per client address (keys
/// `ip:ADDR`, four times the limit) in a sliding window and refuses further attempts
/// once a key has too many.
#[derive(Debug)]
pub struct LoginLimiter {
    failures: HashMap<String, VecDeque<Instant>>,
    /// Failures allowed per key within `window`.
    pub max_failures: usize,
    /// The sliding window.
    pub window: Duration,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            failures: HashMap::new(),
            max_failures: 5,
            window: Duration::from_secs(300),
        }
    }
}

impl LoginLimiter {
    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.failures.retain(|_, q| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// `Err(seconds to wait)` when any of `keys` has reached the limit.
    pub fn check(&mut self, keys: &[String], now: Instant) -> Result<(), u64> {
        self.prune(now);
        for k in keys {
            // A client address gets more room than one user name: several users may
            // share it (a NAT, an office).
            let limit = if k.starts_with("ip:") {
                self.max_failures * 4
            } else {
                self.max_failures
            };
            if let Some(q) = self.failures.get(k)
                && q.len() >= limit
            {
                let oldest = q.front().copied().unwrap_or(now);
                let wait = self.window.saturating_sub(now.duration_since(oldest));
                return Err(wait.as_secs().max(1));
            }
        }
        Ok(())
    }

    /// Records a failed attempt for every key.
    pub fn fail(&mut self, keys: &[String], now: Instant) {
        for k in keys {
            self.failures.entry(k.clone()).or_default().push_back(now);
        }
    }

    /// Forgets the failures of `keys` after a successful login.
    pub fn succeed(&mut self, keys: &[String]) {
        for k in keys {
            self.failures.remove(k);
        }
    }
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
    let mut keys = vec![format!("user:{username}")];
    if let Some(ip) = client {
        keys.push(format!("ip:{ip}"));
    }
    {
        let mut l = state
            .inner
            .limiter
            .lock()
            .map_err(|_| ApiError::Internal("limiter lock".into()))?;
        l.check(&keys, Instant::now())
            .map_err(ApiError::TooManyAttempts)?;
    }
    let (u, p) = (username.to_owned(), password.to_owned());
    let user = state.db(move |b| b.verify_login(&u, &p)).await?;
    let user = {
        let mut l = state
            .inner
            .limiter
            .lock()
            .map_err(|_| ApiError::Internal("limiter lock".into()))?;
        match user {
            Some(u) => {
                l.succeed(&keys[..1]);
                u
            }
            None => {
                l.fail(&keys, Instant::now());
                return Err(ApiError::Unauthorized);
            }
        }
    };
    let ttl = match kind {
        SessionKind::Cookie => SESSION_TTL_SECS,
        SessionKind::Bearer => TOKEN_TTL_SECS,
    };
    let now = super::now();
    let id = user.id;
    let session = state
        .db(move |b| b.create_session(id, kind, now, ttl))
        .await?;
    Ok((user, session))
}
