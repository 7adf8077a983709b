//! HTTP caching semantics of a shared cache (RFC 9111, plus RFC 5861's
//! `stale-while-revalidate` / `stale-if-error`), as pure functions of headers and
//! explicit timestamps.
//!
//! # Examples
//!
//! ```
//! use http::{HeaderMap, HeaderValue, Method, StatusCode};
//! use std::time::Duration;
//! use udn_cache::policy::{self, Action, StoredMeta};
//! use udn_core::Timestamp;
//!
//! let t0 = Timestamp::from_secs(1_700_000_000);
//! let mut resp = HeaderMap::new();
//! resp.insert("cache-control", HeaderValue::from_static("max-age=60"));
//! let req = HeaderMap::new();
//! assert!(policy::storable(&Method::GET, &req, StatusCode::OK, &resp).is_ok());
//!
//! let meta = StoredMeta::new(StatusCode::OK, resp, t0, t0);
//! assert_eq!(meta.freshness_lifetime(), Duration::from_secs(60));
//! let at = |s: u64| Timestamp::from_secs(1_700_000_000 + s);
//! assert_eq!(policy::evaluate(&meta, &req, at(30), None), Action::Fresh);
//! assert_eq!(policy::evaluate(&meta, &req, at(61), None), Action::Revalidate);
//! // The customer's periodic check interval forces a revalidation of fresh content.
//! assert_eq!(
//!     policy::evaluate(&meta, &req, at(30), Some(Duration::from_secs(10))),
//!     Action::Revalidate
//! );
//! ```

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use std::time::{Duration, UNIX_EPOCH};
use udn_core::Timestamp;

/// Heuristic freshness: this fraction (1/10) of the time since Last-Modified ...
pub const HEURISTIC_FRACTION: u32 = 10;
/// ... capped at this lifetime (one day).
pub const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);

/// Cache-Control directives of a request or response (several headers merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (a response's field-name list is treated as plain `no-cache`).
    pub no_cache: bool,
    /// `private` (a shared cache must not store it).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age=N`.
    pub max_age: Option<u64>,
    /// `s-maxage=N`.
    pub s_maxage: Option<u64>,
    /// Request `max-stale` (`Some(None)`: any staleness).
    pub max_stale: Option<Option<u64>>,
    /// Request `min-fresh=N`.
    pub min_fresh: Option<u64>,
    /// Request `only-if-cached`.
    pub only_if_cached: bool,
    /// `stale-while-revalidate=N` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861).
    pub stale_if_error: Option<u64>,
    /// The directives came from a targeted field (`UDN-Cache-Control` or
    /// `CDN-Cache-Control`, RFC 9213), so `Cache-Control` and `Expires` are ignored.
    pub targeted: bool,
}

/// The targeted cache-control fields this edge obeys, most specific first (RFC 9213):
/// the first one with a valid, non-empty value replaces `Cache-Control` (and
/// `Expires`) for the edge. Neither is forwarded to clients.
pub const TARGETED_FIELDS: [&str; 2] = ["udn-cache-control", "cdn-cache-control"];

/// A directive value without its quotes: a quoted-string has its `\x` escapes
/// resolved (RFC 9110 5.6.4); a token is returned as is.
pub fn unquote(v: &str) -> std::borrow::Cow<'_, str> {
    let v = v.trim();
    let Some(inner) = v.strip_prefix('"') else {
        return v.into();
    };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    if !inner.contains('\\') {
        return inner.into();
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn parse_secs(v: Option<&str>) -> Option<u64> {
    let v = unquote(v?);
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Delta-seconds larger than 2^31 are treated as 2^31 (RFC 9111 1.2.2).
    Some(v.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31))
}

/// Splits on commas outside double quotes, without allocating.
struct Directives<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Iterator for Directives<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        while self.pos <= self.s.len() {
            let rest = &self.s.as_bytes()[self.pos..];
            let mut in_q = false;
            let mut escaped = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                if escaped {
                    escaped = false;
                    continue;
                }
                match b {
                    // A quoted-pair (`\"`, `\,`) inside a quoted-string is literal.
                    b'\\' if in_q => escaped = true,
                    b'"' => in_q = !in_q,
                    b',' if !in_q => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let d = self.s[self.pos..self.pos + end].trim();
            self.pos += end + 1;
            if !d.is_empty() {
                return Some(d);
            }
        }
        None
    }
}

