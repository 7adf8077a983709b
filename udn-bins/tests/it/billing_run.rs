//! Billing runs against a real database, each test on both stores (an SQLite file and a
//! PostgreSQL database): gap-free numbering, idempotent runs, immutability enforced by
//! the database, audit, credit notes, payments, and concurrent handles on one database.

use crate::billing_common;
use crate::billing_common::on_both_stores;

use billing_common::*;
use rust_decimal::Decimal;
use std::str::FromStr;
use udn_billing::usage::Applied;
use udn_billing::{Metric, Period, PeriodKind, Timestamp, UsageBatch, UsageLedger, UsageRecord};
use udn_bins::billing::payment::collect_card_payments;
use udn_bins::billing::{BillingStore, Status, audit, record_manual_payment, run_period};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn a_run_issues_gap_free_numbers_and_a_second_run_issues_nothing(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account("beta", "Beta AG", "post", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account("idle", "Idle Ltd", "email", BY_INVOICE, false))
        .unwrap();
    let mut hourly = account("hourly", "Hourly Inc", "email", BY_INVOICE, false);
    hourly.billing_period = PeriodKind::Hour;
    s.put_account(&hourly).unwrap();
    assert_eq!(
        s.record_usage(&cdn_usage("acme", "edge-file-1")).unwrap(),
        Applied::New
    );
    assert_eq!(
        s.record_usage(&cdn_usage("acme", "edge-file-1")).unwrap(),
        Applied::Replay
    );

    let r = run_period(&mut s, &nov(), dec_1()).unwrap();
    let numbers: Vec<_> = r
        .issued
        .iter()
        .map(|i| (i.number.as_str(), i.account.as_str(), i.total.as_str()))
        .collect();
    assert_eq!(
        numbers,
        vec![
            ("INV-000001", "acme", "998.26 EUR"),
            ("INV-000002", "beta", "415.31 EUR")
        ]
    );
    assert_eq!(r.nothing_to_invoice, vec!["idle"]);
    assert_eq!(r.other_cadence, vec!["hourly"]);
    assert!(r.failed.is_empty());

    let again = run_period(&mut s, &nov(), dec_1()).unwrap();
    assert!(again.issued.is_empty());
    assert_eq!(again.already_invoiced, vec!["acme", "beta"]);

    // the state is in the database: a new connection sees it and still issues nothing
    drop(s);
    let mut s = db.open();
    assert!(
        run_period(&mut s, &nov(), dec_1())
            .unwrap()
            .issued
            .is_empty()
    );
    let inv = s.invoice("INV-000001").unwrap().unwrap();
    assert_eq!(inv.status, Status::Issued);
    assert_eq!(inv.invoice.total, d("998.26"));
    assert_eq!(
        inv.due_at,
        Some(Timestamp::from_millis(
            dec_1().as_millis() + 30 * 86_400_000
        ))
    );
    assert_eq!(inv.inputs.segments[0].segment.plan, "cdn-standard");
    assert_eq!(inv.inputs.segments[0].segment.version, 1);
    assert_eq!(
        inv.inputs.segments[0]
            .usage
            .total(Metric::HttpRequests, None),
        30_000_000
    );

    // December: platform fees only, numbering continues without a gap
    let dec = nov().next().unwrap();
    let after_dec = Timestamp::from_millis(dec.end.as_millis() + 1);
    let r = run_period(&mut s, &dec, after_dec).unwrap();
    let numbers: Vec<_> = r
        .issued
        .iter()
        .map(|i| (i.number.as_str(), i.total.as_str()))
        .collect();
    assert_eq!(
        numbers,
        vec![("INV-000003", "117.81 EUR"), ("INV-000004", "117.81 EUR")]
    );
}

fn a_period_cannot_be_billed_before_it_ends(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    let inside = Timestamp::from_millis(nov().end.as_millis() - 1);
    let early = run_period(&mut s, &nov(), inside).unwrap_err();
    assert!(
        matches!(
            early.downcast_ref::<udn_bins::billing::run::RuleViolation>(),
            Some(udn_bins::billing::run::RuleViolation::PeriodNotOver { .. })
        ),
        "{early:#}"
    );
    assert!(s.issued().unwrap().is_empty());
}

