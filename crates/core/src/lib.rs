//! Tollgate's pure domain: money, the price book and Spend & Save tiers,
//! billing cycles, ledger rules, holds, invoices and the Auto Top-Up policy.
//!
//! No IO, no async, no SQL, no serialisation: every function here is a
//! deterministic computation over values, with the current time passed in.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod commands;
pub mod cycle;
pub mod events;
pub mod hold;
pub mod ids;
pub mod invoice;
pub mod ledger;
pub mod money;
pub mod payments;
pub mod plan;
pub mod pricing;
pub mod recharge;

pub use clock::{Clock, ManualClock};
pub use commands::{Actor, GrantCommand, HoldCommand, InvalidCommand, NewAccount, UsageCommand};
pub use cycle::{BillingCycle, CycleAnchor, NextTier, SpendState, Timestamp};
pub use events::{DEFAULT_BALANCE_LOW_LEVEL, DeliveryPolicy, EventSelection, EventType, balance_crossings};
pub use hold::{HoldEvent, HoldNotActive, HoldStatus, HoldTtl};
pub use ids::{AccountId, ActionId, IdempotencyKey, InvalidId, Quantity, TierId};
pub use invoice::{
    InvoiceLine, InvoiceNumber, InvoicePayment, InvoicePeriod, InvoiceStatus, InvoiceTotals, invoice_lines,
};
pub use ledger::{
    BalanceDelta, Balances, BillingMode, InsufficientFunds, JournalTransaction, LedgerAccount,
    TransactionKind, Transfer,
};
pub use money::{Micros, MoneyOverflow, ParseMoneyError};
pub use payments::{
    DisputeStatus, InvalidRefund, InvalidTopupAmount, NewTopup, TopupAmount, TopupLimits, TopupOutcome,
    TopupSource, TopupStatus,
};
pub use plan::{InvalidPlan, PlanCommand, PlanRequest};
pub use pricing::{
    AccountPlan, ActionSpec, ChargeQuote, DiscountPercent, PriceBook, PriceBookError, PriceSource,
    PricingError, TierBasis, TierIndex, TierSpec, UnitPrice,
};
pub use recharge::{
    AutoRechargeSettings, FailureClass, InvalidRechargeSettings, RechargeBlocked, RechargeDecision,
    RechargeOutcome, RechargeRule, RechargeRuleError, RechargeSettingsField, RechargeSettingsProblem,
    RechargeStatus, classify_failure, classify_payment_failure, recharge_amount, recharge_decision,
    recharge_idempotency_key, retry_delay_ms,
};
