//! Cache keys and the two URL forms customers use.
//!
//! * **Origin in the path**: `http://cdn.shop.example/www.shop.example/img/a.gif` is the
//!   object `http://www.shop.example/img/a.gif`, if `www.shop.example` is an origin
//!   domain configured for `cdn.shop.example`.
//! * **Virtual hosting**: the customer points its own name at the CDN; the Host header
//!   selects the origin (a request to `cdn.shop.example/img/a.gif` is served from the
//!   hostname's first origin, a request with `Host: www.shop.example` from that origin).
//!
//! Only configured origins are ever fetched: anything else is a [`RouteError`], so the
//! edge is never an open proxy. Both forms of one object share one cache key, the
//! origin URL `http://<origin domain><path>`.
//!
//! # Examples
//!
//! ```
//! use udn_cache::Router;
//! let cfg = udn_core::Config::from_toml(udn_core::config::SAMPLE).unwrap();
//! let router = Router::from_config(&cfg).unwrap();
//! let a = router.route("cdn.shop.udn.example", "/www.shop.udn.example/img/a.gif").unwrap();
//! let b = router.route("cdn.shop.udn.example", "/img/a.gif").unwrap();
//! assert_eq!(a.key, "http://www.shop.udn.example/img/a.gif");
//! assert_eq!(a.key, b.key);
//! assert_eq!(a.fetch_url, "http://127.0.0.21:8080/img/a.gif");
//! assert!(router.route("evil.example", "/x").is_err());
//! ```

use crate::error::{Error, RouteError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use udn_core::netpolicy::TargetPolicy;

/// One origin domain the edge may fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The origin domain (canonical), the host part of cache keys.
    pub domain: String,
    /// Base URL it is fetched from, without a trailing slash (`http://10.0.0.1:8080`,
    /// or an FTP origin's `ftp://[user:password@]host[:port][/dir]`).
    pub base_url: String,
    /// Owning customer (for logs and billing).
    pub customer: Option<String>,
    /// Content older than this (since it was fetched or last validated) is revalidated
    /// before it is served, even if HTTP says it is fresh.
    pub check_interval: Option<Duration>,
    /// Whether responses with `Set-Cookie` may be stored (then without that header);
    /// the CDN hostname's `cache_set_cookie`.
    pub cache_set_cookie: bool,
}

#[derive(Debug, Clone)]
struct CdnHost {
    /// Origin indexes, the first is the virtual-hosting default.
    origins: Vec<usize>,
}

/// Maps a request (Host header + path) to its origin and cache key.
#[derive(Debug, Clone, Default)]
pub struct Router {
    origins: Vec<Arc<Origin>>,
    by_domain: HashMap<String, usize>,
    cdn_hosts: HashMap<String, CdnHost>,
    /// A single-origin edge (`udn edge --origin URL`) serves every host from it.
    single: Option<usize>,
    /// Which addresses origin fetches may connect to.
    policy: Arc<TargetPolicy>,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The origin.
    pub origin: Arc<Origin>,
    /// The path (and query) at the origin, starting with `/`.
    pub path: String,
    /// The primary cache key: `http://<origin domain><path>`.
    pub key: String,
    /// The URL to fetch from the origin.
    pub fetch_url: String,
    /// The hostname the request named (canonical, without its port): a CDN hostname, or
    /// the origin's domain when virtually hosted. The fills a request causes are logged
    /// under it, beside the request itself, so a hostname's (and a stream's) origin
    /// fetches are counted where its traffic is.
    pub host: String,
}

impl Route {
    /// Another path on the same origin (a segment named by a playlist): its key and
    /// fetch URL built as [`Router::route`] builds them. `path` starts with `/`.
    pub fn sibling(&self, path: &str) -> Route {
        Route {
            origin: self.origin.clone(),
            path: path.to_owned(),
            key: format!("http://{}{}", self.origin.domain, path),
            fetch_url: format!("{}{}", self.origin.base_url, path),
            host: self.host.clone(),
        }
    }

