//! The error type of `udn-core`.

use std::fmt;

/// Everything that can go wrong in `udn-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration text is not valid TOML or does not match the schema.
    #[error("config syntax: {0}")]
    Syntax(#[from] toml::de::Error),
    /// The configuration parsed but is inconsistent; every problem is listed.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A log record or log file header could not be decoded.
    #[error("log record: {0}")]
    LogRecord(#[from] serde_json::Error),
}

/// One validation problem, with the path of the field at fault
/// (for example `gtm[2].targets[0].server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field.
    pub path: String,
    /// What is wrong with it.
    pub kind: ConfigErrorKind,
}

/// What is wrong with a configuration field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A name is used twice where names must be unique.
    Duplicate(String),
    /// A reference names something that does not exist.
    UnknownReference(String),
    /// A value is outside its allowed range; the range is given.
    OutOfRange {
        /// The value found.
        value: String,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// A network (CIDR) or address does not parse.
    BadNetwork(String),
    /// A hostname is not a valid DNS name.
    BadHostname(String),
    /// A list that must not be empty is empty.
    Empty,
    /// A customer-given destination lies in a range customer targets may not reach
    /// (see [`crate::netpolicy`]).
    DeniedTarget {
        /// The address (or URL host) found.
        addr: String,
        /// The kind of range it lies in.
        range: crate::netpolicy::Denied,
    },
    /// A hostname or origin domain already belongs to another customer (each name
    /// has exactly one owner).
    OwnedByOther(String),
    /// A value that cannot be used as given; the reason is given.
    Invalid(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path)?;
        match &self.kind {
            ConfigErrorKind::Duplicate(n) => write!(f, "duplicate name {n:?}"),
            ConfigErrorKind::UnknownReference(n) => write!(f, "unknown reference {n:?}"),
            ConfigErrorKind::OutOfRange { value, allowed } => {
                write!(f, "value {value} out of range (allowed: {allowed})")
            }
            ConfigErrorKind::BadNetwork(n) => write!(f, "not a network or address: {n:?}"),
            ConfigErrorKind::BadHostname(n) => write!(f, "not a valid hostname: {n:?}"),
            ConfigErrorKind::Empty => write!(f, "must not be empty"),
            ConfigErrorKind::DeniedTarget { addr, range } => write!(
                f,
                "{addr} is a {range} address; customer destinations may not reach it \
                 (an operator may allow the range in security.allow_target_ranges)"
            ),
            ConfigErrorKind::OwnedByOther(n) => {
                write!(f, "{n:?} is already used by another customer")
            }
            ConfigErrorKind::Invalid(why) => f.write_str(why),
        }
    }
}

/// Every validation problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} config error(s)", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
