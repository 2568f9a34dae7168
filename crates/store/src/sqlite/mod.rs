//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, one
//! writer thread that group-commits, and a small pool of read connections.

mod account_cache;
mod events;
mod invoices;
mod ops;
mod payments;
mod plan;
mod portal;
mod recharge;
mod rows;
mod verify;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::Semaphore;
use tollgate_core::{
    AccountId, Actor, DeliveryPolicy, GrantCommand, HoldCommand, Micros, NewAccount, NewTopup, Quantity,
    Timestamp, TopupOutcome, UsageCommand,
};

pub use crate::StoreRules;
use crate::{
    AccountRecord, ApiKeyRecord, AuditRecord, CardRecord, CardSetupResult, DeliveryAttempt, DeliveryRecord,
    DisputeApplied, DisputeNews, DueDelivery, EventFilter, EventRecord, HoldRecord, Idempotent, LedgerReport,
    MAX_BATCH_EVENTS, NewWebhookEndpoint, Page, PageRequest, PaymentProfile, RefundRecord, RefundRequest,
    Store, StoreError, StoreResult, TopupRecord, TopupReference, TransactionLine, UsageRecord,
    WebhookEndpointRecord,
};
pub use writer::{MAX_JOBS_PER_COMMIT, WRITER_QUEUE_CAPACITY};

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Read connections kept open; WAL lets them read while the writer writes.
pub const READ_CONNECTIONS: usize = 4;

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Database(error.to_string())
    }
}

struct ReadPool {
    connections: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: writer::Writer,
    readers: Arc<ReadPool>,
    rules: Arc<StoreRules>,
}

/// Statements kept prepared per connection: more than the store uses, so none is ever
/// evicted and prepared again on the hot path.
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// The writer connection's page cache, in KiB (SQLite's default is 2 MiB).
const WRITER_PAGE_CACHE_KIB: u32 = 32 * 1024;

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open(path)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    // With STAT4 (the bundled build has it) SQLite re-plans a statement whenever a newly
    // bound value could change its plan: on the hot path that was over half of the writer's
    // time. The planner stability guarantee keeps each statement's first plan.
    connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // FULL: a commit is on disk before its callers hear of it.
    connection.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(connection)
}