fn directives(s: &str) -> Directives<'_> {
    Directives { s, pos: 0 }
}

const NAMES: [&str; 13] = [
    "no-store",
    "no-cache",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "only-if-cached",
    "max-age",
    "s-maxage",
    "max-stale",
    "min-fresh",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Merges a duplicate delta-seconds directive (RFC 9111 4.2.1: with more than one
/// value a cache uses the first or treats the response as stale). This cache picks
/// the most restrictive reading: equal duplicates keep their value, differing ones
/// become 0 (stale / revalidate).
fn merge_dup(slot: &mut Option<u64>, v: u64) {
    *slot = match *slot {
        Some(old) if old != v => Some(0),
        _ => Some(v),
    };
}

/// Keeps the smaller of two values (the more restrictive for stale-while-revalidate,
/// stale-if-error and max-stale).
fn merge_min(slot: &mut Option<u64>, v: Option<u64>) {
    let Some(v) = v else { return };
    *slot = Some(slot.map_or(v, |old| old.min(v)));
}

/// An RFC 8941 key: `lcalpha / "*"` then `lcalpha / DIGIT / "_" / "-" / "." / "*"`.
fn is_sf_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0] == b'*')
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.' | b'*')
        })
}

/// Whether a value is a bare item of RFC 8941 (integer, decimal, string, token,
/// byte sequence, boolean); parameters after `;` are checked for shape only.
fn is_sf_value(v: &str) -> bool {
    let item = split_params(v).0;
    let b = item.as_bytes();
    match b.first() {
        None => false,
        Some(b'"') => item.len() >= 2 && item.ends_with('"'),
        Some(b'?') => item == "?0" || item == "?1",
        Some(b':') => item.len() >= 2 && item.ends_with(':'),
        Some(c) if c.is_ascii_digit() || *c == b'-' => item
            .trim_start_matches('-')
            .bytes()
            .all(|c| c.is_ascii_digit() || c == b'.'),
        Some(c) if c.is_ascii_alphabetic() || *c == b'*' => item
            .bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b',' | b';' | b'=')),
        _ => false,
    }
}

/// Splits `item;param=..` at its first `;` outside quotes.
fn split_params(v: &str) -> (&str, &str) {
    let mut in_q = false;
    let mut esc = false;
    for (i, c) in v.char_indices() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            '\\' if in_q => esc = true,
            '"' => in_q = !in_q,
            ';' if !in_q => return (v[..i].trim(), &v[i..]),
            _ => {}
        }
    }
    (v.trim(), "")
}

