//! Response bodies shared by several routes, rendered from store records.
//! Money is always `Micros`'s canonical string; times are RFC 3339 UTC.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tollgate_core::{Balances, BillingMode, Micros, PriceBook, TierBasis, TierIndex, Timestamp};
use tollgate_store::{AccountRecord, AuditRecord, HoldRecord, TransactionLine, UsageRecord};
use utoipa::ToSchema;

use crate::error::ApiError;

/// RFC 3339 in UTC, with as many fractional digits as the instant needs.
pub fn timestamp(at: Timestamp) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    // Only years outside 0..=9999 fail to format; the store never holds those.
    utc.format(&Rfc3339).unwrap_or_else(|_| utc.to_string())
}

/// `available + held`, the balance shown to customers.
pub fn total(balances: Balances) -> Result<Micros, ApiError> {
    balances
        .total()
        .map_err(|_| ApiError::internal(&"balance total overflows"))
}

/// A tier as shown on an account: id, name and the discount it gives.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TierSummary {
    /// Tier id (`growth`).
    #[schema(example = "growth")]
    pub id: String,
    /// Tier name (`Growth`).
    #[schema(example = "Growth")]
    pub name: String,
    /// Whole-percent discount off list prices.
    #[schema(example = 10)]
    pub discount_percent: u8,
}

impl TierSummary {
    /// The account's current tier, with the larger of tier and personal discount.
    pub fn current(record: &AccountRecord, book: &PriceBook, basis: TierBasis) -> TierSummary {
        let index = record.spend.current_tier(book, basis);
        let spec = book.tier(index);
        TierSummary {
            id: spec.id.to_string(),
            name: spec.name.clone(),
            discount_percent: book.effective_discount(index, &record.plan).get(),
        }
    }

    /// A tier of the book, with its own discount.
    pub fn of(book: &PriceBook, index: TierIndex) -> TierSummary {
        let spec = book.tier(index);
        TierSummary {
            id: spec.id.to_string(),
            name: spec.name.clone(),
            discount_percent: spec.discount.get(),
        }
    }
}

/// The account's card (always `null` until payments exist).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PaymentMethod {
    /// Card brand (`visa`).
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month.
    pub exp_month: u8,
    /// Expiry year.
    pub exp_year: u16,
    /// `active`.
    pub status: String,
}

/// The auto top-up rule.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AutoRecharge {
    /// Whether the rule is on.
    pub enabled: bool,
    /// Recharge when the available balance falls below this.
    pub threshold: Option<String>,
    /// Recharge up to this balance.
    pub target: Option<String>,
    /// `off`, `active`, `in_progress`, `failed`, `action_required` or `cap_reached`.
    #[schema(example = "active")]
    pub status: String,
    /// Most auto-recharged money per billing cycle.
    pub monthly_cap: Option<String>,
    /// Auto-recharged so far this cycle.
    pub recharged_this_cycle: Option<String>,
    /// Why the last recharge failed (`card_declined`, `authentication_required`, …).
    pub failure_code: Option<String>,
    /// When it failed.
    pub failed_at: Option<String>,
    /// When the rule arms itself again after a failure (unless the card or settings change first).
    pub retry_at: Option<String>,
}

impl AutoRecharge {
    /// A rule that was never switched on.
    pub fn off() -> AutoRecharge {
        AutoRecharge {
            enabled: false,
            threshold: None,
            target: None,
            status: "off".to_owned(),
            monthly_cap: None,
            recharged_this_cycle: None,
            failure_code: None,
            failed_at: None,
            retry_at: None,
        }
    }
}

/// The credit limit to show: only invoice accounts have one.
pub fn credit_limit(mode: BillingMode) -> Option<String> {
    match mode {
        BillingMode::Prepaid => None,
        BillingMode::Invoice { credit_limit } => Some(credit_limit.to_string()),
    }
}

