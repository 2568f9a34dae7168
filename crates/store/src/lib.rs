//! Tollgate's persistence. The [`Store`] trait is the one door to stored
//! state; each operation is one atomic transaction that prices with
//! `tollgate-core` and writes journal, transfers and balances together.
//!
//! Only this crate knows SQL. Two implementations: [`sqlite`] (one machine)
//! and [`postgres`] (many processes on one database).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decide;
mod invariants;
pub mod postgres;
mod records;
pub mod sqlite;
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_core::{
    AccountId, Clock, GrantCommand, HoldCommand, HoldStatus, InsufficientFunds, Micros, NewAccount,
    PriceBook, Quantity, TierBasis, Timestamp, UsageCommand,
};

pub use records::{
    AccountRecord, ApiKeyRecord, AuditRecord, HoldRecord, Idempotent, LedgerReport, MAX_PAGE_SIZE, Page,
    PageRequest, TransactionLine, UsageRecord,
};

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
}

/// A shared, dynamically chosen store.
pub type SharedStore = Arc<dyn Store>;

/// What every operation prices and times with.
pub struct StoreRules {
    /// The price book and tiers.
    pub price_book: Arc<PriceBook>,
    /// Cycle or lifetime tiers.
    pub tier_basis: TierBasis,
    /// The source of "now".
    pub clock: Arc<dyn Clock>,
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
