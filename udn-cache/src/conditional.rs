//! Conditional requests answered from a stored response (RFC 9110 13), pure.
//!
//! The preconditions are evaluated in the order of RFC 9110 13.2.2:
//!
//! 1. `If-Match` (strong comparison; `*` matches a stored representation): false → 412;
//! 2. else `If-Unmodified-Since` (ignored when not a valid date or when the stored
//!    response has no `Last-Modified`): modified since → 412;
//! 3. `If-None-Match` (weak comparison; `*` matches): true → 304 for GET and HEAD, 412
//!    for any other method;
//! 4. else `If-Modified-Since` (GET and HEAD only, valid dates only): not modified → 304;
//! 5. `If-Range` (GET with `Range` only): an entity tag must match strongly (a weak tag
//!    never matches), a date must equal `Last-Modified` exactly; false → the Range is
//!    ignored and the whole representation is sent with 200.
//!
//! # Examples
//!
//! ```
//! use http::{HeaderMap, HeaderValue, Method};
//! use udn_cache::conditional::{evaluate, Precondition};
//! let mut stored = HeaderMap::new();
//! stored.insert("etag", HeaderValue::from_static("\"v1\""));
//! let mut req = HeaderMap::new();
//! req.insert("if-match", HeaderValue::from_static("\"v0\""));
//! assert_eq!(evaluate(&Method::GET, &req, &stored), Precondition::Failed);
//! let mut req = HeaderMap::new();
//! req.insert("range", HeaderValue::from_static("bytes=0-1"));
//! req.insert("if-range", HeaderValue::from_static("W/\"v1\""));
//! assert_eq!(evaluate(&Method::GET, &req, &stored), Precondition::Proceed { range: false });
//! ```

use crate::policy::parse_date;
use http::{HeaderMap, HeaderName, Method, header};

/// The request headers that make a request conditional (forwarded unchanged on
/// pass-through, evaluated by the edge on hits).
pub const CONDITIONAL_HEADERS: [HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
];

/// What the preconditions of a request say about a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve it; `range`: whether a `Range` header may be applied (false when an
    /// `If-Range` did not match, or there is no `Range`).
    Proceed {
        /// Whether the request's Range applies.
        range: bool,
    },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// Whether the request carries any precondition ([`CONDITIONAL_HEADERS`]).
pub fn is_conditional(req: &HeaderMap) -> bool {
    CONDITIONAL_HEADERS.iter().any(|n| req.contains_key(n))
}

fn opaque(tag: &str) -> Option<&str> {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    (t.len() >= 2 && t.starts_with('"') && t.ends_with('"')).then_some(t)
}

/// Strong comparison (RFC 9110 8.8.3.2): neither tag weak, opaque tags equal.
pub fn strong_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    !a.starts_with("W/") && !b.starts_with("W/") && opaque(a).is_some() && opaque(a) == opaque(b)
}

/// Weak comparison: opaque tags equal, weakness ignored.
pub fn weak_eq(a: &str, b: &str) -> bool {
    opaque(a).is_some() && opaque(a) == opaque(b)
}

/// Splits an entity-tag list on commas outside quotes.
fn tags(list: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let (mut start, mut in_q) = (0, false);
    for (i, c) in list.char_indices() {
        match c {
            '"' => in_q = !in_q,
            ',' if !in_q => {
                out.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim());
    out.into_iter().filter(|t| !t.is_empty())
}

/// Whether every value of header `name` together matches `etag` by `cmp` (`*` always
/// matches: the stored representation exists). `None` when the header is absent.
fn list_matches(
    req: &HeaderMap,
    name: &HeaderName,
    etag: Option<&str>,
    cmp: fn(&str, &str) -> bool,
) -> Option<bool> {
    let mut present = false;
    let mut hit = false;
    for v in req.get_all(name) {
        present = true;
        let s = v.to_str().unwrap_or("");
        for t in tags(s) {
            hit |= t == "*" || etag.is_some_and(|e| cmp(t, e));
        }
    }
    present.then_some(hit)
}

/// Evaluates the preconditions of `req` (method `method`) against the stored
/// response headers `stored` (see the [module docs](self)).
pub fn evaluate(method: &Method, req: &HeaderMap, stored: &HeaderMap) -> Precondition {
    let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
    let lm = stored.get(header::LAST_MODIFIED).and_then(parse_date);
    let get_or_head = method == Method::GET || method == Method::HEAD;
    match list_matches(req, &header::IF_MATCH, etag, strong_eq) {
        Some(false) => return Precondition::Failed,
        Some(true) => {}
        None => {
            if let (Some(ius), Some(lm)) = (
                req.get(header::IF_UNMODIFIED_SINCE).and_then(parse_date),
                lm,
            ) && lm > ius
            {
                return Precondition::Failed;
            }
        }
    }
    match list_matches(req, &header::IF_NONE_MATCH, etag, weak_eq) {
        Some(true) if get_or_head => return Precondition::NotModified,
        Some(true) => return Precondition::Failed,
        Some(false) => {}
        None => {
            if get_or_head
                && let (Some(ims), Some(lm)) =
                    (req.get(header::IF_MODIFIED_SINCE).and_then(parse_date), lm)
                && lm <= ims
            {
                return Precondition::NotModified;
            }
        }
    }
    if method != Method::GET || !req.contains_key(header::RANGE) {
        return Precondition::Proceed { range: false };
    }
    let range = match req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => !req.contains_key(header::IF_RANGE),
        Some(ir) => {
            let ir = ir.trim();
            if ir.starts_with('"') || ir.starts_with("W/") {
                etag.is_some_and(|e| strong_eq(ir, e))
            } else {
                match (req.get(header::IF_RANGE).and_then(parse_date), lm) {
                    (Some(d), Some(lm)) => d == lm,
                    _ => false,
                }
            }
        }
    };
    Precondition::Proceed { range }
}
