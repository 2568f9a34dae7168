//! The PostgreSQL store, for several Tollgate processes on one database.
//!
//! Correctness comes from the database, never from process memory: every
//! write takes its account's row lock (`SELECT … FOR UPDATE`) before it
//! checks idempotency, balances or hold status, so writers of one account
//! serialise across processes; unique constraints on (account, idempotency
//! key) and (account, sequence) are the backstop, and a violation, a
//! serialization failure or a deadlock retries the whole transaction a
//! bounded number of times. Transactions run at READ COMMITTED (each
//! statement after the lock sees the latest commits); `verify_ledger` reads
//! one REPEATABLE READ snapshot. No session state is used (no SET, no
//! advisory locks, no LISTEN/NOTIFY, statements prepared and used inside one
//! transaction), so PgBouncer in transaction mode works.

mod batcher;
mod charges;
mod events;
mod invoices;
mod ops;
mod payments;
mod plan;
mod portal;
mod prepared;
mod recharge;
mod rows;
mod verify;

use prepared::Prepared as _;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};
use tollgate_core::{
    AccountId, Actor, DeliveryPolicy, GrantCommand, HoldCommand, InsufficientFunds, Micros, NewAccount,
    NewTopup, Quantity, Timestamp, TopupOutcome, UsageCommand,
};

use crate::{
    AccountRecord, ApiKeyRecord, AuditRecord, CardRecord, CardSetupResult, DeliveryAttempt, DeliveryRecord,
    DisputeApplied, DisputeNews, DueDelivery, EventFilter, EventRecord, HoldRecord, Idempotent, LedgerReport,
    MAX_BATCH_EVENTS, NewWebhookEndpoint, Page, PageRequest, PaymentProfile, RefundRecord, RefundRequest,
    Store, StoreError, StoreResult, StoreRules, TopupRecord, TopupReference, TransactionLine, UsageRecord,
    WebhookEndpointRecord,
};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Default number of connections one process keeps to PostgreSQL.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Attempts of one transaction before a retryable failure is reported.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest a caller waits for a pooled connection or a new one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one operation (all its attempts) may take.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong inside a PostgreSQL transaction: a final answer, or a
/// conflict with another writer that a fresh attempt resolves.
#[derive(Debug)]
pub(crate) enum PgError {
    /// Report this (domain refusal or database failure).
    Store(StoreError),
    /// Serialization failure, deadlock or unique violation: try again.
    Retry(String),
}

/// Results inside the PostgreSQL store.
pub(crate) type PgResult<T> = Result<T, PgError>;

impl From<StoreError> for PgError {
    fn from(error: StoreError) -> PgError {
        PgError::Store(error)
    }
}

