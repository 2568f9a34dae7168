//! A batch of usage charges written with a handful of statements, whatever its size.
//!
//! Every event is decided in memory first, against the batch's accounts (locked and loaded
//! once): a refusal, a replay or a conflict then writes nothing. The accepted events' rows
//! go to the database at the end, one multi-row `INSERT … SELECT FROM unnest(…)` per table.
//! Written one statement per row, a batch made about ten round trips per event and the
//! server's CPU went on executor start-up and foreign-key triggers per statement.
//!
//! Any error from the database fails the batch's transaction as a whole.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tollgate_core::clock::to_unix_micros;
use tollgate_core::{AccountId, UsageCommand};

use super::ops::{BatchAccounts, Context};
use super::prepared::Prepared as _;
use super::{PgResult, events, rows};
use crate::decide::{decide_usage, not_found, overflow, record_spend, usage_record};
use crate::events::{PendingEvent, balance_events};
use crate::{Idempotent, StoreError, StoreResult, TransactionLine, UsageRecord, new_id};

/// What became of one event before anything was written.
enum Staged {
    /// Decided; its answer is final.
    Answered(Box<StoreResult<Idempotent<UsageRecord>>>),
    /// A repeat of an earlier event of this batch: answered from the database once that
    /// one is written, exactly as a later replay would be.
    RepeatOf(String),
}

/// The rows of the accepted events, column by column, for `unnest`.
#[derive(Default)]
struct Rows {
    journal_id: Vec<String>,
    journal_account: Vec<String>,
    journal_sequence: Vec<i64>,
    journal_kind: Vec<&'static str>,
    journal_amount: Vec<i64>,
    journal_available_amount: Vec<i64>,
    journal_available_after: Vec<i64>,
    journal_held_after: Vec<i64>,
    journal_description: Vec<String>,
    journal_key: Vec<String>,
    journal_fingerprint: Vec<String>,
    transfer_transaction: Vec<String>,
    transfer_leg: Vec<i64>,
    transfer_from: Vec<String>,
    transfer_to: Vec<String>,
    transfer_amount: Vec<i64>,
    usage_action: Vec<String>,
    usage_quantity: Vec<i64>,
    usage_unit_price: Vec<i64>,
    usage_unit_list_price: Vec<i64>,
    usage_amount: Vec<i64>,
    usage_list_amount: Vec<i64>,
    usage_savings: Vec<i64>,
    usage_price_source: Vec<&'static str>,
    usage_tier: Vec<String>,
    /// Events in the order their changes happened.
    events: Vec<PendingEvent>,
}

/// Charges `commands` in the caller's transaction, which holds the row locks of every
/// account in `accounts` (sorted, no repeats). One answer per command, in order.
pub async fn charge_batch<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    commands: &[UsageCommand],
    accounts: &[&AccountId],
) -> PgResult<Vec<StoreResult<Idempotent<UsageRecord>>>> {
    let mut loaded = BatchAccounts::load(client, context, accounts).await?;
    let recorded = recorded_keys(client, commands).await?;
    // (account, key) → (fingerprint, journal id) of the events accepted in this batch.
    let mut accepted: HashMap<(String, String), (String, String)> = HashMap::new();
    let mut rows = Rows::default();
    let mut staged = Vec::with_capacity(commands.len());
    for command in commands {
        let fingerprint = command.fingerprint();
        let key = (command.account.to_string(), command.idempotency_key.to_string());
        let earlier = accepted
            .get(&key)
            .map(|(stored, id)| (Some(stored.as_str()), id.clone(), true))
            .or_else(|| {
                recorded
                    .get(&key)
                    .map(|(stored, id)| (stored.as_deref(), id.clone(), false))
            });
        if let Some((stored, id, in_this_batch)) = earlier {
            let conflict = || StoreError::IdempotencyConflict {
                key: command.idempotency_key.to_string(),
            };
            staged.push(match (stored == Some(fingerprint.as_str()), in_this_batch) {
                (false, _) => Staged::Answered(Box::new(Err(conflict()))),
                (true, true) => Staged::RepeatOf(id),
                (true, false) => Staged::Answered(Box::new(Ok(Idempotent {
                    value: rows::load_usage(client, &id).await?,
                    replayed: true,
                }))),
            });
            continue;
        }
        let answer = stage(context, &mut loaded, command, &fingerprint, &mut rows);
        if let Ok(usage) = &answer {
            accepted.insert(key, (fingerprint, usage.id.clone()));
        }
        staged.push(Staged::Answered(Box::new(answer.map(|value| Idempotent {
            value,
            replayed: false,
        }))));
    }
    write_rows(client, context, &rows).await?;
    events::insert_events(client, context, &rows.events).await?;
    loaded.write_back(client).await?;
    let mut answers = Vec::with_capacity(staged.len());
    for item in staged {
        answers.push(match item {
            Staged::Answered(answer) => *answer,
            Staged::RepeatOf(id) => Ok(Idempotent {
                value: rows::load_usage(client, &id).await?,
                replayed: true,
            }),
        });
    }
    Ok(answers)
}

