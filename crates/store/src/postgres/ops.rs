//! Transaction scripts for PostgreSQL: the same decisions as `sqlite/ops.rs`,
//! each preceded by the account's row lock (`SELECT … FOR UPDATE`), so that
//! writers of one account in any number of processes run one at a time and
//! every idempotency and balance check sees the latest committed state.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tollgate_core::clock::to_unix_micros;
use tollgate_core::hold::{HoldEvent, transition};
use tollgate_core::ledger::check_debit;
use tollgate_core::{
    AccountId, Actor, CycleAnchor, GrantCommand, HoldCommand, HoldStatus, IdempotencyKey, JournalTransaction,
    Micros, NewAccount, Quantity, SpendState, Timestamp,
};

use super::events;
use super::rows::{self, StoredAccount};
use super::{PgError, PgResult};
use crate::decide::{decide_usage, not_found, overflow, record_spend, usage_record};
use crate::events::balance_events;
use crate::{
    AccountRecord, AuditRecord, HoldRecord, Idempotent, StoreError, StoreResult, StoreRules, TransactionLine,
    UsageRecord, new_id,
};

/// What an operation sees besides its transaction: the time, read once, and the rules.
pub struct Context<'a> {
    /// The time of this attempt.
    pub now: Timestamp,
    /// Price book, tier basis.
    pub rules: &'a StoreRules,
}

pub async fn create_account<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &NewAccount,
) -> PgResult<AccountRecord> {
    let spend = SpendState::new(CycleAnchor::from_created_at(context.now), context.now);
    // ON CONFLICT instead of check-then-insert: two processes creating the
    // same id at once get one row and one AccountExists, never an error page.
    let inserted = client
        .execute_cached(
            "INSERT INTO accounts (id, name, email, created_at, cycle_start) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
            &[
                &account.id.as_str(),
                &account.name,
                &account.email,
                &to_unix_micros(context.now),
                &to_unix_micros(spend.cycle_start),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::AccountExists(account.id.clone()).into());
    }
    audit(
        client,
        context,
        &account.created_by,
        "account.created",
        &account.id,
        None,
        Some(format!("name={:?} email={:?}", account.name, account.email)),
    )
    .await?;
    Ok(load(client, context, &account.id).await?.record)
}

/// Releases an account's holds whose time ran out; returns the account as it is then.
pub async fn release_due_holds<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    id: &AccountId,
) -> PgResult<AccountRecord> {
    rows::lock_account(client, id.as_str()).await?;
    let account = load_for_write(client, context, id).await?;
    rows::save_account(client, &account).await?;
    Ok(account.record)
}

async fn load<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    id: &AccountId,
) -> PgResult<StoredAccount> {
    rows::load_account(client, id, context.now)
        .await?
        .ok_or_else(|| not_found("account", id).into())
}

