//! The billing scheduler of `udn control`: each account's period is billed once it has
//! closed and a grace for late logs has passed (`--billing-grace`), by the same
//! [`logged_run`] as the CLI and the API, then delivered.
//!
//! Progress is kept per cadence (hour, week, month, quarter, year) in the billing store
//! (`billing_state`, `schedule:<kind>` = end of the last period billed), so periods
//! missed while the control plane was down are billed in order when it comes back. On
//! its very first tick the scheduler starts with the latest due period (earlier periods
//! are billed by hand with `udn control billing run`). A run that fails (storage) is
//! retried with a growing delay, each attempt in the run log (`GET /v1/billing/runs`);
//! a run in which some accounts failed counts as done (the failures are in the run log
//! for an admin to fix and re-run).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use udn_billing::{Period, PeriodKind, Timestamp};

use super::cli::BillingConfig;
use super::delivery::deliver_pending;
use super::run::{FileUsageSource, logged_run};
use super::store::BillingStore;

/// At most this many periods per cadence are billed per tick (a long downtime is
/// caught up over several ticks).
pub const MAX_PERIODS_PER_TICK: usize = 48;

/// What one tick did for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scheduled {
    /// The period label.
    pub period: String,
    /// The attempt (1 for the first).
    pub attempt: u32,
    /// Invoices issued.
    pub issued: Vec<String>,
    /// The error, when the run failed (it is retried).
    pub error: Option<String>,
}

/// The scheduler's settings and its retry state (in memory: a restart retries at once).
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// How long after a period's end it is billed.
    pub grace: Duration,
    /// Delivery after each run (none: invoices wait for `udn control billing deliver`).
    pub delivery: Option<BillingConfig>,
    retries: BTreeMap<&'static str, (u32, Timestamp)>,
}

fn state_key(kind: PeriodKind) -> String {
    format!("schedule:{}", kind.as_str())
}

/// The delay before retry `attempt` (2, 3, ...): 5 s doubling, at most 10 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempt.saturating_sub(2).min(7));
    Duration::from_secs(secs.min(600))
}

impl Scheduler {
    /// A scheduler with `grace` and optional delivery.
    pub fn new(grace: Duration, delivery: Option<BillingConfig>) -> Self {
        Scheduler {
            grace,
            delivery,
            retries: BTreeMap::new(),
        }
    }

    /// Bills every period that is due at `now` (per cadence of the store's accounts,
    /// in order, from where the scheduler left off), then delivers.
    pub fn tick(
        &mut self,
        store: &mut dyn BillingStore,
        logs: &mut FileUsageSource<'_>,
        now: Timestamp,
    ) -> Result<Vec<Scheduled>> {
        let mut kinds: Vec<PeriodKind> =
            store.accounts()?.iter().map(|a| a.billing_period).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        let Some(edge) = now.as_millis().checked_sub(self.grace.as_millis() as u64) else {
            return Ok(Vec::new());
        };
        let edge = Timestamp::from_millis(edge);
        let mut out = Vec::new();
        let mut issued_any = false;
        for kind in kinds {
            // The latest period whose end plus the grace has passed.
            let latest = Period::containing(kind, edge)?.previous()?;
            let key = state_key(kind);
            let mut next = match store.state(&key)? {
                None => latest,
                Some(end) => Period::containing(kind, Timestamp::from_millis(end.max(0) as u64))?,
            };
            for _ in 0..MAX_PERIODS_PER_TICK {
                if next.start > latest.start {
                    break;
                }
                let (attempt, not_before) = self
                    .retries
                    .get(kind.as_str())
                    .copied()
                    .unwrap_or((1, Timestamp::from_millis(0)));
                if now < not_before {
                    break;
                }
                match logged_run(store, logs, &next, now, "scheduler", attempt) {
                    Ok(report) => {
                        self.retries.remove(kind.as_str());
                        store.set_state(&key, i64::try_from(next.end.as_millis())?)?;
                        issued_any |= !report.issued.is_empty();
                        out.push(Scheduled {
                            period: next.to_string(),
                            attempt,
                            issued: report.issued.into_iter().map(|i| i.number).collect(),
                            error: None,
                        });
                        next = next.next()?;
                    }
                    Err(e) => {
                        tracing::warn!(period = %next, attempt, "scheduled billing run failed: {e:#}");
                        self.retries.insert(
                            kind.as_str(),
                            (attempt + 1, now.plus(retry_delay(attempt + 1))),
                        );
                        out.push(Scheduled {
                            period: next.to_string(),
                            attempt,
                            issued: Vec::new(),
                            error: Some(format!("{e:#}")),
                        });
                        break;
                    }
                }
            }
        }
        if issued_any && let Some(c) = &self.delivery {
            match deliver_pending(store, &c.issuer, c.smtp.as_ref(), &c.print_dir, now) {
                Ok(r) => tracing::info!(?r, "delivered after a scheduled billing run"),
                Err(e) => tracing::warn!("delivery after a scheduled billing run: {e:#}"),
            }
        }
        Ok(out)
    }
}
