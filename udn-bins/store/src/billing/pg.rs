//! [`BillingStore`] on PostgreSQL (through [`crate::pg`]): the same
//! `billing_*` tables, columns and guarantees as [`SqliteBillingStore`], so that billing
//! can live in the control plane's PostgreSQL database (`udn control --postgres URL`,
//! `udn control billing --postgres URL`). See [`SCHEMA`].
//!
//! * Issued invoices are immutable and the payment and delivery logs append-only in the
//!   database itself: PL/pgSQL trigger functions raise an exception on any change to an
//!   issued invoice's content, on deleting it, on an invalid status transition, and on
//!   any `UPDATE`, `DELETE` or `TRUNCATE` of the logs.
//! * Numbers are gap-free per series: the counter row is advanced with
//!   `INSERT … ON CONFLICT DO UPDATE … RETURNING` in the issuing transaction, which
//!   holds its row lock until commit, so concurrent issuers queue and a rolled-back
//!   issue consumes no number.
//! * The unique partial index `billing_invoices_one_live` allows one issued or paid
//!   invoice per account and period; the invoice row being issued, voided, credited or
//!   paid is locked (`SELECT … FOR UPDATE`) in the transaction that changes it.
//! * Decimal amounts are kept as `TEXT`, like in SQLite (exact, and the stores share
//!   their decoding).
//!
//! Every method blocks: call them from a blocking thread rather than from an async task.
//! Dropping the store blocks nothing and is safe anywhere.
//!
//! [`SqliteBillingStore`]: super::SqliteBillingStore

use super::store::*;
use crate::pg::{Client, Pool, Session as _, Transaction};
use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::HashMap;
use udn_billing::usage::Applied;
use udn_billing::{Account, Invoice, Period, PlanBook, Timestamp, UsageBatch, UsageTotals};

