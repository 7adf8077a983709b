//! [`StoreBackend`]: the control plane's [`Traffic`] queries served from the log store's
//! rollups (`rollup_http`, `rollup_dns_answer` and the rest), so the portal's charts show
//! what the edges and DNS servers really logged, and its [`Billing`] from the billing
//! store (the `billing_*` tables: in the log store's SQLite file, or in the PostgreSQL
//! database with `udn control --postgres`; an account's id is its customer name).
//! Users, sessions, config versions and deliveries are not its business: `udn control`
//! gives the API those concerns from the control plane's own tables
//! ([`super::SqliteBackend`] or [`super::PgBackend`]) beside this one ([`super::Stores`]).

use super::backend::*;
use crate::billing::{BillingLocation, BillingStore};
use crate::collector::Collector;
use crate::store::{Range, SeriesQuery};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use udn_core::{Config, Timestamp};

/// The control plane's backend over the log store.
pub struct StoreBackend {
    control: Arc<dyn Backend>,
    collector: Arc<Collector>,
    billing: Option<BillingTables>,
    scheduler: Option<Mutex<crate::billing::schedule::Scheduler>>,
    issuer: crate::billing::Issuer,
}

/// The billing store: where it is, and the store opened there, kept between calls (a
/// PostgreSQL connection is not opened per request; a lost one is replaced by the
/// store's pool). One call at a time uses it.
struct BillingTables {
    location: BillingLocation,
    open: Mutex<Option<Box<dyn BillingStore + Send>>>,
}

impl BillingTables {
    /// Runs `f` on the store, opening it first if needed. `None` when the store is an
    /// SQLite file that does not exist and `create` is false (billing never ran). After
    /// an error the store is dropped, so the next call re-opens it; when the error is a
    /// PostgreSQL connection the server closed (a restart, `pg_terminate_backend`), the
    /// store is kept (its pool replaces the connection) and `f` is tried once more
    /// (billing runs and reads are idempotent), so the portal does not answer one empty
    /// invoice list per lost connection.
    fn with<T>(
        &self,
        create: bool,
        mut f: impl FnMut(&mut dyn BillingStore) -> anyhow::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        if let BillingLocation::Sqlite(db) = &self.location
            && !create
            && !db.exists()
        {
            return None;
        }
        let mut slot = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut retried = false;
        loop {
            let kept = slot.is_some();
            let store = match &mut *slot {
                Some(s) => s,
                None => match self.location.open() {
                    Ok(s) => slot.insert(s),
                    Err(e) => return Some(Err(e)),
                },
            };
            match f(&mut **store) {
                Ok(v) => return Some(Ok(v)),
                Err(e) => {
                    if retried || !kept || !connection_lost(&e) {
                        *slot = None;
                        return Some(Err(e));
                    }
                    tracing::info!("billing store: connection lost, trying again");
                    retried = true;
                }
            }
        }
    }
}

/// Whether `e` says the database connection is gone rather than that a statement failed
/// ([`crate::store::postgres::connection_lost`], or an I/O error).
fn connection_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .is_some_and(crate::store::postgres::connection_lost)
            || c.is::<std::io::Error>()
    })
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBackend").finish_non_exhaustive()
    }
}

impl StoreBackend {
    /// Serves traffic from `collector`'s store, reading the hostnames of a customer and
    /// the invoices of the `cp_invoices` table from `control`.
    pub fn new(control: Arc<dyn Backend>, collector: Arc<Collector>) -> Self {
        StoreBackend {
            control,
            collector,
            billing: None,
            scheduler: None,
            issuer: placeholder_issuer(),
        }
    }

    /// Also runs billing (`POST /v1/billing/runs`) and lists its issued invoices, with
    /// the billing tables at `location` (opened on first use).
    pub fn with_billing(mut self, location: BillingLocation) -> Self {
        self.billing = Some(BillingTables {
            location,
            open: Mutex::new(None),
        });
        self
    }

