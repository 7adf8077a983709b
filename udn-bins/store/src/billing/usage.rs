//! Usage from the log store: what a billing run bills.
//!
//! Every log file's usage enters billing once, under its own idempotency key
//! `log:<file id>:<customer>` ([`ingest_file_usage`]): the log store keeps each file's
//! per-minute usage in `usage_file`, written in the file's own ingest transaction, and a
//! billing run records the files received since the previous run. A file's usage never
//! changes (the log store refuses a file id with other content), so recording it again
//! is a replay that changes nothing, and a file received late is simply a new key.

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

use super::store::BillingStore;
use crate::logs::{FileUsage, LEGACY_USAGE_FILE, MinuteUsage, Range, Store};
use udn_billing::usage::{Applied, Metric, UsageRecord};
use udn_billing::{Period, Timestamp, UsageBatch};

/// How far before the ingest mark each run re-reads the log store's files (a file's
/// `received_at` is taken before its transaction commits, so a file committed slowly
/// may carry a time before one committed after it). Re-reading is a replay.
pub const INGEST_MARGIN_MS: i64 = 10 * 60_000;

/// What one ingestion recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// (file, customer) batches recorded now.
    pub new: usize,
    /// Batches recorded before (replays, changing nothing).
    pub replayed: usize,
    /// (account, period) already invoiced that received usage now: billed on the
    /// account's next invoice.
    pub late: Vec<(String, String)>,
    /// Batches that could not be recorded, with the reason (retried next run).
    pub failed: Vec<(String, String)>,
}

/// The usage records of one customer's minute rows.
pub fn records_of(customer: &str, rows: &[MinuteUsage]) -> Vec<UsageRecord> {
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
    out
}

/// The idempotency key of one log file's usage of one customer.
pub fn file_key(file_id: &str, customer: &str) -> String {
    format!("log:{file_id}:{customer}")
}

/// Records per-file usage rows (from [`Store::file_usage_since`]) in the billing
/// store: one batch per (file, customer) under [`file_key`]. Usage of a period whose
/// invoice is already issued is marked late for the account's next invoice. The ingest
/// mark moves to the newest file's `received_at`.
pub fn ingest_file_usage(
    store: &mut dyn BillingStore,
    rows: Vec<FileUsage>,
) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    let accounts: BTreeMap<String, udn_billing::Account> = store
        .accounts()?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let mut newest = i64::MIN;
    let mut files: BTreeMap<(String, String), Vec<MinuteUsage>> = BTreeMap::new();
    for r in rows {
        newest = newest.max(r.received_at);
        files
            .entry((r.file_id, r.customer))
            .or_default()
            .push(r.usage);
    }
    let mut invoiced: BTreeMap<(String, Period), bool> = BTreeMap::new();
    for ((file, customer), minutes) in files {
        let key = file_key(&file, &customer);
        let mut records = records_of(&customer, &minutes);
        if file == LEGACY_USAGE_FILE {
            records = not_yet_recorded(store, records)?;
        }
        if records.is_empty() {
            continue;
        }
        // Late marks first: a mark without new usage is dropped by the next run, usage
        // without its mark would wait for an audit.
        if let Some(account) = accounts.get(&customer) {
            let mut periods: Vec<Period> = Vec::new();
            for r in &records {
                if let Ok(p) = Period::containing(account.billing_period, r.at)
                    && !periods.contains(&p)
                {
                    periods.push(p);
                }
            }
            for p in periods {
                let issued = match invoiced.get(&(customer.clone(), p)) {
                    Some(v) => *v,
                    None => {
                        let v = store
                            .live_invoice(&customer, &p)?
                            .is_some_and(|i| i.number.is_some());
                        invoiced.insert((customer.clone(), p), v);
                        v
                    }
                };
                if issued {
                    store.mark_late(&customer, &p)?;
                    let entry = (customer.clone(), p.to_string());
                    if !report.late.contains(&entry) {
                        report.late.push(entry);
                    }
                }
            }
        }
        match store.record_usage(&UsageBatch {
            key: key.clone(),
            records,
        }) {
            Ok(Applied::New) => report.new += 1,
            Ok(Applied::Replay) => report.replayed += 1,
            Err(e) => {
                tracing::warn!(%key, "usage not recorded: {e:#}");
                report.failed.push((key, format!("{e:#}")));
            }
        }
    }
    if newest > i64::MIN {
        store.set_ingest_mark(newest)?;
    }
    Ok(report)
}

/// The legacy rollups (recorded before per-file usage existed) less what the billing
/// store already holds in each 5-minute bucket, so that usage an older control plane
/// recorded under its per-period keys is not recorded twice.
fn not_yet_recorded(
    store: &dyn BillingStore,
    records: Vec<UsageRecord>,
) -> Result<Vec<UsageRecord>> {
    use udn_billing::period::BUCKET_MS;
    let mut by_bucket: BTreeMap<u64, Vec<UsageRecord>> = BTreeMap::new();
    for r in records {
        by_bucket
            .entry(r.at.as_millis() / BUCKET_MS)
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for (bucket, recs) in by_bucket {
        let Some(first) = recs.first() else { continue };
        let from = Timestamp::from_millis(bucket * BUCKET_MS);
        let to = Timestamp::from_millis((bucket + 1) * BUCKET_MS);
        let mut have = store
            .usage_totals(&first.account, from, to, false)?
            .counters;
        for mut r in recs {
            let held = have.entry((r.metric, r.region.clone())).or_default();
            let take = (*held).min(r.quantity);
            *held -= take;
            r.quantity -= take;
            if r.quantity > 0 {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The usage of `customer` in `period` from the log store (SQLite or PostgreSQL): HTTP
/// requests, bytes delivered and cache-fill bytes per minute and POP, and DNS queries
/// answered for the customer's names per minute and answering POP, from the per-minute
/// rollups (kept for good, unlike raw records).
pub fn usage_from_store(
    store: &mut dyn Store,
    customer: &str,
    period: &Period,
) -> anyhow::Result<Vec<UsageRecord>> {
    usage_between(store, customer, period.start, period.end)
}

/// [`usage_from_store`] over `[from, to)` (what audit compares an invoice with).
pub fn usage_between(
    store: &mut dyn Store,
    customer: &str,
    from: Timestamp,
    to: Timestamp,
) -> anyhow::Result<Vec<UsageRecord>> {
    let rows = store.usage_by_minute(customer, Range { from, to })?;
    Ok(records_of(customer, &rows))
}