fn issued_invoices_are_immutable_in_the_database(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    record_manual_payment(&mut s, "INV-000001", d("1.00"), "transfer", dec_1()).unwrap();
    s.log_delivery(&udn_bins::billing::store::DeliveryLog {
        invoice: "INV-000001".into(),
        channel: "email".into(),
        recipient: "billing@acme.example".into(),
        status: udn_bins::billing::store::DeliveryStatus::Sent,
        detail: "250 OK".into(),
        at: dec_1(),
    })
    .unwrap();
    // every statement runs on a connection of its own, bypassing the store: the
    // database itself refuses
    let mut refused = vec![
        "UPDATE billing_invoices SET total = '1.00' WHERE number = 'INV-000001'",
        "UPDATE billing_invoices SET document = '{}' WHERE number = 'INV-000001'",
        "UPDATE billing_invoices SET inputs = '{}' WHERE number = 'INV-000001'",
        "UPDATE billing_invoices SET due_at = 0 WHERE number = 'INV-000001'",
        "UPDATE billing_invoices SET number = 'INV-000009' WHERE number = 'INV-000001'",
        "UPDATE billing_invoices SET status = 'draft' WHERE number = 'INV-000001'",
        "DELETE FROM billing_invoices WHERE number = 'INV-000001'",
        "UPDATE billing_payments SET amount = '1000.00'",
        "DELETE FROM billing_payments",
        "UPDATE billing_deliveries SET status = 'failed'",
        "DELETE FROM billing_deliveries",
    ];
    if db.is_postgres() {
        // TRUNCATE skips row triggers: statement triggers refuse it too
        refused.extend([
            "TRUNCATE billing_payments",
            "TRUNCATE billing_deliveries",
            "TRUNCATE billing_invoices CASCADE",
        ]);
    }
    for sql in refused {
        let e = db.exec(sql).expect_err(sql);
        assert!(
            ["issued invoice", "transition", "append-only"]
                .iter()
                .any(|m| e.contains(m)),
            "{sql}: {e}"
        );
    }
    // the refused statements changed nothing
    let inv = s.invoice("INV-000001").unwrap().unwrap();
    assert_eq!(inv.invoice.total, d("415.31"));
    assert_eq!(inv.status, Status::Issued);
    assert_eq!(s.payments("INV-000001").unwrap()[0].amount, d("1.00"));
    assert_eq!(s.deliveries("INV-000001").unwrap().len(), 1);
    // a draft may still be replaced, and the status may move on
    assert_eq!(
        db.exec("UPDATE billing_invoices SET status = 'paid' WHERE number = 'INV-000001'"),
        Ok(1)
    );
    // plan versions are immutable too
    let mut changed = cdn_plan();
    changed.components.pop();
    assert!(s.put_plan(&changed).is_err());
    assert!(s.put_plan(&cdn_plan()).is_ok());
}

fn audit_recomputes_and_corrections_go_through_credit_notes(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    assert_eq!(
        s.record_usage(&cdn_usage("acme", "edge-file-1")).unwrap(),
        Applied::New
    );
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    let a = audit(&s, "INV-000001").unwrap();
    assert!(a.reproducible && a.usage_unchanged, "{a:?}");

    // late usage for November arrives after the invoice was issued
    let late = UsageBatch {
        key: "edge-file-late".into(),
        records: vec![UsageRecord {
            account: "acme".into(),
            at: Timestamp::from_millis(nov().start.as_millis() + 86_400_000),
            metric: Metric::BytesDelivered,
            region: "fra".into(),
            quantity: 1_000_000_000_000, // 1,000 GB at 0.03
        }],
    };
    assert_eq!(s.record_usage(&late).unwrap(), Applied::New);
    let a = audit(&s, "INV-000001").unwrap();
    assert!(
        a.reproducible,
        "the stored inputs still give the stored amounts"
    );
    assert!(!a.usage_unchanged, "the audit notices the late usage");
    // the issued invoice did not change; rerunning issues nothing
    assert!(
        run_period(&mut s, &nov(), dec_1())
            .unwrap()
            .issued
            .is_empty()
    );

    // correction: credit note, then a new invoice for the period
    let cn = s.credit("INV-000001", dec_1()).unwrap();
    assert_eq!(cn, "CN-000001");
    let note = s.invoice(&cn).unwrap().unwrap();
    assert_eq!(note.invoice.total, d("-998.26"));
    assert_eq!(note.credits.as_deref(), Some("INV-000001"));
    assert_eq!(
        s.invoice("INV-000001").unwrap().unwrap().status,
        Status::Credited
    );
    let r = run_period(&mut s, &nov(), dec_1()).unwrap();
    assert_eq!(r.issued.len(), 1);
    assert_eq!(r.issued[0].number, "INV-000002");
    // 30.00 more traffic + 19% VAT
    assert_eq!(r.issued[0].total, "1033.96 EUR");
    assert!(audit(&s, "INV-000002").unwrap().usage_unchanged);
    // tampering with the stored plan would break reproducibility: versions are immutable,
    // so a changed plan must come as version 2, which the invoice does not use
    let mut v2 = cdn_plan();
    v2.version = 2;
    v2.components.pop();
    s.put_plan(&v2).unwrap();
    assert!(audit(&s, "INV-000002").unwrap().reproducible);
}

