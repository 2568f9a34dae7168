//! Transaction scripts run by the writer: load state, decide with
//! `tollgate-core`, write journal + transfers + balances together.

use rusqlite::{OptionalExtension, params};
use tollgate_core::clock::to_unix_micros;
use tollgate_core::hold::{HoldEvent, transition};
use tollgate_core::ledger::check_debit;
use tollgate_core::{
    AccountId, Actor, CycleAnchor, GrantCommand, HoldCommand, HoldStatus, IdempotencyKey, JournalTransaction,
    Micros, NewAccount, Quantity, SpendState, UsageCommand,
};

use super::account_cache::{self, CachedAccount};
use super::events;
use super::rows::{self, StoredAccount};
use super::writer::{self, WriteContext};
use crate::decide::{decide_usage, not_found, overflow, record_spend, usage_record};
use crate::events::balance_events;
use crate::{
    AccountRecord, AuditRecord, HoldRecord, Idempotent, StoreError, StoreResult, TransactionLine,
    UsageRecord, new_id,
};

pub fn create_account(context: &WriteContext<'_>, account: &NewAccount) -> StoreResult<AccountRecord> {
    let connection = context.connection;
    let exists: Option<i64> = connection
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row(params![account.id.as_str()], |row| row.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::AccountExists(account.id.clone()));
    }
    let spend = SpendState::new(CycleAnchor::from_created_at(context.now), context.now);
    connection
        .prepare_cached(
            "INSERT INTO accounts (id, name, email, created_at, cycle_start) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            account.id.as_str(),
            account.name,
            account.email,
            to_unix_micros(context.now),
            to_unix_micros(spend.cycle_start),
        ])?;
    audit(
        context,
        &account.created_by,
        "account.created",
        &account.id,
        None,
        Some(format!("name={:?} email={:?}", account.name, account.email)),
    )?;
    load(context, &account.id).map(|stored| stored.record)
}

/// Releases an account's holds whose time ran out; returns the account as it is then.
pub fn release_due_holds(context: &WriteContext<'_>, id: &AccountId) -> StoreResult<AccountRecord> {
    let account = load_for_write(context, id)?;
    save(context, &account)?;
    Ok(account.record)
}

/// An account for writing: the writer's cached copy when the job has the cache, else
/// (and then cached) the database's.
fn load(context: &WriteContext<'_>, id: &AccountId) -> StoreResult<StoredAccount> {
    if let Some(cache) = context.cache
        && let Some(cached) = cache.borrow().get(id)
    {
        let mut stored = cached.stored.clone();
        // The cycle may have turned since the account was cached.
        stored.record.spend = stored.record.spend.rolled_to(stored.record.anchor(), context.now);
        return Ok(stored);
    }
    let stored =
        rows::load_account(context.connection, id, context.now)?.ok_or_else(|| not_found("account", id))?;
    if let Some(cache) = context.cache {
        let earliest_hold_expiry = account_cache::earliest_hold_expiry(context.connection, id)?;
        cache.borrow_mut().put(
            CachedAccount {
                stored: stored.clone(),
                earliest_hold_expiry,
            },
            false,
        );
    }
    Ok(stored)
}

/// Keeps an account's new state: in the cache (written back before the commit) when the
/// job has it, else in the database at once. `hold_expiring_at`: a hold just placed.
fn keep(
    context: &WriteContext<'_>,
    account: &StoredAccount,
    hold_expiring_at: Option<tollgate_core::Timestamp>,
) -> StoreResult<()> {
    let Some(cache) = context.cache else {
        return rows::save_account(context.connection, account);
    };
    let known = cache
        .borrow()
        .get(&account.record.id)
        .map(|cached| cached.earliest_hold_expiry);
    let earliest = match known {
        Some(earliest) => earliest,
        None => account_cache::earliest_hold_expiry(context.connection, &account.record.id)?,
    };
    let earliest_hold_expiry = match (earliest, hold_expiring_at) {
        (Some(earliest), Some(placed)) => Some(earliest.min(placed)),
        (earliest, placed) => earliest.or(placed),
    };
    cache.borrow_mut().put(
        CachedAccount {
            stored: account.clone(),
            earliest_hold_expiry,
        },
        true,
    );
    Ok(())
}

