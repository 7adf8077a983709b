//! Usage from the log store: what a billing run bills.

use crate::store::{Range, Store};
use udn_billing::usage::{Metric, UsageRecord};
use udn_billing::{Period, Timestamp};

/// The usage of `customer` in `period` from the log store (SQLite or PostgreSQL): HTTP
/// requests, bytes delivered and cache-fill bytes per minute and POP, and DNS queries
/// answered for the customer's names per minute and answering POP, from the per-minute
/// rollups (kept for good, unlike raw records).
pub fn usage_from_store(
    store: &mut dyn Store,
    customer: &str,
    period: &Period,
) -> anyhow::Result<Vec<UsageRecord>> {
    let rows = store.usage_by_minute(
        customer,
        Range {
            from: period.start,
            to: period.end,
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let at = Timestamp::from_millis(u64::try_from(row.minute).unwrap_or(0));
        for (metric, q) in [
            (Metric::HttpRequests, row.requests),
            (Metric::BytesDelivered, row.bytes),
            (Metric::CacheFillBytes, row.fill_bytes),
            (Metric::DnsQueries, row.dns_queries),
        ] {
            if q <= 0 {
                continue;
            }
            out.push(UsageRecord {
                account: customer.to_string(),
                at,
                metric,
                region: row.pop.clone(),
                quantity: u64::try_from(q).unwrap_or(0),
            });
        }
    }
    Ok(out)
}