    /// The key objects are stored under: the primary key prefixed with the owning
    /// customer (`shop http://www.shop.example/a.gif`), so two customers never share
    /// an object even if their keys were equal; a single-origin edge has no customer
    /// and stores under the primary key.
    pub fn store_key(&self) -> String {
        match &self.origin.customer {
            Some(c) => format!("{c} {}", self.key),
            None => self.key.clone(),
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl Router {
    /// The router of a network's CDN hostnames (`[[cdn]]` entries of the config).
    ///
    /// Each hostname's `origin_urls[i]` is where `origins[i]` is fetched from
    /// (default `http://<origin>`).
    ///
    /// Origin fetches may connect only to addresses the config's `[security]` policy
    /// allows (see [`udn_core::netpolicy`]).
    pub fn from_config(cfg: &udn_core::Config) -> Result<Router, Error> {
        Self::from_cdn(cfg, None)
    }

    /// The router of the CDN hostnames served by one POP (those whose `pops` list is
    /// empty or names `pop`).
    pub fn for_pop(cfg: &udn_core::Config, pop: &str) -> Result<Router, Error> {
        Self::from_cdn(cfg, Some(pop))
    }

    fn from_cdn(cfg: &udn_core::Config, pop: Option<&str>) -> Result<Router, Error> {
        let mut r = Router {
            policy: Arc::new(cfg.security.target_policy()),
            ..Router::default()
        };
        for c in &cfg.cdn {
            // A pending hostname (ownership not yet proven) is not served.
            if c.challenge.is_some() {
                continue;
            }
            if let Some(p) = pop
                && !c.pops.is_empty()
                && !c.pops.iter().any(|x| x == p)
            {
                continue;
            }
            let mut idx = Vec::new();
            for (i, domain) in c.origins.iter().enumerate() {
                let domain = udn_core::config::canonical_hostname(domain);
                let base = match c.origin_urls.get(i) {
                    Some(u) => u.trim_end_matches('/').to_string(),
                    None => format!("http://{domain}"),
                };
                if udn_core::network::check_origin_url(&base).is_err() {
                    return Err(Error::BadOriginUrl {
                        origin: domain,
                        url: base,
                    });
                }
                let o = Origin {
                    domain: domain.clone(),
                    base_url: base,
                    customer: Some(c.customer.clone()),
                    check_interval: c.check_interval_secs.map(Duration::from_secs),
                    cache_set_cookie: c.cache_set_cookie,
                };
                let id = *r.by_domain.entry(domain).or_insert_with(|| {
                    r.origins.push(Arc::new(o));
                    r.origins.len() - 1
                });
                idx.push(id);
            }
            r.cdn_hosts.insert(
                udn_core::config::canonical_hostname(&c.hostname),
                CdnHost { origins: idx },
            );
        }
        Ok(r)
    }

    /// A router that serves every request from one origin (`udn edge --origin URL`,
    /// like `varnishd -b`). The cache-key host is the origin URL's host. The operator
    /// names this origin, so any address may be fetched. `ftp://` URLs are FTP origins.
    pub fn single(base_url: &str) -> Result<Router, Error> {
        let base = base_url.trim_end_matches('/').to_string();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .or_else(|| base.strip_prefix("ftp://"))
            .filter(|_| udn_core::network::check_origin_url(&base).is_ok())
            .ok_or_else(|| Error::BadOriginUrl {
                origin: base.clone(),
                url: base.clone(),
            })?;
        let authority = rest.split('/').next().unwrap_or("");
        // An FTP origin's user and password are not part of the cache key.
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if authority.is_empty() {
            return Err(Error::BadOriginUrl {
                origin: base.clone(),
                url: base.clone(),
            });
        }
        let o = Origin {
            domain: authority.to_ascii_lowercase(),
            base_url: base,
            customer: None,
            check_interval: None,
            cache_set_cookie: false,
        };
        let mut r = Router::default();
        r.by_domain.insert(o.domain.clone(), 0);
        r.origins.push(Arc::new(o));
        r.single = Some(0);
        r.policy = Arc::new(TargetPolicy::unrestricted());
        Ok(r)
    }

    /// Sets the periodic check interval of every origin (for `--check-interval`).
    #[must_use]
    pub fn with_check_interval(mut self, every: Option<Duration>) -> Router {
        for o in &mut self.origins {
            Arc::make_mut(o).check_interval = every;
        }
        self
    }

    /// Which addresses origin fetches may connect to.
    pub fn target_policy(&self) -> &Arc<TargetPolicy> {
        &self.policy
    }

    /// The configured origins.
    pub fn origins(&self) -> &[Arc<Origin>] {
        &self.origins
    }

    /// The origin whose domain is `domain`, if configured.
    pub fn origin(&self, domain: &str) -> Option<&Arc<Origin>> {
        self.by_domain
            .get(&udn_core::config::canonical_hostname(domain))
            .map(|&i| &self.origins[i])
    }

    /// The origins of a CDN hostname (the first is its virtual-hosting default), or
    /// `None` if `host` is not a CDN hostname of this router.
    pub fn cdn_origins(&self, host: &str) -> Option<Vec<Arc<Origin>>> {
        let host = udn_core::config::canonical_hostname(strip_port(host));
        self.cdn_hosts
            .get(&host)
            .map(|c| c.origins.iter().map(|&i| self.origins[i].clone()).collect())
    }

    fn make(&self, id: usize, host: &str, path: &str) -> Route {
        let origin = self.origins[id].clone();
        Route {
            key: format!("http://{}{}", origin.domain, path),
            fetch_url: format!("{}{}", origin.base_url, path),
            path: path.to_string(),
            host: if host.is_empty() {
                origin.domain.clone()
            } else {
                host.to_owned()
            },
            origin,
        }
    }

    /// Routes a request by its Host header (port ignored) and origin-form target
    /// (`/path?query`).
    pub fn route(&self, host: &str, target: &str) -> Result<Route, RouteError> {
        if !target.starts_with('/') {
            return Err(RouteError::BadPath(target.to_string()));
        }
        let host = udn_core::config::canonical_hostname(strip_port(host.trim()));
        if let Some(id) = self.single {
            return Ok(self.make(id, &host, target));
        }
        if host.is_empty() {
            return Err(RouteError::NoHost);
        }
        if let Some(cdn) = self.cdn_hosts.get(&host) {
            // Origin in the path: the first segment names a configured origin.
            let rest = &target[1..];
            let (first, tail) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let first = first.to_ascii_lowercase();
            if let Some(&id) = self.by_domain.get(&first)
                && cdn.origins.contains(&id)
            {
                let path = if tail.is_empty() {
                    "/".to_string()
                } else if tail.starts_with('?') {
                    format!("/{tail}")
                } else {
                    tail.to_string()
                };
                return Ok(self.make(id, &host, &path));
            }
            return match cdn.origins.first() {
                Some(&id) => Ok(self.make(id, &host, target)),
                None => Err(RouteError::UnknownHost(host)),
            };
        }
        // Virtual hosting: the customer's own name, pointed at the CDN.
        match self.by_domain.get(&host) {
            Some(&id) => Ok(self.make(id, &host, target)),
            None => Err(RouteError::UnknownHost(host)),
        }
    }
}

/// Splits a cache key (`http://host/path?query`) into its host and path segments, the
/// way the invalidation tree files it: the query is ignored, empty segments dropped.
pub fn key_parts(key: &str) -> Option<(&str, impl Iterator<Item = &str>)> {
    let rest = key
        .strip_prefix("http://")
        .or_else(|| key.strip_prefix("https://"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    Some((host, path.split('/').filter(|s| !s.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let cfg = udn_core::Config::from_toml(
            r#"
[[customers]]
name = "c"
[[pops]]
name = "fra"
location = { lat = 0.0, lon = 0.0 }
servers = [{ name = "e1", addresses = ["127.0.0.1"] }]
[[cdn]]
hostname = "cdn.c.example"
customer = "c"
origins = ["www.c.example", "img.c.example"]
origin_urls = ["http://127.0.0.5:81"]
check_interval_secs = 30
"#,
        )
        .unwrap();
        Router::from_config(&cfg).unwrap()
    }

    #[test]
    fn origin_in_path_and_virtual_hosting_share_keys() {
        let r = router();
        let a = r
            .route("cdn.c.example:8080", "/img.c.example/a.gif?x=1")
            .unwrap();
        assert_eq!(a.key, "http://img.c.example/a.gif?x=1");
        assert_eq!(a.fetch_url, "http://img.c.example/a.gif?x=1");
        let b = r.route("IMG.c.example", "/a.gif?x=1").unwrap();
        assert_eq!(a.key, b.key);
        // The same object, named through two hostnames: each request (and the fills
        // it causes) is logged under the name it asked for.
        assert_eq!(
            (a.host.as_str(), b.host.as_str()),
            ("cdn.c.example", "img.c.example")
        );
        assert_eq!(a.sibling("/b.gif").host, "cdn.c.example");
        let c = r.route("cdn.c.example", "/www.c.example").unwrap();
        assert_eq!(c.key, "http://www.c.example/");
        assert_eq!(c.fetch_url, "http://127.0.0.5:81/");
        let all = r.cdn_origins("CDN.c.example:80").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].domain, "img.c.example");
        assert!(r.cdn_origins("www.c.example").is_none());
        let d = r.route("cdn.c.example", "/a/b").unwrap();
        assert_eq!(d.key, "http://www.c.example/a/b");
        assert_eq!(d.origin.check_interval, Some(Duration::from_secs(30)));
    }

    #[test]
    fn unconfigured_hosts_are_refused() {
        let r = router();
        assert_eq!(
            r.route("evil.example", "/x"),
            Err(RouteError::UnknownHost("evil.example".into()))
        );
        assert_eq!(r.route("", "/x"), Err(RouteError::NoHost));
        assert!(matches!(
            r.route("cdn.c.example", "http://evil/x"),
            Err(RouteError::BadPath(_))
        ));
        // An unconfigured domain in the path is just a path of the default origin.
        let e = r.route("cdn.c.example", "/evil.example/x").unwrap();
        assert_eq!(e.origin.domain, "www.c.example");
    }

    #[test]
    fn objects_are_stored_under_the_owning_customer() {
        let a = router().route("cdn.c.example", "/a.gif").unwrap();
        assert_eq!(a.store_key(), format!("c {}", a.key));
        let mut other = a.clone();
        Arc::make_mut(&mut other.origin).customer = Some("d".into());
        assert_ne!(a.store_key(), other.store_key());
    }

    #[test]
    fn single_origin() {
        let r = Router::single("http://127.0.0.1:9000/").unwrap();
        let a = r.route("anything", "/p?q").unwrap();
        assert_eq!(a.key, "http://127.0.0.1:9000/p?q");
        assert_eq!(a.fetch_url, "http://127.0.0.1:9000/p?q");
        assert!(Router::single("gopher://x").is_err());
        let f = Router::single("ftp://u:p@127.0.0.1:2121/pub").unwrap();
        let a = f.route("anything", "/a.bin").unwrap();
        assert_eq!(a.key, "http://127.0.0.1:2121/a.bin");
        assert_eq!(a.fetch_url, "ftp://u:p@127.0.0.1:2121/pub/a.bin");
    }

    #[test]
    fn key_parts_split() {
        let (h, segs) = key_parts("http://h.example/a//b/c.gif?q=1").unwrap();
        assert_eq!(h, "h.example");
        assert_eq!(segs.collect::<Vec<_>>(), vec!["a", "b", "c.gif"]);
    }
}