/// The billing tables in PostgreSQL: the same tables, columns and meanings as the
/// SQLite schema (times are milliseconds since the epoch in `BIGINT`, money is decimal
/// text). Requires PostgreSQL 14 or later (`CREATE OR REPLACE TRIGGER`).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS billing_accounts (
  id TEXT PRIMARY KEY,
  doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_plans (
  id TEXT NOT NULL,
  version BIGINT NOT NULL,
  doc TEXT NOT NULL,
  PRIMARY KEY (id, version)
);
CREATE TABLE IF NOT EXISTS billing_usage_batches (
  key TEXT PRIMARY KEY,
  fingerprint BIGINT NOT NULL,
  records BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_usage (
  account TEXT NOT NULL,
  bucket BIGINT NOT NULL,
  metric TEXT NOT NULL,
  region TEXT NOT NULL,
  quantity BIGINT NOT NULL,
  PRIMARY KEY (account, bucket, metric, region)
);
CREATE TABLE IF NOT EXISTS billing_sequences (
  series TEXT PRIMARY KEY,
  last BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_invoices (
  id BIGSERIAL PRIMARY KEY,
  kind TEXT NOT NULL,
  number TEXT UNIQUE,
  account TEXT NOT NULL,
  period TEXT NOT NULL,
  currency TEXT NOT NULL,
  total TEXT NOT NULL,
  status TEXT NOT NULL,
  document TEXT NOT NULL,
  inputs TEXT NOT NULL,
  issued_at BIGINT,
  due_at BIGINT,
  credits TEXT
);
CREATE INDEX IF NOT EXISTS billing_invoices_account_period
  ON billing_invoices (account, period);
CREATE UNIQUE INDEX IF NOT EXISTS billing_invoices_one_live
  ON billing_invoices (account, period)
  WHERE kind = 'invoice' AND status IN ('issued', 'paid');
CREATE OR REPLACE FUNCTION billing_invoices_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    IF EXISTS (SELECT 1 FROM billing_invoices WHERE status <> 'draft') THEN
      RAISE EXCEPTION 'an issued invoice cannot be deleted';
    END IF;
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN
    IF OLD.status <> 'draft' THEN
      RAISE EXCEPTION 'an issued invoice cannot be deleted';
    END IF;
    RETURN OLD;
  END IF;
  IF OLD.status <> 'draft' AND
     (NEW.kind, NEW.number, NEW.account, NEW.period, NEW.currency, NEW.total,
      NEW.document, NEW.inputs, NEW.issued_at, NEW.due_at, NEW.credits)
     IS DISTINCT FROM
     (OLD.kind, OLD.number, OLD.account, OLD.period, OLD.currency, OLD.total,
      OLD.document, OLD.inputs, OLD.issued_at, OLD.due_at, OLD.credits) THEN
    RAISE EXCEPTION 'an issued invoice is immutable';
  END IF;
  IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
       (OLD.status = 'draft' AND NEW.status = 'issued')
    OR (OLD.status = 'issued' AND NEW.status IN ('paid', 'void', 'credited'))
    OR (OLD.status = 'paid' AND NEW.status = 'credited')) THEN
    RAISE EXCEPTION 'invalid invoice status transition';
  END IF;
  RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER billing_invoices_immutable
  BEFORE UPDATE OR DELETE ON billing_invoices
  FOR EACH ROW EXECUTE FUNCTION billing_invoices_guard();
CREATE OR REPLACE TRIGGER billing_invoices_no_truncate
  BEFORE TRUNCATE ON billing_invoices
  FOR EACH STATEMENT EXECUTE FUNCTION billing_invoices_guard();
CREATE TABLE IF NOT EXISTS billing_payments (
  id BIGSERIAL PRIMARY KEY,
  invoice TEXT NOT NULL REFERENCES billing_invoices(number),
  amount TEXT NOT NULL,
  method TEXT NOT NULL,
  reference TEXT NOT NULL,
  at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_deliveries (
  id BIGSERIAL PRIMARY KEY,
  invoice TEXT NOT NULL REFERENCES billing_invoices(number),
  channel TEXT NOT NULL,
  recipient TEXT NOT NULL,
  status TEXT NOT NULL,
  detail TEXT NOT NULL,
  at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_payments_invoice ON billing_payments (invoice);
CREATE INDEX IF NOT EXISTS billing_deliveries_invoice ON billing_deliveries (invoice);
CREATE OR REPLACE FUNCTION billing_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the % log is append-only', TG_ARGV[0];
END
$$;
CREATE OR REPLACE TRIGGER billing_payments_append_only
  BEFORE UPDATE OR DELETE ON billing_payments
  FOR EACH ROW EXECUTE FUNCTION billing_append_only('payment');
CREATE OR REPLACE TRIGGER billing_payments_no_truncate
  BEFORE TRUNCATE ON billing_payments
  FOR EACH STATEMENT EXECUTE FUNCTION billing_append_only('payment');
CREATE OR REPLACE TRIGGER billing_deliveries_append_only
  BEFORE UPDATE OR DELETE ON billing_deliveries
  FOR EACH ROW EXECUTE FUNCTION billing_append_only('delivery');
CREATE OR REPLACE TRIGGER billing_deliveries_no_truncate
  BEFORE TRUNCATE ON billing_deliveries
  FOR EACH STATEMENT EXECUTE FUNCTION billing_append_only('delivery');
CREATE TABLE IF NOT EXISTS billing_state (
  name TEXT PRIMARY KEY,
  value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS billing_late (
  account TEXT NOT NULL,
  period TEXT NOT NULL,
  PRIMARY KEY (account, period)
);
CREATE TABLE IF NOT EXISTS billing_runs (
  id BIGSERIAL PRIMARY KEY,
  period TEXT NOT NULL,
  trigger TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  finished_at BIGINT NOT NULL,
  attempt BIGINT NOT NULL,
  outcome TEXT NOT NULL,
  detail TEXT NOT NULL
);
"#;

// Advisory lock keys: migrating the billing tables takes 7012
// ([`super::store::BILLING_SCHEMA`]); the log store uses 7007, the control plane 7010 and
// 7011.
/// The advisory lock that serializes billing runs (usage ingestion, drafting, issuing)
/// across control planes sharing one database.
const LOCK_RUNS: i64 = 7013;

/// [`BillingStore`] in a PostgreSQL database: a pool of one connection (replaced by the
/// pool when the server closes it), used by one caller at a time (the trait's methods
/// are short transactions; open one store per thread for concurrency, as with SQLite).
pub struct PgBillingStore {
    pool: Pool,
}

impl std::fmt::Debug for PgBillingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it is not kept, and nothing of it is printed.
        f.write_str("PgBillingStore")
    }
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

fn invoice_row(r: &tokio_postgres::Row) -> RawInvoice {
    RawInvoice {
        id: r.get(0),
        kind: r.get(1),
        number: r.get(2),
        status: r.get(3),
        document: r.get(4),
        inputs: r.get(5),
        issued_at: r.get(6),
        due_at: r.get(7),
        credits: r.get(8),
    }
}

/// The invoice numbered `number`, its row locked until the transaction ends.
fn locked(tx: &mut Transaction<'_>, number: &str) -> Result<StoredInvoice> {
    tx.query_opt(
        &format!("SELECT {INVOICE_COLS} FROM billing_invoices WHERE number = $1 FOR UPDATE"),
        &[&number],
    )?
    .map(|r| invoice_row(&r).decode())
    .transpose()?
    .ok_or_else(|| anyhow!("no invoice numbered {number}"))
}

/// Advances the series counter inside the caller's transaction; the row stays locked
/// until that transaction ends, so the number is used by exactly the document issued in
/// it, or not at all (rollback), and concurrent issuers take numbers in commit order.
fn next_number(tx: &mut Transaction<'_>, kind: DocKind) -> Result<String> {
    let n: i64 = tx
        .query_one(
            "INSERT INTO billing_sequences (series, last) VALUES ($1, 1)
             ON CONFLICT (series) DO UPDATE SET last = billing_sequences.last + 1
             RETURNING last",
            &[&kind.series()],
        )?
        .get(0);
    Ok(format_number(kind, n))
}

/// Requires exactly one changed row.
fn one_row(n: u64, what: &str) -> Result<()> {
    if n != 1 {
        bail!("{what}: {n} rows changed, expected 1");
    }
    Ok(())
}

impl PgBillingStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`) and creates
    /// the billing tables if needed, under an advisory lock. The connection shows as
    /// `udn billing` in `pg_stat_activity` unless the URL names an `application_name`.
    ///
    /// ```no_run
    /// use udn_store::billing::{BillingStore, PgBillingStore};
    /// let store = PgBillingStore::connect("postgres://udn@127.0.0.1/udn")?;
    /// for i in store.issued()? {
    ///     println!("{:?} {} {}", i.number, i.invoice.account, i.invoice.total);
    /// }
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn connect(url: &str) -> Result<Self> {
        let pool = Pool::new(url, 1, Some("udn billing")).context("parsing the PostgreSQL URL")?;
        let mut client = pool.get().context("connecting to PostgreSQL")?;
        crate::migrate::postgres(&mut client, &super::store::BILLING_SCHEMA)?;
        Ok(PgBillingStore { pool })
    }

    /// The connection (an open one: the pool replaces one the server closed).
    fn conn(&self) -> Result<Client> {
        Ok(self.pool.get()?)
    }

    fn one(&self, sql: &str, p: &[Param<'_>]) -> Result<Option<StoredInvoice>> {
        self.conn()?
            .query_opt(sql, p)?
            .map(|r| invoice_row(&r).decode())
            .transpose()
    }
}

impl BillingStore for PgBillingStore {
    fn put_account(&mut self, account: &Account) -> Result<()> {
        account.validate()?;
        self.conn()?.execute(
            "INSERT INTO billing_accounts (id, doc) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            &[&account.id, &serde_json::to_string(account)?],
        )?;
        Ok(())
    }

    fn account(&self, id: &str) -> Result<Option<Account>> {
        self.conn()?
            .query_opt("SELECT doc FROM billing_accounts WHERE id = $1", &[&id])?
            .map(|r| serde_json::from_str(r.get(0)).context("stored account"))
            .transpose()
    }

    fn accounts(&self) -> Result<Vec<Account>> {
        self.conn()?
            .query(
                "SELECT doc FROM billing_accounts ORDER BY id COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| serde_json::from_str(r.get(0)).context("stored account"))
            .collect()
    }

    fn put_plan(&mut self, plan: &udn_billing::Plan) -> Result<()> {
        plan.validate()?;
        let doc = serde_json::to_string(plan)?;
        let version = i64::from(plan.version);
        let c = self.conn()?;
        // Insert first, then compare: two writers adding one version at once both end
        // up comparing against the row that won.
        c.execute(
            "INSERT INTO billing_plans (id, version, doc) VALUES ($1, $2, $3)
             ON CONFLICT (id, version) DO NOTHING",
            &[&plan.id, &version, &doc],
        )?;
        let stored: String = c
            .query_one(
                "SELECT doc FROM billing_plans WHERE id = $1 AND version = $2",
                &[&plan.id, &version],
            )?
            .get(0);
        plan_needs_insert(plan, &doc, Some(&stored))?;
        Ok(())
    }

    fn plans(&self) -> Result<PlanBook> {
        let mut book = PlanBook::new();
        for r in self.conn()?.query("SELECT doc FROM billing_plans", &[])? {
            book.insert(serde_json::from_str(r.get(0)).context("stored plan")?)?;
        }
        Ok(book)
    }

    fn record_usage(&mut self, batch: &UsageBatch) -> Result<Applied> {
        let fp = batch_fingerprint(batch);
        // Rows summed here first: one statement may not update a row twice.
        let mut sums: HashMap<(&str, i64, &str, &str), i64> = HashMap::new();
        for r in &batch.records {
            let (bucket, q) = usage_row(r)?;
            let e = sums
                .entry((&r.account, bucket, r.metric.as_str(), &r.region))
                .or_default();
            *e = e.checked_add(q).context("usage quantity above 2^63")?;
        }
        let (mut account, mut bucket, mut metric, mut region, mut quantity) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((a, b, m, r), q) in sums {
            account.push(a);
            bucket.push(b);
            metric.push(m);
            region.push(r);
            quantity.push(q);
        }
        let records = i64::try_from(batch.records.len()).context("batch too large")?;
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        // Claim the key first: a concurrent writer of the same key waits here for this
        // transaction, then sees the row and replays (or conflicts).
        let claimed = tx.execute(
            "INSERT INTO billing_usage_batches (key, fingerprint, records) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO NOTHING",
            &[&batch.key, &fp, &records],
        )?;
        if claimed == 0 {
            let seen: i64 = tx
                .query_one(
                    "SELECT fingerprint FROM billing_usage_batches WHERE key = $1",
                    &[&batch.key],
                )?
                .get(0);
            return replay_or_conflict(batch, seen);
        }
        tx.execute(
            "INSERT INTO billing_usage (account, bucket, metric, region, quantity)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
             ON CONFLICT (account, bucket, metric, region)
             DO UPDATE SET quantity = billing_usage.quantity + excluded.quantity",
            &[&account, &bucket, &metric, &region, &quantity],
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
        let rows = self.conn()?.query(
            "SELECT bucket, metric, region, quantity FROM billing_usage
             WHERE account = $1 AND bucket >= $2 AND bucket < $3",
            &[&account, &b0, &b1],
        )?;
        for r in &rows {
            fold.add(r.get(0), r.get(1), r.get(2), r.get(3))?;
        }
        Ok(fold.finish())
    }

    fn live_invoice(&self, account: &str, period: &Period) -> Result<Option<StoredInvoice>> {
        self.one(
            &format!(
                "SELECT {INVOICE_COLS} FROM billing_invoices
                 WHERE account = $1 AND period = $2 AND kind = 'invoice'
                   AND status IN ('draft', 'issued', 'paid')
                 ORDER BY status = 'draft' LIMIT 1"
            ),
            &[&account, &period.to_string()],
        )
    }

    fn put_draft(&mut self, invoice: &Invoice, inputs: &InvoiceInputs) -> Result<i64> {
        let period = invoice.period.to_string();
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        tx.execute(
            "DELETE FROM billing_invoices WHERE account = $1 AND period = $2 AND status = 'draft'",
            &[&invoice.account, &period],
        )?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO billing_invoices (kind, account, period, currency, total, status, document, inputs)
                 VALUES ('invoice', $1, $2, $3, $4, 'draft', $5, $6) RETURNING id",
                &[
                    &invoice.account,
                    &period,
                    &invoice.currency.code(),
                    &invoice.total.to_string(),
                    &serde_json::to_string(invoice)?,
                    &serde_json::to_string(inputs)?,
                ],
            )?
            .get(0);
        tx.commit()?;
        Ok(id)
    }

    fn issue(&mut self, id: i64, now: Timestamp, due: Timestamp) -> Result<String> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        // The draft's row is locked first, so a concurrent run cannot replace it while
        // it is being numbered (and a replaced draft is not numbered at all).
        let kind: String = tx
            .query_opt(
                "SELECT kind FROM billing_invoices WHERE id = $1 AND status = 'draft' FOR UPDATE",
                &[&id],
            )?
            .ok_or_else(|| anyhow!("no draft with id {id}"))?
            .get(0);
        let number = next_number(&mut tx, DocKind::parse(&kind)?)?;
        let n = tx.execute(
            "UPDATE billing_invoices SET number = $2, issued_at = $3, due_at = $4 WHERE id = $1",
            &[&id, &number, &ms(now)?, &ms(due)?],
        )?;
        one_row(n, "numbering the draft")?;
        // The unique index refuses a second live invoice for the account and period
        // here; the rollback gives the number back.
        tx.execute(
            "UPDATE billing_invoices SET status = 'issued' WHERE id = $1",
            &[&id],
        )?;
        tx.commit()?;
        Ok(number)
    }

    fn invoice(&self, number: &str) -> Result<Option<StoredInvoice>> {
        self.one(
            &format!("SELECT {INVOICE_COLS} FROM billing_invoices WHERE number = $1"),
            &[&number],
        )
    }

    fn issued(&self) -> Result<Vec<StoredInvoice>> {
        self.conn()?
            .query(
                &format!(
                    "SELECT {INVOICE_COLS} FROM billing_invoices WHERE number IS NOT NULL
                     ORDER BY kind, length(number), number COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(|r| invoice_row(r).decode())
            .collect()
    }

    fn void(&mut self, number: &str, _now: Timestamp) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let inv = locked(&mut tx, number)?;
        let paid: i64 = tx
            .query_one(
                "SELECT count(*) FROM billing_payments WHERE invoice = $1",
                &[&number],
            )?
            .get(0);
        check_voidable(&inv, number, paid)?;
        tx.execute(
            "UPDATE billing_invoices SET status = 'void' WHERE number = $1",
            &[&number],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn credit(&mut self, number: &str, now: Timestamp) -> Result<String> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let inv = locked(&mut tx, number)?;
        let note = credit_note_for(&inv, number)?;
        let cn = next_number(&mut tx, DocKind::CreditNote)?;
        let at = ms(now)?;
        tx.execute(
            "INSERT INTO billing_invoices (kind, number, account, period, currency, total, status,
                 document, inputs, issued_at, due_at, credits)
             VALUES ('credit_note', $1, $2, $3, $4, $5, 'draft', $6, $7, $8, $8, $9)",
            &[
                &cn,
                &note.account,
                &note.period.to_string(),
                &note.currency.code(),
                &note.total.to_string(),
                &serde_json::to_string(&note)?,
                &serde_json::to_string(&inv.inputs)?,
                &at,
                &number,
            ],
        )?;
        tx.execute(
            "UPDATE billing_invoices SET status = 'issued' WHERE number = $1",
            &[&cn],
        )?;
        tx.execute(
            "UPDATE billing_invoices SET status = 'credited' WHERE number = $1",
            &[&number],
        )?;
        tx.commit()?;
        Ok(cn)
    }

    fn record_payment(&mut self, p: &Payment) -> Result<Status> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let inv = locked(&mut tx, &p.invoice)?;
        check_payable(&inv, p)?;
        tx.execute(
            "INSERT INTO billing_payments (invoice, amount, method, reference, at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &p.invoice,
                &p.amount.to_string(),
                &p.method,
                &p.reference,
                &ms(p.at)?,
            ],
        )?;
        let amounts: Vec<String> = tx
            .query(
                "SELECT amount FROM billing_payments WHERE invoice = $1",
                &[&p.invoice],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let status = if paid_in_full(amounts, inv.invoice.total)? {
            tx.execute(
                "UPDATE billing_invoices SET status = 'paid' WHERE number = $1",
                &[&p.invoice],
            )?;
            Status::Paid
        } else {
            Status::Issued
        };
        tx.commit()?;
        Ok(status)
    }

    fn payments(&self, number: &str) -> Result<Vec<Payment>> {
        self.conn()?
            .query(
                "SELECT amount, method, reference, at FROM billing_payments
                 WHERE invoice = $1 ORDER BY id",
                &[&number],
            )?
            .iter()
            .map(|r| payment_row(number, r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    fn log_delivery(&mut self, e: &DeliveryLog) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO billing_deliveries (invoice, channel, recipient, status, detail, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &e.invoice,
                &e.channel,
                &e.recipient,
                &e.status.as_str(),
                &e.detail,
                &ms(e.at)?,
            ],
        )?;
        Ok(())
    }

    fn deliveries(&self, number: &str) -> Result<Vec<DeliveryLog>> {
        self.conn()?
            .query(
                "SELECT channel, recipient, status, detail, at FROM billing_deliveries
                 WHERE invoice = $1 ORDER BY id",
                &[&number],
            )?
            .iter()
            .map(|r| delivery_row(number, r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }

    fn ingest_mark(&self) -> Result<i64> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT value FROM billing_state WHERE name = 'ingest_mark'",
                &[],
            )?
            .map_or(0, |r| r.get(0)))
    }

    fn set_ingest_mark(&mut self, ms: i64) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO billing_state (name, value) VALUES ('ingest_mark', $1)
             ON CONFLICT (name) DO UPDATE
             SET value = GREATEST(billing_state.value, excluded.value)",
            &[&ms],
        )?;
        Ok(())
    }

    fn mark_late(&mut self, account: &str, period: &Period) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO billing_late (account, period) VALUES ($1, $2)
             ON CONFLICT (account, period) DO NOTHING",
            &[&account, &period.to_string()],
        )?;
        Ok(())
    }

    fn late_periods(&self, account: &str) -> Result<Vec<Period>> {
        let mut out = Vec::new();
        for r in self.conn()?.query(
            "SELECT period FROM billing_late WHERE account = $1",
            &[&account],
        )? {
            out.push(Period::parse(r.get(0))?);
        }
        out.sort_by_key(|p| p.start);
        Ok(out)
    }

    fn clear_late(&mut self, account: &str, period: &Period) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM billing_late WHERE account = $1 AND period = $2",
            &[&account, &period.to_string()],
        )?;
        Ok(())
    }

    fn lock_runs(&mut self) -> Result<()> {
        // Session-level: held across the run's transactions until unlock_runs, or
        // until the connection ends.
        self.conn()?
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_RUNS])?;
        Ok(())
    }

    fn unlock_runs(&mut self) -> Result<()> {
        self.conn()?
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_RUNS])?;
        Ok(())
    }

    fn state(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn()?
            .query_opt("SELECT value FROM billing_state WHERE name = $1", &[&name])?
            .map(|r| r.get(0)))
    }

    fn set_state(&mut self, name: &str, value: i64) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO billing_state (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )?;
        Ok(())
    }

    fn log_run(&mut self, run: &RunRecord) -> Result<()> {
        let attempt = i64::from(run.attempt);
        self.conn()?.execute(
            "INSERT INTO billing_runs (period, trigger, started_at, finished_at, attempt,
             outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &run.period,
                &run.trigger,
                &ms(run.started_at)?,
                &ms(run.finished_at)?,
                &attempt,
                &run.outcome,
                &run.detail,
            ],
        )?;
        Ok(())
    }

    fn runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let limit = i64::from(limit);
        self.conn()?
            .query(
                "SELECT id, period, trigger, started_at, finished_at, attempt, outcome, detail
                 FROM billing_runs ORDER BY id DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| {
                Ok(RunRecord {
                    id: r.get(0),
                    period: r.get(1),
                    trigger: r.get(2),
                    started_at: Timestamp::from_millis(r.get::<_, i64>(3).max(0) as u64),
                    finished_at: Timestamp::from_millis(r.get::<_, i64>(4).max(0) as u64),
                    attempt: u32::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                    outcome: r.get(6),
                    detail: r.get(7),
                })
            })
            .collect()
    }
}
