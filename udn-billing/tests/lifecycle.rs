//! The invoice life cycle and the billing run's rules (`udn_billing::lifecycle`), checked
//! without any store: every (kind, status) pair against each rule, credit notes that
//! cancel exactly, adjustments that bill the difference once, and the period check.

use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use udn_billing::lifecycle::*;
use udn_billing::*;

const GB: u64 = 1_000_000_000;

fn plans() -> PlanBook {
    let plan: Plan = serde_json::from_str(
        r#"{"id": "cdn", "version": 1, "name": "CDN", "currency": "EUR", "period": "month",
            "components": [
              {"name": "Platform", "pricing": {"type": "recurring", "amount": "10.00"}},
              {"name": "Traffic", "pricing": {"type": "metered", "metric": "bytes_delivered",
               "unit": "gb", "mode": "graduated",
               "tiers": [{"up_to": "1000", "unit_price": "0.05"}, {"unit_price": "0.02"}]}}]}"#,
    )
    .unwrap();
    let mut book = PlanBook::new();
    book.insert(plan).unwrap();
    book
}

fn account(tax: bool) -> Account {
    let tax = if tax {
        r#", "tax": {"name": "VAT", "rate": "0.19"}"#
    } else {
        ""
    };
    serde_json::from_str(&format!(
        r#"{{"id": "shop", "currency": "EUR", "delivery": "email", "services": "gtm_cdn",
            "payment": {{"method": "invoice", "terms_days": 14}}, "billing_period": "month",
            "invoicing": {{"company": "Shop Ltd", "address": ["1 High St"], "contact": "J. Doe",
                          "email": "ap@shop.example"}},
            "subscriptions": [{{"plan": "cdn", "version": 1, "start": 0}}]{tax}}}"#
    ))
    .unwrap()
}

/// The account's usage in `period`: `bytes` delivered.
fn usage(account: &Account, period: &Period, bytes: u64) -> Vec<SegmentUsage> {
    segments(account, period)
        .into_iter()
        .map(|segment| {
            let buckets = ((segment.to.as_millis() - segment.from.as_millis())
                / udn_billing::period::BUCKET_MS) as usize;
            let mut usage = UsageTotals::zero(buckets);
            usage.counters = BTreeMap::from([((Metric::BytesDelivered, "fra".into()), bytes)]);
            SegmentUsage { segment, usage }
        })
        .collect()
}

fn stored(kind: DocKind, status: Status, invoice: Invoice, inputs: InvoiceInputs) -> StoredInvoice {
    StoredInvoice {
        id: 1,
        kind,
        number: Some("INV-000001".into()),
        status,
        invoice,
        inputs,
        issued_at: None,
        due_at: None,
        credits: None,
    }
}

fn issued(period: &Period, bytes: u64) -> StoredInvoice {
    let account = account(true);
    let inputs = InvoiceInputs {
        segments: usage(&account, period, bytes),
        account,
        adjustments: Vec::new(),
    };
    let invoice = compose(&plans(), period, &inputs).unwrap();
    stored(DocKind::Invoice, Status::Issued, invoice, inputs)
}

const STATUSES: [Status; 5] = [
    Status::Draft,
    Status::Issued,
    Status::Paid,
    Status::Void,
    Status::Credited,
];

