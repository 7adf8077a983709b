//! Where billing keeps its state: the [`BillingStore`] trait and its SQLite
//! implementation in tables named `billing_*`, so that it can share one database file
//! with the log store (the PostgreSQL implementation, with the same tables and
//! guarantees, is [`super::PgBillingStore`]; [`BillingLocation`] opens either).
//!
//! Issued invoices are immutable in the database itself: triggers refuse any change to
//! an invoice's content once it has left `draft`, and refuse deleting it; only its
//! status may move on (`issued -> paid | void`, or `credited` when a credit note
//! cancels it). Numbers come from a per-series counter that is advanced in the same
//! transaction that issues the invoice, so numbers are gap-free and in issue order, and
//! a unique index allows at most one issued or paid invoice per account and period, so
//! two runs racing on one database cannot both invoice the same account.

use anyhow::{Context as _, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension as _, params};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::str::FromStr as _;
pub use udn_billing::lifecycle::{DocKind, InvoiceInputs, Payment, Status, StoredInvoice};
pub(super) use udn_billing::lifecycle::{check_payable, check_voidable, credit_note_for};
use udn_billing::usage::Applied;
use udn_billing::{
    Account, Invoice, Metric, Period, PlanBook, Timestamp, UsageBatch, UsageTotals,
    period::BUCKET_MS,
};

/// How a delivery attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by the SMTP server.
    Sent,
    /// The SMTP attempt failed (it is retried by the next delivery pass).
    Failed,
    /// A printable document was written for posting.
    Printable,
}

impl DeliveryStatus {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Printable => "printable",
        }
    }
    pub(super) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "sent" => DeliveryStatus::Sent,
            "failed" => DeliveryStatus::Failed,
            "printable" => DeliveryStatus::Printable,
            _ => bail!("unknown delivery status {s:?}"),
        })
    }
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLog {
    /// Invoice number.
    pub invoice: String,
    /// `email` or `post`.
    pub channel: String,
    /// E-mail address, or the path of the printable document.
    pub recipient: String,
    /// Outcome.
    pub status: DeliveryStatus,
    /// Server response or error text.
    pub detail: String,
    /// When.
    pub at: Timestamp,
}

/// The state billing needs. Two implementations ship: [`SqliteBillingStore`] and
/// [`super::PgBillingStore`], with the same tables and the same guarantees.
pub trait BillingStore {
    /// Inserts or replaces an account (invoices keep their own snapshot).
    fn put_account(&mut self, account: &Account) -> Result<()>;
    /// One account.
    fn account(&self, id: &str) -> Result<Option<Account>>;
    /// Every account, by id.
    fn accounts(&self) -> Result<Vec<Account>>;
    /// Adds a plan version; versions are immutable, so re-adding one with other content
    /// is an error.
    fn put_plan(&mut self, plan: &udn_billing::Plan) -> Result<()>;
    /// Every plan version.
    fn plans(&self) -> Result<PlanBook>;
    /// Records a usage batch once (idempotency key); a replay changes nothing.
    fn record_usage(&mut self, batch: &UsageBatch) -> Result<Applied>;
    /// Usage of an account in the 5-minute buckets starting in `[from, to)`: the totals,
    /// and the bandwidth samples (one per bucket) if `with_samples`, else none.
    fn usage_totals(
        &self,
        account: &str,
        from: Timestamp,
        to: Timestamp,
        with_samples: bool,
    ) -> Result<UsageTotals>;
    /// The non-cancelled invoice (draft, issued or paid) of an account for a period.
    fn live_invoice(&self, account: &str, period: &Period) -> Result<Option<StoredInvoice>>;
    /// Stores a draft, replacing an earlier draft of the same account and period.
    fn put_draft(&mut self, invoice: &Invoice, inputs: &InvoiceInputs) -> Result<i64>;
    /// Issues a draft: assigns the next number of its series and the due date, in one
    /// transaction. Returns the number.
    fn issue(&mut self, id: i64, now: Timestamp, due: Timestamp) -> Result<String>;
    /// An invoice or credit note by number.
    fn invoice(&self, number: &str) -> Result<Option<StoredInvoice>>;
    /// Every numbered document, by number order within each series.
    fn issued(&self) -> Result<Vec<StoredInvoice>>;
    /// Voids an issued, unpaid invoice.
    fn void(&mut self, number: &str, now: Timestamp) -> Result<()>;
    /// Issues a credit note cancelling an issued or paid invoice; returns its number.
    fn credit(&mut self, number: &str, now: Timestamp) -> Result<String>;
    /// Records a payment; marks the invoice paid once payments cover its total.
    fn record_payment(&mut self, payment: &Payment) -> Result<Status>;
    /// Payments of an invoice.
    fn payments(&self, number: &str) -> Result<Vec<Payment>>;
    /// Appends to the delivery log.
    fn log_delivery(&mut self, entry: &DeliveryLog) -> Result<()>;
    /// The delivery log of an invoice, oldest first.
    fn deliveries(&self, number: &str) -> Result<Vec<DeliveryLog>>;
    /// The `received_at` (ms) of the newest log file whose usage was recorded (0 when
    /// none): usage ingestion re-reads the log store from a margin before it.
    fn ingest_mark(&self) -> Result<i64>;
    /// Moves the ingest mark forward to `ms` (never back).
    fn set_ingest_mark(&mut self, ms: i64) -> Result<()>;
    /// Notes that usage of an account's already invoiced `period` arrived late: the
    /// next invoice of the account bills it as an adjustment.
    fn mark_late(&mut self, account: &str, period: &Period) -> Result<()>;
    /// The periods of an account with late usage not yet put on an invoice.
    fn late_periods(&self, account: &str) -> Result<Vec<Period>>;
    /// Forgets a late mark (its usage is on an issued invoice now).
    fn clear_late(&mut self, account: &str, period: &Period) -> Result<()>;
    /// Takes the lock that serializes billing runs across processes (a PostgreSQL
    /// advisory lock held by this connection; SQLite: an exclusive file lock beside the
    /// database file).
    fn lock_runs(&mut self) -> Result<()>;
    /// Releases [`BillingStore::lock_runs`].
    fn unlock_runs(&mut self) -> Result<()>;
    /// A named counter of billing's own (the scheduler's progress per cadence).
    fn state(&self, name: &str) -> Result<Option<i64>>;
    /// Sets [`BillingStore::state`].
    fn set_state(&mut self, name: &str, value: i64) -> Result<()>;
    /// Appends a run to the run log.
    fn log_run(&mut self, run: &RunRecord) -> Result<()>;
    /// The newest `limit` runs, newest first.
    fn runs(&self, limit: u32) -> Result<Vec<RunRecord>>;
}