/// A customer account.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Account {
    /// The operator's id for the customer.
    #[schema(example = "acme")]
    pub id: String,
    /// Always `account`.
    #[schema(example = "account")]
    pub object: &'static str,
    /// Display name.
    pub name: String,
    /// Billing e-mail.
    pub email: String,
    /// Total balance: available plus held.
    #[schema(example = "49.99")]
    pub balance: String,
    /// What may be spent now.
    pub available_balance: String,
    /// Reserved by active holds.
    pub held_balance: String,
    /// `prepaid` or `invoice`.
    #[schema(example = "prepaid")]
    pub billing_mode: &'static str,
    /// How far below zero an invoice account may go; `null` for prepaid.
    pub credit_limit: Option<String>,
    /// The Spend & Save tier pricing the next charge.
    pub tier: TierSummary,
    /// The card on file.
    pub payment_method: Option<PaymentMethod>,
    /// The auto top-up rule.
    pub auto_recharge: AutoRecharge,
    /// Creation time; the billing cycle is anchored on its day.
    pub created_at: String,
}

impl Account {
    /// Renders a stored account.
    pub fn render(record: &AccountRecord, book: &PriceBook, basis: TierBasis) -> Result<Account, ApiError> {
        Ok(Account {
            id: record.id.to_string(),
            object: "account",
            name: record.name.clone(),
            email: record.email.clone(),
            balance: total(record.balances)?.to_string(),
            available_balance: record.balances.available.to_string(),
            held_balance: record.balances.held.to_string(),
            billing_mode: record.mode.code(),
            credit_limit: credit_limit(record.mode),
            tier: TierSummary::current(record, book, basis),
            payment_method: None,
            auto_recharge: AutoRecharge::off(),
            created_at: timestamp(record.created_at),
        })
    }
}

/// A usage charge.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Id of the charge (its journal transaction).
    pub id: String,
    /// Always `usage`.
    #[schema(example = "usage")]
    pub object: &'static str,
    /// Who paid.
    pub account_id: String,
    /// What was done.
    #[schema(example = "email_finder")]
    pub action: String,
    /// How many units.
    #[schema(example = 1)]
    pub quantity: u64,
    /// Price paid per unit.
    #[schema(example = "0.027")]
    pub unit_price: String,
    /// List price per unit.
    #[schema(example = "0.03")]
    pub unit_list_price: String,
    /// `quantity × unit_price`.
    pub amount: String,
    /// `quantity × unit_list_price`.
    pub list_amount: String,
    /// `list_amount − amount`, never negative.
    pub savings: String,
    /// Id of the tier the charge was priced at (the tier before the charge).
    #[schema(example = "growth")]
    pub tier: String,
    /// `tier`, `personal_discount` or `custom`.
    pub price_source: &'static str,
    /// Version of the price book it was priced with.
    pub price_book_version: String,
    /// Total balance right after the charge.
    pub balance: String,
    /// Available balance right after the charge.
    pub available_balance: String,
    /// The hold this charge captured, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// True when this is the stored result of an earlier identical request.
    pub replayed: bool,
    /// When it was charged.
    pub created_at: String,
}

impl Usage {
    /// Renders a stored charge.
    pub fn render(record: &UsageRecord, replayed: bool) -> Result<Usage, ApiError> {
        let savings = record
            .list_amount
            .checked_sub(record.amount)
            .map_err(|_| ApiError::internal(&"savings overflow"))?
            .max(Micros::ZERO);
        Ok(Usage {
            id: record.id.clone(),
            object: "usage",
            account_id: record.account.to_string(),
            action: record.action.to_string(),
            quantity: record.quantity.get(),
            unit_price: record.unit_price.to_string(),
            unit_list_price: record.unit_list_price.to_string(),
            amount: record.amount.to_string(),
            list_amount: record.list_amount.to_string(),
            savings: savings.to_string(),
            tier: record.tier.to_string(),
            price_source: record.price_source.code(),
            price_book_version: record.price_book_version.clone(),
            balance: total(record.balances_after)?.to_string(),
            available_balance: record.balances_after.available.to_string(),
            hold_id: record.hold_id.clone(),
            replayed,
            created_at: timestamp(record.created_at),
        })
    }
}

/// A hold: funds reserved for an action of unknown final cost.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Hold {
    /// Hold id.
    pub id: String,
    /// Always `hold`.
    #[schema(example = "hold")]
    pub object: &'static str,
    /// Whose funds.
    pub account_id: String,
    /// The action whose price applies at capture.
    pub action: String,
    /// Amount reserved.
    #[schema(example = "5.00")]
    pub amount: String,
    /// `active`, `captured`, `voided` or `expired`.
    #[schema(example = "active")]
    pub status: &'static str,
    /// When an uncaptured hold releases itself.
    pub expires_at: String,
    /// Amount charged at capture.
    pub captured_amount: Option<String>,
    /// When it was captured, voided or expired.
    pub closed_at: Option<String>,
    /// Total balance after the hold's last change.
    pub balance: String,
    /// Available balance after the hold's last change.
    pub available_balance: String,
    /// When it was placed.
    pub created_at: String,
}

