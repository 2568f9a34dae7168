//! What the store returns: plain records of stored state.

use tollgate_core::{
    AccountId, AccountPlan, ActionId, Actor, AutoRechargeSettings, Balances, BillingMode, CycleAnchor,
    DisputeStatus, EventSelection, EventType, HoldStatus, IdempotencyKey, InvoiceLine, InvoiceNumber,
    InvoicePayment, InvoicePeriod, InvoiceStatus, InvoiceTotals, Micros, PriceSource, Quantity,
    RechargeBlocked, RechargeRule, SpendState, TierId, Timestamp, TopupSource, TopupStatus, TransactionKind,
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
    /// When the account's oldest open invoice falls due; past it, usage is refused.
    pub invoice_due_at: Option<Timestamp>,
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

/// A saved card as the processor described it when it was confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardRecord {
    /// The processor's id for the card (`pm_…`).
    pub processor_id: String,
    /// `visa`, `mastercard`, …
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month, 1–12.
    pub exp_month: u8,
    /// Expiry year, four digits.
    pub exp_year: u16,
    /// When it became the account's card.
    pub added_at: Timestamp,
}

/// An account's link to the card processor: its customer and its one default card.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaymentProfile {
    /// The processor's customer (`cus_…`), once created.
    pub processor_customer: Option<String>,
    /// The default card, if one is saved.
    pub card: Option<CardRecord>,
}

/// What confirming a card setup changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardSetupResult {
    /// False when this setup was confirmed before (a replayed return or webhook): nothing changed.
    pub applied: bool,
    /// The card it replaced, to detach from the processor's customer.
    pub replaced: Option<CardRecord>,
    /// The account's card now.
    pub card: Option<CardRecord>,
}

/// A top-up: one payment into the balance, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopupRecord {
    /// `top_…`.
    pub id: String,
    /// Whose balance.
    pub account: AccountId,
    /// Amount to pay, whole cents.
    pub amount: Micros,
    /// Saved card, hosted page or auto top-up.
    pub source: TopupSource,
    /// Where it stands.
    pub status: TopupStatus,
    /// The key it was created under.
    pub idempotency_key: String,
    /// The hosted page session, for hosted-page top-ups.
    pub checkout_session: Option<String>,
    /// The processor's payment (`pi_…`).
    pub payment_reference: Option<String>,
    /// The processor's charge (`ch_…`), which refunds and disputes name.
    pub charge_reference: Option<String>,
    /// Brand of the card paid with.
    pub card_brand: Option<String>,
    /// Last four digits of the card paid with.
    pub card_last4: Option<String>,
    /// Why it failed (`card_declined`, …).
    pub failure_code: Option<String>,
    /// The processor's message about the failure.
    pub failure_message: Option<String>,
    /// The journal transaction that credited it (set exactly when succeeded).
    pub credited_transaction: Option<String>,
    /// Balances right after the credit.
    pub balances_after_credit: Option<Balances>,
    /// Total taken back by refunds (pending ones included).
    pub refunded: Micros,
    /// Total taken back by open or lost disputes.
    pub disputed: Micros,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it was credited.
    pub succeeded_at: Option<Timestamp>,
    /// For an auto top-up, the recharge's sequence number (its processor key derives from it).
    pub recharge_sequence: Option<u64>,
}

/// A request to refund (part of) a paid top-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// The top-up.
    pub topup_id: String,
    /// Whole cents; `None` refunds everything that is left.
    pub amount: Option<Micros>,
    /// Why, for the journal and the audit log.
    pub reason: String,
    /// Makes the refund happen at most once.
    pub idempotency_key: IdempotencyKey,
    /// Who asked.
    pub actor: Actor,
}

impl RefundRequest {
    /// Canonical request identity for idempotent replays.
    pub fn fingerprint(&self) -> String {
        format!(
            "refund\u{1f}{}\u{1f}{}",
            self.amount
                .map(|amount| amount.get().to_string())
                .unwrap_or_default(),
            self.reason
        )
    }
}

/// Where a refund stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundState {
    /// Taken from the balance; the processor has not confirmed yet.
    Pending,
    /// The processor confirmed it.
    Succeeded,
    /// The processor refused it; the balance was given back.
    Failed,
}