impl From<InsufficientFunds> for PgError {
    fn from(error: InsufficientFunds) -> PgError {
        PgError::Store(error.into())
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(error: tokio_postgres::Error) -> PgError {
        let retry = matches!(
            error.code(),
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::UNIQUE_VIOLATION
        );
        if retry {
            PgError::Retry(describe(&error))
        } else {
            PgError::Store(StoreError::Database(describe(&error)))
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(error: deadpool_postgres::PoolError) -> PgError {
        PgError::Store(StoreError::Database(format!("no database connection: {error}")))
    }
}

impl PgError {
    fn into_store(self) -> StoreError {
        match self {
            PgError::Store(error) => error,
            PgError::Retry(message) => StoreError::Database(format!(
                "gave up after {MAX_ATTEMPTS} conflicting attempts: {message}"
            )),
        }
    }
}

async fn connect(url: &str) -> StoreResult<tokio_postgres::Client> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| StoreError::Database("timed out connecting to PostgreSQL".to_owned()))?
        .map_err(|error| {
            StoreError::Database(format!("could not connect to PostgreSQL: {}", describe(&error)))
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Applies pending migrations to the PostgreSQL database at `url`.
pub async fn migrate(url: &str) -> StoreResult<()> {
    let mut last = String::new();
    // Several processes starting at once may race to create the schema; the
    // loser's attempt fails on a duplicate and the next one finds it applied.
    for attempt in 0..5_u64 {
        let mut client = connect(url).await?;
        match embedded::migrations::runner()
            .set_grouped(true)
            .run_async(&mut client)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    Err(StoreError::Database(format!("migration failed: {last}")))
}

/// A fingerprint of every embedded migration (names, versions and SQL): equal
/// fingerprints mean the same schema. Tests name their template database by it.
pub(crate) fn migrations_fingerprint() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in embedded::migrations::runner().get_migrations() {
        for byte in migration.checksum().to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    hash
}

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: Pool,
    rules: StoreRules,
    usage_batcher: batcher::UsageBatcher,
}

impl PgStore {
    /// Migrates the database at `url`, then opens a pool of connections to it.
    pub async fn open(url: &str, rules: StoreRules) -> StoreResult<PgStore> {
        migrate(url).await?;
        let store = PgStore::connect(url, rules, DEFAULT_POOL_SIZE)?;
        store.health().await?;
        Ok(store)
    }

    /// A pool of at most `pool_size` connections to an already migrated
    /// database; connects lazily.
    pub fn connect(url: &str, rules: StoreRules, pool_size: usize) -> StoreResult<PgStore> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| StoreError::Database(format!("invalid PostgreSQL URL: {error}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| StoreError::Database(format!("could not build the connection pool: {error}")))?;
        Ok(PgStore {
            pool,
            rules,
            usage_batcher: batcher::UsageBatcher::default(),
        })
    }

    /// The same pool and rules, for the micro-batch workers.
    fn without_batcher(&self) -> PgStore {
        PgStore {
            pool: self.pool.clone(),
            rules: self.rules.clone(),
            usage_batcher: batcher::UsageBatcher::default(),
        }
    }

    /// The rules this store prices with.
    pub fn rules(&self) -> &StoreRules {
        &self.rules
    }

    /// Single charges so far: (micro-batch transactions committed, charges they carried).
    pub fn micro_batches_committed(&self) -> (u64, u64) {
        self.usage_batcher.committed()
    }

    fn context(&self) -> ops::Context<'_> {
        ops::Context {
            now: self.rules.clock.now(),
            rules: &self.rules,
        }
    }
}

/// Waits a little, more after each conflict, with jitter so that two
/// conflicting processes do not retry in lockstep.
async fn back_off(attempt: u32) {
    let base = 2_u64 << attempt.min(6);
    let jitter = (uuid::Uuid::now_v7().as_u128() % u128::from(base)) as u64;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Runs `$body` (with `$tx` the open transaction and `$context` this
/// attempt's time and rules) in a READ COMMITTED transaction, committing on
/// `Ok`, rolling back on `Err`, and starting over on a retryable conflict.
macro_rules! transaction {
    ($store:expr, |$tx:ident, $context:ident| $body:expr) => {{
        let store: &PgStore = $store;
        let run = async {
            let mut attempt = 0_u32;
            loop {
                let outcome: PgResult<_> = async {
                    let mut pooled = store.pool.get().await?;
                    let client: &mut deadpool_postgres::ClientWrapper = &mut pooled;
                    #[allow(unused_mut)] // Only a batch needs it mutable, for savepoints.
                    let mut $tx = client.transaction().await?;
                    let $context = store.context();
                    match $body {
                        Ok(value) => {
                            $tx.commit().await?;
                            Ok(value)
                        }
                        Err(error) => {
                            // Dropping would roll back too; this way the connection goes back clean.
                            let _ = $tx.rollback().await;
                            Err(error)
                        }
                    }
                }
                .await;
                match outcome {
                    Err(PgError::Retry(message)) if attempt + 1 < MAX_ATTEMPTS => {
                        tracing::debug!(%message, attempt, "retrying a conflicting transaction");
                        attempt += 1;
                        back_off(attempt).await;
                    }
                    other => break other.map_err(PgError::into_store),
                }
            }
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Database("the operation timed out".to_owned())),
        }
    }};
}

/// Runs a read in one READ ONLY, REPEATABLE READ transaction: one snapshot, and its
/// statements prepared and used on one server connection.
macro_rules! read {
    ($store:expr, |$tx:ident, $context:ident| $body:expr) => {{
        let store: &PgStore = $store;
        let run = async {
            let outcome: PgResult<_> = async {
                let mut pooled = store.pool.get().await?;
                let client: &mut deadpool_postgres::ClientWrapper = &mut pooled;
                // REPEATABLE READ: one snapshot for every statement of the read (at READ
                // COMMITTED an account and then its holds could straddle a commit). A
                // read-only transaction never fails to serialize.
                let $tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let $context = store.context();
                let value = $body?;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            outcome.map_err(PgError::into_store)
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Database("the read timed out".to_owned())),
        }
    }};
}

impl PgStore {
    /// Charges `commands` in one transaction: their accounts locked in id order by one
    /// statement, every event decided in memory, the accepted ones written with one
    /// statement per table ([`charges`]), each account written once.
    async fn charge_in_one_transaction(
        &self,
        commands: &[UsageCommand],
    ) -> StoreResult<Vec<StoreResult<Idempotent<UsageRecord>>>> {
        // Two batches touching the same accounts queue instead of deadlocking.
        let mut accounts: Vec<&AccountId> = commands.iter().map(|command| &command.account).collect();
        accounts.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        accounts.dedup();
        let accounts = &accounts;
        let ids: Vec<&str> = accounts.iter().map(|id| id.as_str()).collect();
        let ids = &ids;
        transaction!(self, |tx, context| async {
            rows::lock_accounts_in_order(&tx, ids).await?;
            charges::charge_batch(&tx, &context, commands, accounts).await
        }
        .await)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_account(&self, account: NewAccount) -> StoreResult<AccountRecord> {
        transaction!(self, |tx, context| ops::create_account(&tx, &context, &account)
            .await)
    }

    async fn account(&self, id: &AccountId) -> StoreResult<AccountRecord> {
        let (record, due) = read!(self, |tx, context| async {
            let record = rows::load_account(&tx, id, context.now)
                .await?
                .map(|stored| stored.record)
                .ok_or_else(|| StoreError::NotFound {
                    what: "account",
                    id: id.to_string(),
                })?;
            PgResult::Ok((record, rows::has_due_holds(&tx, id, context.now).await?))
        }
        .await)?;
        if !due {
            return Ok(record);
        }
        // Never show funds as held by a hold whose time ran out: release it first.
        transaction!(self, |tx, context| ops::release_due_holds(&tx, &context, id)
            .await)
    }

    async fn list_accounts(&self, page: PageRequest) -> StoreResult<Page<AccountRecord>> {
        read!(self, |tx, context| rows::list_accounts(&tx, &page, context.now)
            .await)
    }

    async fn charge_usage(&self, command: UsageCommand) -> StoreResult<Idempotent<UsageRecord>> {
        self.usage_batcher.charge(self, command).await
    }

    async fn charge_usage_batch(
        &self,
        commands: Vec<UsageCommand>,
    ) -> StoreResult<Vec<StoreResult<Idempotent<UsageRecord>>>> {
        if commands.len() > MAX_BATCH_EVENTS {
            return Err(StoreError::BatchTooLarge);
        }
        self.charge_in_one_transaction(&commands).await
    }

    async fn grant(&self, command: GrantCommand) -> StoreResult<Idempotent<TransactionLine>> {
        transaction!(self, |tx, context| ops::grant(&tx, &context, &command).await)
    }

    async fn place_hold(&self, command: HoldCommand) -> StoreResult<Idempotent<HoldRecord>> {
        transaction!(self, |tx, context| ops::place_hold(&tx, &context, &command).await)
    }

    async fn capture_hold(
        &self,
        hold_id: &str,
        quantity: Quantity,
    ) -> StoreResult<(HoldRecord, UsageRecord)> {
        // The inner result lets a lazily expired hold commit its release while the capture is refused.
        transaction!(self, |tx, context| ops::capture_hold(
            &tx, &context, hold_id, quantity
        )
        .await)?
    }

    async fn void_hold(&self, hold_id: &str) -> StoreResult<HoldRecord> {
        transaction!(self, |tx, context| ops::void_hold(&tx, &context, hold_id).await)?
    }

    async fn hold(&self, hold_id: &str) -> StoreResult<HoldRecord> {
        let (hold, now) = read!(self, |tx, context| async {
            let hold = rows::load_hold(&tx, hold_id).await?.ok_or(StoreError::NotFound {
                what: "hold",
                id: hold_id.to_owned(),
            })?;
            PgResult::Ok((hold, context.now))
        }
        .await)?;
        if hold.status != tollgate_core::HoldStatus::Active || hold.expires_at > now {
            return Ok(hold);
        }
        // An active hold past its time is reported as what it is: expired and released.
        let account = hold.account.clone();
        transaction!(self, |tx, context| async {
            ops::release_due_holds(&tx, &context, &account).await?;
            rows::load_hold(&tx, hold_id).await?.ok_or_else(|| {
                PgError::Store(StoreError::NotFound {
                    what: "hold",
                    id: hold_id.to_owned(),
                })
            })
        }
        .await)
    }

    async fn expire_holds(&self, limit: usize) -> StoreResult<usize> {
        transaction!(self, |tx, context| ops::expire_due_holds(&tx, &context, limit)
            .await)
    }

    async fn transactions(
        &self,
        account: &AccountId,
        page: PageRequest,
    ) -> StoreResult<Page<TransactionLine>> {
        read!(self, |tx, _context| rows::list_transactions(&tx, account, &page)
            .await)
    }

    async fn daily_usage(
        &self,
        account: &AccountId,
        since: tollgate_core::Timestamp,
    ) -> StoreResult<Vec<(time::Date, String, Micros)>> {
        read!(self, |tx, _context| rows::daily_usage(&tx, account, since).await)
    }

    async fn verify_ledger(&self) -> StoreResult<LedgerReport> {
        let run = async {
            let outcome: PgResult<LedgerReport> = async {
                let mut pooled = self.pool.get().await?;
                let client: &mut deadpool_postgres::ClientWrapper = &mut pooled;
                // One snapshot for every query: a consistent picture while writers go on.
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let report = verify::verify(&tx).await?;
                tx.commit().await?;
                Ok(report)
            }
            .await;
            outcome.map_err(PgError::into_store)
        };
        // Verification reads everything: it gets more time than one operation.
        match tokio::time::timeout(OPERATION_TIMEOUT * 20, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Database("ledger verification timed out".to_owned())),
        }
    }

    async fn insert_api_key(&self, key: ApiKeyRecord) -> StoreResult<()> {
        transaction!(self, |tx, _context| rows::insert_api_key(&tx, &key).await)
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        read!(self, |tx, _context| rows::api_key_by_hash(&tx, key_hash).await)
    }

    async fn count_api_keys(&self) -> StoreResult<u64> {
        read!(self, |tx, _context| rows::count_api_keys(&tx).await)
    }

    async fn audit_log(&self, page: PageRequest) -> StoreResult<Page<AuditRecord>> {
        read!(self, |tx, _context| rows::list_audit(&tx, &page).await)
    }

    async fn health(&self) -> StoreResult<()> {
        read!(self, |tx, _context| async {
            tx.query_one_cached("SELECT 1", &[]).await?;
            PgResult::Ok(())
        }
        .await)
    }

    async fn payment_profile(&self, account: &AccountId) -> StoreResult<PaymentProfile> {
        read!(self, |tx, _context| payments::payment_profile(&tx, account).await)
    }

    async fn set_processor_customer(&self, account: &AccountId, customer: &str) -> StoreResult<String> {
        transaction!(self, |tx, context| payments::set_processor_customer(
            &tx, &context, account, customer
        )
        .await)
    }

    async fn record_card_setup(&self, account: &AccountId, session: &str) -> StoreResult<()> {
        transaction!(self, |tx, context| payments::record_card_setup(
            &tx, &context, account, session
        )
        .await)
    }

    async fn complete_card_setup(
        &self,
        session: &str,
        card: CardRecord,
        actor: Actor,
    ) -> StoreResult<CardSetupResult> {
        transaction!(self, |tx, context| payments::complete_card_setup(
            &tx, &context, session, &card, &actor
        )
        .await)
    }

    async fn adopt_card(
        &self,
        account: &AccountId,
        card: CardRecord,
        actor: Actor,
    ) -> StoreResult<CardSetupResult> {
        transaction!(self, |tx, context| payments::adopt_card(
            &tx, &context, account, &card, &actor
        )
        .await)
    }

    async fn remove_card(&self, account: &AccountId, actor: Actor) -> StoreResult<Option<CardRecord>> {
        transaction!(self, |tx, context| payments::remove_card(
            &tx, &context, account, &actor
        )
        .await)
    }

    async fn create_topup(&self, topup: NewTopup) -> StoreResult<Idempotent<TopupRecord>> {
        transaction!(self, |tx, context| payments::create_topup(&tx, &context, &topup)
            .await)
    }

    async fn link_topup(
        &self,
        topup_id: &str,
        checkout_session: Option<String>,
        payment_reference: Option<String>,
    ) -> StoreResult<TopupRecord> {
        let (checkout_session, payment_reference) =
            (checkout_session.as_deref(), payment_reference.as_deref());
        transaction!(self, |tx, context| payments::link_topup(
            &tx,
            &context,
            topup_id,
            checkout_session,
            payment_reference
        )
        .await)
    }

    async fn settle_topup(&self, topup_id: &str, outcome: TopupOutcome) -> StoreResult<TopupRecord> {
        transaction!(self, |tx, context| payments::settle_topup(
            &tx, &context, topup_id, &outcome
        )
        .await)
    }

    async fn topup(&self, topup_id: &str) -> StoreResult<TopupRecord> {
        read!(self, |tx, _context| payments::load_topup(&tx, topup_id).await)
    }

    async fn find_topup(&self, reference: TopupReference) -> StoreResult<Option<TopupRecord>> {
        read!(self, |tx, _context| payments::find_topup(&tx, &reference).await)
    }

    async fn list_topups(&self, account: &AccountId, page: PageRequest) -> StoreResult<Page<TopupRecord>> {
        read!(self, |tx, _context| payments::list_topups(&tx, account, &page)
            .await)
    }

    async fn open_topups(&self, created_before: Timestamp, limit: usize) -> StoreResult<Vec<TopupRecord>> {
        read!(self, |tx, _context| payments::open_topups(
            &tx,
            created_before,
            limit
        )
        .await)
    }

    async fn begin_refund(&self, request: RefundRequest) -> StoreResult<Idempotent<RefundRecord>> {
        transaction!(self, |tx, context| payments::begin_refund(
            &tx, &context, &request
        )
        .await)
    }

    async fn finish_refund(
        &self,
        refund_id: &str,
        outcome: Result<String, String>,
    ) -> StoreResult<RefundRecord> {
        transaction!(self, |tx, context| payments::finish_refund(
            &tx, &context, refund_id, &outcome
        )
        .await)
    }

    async fn reconcile_refunded(
        &self,
        reference: TopupReference,
        total_refunded: Micros,
    ) -> StoreResult<Option<RefundRecord>> {
        transaction!(self, |tx, context| payments::reconcile_refunded(
            &tx,
            &context,
            &reference,
            total_refunded
        )
        .await)
    }

    async fn apply_dispute(&self, news: DisputeNews) -> StoreResult<Option<DisputeApplied>> {
        transaction!(self, |tx, context| payments::apply_dispute(&tx, &context, &news)
            .await)
    }

    async fn record_processor_event(&self, event_id: &str, event_type: &str) -> StoreResult<bool> {
        transaction!(self, |tx, context| payments::record_processor_event(
            &tx, &context, event_id, event_type
        )
        .await)
    }

    async fn auto_recharge(&self, account: &AccountId) -> StoreResult<crate::AutoRechargeRecord> {
        read!(self, |tx, context| recharge::auto_recharge(
            &tx,
            account,
            context.now
        )
        .await)
    }

    async fn set_auto_recharge(
        &self,
        account: &AccountId,
        change: crate::AutoRechargeChange,
        actor: Actor,
    ) -> StoreResult<crate::AutoRechargeRecord> {
        let (change, actor) = (&change, &actor);
        transaction!(self, |tx, context| recharge::set_auto_recharge(
            &tx, &context, account, change, actor
        )
        .await)
    }

    async fn due_auto_recharges(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<AccountId>> {
        read!(self, |tx, _context| recharge::due_auto_recharges(&tx, now, limit)
            .await)
    }

    async fn begin_auto_recharge(
        &self,
        account: &AccountId,
        limits: tollgate_core::TopupLimits,
    ) -> StoreResult<crate::AutoRechargeStart> {
        transaction!(self, |tx, context| recharge::begin_auto_recharge(
            &tx, &context, account, limits
        )
        .await)
    }

    async fn open_auto_recharges(&self, limit: usize) -> StoreResult<Vec<TopupRecord>> {
        read!(self, |tx, _context| recharge::open_auto_recharges(&tx, limit)
            .await)
    }

    async fn create_portal_session(&self, session: crate::NewPortalSession) -> StoreResult<()> {
        let session = &session;
        transaction!(self, |tx, context| portal::create_portal_session(
            &tx, &context, session
        )
        .await)
    }

    async fn redeem_portal_link(
        &self,
        link_hash: &str,
        session_hash: &str,
        session_expires_at: Timestamp,
    ) -> StoreResult<Option<crate::PortalSessionRecord>> {
        transaction!(self, |tx, context| portal::redeem_portal_link(
            &tx,
            &context,
            link_hash,
            session_hash,
            session_expires_at
        )
        .await)
    }

    async fn portal_session(&self, session_hash: &str) -> StoreResult<Option<crate::PortalSessionRecord>> {
        read!(self, |tx, context| portal::portal_session(
            &tx,
            &context,
            session_hash
        )
        .await)
    }

    async fn list_events(&self, filter: EventFilter, page: PageRequest) -> StoreResult<Page<EventRecord>> {
        read!(self, |tx, _context| events::list_events(&tx, &filter, &page)
            .await)
    }

    async fn event(&self, id: &str) -> StoreResult<EventRecord> {
        read!(self, |tx, _context| events::event(&tx, id).await)
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpointRecord> {
        let endpoint = &endpoint;
        transaction!(self, |tx, context| events::create_endpoint(
            &tx, &context, endpoint
        )
        .await)
    }

    async fn disable_webhook_endpoint(&self, id: &str, actor: Actor) -> StoreResult<WebhookEndpointRecord> {
        let actor = &actor;
        transaction!(self, |tx, context| events::disable_endpoint(
            &tx, &context, id, actor
        )
        .await)
    }

    async fn webhook_endpoints(&self) -> StoreResult<Vec<WebhookEndpointRecord>> {
        read!(self, |tx, _context| events::list_endpoints(&tx).await)
    }

    async fn claim_deliveries(&self, lease_ms: u64, limit: usize) -> StoreResult<Vec<DueDelivery>> {
        let lease = time::Duration::milliseconds(i64::try_from(lease_ms).unwrap_or(i64::MAX));
        transaction!(self, |tx, context| events::claim_deliveries(
            &tx,
            &context,
            context.now + lease,
            limit
        )
        .await)
    }

    async fn record_delivery_attempt(
        &self,
        endpoint: &str,
        event_sequence: i64,
        attempt: DeliveryAttempt,
        policy: DeliveryPolicy,
    ) -> StoreResult<DeliveryRecord> {
        let (attempt, policy) = (&attempt, &policy);
        transaction!(self, |tx, context| events::record_attempt(
            &tx,
            &context,
            endpoint,
            event_sequence,
            attempt,
            policy
        )
        .await)
    }

    async fn plan(&self, account: &AccountId) -> StoreResult<crate::PlanRecord> {
        read!(self, |tx, context| plan::plan(&tx, account, context.now).await)
    }

    async fn set_plan(&self, command: tollgate_core::PlanCommand) -> StoreResult<crate::PlanRecord> {
        let command = &command;
        transaction!(self, |tx, context| plan::set_plan(&tx, &context, command).await)
    }

    async fn deliveries(&self, endpoint: &str, page: PageRequest) -> StoreResult<Page<DeliveryRecord>> {
        read!(self, |tx, _context| events::list_deliveries(&tx, endpoint, &page)
            .await)
    }

    async fn close_due_invoices(&self, limit: usize) -> StoreResult<Vec<crate::InvoiceRecord>> {
        let due = read!(self, |tx, context| invoices::due_periods(&tx, &context, limit)
            .await)?;
        let mut closed = Vec::new();
        // One transaction per account: a closer that dies half-way keeps what it closed.
        for account in &due {
            if let Some(invoice) =
                transaction!(self, |tx, context| invoices::close_period(&tx, &context, account)
                    .await)?
            {
                closed.push(invoice);
            }
        }
        Ok(closed)
    }

    async fn invoices(
        &self,
        account: &AccountId,
        page: PageRequest,
    ) -> StoreResult<Page<crate::InvoiceRecord>> {
        read!(self, |tx, _context| invoices::list_invoices(&tx, account, &page)
            .await)
    }

    async fn invoice(&self, id: &str) -> StoreResult<crate::InvoiceRecord> {
        read!(self, |tx, _context| invoices::invoice(&tx, id).await)
    }

    async fn mark_invoice_paid(
        &self,
        command: crate::MarkPaid,
    ) -> StoreResult<Idempotent<crate::InvoiceRecord>> {
        let command = &command;
        transaction!(self, |tx, context| invoices::mark_paid(&tx, &context, command)
            .await)
    }

    async fn attach_invoice_topup(
        &self,
        invoice: &str,
        topup: &str,
        attempt: u32,
    ) -> StoreResult<crate::InvoiceRecord> {
        transaction!(self, |tx, _context| invoices::attach_topup(
            &tx, invoice, topup, attempt
        )
        .await)
    }
}
