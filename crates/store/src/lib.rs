//! Tollgate's persistence. The [`Store`] trait is the one door to stored
//! state; each operation is one atomic transaction that prices with
//! `tollgate-core` and writes journal, transfers and balances together.
//!
//! Only this crate knows SQL. Two implementations: [`sqlite`] (one machine)
//! and [`postgres`] (many processes on one database).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decide;
mod events;
mod invariants;
mod invoices;
mod payments;
mod plan;
mod portal;
pub mod postgres;
mod recharge;
mod records;
pub mod sqlite;
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_core::{
    AccountId, Actor, Clock, DeliveryPolicy, GrantCommand, HoldCommand, HoldStatus, InsufficientFunds,
    InvalidRefund, Micros, NewAccount, NewTopup, PlanCommand, PriceBook, Quantity, TierBasis, Timestamp,
    TopupLimits, TopupOutcome, UsageCommand,
};

pub use events::MAX_DELIVERY_BATCH;
pub use portal::{NewPortalSession, PORTAL_CLEANUP_BATCH, PortalSessionRecord};
pub use recharge::MAX_AUTO_RECHARGE_BATCH;
pub use records::{
    AccountRecord, ApiKeyRecord, AuditRecord, AutoRechargeChange, AutoRechargeRecord, AutoRechargeStart,
    CardRecord, CardSetupResult, DeliveryAttempt, DeliveryRecord, DeliveryStatus, DisputeApplied,
    DisputeNews, DueDelivery, EventFilter, EventRecord, HoldRecord, Idempotent, InvoiceRecord,
    InvoiceRecordLine, LedgerReport, MAX_PAGE_SIZE, MarkPaid, NewWebhookEndpoint, Page, PageRequest,
    PaymentProfile, PlanRecord, RefundRecord, RefundRequest, RefundState, TopupRecord, TransactionLine,
    UsageRecord, WebhookEndpointRecord,
};

/// Largest number of invoice periods one close pass handles.
pub const MAX_INVOICE_CLOSE_BATCH: usize = 100;

/// Largest number of open top-ups one recovery pass looks at.
pub const MAX_RECOVERY_BATCH: usize = 100;

/// How a top-up is found from what the processor tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopupReference {
    /// By the hosted page session (`cs_…`).
    CheckoutSession(String),
    /// By the processor's payment (`pi_…`).
    Payment(String),
    /// By the processor's charge (`ch_…`).
    Charge(String),
}

/// Largest number of usage events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1_000;