/// Applies pending migrations to the SQLite file at `path` (created if missing).
pub fn migrate(path: &Path) -> StoreResult<()> {
    let mut connection = open_connection(path)?;
    // Rebuilding a table (SQLite's only way to change a constraint) needs foreign keys off
    // for the migration's connection; they are checked in full right after.
    connection.execute_batch("PRAGMA foreign_keys = OFF;")?;
    embedded::migrations::runner()
        .run(&mut connection)
        .map_err(|error| StoreError::Database(format!("migration failed: {error}")))?;
    let violations: i64 =
        connection.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })?;
    if violations > 0 {
        return Err(StoreError::Database(format!(
            "migration left {violations} rows referring to missing rows"
        )));
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path, rules: StoreRules) -> StoreResult<SqliteStore> {
        migrate(path)?;
        let rules = Arc::new(rules);
        let write_connection = open_connection(path)?;
        // Savepoints (one per event) keep their undo pages in a sub-journal: a temporary
        // file by default, written with a system call per page; in memory they cost a copy.
        // A page cache large enough for a whole group's dirty pages, so none spills to the
        // WAL before the commit.
        // WAL checkpoints stay SQLite's own, inside the commit that crosses 1,000 pages. A
        // thread of their own (PASSIVE every 250 ms) was tried: p99 at half load was 55 to
        // 265 ms in the runs with it and 18 to 86 ms in those without, so it did not stay.
        write_connection.execute_batch(&format!(
            "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{WRITER_PAGE_CACHE_KIB};"
        ))?;
        let writer = writer::Writer::start(write_connection, rules.clone())
            .map_err(|error| StoreError::Database(format!("could not start the writer thread: {error}")))?;
        let mut connections = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            let connection = open_connection(path)?;
            connection.execute_batch("PRAGMA query_only = ON;")?;
            connections.push(connection);
        }
        Ok(SqliteStore {
            writer,
            readers: Arc::new(ReadPool {
                connections: Mutex::new(connections),
                permits: Semaphore::new(READ_CONNECTIONS),
            }),
            rules,
        })
    }

    /// The rules this store prices with.
    pub fn rules(&self) -> &StoreRules {
        &self.rules
    }

    async fn read<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Timestamp, &StoreRules) -> StoreResult<T> + Send + 'static,
    {
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable)?;
        let readers = self.readers.clone();
        let rules = self.rules.clone();
        tokio::task::spawn_blocking(move || {
            let connection = readers
                .connections
                .lock()
                .map_err(|_| StoreError::Unavailable)?
                .pop()
                .ok_or(StoreError::Unavailable)?;
            // One snapshot for the whole read: in autocommit mode each statement would see
            // the database as of its own start, so a read of an account and then of its
            // holds could straddle a commit (an account showing funds held by a hold that
            // the next statement no longer finds due).
            let result = connection
                .execute_batch("BEGIN DEFERRED")
                .map_err(StoreError::from)
                .and_then(|()| operation(&connection, rules.clock.now(), &rules));
            if !connection.is_autocommit() {
                // Read-only: nothing to keep; ending it lets checkpoints move past it.
                let _ = connection.execute_batch("ROLLBACK");
            }
            if let Ok(mut pool) = readers.connections.lock() {
                pool.push(connection);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Unavailable)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, account: NewAccount) -> StoreResult<AccountRecord> {
        self.writer
            .write(move |context| ops::create_account(context, &account))
            .await
    }

    async fn account(&self, id: &AccountId) -> StoreResult<AccountRecord> {
        let id = id.clone();
        let read_id = id.clone();
        let (record, due) = self
            .read(move |connection, now, _| {
                let record = rows::load_account(connection, &read_id, now)?
                    .map(|stored| stored.record)
                    .ok_or_else(|| StoreError::NotFound {
                        what: "account",
                        id: read_id.to_string(),
                    })?;
                Ok((record, rows::has_due_holds(connection, &read_id, now)?))
            })
            .await?;
        if !due {
            return Ok(record);
        }
        // Never show funds as held by a hold whose time ran out: release it first.
        self.writer
            .write_cached(move |context| ops::release_due_holds(context, &id))
            .await
    }

    async fn list_accounts(&self, page: PageRequest) -> StoreResult<Page<AccountRecord>> {
        self.read(move |connection, now, _| rows::list_accounts(connection, &page, now))
            .await
    }

    async fn charge_usage(&self, command: UsageCommand) -> StoreResult<Idempotent<UsageRecord>> {
        self.writer
            .write_charges(move |context| ops::charge_usage_hot(context, &command))
            .await
    }

    async fn charge_usage_batch(
        &self,
        commands: Vec<UsageCommand>,
    ) -> StoreResult<Vec<StoreResult<Idempotent<UsageRecord>>>> {
        if commands.len() > MAX_BATCH_EVENTS {
            return Err(StoreError::BatchTooLarge);
        }
        self.writer
            .write_charges(move |context| {
                Ok(commands
                    .iter()
                    .map(|command| ops::charge_usage_hot(context, command))
                    .collect())
            })
            .await
    }

    async fn grant(&self, command: GrantCommand) -> StoreResult<Idempotent<TransactionLine>> {
        self.writer
            .write_cached(move |context| ops::grant(context, &command))
            .await
    }

    async fn place_hold(&self, command: HoldCommand) -> StoreResult<Idempotent<HoldRecord>> {
        self.writer
            .write_cached(move |context| ops::place_hold(context, &command))
            .await
    }

    async fn capture_hold(
        &self,
        hold_id: &str,
        quantity: Quantity,
    ) -> StoreResult<(HoldRecord, UsageRecord)> {
        let hold_id = hold_id.to_owned();
        // The inner result lets a lazily expired hold commit its release while the capture is refused.
        self.writer
            .write_cached(move |context| ops::capture_hold(context, &hold_id, quantity))
            .await?
    }

    async fn void_hold(&self, hold_id: &str) -> StoreResult<HoldRecord> {
        let hold_id = hold_id.to_owned();
        self.writer
            .write_cached(move |context| ops::void_hold(context, &hold_id))
            .await?
    }

    async fn hold(&self, hold_id: &str) -> StoreResult<HoldRecord> {
        let read_id = hold_id.to_owned();
        let (hold, now) = self
            .read(move |connection, now, _| {
                let hold = rows::load_hold(connection, &read_id)?.ok_or(StoreError::NotFound {
                    what: "hold",
                    id: read_id,
                })?;
                Ok((hold, now))
            })
            .await?;
        if hold.status != tollgate_core::HoldStatus::Active || hold.expires_at > now {
            return Ok(hold);
        }
        // An active hold past its time is reported as what it is: expired and released.
        let account = hold.account.clone();
        let hold_id = hold_id.to_owned();
        self.writer
            .write(move |context| {
                ops::release_due_holds(context, &account)?;
                rows::load_hold(context.connection, &hold_id)?.ok_or(StoreError::NotFound {
                    what: "hold",
                    id: hold_id,
                })
            })
            .await
    }

    async fn expire_holds(&self, limit: usize) -> StoreResult<usize> {
        self.writer
            .write_cached(move |context| ops::expire_due_holds(context, limit))
            .await
    }

    async fn transactions(
        &self,
        account: &AccountId,
        page: PageRequest,
    ) -> StoreResult<Page<TransactionLine>> {
        let account = account.clone();
        self.read(move |connection, _, _| rows::list_transactions(connection, &account, &page))
            .await
    }

    async fn daily_usage(
        &self,
        account: &AccountId,
        since: Timestamp,
    ) -> StoreResult<Vec<(time::Date, String, Micros)>> {
        let account = account.clone();
        self.read(move |connection, _, _| rows::daily_usage(connection, &account, since))
            .await
    }

    async fn verify_ledger(&self) -> StoreResult<LedgerReport> {
        self.read(|connection, _, rules| verify::verify(connection, rules))
            .await
    }

    async fn insert_api_key(&self, key: ApiKeyRecord) -> StoreResult<()> {
        self.writer
            .write(move |context| rows::insert_api_key(context.connection, &key))
            .await
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let key_hash = key_hash.to_owned();
        self.read(move |connection, _, _| rows::api_key_by_hash(connection, &key_hash))
            .await
    }

    async fn count_api_keys(&self) -> StoreResult<u64> {
        self.read(|connection, _, _| rows::count_api_keys(connection))
            .await
    }

    async fn audit_log(&self, page: PageRequest) -> StoreResult<Page<AuditRecord>> {
        self.read(move |connection, _, _| rows::list_audit(connection, &page))
            .await
    }

    async fn health(&self) -> StoreResult<()> {
        self.read(|connection, _, _| {
            connection.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn payment_profile(&self, account: &AccountId) -> StoreResult<PaymentProfile> {
        let account = account.clone();
        self.read(move |connection, _, _| payments::payment_profile(connection, &account))
            .await
    }

    async fn set_processor_customer(&self, account: &AccountId, customer: &str) -> StoreResult<String> {
        let (account, customer) = (account.clone(), customer.to_owned());
        self.writer
            .write(move |context| payments::set_processor_customer(context, &account, &customer))
            .await
    }

    async fn record_card_setup(&self, account: &AccountId, session: &str) -> StoreResult<()> {
        let (account, session) = (account.clone(), session.to_owned());
        self.writer
            .write(move |context| payments::record_card_setup(context, &account, &session))
            .await
    }

    async fn complete_card_setup(
        &self,
        session: &str,
        card: CardRecord,
        actor: Actor,
    ) -> StoreResult<CardSetupResult> {
        let session = session.to_owned();
        self.writer
            .write(move |context| payments::complete_card_setup(context, &session, &card, &actor))
            .await
    }

    async fn adopt_card(
        &self,
        account: &AccountId,
        card: CardRecord,
        actor: Actor,
    ) -> StoreResult<CardSetupResult> {
        let account = account.clone();
        self.writer
            .write(move |context| payments::adopt_card(context, &account, &card, &actor))
            .await
    }

    async fn remove_card(&self, account: &AccountId, actor: Actor) -> StoreResult<Option<CardRecord>> {
        let account = account.clone();
        self.writer
            .write(move |context| payments::remove_card(context, &account, &actor))
            .await
    }

    async fn create_topup(&self, topup: NewTopup) -> StoreResult<Idempotent<TopupRecord>> {
        self.writer
            .write(move |context| payments::create_topup(context, &topup))
            .await
    }

    async fn link_topup(
        &self,
        topup_id: &str,
        checkout_session: Option<String>,
        payment_reference: Option<String>,
    ) -> StoreResult<TopupRecord> {
        let topup_id = topup_id.to_owned();
        self.writer
            .write(move |context| {
                payments::link_topup(
                    context,
                    &topup_id,
                    checkout_session.as_deref(),
                    payment_reference.as_deref(),
                )
            })
            .await
    }

    async fn settle_topup(&self, topup_id: &str, outcome: TopupOutcome) -> StoreResult<TopupRecord> {
        let topup_id = topup_id.to_owned();
        self.writer
            .write(move |context| payments::settle_topup(context, &topup_id, &outcome))
            .await
    }

    async fn topup(&self, topup_id: &str) -> StoreResult<TopupRecord> {
        let topup_id = topup_id.to_owned();
        self.read(move |connection, _, _| payments::load_topup(connection, &topup_id))
            .await
    }

    async fn find_topup(&self, reference: TopupReference) -> StoreResult<Option<TopupRecord>> {
        self.read(move |connection, _, _| payments::find_topup(connection, &reference))
            .await
    }

    async fn list_topups(&self, account: &AccountId, page: PageRequest) -> StoreResult<Page<TopupRecord>> {
        let account = account.clone();
        self.read(move |connection, _, _| payments::list_topups(connection, &account, &page))
            .await
    }

    async fn open_topups(&self, created_before: Timestamp, limit: usize) -> StoreResult<Vec<TopupRecord>> {
        self.read(move |connection, _, _| payments::open_topups(connection, created_before, limit))
            .await
    }

    async fn begin_refund(&self, request: RefundRequest) -> StoreResult<Idempotent<RefundRecord>> {
        self.writer
            .write(move |context| payments::begin_refund(context, &request))
            .await
    }

    async fn finish_refund(
        &self,
        refund_id: &str,
        outcome: Result<String, String>,
    ) -> StoreResult<RefundRecord> {
        let refund_id = refund_id.to_owned();
        self.writer
            .write(move |context| payments::finish_refund(context, &refund_id, &outcome))
            .await
    }

    async fn reconcile_refunded(
        &self,
        reference: TopupReference,
        total_refunded: Micros,
    ) -> StoreResult<Option<RefundRecord>> {
        self.writer
            .write(move |context| payments::reconcile_refunded(context, &reference, total_refunded))
            .await
    }

    async fn apply_dispute(&self, news: DisputeNews) -> StoreResult<Option<DisputeApplied>> {
        self.writer
            .write(move |context| payments::apply_dispute(context, &news))
            .await
    }

    async fn record_processor_event(&self, event_id: &str, event_type: &str) -> StoreResult<bool> {
        let (event_id, event_type) = (event_id.to_owned(), event_type.to_owned());
        self.writer
            .write(move |context| payments::record_processor_event(context, &event_id, &event_type))
            .await
    }

    async fn auto_recharge(&self, account: &AccountId) -> StoreResult<crate::AutoRechargeRecord> {
        let account = account.clone();
        self.read(move |connection, now, _| recharge::auto_recharge(connection, &account, now))
            .await
    }

    async fn set_auto_recharge(
        &self,
        account: &AccountId,
        change: crate::AutoRechargeChange,
        actor: Actor,
    ) -> StoreResult<crate::AutoRechargeRecord> {
        let account = account.clone();
        self.writer
            .write(move |context| recharge::set_auto_recharge(context, &account, &change, &actor))
            .await
    }

    async fn due_auto_recharges(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<AccountId>> {
        self.read(move |connection, _, _| recharge::due_auto_recharges(connection, now, limit))
            .await
    }

    async fn begin_auto_recharge(
        &self,
        account: &AccountId,
        limits: tollgate_core::TopupLimits,
    ) -> StoreResult<crate::AutoRechargeStart> {
        let account = account.clone();
        self.writer
            .write(move |context| recharge::begin_auto_recharge(context, &account, limits))
            .await
    }

    async fn open_auto_recharges(&self, limit: usize) -> StoreResult<Vec<TopupRecord>> {
        self.read(move |connection, _, _| recharge::open_auto_recharges(connection, limit))
            .await
    }

    async fn create_portal_session(&self, session: crate::NewPortalSession) -> StoreResult<()> {
        self.writer
            .write(move |context| portal::create_portal_session(context, &session))
            .await
    }

    async fn redeem_portal_link(
        &self,
        link_hash: &str,
        session_hash: &str,
        session_expires_at: Timestamp,
    ) -> StoreResult<Option<crate::PortalSessionRecord>> {
        let (link_hash, session_hash) = (link_hash.to_owned(), session_hash.to_owned());
        self.writer
            .write(move |context| {
                portal::redeem_portal_link(context, &link_hash, &session_hash, session_expires_at)
            })
            .await
    }

    async fn portal_session(&self, session_hash: &str) -> StoreResult<Option<crate::PortalSessionRecord>> {
        let session_hash = session_hash.to_owned();
        self.read(move |connection, now, _| portal::portal_session(connection, &session_hash, now))
            .await
    }

    async fn list_events(&self, filter: EventFilter, page: PageRequest) -> StoreResult<Page<EventRecord>> {
        self.read(move |connection, _, _| events::list_events(connection, &filter, &page))
            .await
    }

    async fn event(&self, id: &str) -> StoreResult<EventRecord> {
        let id = id.to_owned();
        self.read(move |connection, _, _| events::event(connection, &id))
            .await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpointRecord> {
        self.writer
            .write(move |context| events::create_endpoint(context, &endpoint))
            .await
    }

    async fn disable_webhook_endpoint(&self, id: &str, actor: Actor) -> StoreResult<WebhookEndpointRecord> {
        let id = id.to_owned();
        self.writer
            .write(move |context| events::disable_endpoint(context, &id, &actor))
            .await
    }

    async fn webhook_endpoints(&self) -> StoreResult<Vec<WebhookEndpointRecord>> {
        self.read(|connection, _, _| events::list_endpoints(connection))
            .await
    }

    async fn claim_deliveries(&self, lease_ms: u64, limit: usize) -> StoreResult<Vec<DueDelivery>> {
        self.writer
            .write(move |context| {
                let lease = time::Duration::milliseconds(i64::try_from(lease_ms).unwrap_or(i64::MAX));
                events::claim_deliveries(context, context.now + lease, limit)
            })
            .await
    }

    async fn record_delivery_attempt(
        &self,
        endpoint: &str,
        event_sequence: i64,
        attempt: DeliveryAttempt,
        policy: DeliveryPolicy,
    ) -> StoreResult<DeliveryRecord> {
        let endpoint = endpoint.to_owned();
        self.writer
            .write(move |context| {
                events::record_attempt(context, &endpoint, event_sequence, &attempt, &policy)
            })
            .await
    }

    async fn plan(&self, account: &AccountId) -> StoreResult<crate::PlanRecord> {
        let account = account.clone();
        self.read(move |connection, now, _| plan::plan(connection, &account, now))
            .await
    }

    async fn set_plan(&self, command: tollgate_core::PlanCommand) -> StoreResult<crate::PlanRecord> {
        self.writer
            .write(move |context| plan::set_plan(context, &command))
            .await
    }

    async fn close_due_invoices(&self, limit: usize) -> StoreResult<Vec<crate::InvoiceRecord>> {
        self.writer
            .write(move |context| invoices::close_due_invoices(context, limit))
            .await
    }

    async fn invoices(
        &self,
        account: &AccountId,
        page: PageRequest,
    ) -> StoreResult<Page<crate::InvoiceRecord>> {
        let account = account.clone();
        self.read(move |connection, _, _| invoices::list_invoices(connection, &account, &page))
            .await
    }

    async fn invoice(&self, id: &str) -> StoreResult<crate::InvoiceRecord> {
        let id = id.to_owned();
        self.read(move |connection, _, _| invoices::invoice(connection, &id))
            .await
    }

    async fn mark_invoice_paid(
        &self,
        command: crate::MarkPaid,
    ) -> StoreResult<Idempotent<crate::InvoiceRecord>> {
        self.writer
            .write(move |context| invoices::mark_paid(context, &command))
            .await
    }

    async fn attach_invoice_topup(
        &self,
        invoice: &str,
        topup: &str,
        attempt: u32,
    ) -> StoreResult<crate::InvoiceRecord> {
        let (invoice, topup) = (invoice.to_owned(), topup.to_owned());
        self.writer
            .write(move |context| invoices::attach_topup(context, &invoice, &topup, attempt))
            .await
    }

    async fn deliveries(&self, endpoint: &str, page: PageRequest) -> StoreResult<Page<DeliveryRecord>> {
        let endpoint = endpoint.to_owned();
        self.read(move |connection, _, _| events::list_deliveries(connection, &endpoint, &page))
            .await
    }
}
