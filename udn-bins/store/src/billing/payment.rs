//! Payments. Charging a card is behind [`PaymentProvider`]; UDN ships no provider, and
//! no stand-in pretends to be one: until a real provider is configured, payments are
//! recorded by hand with [`record_manual_payment`] (bank transfers, or card charges
//! made in the provider's own dashboard), and card-on-file invoices are reported as
//! awaiting payment.

use anyhow::Result;
use rust_decimal::Decimal;
use serde::Serialize;
use udn_billing::{Currency, PaymentMethod, Timestamp};

use super::store::{BillingStore, DocKind, Payment, Status};

/// A card payment provider.
pub trait PaymentProvider {
    /// The provider's name, recorded as the payment method.
    fn name(&self) -> &str;
    /// Charges `amount` to the stored card `card_ref` for invoice `number`; returns the
    /// provider's transaction reference.
    fn charge(
        &self,
        card_ref: &str,
        amount: Decimal,
        currency: &Currency,
        number: &str,
    ) -> Result<String>;
}

/// Records a payment received outside UDN (by transfer, or charged by hand).
pub fn record_manual_payment(
    store: &mut dyn BillingStore,
    number: &str,
    amount: Decimal,
    reference: &str,
    at: Timestamp,
) -> Result<Status> {
    store.record_payment(&Payment {
        invoice: number.to_owned(),
        amount,
        method: "manual".to_owned(),
        reference: reference.to_owned(),
        at,
    })
}

/// What [`collect_card_payments`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CollectReport {
    /// Invoices charged, with the provider's reference.
    pub charged: Vec<(String, String)>,
    /// Card-on-file invoices left unpaid because no provider is configured.
    pub awaiting_manual_payment: Vec<String>,
    /// Charges that failed, with the error.
    pub failed: Vec<(String, String)>,
}

/// Charges every issued, unpaid invoice of a card-on-file account through `provider`;
/// with `None`, lists them as awaiting a manually recorded payment.
pub fn collect_card_payments(
    store: &mut dyn BillingStore,
    provider: Option<&dyn PaymentProvider>,
    now: Timestamp,
) -> Result<CollectReport> {
    let mut report = CollectReport::default();
    for inv in store.issued()? {
        let (Some(number), DocKind::Invoice, Status::Issued) =
            (inv.number.clone(), inv.kind, inv.status)
        else {
            continue;
        };
        let PaymentMethod::CardOnFile { card_ref } = &inv.inputs.account.payment else {
            continue;
        };
        let Some(p) = provider else {
            report.awaiting_manual_payment.push(number);
            continue;
        };
        let paid: Decimal = store.payments(&number)?.iter().map(|p| p.amount).sum();
        let due = inv.invoice.total - paid;
        if due <= Decimal::ZERO {
            continue;
        }
        match p.charge(card_ref, due, &inv.invoice.currency, &number) {
            Ok(reference) => {
                store.record_payment(&Payment {
                    invoice: number.clone(),
                    amount: due,
                    method: p.name().to_owned(),
                    reference: reference.clone(),
                    at: now,
                })?;
                report.charged.push((number, reference));
            }
            Err(e) => report.failed.push((number, format!("{e:#}"))),
        }
    }
    Ok(report)
}