fn payments_void_and_card_on_file_without_a_provider(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account("beta", "Beta AG", "email", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account(
        "card",
        "Card Co",
        "email",
        r#"{"method": "card_on_file", "card_ref": "cus_123/pm_456"}"#,
        true,
    ))
    .unwrap();
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    let at = dec_1();
    assert_eq!(
        record_manual_payment(&mut s, "INV-000001", d("400.00"), "transfer 1", at).unwrap(),
        Status::Issued
    );
    assert_eq!(
        record_manual_payment(&mut s, "INV-000001", d("15.31"), "transfer 2", at).unwrap(),
        Status::Paid
    );
    assert!(record_manual_payment(&mut s, "INV-000001", d("1"), "too late", at).is_err());
    assert_eq!(s.payments("INV-000001").unwrap().len(), 2);
    let refused = s.void("INV-000001", at).unwrap_err();
    assert!(
        matches!(
            refused.downcast_ref::<udn_bins::billing::run::RuleViolation>(),
            Some(udn_bins::billing::run::RuleViolation::State(m)) if m.contains("paid")
        ),
        "a paid invoice is credited, not voided: a rule violation, not a storage error: {refused:#}"
    );
    s.void("INV-000002", at).unwrap();
    assert_eq!(
        s.invoice("INV-000002").unwrap().unwrap().status,
        Status::Void
    );
    assert!(record_manual_payment(&mut s, "INV-000002", d("1"), "x", at).is_err());

    // the card-on-file invoice waits for a manually recorded payment
    let c = collect_card_payments(&mut s, None, at).unwrap();
    assert_eq!(c.awaiting_manual_payment, vec!["INV-000003"]);
    assert!(c.charged.is_empty());
    assert_eq!(s.invoice("INV-000003").unwrap().unwrap().due_at, Some(at));

    // a voided invoice's period is invoiced afresh with the next number
    let r = run_period(&mut s, &nov(), at).unwrap();
    assert_eq!(
        r.issued
            .iter()
            .map(|i| i.number.as_str())
            .collect::<Vec<_>>(),
        vec!["INV-000004"]
    );
    assert_eq!(r.issued[0].account, "beta");
}

/// The SQL store aggregates usage exactly like the pure in-memory ledger.
fn sql_usage_totals_match_the_pure_ledger(db: &Db) {
    let mut s = store(db);
    let week = Period::parse("2026-W48").unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ledger = UsageLedger::new();
    for b in 0..20 {
        let records = (0..200)
            .map(|_| UsageRecord {
                account: ["a", "b"][(next() % 2) as usize].into(),
                at: Timestamp::from_millis(week.start.as_millis() + next() % week.duration_ms()),
                metric: [
                    Metric::DnsQueries,
                    Metric::HttpRequests,
                    Metric::BytesDelivered,
                    Metric::CacheFillBytes,
                ][(next() % 4) as usize],
                region: ["fra", "iad", ""][(next() % 3) as usize].into(),
                quantity: next() % 10_000_000_000,
            })
            .collect();
        let batch = UsageBatch {
            key: format!("f{b}"),
            records,
        };
        assert_eq!(
            s.record_usage(&batch).unwrap(),
            ledger.apply(&batch).unwrap()
        );
        assert_eq!(s.record_usage(&batch).unwrap(), Applied::Replay);
    }
    for acct in ["a", "b"] {
        for (from, to) in [
            (week.start, week.end),
            (
                Timestamp::from_millis(week.start.as_millis() + 123_456),
                Timestamp::from_millis(week.end.as_millis() - 7_654_321),
            ),
        ] {
            let sql = s.usage_totals(acct, from, to, true).unwrap();
            assert_eq!(sql, ledger.totals(acct, from, to));
            assert!(sql.total(Metric::BytesDelivered, None) > 0);
            let no_samples = s.usage_totals(acct, from, to, false).unwrap();
            assert!(no_samples.bandwidth.is_empty());
            assert_eq!(no_samples.counters, sql.counters);
        }
    }
}