/// Saves an account changed by a write.
pub(super) fn save(context: &WriteContext<'_>, account: &StoredAccount) -> StoreResult<()> {
    keep(context, account, None)
}

/// Whether an active hold of the account may have run out: always asked of the database
/// without the cache; with it, only once the earliest known expiry has passed.
fn holds_may_be_due(context: &WriteContext<'_>, id: &AccountId) -> bool {
    let Some(cache) = context.cache else { return true };
    match cache.borrow().get(id) {
        Some(cached) => cached
            .earliest_hold_expiry
            .is_some_and(|earliest| earliest <= context.now),
        None => true,
    }
}

/// Loads an account for writing, releasing its holds whose time ran out first.
pub(super) fn load_for_write(context: &WriteContext<'_>, id: &AccountId) -> StoreResult<StoredAccount> {
    let mut account = load(context, id)?;
    if !holds_may_be_due(context, id) {
        return Ok(account);
    }
    let due: Vec<String> = context
        .connection
        .prepare_cached(
            // Ties broken by id so the journal order never depends on the query plan.
            "SELECT id FROM holds WHERE account_id = ?1 AND status = 'active' AND expires_at <= ?2 \
             ORDER BY expires_at, id",
        )?
        .query_map(params![id.as_str(), to_unix_micros(context.now)], |row| {
            row.get(0)
        })?
        .collect::<Result<_, _>>()?;
    for hold_id in &due {
        close_hold(context, &mut account, hold_id, HoldEvent::Expire)?;
    }
    if let Some(cache) = context.cache {
        // The bound has passed: learn the next one (and keep the releases, if any).
        let earliest_hold_expiry = account_cache::earliest_hold_expiry(context.connection, id)?;
        cache.borrow_mut().put(
            CachedAccount {
                stored: account.clone(),
                earliest_hold_expiry,
            },
            !due.is_empty(),
        );
    }
    Ok(account)
}