/// The journal rows already holding the batch's keys: (account, key) → (fingerprint, id).
async fn recorded_keys<C: GenericClient + Sync>(
    client: &C,
    commands: &[UsageCommand],
) -> PgResult<HashMap<(String, String), (Option<String>, String)>> {
    let accounts: Vec<&str> = commands.iter().map(|command| command.account.as_str()).collect();
    let keys: Vec<&str> = commands
        .iter()
        .map(|command| command.idempotency_key.as_str())
        .collect();
    let found = client
        .query_cached(
            "SELECT j.account_id, j.idempotency_key, j.request_fingerprint, j.id \
             FROM journal_transactions j \
             JOIN unnest($1::TEXT[], $2::TEXT[]) AS wanted (account_id, idempotency_key) \
               ON j.account_id = wanted.account_id AND j.idempotency_key = wanted.idempotency_key",
            &[&accounts, &keys],
        )
        .await?;
    let mut recorded = HashMap::with_capacity(found.len());
    for row in found {
        recorded.insert(
            (row.try_get(0)?, row.try_get(1)?),
            (row.try_get(2)?, row.try_get(3)?),
        );
    }
    Ok(recorded)
}

/// Decides one new event and, if accepted, adds its rows and moves its account. Nothing is
/// written: an error leaves the account and the rows as they were.
fn stage(
    context: &Context<'_>,
    loaded: &mut BatchAccounts,
    command: &UsageCommand,
    fingerprint: &str,
    rows: &mut Rows,
) -> StoreResult<UsageRecord> {
    let Some(stored) = loaded.get_mut(&command.account) else {
        return Err(not_found("account", &command.account));
    };
    let decision = decide_usage(
        context.rules,
        &stored.record,
        &command.action,
        command.quantity,
        None,
        context.now,
    )?;
    let mut account = stored.clone();
    let journal = &decision.journal;
    let delta = journal.customer_delta().map_err(overflow)?;
    let balances_after = delta.apply(account.record.balances).map_err(overflow)?;
    let amount = delta.total().map_err(overflow)?;
    let sequence = account
        .journal_sequence
        .checked_add(1)
        .ok_or(StoreError::ChargeTooLarge)?;
    let quantity = i64::try_from(command.quantity.get()).map_err(|_| StoreError::ChargeTooLarge)?;
    let quote = &decision.quote;
    let upgraded = record_spend(context.rules, &mut account.record, &decision)?;
    let mut events = balance_events(
        &account.record.id,
        account.record.balances,
        balances_after,
        context.rules.balance_low_level,
    );
    events.extend(upgraded);
    account.record.balances = balances_after;
    account.journal_sequence = sequence;
    // Everything that can refuse has been asked: from here on the event is accepted.
    let id = new_id("txn");
    rows.journal_id.push(id.clone());
    rows.journal_account.push(account.record.id.to_string());
    rows.journal_sequence.push(sequence);
    rows.journal_kind.push(journal.kind.code());
    rows.journal_amount.push(amount.get());
    rows.journal_available_amount.push(delta.available.get());
    rows.journal_available_after.push(balances_after.available.get());
    rows.journal_held_after.push(balances_after.held.get());
    rows.journal_description.push(decision.description.clone());
    rows.journal_key.push(command.idempotency_key.to_string());
    rows.journal_fingerprint.push(fingerprint.to_owned());
    for (leg, transfer) in journal.transfers.iter().enumerate() {
        rows.transfer_transaction.push(id.clone());
        rows.transfer_leg.push(leg as i64);
        rows.transfer_from.push(transfer.from.code());
        rows.transfer_to.push(transfer.to.code());
        rows.transfer_amount.push(transfer.amount.get());
    }
    rows.usage_action.push(command.action.to_string());
    rows.usage_quantity.push(quantity);
    rows.usage_unit_price.push(quote.unit_price.get());
    rows.usage_unit_list_price.push(quote.unit_list_price.get());
    rows.usage_amount.push(quote.amount.get());
    rows.usage_list_amount.push(quote.list_amount.get());
    rows.usage_savings.push(quote.savings.get());
    rows.usage_price_source.push(quote.price_source.code());
    rows.usage_tier.push(decision.tier.to_string());
    rows.events.extend(events);
    let line = TransactionLine {
        id,
        account: account.record.id.clone(),
        sequence,
        kind: journal.kind,
        amount,
        available_amount: delta.available,
        balances_after,
        description: decision.description.clone(),
        reference: None,
        created_at: context.now,
    };
    *stored = account;
    Ok(usage_record(context.rules, decision, line, None, context.now))
}

