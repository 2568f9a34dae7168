//! What the store returns: plain records of stored state.

use tollgate_core::{
    AccountId, AccountPlan, ActionId, Balances, BillingMode, CycleAnchor, HoldStatus, Micros, PriceSource,
    Quantity, SpendState, TierId, Timestamp, TransactionKind,
};

/// Largest page a list may return.
pub const MAX_PAGE_SIZE: u32 = 100;

/// A customer account as stored, spend rolled to the current cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// The operator's id.
    pub id: AccountId,
    /// Display name.
    pub name: String,
    /// Billing e-mail.
    pub email: String,
    /// Creation time; anchors the billing cycle.
    pub created_at: Timestamp,
    /// Prepaid or invoice.
    pub mode: BillingMode,
    /// Available and held funds.
    pub balances: Balances,
    /// Spend and savings totals.
    pub spend: SpendState,
    /// What Sales agreed.
    pub plan: AccountPlan,
}

impl AccountRecord {
    /// The day of month the account's cycles start on.
    pub fn anchor(&self) -> CycleAnchor {
        CycleAnchor::from_created_at(self.created_at)
    }
}

/// A stored usage charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The journal transaction id.
    pub id: String,
    /// Who paid.
    pub account: AccountId,
    /// What was done.
    pub action: ActionId,
    /// How many units.
    pub quantity: Quantity,
    /// Price paid per unit.
    pub unit_price: Micros,
    /// List price per unit.
    pub unit_list_price: Micros,
    /// Amount charged.
    pub amount: Micros,
    /// Amount at list price.
    pub list_amount: Micros,
    /// Where the unit price came from.
    pub price_source: PriceSource,
    /// Tier the charge was priced at.
    pub tier: TierId,
    /// Version of the price book it was priced with.
    pub price_book_version: String,
    /// Balances right after the charge.
    pub balances_after: Balances,
    /// The hold it captured, if any.
    pub hold_id: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// A result that may be the replay of an earlier identical request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotent<T> {
    /// The (original) result.
    pub value: T,
    /// True when no money moved because the key was seen before.
    pub replayed: bool,
}

/// One line of an account's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionLine {
    /// Journal transaction id.
    pub id: String,
    /// The account.
    pub account: AccountId,
    /// Position in the account's journal (1, 2, …).
    pub sequence: i64,
    /// What it was.
    pub kind: TransactionKind,
    /// Signed change of the total balance.
    pub amount: Micros,
    /// Signed change of the available balance.
    pub available_amount: Micros,
    /// Balances after it.
    pub balances_after: Balances,
    /// Human description.
    pub description: String,
    /// Related object (hold id, top-up id), if any.
    pub reference: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// A stored hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    /// Hold id.
    pub id: String,
    /// Whose funds.
    pub account: AccountId,
    /// For which action.
    pub action: ActionId,
    /// Amount reserved.
    pub amount: Micros,
    /// Where it is in its life.
    pub status: HoldStatus,
    /// When it releases itself.
    pub expires_at: Timestamp,
    /// When it was placed.
    pub created_at: Timestamp,
    /// When it was captured, voided or expired.
    pub closed_at: Option<Timestamp>,
    /// Amount charged at capture.
    pub captured_amount: Option<Micros>,
    /// Balances of the account right after the hold's last change.
    pub balances_after: Balances,
}

/// The findings of a ledger verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerReport {
    /// Accounts whose balances were recomputed.
    pub accounts_checked: u64,
    /// Journal transactions checked.
    pub transactions_checked: u64,
    /// Every broken invariant, in words.
    pub problems: Vec<String>,
}

impl LedgerReport {
    /// True when every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A stored API key (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id (`key_…`), used as the audit actor.
    pub id: String,
    /// Hex SHA-256 of the secret key.
    pub key_hash: String,
    /// What it is for.
    pub label: String,
    /// When it was created.
    pub created_at: Timestamp,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Entry id.
    pub id: String,
    /// Who (`api_key:key_…`, `cli:root`, `system`).
    pub actor: String,
    /// What (`grant.created`, …).
    pub action: String,
    /// Which account, if any.
    pub account: Option<AccountId>,
    /// State before, as `key=value` text.
    pub before: Option<String>,
    /// State after, as `key=value` text.
    pub after: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// Which page of a list: `limit` 1–100 and a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page.
    pub limit: u32,
    /// Id of the item the page starts after.
    pub starting_after: Option<String>,
}

impl PageRequest {
    /// Clamps the limit into 1–100.
    pub fn new(limit: u32, starting_after: Option<String>) -> PageRequest {
        PageRequest {
            limit: limit.clamp(1, MAX_PAGE_SIZE),
            starting_after,
        }
    }
}

impl Default for PageRequest {
    fn default() -> PageRequest {
        PageRequest::new(20, None)
    }
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// True when more items follow.
    pub has_more: bool,
}
