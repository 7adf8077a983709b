//! Absolute `http(s)` URLs: parsing into the parts a fetch needs, and resolving the
//! references a page makes (RFC 3986 section 5.2).
//!
//! # Examples
//!
//! ```
//! use udn_probe::url::{HttpUrl, resolve};
//! let u = HttpUrl::parse("https://www.shop.example:8443/a/b.html?x=1#top").unwrap();
//! assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("www.shop.example", 8443, "/a/b.html?x=1"));
//! assert_eq!(
//!     resolve("http://h.example/a/b/c.html", "../img/x.gif").as_deref(),
//!     Some("http://h.example/a/img/x.gif")
//! );
//! ```

use crate::Error;

/// An absolute http(s) URL split for fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Whether the scheme is `https`.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (explicit or the scheme's default).
    pub port: u16,
    /// Path and query (at least `/`), without the fragment.
    pub path: String,
}

impl HttpUrl {
    /// Parses an absolute `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<HttpUrl, Error> {
        let bad = || Error::BadUrl(url.chars().take(200).collect());
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let tls = if scheme.eq_ignore_ascii_case("http") {
            false
        } else if scheme.eq_ignore_ascii_case("https") {
            true
        } else {
            return Err(bad());
        };
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let authority = authority.rsplit('@').next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err(bad());
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(HttpUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The `Host` header value (`host` or `host:port` for a non-default port).
    pub fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

struct Parts<'a> {
    scheme: &'a str,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

fn split(u: &str) -> Parts<'_> {
    let u = u.split('#').next().unwrap_or("");
    let (u, query) = match u.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (u, None),
    };
    let (scheme, rest) = match u.find(':') {
        Some(i)
            if i > 0
                && u[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && u.as_bytes()[0].is_ascii_alphabetic() =>
        {
            (&u[..i], &u[i + 1..])
        }
        _ => ("", u),
    };
    let (authority, path) = match rest.strip_prefix("//") {
        Some(r) => {
            let end = r.find('/').unwrap_or(r.len());
            (Some(&r[..end]), &r[end..])
        }
        None => (None, rest),
    };
    Parts {
        scheme,
        authority,
        path,
        query,
    }
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segs: Vec<&str> = path.split('/').collect();
    let n = segs.len();
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == n;
        match *s {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > usize::from(absolute) {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if absolute && !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Resolves `reference` (as found in an `src` or `href`) against the absolute `base`.
/// Returns `None` for references that are not http(s) resources (`data:`,
/// `javascript:`, empty, fragment-only) or when `base` is not absolute.
pub fn resolve(base: &str, reference: &str) -> Option<String> {
    let r = reference.trim();
    if r.is_empty() || r.starts_with('#') {
        return None;
    }
    let b = split(base);
    if b.scheme.is_empty() || b.authority.is_none() {
        return None;
    }
    let rp = split(r);
    let (scheme, authority, path, query) = if !rp.scheme.is_empty() {
        (
            rp.scheme,
            rp.authority,
            remove_dot_segments(rp.path),
            rp.query,
        )
    } else if rp.authority.is_some() {
        (
            b.scheme,
            rp.authority,
            remove_dot_segments(rp.path),
            rp.query,
        )
    } else if rp.path.is_empty() {
        (
            b.scheme,
            b.authority,
            b.path.to_string(),
            rp.query.or(b.query),
        )
    } else if rp.path.starts_with('/') {
        (
            b.scheme,
            b.authority,
            remove_dot_segments(rp.path),
            rp.query,
        )
    } else {
        let merged = match b.path.rfind('/') {
            Some(i) => format!("{}{}", &b.path[..=i], rp.path),
            None => format!("/{}", rp.path),
        };
        (
            b.scheme,
            b.authority,
            remove_dot_segments(&merged),
            rp.query,
        )
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = authority?;
    if authority.is_empty() {
        return None;
    }
    let path = if path.is_empty() { "/".into() } else { path };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3986_examples() {
        let base = "http://a/b/c/d;p?q";
        for (r, want) in [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g/"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("g#s", "http://a/b/c/g"),
            ("", ""),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../g", "http://a/g"),
            ("../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            ("https://x.example/y", "https://x.example/y"),
            ("data:image/gif;base64,AAAA", ""),
            ("javascript:void(0)", ""),
        ] {
            let got = resolve(base, r).unwrap_or_default();
            assert_eq!(got, want, "reference {r:?}");
        }
    }

    #[test]
    fn parse_forms() {
        let u = HttpUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(u.host_header(), "[::1]:8080");
        let u = HttpUrl::parse("HTTPS://Example.COM?q").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "example.com", 443, "/?q")
        );
        assert_eq!(u.host_header(), "example.com");
        for bad in [
            "ftp://x/",
            "http://",
            "http://h:99999/",
            "http://[::1/",
            "nope",
            "http://a b/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(base in "\\PC{0,40}", r in "\\PC{0,40}") {
            let _ = HttpUrl::parse(&base);
            if let Some(u) = resolve(&base, &r) {
                prop_assert!(u.starts_with("http://") || u.starts_with("https://"));
            }
            let _ = resolve("http://h.example/a/b", &r);
        }

        #[test]
        fn resolved_relative_paths_have_no_dot_segments(segs in prop::collection::vec(prop::sample::select(vec!["a", "b", ".", "..", ""]), 0..8)) {
            let r = segs.join("/");
            if let Some(u) = resolve("http://h.example/x/y/z", &r) {
                let path = HttpUrl::parse(&u).unwrap().path;
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.split('/').any(|s| s == "." || s == ".."), "{}", u);
            }
        }
    }
}