/// Loads an account for writing, releasing its holds whose time ran out first.
/// The caller holds the account's row lock.
pub(super) async fn load_for_write<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    id: &AccountId,
) -> PgResult<StoredAccount> {
    let mut account = load(client, context, id).await?;
    let due: Vec<String> = client
        .query_cached(
            // Ties broken by id so the journal order never depends on the query plan.
            "SELECT id FROM holds WHERE account_id = $1 AND status = 'active' AND expires_at <= $2 \
             ORDER BY expires_at, id",
            &[&id.as_str(), &to_unix_micros(context.now)],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for hold_id in due {
        close_hold(client, context, &mut account, &hold_id, HoldEvent::Expire).await?;
    }
    Ok(account)
}

/// The journal transaction recorded earlier under this key, if the request matches.
/// The caller holds the account's row lock, so no other writer can be between
/// this check and its own insert.
async fn replayed_transaction<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> PgResult<Option<String>> {
    let found = client
        .query_opt_cached(
            "SELECT id, request_fingerprint FROM journal_transactions WHERE account_id = $1 AND idempotency_key = $2",
            &[&account.as_str(), &key.as_str()],
        )
        .await?;
    let Some(row) = found else {
        return Ok(None);
    };
    let id: String = row.try_get(0)?;
    let stored: Option<String> = row.try_get(1)?;
    if stored.as_deref() == Some(fingerprint) {
        Ok(Some(id))
    } else {
        Err(StoreError::IdempotencyConflict { key: key.to_string() }.into())
    }
}

pub(super) struct JournalWrite<'a> {
    pub description: String,
    pub reference: Option<&'a str>,
    pub idempotency: Option<(&'a IdempotencyKey, String)>,
}

/// Appends a journal transaction and its transfers, and moves the account's
/// balances by what the transfers say. The caller saves the account.
pub(super) async fn append<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &mut StoredAccount,
    journal: &JournalTransaction,
    write: JournalWrite<'_>,
) -> PgResult<TransactionLine> {
    debug_assert_eq!(journal.account, account.record.id);
    let delta = journal.customer_delta().map_err(overflow)?;
    let balances_after = delta.apply(account.record.balances).map_err(overflow)?;
    let amount = delta.total().map_err(overflow)?;
    let sequence = account.journal_sequence + 1;
    let id = new_id("txn");
    let (key, fingerprint) = match &write.idempotency {
        Some((key, fingerprint)) => (Some(key.as_str()), Some(fingerprint.as_str())),
        None => (None, None),
    };
    client
        .execute_cached(
            "INSERT INTO journal_transactions (id, account_id, sequence, kind, amount_micros, \
             available_amount_micros, available_after_micros, held_after_micros, description, reference_id, \
             idempotency_key, request_fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &id,
                &journal.account.as_str(),
                &sequence,
                &journal.kind.code(),
                &amount.get(),
                &delta.available.get(),
                &balances_after.available.get(),
                &balances_after.held.get(),
                &write.description,
                &write.reference,
                &key,
                &fingerprint,
                &to_unix_micros(context.now),
            ],
        )
        .await?;
    for (leg, transfer) in journal.transfers.iter().enumerate() {
        client
            .execute_cached(
                "INSERT INTO transfers (transaction_id, leg, from_account, to_account, amount_micros) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id,
                    &(leg as i64),
                    &transfer.from.code(),
                    &transfer.to.code(),
                    &transfer.amount.get(),
                ],
            )
            .await?;
    }
    events::insert_events(
        client,
        context,
        &balance_events(
            &journal.account,
            account.record.balances,
            balances_after,
            context.rules.balance_low_level,
        ),
    )
    .await?;
    account.record.balances = balances_after;
    account.journal_sequence = sequence;
    Ok(TransactionLine {
        id,
        account: journal.account.clone(),
        sequence,
        kind: journal.kind,
        amount,
        available_amount: delta.available,
        balances_after,
        description: write.description,
        reference: write.reference.map(str::to_owned),
        created_at: context.now,
    })
}

struct PricedUsage<'a> {
    action: &'a tollgate_core::ActionId,
    quantity: Quantity,
    journal_kind_for_hold: Option<(&'a str, Micros)>,
    idempotency: Option<(&'a IdempotencyKey, String)>,
}

/// Prices and records a usage charge (plain, or the capture of a hold).
async fn record_usage<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &mut StoredAccount,
    usage: PricedUsage<'_>,
) -> PgResult<UsageRecord> {
    let held = usage.journal_kind_for_hold.map(|(_, held)| held);
    let decision = decide_usage(
        context.rules,
        &account.record,
        usage.action,
        usage.quantity,
        held,
        context.now,
    )?;
    write_usage(client, context, account, usage, decision).await
}

/// Writes a usage charge already decided: every refusal happened before this.
async fn write_usage<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &mut StoredAccount,
    usage: PricedUsage<'_>,
    decision: crate::decide::UsageDecision,
) -> PgResult<UsageRecord> {
    let hold_id = usage.journal_kind_for_hold.map(|(hold_id, _)| hold_id);
    let line = append(
        client,
        context,
        account,
        &decision.journal,
        JournalWrite {
            description: decision.description.clone(),
            reference: hold_id,
            idempotency: usage.idempotency,
        },
    )
    .await?;
    let quote = &decision.quote;
    if let Some(upgraded) = record_spend(context.rules, &mut account.record, &decision)? {
        events::insert_events(client, context, &[upgraded]).await?;
    }
    client
        .execute_cached(
            "INSERT INTO usage_records (transaction_id, account_id, action, quantity, unit_price_micros, \
             unit_list_price_micros, amount_micros, list_amount_micros, savings_micros, price_source, tier_id, \
             price_book_version, hold_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &line.id,
                &account.record.id.as_str(),
                &usage.action.as_str(),
                &i64::try_from(usage.quantity.get()).map_err(|_| StoreError::ChargeTooLarge)?,
                &quote.unit_price.get(),
                &quote.unit_list_price.get(),
                &quote.amount.get(),
                &quote.list_amount.get(),
                &quote.savings.get(),
                &quote.price_source.code(),
                &decision.tier.as_str(),
                &context.rules.price_book.version(),
                &hold_id,
                &to_unix_micros(context.now),
            ],
        )
        .await?;
    Ok(usage_record(context.rules, decision, line, hold_id, context.now))
}

