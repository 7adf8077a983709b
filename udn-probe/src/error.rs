//! The crate's error type.

/// Everything that can go wrong in `udn-probe`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A service's `expect_regex` does not compile.
    #[error("service {service:?}: bad expect_regex: {source}")]
    BadRegex {
        /// The service name.
        service: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
    /// A URL that is not an absolute `http://` or `https://` URL.
    #[error("not an absolute http(s) URL: {0:?}")]
    BadUrl(String),
    /// A DNS name that cannot be encoded.
    #[error("bad DNS name {name:?}: {source}")]
    BadDnsName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// A LOADP source did not provide what was asked.
    #[error("load source: {0} unavailable")]
    LoadSourceUnavailable(LoadSourcePart),
    /// A LOADP source gave text that does not parse.
    #[error("load source: {0} does not parse")]
    LoadSourceUnparsable(LoadSourcePart),
}

/// The part of a LOADP source at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadSourcePart {
    /// `/proc/loadavg`.
    LoadAvg,
    /// `/proc/meminfo`.
    MemInfo,
    /// `statvfs` of a mount point.
    Disk,
}

impl std::fmt::Display for LoadSourcePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadSourcePart::LoadAvg => "loadavg",
            LoadSourcePart::MemInfo => "meminfo",
            LoadSourcePart::Disk => "disk",
        })
    }
}