/// One billing run as logged (`billing_runs`): who started it, what it did or why it
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// The period label.
    pub period: String,
    /// `cli`, `api` or `scheduler`.
    pub trigger: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// Attempt number for the scheduler's retries of one period (1 for the first).
    pub attempt: u32,
    /// `ok`, `partial` (some accounts failed) or `failed`.
    pub outcome: String,
    /// The run report (JSON), or the error.
    pub detail: String,
}

/// A boxed store is a store (what [`BillingLocation::open`] returns can be passed
/// wherever a `&mut dyn BillingStore` is wanted).
impl<T: BillingStore + ?Sized> BillingStore for Box<T> {
    fn put_account(&mut self, account: &Account) -> Result<()> {
        (**self).put_account(account)
    }
    fn account(&self, id: &str) -> Result<Option<Account>> {
        (**self).account(id)
    }
    fn accounts(&self) -> Result<Vec<Account>> {
        (**self).accounts()
    }
    fn put_plan(&mut self, plan: &udn_billing::Plan) -> Result<()> {
        (**self).put_plan(plan)
    }
    fn plans(&self) -> Result<PlanBook> {
        (**self).plans()
    }
    fn record_usage(&mut self, batch: &UsageBatch) -> Result<Applied> {
        (**self).record_usage(batch)
    }
    fn usage_totals(
        &self,
        account: &str,
        from: Timestamp,
        to: Timestamp,
        with_samples: bool,
    ) -> Result<UsageTotals> {
        (**self).usage_totals(account, from, to, with_samples)
    }
    fn live_invoice(&self, account: &str, period: &Period) -> Result<Option<StoredInvoice>> {
        (**self).live_invoice(account, period)
    }
    fn put_draft(&mut self, invoice: &Invoice, inputs: &InvoiceInputs) -> Result<i64> {
        (**self).put_draft(invoice, inputs)
    }
    fn issue(&mut self, id: i64, now: Timestamp, due: Timestamp) -> Result<String> {
        (**self).issue(id, now, due)
    }
    fn invoice(&self, number: &str) -> Result<Option<StoredInvoice>> {
        (**self).invoice(number)
    }
    fn issued(&self) -> Result<Vec<StoredInvoice>> {
        (**self).issued()
    }
    fn void(&mut self, number: &str, now: Timestamp) -> Result<()> {
        (**self).void(number, now)
    }
    fn credit(&mut self, number: &str, now: Timestamp) -> Result<String> {
        (**self).credit(number, now)
    }
    fn record_payment(&mut self, payment: &Payment) -> Result<Status> {
        (**self).record_payment(payment)
    }
    fn payments(&self, number: &str) -> Result<Vec<Payment>> {
        (**self).payments(number)
    }
    fn log_delivery(&mut self, entry: &DeliveryLog) -> Result<()> {
        (**self).log_delivery(entry)
    }
    fn deliveries(&self, number: &str) -> Result<Vec<DeliveryLog>> {
        (**self).deliveries(number)
    }
    fn ingest_mark(&self) -> Result<i64> {
        (**self).ingest_mark()
    }
    fn set_ingest_mark(&mut self, ms: i64) -> Result<()> {
        (**self).set_ingest_mark(ms)
    }
    fn mark_late(&mut self, account: &str, period: &Period) -> Result<()> {
        (**self).mark_late(account, period)
    }
    fn late_periods(&self, account: &str) -> Result<Vec<Period>> {
        (**self).late_periods(account)
    }
    fn clear_late(&mut self, account: &str, period: &Period) -> Result<()> {
        (**self).clear_late(account, period)
    }
    fn lock_runs(&mut self) -> Result<()> {
        (**self).lock_runs()
    }
    fn unlock_runs(&mut self) -> Result<()> {
        (**self).unlock_runs()
    }
    fn state(&self, name: &str) -> Result<Option<i64>> {
        (**self).state(name)
    }
    fn set_state(&mut self, name: &str, value: i64) -> Result<()> {
        (**self).set_state(name, value)
    }
    fn log_run(&mut self, run: &RunRecord) -> Result<()> {
        (**self).log_run(run)
    }
    fn runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        (**self).runs(limit)
    }
}