    /// Shows invoices in the portal as issued by `issuer` (the billing configuration's,
    /// as printed on the delivered documents).
    pub fn with_issuer(mut self, issuer: crate::billing::Issuer) -> Self {
        self.issuer = issuer;
        self
    }

    /// Also bills each period when it closes (plus the scheduler's grace), on
    /// [`Billing::billing_tick`].
    pub fn with_scheduler(mut self, scheduler: crate::billing::schedule::Scheduler) -> Self {
        self.scheduler = Some(Mutex::new(scheduler));
        self
    }

    /// Issued billing invoices (and credit notes), newest first; none when billing has
    /// never run (no database or no `billing_*` tables yet).
    fn billed(&self) -> Vec<crate::billing::StoredInvoice> {
        let Some(billing) = &self.billing else {
            return Vec::new();
        };
        match billing.with(false, |s| s.issued()) {
            None => Vec::new(),
            Some(Ok(mut v)) => {
                v.sort_by_key(|i| std::cmp::Reverse(i.id));
                v
            }
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "reading issued invoices");
                Vec::new()
            }
        }
    }
}

/// Billing invoices get ids above this in the portal, so they never collide with the
/// control plane's own `cp_invoices` rows.
const BILLING_ID_BASE: i64 = 1 << 40;

fn summary(i: &crate::billing::StoredInvoice) -> InvoiceSummary {
    InvoiceSummary {
        id: BILLING_ID_BASE + i.id,
        number: i.number.clone().unwrap_or_default(),
        customer: i.invoice.account.clone(),
        period_start: i.invoice.period.start,
        period_end: i.invoice.period.end,
        total: i.invoice.total,
        currency: i.invoice.currency.code().to_string(),
        issued_at: i.issued_at.unwrap_or_default(),
    }
}

/// Where a sign-up's decision is kept in the billing store's state table.
fn signup_key(account: &str) -> String {
    format!("signup:{account}")
}

/// The issuer printed on invoices shown in the portal when `udn control` has no
/// `--billing-config`: plainly a placeholder, so a missing configuration shows.
fn placeholder_issuer() -> crate::billing::Issuer {
    crate::billing::Issuer {
        name: "UDN (no --billing-config: issuer not configured)".into(),
        address: Vec::new(),
        email: "billing@udn.example".into(),
        tax_id: None,
        bank: None,
    }
}

impl StoreBackend {
    fn range(w: &Window<'_>) -> Range {
        Range {
            from: w.from,
            to: w.to,
        }
    }

    /// The log-store query of a window: its range, grain, customer and hostname.
    fn series<'a>(w: &Window<'a>) -> SeriesQuery<'a> {
        SeriesQuery {
            range: Self::range(w),
            grain: w.grain,
            customer: w.customer,
            host: w.host,
        }
    }

    /// The GTM and CDN hostnames of `customer` in the current configuration.
    fn hostnames_of(&self, customer: &str) -> BackendResult<HashSet<String>> {
        let cfg: Config = self.control.current_config()?.config;
        let mut names = HashSet::new();
        for g in cfg.gtm.iter().filter(|g| g.customer == customer) {
            names.insert(udn_core::config::canonical_hostname(&g.hostname));
        }
        for c in cfg.cdn.iter().filter(|c| c.customer == customer) {
            names.insert(udn_core::config::canonical_hostname(&c.hostname));
        }
        Ok(names)
    }

    fn answers(&self, w: &Window<'_>) -> BackendResult<Vec<crate::store::AddressPoint>> {
        let q = SeriesQuery {
            customer: None,
            ..Self::series(w)
        };
        let rows = self.collector.with_reader(|s| s.answers_series(&q))?;
        Ok(match w.customer {
            None => rows,
            Some(c) => {
                let own = self.hostnames_of(c)?;
                rows.into_iter()
                    .filter(|r| own.contains(&r.hostname))
                    .collect()
            }
        })
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms.max(0) as u64)
}