/// Charges one usage event. The caller locked the account (alone, or with a batch's others).
/// The accounts of one batch, loaded once each under their row locks and written back
/// once at the end: a batch of N events on one account makes one account update, not N.
#[derive(Default)]
pub struct BatchAccounts {
    loaded: std::collections::BTreeMap<AccountId, StoredAccount>,
}

impl BatchAccounts {
    /// The batch's copy of an account; `None` if it does not exist.
    pub fn get_mut(&mut self, id: &AccountId) -> Option<&mut StoredAccount> {
        self.loaded.get_mut(id)
    }

    /// Writes every account the batch loaded back (in id order, the order they were locked).
    pub async fn write_back<C: GenericClient + Sync>(&self, client: &C) -> PgResult<()> {
        for account in self.loaded.values() {
            rows::save_account(client, account).await?;
        }
        Ok(())
    }
}

impl BatchAccounts {
    /// Loads every account of a batch (the caller holds their row locks), releasing
    /// holds whose time ran out: those releases stand whatever the events do. An
    /// account that does not exist is remembered as missing; its events are refused.
    pub async fn load<C: GenericClient + Sync>(
        client: &C,
        context: &Context<'_>,
        ids: &[&AccountId],
    ) -> PgResult<BatchAccounts> {
        let mut accounts = BatchAccounts::default();
        for id in ids {
            match load_for_write(client, context, id).await {
                Ok(account) => {
                    accounts.loaded.insert((*id).clone(), account);
                }
                Err(PgError::Store(StoreError::NotFound { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(accounts)
    }
}

pub async fn grant<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    command: &GrantCommand,
) -> PgResult<Idempotent<TransactionLine>> {
    rows::lock_account(client, command.account.as_str()).await?;
    let fingerprint = command.fingerprint();
    if let Some(key) = &command.idempotency_key
        && let Some(id) = replayed_transaction(client, &command.account, key, &fingerprint).await?
    {
        return Ok(Idempotent {
            value: rows::load_transaction(client, &id).await?,
            replayed: true,
        });
    }
    let mut account = load_for_write(client, context, &command.account).await?;
    if command.amount.is_negative() {
        // An operator debit takes only what is there; money spent is not taken twice.
        check_debit(
            account.record.mode,
            account.record.balances,
            command.amount.checked_neg().map_err(overflow)?,
        )?;
    }
    let before = account.record.balances;
    let journal = JournalTransaction::grant(&command.account, command.amount).map_err(overflow)?;
    let line = append(
        client,
        context,
        &mut account,
        &journal,
        JournalWrite {
            description: command.reason.clone(),
            reference: None,
            idempotency: command.idempotency_key.as_ref().map(|key| (key, fingerprint)),
        },
    )
    .await?;
    rows::save_account(client, &account).await?;
    audit(
        client,
        context,
        &command.actor,
        "grant.created",
        &command.account,
        Some(format!("available={}", before.available)),
        Some(format!(
            "available={} amount={} reason={:?} transaction={}",
            line.balances_after.available, command.amount, command.reason, line.id
        )),
    )
    .await?;
    Ok(Idempotent {
        value: line,
        replayed: false,
    })
}

pub(super) async fn audit<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    actor: &Actor,
    action: &str,
    account: &AccountId,
    before: Option<String>,
    after: Option<String>,
) -> PgResult<()> {
    audit_entry(client, context, actor, action, Some(account), before, after).await
}

/// An audit entry about no one account (webhook endpoints, …).
pub(super) async fn audit_global<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    actor: &Actor,
    action: &str,
    before: Option<String>,
    after: Option<String>,
) -> PgResult<()> {
    audit_entry(client, context, actor, action, None, before, after).await
}

async fn audit_entry<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    actor: &Actor,
    action: &str,
    account: Option<&AccountId>,
    before: Option<String>,
    after: Option<String>,
) -> PgResult<()> {
    rows::insert_audit(
        client,
        &AuditRecord {
            id: new_id("aud"),
            actor: actor.to_string(),
            action: action.to_owned(),
            account: account.cloned(),
            before,
            after,
            created_at: context.now,
        },
    )
    .await
}

pub async fn place_hold<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    command: &HoldCommand,
) -> PgResult<Idempotent<HoldRecord>> {
    rows::lock_account(client, command.account.as_str()).await?;
    let fingerprint = command.fingerprint();
    if let Some(transaction_id) =
        replayed_transaction(client, &command.account, &command.idempotency_key, &fingerprint).await?
    {
        let hold_id: String = client
            .query_one_cached(
                "SELECT id FROM holds WHERE placed_transaction_id = $1",
                &[&transaction_id],
            )
            .await?
            .try_get(0)?;
        let hold = rows::load_hold(client, &hold_id)
            .await?
            .ok_or_else(|| not_found("hold", &hold_id))?;
        // A replay returns the original result (API.md), not the hold as it
        // is now: as placed, active, with the balances right after placing.
        let placed = rows::load_transaction(client, &transaction_id).await?;
        return Ok(Idempotent {
            value: HoldRecord {
                status: HoldStatus::Active,
                closed_at: None,
                captured_amount: None,
                balances_after: placed.balances_after,
                ..hold
            },
            replayed: true,
        });
    }
    let book = &context.rules.price_book;
    let action_name = book
        .action(&command.action)
        .map(|spec| spec.name.clone())
        .ok_or_else(|| StoreError::UnknownAction(command.action.to_string()))?;
    let mut account = load_for_write(client, context, &command.account).await?;
    crate::invoices::check_not_overdue(&account.record, context.now)?;
    check_debit(account.record.mode, account.record.balances, command.amount)?;
    let hold_id = new_id("hold");
    let line = append(
        client,
        context,
        &mut account,
        &JournalTransaction::hold_placed(&command.account, command.amount),
        JournalWrite {
            description: format!("Hold for {action_name}"),
            reference: Some(&hold_id),
            idempotency: Some((&command.idempotency_key, fingerprint)),
        },
    )
    .await?;
    let expires_at = context.now + command.ttl.duration();
    client
        .execute_cached(
            "INSERT INTO holds (id, account_id, action, amount_micros, status, expires_at, created_at, \
             placed_transaction_id) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7)",
            &[
                &hold_id,
                &command.account.as_str(),
                &command.action.as_str(),
                &command.amount.get(),
                &to_unix_micros(expires_at),
                &to_unix_micros(context.now),
                &line.id,
            ],
        )
        .await?;
    rows::save_account(client, &account).await?;
    let hold = rows::load_hold(client, &hold_id)
        .await?
        .ok_or_else(|| not_found("hold", &hold_id))?;
    Ok(Idempotent {
        value: hold,
        replayed: false,
    })
}

