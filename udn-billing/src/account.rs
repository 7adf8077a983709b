//! Customer accounts: invoicing information, services chosen, subscriptions.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use udn_core::Timestamp;

use crate::error::{AccountProblem, Error};
use crate::money::Currency;
use crate::period::PeriodKind;

/// A customer account and everything needed to invoice it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Stable id; usage records name it (it is the `customer` of the log records).
    pub id: String,
    /// Who is invoiced and where.
    pub invoicing: InvoicingInfo,
    /// Currency of every invoice of this account.
    pub currency: Currency,
    /// How invoices reach the customer.
    pub delivery: Delivery,
    /// How the customer pays.
    pub payment: PaymentMethod,
    /// The services chosen.
    pub services: Services,
    /// How often the account is invoiced; its plans must be priced per this period.
    pub billing_period: PeriodKind,
    /// Tax added to the subtotal, if any.
    #[serde(default)]
    pub tax: Option<Tax>,
    /// Plans subscribed, with their validity; a plan change ends one subscription and
    /// starts the next at the same instant.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// Invoicing information printed on every invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicingInfo {
    /// Legal name of the company.
    pub company: String,
    /// Postal address, one line per entry (street, postcode and city, country).
    pub address: Vec<String>,
    /// Contact person.
    pub contact: String,
    /// E-mail address for invoices and notices.
    pub email: String,
    /// VAT or other tax id, printed if present.
    #[serde(default)]
    pub tax_id: Option<String>,
}

/// How an invoice reaches the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Sent by e-mail to [`InvoicingInfo::email`].
    Email,
    /// Printed and posted to [`InvoicingInfo::address`].
    Post,
}

/// How the customer pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum PaymentMethod {
    /// Pays by bank transfer against the invoice within `terms_days`.
    Invoice {
        /// Days from issue to due date.
        terms_days: u32,
    },
    /// A card on file with a payment provider, charged when the invoice is issued.
    CardOnFile {
        /// The provider's reference of the stored card (never the card number).
        card_ref: String,
    },
}

/// The services a customer has chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Services {
    /// Global traffic management (DNS) only.
    GtmOnly,
    /// GTM with the content delivery network.
    GtmCdn,
}

/// A tax added to the subtotal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tax {
    /// Name printed on the invoice, e.g. `VAT 19%`.
    pub name: String,
    /// Rate as a fraction, e.g. `0.19`.
    pub rate: Decimal,
}

/// A subscription of an account to one version of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Plan id.
    pub plan: String,
    /// Plan version (plans are immutable per version).
    pub version: u32,
    /// When it starts (one-time fees are charged in the period containing this).
    pub start: Timestamp,
    /// When it stops (exclusive), if it does.
    #[serde(default)]
    pub end: Option<Timestamp>,
    /// Number of units for subscription components (seats, zones, hostnames).
    #[serde(default = "one")]
    pub quantity: u32,
}

/// The largest subscription quantity an account may hold (see [`crate::plan::MAX_PRICE`]).
pub const MAX_QUANTITY: u32 = 1_000_000_000;

fn one() -> u32 {
    1
}

impl Account {
    /// Checks what can be checked without the plans.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |problem| Error::InvalidAccount {
            account: self.id.clone(),
            problem,
        };
        if self.id.is_empty() {
            return Err(bad(AccountProblem::EmptyId));
        }
        if self.tax.as_ref().is_some_and(|t| t.rate.is_sign_negative()) {
            return Err(bad(AccountProblem::NegativeTax));
        }
        for s in &self.subscriptions {
            if s.quantity > MAX_QUANTITY {
                return Err(bad(AccountProblem::QuantityTooLarge {
                    plan: s.plan.clone(),
                    quantity: s.quantity,
                }));
            }
            if s.end.is_some_and(|e| e < s.start) {
                return Err(bad(AccountProblem::SubscriptionEndsBeforeStart {
                    plan: s.plan.clone(),
                }));
            }
        }
        Ok(())
    }
}
