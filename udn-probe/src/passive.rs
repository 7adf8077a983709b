//! The passive latency method: RTTs looked up in a configured prefix table (the
//! stand-in for BGP-derived distance). It sends nothing, so it is the cheapest method,
//! and the least accurate.
//!
//! The table is text, one entry a line: `CIDR RTT_MS` (`#` starts a comment).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use udn_probe::latency::{LatencyMethod, Outcome};
//! use udn_probe::passive::PassiveTable;
//! let t = PassiveTable::parse("198.51.100.0/24 40\n198.51.0.0/16 90 # coarse\n").unwrap();
//! assert_eq!(t.lookup("198.51.100.7".parse().unwrap()), Some(Duration::from_millis(40)));
//! assert_eq!(t.lookup("198.51.7.1".parse().unwrap()), Some(Duration::from_millis(90)));
//! assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), None);
//! ```

use crate::latency::{LatencyMethod, MeasureFuture, MethodInfo, Outcome};
use std::net::IpAddr;
use std::time::Duration;
use udn_core::Cidr;

/// A line of a passive table that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("passive table line {line}: expected `CIDR RTT_MS`")]
pub struct PassiveTableError {
    /// 1-based line number.
    pub line: usize,
}

/// A longest-prefix-match table of RTTs.
#[derive(Debug, Clone, Default)]
pub struct PassiveTable {
    entries: Vec<(Cidr, Duration)>,
}

impl PassiveTable {
    /// Parses the table text.
    pub fn parse(text: &str) -> Result<PassiveTable, PassiveTableError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = PassiveTableError { line: i + 1 };
            let mut f = line.split_ascii_whitespace();
            let cidr: Cidr = f.next().and_then(|c| c.parse().ok()).ok_or(err.clone())?;
            let ms: f64 = f
                .next()
                .and_then(|m| m.parse().ok())
                .filter(|m: &f64| m.is_finite() && *m >= 0.0 && *m < 1e9)
                .ok_or(err.clone())?;
            if f.next().is_some() {
                return Err(err);
            }
            entries.push((cidr, Duration::from_micros((ms * 1000.0) as u64)));
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(PassiveTable { entries })
    }

    /// The RTT of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<Duration> {
        self.entries
            .iter()
            .find(|(c, _)| c.contains(ip))
            .map(|(_, d)| *d)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl LatencyMethod for PassiveTable {
    fn info(&self) -> MethodInfo {
        MethodInfo::new("passive", 0, 0.3)
    }

    fn measure(&self, target: IpAddr) -> MeasureFuture<'_> {
        let out = match self.lookup(target) {
            Some(d) => Outcome::Rtt(d),
            None => Outcome::NoResult("not in passive table".into()),
        };
        Box::pin(std::future::ready(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            PassiveTable::parse("10.0.0.0/8 5\nnonsense\n")
                .unwrap_err()
                .line,
            2
        );
        assert_eq!(PassiveTable::parse("10.0.0.0/8 -5").unwrap_err().line, 1);
        assert_eq!(PassiveTable::parse("10.0.0.0/8 5 6").unwrap_err().line, 1);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = PassiveTable::parse(&s);
        }
    }
}