/// The journal transaction recorded earlier under this key, if the request matches.
fn replayed_transaction(
    context: &WriteContext<'_>,
    account: &AccountId,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> StoreResult<Option<String>> {
    if !context.keys.borrow().may_contain(account, key) {
        return Ok(None);
    }
    let found: Option<(String, Option<String>)> = context
        .connection
        .prepare_cached(
            "SELECT id, request_fingerprint FROM journal_transactions WHERE account_id = ?1 AND idempotency_key = ?2",
        )?
        .query_row(params![account.as_str(), key.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match found {
        None => Ok(None),
        Some((id, stored)) if stored.as_deref() == Some(fingerprint) => Ok(Some(id)),
        Some(_) => Err(StoreError::IdempotencyConflict { key: key.to_string() }),
    }
}

pub(super) struct JournalWrite<'a> {
    pub description: String,
    pub reference: Option<&'a str>,
    pub idempotency: Option<(&'a IdempotencyKey, String)>,
}

/// Appends a journal transaction and its transfers, and moves the account's
/// balances by what the transfers say. The caller saves the account.
pub(super) fn append(
    context: &WriteContext<'_>,
    account: &mut StoredAccount,
    journal: &JournalTransaction,
    write: JournalWrite<'_>,
) -> StoreResult<TransactionLine> {
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
    context
        .connection
        .prepare_cached(
            "INSERT INTO journal_transactions (id, account_id, sequence, kind, amount_micros, \
             available_amount_micros, available_after_micros, held_after_micros, description, reference_id, \
             idempotency_key, request_fingerprint, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            id,
            journal.account.as_str(),
            sequence,
            journal.kind.code(),
            amount.get(),
            delta.available.get(),
            balances_after.available.get(),
            balances_after.held.get(),
            write.description,
            write.reference,
            key,
            fingerprint,
            to_unix_micros(context.now),
        ])?;
    if let Some((key, _)) = &write.idempotency {
        context.keys.borrow_mut().insert(&journal.account, key);
    }
    let mut insert_transfer = context.connection.prepare_cached(
        "INSERT INTO transfers (transaction_id, leg, from_account, to_account, amount_micros) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (leg, transfer) in journal.transfers.iter().enumerate() {
        insert_transfer.execute(params![
            id,
            leg as i64,
            transfer.from.code(),
            transfer.to.code(),
            transfer.amount.get()
        ])?;
    }
    events::insert_events(
        context,
        &balance_events(
            &journal.account,
            account.record.balances,
            balances_after,
            context.rules.balance_low_level,
        ),
    )?;
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
fn record_usage(
    context: &WriteContext<'_>,
    account: &mut StoredAccount,
    usage: PricedUsage<'_>,
) -> StoreResult<UsageRecord> {
    let held = usage.journal_kind_for_hold.map(|(_, held)| held);
    let hold_id = usage.journal_kind_for_hold.map(|(hold_id, _)| hold_id);
    let decision = decide_usage(
        context.rules,
        &account.record,
        usage.action,
        usage.quantity,
        held,
        context.now,
    )?;
    let line = append(
        context,
        account,
        &decision.journal,
        JournalWrite {
            description: decision.description.clone(),
            reference: hold_id,
            idempotency: usage.idempotency,
        },
    )?;
    let quote = &decision.quote;
    if let Some(upgraded) = record_spend(context.rules, &mut account.record, &decision)? {
        events::insert_events(context, &[upgraded])?;
    }
    context
        .connection
        .prepare_cached(
            "INSERT INTO usage_records (transaction_id, account_id, action, quantity, unit_price_micros, \
             unit_list_price_micros, amount_micros, list_amount_micros, savings_micros, price_source, tier_id, \
             price_book_version, hold_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?
        .execute(params![
            line.id,
            account.record.id.as_str(),
            usage.action.as_str(),
            i64::try_from(usage.quantity.get()).map_err(|_| StoreError::ChargeTooLarge)?,
            quote.unit_price.get(),
            quote.unit_list_price.get(),
            quote.amount.get(),
            quote.list_amount.get(),
            quote.savings.get(),
            quote.price_source.code(),
            decision.tier.as_str(),
            context.rules.price_book.version(),
            hold_id,
            to_unix_micros(context.now),
        ])?;
    Ok(usage_record(context.rules, decision, line, hold_id, context.now))
}

pub fn charge_usage(
    context: &WriteContext<'_>,
    command: &UsageCommand,
) -> StoreResult<Idempotent<UsageRecord>> {
    let fingerprint = command.fingerprint();
    if let Some(id) = replayed_transaction(context, &command.account, &command.idempotency_key, &fingerprint)?
    {
        return Ok(Idempotent {
            value: rows::load_usage(context.connection, &id)?,
            replayed: true,
        });
    }
    let mut account = load_for_write(context, &command.account)?;
    let usage = record_usage(
        context,
        &mut account,
        PricedUsage {
            action: &command.action,
            quantity: command.quantity,
            journal_kind_for_hold: None,
            idempotency: Some((&command.idempotency_key, fingerprint)),
        },
    )?;
    save(context, &account)?;
    Ok(Idempotent {
        value: usage,
        replayed: false,
    })
}

/// [`charge_usage`] on the hot path: with no savepoint when the charge can refuse only
/// before its first write (its account is cached and none of its holds may have run out:
/// releasing one would be a write before the decision), else in one.
pub fn charge_usage_hot(
    context: &WriteContext<'_>,
    command: &UsageCommand,
) -> StoreResult<Idempotent<UsageRecord>> {
    // False for an account not in the cache, too.
    if !holds_may_be_due(context, &command.account) {
        writer::guarded(context, || charge_usage(context, command))
    } else {
        writer::in_savepoint(context, "charge", || charge_usage(context, command))
    }
}

pub fn grant(context: &WriteContext<'_>, command: &GrantCommand) -> StoreResult<Idempotent<TransactionLine>> {
    let fingerprint = command.fingerprint();
    if let Some(key) = &command.idempotency_key
        && let Some(id) = replayed_transaction(context, &command.account, key, &fingerprint)?
    {
        return Ok(Idempotent {
            value: rows::load_transaction(context.connection, &id)?,
            replayed: true,
        });
    }
    let mut account = load_for_write(context, &command.account)?;
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
        context,
        &mut account,
        &journal,
        JournalWrite {
            description: command.reason.clone(),
            reference: None,
            idempotency: command.idempotency_key.as_ref().map(|key| (key, fingerprint)),
        },
    )?;
    save(context, &account)?;
    audit(
        context,
        &command.actor,
        "grant.created",
        &command.account,
        Some(format!("available={}", before.available)),
        Some(format!(
            "available={} amount={} reason={:?} transaction={}",
            line.balances_after.available, command.amount, command.reason, line.id
        )),
    )?;
    Ok(Idempotent {
        value: line,
        replayed: false,
    })
}

pub(super) fn audit(
    context: &WriteContext<'_>,
    actor: &Actor,
    action: &str,
    account: &AccountId,
    before: Option<String>,
    after: Option<String>,
) -> StoreResult<()> {
    audit_entry(context, actor, action, Some(account), before, after)
}

/// An audit entry about no one account (webhook endpoints, …).
pub(super) fn audit_global(
    context: &WriteContext<'_>,
    actor: &Actor,
    action: &str,
    before: Option<String>,
    after: Option<String>,
) -> StoreResult<()> {
    audit_entry(context, actor, action, None, before, after)
}

fn audit_entry(
    context: &WriteContext<'_>,
    actor: &Actor,
    action: &str,
    account: Option<&AccountId>,
    before: Option<String>,
    after: Option<String>,
) -> StoreResult<()> {
    rows::insert_audit(
        context.connection,
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
}

pub fn place_hold(context: &WriteContext<'_>, command: &HoldCommand) -> StoreResult<Idempotent<HoldRecord>> {
    let fingerprint = command.fingerprint();
    if let Some(transaction_id) =
        replayed_transaction(context, &command.account, &command.idempotency_key, &fingerprint)?
    {
        let hold_id: String = context
            .connection
            .prepare_cached("SELECT id FROM holds WHERE placed_transaction_id = ?1")?
            .query_row(params![transaction_id], |row| row.get(0))?;
        let hold =
            rows::load_hold(context.connection, &hold_id)?.ok_or_else(|| not_found("hold", &hold_id))?;
        // A replay returns the original result (API.md), not the hold as it
        // is now: as placed, active, with the balances right after placing.
        let placed = rows::load_transaction(context.connection, &transaction_id)?;
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
    let mut account = load_for_write(context, &command.account)?;
    crate::invoices::check_not_overdue(&account.record, context.now)?;
    check_debit(account.record.mode, account.record.balances, command.amount)?;
    let hold_id = new_id("hold");
    let line = append(
        context,
        &mut account,
        &JournalTransaction::hold_placed(&command.account, command.amount),
        JournalWrite {
            description: format!("Hold for {action_name}"),
            reference: Some(&hold_id),
            idempotency: Some((&command.idempotency_key, fingerprint)),
        },
    )?;
    let expires_at = context.now + command.ttl.duration();
    context
        .connection
        .prepare_cached(
            "INSERT INTO holds (id, account_id, action, amount_micros, status, expires_at, created_at, \
             placed_transaction_id) VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?6, ?7)",
        )?
        .execute(params![
            hold_id,
            command.account.as_str(),
            command.action.as_str(),
            command.amount.get(),
            to_unix_micros(expires_at),
            to_unix_micros(context.now),
            line.id,
        ])?;
    keep(context, &account, Some(expires_at))?;
    let hold = rows::load_hold(context.connection, &hold_id)?.ok_or_else(|| not_found("hold", &hold_id))?;
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
    expires_at: tollgate_core::Timestamp,
}

fn load_hold_state(context: &WriteContext<'_>, hold_id: &str) -> StoreResult<ActiveHold> {
    let hold = rows::load_hold(context.connection, hold_id)?.ok_or_else(|| not_found("hold", hold_id))?;
    Ok(ActiveHold {
        account: hold.account,
        action: hold.action,
        amount: hold.amount,
        status: hold.status,
        expires_at: hold.expires_at,
    })
}

/// Voids or expires a hold: its funds go back to the available balance.
fn close_hold(
    context: &WriteContext<'_>,
    account: &mut StoredAccount,
    hold_id: &str,
    event: HoldEvent,
) -> StoreResult<()> {
    let hold = load_hold_state(context, hold_id)?;
    let status = transition(hold.status, hold.expires_at, event, context.now)
        .map_err(|refused| StoreError::HoldNotActive(refused.status))?;
    debug_assert!(matches!(status, HoldStatus::Voided | HoldStatus::Expired));
    let line = append(
        context,
        account,
        &JournalTransaction::hold_released(&hold.account, hold.amount),
        JournalWrite {
            description: format!("Hold {}", status.code()),
            reference: Some(hold_id),
            idempotency: None,
        },
    )?;
    context
        .connection
        .prepare_cached(
            "UPDATE holds SET status = ?2, closed_transaction_id = ?3, closed_at = ?4 WHERE id = ?1 AND status = 'active'",
        )?
        .execute(params![hold_id, status.code(), line.id, to_unix_micros(context.now)])?;
    Ok(())
}

/// Captures a hold. The outer result undoes everything; the inner one keeps
/// a lazy expiry committed while refusing the capture.
pub fn capture_hold(
    context: &WriteContext<'_>,
    hold_id: &str,
    quantity: Quantity,
) -> StoreResult<StoreResult<(HoldRecord, UsageRecord)>> {
    let hold = load_hold_state(context, hold_id)?;
    let mut account = load_for_write(context, &hold.account)?;
    let hold = load_hold_state(context, hold_id)?;
    if let Err(refused) = transition(hold.status, hold.expires_at, HoldEvent::Capture, context.now) {
        save(context, &account)?;
        return Ok(Err(StoreError::HoldNotActive(refused.status)));
    }
    let usage = record_usage(
        context,
        &mut account,
        PricedUsage {
            action: &hold.action,
            quantity,
            journal_kind_for_hold: Some((hold_id, hold.amount)),
            idempotency: None,
        },
    )?;
    context
        .connection
        .prepare_cached(
            "UPDATE holds SET status = 'captured', closed_transaction_id = ?2, closed_at = ?3, captured_micros = ?4 \
             WHERE id = ?1 AND status = 'active'",
        )?
        .execute(params![hold_id, usage.id, to_unix_micros(context.now), usage.amount.get()])?;
    save(context, &account)?;
    let record = rows::load_hold(context.connection, hold_id)?.ok_or_else(|| not_found("hold", hold_id))?;
    Ok(Ok((record, usage)))
}

/// Voids a hold; like [`capture_hold`], a lazy expiry commits even when refused.
pub fn void_hold(context: &WriteContext<'_>, hold_id: &str) -> StoreResult<StoreResult<HoldRecord>> {
    let hold = load_hold_state(context, hold_id)?;
    let mut account = load_for_write(context, &hold.account)?;
    let outcome = close_hold(context, &mut account, hold_id, HoldEvent::Void);
    save(context, &account)?;
    match outcome {
        Ok(()) => Ok(Ok(
            rows::load_hold(context.connection, hold_id)?.ok_or_else(|| not_found("hold", hold_id))?
        )),
        Err(refused @ StoreError::HoldNotActive(_)) => Ok(Err(refused)),
        Err(other) => Err(other),
    }
}

/// Releases up to `limit` holds whose time ran out, across accounts, the
/// oldest expiry first (ties by id, which is time-ordered).
pub fn expire_due_holds(context: &WriteContext<'_>, limit: usize) -> StoreResult<usize> {
    let due: Vec<(String, String)> = context
        .connection
        .prepare_cached(
            "SELECT id, account_id FROM holds WHERE status = 'active' AND expires_at <= ?1 \
             ORDER BY expires_at, id LIMIT ?2",
        )?
        .query_map(
            params![
                to_unix_micros(context.now),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    // Close exactly the selected holds: going through `load_for_write` would
    // release every due hold of each account and break the `limit` contract
    // (one sweep of a busy account could grow without bound).
    for (hold_id, account_id) in &due {
        let mut account = load(context, &rows::account_id(account_id)?)?;
        close_hold(context, &mut account, hold_id, HoldEvent::Expire)?;
        save(context, &account)?;
    }
    Ok(due.len())
}