/// One statement per table for every accepted event.
async fn write_rows<C: GenericClient + Sync>(client: &C, context: &Context<'_>, rows: &Rows) -> PgResult<()> {
    if rows.journal_id.is_empty() {
        return Ok(());
    }
    let now = to_unix_micros(context.now);
    client
        .execute_cached(
            "INSERT INTO journal_transactions (id, account_id, sequence, kind, amount_micros, \
             available_amount_micros, available_after_micros, held_after_micros, description, reference_id, \
             idempotency_key, request_fingerprint, created_at) \
             SELECT id, account_id, sequence, kind, amount, available_amount, available_after, held_after, \
                    description, NULL, idempotency_key, request_fingerprint, $12 \
             FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], \
                         $7::BIGINT[], $8::BIGINT[], $9::TEXT[], $10::TEXT[], $11::TEXT[]) \
               AS r (id, account_id, sequence, kind, amount, available_amount, available_after, held_after, \
                     description, idempotency_key, request_fingerprint)",
            &[
                &rows.journal_id,
                &rows.journal_account,
                &rows.journal_sequence,
                &rows.journal_kind,
                &rows.journal_amount,
                &rows.journal_available_amount,
                &rows.journal_available_after,
                &rows.journal_held_after,
                &rows.journal_description,
                &rows.journal_key,
                &rows.journal_fingerprint,
                &now,
            ],
        )
        .await?;
    client
        .execute_cached(
            "INSERT INTO transfers (transaction_id, leg, from_account, to_account, amount_micros) \
             SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[])",
            &[
                &rows.transfer_transaction,
                &rows.transfer_leg,
                &rows.transfer_from,
                &rows.transfer_to,
                &rows.transfer_amount,
            ],
        )
        .await?;
    client
        .execute_cached(
            "INSERT INTO usage_records (transaction_id, account_id, action, quantity, unit_price_micros, \
             unit_list_price_micros, amount_micros, list_amount_micros, savings_micros, price_source, tier_id, \
             price_book_version, hold_id, created_at) \
             SELECT transaction_id, account_id, action, quantity, unit_price, unit_list_price, amount, \
                    list_amount, savings, price_source, tier_id, $12, NULL, $13 \
             FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[], \
                         $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[]) \
               AS r (transaction_id, account_id, action, quantity, unit_price, unit_list_price, amount, \
                     list_amount, savings, price_source, tier_id)",
            &[
                &rows.journal_id,
                &rows.journal_account,
                &rows.usage_action,
                &rows.usage_quantity,
                &rows.usage_unit_price,
                &rows.usage_unit_list_price,
                &rows.usage_amount,
                &rows.usage_list_amount,
                &rows.usage_savings,
                &rows.usage_price_source,
                &rows.usage_tier,
                &context.rules.price_book.version(),
                &now,
            ],
        )
        .await?;
    Ok(())
}
