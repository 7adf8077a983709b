//! Operational records: each role samples its own metrics (the OpenMetrics text its
//! `/metrics` serves) every interval and writes what changed into its own log as an
//! [`OpsRecord`], so operators' views of DNS servers, probes and edges come through the
//! logging system and the store, in real time and historically, and never from the
//! control plane scraping `/metrics`.
//!
//! [`Sampler`] turns successive snapshots into records: a counter's increase since the
//! previous snapshot (a counter that went back, a restarted process, counts from zero),
//! every gauge's level; histogram buckets are left out (their `_count` is kept as a
//! counter). [`check`] is what the collector enforces on every record it accepts.
//!
//! # Examples
//!
//! ```
//! use udn_core::ops::Sampler;
//! use udn_core::log::OpsKind;
//! use udn_core::Timestamp;
//! let text = |n: u32| format!("# TYPE udn_dns_queries counter\nudn_dns_queries_total{{path=\"local\"}} {n}\n# TYPE udn_dns_tcp_connections gauge\nudn_dns_tcp_connections 2\n# EOF\n");
//! let mut s = Sampler::default();
//! let first = s.sample(Timestamp::from_secs(60), &text(5));
//! assert_eq!(first.metrics[0].value, 5.0);
//! let next = s.sample(Timestamp::from_secs(120), &text(12));
//! assert_eq!((next.metrics[0].kind, next.metrics[0].value), (OpsKind::Counter, 7.0));
//! assert_eq!((next.metrics[1].kind, next.metrics[1].value), (OpsKind::Gauge, 2.0));
//! // Nothing moved: only the gauge is written.
//! assert_eq!(s.sample(Timestamp::from_secs(180), &text(12)).metrics.len(), 1);
//! ```

use crate::Timestamp;
use crate::log::{OpsKind, OpsMetric, OpsRecord};
use std::collections::HashMap;

/// The most metrics one record carries (a role's registry has a few dozen series).
pub const MAX_METRICS: usize = 256;
/// The longest metric name (with its labels), bytes.
pub const MAX_NAME_LEN: usize = 160;
/// The largest value a metric may carry (as [`crate::logfile::MAX_COUNT`]: sums of a
/// year of them cannot overflow).
pub const MAX_VALUE: f64 = (1u64 << 48) as f64;

/// Whether `name` is a metric name the store keeps: 1 to [`MAX_NAME_LEN`] bytes of
/// printable ASCII without a backslash, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