impl CacheControl {
    /// Parses every Cache-Control header of `headers` (a request's directives, or a
    /// response's as any cache reads them). Unknown directives are ignored; a
    /// malformed duplicate never panics; duplicates merge as `merge_dup` says.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(s) = v.to_str() else { continue };
            cc.apply(s, false);
        }
        cc
    }

    /// A response's directives for this edge: the first targeted field
    /// ([`TARGETED_FIELDS`]) with a valid, non-empty value (RFC 9213 2.2), else
    /// `Cache-Control`.
    pub fn parse_response(headers: &HeaderMap) -> CacheControl {
        for name in TARGETED_FIELDS {
            let mut joined = String::new();
            let mut bad = false;
            for v in headers.get_all(name) {
                match v.to_str() {
                    Ok(s) => {
                        if !joined.is_empty() {
                            joined.push(',');
                        }
                        joined.push_str(s);
                    }
                    Err(_) => bad = true,
                }
            }
            if bad || joined.trim().is_empty() || !Self::valid_targeted(&joined) {
                continue;
            }
            let mut cc = CacheControl {
                targeted: true,
                ..CacheControl::default()
            };
            cc.apply(&joined, true);
            return cc;
        }
        Self::parse(headers)
    }

    /// Whether a targeted field value is an RFC 8941 dictionary (lower-case keys,
    /// bare-item values); a field that is not is ignored as a whole.
    fn valid_targeted(s: &str) -> bool {
        let mut any = false;
        for d in directives(s) {
            any = true;
            let (key, val) = match d.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (split_params(d).0, None),
            };
            if !is_sf_key(key) || val.is_some_and(|v| !is_sf_value(v)) {
                return false;
            }
        }
        any
    }

    fn apply(&mut self, s: &str, structured: bool) {
        let cc = self;
        for d in directives(s) {
            let (name, val) = match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(split_params(v).0)),
                None => (split_params(d).0, None),
            };
            // In a structured field `name=?0` turns a boolean directive off.
            if structured && val == Some("?0") {
                continue;
            }
            let Some(known) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) else {
                continue;
            };
            match known {
                0 => cc.no_store = true,
                1 => cc.no_cache = true,
                2 => cc.private = true,
                3 => cc.public = true,
                4 => cc.must_revalidate = true,
                5 => cc.proxy_revalidate = true,
                6 => cc.only_if_cached = true,
                // An invalid max-age makes the response stale (RFC 9111 4.2.1).
                7 => merge_dup(&mut cc.max_age, parse_secs(val).unwrap_or(0)),
                8 => merge_dup(&mut cc.s_maxage, parse_secs(val).unwrap_or(0)),
                9 => {
                    cc.max_stale = match (cc.max_stale, parse_secs(val)) {
                        (None | Some(None), v) => Some(v),
                        (Some(Some(old)), Some(v)) => Some(Some(old.min(v))),
                        (Some(Some(old)), None) => Some(Some(old)),
                    }
                }
                10 => {
                    if let Some(v) = parse_secs(val) {
                        cc.min_fresh = Some(cc.min_fresh.map_or(v, |o| o.max(v)));
                    }
                }
                11 => merge_min(&mut cc.stale_while_revalidate, parse_secs(val)),
                _ => merge_min(&mut cc.stale_if_error, parse_secs(val)),
            }
        }
    }
}

/// Parses an HTTP date into a [`Timestamp`].
pub fn parse_date(v: &HeaderValue) -> Option<Timestamp> {
    let t = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    Some(Timestamp::from_millis(d.as_millis() as u64))
}

/// Formats a [`Timestamp`] as an HTTP date.
pub fn format_date(t: Timestamp) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(t.as_millis()))
}

fn date_header(h: &HeaderMap, name: HeaderName) -> Option<Timestamp> {
    h.get(name).and_then(parse_date)
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStorable {
    /// Only GET responses are stored.
    Method,
    /// The status is not cacheable by a shared cache without explicit freshness.
    Status,
    /// `no-store` in the request or response.
    NoStore,
    /// `private`: a shared cache must not store it.
    Private,
    /// The request carried Authorization and the response does not allow sharing it.
    Authorization,
    /// `Vary: *`.
    VaryStar,
    /// No explicit freshness, no heuristic, no validator: storing would not help.
    NoFreshness,
    /// The response sets a cookie and its hostname does not allow storing those.
    SetCookie,
}

impl NotStorable {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::SetCookie => "set-cookie",
        }
    }
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 15.1), minus 206
/// (this cache stores whole objects only).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether a shared cache may store this response (RFC 9111 3 and 3.5); a response
/// with `Set-Cookie` is never stored ([`storable_with`] for a hostname that allows it).
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
) -> Result<(), NotStorable> {
    storable_with(method, req, status, resp, false)
}