impl RefundState {
    /// Stable snake_case code.
    pub const fn code(self) -> &'static str {
        match self {
            RefundState::Pending => "pending",
            RefundState::Succeeded => "succeeded",
            RefundState::Failed => "failed",
        }
    }

    /// Parses [`RefundState::code`].
    pub fn parse(code: &str) -> Option<RefundState> {
        [RefundState::Pending, RefundState::Succeeded, RefundState::Failed]
            .into_iter()
            .find(|state| state.code() == code)
    }
}

/// A refund of a top-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    /// `ref_…`.
    pub id: String,
    /// The refunded top-up.
    pub topup_id: String,
    /// Whose balance.
    pub account: AccountId,
    /// Amount refunded.
    pub amount: Micros,
    /// Pending, succeeded or failed.
    pub state: RefundState,
    /// The processor's refund (`re_…`), once known.
    pub processor_refund: Option<String>,
    /// Why.
    pub reason: String,
    /// The key it was created under (`None` for refunds made in the processor's dashboard).
    pub idempotency_key: Option<String>,
    /// The journal transaction that took the money back.
    pub taken_transaction: String,
    /// Balances right after the money was taken back.
    pub balances_after: Balances,
    /// When.
    pub created_at: Timestamp,
}

/// News about a card dispute (chargeback) on a top-up's payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisputeNews {
    /// The processor's dispute id.
    pub dispute: String,
    /// The disputed payment.
    pub payment_reference: Option<String>,
    /// The disputed charge.
    pub charge_reference: String,
    /// The disputed amount.
    pub amount: Micros,
    /// Open, won or lost.
    pub status: DisputeStatus,
}

/// What applying dispute news did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisputeApplied {
    /// The top-up disputed.
    pub topup: TopupRecord,
    /// The journal line written, if money moved.
    pub line: Option<TransactionLine>,
}

/// An account's Auto Top-Up: its settings, the state of its rule and how much it
/// recharged in the current billing cycle.
///
/// An account that never saved settings reads as off: the default rule, no settings,
/// the default monthly cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRechargeRecord {
    /// Whose.
    pub account: AccountId,
    /// On or off, its status as recorded, and the last recharge sequence handed out
    /// (see [`RechargeRule::status_at`] for what the status means now).
    pub rule: RechargeRule,
    /// Threshold and target, once saved.
    pub settings: Option<AutoRechargeSettings>,
    /// Most money auto top-ups may charge per billing cycle.
    pub monthly_cap: Micros,
    /// What succeeded auto top-ups charged in the current cycle.
    pub recharged_this_cycle: Micros,
    /// Start of the current billing cycle (the cap's period).
    pub cycle_start: Timestamp,
    /// When the settings or the rule last changed (`None`: never configured).
    pub updated_at: Option<Timestamp>,
}

/// What the customer saves: on or off, threshold and target, and optionally a new
/// monthly cap (`None` keeps the one saved, [`tollgate_core::recharge::DEFAULT_MONTHLY_RECHARGE_CAP`]
/// at first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRechargeChange {
    /// Switch it on (needs a saved card) or off.
    pub enabled: bool,
    /// Threshold and target, checked already.
    pub settings: AutoRechargeSettings,
    /// Zero or more, in whole cents (validated by the caller; the store refuses
    /// anything else as a [`crate::StoreError::Database`] error, writing nothing).
    pub monthly_cap: Option<Micros>,
}

/// What asking to begin a recharge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoRechargeStart {
    /// A recharge started: this pending auto top-up is to be charged (under the key
    /// derived from its recharge sequence).
    Started(Box<TopupRecord>),
    /// The available balance is not below the threshold (or nothing is configured).
    NotDue,
    /// Below the threshold, but no recharge may start (off, one in flight, cooling
    /// down, monthly cap reached).
    Blocked(RechargeBlocked),
}