impl Traffic for StoreBackend {
    fn service_checks(
        &self,
        since: Timestamp,
    ) -> BackendResult<Vec<crate::store::health::ServiceCheck>> {
        Ok(self.collector.with_reader(|s| s.service_checks(since))?)
    }

    fn gtm_reasons(&self, w: Window<'_>) -> BackendResult<Vec<(String, i64)>> {
        let q = Self::series(&w);
        Ok(self.collector.with_reader(|s| s.dns_reasons(&q))?)
    }

    fn cdn_quality(
        &self,
        w: Window<'_>,
    ) -> BackendResult<Vec<crate::store::quality::QualityPoint>> {
        let q = Self::series(&w);
        Ok(self.collector.with_reader(|s| s.quality(&q))?)
    }

    fn cdn_top(&self, w: Window<'_>) -> BackendResult<crate::store::quality::Top> {
        let q = Self::series(&w);
        Ok(self.collector.with_reader(|s| s.top(&q))?)
    }

    fn ops(
        &self,
        from: Timestamp,
        to: Timestamp,
        grain: crate::store::Grain,
        role: Option<&str>,
    ) -> BackendResult<crate::store::ops::OpsReport> {
        Ok(self
            .collector
            .with_reader(|s| s.ops(Range { from, to }, grain, role))?)
    }

    fn streaming(&self, w: Window<'_>) -> BackendResult<crate::store::stream::StreamReport> {
        let range = Range {
            from: w.from,
            to: w.to,
        };
        let mut report = self
            .collector
            .with_reader(|s| s.streaming(range, w.customer))?;
        if let Some(h) = w.host {
            report.streams.retain(|x| x.host == h);
            report.series.retain(|x| x.host == h);
            report.clients.retain(|x| x.host == h);
        }
        Ok(report)
    }

    fn cdn_traffic(&self, w: Window<'_>) -> BackendResult<Vec<TrafficPoint>> {
        let q = Self::series(&w);
        let rows = self.collector.with_reader(|s| s.traffic_series(&q))?;
        Ok(rows
            .into_iter()
            .map(|r| TrafficPoint {
                minute: ts(r.minute),
                bytes: r.bytes.max(0) as u64,
                hits: r.requests.max(0) as u64,
            })
            .collect())
    }

    fn cdn_traffic_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationTraffic>> {
        let q = Self::series(&w);
        let rows = self
            .collector
            .with_reader(|s| s.traffic_by_pop_series(&q))?;
        let mut by_pop: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in rows {
            let e = by_pop.entry(r.pop).or_default();
            e.0 += r.bytes.max(0) as u64;
            e.1 += r.requests.max(0) as u64;
        }
        Ok(by_pop
            .into_iter()
            .map(|(pop, (bytes, hits))| LocationTraffic { pop, bytes, hits })
            .collect())
    }

    fn gtm_answers(&self, w: Window<'_>) -> BackendResult<Vec<AnswerPoint>> {
        let mut sum: BTreeMap<(i64, String, String), u64> = BTreeMap::new();
        for r in self.answers(&w)? {
            *sum.entry((r.minute, r.hostname, r.address)).or_default() += r.answers.max(0) as u64;
        }
        Ok(sum
            .into_iter()
            .map(|((minute, hostname, address), answers)| AnswerPoint {
                minute: ts(minute),
                hostname,
                address,
                answers,
            })
            .collect())
    }

    fn gtm_answers_by_location(&self, w: Window<'_>) -> BackendResult<Vec<LocationAnswers>> {
        let mut sum: HashMap<(String, String), u64> = HashMap::new();
        for r in self.answers(&w)? {
            *sum.entry((r.pop, r.address)).or_default() += r.answers.max(0) as u64;
        }
        let mut out: Vec<LocationAnswers> = sum
            .into_iter()
            .map(|((pop, address), answers)| LocationAnswers {
                pop,
                address,
                answers,
            })
            .collect();
        out.sort_by(|a, b| (&a.pop, &a.address).cmp(&(&b.pop, &b.address)));
        Ok(out)
    }
}