#[test]
fn each_rule_allows_exactly_the_states_the_life_cycle_names() {
    let period = Period::parse("2026-11").unwrap();
    let base = issued(&period, 10 * GB);
    let pay = Payment {
        invoice: "INV-000001".into(),
        amount: Decimal::ONE,
        method: "manual".into(),
        reference: "r".into(),
        at: period.end,
    };
    for kind in [DocKind::Invoice, DocKind::CreditNote] {
        for status in STATUSES {
            let doc = StoredInvoice {
                kind,
                status,
                ..base.clone()
            };
            let invoice = kind == DocKind::Invoice;
            assert_eq!(
                check_voidable(&doc, "INV-000001", 0).is_ok(),
                invoice && status == Status::Issued,
                "void {kind:?} {status:?}"
            );
            assert!(
                check_voidable(&doc, "INV-000001", 1).is_err(),
                "paid in part"
            );
            assert_eq!(
                credit_note_for(&doc, "INV-000001").is_ok(),
                invoice && matches!(status, Status::Issued | Status::Paid),
                "credit {kind:?} {status:?}"
            );
            assert_eq!(
                check_payable(&doc, &pay).is_ok(),
                invoice && status == Status::Issued,
                "pay {kind:?} {status:?}"
            );
            assert_eq!(
                live(&doc),
                invoice && matches!(status, Status::Issued | Status::Paid)
            );
            // Every name round-trips, and an unknown one is a clear error.
            assert_eq!(Status::parse(status.as_str()), Ok(status));
            assert_eq!(DocKind::parse(kind.as_str()), Ok(kind));
        }
    }
    let err = Status::parse("refunded").unwrap_err();
    assert_eq!(err.to_string(), r#"unknown invoice status "refunded""#);
    let zero = Payment {
        amount: Decimal::ZERO,
        ..pay
    };
    assert!(check_payable(&base, &zero).is_err(), "a zero payment");
}

proptest! {
    #[test]
    fn a_credit_note_cancels_its_invoice_to_the_cent(bytes in 0u64..5_000 * GB) {
        let period = Period::parse("2026-11").unwrap();
        let inv = issued(&period, bytes);
        let note = credit_note_for(&inv, "INV-000001").unwrap();
        prop_assert_eq!(note.total + inv.invoice.total, Decimal::ZERO);
        prop_assert_eq!(note.subtotal + inv.invoice.subtotal, Decimal::ZERO);
        prop_assert_eq!(note.lines.len(), inv.invoice.lines.len());
        for (n, l) in note.lines.iter().zip(&inv.invoice.lines) {
            prop_assert_eq!(n.amount, -l.amount);
            prop_assert!(n.description.starts_with("Credit of INV-000001"));
        }
    }

    /// Late usage is billed as the difference between pricing the period's usage now and
    /// as billed: the adjusted invoice's subtotal is its own plus exactly that, and no
    /// difference gives no line.
    #[test]
    fn an_adjustment_bills_the_difference_once(
        before in 0u64..3_000 * GB,
        late in 0u64..3_000 * GB,
        own in 0u64..3_000 * GB,
        tax in any::<bool>(),
    ) {
        let plans = plans();
        let nov = Period::parse("2026-11").unwrap();
        let dec = Period::parse("2026-12").unwrap();
        let acct = account(tax);
        let adj = Adjustment {
            period: nov,
            invoice: "INV-000001".into(),
            account: acct.clone(),
            before: usage(&acct, &nov, before),
            after: usage(&acct, &nov, before + late),
        };
        let was = price(&acct, &plans, &nov, &adj.before).unwrap();
        let now = price(&acct, &plans, &nov, &adj.after).unwrap();
        let lines = adjustment_lines(&plans, &adj).unwrap();
        let sum: Decimal = lines.iter().map(|l| l.amount).sum();
        prop_assert_eq!(sum, now.subtotal - was.subtotal);
        prop_assert_eq!(lines.is_empty(), now.subtotal == was.subtotal);

        let plain = InvoiceInputs {
            account: acct.clone(),
            segments: usage(&acct, &dec, own),
            adjustments: Vec::new(),
        };
        let alone = compose(&plans, &dec, &plain).unwrap();
        prop_assert_eq!(&alone, &price(&acct, &plans, &dec, &plain.segments).unwrap());
        let with = compose(&plans, &dec, &InvoiceInputs { adjustments: vec![adj], ..plain }).unwrap();
        prop_assert_eq!(with.subtotal, alone.subtotal + sum);
        let tax_amount = with.tax.as_ref().map_or(Decimal::ZERO, |t| t.amount);
        prop_assert_eq!(with.total, with.subtotal + tax_amount);
        prop_assert_eq!(with.tax.is_some(), tax);
    }

    #[test]
    fn a_period_is_billed_only_once_it_is_over(offset in -10_000_000i64..10_000_000) {
        let nov = Period::parse("2026-11").unwrap();
        let now = Timestamp::from_millis((nov.end.as_millis() as i64 + offset) as u64);
        prop_assert_eq!(check_over(&nov, now).is_ok(), offset >= 0);
    }
}

#[test]
fn billed_follows_the_newest_adjustment_of_the_period() {
    let plans = plans();
    let nov = Period::parse("2026-11").unwrap();
    let dec = Period::parse("2026-12").unwrap();
    let jan = Period::parse("2027-01").unwrap();
    let first = issued(&nov, 10 * GB);
    let acct = first.inputs.account.clone();
    let adjusted = |id: i64, number: &str, period: &Period, before: u64, after: u64| {
        let adj = Adjustment {
            period: nov,
            invoice: "INV-000001".into(),
            account: acct.clone(),
            before: usage(&acct, &nov, before),
            after: usage(&acct, &nov, after),
        };
        let inputs = InvoiceInputs {
            account: acct.clone(),
            segments: usage(&acct, period, GB),
            adjustments: vec![adj],
        };
        let invoice = compose(&plans, period, &inputs).unwrap();
        StoredInvoice {
            id,
            number: Some(number.into()),
            ..stored(DocKind::Invoice, Status::Issued, invoice, inputs)
        }
    };
    let second = adjusted(2, "INV-000002", &dec, 10 * GB, 12 * GB);
    let third = adjusted(3, "INV-000003", &jan, 12 * GB, 15 * GB);

    let b = billed(&[&first, &second, &third], &nov).unwrap();
    assert_eq!(b.usage, usage(&acct, &nov, 15 * GB));
    assert_eq!(b.adjusted_on, ["INV-000002", "INV-000003"]);

    // A voided adjusting invoice no longer counts.
    let voided = StoredInvoice {
        status: Status::Void,
        ..third.clone()
    };
    let b = billed(&[&first, &second, &voided], &nov).unwrap();
    assert_eq!(b.usage, usage(&acct, &nov, 12 * GB));
    // Nothing live for the period: nothing billed.
    let credited = StoredInvoice {
        status: Status::Credited,
        ..first.clone()
    };
    assert!(billed(&[&credited], &nov).is_none());
}