/// A second invoice for the same account and period cannot be issued (unique index),
/// and the failed attempt consumes no number: the sequence stays gap-free.
fn a_failed_issue_consumes_no_number(db: &Db) {
    let mut s = store(db);
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    s.put_account(&account("beta", "Beta AG", "email", BY_INVOICE, true))
        .unwrap();
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    // a racing run that computed its own draft for acme before the first one issued
    let id = db.query_i64(
        "INSERT INTO billing_invoices (kind, account, period, currency, total, status, document, inputs)
         SELECT kind, account, period, currency, total, 'draft', document, inputs
         FROM billing_invoices WHERE number = 'INV-000001' RETURNING id",
    );
    assert!(s.issue(id, dec_1(), dec_1()).is_err());
    // the next invoice takes the next number
    let dec = nov().next().unwrap();
    let r = run_period(
        &mut s,
        &dec,
        Timestamp::from_millis(dec.end.as_millis() + 1),
    )
    .unwrap();
    let numbers: Vec<_> = r.issued.iter().map(|i| i.number.as_str()).collect();
    assert_eq!(numbers, vec!["INV-000003", "INV-000004"]);
}

/// Two connections to one database run the same period at the same time: every account
/// is invoiced exactly once and the numbers have no gap.
fn concurrent_runs_invoice_each_account_once(db: &Db) {
    let mut s = store(db);
    for i in 0..30 {
        s.put_account(&account(
            &format!("acct-{i:02}"),
            "Co",
            "email",
            BY_INVOICE,
            true,
        ))
        .unwrap();
    }
    drop(s);
    let barrier = std::sync::Barrier::new(2);
    let reports: Vec<_> = std::thread::scope(|sc| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    let mut s = db.open();
                    barrier.wait();
                    run_period(&mut s, &nov(), dec_1()).unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let s = db.open();
    let issued = s.issued().unwrap();
    assert_eq!(issued.len(), 30, "{reports:#?}");
    let mut numbers: Vec<_> = issued.iter().map(|i| i.number.clone().unwrap()).collect();
    numbers.sort();
    let want: Vec<_> = (1..=30).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers, want);
    let mut accounts: Vec<_> = issued.iter().map(|i| i.invoice.account.clone()).collect();
    accounts.sort();
    accounts.dedup();
    assert_eq!(accounts.len(), 30);
    let issued_by_runs: usize = reports.iter().map(|r| r.issued.len()).sum();
    assert_eq!(issued_by_runs, 30);
}

/// The run lock is exclusive between two handles of one store (two processes on one
/// SQLite file, such as the CLI beside a running `udn control`; two control planes on
/// one PostgreSQL): the second waits until the first releases it.
fn the_run_lock_makes_a_second_handle_wait(db: &Db) {
    let mut a = db.open();
    a.lock_runs().unwrap();
    let taken = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let b = sc.spawn(|| {
            let mut b = db.open();
            b.lock_runs().unwrap();
            taken.store(true, std::sync::atomic::Ordering::SeqCst);
            b.unlock_runs().unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(
            !taken.load(std::sync::atomic::Ordering::SeqCst),
            "the second handle took the lock while the first held it"
        );
        a.unlock_runs().unwrap();
        b.join().unwrap();
    });
    assert!(taken.load(std::sync::atomic::Ordering::SeqCst));
    // and it can be taken again
    a.lock_runs().unwrap();
    a.unlock_runs().unwrap();
}

/// A November invoice of `seed` and what it was computed from: the template the race
/// tests below re-address to other accounts and periods.
fn template(
    db: &Db,
) -> (
    udn_billing::Invoice,
    udn_bins::billing::store::InvoiceInputs,
) {
    let mut s = store(db);
    s.put_account(&account("seed", "Seed Co", "email", BY_INVOICE, true))
        .unwrap();
    let r = run_period(&mut s, &nov(), dec_1()).unwrap();
    assert_eq!(r.issued[0].number, "INV-000001");
    let inv = s.invoice("INV-000001").unwrap().unwrap();
    (inv.invoice, inv.inputs)
}