/// Where the billing tables live: an SQLite file (shared with the log store) or a
/// PostgreSQL database (shared with the log store and the control plane's tables).
#[derive(Clone, PartialEq, Eq)]
pub enum BillingLocation {
    /// The SQLite file at this path ([`SqliteBillingStore`]).
    Sqlite(std::path::PathBuf),
    /// The PostgreSQL database at this URL ([`super::PgBillingStore`]).
    Postgres(String),
}

impl std::fmt::Debug for BillingLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BillingLocation::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            // The URL may carry a password: never print it.
            BillingLocation::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

impl BillingLocation {
    /// Opens the log store in the same place (the SQLite file, or the PostgreSQL
    /// database): what billing runs and audits read usage from.
    pub fn open_logs(&self) -> Result<Box<dyn crate::logs::Store>> {
        Ok(match self {
            BillingLocation::Sqlite(path) => Box::new(
                crate::logs::sqlite::SqliteStore::open_file(path, None)
                    .with_context(|| format!("opening the log store in {}", path.display()))?,
            ),
            BillingLocation::Postgres(url) => Box::new(
                crate::logs::postgres::PgStore::connect(url)
                    .context("opening the log store in PostgreSQL")?,
            ),
        })
    }

    /// Opens the store, creating the billing tables if needed. With PostgreSQL this
    /// blocks on the network: call it from a blocking thread, never from an async task.
    pub fn open(&self) -> Result<Box<dyn BillingStore + Send>> {
        Ok(match self {
            BillingLocation::Sqlite(path) => Box::new(SqliteBillingStore::open(path)?),
            BillingLocation::Postgres(url) => Box::new(super::PgBillingStore::connect(url)?),
        })
    }
}

/// [`BillingStore`] on SQLite (rusqlite, bundled SQLite).
pub struct SqliteBillingStore {
    conn: Connection,
    /// The run lock while held: an exclusive lock on `<database>.billing-runs.lock`.
    run_lock: Option<std::fs::File>,
}