/// [`storable`], with `Set-Cookie` allowed when `set_cookie_ok` (the hostname's
/// `cache_set_cookie`; the cookie is then removed from the stored copy). 1xx, 206 and
/// 304 are never stored; a targeted field (RFC 9213) replaces `Cache-Control`.
pub fn storable_with(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    set_cookie_ok: bool,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStorable::Status);
    }
    let rq = CacheControl::parse(req);
    let rs = CacheControl::parse_response(resp);
    if rq.no_store || rs.no_store {
        return Err(NotStorable::NoStore);
    }
    if rs.private {
        return Err(NotStorable::Private);
    }
    if req.contains_key(header::AUTHORIZATION)
        && !(rs.public || rs.must_revalidate || rs.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }
    if resp.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim() == "*"))
            .unwrap_or(false)
    }) {
        return Err(NotStorable::VaryStar);
    }
    if !set_cookie_ok && resp.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let explicit = rs.s_maxage.is_some()
        || rs.max_age.is_some()
        || (!rs.targeted && resp.contains_key(header::EXPIRES))
        || rs.public;
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStorable::Status);
    }
    let validator = resp.contains_key(header::ETAG) || resp.contains_key(header::LAST_MODIFIED);
    if !explicit && !validator {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// The stored metadata of a response: its status, headers and the times needed for
/// the Age calculation (RFC 9111 4.2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMeta {
    /// Response status.
    pub status: StatusCode,
    /// Response headers as stored (updated by 304s).
    pub headers: HeaderMap,
    /// When the request that produced it was sent.
    pub request_time: Timestamp,
    /// When the response was received.
    pub response_time: Timestamp,
    /// When it was last fetched or validated with the origin (for the periodic check).
    pub validated_at: Timestamp,
}

impl StoredMeta {
    /// Metadata of a response received at `response_time` to a request sent at
    /// `request_time`.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        request_time: Timestamp,
        response_time: Timestamp,
    ) -> StoredMeta {
        StoredMeta {
            status,
            headers,
            request_time,
            response_time,
            validated_at: response_time,
        }
    }

    /// The response's Date (or the response time when absent or unparsable).
    pub fn date(&self) -> Timestamp {
        date_header(&self.headers, header::DATE).unwrap_or(self.response_time)
    }

    /// The freshness lifetime (RFC 9111 4.2.1): s-maxage, max-age, Expires - Date,
    /// else the heuristic: 10 % of Date - Last-Modified, capped at [`HEURISTIC_CAP`].
    pub fn freshness_lifetime(&self) -> Duration {
        self.lifetime_with(&CacheControl::parse_response(&self.headers))
    }

    fn lifetime_with(&self, cc: &CacheControl) -> Duration {
        if let Some(s) = cc.s_maxage {
            return Duration::from_secs(s);
        }
        if let Some(s) = cc.max_age {
            return Duration::from_secs(s);
        }
        if !cc.targeted
            && let Some(v) = self.headers.get(header::EXPIRES)
        {
            // An invalid Expires (e.g. "0") means already expired, and so do several
            // Expires lines that disagree (RFC 9111 4.2.1: treated as stale).
            let disagree = self.headers.get_all(header::EXPIRES).iter().any(|o| o != v);
            return match parse_date(v) {
                Some(exp) if !disagree => exp.since(self.date()),
                _ => Duration::ZERO,
            };
        }
        if let Some(lm) = date_header(&self.headers, header::LAST_MODIFIED) {
            let age = self.date().since(lm);
            return (age / HEURISTIC_FRACTION).min(HEURISTIC_CAP);
        }
        Duration::ZERO
    }

    /// The current age at `now` (RFC 9111 4.2.3).
    pub fn current_age(&self, now: Timestamp) -> Duration {
        let age_value = self
            .headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| parse_secs(Some(s)))
            .map(Duration::from_secs)
            .unwrap_or_default();
        let apparent_age = self.response_time.since(self.date());
        let response_delay = self.response_time.since(self.request_time);
        let corrected_age_value = age_value + response_delay;
        let corrected_initial_age = apparent_age.max(corrected_age_value);
        corrected_initial_age + now.since(self.response_time)
    }

    /// Whether it is fresh at `now`.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        self.freshness_lifetime() > self.current_age(now)
    }

    /// Conditional request headers to revalidate it: If-None-Match from ETag,
    /// If-Modified-Since from Last-Modified.
    pub fn conditional_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(e) = self.headers.get(header::ETAG) {
            h.insert(header::IF_NONE_MATCH, e.clone());
        }
        if let Some(lm) = self.headers.get(header::LAST_MODIFIED) {
            h.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
        h
    }

    /// Updates the stored headers from a 304 (RFC 9111 4.3.4): every header of the 304
    /// replaces the stored one, except the framing headers of the stored body; the
    /// times restart from this exchange.
    pub fn update_from_304(
        &mut self,
        not_modified: &HeaderMap,
        request_time: Timestamp,
        response_time: Timestamp,
    ) {
        for name in not_modified.keys() {
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONTENT_RANGE
                || name == header::CONNECTION
                // A cookie is never stored.
                || name == header::SET_COOKIE
            {
                continue;
            }
            self.headers.remove(name);
            for v in not_modified.get_all(name) {
                self.headers.append(name.clone(), v.clone());
            }
        }
        // A 304 without Age restarts the age from zero.
        if !not_modified.contains_key(header::AGE) {
            self.headers.remove(header::AGE);
        }
        self.request_time = request_time;
        self.response_time = response_time;
        self.validated_at = response_time;
    }
}