impl Billing for StoreBackend {
    fn invoices(&self, customer: Option<&str>) -> BackendResult<Vec<InvoiceSummary>> {
        let mut out: Vec<InvoiceSummary> = self
            .billed()
            .iter()
            .filter(|i| customer.is_none_or(|c| i.invoice.account == c))
            .map(summary)
            .collect();
        out.extend(self.control.invoices(customer)?);
        Ok(out)
    }

    fn invoice(&self, id: i64) -> BackendResult<Option<Invoice>> {
        if id >= BILLING_ID_BASE {
            let want = id - BILLING_ID_BASE;
            return Ok(self
                .billed()
                .into_iter()
                .find(|i| i.id == want)
                .map(|i| Invoice {
                    summary: summary(&i),
                    html: crate::billing::render_html(&i, &self.issuer),
                }));
        }
        self.control.invoice(id)
    }

    fn billing_run(&self, label: &str, now: Timestamp) -> BackendResult<serde_json::Value> {
        let Some(billing) = &self.billing else {
            return Err(BackendError::Unsupported(
                "billing runs need a billing database",
            ));
        };
        let period = udn_billing::Period::parse(label).map_err(BackendError::BadPeriod)?;
        crate::billing::run::check_over(&period, now)
            .map_err(|e| BackendError::Billing(e.into()))?;
        let report = billing
            .with(true, |store| {
                let mut read =
                    |from| Ok(self.collector.with_reader(|s| s.file_usage_since(from))?);
                crate::billing::run::logged_run(store, &mut read, &period, now, "api", 1)
            })
            .unwrap_or_else(|| Err(anyhow::anyhow!("no billing store")))
            .map_err(BackendError::Billing)?;
        Ok(serde_json::to_value(&report)?)
    }

    fn billing_runs(&self, limit: u32) -> BackendResult<serde_json::Value> {
        let Some(billing) = &self.billing else {
            return Err(BackendError::Unsupported(
                "billing runs need a billing database",
            ));
        };
        let runs = billing
            .with(false, |store| store.runs(limit))
            .unwrap_or_else(|| Ok(Vec::new()))
            .map_err(BackendError::Billing)?;
        Ok(serde_json::to_value(&runs)?)
    }

    fn billing_invoice_action(
        &self,
        number: &str,
        action: &InvoiceAction,
        now: Timestamp,
    ) -> BackendResult<serde_json::Value> {
        let Some(billing) = &self.billing else {
            return Err(BackendError::Unsupported(
                "billing actions need a billing database",
            ));
        };
        let v = billing
            .with(false, |store| {
                if store.invoice(number)?.is_none() {
                    return Ok(None);
                }
                Ok(Some(match action {
                    InvoiceAction::Pay { amount, reference } => {
                        let status = crate::billing::record_manual_payment(
                            store, number, *amount, reference, now,
                        )?;
                        serde_json::json!({"number": number, "status": status})
                    }
                    InvoiceAction::Void => {
                        store.void(number, now)?;
                        serde_json::json!({"number": number, "status": "void"})
                    }
                    InvoiceAction::Credit => {
                        let cn = store.credit(number, now)?;
                        serde_json::json!({"number": number, "credit_note": cn})
                    }
                }))
            })
            .unwrap_or(Ok(None))
            .map_err(BackendError::Billing)?;
        v.ok_or(BackendError::NotFound)
    }

    fn invoice_pdf(&self, id: i64) -> BackendResult<Option<(String, Vec<u8>)>> {
        if id < BILLING_ID_BASE {
            return Ok(None);
        }
        let want = id - BILLING_ID_BASE;
        Ok(self.billed().into_iter().find(|i| i.id == want).map(|i| {
            (
                crate::billing::delivery::pdf_name(&i),
                crate::billing::render_pdf(&i, &self.issuer),
            )
        }))
    }

