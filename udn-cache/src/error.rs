//! The error type of `udn-cache`.

/// Why a request cannot be mapped to a configured origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The request has no Host header (nor an absolute URI).
    #[error("request has no host")]
    NoHost,
    /// The host is not a CDN hostname or origin domain of this edge: the edge is not
    /// an open proxy.
    #[error("host {0:?} is not served by this edge")]
    UnknownHost(String),
    /// The path does not start with `/`.
    #[error("request target {0:?} is not an origin-form path")]
    BadPath(String),
}

/// Why a purge request is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// The target is not an `http://` or `https://` URL with a host.
    #[error("purge target {0:?} is not an http(s) URL with a host")]
    BadTarget(String),
    /// The scope is not `url`, `prefix` or `domain`.
    #[error("unknown purge scope {0:?}")]
    BadScope(String),
}

/// Everything that can go wrong in `udn-cache`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request could not be routed to an origin.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A purge request is invalid.
    #[error(transparent)]
    Purge(#[from] PurgeError),
    /// The edge configuration is invalid (an origin URL does not parse).
    #[error("bad origin URL {url:?} for {origin}")]
    BadOriginUrl {
        /// The origin domain.
        origin: String,
        /// The URL found.
        url: String,
    },
    /// An I/O error of the server (feature `server`).
    #[cfg(feature = "server")]
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A TLS configuration error (feature `server`).
    #[cfg(feature = "server")]
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}