/// Whether a 304 may update this stored response (RFC 9111 4.3.4): a strong ETag in
/// the 304 must equal the stored strong ETag; a weak one must match it weakly; without
/// an ETag, a Last-Modified must equal the stored one; a 304 with no validator updates
/// only a stored response that has none either.
pub fn not_modified_matches(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let text = |h: &HeaderMap, n: HeaderName| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    if let Some(new) = text(not_modified, header::ETAG) {
        let Some(old) = text(stored, header::ETAG) else {
            return false;
        };
        return if new.starts_with("W/") {
            crate::conditional::weak_eq(&new, &old)
        } else {
            crate::conditional::strong_eq(&new, &old)
        };
    }
    if let Some(new) = not_modified.get(header::LAST_MODIFIED) {
        return match (parse_date(new), date_header(stored, header::LAST_MODIFIED)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
    }
    !stored.contains_key(header::ETAG) && !stored.contains_key(header::LAST_MODIFIED)
}

/// The paths (absolute-path form, on the request's own host) a cache invalidates after
/// an unsafe request (RFC 9111 4.4): for a method other than GET, HEAD, OPTIONS and
/// TRACE answered with a 2xx or 3xx, the target itself and the `Location` and
/// `Content-Location` of the response when they name the same host (`host`, the
/// request's Host, compared without case). Relative references are resolved against
/// the target's directory (dot segments are not collapsed); other hosts are ignored
/// (they could be used to purge another site's objects).
pub fn invalidated_paths(
    method: &Method,
    status: StatusCode,
    host: &str,
    target: &str,
    resp: &HeaderMap,
) -> Vec<String> {
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
    if safe.contains(method) || !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let mut out = vec![target.to_string()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        for v in resp.get_all(name) {
            let Ok(s) = v.to_str() else { continue };
            let s = s.trim();
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                continue;
            }
            let s = s.split('#').next().unwrap_or("");
            let after_scheme = s
                .strip_prefix("http://")
                .or_else(|| s.strip_prefix("https://"))
                .or_else(|| s.strip_prefix("//"));
            let path = match after_scheme {
                Some(rest) => {
                    let end = rest.find(['/', '?']).unwrap_or(rest.len());
                    if !rest[..end].eq_ignore_ascii_case(host) {
                        continue;
                    }
                    let p = &rest[end..];
                    if p.starts_with('/') {
                        p.to_string()
                    } else {
                        format!("/{p}")
                    }
                }
                None if s.starts_with('/') => s.to_string(),
                // Another scheme (`ftp:`, `mailto:`): not this cache's.
                None if s.split('/').next().is_some_and(|f| f.contains(':')) => continue,
                None => {
                    let base = target.split('?').next().unwrap_or("/");
                    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
                    let dir = if dir.is_empty() { "/" } else { dir };
                    format!("{dir}{s}")
                }
            };
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// What to do with a stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve it: fresh, and the request accepts it.
    Fresh,
    /// Serve it although stale: the request's `max-stale` accepts it.
    StaleAllowed,
    /// Serve it stale now and revalidate in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Revalidate with the origin before serving.
    Revalidate,
}

impl Action {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Fresh => "fresh",
            Action::StaleAllowed => "stale-allowed",
            Action::StaleWhileRevalidate => "stale-while-revalidate",
            Action::Revalidate => "revalidate",
        }
    }
}

