//! What the probes last saw of each server, and the mix of the GTM's decision reasons:
//! the GTM pages' live health (up, down or stale, last check, which probes) and reason
//! breakdown, read from the probes' service records (`raw_probe`) and the DNS rollups.
//!
//! A probe writes a service record for every test of a server (`kind = service`,
//! `target` the server, `method` the service), with `state=up` or `state=down` in its
//! detail when its hysteresis changes the verdict. The probe's view of a server is the
//! state of its last such transition, or, before the first one, its last test's result.

use super::{Param, Result, SeriesQuery, Store, int, text, to_i64};
use udn_core::Timestamp;

/// One probe's latest view of one server's service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceCheck {
    /// The probe's POP.
    pub pop: String,
    /// The server tested.
    pub server: String,
    /// The service (test) name.
    pub service: String,
    /// When the last test ran (ms since the epoch).
    pub last_check: i64,
    /// Whether the last test passed.
    pub last_ok: bool,
    /// The probe's verdict: the last transition's state (`up`, `down`), or the last
    /// test's result before any transition.
    pub state: String,
    /// The last test's detail (the failing address and reason).
    pub detail: String,
}

/// Rows read at most (probes × servers × services of an installation).
const MAX_CHECKS: usize = 10_000;

/// Every probe's latest view of every server's service tested since `since`.
pub fn latest_checks<S: Store + ?Sized>(s: &mut S, since: Timestamp) -> Result<Vec<ServiceCheck>> {
    let since = Param::Int(to_i64(since.as_millis()));
    // The last test per (pop, server, service), and the last transition.
    // Written without `JOIN ... ON` (ClickHouse 18.16 has none): a row-value `IN`.
    let last = format!(
        "SELECT pop, target, method, ts, ok, detail FROM raw_probe \
         WHERE kind = 'service' AND (pop, target, method, ts) IN \
         (SELECT pop, target, method, MAX(ts) FROM raw_probe \
          WHERE kind = 'service' AND ts >= $1 GROUP BY pop, target, method) \
         ORDER BY target, method, pop LIMIT {MAX_CHECKS}"
    );
    let transitions = format!(
        "SELECT pop, target, method, detail FROM raw_probe \
         WHERE kind = 'service' AND detail LIKE '%state=%' AND (pop, target, method, ts) IN \
         (SELECT pop, target, method, MAX(ts) FROM raw_probe \
          WHERE kind = 'service' AND ts >= $1 AND detail LIKE '%state=%' \
          GROUP BY pop, target, method) LIMIT {MAX_CHECKS}"
    );
    let mut states = std::collections::HashMap::new();
    for r in s.select(&transitions, std::slice::from_ref(&since))? {
        let detail = text(&r, 3, &transitions)?;
        if let Some(st) = state_in(&detail) {
            states.insert(
                (
                    text(&r, 0, &transitions)?,
                    text(&r, 1, &transitions)?,
                    text(&r, 2, &transitions)?,
                ),
                st.to_owned(),
            );
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in s.select(&last, std::slice::from_ref(&since))? {
        let key = (
            text(&r, 0, &last)?,
            text(&r, 1, &last)?,
            text(&r, 2, &last)?,
        );
        // Two tests in the same millisecond: the first row stands.
        if !seen.insert(key.clone()) {
            continue;
        }
        let last_ok = int(&r, 4, &last)? != 0;
        let state = states
            .get(&key)
            .cloned()
            .unwrap_or_else(|| if last_ok { "up" } else { "down" }.to_owned());
        out.push(ServiceCheck {
            pop: key.0,
            server: key.1,
            service: key.2,
            last_check: int(&r, 3, &last)?,
            last_ok,
            state,
            detail: text(&r, 5, &last)?,
        });
    }
    Ok(out)
}

/// The `state=up|down` a detail carries.
fn state_in(detail: &str) -> Option<&str> {
    detail
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("state="))
        .find(|s| matches!(*s, "up" | "down"))
}

/// DNS answers per decision reason (`latency`, `sticky`, `static`, `standby`, ...) over
/// `q`'s range, most first.
pub fn reasons<S: Store + ?Sized>(s: &mut S, q: &SeriesQuery<'_>) -> Result<Vec<(String, i64)>> {
    let (filter, params) = q.filter("hostname");
    let sql = format!(
        "SELECT reason, CAST(SUM(queries) AS BIGINT) AS answered FROM rollup_dns{} \
         WHERE minute >= $1 AND minute < $2{filter} GROUP BY reason \
         ORDER BY answered DESC, reason LIMIT 100",
        q.grain.suffix()
    );
    s.select(&sql, &params)?
        .iter()
        .map(|r| Ok((text(r, 0, &sql)?, int(r, 1, &sql)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_is_read_from_the_detail() {
        assert_eq!(
            state_in("127.0.0.21: connection refused state=down"),
            Some("down")
        );
        assert_eq!(state_in("state=up"), Some("up"));
        assert_eq!(state_in("state=sideways"), None);
        assert_eq!(state_in(""), None);
    }
}