/// Checks a record as the collector accepts it: at most [`MAX_METRICS`], valid names,
/// each name once, values finite and in `0..=MAX_VALUE`.
pub fn check(r: &OpsRecord) -> Result<(), String> {
    if r.metrics.len() > MAX_METRICS {
        return Err(format!(
            "{} metrics (at most {MAX_METRICS})",
            r.metrics.len()
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(r.metrics.len());
    for m in &r.metrics {
        if !valid_name(&m.name) {
            return Err(format!(
                "metric name {:?}: 1 to {MAX_NAME_LEN} bytes of printable ASCII, a letter first",
                m.name.chars().take(40).collect::<String>()
            ));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(format!("metric {:?} twice", m.name));
        }
        if !m.value.is_finite() || m.value < 0.0 || m.value > MAX_VALUE {
            return Err(format!(
                "metric {:?} = {}: out of range (0 to 2^48)",
                m.name, m.value
            ));
        }
    }
    Ok(())
}

/// One sample line of OpenMetrics text: the series (name with labels) and its value.
fn sample_line(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // The value follows the series (whose label values may hold spaces): after the
    // closing brace, or after the name.
    let split = match line.rfind('}') {
        Some(i) => i + 1,
        None => line.find(' ')?,
    };
    let (series, rest) = line.split_at(split);
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((series.trim(), value))
}

/// The metric family a series belongs to (its name without labels).
fn family(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// Turns successive snapshots of one role's metrics into [`OpsRecord`]s.
#[derive(Debug, Default)]
pub struct Sampler {
    /// Each counter's value at the previous snapshot.
    prev: HashMap<String, f64>,
}

impl Sampler {
    /// The record of the interval ending at `ts`, from the OpenMetrics `text` of the
    /// role's registry now: every gauge, and each counter that moved (its increase).
    /// Series that do not fit a record ([`check`]) are left out, never an error.
    pub fn sample(&mut self, ts: Timestamp, text: &str) -> OpsRecord {
        let mut kinds: HashMap<&str, &str> = HashMap::new();
        let mut metrics = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (w.next(), w.next()) {
                    kinds.insert(name, kind);
                }
                continue;
            }
            let Some((series, value)) = sample_line(line) else {
                continue;
            };
            let fam = family(series);
            // The family a sample belongs to: its own name, or with the OpenMetrics
            // suffix (`_total`, `_count`, `_sum`, `_bucket`, `_created`) taken off.
            let (base, suffix) = ["_total", "_count", "_sum", "_bucket", "_created"]
                .iter()
                .find_map(|s| fam.strip_suffix(s).map(|b| (b, *s)))
                .filter(|(b, _)| kinds.contains_key(b))
                .unwrap_or((fam, ""));
            let kind = match (kinds.get(base).copied(), suffix) {
                (Some("counter"), "_total") => OpsKind::Counter,
                (Some("histogram") | Some("summary"), "_count") => OpsKind::Counter,
                (Some("gauge"), "") => OpsKind::Gauge,
                _ => continue,
            };
            if !valid_name(series) || !seen.insert(series.to_owned()) || !value.is_finite() {
                continue;
            }
            let value = match kind {
                OpsKind::Gauge => value,
                OpsKind::Counter => {
                    let before = self.prev.insert(series.to_owned(), value);
                    match before {
                        Some(b) if value >= b => value - b,
                        // First seen, or reset (a restart): counted from zero.
                        _ => value,
                    }
                }
            };
            if kind == OpsKind::Counter && value == 0.0 {
                continue;
            }
            if metrics.len() < MAX_METRICS {
                metrics.push(OpsMetric {
                    name: series.to_owned(),
                    kind,
                    value: value.clamp(0.0, MAX_VALUE),
                });
            }
        }
        OpsRecord { ts, metrics }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counter_text(v: u64) -> String {
        format!("# HELP c_total x\n# TYPE c counter\nc_total{{a=\"x y\"}} {v}\n# EOF\n")
    }

    #[test]
    fn histograms_keep_their_count_and_unknown_lines_are_skipped() {
        let text = "# TYPE h histogram\nh_sum 0.5\nh_count 3\nh_bucket{le=\"0.1\"} 1\n\
                    garbage line\nno_type_total 4\n# TYPE g gauge\ng 1e3\n";
        let r = Sampler::default().sample(Timestamp::from_secs(1), text);
        let names: Vec<(&str, f64)> = r
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.value))
            .collect();
        assert_eq!(names, [("h_count", 3.0), ("g", 1000.0)]);
        assert!(check(&r).is_ok());
    }

    #[test]
    fn check_refuses_what_the_store_cannot_keep() {
        let m = |name: &str, value: f64| OpsMetric {
            name: name.into(),
            kind: OpsKind::Counter,
            value,
        };
        let rec = |metrics| OpsRecord {
            ts: Timestamp::from_secs(1),
            metrics,
        };
        assert!(check(&rec(vec![m("a", 1.0)])).is_ok());
        assert!(check(&rec(vec![m("a", -1.0)])).is_err());
        assert!(check(&rec(vec![m("a", f64::NAN)])).is_err());
        assert!(check(&rec(vec![m("a", 1e300)])).is_err());
        assert!(check(&rec(vec![m("a\\b", 1.0)])).is_err());
        assert!(check(&rec(vec![m("a\u{7}", 1.0)])).is_err());
        assert!(check(&rec(vec![m("1a", 1.0)])).is_err());
        assert!(check(&rec(vec![m(&"a".repeat(161), 1.0)])).is_err());
        assert!(check(&rec(vec![m("a", 1.0), m("a", 2.0)])).is_err());
        assert!(check(&rec((0..257).map(|i| m(&format!("m{i}"), 1.0)).collect())).is_err());
    }

    proptest! {
        /// The increases a sampler writes add up to the counter's last value, whatever
        /// the steps (a reset starts the sum again).
        #[test]
        fn counter_increases_telescope(steps in proptest::collection::vec(0u64..1_000_000, 1..40)) {
            let mut s = Sampler::default();
            let mut value = 0u64;
            let mut sum = 0.0;
            for (i, d) in steps.iter().enumerate() {
                value += d;
                let r = s.sample(Timestamp::from_secs(i as u64), &counter_text(value));
                prop_assert!(check(&r).is_ok());
                sum += r.metrics.iter().map(|m| m.value).sum::<f64>();
            }
            prop_assert_eq!(sum, value as f64);
        }

        /// Any text: no panic, and what comes out passes the collector's check.
        #[test]
        fn any_text_gives_a_valid_record(text in "(# TYPE [a-z_]{1,6} (counter|gauge|histogram)\n|[ -~]{0,40}\n){0,30}") {
            let r = Sampler::default().sample(Timestamp::from_secs(1), &text);
            prop_assert!(check(&r).is_ok(), "{:?}", r);
        }
    }
}
