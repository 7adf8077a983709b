//! Requests to origins, built from what a client sent without trusting it.
//!
//! * [`refusal`]: what the edge answers itself before routing: CONNECT (501), TRACE
//!   (405), a GET or HEAD with a body (400: `Content-Length` above 0 or any
//!   `Transfer-Encoding`), a request that already went through this CDN (`CDN-Loop`
//!   names the edge's token: 508 Loop Detected, RFC 8586).
//! * [`prepare`]: rewrites the client's headers once, on arrival: `Forwarded`,
//!   `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto`, `X-Forwarded-Port` and
//!   `X-Real-IP` from the client are dropped and `Forwarded: for=<peer>` and
//!   `X-Forwarded-For: <peer>` set from the connection's peer address (the edge is the
//!   first hop an origin can trust); `Via` and `CDN-Loop` are lists every hop appends
//!   to (RFC 9110 7.6.3, RFC 8586), so the edge appends its own entry to the client's.
//! * [`origin_request`]: the request of a fill or a pass-through: hop-by-hop headers,
//!   `Host`, `Content-Length`, `Transfer-Encoding` and `Expect` never come from the
//!   client (hyper frames the body it sends), nor do the client's conditionals and
//!   `Range` on a fill (the cache fetches the whole object and answers those itself).

use super::ReqBody;
use crate::route::Route;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::BodyExt as _;
use std::net::IpAddr;

/// The edge's default CDN-Loop token (its `cdn-id`, RFC 8586).
pub const DEFAULT_CDN_ID: &str = "udn";

/// The header that names the CDNs a request went through (RFC 8586).
pub const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

const CLIENT_CLAIMS: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "client-ip",
];

/// Why the edge answers a request itself: (status, reason for the client and the log).
pub fn refusal(
    method: &Method,
    headers: &HeaderMap,
    cdn_id: &str,
) -> Option<(StatusCode, &'static str)> {
    if method == Method::CONNECT {
        return Some((StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported"));
    }
    if method == Method::TRACE {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed"));
    }
    if (method == Method::GET || method == Method::HEAD) && has_body(headers) {
        return Some((
            StatusCode::BAD_REQUEST,
            "a GET or HEAD request may not carry a body (Content-Length or Transfer-Encoding)",
        ));
    }
    if looped(headers, cdn_id) {
        return Some((
            StatusCode::LOOP_DETECTED,
            "loop detected: the request already went through this CDN (CDN-Loop)",
        ));
    }
    None
}

/// A body is announced: any Transfer-Encoding, or a Content-Length other than 0 (an
/// unparsable one included).
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.to_str().map(|s| s.trim() != "0").unwrap_or(true))
}

/// Whether a `CDN-Loop` entry names `cdn_id` (compared without case; parameters after
/// `;` are ignored).
pub fn looped(h: &HeaderMap, cdn_id: &str) -> bool {
    h.get_all(CDN_LOOP).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes()).split(',').any(|e| {
            e.split(';')
                .next()
                .is_some_and(|id| id.trim().eq_ignore_ascii_case(cdn_id))
        })
    })
}

/// Rewrites a client's request headers on arrival (see the [module docs](self)).
pub fn prepare(h: &mut HeaderMap, peer: IpAddr, version: Version, cdn_id: &str, pop: &str) {
    for n in CLIENT_CLAIMS {
        h.remove(n);
    }
    let for_ = match peer {
        IpAddr::V4(a) => format!("for={a}"),
        IpAddr::V6(a) => format!("for=\"[{a}]\""),
    };
    if let Ok(v) = HeaderValue::from_str(&for_) {
        h.insert(header::FORWARDED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
        h.insert("x-forwarded-for", v);
    }
    let proto = match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let pop: String = pop
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(63)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("{proto} {cdn_id}-{pop}")) {
        h.append(header::VIA, v);
    }
    if let Ok(v) = HeaderValue::from_str(cdn_id) {
        h.append(CDN_LOOP, v);
    }
}

/// The request to `route`'s origin with `method`, the client's (prepared) headers
/// minus what never goes upstream, plus `extra` (the cache's own conditionals).
/// With `client_conditionals` the client's conditionals and Range are kept
/// (pass-through); without, they are removed (a fill).
pub fn origin_request(
    route: &Route,
    method: Method,
    req: &HeaderMap,
    extra: HeaderMap,
    client_conditionals: bool,
    cdn_id: &str,
) -> Request<ReqBody> {
    let mut h = req.clone();
    super::strip_hop_by_hop(&mut h);
    for n in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ] {
        h.remove(n);
    }
    if !client_conditionals {
        h.remove(header::RANGE);
        for n in crate::conditional::CONDITIONAL_HEADERS {
            h.remove(n);
        }
    }
    h.extend(extra);
    if let Ok(v) = HeaderValue::from_str(&route.origin.domain) {
        h.insert(header::HOST, v);
    }
    // A request the edge makes on its own (prefill, background revalidation without a
    // client) still says it went through this CDN.
    if !looped(&h, cdn_id)
        && let Ok(v) = HeaderValue::from_str(cdn_id)
    {
        h.append(CDN_LOOP, v);
    }
    let mut r = Request::new(
        http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.method_mut() = method;
    *r.uri_mut() = route.fetch_url.parse().unwrap_or_default();
    *r.headers_mut() = h;
    r
}

/// Removes the targeted cache-control fields (RFC 9213) from a response to a client:
/// they are meant for this CDN only.
pub fn strip_targeted(h: &mut HeaderMap) {
    for n in crate::policy::TARGETED_FIELDS {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_prepare() {
        let mut h = HeaderMap::new();
        assert!(refusal(&Method::GET, &h, "udn").is_none());
        h.insert("content-length", HeaderValue::from_static("0"));
        assert!(refusal(&Method::GET, &h, "udn").is_none());
        h.insert("content-length", HeaderValue::from_static("12"));
        assert_eq!(refusal(&Method::HEAD, &h, "udn").unwrap().0, 400);
        assert!(refusal(&Method::POST, &h, "udn").is_none());
        assert_eq!(refusal(&Method::CONNECT, &h, "udn").unwrap().0, 501);
        assert_eq!(refusal(&Method::TRACE, &h, "udn").unwrap().0, 405);
        let mut h = HeaderMap::new();
        h.insert("cdn-loop", HeaderValue::from_static("other, UDN; hops=1"));
        assert_eq!(refusal(&Method::GET, &h, "udn").unwrap().0, 508);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        h.insert("forwarded", HeaderValue::from_static("for=10.9.9.9"));
        h.insert("via", HeaderValue::from_static("1.1 proxy"));
        h.insert("cdn-loop", HeaderValue::from_static("other"));
        prepare(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            Version::HTTP_11,
            "udn",
            "fra",
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["forwarded"], "for=192.0.2.1");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 proxy", "1.1 udn-fra"]);
        assert!(looped(&h, "udn") && looped(&h, "other"));
    }
}
