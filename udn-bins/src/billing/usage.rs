//! Usage from the log store: what a billing run bills.

use udn_billing::usage::{Metric, UsageRecord};
use udn_billing::{Period, Timestamp};

/// The usage of `customer` in `period` from the log store's SQLite file `db`: HTTP
/// requests, bytes delivered and cache-fill bytes per minute and POP from the
/// `rollup_http` rollups, and DNS queries answered for the customer's names per minute
/// from the raw DNS decision records.
pub fn usage_from_store(
    db: &std::path::Path,
    customer: &str,
    period: &Period,
) -> anyhow::Result<Vec<UsageRecord>> {
    let c = rusqlite::Connection::open(db)?;
    let mut st = c.prepare(
        "SELECT minute, pop, requests, bytes, fill_bytes FROM rollup_http \
         WHERE customer = ?1 AND minute >= ?2 AND minute < ?3 ORDER BY minute, pop",
    )?;
    let from = crate::store::to_i64(period.start.as_millis());
    let to = crate::store::to_i64(period.end.as_millis());
    let rows = st.query_map(rusqlite::params![customer, from, to], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (minute, pop, requests, bytes, fill) = row?;
        let at = Timestamp::from_millis(u64::try_from(minute).unwrap_or(0));
        for (metric, q) in [
            (Metric::HttpRequests, requests),
            (Metric::BytesDelivered, bytes),
            (Metric::CacheFillBytes, fill),
        ] {
            if q <= 0 {
                continue;
            }
            out.push(UsageRecord {
                account: customer.to_string(),
                at,
                metric,
                region: pop.clone(),
                quantity: u64::try_from(q).unwrap_or(0),
            });
        }
    }
    let mut st = c.prepare(
        "SELECT (ts / 60000) * 60000, COALESCE(pop, ''), count(*) FROM raw_dns \
         WHERE customer = ?1 AND ts >= ?2 AND ts < ?3 GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = st.query_map(rusqlite::params![customer, from, to], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (minute, pop, queries) = row?;
        out.push(UsageRecord {
            account: customer.to_string(),
            at: Timestamp::from_millis(u64::try_from(minute).unwrap_or(0)),
            metric: Metric::DnsQueries,
            region: pop,
            quantity: u64::try_from(queries).unwrap_or(0),
        });
    }
    Ok(out)
}