/// Decides how a stored response may answer a request at `now` (RFC 9111 4.2, 5.2.1),
/// honouring the customer's periodic `check_interval` (content not validated within it
/// is revalidated before it is served).
pub fn evaluate(
    meta: &StoredMeta,
    req: &HeaderMap,
    now: Timestamp,
    check_interval: Option<Duration>,
) -> Action {
    let rq = CacheControl::parse(req);
    let rs = CacheControl::parse_response(&meta.headers);
    // `Pragma: no-cache` in a request without Cache-Control means no-cache.
    let pragma_no_cache = !req.contains_key(header::CACHE_CONTROL)
        && req
            .get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|s| s.to_ascii_lowercase().contains("no-cache"));
    if rq.no_cache || pragma_no_cache || rs.no_cache {
        return Action::Revalidate;
    }
    if let Some(every) = check_interval
        && now.since(meta.validated_at) >= every
    {
        return Action::Revalidate;
    }
    let lifetime = meta.lifetime_with(&rs);
    let age = meta.current_age(now);
    if let Some(max_age) = rq.max_age
        && age > Duration::from_secs(max_age)
    {
        return Action::Revalidate;
    }
    let min_fresh = Duration::from_secs(rq.min_fresh.unwrap_or(0));
    if lifetime > age + min_fresh {
        return Action::Fresh;
    }
    let fresh_now = lifetime > age;
    if fresh_now {
        // Fresh but not for as long as min-fresh asks.
        return Action::Revalidate;
    }
    let staleness = age - lifetime;
    // must-revalidate, proxy-revalidate and s-maxage forbid serving stale (shared cache).
    let no_stale = rs.must_revalidate || rs.proxy_revalidate || rs.s_maxage.is_some();
    if no_stale {
        return Action::Revalidate;
    }
    match rq.max_stale {
        Some(None) => return Action::StaleAllowed,
        Some(Some(n)) if staleness <= Duration::from_secs(n) => return Action::StaleAllowed,
        _ => {}
    }
    if let Some(swr) = rs.stale_while_revalidate
        && staleness <= Duration::from_secs(swr)
    {
        return Action::StaleWhileRevalidate;
    }
    Action::Revalidate
}

/// Whether a stored response may be served stale at `now` because the origin failed
/// (`stale-if-error` of the response or the request, RFC 5861 4; never with
/// must-revalidate / proxy-revalidate / s-maxage).
pub fn stale_if_error(meta: &StoredMeta, req: &HeaderMap, now: Timestamp) -> bool {
    let rs = CacheControl::parse_response(&meta.headers);
    if rs.must_revalidate || rs.proxy_revalidate || rs.s_maxage.is_some() || rs.no_cache {
        return false;
    }
    let rq = CacheControl::parse(req);
    let allowed = match (rs.stale_if_error, rq.stale_if_error) {
        (None, None) => return false,
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    };
    let staleness = meta
        .current_age(now)
        .saturating_sub(meta.freshness_lifetime());
    staleness <= Duration::from_secs(allowed)
}

