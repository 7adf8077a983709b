//! The one parser of purge targets and prefill URLs: the edge runs it on what the
//! control plane sends, and the control plane runs it when a customer submits a purge or
//! a prefill, so the control plane never accepts a target an edge would refuse (and one
//! refused item can never sit at the head of an edge's queue).
//!
//! A URL is `http://` or `https://`, an authority of a hostname (letters, digits, `-`,
//! `_`, dots) and an optional port, then a path (and query). Refused: another scheme,
//! userinfo (`user:pw@`), an IP literal in brackets, an empty or invalid host, a port
//! that is not a number up to 65535, whitespace or control characters anywhere, more
//! than [`MAX_URL_LEN`] bytes. The canonical form, the edge's cache-key form, is
//! `http://host[:port]/path?query` with the host in lower case.
//!
//! ```
//! use udn_cache::target::{parse_purge_target, parse_url};
//! let t = parse_purge_target("url", "https://CDN.shop.example/a?b").unwrap();
//! assert_eq!(t.target, "http://cdn.shop.example/a?b");
//! assert_eq!(t.host, "cdn.shop.example");
//! assert!(parse_url("http://user:pw@cdn.shop.example/x").is_err());
//! let d = parse_purge_target("domain", "cdn.shop.example").unwrap();
//! assert_eq!(d.target, "http://cdn.shop.example/");
//! ```

use crate::error::PurgeError;
use crate::invalidate::Scope;

/// The longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// The hostname, lower case, without the port.
    pub host: String,
    /// The port, if the URL names one.
    pub port: Option<u16>,
    /// The canonical form: `http://host[:port]/path?query`.
    pub key: String,
}

/// A parsed purge target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeTarget {
    /// What it covers.
    pub scope: Scope,
    /// The hostname, lower case, without the port.
    pub host: String,
    /// The canonical target the edge applies (a domain as its root URL `http://h/`).
    pub target: String,
}

/// Why a URL is refused (the text is the reason given to the caller).
fn bad(url: &str, why: &str) -> PurgeError {
    let shown: String = url.chars().take(200).collect();
    PurgeError::BadTarget(format!("{shown}: {why}"))
}

/// Parses an `http(s)://` URL (see the [module docs](self)).
pub fn parse_url(url: &str) -> Result<ParsedUrl, PurgeError> {
    if url.len() > MAX_URL_LEN {
        return Err(bad(url, "longer than 2048 bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(url, "contains whitespace or control characters"));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad(url, "not an http:// or https:// URL"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad(url, "userinfo (user:password@) is not allowed"));
    }
    if authority.starts_with('[') {
        return Err(bad(url, "an IP literal is not a CDN hostname"));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(url, "the port is not a number from 1 to 65535"))?;
            (h, Some(port))
        }
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(bad(url, "no host"));
    }
    if !udn_core::config::is_valid_hostname(host) {
        return Err(bad(url, "the host is not a valid hostname"));
    }
    let host = udn_core::config::canonical_hostname(host);
    // A fragment never reaches an origin: drop it.
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    let key = match port {
        Some(p) => format!("http://{host}:{p}{path}"),
        None => format!("http://{host}{path}"),
    };
    Ok(ParsedUrl { host, port, key })
}

/// Parses a purge scope's wire name (`url`, `prefix`, `domain`).
pub fn parse_scope(scope: &str) -> Result<Scope, PurgeError> {
    match scope {
        "url" => Ok(Scope::Url),
        "prefix" => Ok(Scope::Prefix),
        "domain" => Ok(Scope::Domain),
        other => Err(PurgeError::BadScope(other.chars().take(50).collect())),
    }
}

/// Parses a purge: `url` and `prefix` take a URL; `domain` takes a URL or a bare
/// hostname and becomes the root URL `http://host/`.
pub fn parse_purge_target(scope: &str, target: &str) -> Result<PurgeTarget, PurgeError> {
    let scope = parse_scope(scope)?;
    let target = target.trim();
    let u = match scope {
        Scope::Domain if !target.contains("://") => parse_url(&format!("http://{target}/"))?,
        _ => parse_url(target)?,
    };
    let target = match scope {
        Scope::Domain => format!("http://{}/", u.host),
        Scope::Url | Scope::Prefix => u.key,
    };
    Ok(PurgeTarget {
        scope,
        host: u.host,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_no_edge_can_apply() {
        for u in [
            "http://user:pw@cdn.shop.example/x",
            "http://@cdn.shop.example/x",
            "ftp://cdn.shop.example/x",
            "http:///x",
            "http://cdn.shop.example:99999/x",
            "http://cdn.shop.example:/x",
            "http://[::1]/x",
            "http://cdn shop.example/x",
            "http://cdn.shop.example/a b",
            "http://cdn.shop.example/\n",
            "http://-bad.example/",
        ] {
            assert!(parse_url(u).is_err(), "{u}");
        }
        let long = format!("http://cdn.shop.example/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse_url(&long).is_err());
        assert!(parse_purge_target("everything", "http://cdn.shop.example/").is_err());
    }

    #[test]
    fn canonical_forms() {
        let u = parse_url("https://CDN.Shop.example:8080?q=1#frag").unwrap();
        assert_eq!(u.key, "http://cdn.shop.example:8080/?q=1");
        assert_eq!(u.port, Some(8080));
        let p = parse_purge_target("prefix", " http://cdn.shop.example/img/ ").unwrap();
        assert_eq!(p.target, "http://cdn.shop.example/img/");
        let d = parse_purge_target("domain", "https://cdn.shop.example/any/path").unwrap();
        assert_eq!(d.target, "http://cdn.shop.example/");
    }
}