/// Two handles (two connections) issue invoices for different accounts at the same
/// time: every number is used once, the series has no gap, and each handle sees its
/// own numbers rising.
fn concurrent_handles_issue_gap_free_unique_numbers(db: &Db) {
    let (invoice, inputs) = template(db);
    let per_handle = 25;
    let barrier = std::sync::Barrier::new(2);
    let numbers: Vec<Vec<String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|side| {
                let (invoice, inputs, barrier) = (&invoice, &inputs, &barrier);
                sc.spawn(move || {
                    let mut s = db.open();
                    barrier.wait();
                    (0..per_handle)
                        .map(|i| {
                            let mut inv = invoice.clone();
                            inv.account = format!("{side}-{i:02}");
                            let id = s.put_draft(&inv, inputs).unwrap();
                            s.issue(id, dec_1(), dec_1()).unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for mine in &numbers {
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
    }
    let mut all: Vec<_> = numbers.concat();
    all.sort();
    let want: Vec<_> = (2..=2 * per_handle + 1)
        .map(|n| format!("INV-{n:06}"))
        .collect();
    assert_eq!(all, want, "unique and gap-free");
    let issued = db.open().issued().unwrap();
    assert_eq!(issued.len(), 2 * per_handle + 1);
    for i in &issued {
        assert_eq!(i.status, Status::Issued);
    }
}

/// Two handles race to issue a draft each for the same account and period: exactly one
/// invoice is issued (the database's unique index), the loser's attempt takes no number,
/// and the series stays gap-free.
fn racing_issues_of_one_account_and_period_issue_one_invoice(db: &Db) {
    let (mut invoice, inputs) = template(db);
    invoice.account = "race".into();
    let rounds = 12;
    let mut s = db.open();
    for m in 1..=rounds {
        invoice.period = Period::parse(&format!("2027-{m:02}")).unwrap();
        // two runs that each computed a draft for the account and period
        let first = s.put_draft(&invoice, &inputs).unwrap();
        let second = db.query_i64(&format!(
            "INSERT INTO billing_invoices (kind, account, period, currency, total, status, document, inputs)
             SELECT kind, account, period, currency, total, status, document, inputs
             FROM billing_invoices WHERE id = {first} RETURNING id"
        ));
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<anyhow::Result<String>> = std::thread::scope(|sc| {
            let racers: Vec<_> = [first, second]
                .into_iter()
                .map(|id| {
                    let barrier = &barrier;
                    sc.spawn(move || {
                        let mut s = db.open();
                        barrier.wait();
                        s.issue(id, dec_1(), dec_1())
                    })
                })
                .collect();
            racers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {m}: {results:?}");
        assert_eq!(*won[0], format!("INV-{:06}", m + 1), "round {m}: gap-free");
        let live = s.live_invoice("race", &invoice.period).unwrap().unwrap();
        assert_eq!(live.number.as_deref(), Some(won[0].as_str()));
    }
    let issued = s.issued().unwrap();
    assert_eq!(issued.len(), rounds + 1);
    assert_eq!(
        issued.last().unwrap().number.as_deref(),
        Some(format!("INV-{:06}", rounds + 1).as_str())
    );
}

/// A provider plugged in through the trait (a test double: UDN ships no provider).
struct RecordingProvider(std::cell::RefCell<Vec<(String, Decimal)>>);

impl udn_bins::billing::PaymentProvider for RecordingProvider {
    fn name(&self) -> &str {
        "test-provider"
    }
    fn charge(
        &self,
        card_ref: &str,
        amount: Decimal,
        _c: &udn_billing::Currency,
        number: &str,
    ) -> anyhow::Result<String> {
        self.0.borrow_mut().push((card_ref.to_owned(), amount));
        Ok(format!("ch_{number}"))
    }
}

fn a_configured_provider_charges_card_on_file_invoices_once(db: &Db) {
    let mut s = store(db);
    s.put_account(&account(
        "card",
        "Card Co",
        "email",
        r#"{"method": "card_on_file", "card_ref": "pm_1"}"#,
        true,
    ))
    .unwrap();
    s.put_account(&account("bank", "Bank Co", "email", BY_INVOICE, true))
        .unwrap();
    let _ = run_period(&mut s, &nov(), dec_1()).unwrap();
    let p = RecordingProvider(Default::default());
    let r = collect_card_payments(&mut s, Some(&p), dec_1()).unwrap();
    assert_eq!(
        r.charged,
        vec![("INV-000002".to_owned(), "ch_INV-000002".to_owned())]
    );
    assert_eq!(*p.0.borrow(), vec![("pm_1".to_owned(), d("415.31"))]);
    let pay = s.payments("INV-000002").unwrap();
    assert_eq!(pay[0].method, "test-provider");
    assert_eq!(
        s.invoice("INV-000002").unwrap().unwrap().status,
        Status::Paid
    );
    let again = collect_card_payments(&mut s, Some(&p), dec_1()).unwrap();
    assert!(again.charged.is_empty());
    assert_eq!(p.0.borrow().len(), 1);
}

/// A burstable invoice stores its 8,640 samples and recomputes to the same amounts; an
/// invoice whose plan does not bill the 95th percentile stores no samples.
fn burstable_invoices_keep_their_samples_for_audit(db: &Db) {
    let mut s = store(db);
    let burst: udn_billing::Plan = serde_json::from_str(
        r#"{"id": "burst", "version": 1, "name": "Burstable", "currency": "EUR", "period": "month",
        "components": [{"name": "Bandwidth", "pricing": {"type": "percentile95",
          "commit_mbps": "500", "commit_price": "2.00", "overage_price": "3.00"}}]}"#,
    )
    .unwrap();
    s.put_plan(&burst).unwrap();
    let mut stream = account("stream", "Stream AG", "email", BY_INVOICE, true);
    stream.subscriptions[0].plan = "burst".into();
    stream.tax = None;
    s.put_account(&stream).unwrap();
    s.put_account(&account("acme", "Acme GmbH", "email", BY_INVOICE, true))
        .unwrap();
    let mbps = 37_500_000u64;
    let records: Vec<UsageRecord> = (0..8_640u64)
        .flat_map(|b| {
            let rate = if b < 432 {
                2_000
            } else if b == 432 {
                700
            } else {
                300
            };
            let at = Timestamp::from_millis(nov().start.as_millis() + b * 300_000 + 1_000);
            ["fra", "iad"].map(|pop| UsageRecord {
                account: "stream".into(),
                at,
                metric: Metric::BytesDelivered,
                region: pop.into(),
                quantity: rate / 2 * mbps,
            })
        })
        .collect();
    assert_eq!(
        s.record_usage(&UsageBatch {
            key: "nov".into(),
            records
        })
        .unwrap(),
        Applied::New
    );
    let r = run_period(&mut s, &nov(), dec_1()).unwrap();
    let totals: Vec<_> = r
        .issued
        .iter()
        .map(|i| (i.account.as_str(), i.total.as_str()))
        .collect();
    assert_eq!(
        totals,
        vec![("acme", "415.31 EUR"), ("stream", "1600.00 EUR")]
    );
    let inv = s.invoice("INV-000002").unwrap().unwrap();
    assert_eq!(inv.inputs.segments[0].usage.bandwidth.len(), 8_640);
    assert!(audit(&s, "INV-000002").unwrap().reproducible);
    assert!(audit(&s, "INV-000002").unwrap().usage_unchanged);
    let plain = s.invoice("INV-000001").unwrap().unwrap();
    assert!(plain.inputs.segments[0].usage.bandwidth.is_empty());
    assert!(audit(&s, "INV-000001").unwrap().usage_unchanged);
}

on_both_stores!(
    a_run_issues_gap_free_numbers_and_a_second_run_issues_nothing,
    a_period_cannot_be_billed_before_it_ends,
    issued_invoices_are_immutable_in_the_database,
    audit_recomputes_and_corrections_go_through_credit_notes,
    payments_void_and_card_on_file_without_a_provider,
    sql_usage_totals_match_the_pure_ledger,
    a_failed_issue_consumes_no_number,
    concurrent_runs_invoice_each_account_once,
    a_configured_provider_charges_card_on_file_invoices_once,
    burstable_invoices_keep_their_samples_for_audit,
    concurrent_handles_issue_gap_free_unique_numbers,
    racing_issues_of_one_account_and_period_issue_one_invoice,
    the_run_lock_makes_a_second_handle_wait,
);
