//! The error type of `udn-billing`.

use crate::period::PeriodKind;

/// Everything that can go wrong in `udn-billing`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A timestamp lies outside the range periods can describe (before 1970-01-05, the
    /// first full ISO week after the epoch, or after the year 9999).
    #[error("timestamp {ms} ms is outside the supported range of billing periods")]
    PeriodOutOfRange {
        /// The timestamp in milliseconds since the epoch.
        ms: u64,
    },
    /// A period label could not be parsed (see [`crate::Period::parse`]).
    #[error(
        "bad period label {label:?}: expected YYYY, YYYY-Qn, YYYY-MM, YYYY-Www or YYYY-MM-DDTHH"
    )]
    BadPeriodLabel {
        /// The label given.
        label: String,
    },
    /// A subscription names a plan version that is not in the plan book.
    #[error("unknown plan {plan} version {version}")]
    UnknownPlan {
        /// Plan id.
        plan: String,
        /// Plan version.
        version: u32,
    },
    /// A plan is inconsistent.
    #[error("plan {plan} v{version}, component {component:?}: {problem}")]
    InvalidPlan {
        /// Plan id.
        plan: String,
        /// Plan version.
        version: u32,
        /// Component name (empty for the plan itself).
        component: String,
        /// What is wrong.
        problem: PlanProblem,
    },
    /// An account is inconsistent, or does not fit the plan it subscribes to.
    #[error("account {account}: {problem}")]
    InvalidAccount {
        /// Account id.
        account: String,
        /// What is wrong.
        problem: AccountProblem,
    },
    /// A usage batch was replayed with the same idempotency key but different records.
    #[error("usage batch {key:?} was already applied with different contents")]
    BatchConflict {
        /// The idempotency key.
        key: String,
    },
    /// Adding a usage batch would overflow a 64-bit counter; nothing was applied.
    #[error("usage batch {key:?} overflows a counter of account {account}")]
    UsageOverflow {
        /// The idempotency key.
        key: String,
        /// The account whose counter would overflow.
        account: String,
    },
    /// An invoice amount does not fit a decimal of 28 digits.
    #[error("invoice amounts of account {account} overflow")]
    AmountOverflow {
        /// Account id.
        account: String,
    },
    /// Usage given to [`crate::price`] does not match the segments of the period.
    #[error("usage for account {account} does not cover segment {from}..{to} ms")]
    UsageMismatch {
        /// Account id.
        account: String,
        /// Segment start (ms).
        from: u64,
        /// Segment end (ms).
        to: u64,
    },
}

/// What is wrong with a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanProblem {
    /// The plan id is empty.
    #[error("empty plan id")]
    EmptyId,
    /// A currency code is not three upper-case ASCII letters.
    #[error("currency code {0:?} is not three upper-case letters")]
    BadCurrency(String),
    /// A price or amount is negative.
    #[error("negative price or amount")]
    NegativePrice,
    /// A tiered component has no tiers.
    #[error("no tiers")]
    NoTiers,
    /// Tier bounds must be positive and strictly increasing.
    #[error("tier bounds are not positive and strictly increasing")]
    TierBoundsNotIncreasing,
    /// Only the last tier may be unbounded, and it must be.
    #[error("only the last tier must be unbounded (up_to omitted)")]
    LastTierBounded,
    /// Volume tiers must have non-increasing unit prices.
    #[error("volume tier unit prices increase with quantity")]
    VolumePricesIncrease,
    /// A price or amount is above 10^9 (the bound that keeps every product exact).
    #[error("price or amount above 1,000,000,000")]
    PriceTooLarge,
    /// Two components of a plan have the same name.
    #[error("duplicate component name")]
    DuplicateComponent,
}

/// What is wrong with an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountProblem {
    /// The account id is empty.
    #[error("empty account id")]
    EmptyId,
    /// The account's currency differs from its plan's.
    #[error("plan {plan} is priced in {plan_currency}, the account in {account_currency}")]
    CurrencyMismatch {
        /// Plan id.
        plan: String,
        /// Plan currency.
        plan_currency: String,
        /// Account currency.
        account_currency: String,
    },
    /// The plan's billing period differs from the account's.
    #[error("plan {plan} is billed per {plan_period}, the account per {account_period}")]
    PeriodMismatch {
        /// Plan id.
        plan: String,
        /// Plan period kind.
        plan_period: PeriodKind,
        /// Account period kind.
        account_period: PeriodKind,
    },
    /// A GTM-only account subscribes to a plan with CDN components.
    #[error("plan {plan} charges for CDN usage but the account has chosen GTM only")]
    CdnNotChosen {
        /// Plan id.
        plan: String,
    },
    /// A subscription ends before it starts.
    #[error("subscription to {plan} ends before it starts")]
    SubscriptionEndsBeforeStart {
        /// Plan id.
        plan: String,
    },
    /// A negative tax rate.
    #[error("negative tax rate")]
    NegativeTax,
    /// A subscription quantity above [`crate::account::MAX_QUANTITY`].
    #[error("subscription to {plan}: quantity {quantity} is above 1,000,000,000")]
    QuantityTooLarge {
        /// Plan id.
        plan: String,
        /// The quantity given.
        quantity: u32,
    },
}