/// Everything that can go wrong in the store, domain refusals included.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such account, hold, transaction, …
    #[error("{what} `{id}` not found")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// An account with this id exists already.
    #[error("account `{0}` already exists")]
    AccountExists(AccountId),
    /// The debit does not fit the balance.
    #[error(transparent)]
    InsufficientFunds(#[from] InsufficientFunds),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key `{key}` was already used with a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The action is not in the price book.
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    /// `quantity × price` does not fit in 64-bit micro-dollars.
    #[error("quantity × price is too large")]
    ChargeTooLarge,
    /// A balance or total computation overflowed.
    #[error("amount overflow: {0}")]
    Overflow(&'static str),
    /// The hold is no longer active.
    #[error("hold is {}, no longer active", .0.code())]
    HoldNotActive(HoldStatus),
    /// A capture costs more than was held.
    #[error("capture costs {cost}, more than the {held} held")]
    CaptureExceedsHold {
        /// Amount held.
        held: Micros,
        /// Cost of the capture.
        cost: Micros,
    },
    /// A pagination cursor that names nothing in the list.
    #[error("starting_after `{0}` is not in this list")]
    InvalidCursor(String),
    /// Too many events in a batch.
    #[error("a batch holds at most {MAX_BATCH_EVENTS} events")]
    BatchTooLarge,
    /// The refund cannot be made.
    #[error(transparent)]
    InvalidRefund(#[from] InvalidRefund),
    /// The processor's news contradicts what is stored (another payment for the same top-up, …).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An invoice is unpaid past its net terms: usage is refused until it is paid.
    #[error("an invoice was due {due_at} and is unpaid: usage is blocked until it is paid")]
    InvoiceOverdue {
        /// When the oldest open invoice fell due.
        due_at: Timestamp,
    },
    /// Auto Top-Up cannot be switched on without a saved card.
    #[error("the account has no payment method: add a card first")]
    NoPaymentMethod,
    /// The database failed; nothing was written.
    #[error("database error: {0}")]
    Database(String),
    /// The store is shutting down or its writer died.
    #[error("store unavailable")]
    Unavailable,
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// The one door to stored state. Every method is atomic; a money-moving
/// method returns only once its effect is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account with zero balance.
    async fn create_account(&self, account: NewAccount) -> StoreResult<AccountRecord>;
    /// One account, its spend rolled to the current cycle.
    async fn account(&self, id: &AccountId) -> StoreResult<AccountRecord>;
    /// Accounts in id order.
    async fn list_accounts(&self, page: PageRequest) -> StoreResult<Page<AccountRecord>>;
    /// Charges one usage event exactly once per idempotency key.
    async fn charge_usage(&self, command: UsageCommand) -> StoreResult<Idempotent<UsageRecord>>;
    /// Charges each event on its own, in order, in one durable commit.
    async fn charge_usage_batch(
        &self,
        commands: Vec<UsageCommand>,
    ) -> StoreResult<Vec<StoreResult<Idempotent<UsageRecord>>>>;
    /// Credits (or debits) an account by operator decision.
    async fn grant(&self, command: GrantCommand) -> StoreResult<Idempotent<TransactionLine>>;
    /// Reserves funds for an action of unknown final cost.
    async fn place_hold(&self, command: HoldCommand) -> StoreResult<Idempotent<HoldRecord>>;
    /// Charges the action's price for `quantity` from a hold and releases the rest.
    async fn capture_hold(&self, hold_id: &str, quantity: Quantity)
    -> StoreResult<(HoldRecord, UsageRecord)>;
    /// Releases a hold without charge.
    async fn void_hold(&self, hold_id: &str) -> StoreResult<HoldRecord>;
    /// One hold.
    async fn hold(&self, hold_id: &str) -> StoreResult<HoldRecord>;
    /// Releases up to `limit` holds whose time ran out; returns how many.
    async fn expire_holds(&self, limit: usize) -> StoreResult<usize>;
    /// An account's journal, newest first.
    async fn transactions(
        &self,
        account: &AccountId,
        page: PageRequest,
    ) -> StoreResult<Page<TransactionLine>>;
    /// Usage amounts of an account since `since`, per UTC day and action (for the spend chart).
    async fn daily_usage(
        &self,
        account: &AccountId,
        since: Timestamp,
    ) -> StoreResult<Vec<(time::Date, String, Micros)>>;
    /// Recomputes every balance from the ledger and checks every invariant.
    async fn verify_ledger(&self) -> StoreResult<LedgerReport>;
    /// Stores an API key (by hash).
    async fn insert_api_key(&self, key: ApiKeyRecord) -> StoreResult<()>;
    /// The live API key with this SHA-256 hash, if any.
    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// Number of live API keys.
    async fn count_api_keys(&self) -> StoreResult<u64>;
    /// The audit log, newest first.
    async fn audit_log(&self, page: PageRequest) -> StoreResult<Page<AuditRecord>>;
    /// Succeeds when the database answers.
    async fn health(&self) -> StoreResult<()>;

    /// The account's processor customer and default card.
    async fn payment_profile(&self, account: &AccountId) -> StoreResult<PaymentProfile>;
    /// Records the account's processor customer unless one is recorded already; returns the
    /// one that is recorded (so racing creators agree on one).
    async fn set_processor_customer(&self, account: &AccountId, customer: &str) -> StoreResult<String>;
    /// Records a hosted card-setup session opened for the account.
    async fn record_card_setup(&self, account: &AccountId, session: &str) -> StoreResult<()>;
    /// Makes `card` the account's card, once per setup session; the replaced card is returned
    /// for detaching.
    async fn complete_card_setup(
        &self,
        session: &str,
        card: CardRecord,
        actor: Actor,
    ) -> StoreResult<CardSetupResult>;
    /// Makes a card confirmed on a hosted payment page the account's card (when it is new).
    async fn adopt_card(
        &self,
        account: &AccountId,
        card: CardRecord,
        actor: Actor,
    ) -> StoreResult<CardSetupResult>;
    /// Removes the account's card (if any) and returns it; Auto Top-Up is switched off with it.
    async fn remove_card(&self, account: &AccountId, actor: Actor) -> StoreResult<Option<CardRecord>>;
    /// Records a top-up (pending) once per idempotency key, before anything is sent to the processor.
    async fn create_topup(&self, topup: NewTopup) -> StoreResult<Idempotent<TopupRecord>>;
    /// Records the processor's ids for a top-up; each may be set once.
    async fn link_topup(
        &self,
        topup_id: &str,
        checkout_session: Option<String>,
        payment_reference: Option<String>,
    ) -> StoreResult<TopupRecord>;
    /// Applies what the processor says happened; a success credits the balance exactly once,
    /// whichever of the return, the webhook or a recovery pass reports it first. An auto top-up's
    /// first outcome resolves its Auto Top-Up rule in the same transaction.
    async fn settle_topup(&self, topup_id: &str, outcome: TopupOutcome) -> StoreResult<TopupRecord>;
    /// One top-up.
    async fn topup(&self, topup_id: &str) -> StoreResult<TopupRecord>;
    /// The top-up the processor's id belongs to, if any.
    async fn find_topup(&self, reference: TopupReference) -> StoreResult<Option<TopupRecord>>;
    /// An account's top-ups, newest first.
    async fn list_topups(&self, account: &AccountId, page: PageRequest) -> StoreResult<Page<TopupRecord>>;
    /// Top-ups whose outcome is still open and that were created before `created_before`,
    /// oldest first (at most `limit`, itself at most [`MAX_RECOVERY_BATCH`]).
    async fn open_topups(&self, created_before: Timestamp, limit: usize) -> StoreResult<Vec<TopupRecord>>;
    /// Takes a refund back from the balance (pending until the processor confirms), once per key.
    async fn begin_refund(&self, request: RefundRequest) -> StoreResult<Idempotent<RefundRecord>>;
    /// Applies the processor's answer to a pending refund: `Ok(refund id)` confirms it,
    /// `Err(reason)` gives the money back to the balance.
    async fn finish_refund(
        &self,
        refund_id: &str,
        outcome: Result<String, String>,
    ) -> StoreResult<RefundRecord>;
    /// Brings a top-up's refunded total up to what the processor reports (refunds made in the
    /// processor's dashboard); returns the refund recorded for the difference, if any.
    async fn reconcile_refunded(
        &self,
        reference: TopupReference,
        total_refunded: Micros,
    ) -> StoreResult<Option<RefundRecord>>;
    /// Applies dispute news; `None` when no top-up matches the disputed payment.
    async fn apply_dispute(&self, news: DisputeNews) -> StoreResult<Option<DisputeApplied>>;
    /// Records a processor webhook event as applied; false when it was recorded before.
    async fn record_processor_event(&self, event_id: &str, event_type: &str) -> StoreResult<bool>;

    /// The account's Auto Top-Up (off, with the default cap, when never configured), with
    /// what it recharged in the current billing cycle.
    async fn auto_recharge(&self, account: &AccountId) -> StoreResult<AutoRechargeRecord>;
    /// Saves Auto Top-Up settings under the account's lock, audited with `actor`. Switching
    /// on needs a card ([`StoreError::NoPaymentMethod`]); a change of the settings re-arms the
    /// rule; switching off stops new recharges, while one in flight is still resolved.
    async fn set_auto_recharge(
        &self,
        account: &AccountId,
        change: AutoRechargeChange,
        actor: Actor,
    ) -> StoreResult<AutoRechargeRecord>;
    /// Accounts (at most `limit`, itself at most [`MAX_AUTO_RECHARGE_BATCH`], in id order) whose
    /// switched-on rule is below its threshold at `now`, with no open auto top-up and not
    /// cooling down or capped: the ones [`Store::begin_auto_recharge`] should be asked about.
    async fn due_auto_recharges(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<AccountId>>;
    /// Decides, under the account's lock, whether a recharge starts now; if so records its
    /// pending auto top-up and the rule in flight, in one transaction. At most one auto top-up
    /// is open per account whatever the number of callers and processes (a unique index is
    /// the backstop: losing to it reads as [`tollgate_core::RechargeBlocked::InFlight`]).
    async fn begin_auto_recharge(
        &self,
        account: &AccountId,
        limits: TopupLimits,
    ) -> StoreResult<AutoRechargeStart>;
    /// Open (pending or waiting for the customer) auto top-ups, oldest first, at most `limit`
    /// (itself at most [`MAX_AUTO_RECHARGE_BATCH`]): what a worker resumes after a restart.
    /// [`Store::open_topups`] lists them too, among the other open top-ups.
    async fn open_auto_recharges(&self, limit: usize) -> StoreResult<Vec<TopupRecord>>;

    /// Records a billing page link (by its token's hash), removing a bounded batch of
    /// expired links and sessions on the way.
    async fn create_portal_session(&self, session: NewPortalSession) -> StoreResult<()>;
    /// Redeems the link with this token hash, once and only before it expires: it
    /// becomes the session with `session_hash` until `session_expires_at`. `None` when
    /// the link is unknown, used already or expired.
    async fn redeem_portal_link(
        &self,
        link_hash: &str,
        session_hash: &str,
        session_expires_at: Timestamp,
    ) -> StoreResult<Option<PortalSessionRecord>>;
    /// The live (redeemed, unexpired) session with this secret's hash.
    async fn portal_session(&self, session_hash: &str) -> StoreResult<Option<PortalSessionRecord>>;

    /// Recorded events, newest first, filtered by account and type.
    async fn list_events(&self, filter: EventFilter, page: PageRequest) -> StoreResult<Page<EventRecord>>;
    /// One event by id.
    async fn event(&self, id: &str) -> StoreResult<EventRecord>;
    /// Registers an operator webhook endpoint (audited); it receives the events recorded
    /// from then on.
    async fn create_webhook_endpoint(
        &self,
        endpoint: NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpointRecord>;
    /// Switches an endpoint off (audited); its pending deliveries stop.
    async fn disable_webhook_endpoint(&self, id: &str, actor: Actor) -> StoreResult<WebhookEndpointRecord>;
    /// Every registered endpoint, oldest first.
    async fn webhook_endpoints(&self) -> StoreResult<Vec<WebhookEndpointRecord>>;
    /// Claims up to `limit` (at most [`MAX_DELIVERY_BATCH`]) due deliveries for `lease_ms`:
    /// per endpoint and account only the oldest pending one, so each account's events go
    /// out in order; a claimed delivery is no one else's until its lease ends.
    async fn claim_deliveries(&self, lease_ms: u64, limit: usize) -> StoreResult<Vec<DueDelivery>>;
    /// Records an attempt of a claimed delivery: delivered, due again after `policy`'s
    /// back-off, or given up after its window. A delivery no longer pending stays as it is.
    async fn record_delivery_attempt(
        &self,
        endpoint: &str,
        event_sequence: i64,
        attempt: DeliveryAttempt,
        policy: DeliveryPolicy,
    ) -> StoreResult<DeliveryRecord>;
    /// The account's plan (what Sales agreed, or the defaults).
    async fn plan(&self, account: &AccountId) -> StoreResult<PlanRecord>;
    /// Replaces the account's plan under its lock, audited with the command's actor.
    /// Refused ([`StoreError::Conflict`]) when the new limit does not cover what the
    /// account owes.
    async fn set_plan(&self, command: PlanCommand) -> StoreResult<PlanRecord>;
    /// Closes at most `limit` (at most [`MAX_INVOICE_CLOSE_BATCH`]) invoice periods that
    /// ended (a grace included) by now: each into one numbered invoice (none for a period
    /// without usage or debt) and the account's next period, in one transaction, exactly
    /// once whatever the number of closers and processes. Returns the invoices written.
    async fn close_due_invoices(&self, limit: usize) -> StoreResult<Vec<InvoiceRecord>>;
    /// An account's invoices, newest first.
    async fn invoices(&self, account: &AccountId, page: PageRequest) -> StoreResult<Page<InvoiceRecord>>;
    /// One invoice.
    async fn invoice(&self, id: &str) -> StoreResult<InvoiceRecord>;
    /// Records an open invoice paid by bank transfer: its amount is credited to the balance
    /// (`invoice_payment`), it is paid, and the account is unblocked if nothing else is
    /// overdue. An invoice paid already is returned as it is (`replayed`); a void one is a
    /// [`StoreError::Conflict`].
    async fn mark_invoice_paid(&self, command: MarkPaid) -> StoreResult<Idempotent<InvoiceRecord>>;
    /// Makes `topup` (a card top-up of the amount due, attempt number `attempt`) the card
    /// payment of an open invoice: when it succeeds, its credit pays the invoice in the same
    /// transaction. Refused ([`StoreError::Conflict`]) when the invoice is not open or another
    /// card payment of it is still in flight.
    async fn attach_invoice_topup(
        &self,
        invoice: &str,
        topup: &str,
        attempt: u32,
    ) -> StoreResult<InvoiceRecord>;
    /// An endpoint's delivery log, newest event first.
    async fn deliveries(&self, endpoint: &str, page: PageRequest) -> StoreResult<Page<DeliveryRecord>>;
}

/// A shared, dynamically chosen store.
pub type SharedStore = Arc<dyn Store>;

/// What every operation prices and times with.
#[derive(Clone)]
pub struct StoreRules {
    /// The price book and tiers.
    pub price_book: Arc<PriceBook>,
    /// Cycle or lifetime tiers.
    pub tier_basis: TierBasis,
    /// The source of "now".
    pub clock: Arc<dyn Clock>,
    /// The available balance below which `balance.low` fires (once per crossing); zero: never.
    pub balance_low_level: Micros,
}

/// Opens the store `url` names (SQLite file or PostgreSQL), migrating it as needed.
pub async fn open(url: &str, rules: StoreRules) -> StoreResult<SharedStore> {
    match DatabaseUrl::parse(url).map_err(StoreError::Database)? {
        DatabaseUrl::Sqlite(path) => {
            // Opening SQLite touches the disk: keep it off the async threads.
            let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path, rules))
                .await
                .map_err(|_| StoreError::Unavailable)??;
            Ok(Arc::new(store))
        }
        DatabaseUrl::Postgres(url) => Ok(Arc::new(postgres::PgStore::open(&url, rules).await?)),
    }
}

/// Applies pending migrations to the database `url` names.
pub async fn migrate(url: &str) -> StoreResult<()> {
    match DatabaseUrl::parse(url).map_err(StoreError::Database)? {
        DatabaseUrl::Sqlite(path) => tokio::task::spawn_blocking(move || sqlite::migrate(&path))
            .await
            .map_err(|_| StoreError::Unavailable)?,
        DatabaseUrl::Postgres(url) => postgres::migrate(&url).await,
    }
}

/// Where the data lives, parsed from `TOLLGATE_DATABASE_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string.
    Postgres(String),
}

impl DatabaseUrl {
    /// `sqlite://relative.db`, `sqlite:///absolute/path.db`, or `postgres://…`.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() || path == "/" {
                return Err("an sqlite:// URL needs a file path".to_owned());
            }
            return Ok(DatabaseUrl::Sqlite(std::path::PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        Err(format!(
            "unsupported database URL `{url}`: use sqlite://FILE, sqlite:///ABSOLUTE/FILE or postgres://…"
        ))
    }
}

/// A new time-ordered id with a type prefix (`txn_…`, `hold_…`): no global
/// sequence, so writers on many machines never contend for one.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Reads the wall clock; the only place that does.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Storage keeps microseconds: reading in the same precision makes a
        // fresh response and its later replay (rebuilt from storage) identical.
        let now = time::OffsetDateTime::now_utc();
        tollgate_core::clock::from_unix_micros(tollgate_core::clock::to_unix_micros(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_in_storage_precision() {
        use tollgate_core::Clock;
        for _ in 0..100 {
            assert_eq!(SystemClock.now().nanosecond() % 1_000, 0);
        }
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://tollgate.db"),
            Ok(DatabaseUrl::Sqlite("tollgate.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/tollgate.db"),
            Ok(DatabaseUrl::Sqlite("/var/lib/tollgate.db".into()))
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://u@h/db"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}