/// Billing's schema on both dialects for [`crate::migrate`] (append-only steps; the
/// first ones are written to run harmlessly over the tables of a database made before
/// versioned migrations).
pub const BILLING_SCHEMA: crate::migrate::Schema = crate::migrate::Schema {
    store: "billing",
    history: "udn_billing_schema_history",
    pg_lock: 7012,
    sqlite: &[crate::migrate::Step {
        version: 1,
        name: "initial",
        sql: SCHEMA,
    }],
    postgres: &[crate::migrate::Step {
        version: 1,
        name: "initial",
        sql: super::pg::SCHEMA,
    }],
    legacy: crate::migrate::Legacy::None,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS billing_accounts (
  id TEXT PRIMARY KEY,
  doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_plans (
  id TEXT NOT NULL,
  version INTEGER NOT NULL,
  doc TEXT NOT NULL,
  PRIMARY KEY (id, version)
);
CREATE TABLE IF NOT EXISTS billing_usage_batches (
  key TEXT PRIMARY KEY,
  fingerprint INTEGER NOT NULL,
  records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_usage (
  account TEXT NOT NULL,
  bucket INTEGER NOT NULL,
  metric TEXT NOT NULL,
  region TEXT NOT NULL,
  quantity INTEGER NOT NULL,
  PRIMARY KEY (account, bucket, metric, region)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS billing_sequences (
  series TEXT PRIMARY KEY,
  last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_invoices (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  number TEXT UNIQUE,
  account TEXT NOT NULL,
  period TEXT NOT NULL,
  currency TEXT NOT NULL,
  total TEXT NOT NULL,
  status TEXT NOT NULL,
  document TEXT NOT NULL,
  inputs TEXT NOT NULL,
  issued_at INTEGER,
  due_at INTEGER,
  credits TEXT
);
CREATE INDEX IF NOT EXISTS billing_invoices_account_period
  ON billing_invoices (account, period);
CREATE UNIQUE INDEX IF NOT EXISTS billing_invoices_one_live
  ON billing_invoices (account, period)
  WHERE kind = 'invoice' AND status IN ('issued', 'paid');
CREATE TRIGGER IF NOT EXISTS billing_invoices_immutable
  BEFORE UPDATE OF kind, number, account, period, currency, total, document, inputs,
                   issued_at, due_at, credits ON billing_invoices
  WHEN OLD.status <> 'draft'
  BEGIN SELECT RAISE(ABORT, 'an issued invoice is immutable'); END;
CREATE TRIGGER IF NOT EXISTS billing_invoices_no_delete
  BEFORE DELETE ON billing_invoices
  WHEN OLD.status <> 'draft'
  BEGIN SELECT RAISE(ABORT, 'an issued invoice cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS billing_invoices_status
  BEFORE UPDATE OF status ON billing_invoices
  WHEN NOT ((OLD.status = 'draft' AND NEW.status = 'issued')
         OR (OLD.status = 'issued' AND NEW.status IN ('paid', 'void', 'credited'))
         OR (OLD.status = 'paid' AND NEW.status = 'credited'))
  BEGIN SELECT RAISE(ABORT, 'invalid invoice status transition'); END;
CREATE TABLE IF NOT EXISTS billing_payments (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  invoice TEXT NOT NULL REFERENCES billing_invoices(number),
  amount TEXT NOT NULL,
  method TEXT NOT NULL,
  reference TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  invoice TEXT NOT NULL REFERENCES billing_invoices(number),
  channel TEXT NOT NULL,
  recipient TEXT NOT NULL,
  status TEXT NOT NULL,
  detail TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS billing_payments_append_only_u
  BEFORE UPDATE ON billing_payments
  BEGIN SELECT RAISE(ABORT, 'the payment log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS billing_payments_append_only_d
  BEFORE DELETE ON billing_payments
  BEGIN SELECT RAISE(ABORT, 'the payment log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS billing_deliveries_append_only_u
  BEFORE UPDATE ON billing_deliveries
  BEGIN SELECT RAISE(ABORT, 'the delivery log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS billing_deliveries_append_only_d
  BEFORE DELETE ON billing_deliveries
  BEGIN SELECT RAISE(ABORT, 'the delivery log is append-only'); END;
CREATE TABLE IF NOT EXISTS billing_state (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_late (
  account TEXT NOT NULL,
  period TEXT NOT NULL,
  PRIMARY KEY (account, period)
);
CREATE TABLE IF NOT EXISTS billing_runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  period TEXT NOT NULL,
  trigger TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  finished_at INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  detail TEXT NOT NULL
);
"#;

pub(super) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(|v| Timestamp::from_millis(v.max(0) as u64))
}

pub(super) fn ms(t: Timestamp) -> Result<i64> {
    i64::try_from(t.as_millis()).context("timestamp out of range")
}

pub(super) const INVOICE_COLS: &str =
    "id, kind, number, status, document, inputs, issued_at, due_at, credits";

fn invoice_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawInvoice> {
    Ok(RawInvoice {
        id: row.get(0)?,
        kind: row.get(1)?,
        number: row.get(2)?,
        status: row.get(3)?,
        document: row.get(4)?,
        inputs: row.get(5)?,
        issued_at: row.get(6)?,
        due_at: row.get(7)?,
        credits: row.get(8)?,
    })
}

/// An invoice row as stored ([`INVOICE_COLS`]), before decoding; both stores read
/// their rows into it.
pub(super) struct RawInvoice {
    pub(super) id: i64,
    pub(super) kind: String,
    pub(super) number: Option<String>,
    pub(super) status: String,
    pub(super) document: String,
    pub(super) inputs: String,
    pub(super) issued_at: Option<i64>,
    pub(super) due_at: Option<i64>,
    pub(super) credits: Option<String>,
}

impl RawInvoice {
    pub(super) fn decode(self) -> Result<StoredInvoice> {
        Ok(StoredInvoice {
            id: self.id,
            kind: DocKind::parse(&self.kind)?,
            number: self.number,
            status: Status::parse(&self.status)?,
            invoice: serde_json::from_str(&self.document).context("stored invoice document")?,
            inputs: serde_json::from_str(&self.inputs).context("stored invoice inputs")?,
            issued_at: ts(self.issued_at),
            due_at: ts(self.due_at),
            credits: self.credits,
        })
    }
}

// ---- What both stores share: everything that is not SQL. ----

/// Whether a plan version must be inserted: `false` when the same version is stored
/// with the same content (a replay), an error when it is stored with other content.
pub(super) fn plan_needs_insert(
    plan: &udn_billing::Plan,
    doc: &str,
    stored: Option<&str>,
) -> Result<bool> {
    match stored {
        Some(old) if old == doc => Ok(false),
        Some(_) => bail!(
            "plan {} version {} exists with other content: plan versions are immutable, add version {}",
            plan.id,
            plan.version,
            plan.version + 1
        ),
        None => Ok(true),
    }
}

/// A usage batch whose key is already recorded with fingerprint `seen`: a replay when
/// the content is the same, a conflict otherwise.
pub(super) fn replay_or_conflict(batch: &UsageBatch, seen: i64) -> Result<Applied> {
    if seen == batch_fingerprint(batch) {
        return Ok(Applied::Replay);
    }
    Err(udn_billing::Error::BatchConflict {
        key: batch.key.clone(),
    }
    .into())
}

/// A batch's fingerprint as stored (the `u64` bits in a signed 64-bit column).
pub(super) fn batch_fingerprint(batch: &UsageBatch) -> i64 {
    batch.fingerprint() as i64
}

/// One usage record's row: its 5-minute bucket and its quantity as stored.
pub(super) fn usage_row(r: &udn_billing::UsageRecord) -> Result<(i64, i64)> {
    let q = i64::try_from(r.quantity).context("usage quantity above 2^63")?;
    Ok(((r.at.as_millis() / BUCKET_MS) as i64, q))
}

/// Folds the usage rows of one account in `[from, to)` into [`UsageTotals`]: the few
/// distinct (metric, region) pairs are searched linearly without allocating, and the
/// bandwidth samples (one per bucket) are kept if asked for.
pub(super) struct UsageFold {
    b0: u64,
    b1: u64,
    with_samples: bool,
    totals: UsageTotals,
    sums: Vec<(Metric, String, u64)>,
}

impl UsageFold {
    pub(super) fn new(from: Timestamp, to: Timestamp, with_samples: bool) -> Self {
        let b0 = from.as_millis().div_ceil(BUCKET_MS);
        let b1 = to.as_millis().div_ceil(BUCKET_MS);
        let buckets = b1.saturating_sub(b0) as usize;
        UsageFold {
            b0,
            b1,
            with_samples,
            totals: UsageTotals::zero(if with_samples { buckets } else { 0 }),
            sums: Vec::new(),
        }
    }

    /// The bucket range to read, `[first, end)`.
    pub(super) fn buckets(&self) -> (i64, i64) {
        (self.b0 as i64, self.b1 as i64)
    }

    /// Adds one stored row.
    pub(super) fn add(&mut self, bucket: i64, metric: &str, region: &str, q: i64) -> Result<()> {
        let metric =
            Metric::from_name(metric).ok_or_else(|| anyhow!("unknown metric {metric:?}"))?;
        let q = u64::try_from(q).context("negative usage quantity")?;
        match self
            .sums
            .iter_mut()
            .find(|(m, reg, _)| *m == metric && reg == region)
        {
            Some((_, _, sum)) => *sum = sum.saturating_add(q),
            None => self.sums.push((metric, region.to_owned(), q)),
        }
        if self.with_samples && metric == Metric::BytesDelivered {
            let i = (bucket as u64).saturating_sub(self.b0) as usize;
            if let Some(s) = self.totals.bandwidth.get_mut(i) {
                *s = s.saturating_add(q);
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> UsageTotals {
        self.totals.counters = self.sums.into_iter().map(|(m, r, q)| ((m, r), q)).collect();
        self.totals
    }
}

/// Whether the stored payment amounts (decimal text) cover `total`.
pub(super) fn paid_in_full(
    amounts: impl IntoIterator<Item = String>,
    total: Decimal,
) -> Result<bool> {
    let mut paid = Decimal::ZERO;
    for a in amounts {
        paid += Decimal::from_str(&a).context("stored payment amount")?;
    }
    Ok(paid >= total)
}

/// A payment row (`amount, method, reference, at`) of invoice `number`.
pub(super) fn payment_row(
    number: &str,
    amount: &str,
    method: String,
    reference: String,
    at: i64,
) -> Result<Payment> {
    Ok(Payment {
        invoice: number.to_owned(),
        amount: Decimal::from_str(amount).context("stored payment amount")?,
        method,
        reference,
        at: Timestamp::from_millis(at.max(0) as u64),
    })
}

/// A delivery-log row (`channel, recipient, status, detail, at`) of invoice `number`.
pub(super) fn delivery_row(
    number: &str,
    channel: String,
    recipient: String,
    status: &str,
    detail: String,
    at: i64,
) -> Result<DeliveryLog> {
    Ok(DeliveryLog {
        invoice: number.to_owned(),
        channel,
        recipient,
        status: DeliveryStatus::parse(status)?,
        detail,
        at: Timestamp::from_millis(at.max(0) as u64),
    })
}

/// The document number for counter value `n` of `kind`'s series: `INV-000042`.
pub(super) fn format_number(kind: DocKind, n: i64) -> String {
    format!("{}-{n:06}", kind.series())
}

impl SqliteBillingStore {
    /// Opens (creating if needed) the billing tables in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening billing database {}", path.display()))?;
        Self::with_connection(conn)
    }

    /// Uses an open connection (for example the log store's), creating the tables.
    pub fn with_connection(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .context("configuring SQLite")?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
            .context("configuring SQLite")?;
        crate::migrate::sqlite(&mut conn, &BILLING_SCHEMA)?;
        Ok(SqliteBillingStore {
            conn,
            run_lock: None,
        })
    }

    /// The connection (for tests and for sharing with the log store).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn one(&self, sql: &str, p: impl rusqlite::Params) -> Result<Option<StoredInvoice>> {
        self.conn
            .query_row(sql, p, invoice_row)
            .optional()?
            .map(RawInvoice::decode)
            .transpose()
    }

    /// A transaction that takes the write lock at BEGIN, so that it waits for other
    /// writers (busy timeout) instead of failing when it upgrades from reading.
    fn write_tx(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    fn need(&self, number: &str) -> Result<StoredInvoice> {
        self.invoice(number)?
            .ok_or_else(|| anyhow!("no invoice numbered {number}"))
    }
}

impl BillingStore for SqliteBillingStore {
    fn put_account(&mut self, account: &Account) -> Result<()> {
        account.validate()?;
        self.conn.execute(
            "INSERT INTO billing_accounts (id, doc) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            params![account.id, serde_json::to_string(account)?],
        )?;
        Ok(())
    }

    fn account(&self, id: &str) -> Result<Option<Account>> {
        let doc: Option<String> = self
            .conn
            .query_row(
                "SELECT doc FROM billing_accounts WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        doc.map(|d| serde_json::from_str(&d).context("stored account"))
            .transpose()
    }

    fn accounts(&self) -> Result<Vec<Account>> {
        let mut st = self
            .conn
            .prepare("SELECT doc FROM billing_accounts ORDER BY id")?;
        let docs = st.query_map([], |r| r.get::<_, String>(0))?;
        docs.map(|d| serde_json::from_str(&d?).context("stored account"))
            .collect()
    }

    fn put_plan(&mut self, plan: &udn_billing::Plan) -> Result<()> {
        plan.validate()?;
        let doc = serde_json::to_string(plan)?;
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT doc FROM billing_plans WHERE id = ?1 AND version = ?2",
                params![plan.id, plan.version],
                |r| r.get(0),
            )
            .optional()?;
        if plan_needs_insert(plan, &doc, existing.as_deref())? {
            self.conn.execute(
                "INSERT INTO billing_plans (id, version, doc) VALUES (?1, ?2, ?3)",
                params![plan.id, plan.version, doc],
            )?;
        }
        Ok(())
    }

    fn plans(&self) -> Result<PlanBook> {
        let mut st = self.conn.prepare("SELECT doc FROM billing_plans")?;
        let docs = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut book = PlanBook::new();
        for d in docs {
            book.insert(serde_json::from_str(&d?).context("stored plan")?)?;
        }
        Ok(book)
    }

    fn record_usage(&mut self, batch: &UsageBatch) -> Result<Applied> {
        let fp = batch_fingerprint(batch);
        let tx = self.write_tx()?;
        let seen: Option<i64> = tx
            .query_row(
                "SELECT fingerprint FROM billing_usage_batches WHERE key = ?1",
                [&batch.key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(seen) = seen {
            return replay_or_conflict(batch, seen);
        }
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO billing_usage (account, bucket, metric, region, quantity)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account, bucket, metric, region)
                 DO UPDATE SET quantity = quantity + excluded.quantity",
            )?;
            for r in &batch.records {
                let (bucket, q) = usage_row(r)?;
                up.execute(params![r.account, bucket, r.metric.as_str(), r.region, q])?;
            }
        }
        tx.execute(
            "INSERT INTO billing_usage_batches (key, fingerprint, records) VALUES (?1, ?2, ?3)",
            params![batch.key, fp, batch.records.len() as i64],
        )?;
        tx.commit()?;
        Ok(Applied::New)
    }

    fn usage_totals(
        &self,
        account: &str,
        from: Timestamp,
        to: Timestamp,
        with_samples: bool,
    ) -> Result<UsageTotals> {
        let mut fold = UsageFold::new(from, to, with_samples);
        let (b0, b1) = fold.buckets();
        // One range scan of the primary key (account, bucket, metric, region), folded
        // here: faster than two GROUP BY queries, which make SQLite sort.
        let mut st = self.conn.prepare_cached(
            "SELECT bucket, metric, region, quantity FROM billing_usage
             WHERE account = ?1 AND bucket >= ?2 AND bucket < ?3",
        )?;
        let mut rows = st.query(params![account, b0, b1])?;
        while let Some(r) = rows.next()? {
            fold.add(
                r.get(0)?,
                r.get_ref(1)?.as_str()?,
                r.get_ref(2)?.as_str()?,
                r.get(3)?,
            )?;
        }
        Ok(fold.finish())
    }

    fn live_invoice(&self, account: &str, period: &Period) -> Result<Option<StoredInvoice>> {
        self.one(
            &format!(
                "SELECT {INVOICE_COLS} FROM billing_invoices
                 WHERE account = ?1 AND period = ?2 AND kind = 'invoice'
                   AND status IN ('draft', 'issued', 'paid')
                 ORDER BY status = 'draft' LIMIT 1"
            ),
            params![account, period.to_string()],
        )
    }

    fn put_draft(&mut self, invoice: &Invoice, inputs: &InvoiceInputs) -> Result<i64> {
        let tx = self.write_tx()?;
        tx.execute(
            "DELETE FROM billing_invoices WHERE account = ?1 AND period = ?2 AND status = 'draft'",
            params![invoice.account, invoice.period.to_string()],
        )?;
        tx.execute(
            "INSERT INTO billing_invoices (kind, account, period, currency, total, status, document, inputs)
             VALUES ('invoice', ?1, ?2, ?3, ?4, 'draft', ?5, ?6)",
            params![
                invoice.account,
                invoice.period.to_string(),
                invoice.currency.code(),
                invoice.total.to_string(),
                serde_json::to_string(invoice)?,
                serde_json::to_string(inputs)?,
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    fn issue(&mut self, id: i64, now: Timestamp, due: Timestamp) -> Result<String> {
        let tx = self.write_tx()?;
        let kind: String = tx
            .query_row(
                "SELECT kind FROM billing_invoices WHERE id = ?1 AND status = 'draft'",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| anyhow!("no draft with id {id}"))?;
        let number = next_number(&tx, DocKind::parse(&kind)?)?;
        tx.execute(
            "UPDATE billing_invoices SET number = ?2, issued_at = ?3, due_at = ?4 WHERE id = ?1",
            params![id, number, ms(now)?, ms(due)?],
        )?;
        tx.execute(
            "UPDATE billing_invoices SET status = 'issued' WHERE id = ?1",
            [id],
        )?;
        tx.commit()?;
        Ok(number)
    }

    fn invoice(&self, number: &str) -> Result<Option<StoredInvoice>> {
        self.one(
            &format!("SELECT {INVOICE_COLS} FROM billing_invoices WHERE number = ?1"),
            [number],
        )
    }

    fn issued(&self) -> Result<Vec<StoredInvoice>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {INVOICE_COLS} FROM billing_invoices WHERE number IS NOT NULL ORDER BY kind, length(number), number"
        ))?;
        let rows = st.query_map([], invoice_row)?;
        rows.map(|r| r?.decode()).collect()
    }

    fn void(&mut self, number: &str, _now: Timestamp) -> Result<()> {
        let inv = self.need(number)?;
        let paid: i64 = self.conn.query_row(
            "SELECT count(*) FROM billing_payments WHERE invoice = ?1",
            [number],
            |r| r.get(0),
        )?;
        check_voidable(&inv, number, paid)?;
        self.conn.execute(
            "UPDATE billing_invoices SET status = 'void' WHERE number = ?1",
            [number],
        )?;
        Ok(())
    }

    fn credit(&mut self, number: &str, now: Timestamp) -> Result<String> {
        let inv = self.need(number)?;
        let note = credit_note_for(&inv, number)?;
        let tx = self.write_tx()?;
        let cn = next_number(&tx, DocKind::CreditNote)?;
        tx.execute(
            "INSERT INTO billing_invoices (kind, number, account, period, currency, total, status,
                 document, inputs, issued_at, due_at, credits)
             VALUES ('credit_note', ?1, ?2, ?3, ?4, ?5, 'draft', ?6, ?7, ?8, ?8, ?9)",
            params![
                cn,
                note.account,
                note.period.to_string(),
                note.currency.code(),
                note.total.to_string(),
                serde_json::to_string(&note)?,
                serde_json::to_string(&inv.inputs)?,
                ms(now)?,
                number,
            ],
        )?;
        tx.execute(
            "UPDATE billing_invoices SET status = 'issued' WHERE number = ?1",
            [&cn],
        )?;
        tx.execute(
            "UPDATE billing_invoices SET status = 'credited' WHERE number = ?1",
            [number],
        )?;
        tx.commit()?;
        Ok(cn)
    }

    fn record_payment(&mut self, p: &Payment) -> Result<Status> {
        let inv = self.need(&p.invoice)?;
        check_payable(&inv, p)?;
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO billing_payments (invoice, amount, method, reference, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.invoice, p.amount.to_string(), p.method, p.reference, ms(p.at)?],
        )?;
        let amounts = {
            let mut st = tx.prepare("SELECT amount FROM billing_payments WHERE invoice = ?1")?;
            st.query_map([&p.invoice], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        let status = if paid_in_full(amounts, inv.invoice.total)? {
            tx.execute(
                "UPDATE billing_invoices SET status = 'paid' WHERE number = ?1",
                [&p.invoice],
            )?;
            Status::Paid
        } else {
            Status::Issued
        };
        tx.commit()?;
        Ok(status)
    }

    fn payments(&self, number: &str) -> Result<Vec<Payment>> {
        let mut st = self.conn.prepare(
            "SELECT amount, method, reference, at FROM billing_payments WHERE invoice = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([number], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (amount, method, reference, at) = r?;
            payment_row(number, &amount, method, reference, at)
        })
        .collect()
    }

    fn log_delivery(&mut self, e: &DeliveryLog) -> Result<()> {
        self.conn.execute(
            "INSERT INTO billing_deliveries (invoice, channel, recipient, status, detail, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                e.invoice,
                e.channel,
                e.recipient,
                e.status.as_str(),
                e.detail,
                ms(e.at)?
            ],
        )?;
        Ok(())
    }

    fn deliveries(&self, number: &str) -> Result<Vec<DeliveryLog>> {
        let mut st = self.conn.prepare(
            "SELECT channel, recipient, status, detail, at FROM billing_deliveries
             WHERE invoice = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([number], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        rows.map(|r| {
            let (channel, recipient, status, detail, at) = r?;
            delivery_row(number, channel, recipient, &status, detail, at)
        })
        .collect()
    }

    fn ingest_mark(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM billing_state WHERE name = 'ingest_mark'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    fn set_ingest_mark(&mut self, ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO billing_state (name, value) VALUES ('ingest_mark', ?1)
             ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
            [ms],
        )?;
        Ok(())
    }

    fn mark_late(&mut self, account: &str, period: &Period) -> Result<()> {
        self.conn.execute(
            "INSERT INTO billing_late (account, period) VALUES (?1, ?2)
             ON CONFLICT (account, period) DO NOTHING",
            params![account, period.to_string()],
        )?;
        Ok(())
    }

    fn late_periods(&self, account: &str) -> Result<Vec<Period>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT period FROM billing_late WHERE account = ?1")?;
        let labels = st.query_map([account], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for l in labels {
            out.push(Period::parse(&l?)?);
        }
        out.sort_by_key(|p| p.start);
        Ok(out)
    }

    fn clear_late(&mut self, account: &str, period: &Period) -> Result<()> {
        self.conn.execute(
            "DELETE FROM billing_late WHERE account = ?1 AND period = ?2",
            params![account, period.to_string()],
        )?;
        Ok(())
    }

    /// An exclusive `flock` on `<database>.billing-runs.lock` beside the file, so the
    /// CLI and a running `udn control` on one SQLite file take turns (an in-memory
    /// database has nobody to share with). Blocks until the other run is done.
    fn lock_runs(&mut self) -> Result<()> {
        if self.run_lock.is_some() {
            return Ok(());
        }
        let Some(db) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        let path = format!("{db}.billing-runs.lock");
        self.run_lock = Some(crate::migrate::lock_file(Path::new(&path))?);
        Ok(())
    }

    fn unlock_runs(&mut self) -> Result<()> {
        if let Some(f) = self.run_lock.take() {
            f.unlock().context("unlocking the billing run lock")?;
        }
        Ok(())
    }

    fn state(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM billing_state WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn set_state(&mut self, name: &str, value: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO billing_state (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    fn log_run(&mut self, run: &RunRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO billing_runs (period, trigger, started_at, finished_at, attempt,
             outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run.period,
                run.trigger,
                ms(run.started_at)?,
                ms(run.finished_at)?,
                run.attempt,
                run.outcome,
                run.detail
            ],
        )?;
        Ok(())
    }

    fn runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, period, trigger, started_at, finished_at, attempt, outcome, detail
             FROM billing_runs ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit], |r| {
            Ok(RunRecord {
                id: r.get(0)?,
                period: r.get(1)?,
                trigger: r.get(2)?,
                started_at: Timestamp::from_millis(r.get::<_, i64>(3)?.max(0) as u64),
                finished_at: Timestamp::from_millis(r.get::<_, i64>(4)?.max(0) as u64),
                attempt: r.get(5)?,
                outcome: r.get(6)?,
                detail: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Advances the series counter inside the caller's transaction: the number is used by
/// exactly the document issued in that transaction, or not at all (rollback).
fn next_number(tx: &rusqlite::Transaction<'_>, kind: DocKind) -> Result<String> {
    let series = kind.series();
    tx.execute(
        "INSERT INTO billing_sequences (series, last) VALUES (?1, 1)
         ON CONFLICT (series) DO UPDATE SET last = last + 1",
        [series],
    )?;
    let n: i64 = tx.query_row(
        "SELECT last FROM billing_sequences WHERE series = ?1",
        [series],
        |r| r.get(0),
    )?;
    Ok(format_number(kind, n))
}