/// The header names a response varies on, lower case and sorted; `None` for `Vary: *`.
pub fn vary_names(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in resp.get_all(header::VARY) {
        let s = v.to_str().ok()?;
        for t in s.split(',') {
            let t = t.trim();
            if t == "*" {
                return None;
            }
            if let Ok(n) = HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()) {
                names.push(n);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The secondary cache key of a request for a response that varies on `names`
/// (RFC 9111 4.1): the request's values of those headers, whitespace-normalised.
/// Empty when `names` is empty.
pub fn secondary_key(names: &[HeaderName], req: &HeaderMap) -> String {
    let mut out = String::new();
    for n in names {
        out.push_str(n.as_str());
        out.push('=');
        let mut first = true;
        for v in req.get_all(n) {
            if !first {
                out.push(',');
            }
            first = false;
            for part in String::from_utf8_lossy(v.as_bytes()).split(',') {
                out.push_str(part.trim());
                out.push(',');
            }
            out.pop();
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }
    const T0: u64 = 1_700_000_000;
    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(T0 + s)
    }

    #[test]
    fn cache_control_parsing() {
        let cc = CacheControl::parse(&h(&[
            (
                "cache-control",
                "No-Cache=\"set-cookie, x-a\", ,MAX-AGE=5,,",
            ),
            ("cache-control", "max-stale, s-maxage=\"7\", max-age=x"),
        ]));
        assert!(cc.no_cache);
        assert_eq!(
            cc.max_age,
            Some(0),
            "a later invalid max-age wins and means stale"
        );
        assert_eq!(cc.s_maxage, Some(7));
        assert_eq!(cc.max_stale, Some(None));
        assert!(!cc.no_store && !cc.private);
    }

    #[test]
    fn storability_rules() {
        let get = Method::GET;
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        assert_eq!(
            storable(&get, &none, ok, &h(&[("cache-control", "no-store")])),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(
                &get,
                &h(&[("cache-control", "no-store")]),
                ok,
                &h(&[("cache-control", "max-age=9")])
            ),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(
                &get,
                &none,
                ok,
                &h(&[("cache-control", "private, max-age=60")])
            ),
            Err(NotStorable::Private)
        );
        let auth = h(&[("authorization", "Basic x")]);
        assert_eq!(
            storable(&get, &auth, ok, &h(&[("cache-control", "max-age=60")])),
            Err(NotStorable::Authorization)
        );
        assert!(storable(&get, &auth, ok, &h(&[("cache-control", "s-maxage=60")])).is_ok());
        assert!(storable(&get, &auth, ok, &h(&[("cache-control", "public")])).is_ok());
        assert_eq!(
            storable(
                &Method::POST,
                &none,
                ok,
                &h(&[("cache-control", "max-age=60")])
            ),
            Err(NotStorable::Method)
        );
        assert_eq!(
            storable(
                &get,
                &none,
                StatusCode::INTERNAL_SERVER_ERROR,
                &h(&[("etag", "\"a\"")])
            ),
            Err(NotStorable::Status)
        );
        assert!(
            storable(
                &get,
                &none,
                StatusCode::INTERNAL_SERVER_ERROR,
                &h(&[("cache-control", "max-age=5")])
            )
            .is_ok()
        );
        assert_eq!(
            storable(&get, &none, ok, &none),
            Err(NotStorable::NoFreshness)
        );
        assert!(
            storable(
                &get,
                &none,
                ok,
                &h(&[("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")])
            )
            .is_ok()
        );
        assert_eq!(
            storable(
                &get,
                &none,
                ok,
                &h(&[("cache-control", "max-age=9"), ("vary", "Accept, *")])
            ),
            Err(NotStorable::VaryStar)
        );
    }

    #[test]
    fn lifetime_precedence_and_heuristic() {
        let date = format_date(t(0));
        let m = |hs: &[(&'static str, &str)]| StoredMeta::new(StatusCode::OK, h(hs), t(0), t(0));
        assert_eq!(
            m(&[("cache-control", "max-age=10, s-maxage=20")]).freshness_lifetime(),
            Duration::from_secs(20)
        );
        let exp = format_date(t(300));
        assert_eq!(
            m(&[
                ("date", &date),
                ("expires", &exp),
                ("cache-control", "max-age=7")
            ])
            .freshness_lifetime(),
            Duration::from_secs(7)
        );
        assert_eq!(
            m(&[("date", &date), ("expires", &exp)]).freshness_lifetime(),
            Duration::from_secs(300)
        );
        assert_eq!(m(&[("expires", "0")]).freshness_lifetime(), Duration::ZERO);
        let lm = format_date(Timestamp::from_secs(T0 - 1000));
        assert_eq!(
            m(&[("date", &date), ("last-modified", &lm)]).freshness_lifetime(),
            Duration::from_secs(100)
        );
        let old = format_date(Timestamp::from_secs(T0 - 100 * 86_400));
        assert_eq!(
            m(&[("date", &date), ("last-modified", &old)]).freshness_lifetime(),
            HEURISTIC_CAP
        );
    }

    #[test]
    fn age_calculation() {
        let date = format_date(t(0));
        // Sent at 0, received at 2 with Age 5: corrected initial age 7.
        let m = StoredMeta::new(
            StatusCode::OK,
            h(&[("date", &date), ("age", "5")]),
            t(0),
            t(2),
        );
        assert_eq!(m.current_age(t(2)), Duration::from_secs(7));
        assert_eq!(m.current_age(t(12)), Duration::from_secs(17));
        // A Date in the past makes the apparent age dominate.
        let m = StoredMeta::new(
            StatusCode::OK,
            h(&[("date", &format_date(t(0)))]),
            t(50),
            t(50),
        );
        assert_eq!(m.current_age(t(50)), Duration::from_secs(50));
    }

    #[test]
    fn request_directives() {
        let m = StoredMeta::new(
            StatusCode::OK,
            h(&[("cache-control", "max-age=100")]),
            t(0),
            t(0),
        );
        let none = HeaderMap::new();
        assert_eq!(evaluate(&m, &none, t(50), None), Action::Fresh);
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "no-cache")]), t(50), None),
            Action::Revalidate
        );
        assert_eq!(
            evaluate(&m, &h(&[("pragma", "no-cache")]), t(50), None),
            Action::Revalidate
        );
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "max-age=40")]), t(50), None),
            Action::Revalidate
        );
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "min-fresh=60")]), t(50), None),
            Action::Revalidate
        );
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "min-fresh=40")]), t(50), None),
            Action::Fresh
        );
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "max-stale=10")]), t(105), None),
            Action::StaleAllowed
        );
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "max-stale=10")]), t(115), None),
            Action::Revalidate
        );
        assert_eq!(
            evaluate(&m, &h(&[("cache-control", "max-stale")]), t(9999), None),
            Action::StaleAllowed
        );
        let mr = StoredMeta::new(
            StatusCode::OK,
            h(&[("cache-control", "max-age=100, must-revalidate")]),
            t(0),
            t(0),
        );
        assert_eq!(
            evaluate(&mr, &h(&[("cache-control", "max-stale")]), t(105), None),
            Action::Revalidate
        );
        let swr = StoredMeta::new(
            StatusCode::OK,
            h(&[(
                "cache-control",
                "max-age=10, stale-while-revalidate=30, stale-if-error=60",
            )]),
            t(0),
            t(0),
        );
        assert_eq!(
            evaluate(&swr, &none, t(20), None),
            Action::StaleWhileRevalidate
        );
        assert_eq!(evaluate(&swr, &none, t(50), None), Action::Revalidate);
        assert!(stale_if_error(&swr, &none, t(60)));
        assert!(!stale_if_error(&swr, &none, t(80)));
        assert!(!stale_if_error(&m, &none, t(101)));
    }

    #[test]
    fn not_modified_updates_headers() {
        let mut m = StoredMeta::new(
            StatusCode::OK,
            h(&[
                ("cache-control", "max-age=10"),
                ("etag", "\"v1\""),
                ("content-length", "5"),
                ("x-a", "1"),
            ]),
            t(0),
            t(0),
        );
        assert_eq!(
            m.conditional_headers().get("if-none-match").unwrap(),
            "\"v1\""
        );
        m.update_from_304(
            &h(&[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("x-b", "2"),
            ]),
            t(100),
            t(101),
        );
        assert_eq!(m.headers.get("cache-control").unwrap(), "max-age=60");
        assert_eq!(m.headers.get("content-length").unwrap(), "5");
        assert_eq!(m.headers.get("x-a").unwrap(), "1");
        assert_eq!(m.headers.get("x-b").unwrap(), "2");
        assert_eq!(m.validated_at, t(101));
        assert!(m.is_fresh(t(150)));
    }

    #[test]
    fn vary_keys() {
        let resp = h(&[
            ("vary", "Accept-Encoding"),
            ("vary", "accept-language, Accept-Encoding"),
        ]);
        let names = vary_names(&resp).unwrap();
        assert_eq!(names.len(), 2);
        let a = secondary_key(&names, &h(&[("accept-encoding", "gzip,  br")]));
        let b = secondary_key(&names, &h(&[("accept-encoding", "gzip, br")]));
        let c = secondary_key(&names, &h(&[("accept-encoding", "identity")]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(vary_names(&h(&[("vary", "*")])).is_none());
    }
}