/// One recorded event (the outbox row), in the account's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Position in the outbox: events of one account are numbered in the order they happened.
    pub sequence: i64,
    /// `evt_…`, stable across deliveries.
    pub id: String,
    /// What happened.
    pub kind: EventType,
    /// Whose account.
    pub account: AccountId,
    /// What it is about: the top-up, invoice, card or new tier's id.
    pub reference: Option<String>,
    /// The amount it is about: top-up or invoice amount, or the low level crossed.
    pub amount: Option<Micros>,
    /// The available balance right after it.
    pub balance: Option<Micros>,
    /// More: the failure code, the previous tier, the card's brand and last four.
    pub detail: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// Which events to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this account's.
    pub account: Option<AccountId>,
    /// Only this type.
    pub kind: Option<EventType>,
}

/// An operator endpoint to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWebhookEndpoint {
    /// `we_…`.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The signing secret (`whsec_…`).
    pub secret: String,
    /// Which events it receives.
    pub events: EventSelection,
    /// Who registered it.
    pub actor: Actor,
}

/// A registered operator endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEndpointRecord {
    /// `we_…`.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The signing secret.
    pub secret: String,
    /// Which events it receives.
    pub events: EventSelection,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When it was switched off, if it was.
    pub disabled_at: Option<Timestamp>,
}

/// Where one event's delivery to one endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not acknowledged yet; attempts continue.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Attempts stopped after the retry window.
    Failed,
}

impl DeliveryStatus {
    /// The stored and wire name.
    pub const fn code(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The status a stored name names.
    pub fn parse(code: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.code() == code)
    }
}

/// One event's delivery to one endpoint: the delivery log's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The endpoint.
    pub endpoint: String,
    /// The event.
    pub event: EventRecord,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Timestamp,
    /// The HTTP status of the last attempt, when the endpoint answered.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed, when it did.
    pub last_error: Option<String>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// When the endpoint acknowledged it.
    pub delivered_at: Option<Timestamp>,
}

/// A delivery claimed for sending: the event, and where and how to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueDelivery {
    /// The endpoint's id.
    pub endpoint: String,
    /// Where to POST.
    pub url: String,
    /// What to sign with.
    pub secret: String,
    /// What to send.
    pub event: EventRecord,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The endpoint's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed (timeout, refused connection, non-2xx), `None` when delivered.
    pub error: Option<String>,
}

/// An account's plan: what Sales agreed, or the defaults (prepaid, list and tier prices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRecord {
    /// Whose plan.
    pub account: AccountId,
    /// Prepaid, or invoiced with a credit limit.
    pub mode: BillingMode,
    /// Personal discount and custom prices.
    pub plan: AccountPlan,
    /// Days an invoice may stay unpaid (invoice accounts).
    pub net_terms_days: Option<u16>,
}

/// A closed invoice with its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRecord {
    /// `inv_…`.
    pub id: String,
    /// The gapless number.
    pub number: InvoiceNumber,
    /// Who is billed.
    pub account: AccountId,
    /// The period billed.
    pub period: InvoicePeriod,
    /// The usage, one line per action and unit price.
    pub lines: Vec<InvoiceRecordLine>,
    /// Subtotal, credit applied, brought and carried forward, amount due.
    pub totals: InvoiceTotals,
    /// Open, paid or void.
    pub status: InvoiceStatus,
    /// When it must be paid by; past it, the account's usage is refused.
    pub due_at: Timestamp,
    /// When it was closed.
    pub created_at: Timestamp,
    /// When it was paid.
    pub paid_at: Option<Timestamp>,
    /// How it was paid.
    pub paid_by: Option<InvoicePayment>,
    /// The card top-up or the bank transfer's reference.
    pub payment_reference: Option<String>,
    /// The card top-up currently paying it (its last card attempt).
    pub card_topup: Option<String>,
    /// How many card payments were started for it.
    pub card_attempts: u32,
}

/// An invoice line with the action's display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRecordLine {
    /// Action, quantity, unit price and amount.
    pub line: InvoiceLine,
    /// The action's name when the invoice was closed (`Email Finder`).
    pub description: String,
}

/// How the operator records an invoice paid outside Tollgate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkPaid {
    /// The invoice.
    pub invoice: String,
    /// The bank transfer's reference, if given.
    pub reference: Option<String>,
    /// Who marked it.
    pub actor: Actor,
}