struct ActiveHold {
    account: AccountId,
    action: tollgate_core::ActionId,
    amount: Micros,
    status: HoldStatus,
    expires_at: Timestamp,
}

async fn load_hold_state<C: GenericClient + Sync>(client: &C, hold_id: &str) -> PgResult<ActiveHold> {
    let hold = rows::load_hold(client, hold_id)
        .await?
        .ok_or_else(|| not_found("hold", hold_id))?;
    Ok(ActiveHold {
        account: hold.account,
        action: hold.action,
        amount: hold.amount,
        status: hold.status,
        expires_at: hold.expires_at,
    })
}

/// Voids or expires a hold: its funds go back to the available balance.
/// The caller holds the account's row lock; the status read here is therefore
/// current, and the UPDATE's `status = 'active'` guard makes a second close a no-op.
async fn close_hold<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &mut StoredAccount,
    hold_id: &str,
    event: HoldEvent,
) -> PgResult<()> {
    let hold = load_hold_state(client, hold_id).await?;
    let status = transition(hold.status, hold.expires_at, event, context.now)
        .map_err(|refused| StoreError::HoldNotActive(refused.status))?;
    debug_assert!(matches!(status, HoldStatus::Voided | HoldStatus::Expired));
    let line = append(
        client,
        context,
        account,
        &JournalTransaction::hold_released(&hold.account, hold.amount),
        JournalWrite {
            description: format!("Hold {}", status.code()),
            reference: Some(hold_id),
            idempotency: None,
        },
    )
    .await?;
    let closed = client
        .execute_cached(
            "UPDATE holds SET status = $2, closed_transaction_id = $3, closed_at = $4 \
             WHERE id = $1 AND status = 'active'",
            &[&hold_id, &status.code(), &line.id, &to_unix_micros(context.now)],
        )
        .await?;
    if closed != 1 {
        // Unreachable under the row lock; refusing keeps the money where it is.
        return Err(StoreError::Database(format!("hold {hold_id} was closed concurrently")).into());
    }
    Ok(())
}