    fn signup_plans(&self) -> BackendResult<Vec<SignupPlan>> {
        let Some(billing) = &self.billing else {
            return Ok(Vec::new());
        };
        let book = billing
            .with(false, |store| store.plans())
            .unwrap_or_else(|| Ok(Default::default()))
            .map_err(BackendError::Billing)?;
        let mut newest: BTreeMap<String, &udn_billing::Plan> = BTreeMap::new();
        for p in book.iter() {
            if newest.get(&p.id).is_none_or(|q| q.version < p.version) {
                newest.insert(p.id.clone(), p);
            }
        }
        Ok(newest
            .values()
            .map(|p| SignupPlan {
                id: p.id.clone(),
                version: p.version,
                name: p.name.clone(),
                currency: p.currency.0.clone(),
                period: p.period.as_str().to_owned(),
                uses_cdn: p.uses_cdn(),
            })
            .collect())
    }

    fn signup_account(&self, account: &udn_billing::Account) -> BackendResult<()> {
        let Some(billing) = &self.billing else {
            return Err(BackendError::Unsupported(
                "sign-up needs a billing database",
            ));
        };
        billing
            .with(true, |store| {
                store.put_account(account)?;
                store.set_state(
                    &signup_key(&account.id),
                    SignupStatus::AwaitingApproval.code(),
                )
            })
            .unwrap_or_else(|| Err(anyhow::anyhow!("no billing store")))
            .map_err(BackendError::Billing)
    }

    fn signups(&self) -> BackendResult<Vec<Signup>> {
        let Some(billing) = &self.billing else {
            return Ok(Vec::new());
        };
        billing
            .with(false, |store| {
                let mut out = Vec::new();
                for account in store.accounts()? {
                    if let Some(status) = store
                        .state(&signup_key(&account.id))?
                        .and_then(SignupStatus::from_code)
                    {
                        out.push(Signup { account, status });
                    }
                }
                Ok(out)
            })
            .unwrap_or_else(|| Ok(Vec::new()))
            .map_err(BackendError::Billing)
    }

    fn signup(&self, account: &str) -> BackendResult<Option<Signup>> {
        let Some(billing) = &self.billing else {
            return Ok(None);
        };
        billing
            .with(false, |store| {
                let Some(status) = store
                    .state(&signup_key(account))?
                    .and_then(SignupStatus::from_code)
                else {
                    return Ok(None);
                };
                Ok(store
                    .account(account)?
                    .map(|account| Signup { account, status }))
            })
            .unwrap_or(Ok(None))
            .map_err(BackendError::Billing)
    }

    fn signup_status(&self, account: &str) -> BackendResult<Option<SignupStatus>> {
        let Some(billing) = &self.billing else {
            return Ok(None);
        };
        billing
            .with(false, |store| store.state(&signup_key(account)))
            .unwrap_or(Ok(None))
            .map(|s| s.and_then(SignupStatus::from_code))
            .map_err(BackendError::Billing)
    }

    fn signup_decide(&self, account: &str, status: SignupStatus) -> BackendResult<()> {
        let Some(billing) = &self.billing else {
            return Err(BackendError::Unsupported(
                "sign-up needs a billing database",
            ));
        };
        billing
            .with(true, |store| {
                store.set_state(&signup_key(account), status.code())
            })
            .unwrap_or_else(|| Err(anyhow::anyhow!("no billing store")))
            .map_err(BackendError::Billing)
    }

    fn billing_tick(&self, now: Timestamp) -> BackendResult<serde_json::Value> {
        let (Some(billing), Some(scheduler)) = (&self.billing, &self.scheduler) else {
            return Ok(serde_json::Value::Null);
        };
        let mut sched = scheduler.lock().unwrap_or_else(PoisonError::into_inner);
        let done = billing
            .with(true, |store| {
                let mut read =
                    |from| Ok(self.collector.with_reader(|s| s.file_usage_since(from))?);
                sched.tick(store, &mut read, now)
            })
            .unwrap_or_else(|| Ok(Vec::new()))
            .map_err(BackendError::Billing)?;
        Ok(serde_json::to_value(&done)?)
    }
}