impl Hold {
    /// Renders a stored hold.
    pub fn render(record: &HoldRecord) -> Result<Hold, ApiError> {
        Ok(Hold {
            id: record.id.clone(),
            object: "hold",
            account_id: record.account.to_string(),
            action: record.action.to_string(),
            amount: record.amount.to_string(),
            status: record.status.code(),
            expires_at: timestamp(record.expires_at),
            captured_amount: record.captured_amount.map(|amount| amount.to_string()),
            closed_at: record.closed_at.map(timestamp),
            balance: total(record.balances_after)?.to_string(),
            available_balance: record.balances_after.available.to_string(),
            created_at: timestamp(record.created_at),
        })
    }
}

/// One line of an account's ledger.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Transaction {
    /// Journal transaction id.
    pub id: String,
    /// Always `transaction`.
    #[schema(example = "transaction")]
    pub object: &'static str,
    /// `usage`, `topup`, `auto_recharge`, `grant`, `refund`, `dispute`,
    /// `adjustment`, `invoice_payment`, `hold` or `hold_release`.
    #[serde(rename = "type")]
    #[schema(example = "grant")]
    pub kind: &'static str,
    /// Signed change of the total balance.
    #[schema(example = "25.00")]
    pub amount: String,
    /// Signed change of the available balance (differs for holds).
    pub available_amount: String,
    /// Total balance after it.
    pub balance_after: String,
    /// Available balance after it.
    pub available_balance_after: String,
    /// What it was, for people (a grant's reason).
    pub description: String,
    /// Related object (hold id, top-up id), if any.
    pub reference: Option<String>,
    /// When.
    pub created_at: String,
}

impl Transaction {
    /// Renders a journal line.
    pub fn render(line: &TransactionLine) -> Result<Transaction, ApiError> {
        Ok(Transaction {
            id: line.id.clone(),
            object: "transaction",
            kind: line.kind.code(),
            amount: line.amount.to_string(),
            available_amount: line.available_amount.to_string(),
            balance_after: total(line.balances_after)?.to_string(),
            available_balance_after: line.balances_after.available.to_string(),
            description: line.description.clone(),
            reference: line.reference.clone(),
            created_at: timestamp(line.created_at),
        })
    }
}

/// One audit log entry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Entry id.
    pub id: String,
    /// Always `audit_entry`.
    #[schema(example = "audit_entry")]
    pub object: &'static str,
    /// Who (`api_key:operator`, `cli:root`, `system`).
    pub actor: String,
    /// What (`grant.created`, …).
    pub action: String,
    /// Which account, if any.
    pub account_id: Option<String>,
    /// State before, as `key=value` text.
    pub before: Option<String>,
    /// State after, as `key=value` text.
    pub after: Option<String>,
    /// When.
    pub created_at: String,
}

impl AuditEntry {
    /// Renders an audit record.
    pub fn render(record: &AuditRecord) -> AuditEntry {
        AuditEntry {
            id: record.id.clone(),
            object: "audit_entry",
            actor: record.actor.clone(),
            action: record.action.clone(),
            account_id: record.account.as_ref().map(ToString::to_string),
            before: record.before.clone(),
            after: record.after.clone(),
            created_at: timestamp(record.created_at),
        }
    }
}

/// Declares a page type `{"data": [...], "has_more": bool}` for one item type
/// (concrete types keep the OpenAPI schema names readable).
macro_rules! page_type {
    ($(#[$doc:meta])* $name:ident, $item:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Serialize, ToSchema)]
        pub struct $name {
            /// The items.
            pub data: Vec<$item>,
            /// True when more items follow the last one.
            pub has_more: bool,
        }
    };
}

page_type!(
    /// A page of accounts, in id order.
    AccountList,
    Account
);
page_type!(
    /// A page of ledger lines, newest first.
    TransactionList,
    Transaction
);
page_type!(
    /// A page of audit entries, newest first.
    AuditList,
    AuditEntry
);
