//! Currencies and the one rounding rule of every invoice.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::PlanProblem;

/// The rounding rule applied once to each line item and once to the tax: half away from
/// zero (commercial rounding) to the currency's minor units. Never banker's rounding.
pub const ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// An ISO 4217 currency code such as `EUR`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(pub String);

impl Currency {
    /// A currency from its code (not validated; see [`Currency::validate`]).
    pub fn new(code: &str) -> Self {
        Currency(code.to_owned())
    }

    /// The ISO code.
    pub fn code(&self) -> &str {
        &self.0
    }

    /// Checks the code is three upper-case ASCII letters.
    pub fn validate(&self) -> Result<(), PlanProblem> {
        let b = self.0.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(())
        } else {
            Err(PlanProblem::BadCurrency(self.0.clone()))
        }
    }

    /// Decimal places of the currency's minor unit (ISO 4217): 0 for JPY, KRW and a few
    /// others, 3 for BHD, IQD, JOD, KWD, LYD, OMR and TND, 2 otherwise.
    pub fn minor_units(&self) -> u32 {
        match self.0.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }

    /// Rounds `amount` to the currency's minor units with [`ROUNDING`].
    ///
    /// # Examples
    ///
    /// ```
    /// use rust_decimal::Decimal;
    /// use udn_billing::Currency;
    /// let eur = Currency::new("EUR");
    /// assert_eq!(eur.round(Decimal::new(1005, 3)), Decimal::new(101, 2)); // 1.005 -> 1.01
    /// assert_eq!(eur.round(Decimal::new(-1005, 3)), Decimal::new(-101, 2));
    /// ```
    pub fn round(&self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.minor_units(), ROUNDING)
    }

    /// Formats an amount with exactly the minor-unit digits, e.g. `1234.50 EUR`.
    pub fn format(&self, amount: Decimal) -> String {
        let mut a = self.round(amount);
        a.rescale(self.minor_units());
        format!("{a} {}", self.0)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