/// Captures a hold. The outer result undoes everything; the inner one keeps
/// a lazy expiry committed while refusing the capture.
pub async fn capture_hold<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    hold_id: &str,
    quantity: Quantity,
) -> PgResult<StoreResult<(HoldRecord, UsageRecord)>> {
    let hold = load_hold_state(client, hold_id).await?;
    rows::lock_account(client, hold.account.as_str()).await?;
    let mut account = load_for_write(client, context, &hold.account).await?;
    // Read again under the lock: another process may have closed it meanwhile.
    let hold = load_hold_state(client, hold_id).await?;
    if let Err(refused) = transition(hold.status, hold.expires_at, HoldEvent::Capture, context.now) {
        rows::save_account(client, &account).await?;
        return Ok(Err(StoreError::HoldNotActive(refused.status)));
    }
    let usage = record_usage(
        client,
        context,
        &mut account,
        PricedUsage {
            action: &hold.action,
            quantity,
            journal_kind_for_hold: Some((hold_id, hold.amount)),
            idempotency: None,
        },
    )
    .await?;
    let closed = client
        .execute_cached(
            "UPDATE holds SET status = 'captured', closed_transaction_id = $2, closed_at = $3, captured_micros = $4 \
             WHERE id = $1 AND status = 'active'",
            &[&hold_id, &usage.id, &to_unix_micros(context.now), &usage.amount.get()],
        )
        .await?;
    if closed != 1 {
        return Err(StoreError::Database(format!("hold {hold_id} was closed concurrently")).into());
    }
    rows::save_account(client, &account).await?;
    let record = rows::load_hold(client, hold_id)
        .await?
        .ok_or_else(|| not_found("hold", hold_id))?;
    Ok(Ok((record, usage)))
}

/// Voids a hold; like [`capture_hold`], a lazy expiry commits even when refused.
pub async fn void_hold<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    hold_id: &str,
) -> PgResult<StoreResult<HoldRecord>> {
    let hold = load_hold_state(client, hold_id).await?;
    rows::lock_account(client, hold.account.as_str()).await?;
    let mut account = load_for_write(client, context, &hold.account).await?;
    let outcome = close_hold(client, context, &mut account, hold_id, HoldEvent::Void).await;
    rows::save_account(client, &account).await?;
    match outcome {
        Ok(()) => Ok(Ok(rows::load_hold(client, hold_id)
            .await?
            .ok_or_else(|| not_found("hold", hold_id))?)),
        Err(super::PgError::Store(refused @ StoreError::HoldNotActive(_))) => Ok(Err(refused)),
        Err(other) => Err(other),
    }
}

/// Releases up to `limit` holds whose time ran out, across accounts, the
/// oldest expiry first (ties by id, which is time-ordered); returns how many
/// this call released.
pub async fn expire_due_holds<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    limit: usize,
) -> PgResult<usize> {
    let due: Vec<(String, String)> = client
        .query_cached(
            "SELECT id, account_id FROM holds WHERE status = 'active' AND expires_at <= $1 \
             ORDER BY expires_at, id LIMIT $2",
            &[
                &to_unix_micros(context.now),
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<PgResult<_>>()?;
    // Lock the accounts in id order, the order every multi-account writer
    // uses, so two sweeps (or a sweep and a batch) cannot deadlock.
    let mut accounts: Vec<&str> = due.iter().map(|(_, account)| account.as_str()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    for account in accounts {
        rows::lock_account(client, account).await?;
    }
    let mut released = 0;
    for (hold_id, account_id) in &due {
        // Another process may have closed it between the SELECT and the lock:
        // skip it, so each hold is expired (and its funds released) once.
        let hold = load_hold_state(client, hold_id).await?;
        if hold.status != HoldStatus::Active {
            continue;
        }
        let mut account = load(client, context, &rows::account_id(account_id)?).await?;
        close_hold(client, context, &mut account, hold_id, HoldEvent::Expire).await?;
        rows::save_account(client, &account).await?;
        released += 1;
    }
    Ok(released)
}
