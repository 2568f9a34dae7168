//! Card payments on SQLite: the payment profile, top-ups, refunds, disputes
//! and processed webhook events. Decisions come from `crate::payments`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::payments::DisputeMove;
use tollgate_core::{
    AccountId, Actor, Balances, DisputeStatus, JournalTransaction, Micros, NewTopup, Timestamp, TopupOutcome,
    TopupSource, TopupStatus, TransactionKind,
};

use super::events;
use super::ops::{self, JournalWrite};
use super::rows::{self, StoredAccount};
use super::writer::WriteContext;
use super::{invoices, recharge};
use crate::decide::not_found;
use crate::events::{card_changed, card_event, topup_event};
use crate::invoices::card_description;
use crate::payments::{
    DASHBOARD_REFUND_REASON, RecordedDispute, Settlement, attention_after, card_change_audit, check_link,
    check_replay, check_setup_owner, credit_description, customer_taken, decide_dispute, initial_status,
    is_current_card, reference_taken, refund_amount, refund_created_audit, refund_description,
    refund_failed_description, refund_reconciled_audit, settle, unrecorded_refund,
};
use crate::{
    CardRecord, CardSetupResult, DisputeApplied, DisputeNews, Idempotent, Page, PageRequest, PaymentProfile,
    RefundRecord, RefundRequest, RefundState, StoreError, StoreResult, TopupRecord, TopupReference,
    TransactionLine, new_id,
};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(format!("stored {what} `{value}` is not valid"))
}

// ---------------------------------------------------------------------------
// Payment profile and cards

fn card_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Option<CardRecord>> {
    let id: Option<String> = row.get(first)?;
    let Some(processor_id) = id else {
        return Ok(None);
    };
    let month: i64 = row.get(first + 3)?;
    let year: i64 = row.get(first + 4)?;
    Ok(Some(CardRecord {
        processor_id,
        brand: row.get(first + 1)?,
        last4: row.get(first + 2)?,
        exp_month: u8::try_from(month).unwrap_or(0),
        exp_year: u16::try_from(year).unwrap_or(0),
        added_at: from_unix_micros(row.get(first + 5)?),
    }))
}

/// The account's profile; an account that never paid has an empty one.
pub fn payment_profile(connection: &Connection, account: &AccountId) -> StoreResult<PaymentProfile> {
    ensure_account(connection, account)?;
    let profile = connection
        .prepare_cached(
            "SELECT processor_customer_id, card_id, card_brand, card_last4, card_exp_month, card_exp_year, \
             card_added_at FROM payment_profiles WHERE account_id = ?1",
        )?
        .query_row(params![account.as_str()], |row| {
            Ok(PaymentProfile {
                processor_customer: row.get(0)?,
                card: card_from_row(row, 1)?,
            })
        })
        .optional()?;
    Ok(profile.unwrap_or_default())
}

pub(super) fn ensure_account(connection: &Connection, account: &AccountId) -> StoreResult<()> {
    let exists: Option<i64> = connection
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row(params![account.as_str()], |row| row.get(0))
        .optional()?;
    exists.map(|_| ()).ok_or_else(|| not_found("account", account))
}

fn ensure_profile(context: &WriteContext<'_>, account: &AccountId) -> StoreResult<()> {
    ensure_account(context.connection, account)?;
    context
        .connection
        .prepare_cached(
            "INSERT INTO payment_profiles (account_id, updated_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![account.as_str(), to_unix_micros(context.now)])?;
    Ok(())
}

pub fn set_processor_customer(
    context: &WriteContext<'_>,
    account: &AccountId,
    customer: &str,
) -> StoreResult<String> {
    ensure_profile(context, account)?;
    let owner: Option<String> = context
        .connection
        .prepare_cached("SELECT account_id FROM payment_profiles WHERE processor_customer_id = ?1")?
        .query_row(params![customer], |row| row.get(0))
        .optional()?;
    if owner.is_some_and(|owner| owner != account.as_str()) {
        return Err(customer_taken(customer));
    }
    context
        .connection
        .prepare_cached(
            "UPDATE payment_profiles SET processor_customer_id = ?2, updated_at = ?3 \
             WHERE account_id = ?1 AND processor_customer_id IS NULL",
        )?
        .execute(params![account.as_str(), customer, to_unix_micros(context.now)])?;
    payment_profile(context.connection, account)?
        .processor_customer
        .ok_or_else(|| StoreError::Database("processor customer was not stored".to_owned()))
}

pub fn record_card_setup(context: &WriteContext<'_>, account: &AccountId, session: &str) -> StoreResult<()> {
    ensure_account(context.connection, account)?;
    let owner: Option<String> = context
        .connection
        .prepare_cached("SELECT account_id FROM card_setups WHERE session_id = ?1")?
        .query_row(params![session], |row| row.get(0))
        .optional()?;
    match owner {
        Some(owner) => check_setup_owner(session, &owner, account),
        None => {
            context
                .connection
                .prepare_cached(
                    "INSERT INTO card_setups (session_id, account_id, created_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![session, account.as_str(), to_unix_micros(context.now)])?;
            Ok(())
        }
    }
}

fn write_card(
    context: &WriteContext<'_>,
    account: &AccountId,
    card: Option<&CardRecord>,
    actor: &Actor,
) -> StoreResult<Option<CardRecord>> {
    ensure_profile(context, account)?;
    let previous = payment_profile(context.connection, account)?.card;
    context
        .connection
        .prepare_cached(
            "UPDATE payment_profiles SET card_id = ?2, card_brand = ?3, card_last4 = ?4, card_exp_month = ?5, \
             card_exp_year = ?6, card_added_at = ?7, updated_at = ?8 WHERE account_id = ?1",
        )?
        .execute(params![
            account.as_str(),
            card.map(|card| card.processor_id.as_str()),
            card.map(|card| card.brand.as_str()),
            card.map(|card| card.last4.as_str()),
            card.map(|card| i64::from(card.exp_month)),
            card.map(|card| i64::from(card.exp_year)),
            card.map(|card| to_unix_micros(card.added_at)),
            to_unix_micros(context.now),
        ])?;
    let (action, before, after) = card_change_audit(previous.as_ref(), card);
    ops::audit(context, actor, action, account, before, after)?;
    if card_changed(previous.as_ref(), card) {
        events::insert_events(context, &[card_event(account, card)])?;
    }
    Ok(previous)
}

pub fn complete_card_setup(
    context: &WriteContext<'_>,
    session: &str,
    card: &CardRecord,
    actor: &Actor,
) -> StoreResult<CardSetupResult> {
    let setup: Option<(String, Option<String>)> = context
        .connection
        .prepare_cached("SELECT account_id, card_id FROM card_setups WHERE session_id = ?1")?
        .query_row(params![session], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (account, confirmed) = setup.ok_or_else(|| not_found("card setup", session))?;
    let account = rows::account_id(&account)?;
    if confirmed.is_some() {
        return Ok(CardSetupResult {
            applied: false,
            replaced: None,
            card: payment_profile(context.connection, &account)?.card,
        });
    }
    context
        .connection
        .prepare_cached("UPDATE card_setups SET card_id = ?2, completed_at = ?3 WHERE session_id = ?1")?
        .execute(params![session, card.processor_id, to_unix_micros(context.now)])?;
    adopt_card(context, &account, card, actor)
}

pub fn adopt_card(
    context: &WriteContext<'_>,
    account: &AccountId,
    card: &CardRecord,
    actor: &Actor,
) -> StoreResult<CardSetupResult> {
    let current = payment_profile(context.connection, account)?.card;
    if is_current_card(current.as_ref(), card) {
        return Ok(CardSetupResult {
            applied: false,
            replaced: None,
            card: current,
        });
    }
    let replaced = write_card(context, account, Some(card), actor)?;
    // A new card may succeed where the old one failed: Auto Top-Up arms again.
    recharge::after_new_card(context, account)?;
    Ok(CardSetupResult {
        applied: true,
        replaced,
        card: Some(card.clone()),
    })
}

pub fn remove_card(
    context: &WriteContext<'_>,
    account: &AccountId,
    actor: &Actor,
) -> StoreResult<Option<CardRecord>> {
    if payment_profile(context.connection, account)?.card.is_none() {
        return Ok(None);
    }
    let removed = write_card(context, account, None, actor)?;
    // Without a card Auto Top-Up cannot charge: it is switched off with the card.
    recharge::after_card_gone(context, account, actor)?;
    Ok(removed)
}

// ---------------------------------------------------------------------------
// Top-ups

pub(super) const TOPUP_COLUMNS: &str = "t.id, t.account_id, t.amount_micros, t.source, t.status, \
     t.idempotency_key, t.checkout_session_id, t.payment_reference, t.charge_reference, t.card_brand, \
     t.card_last4, t.failure_code, t.failure_message, t.credited_transaction_id, j.available_after_micros, \
     j.held_after_micros, t.refunded_micros, t.disputed_micros, t.created_at, t.updated_at, t.succeeded_at, \
     t.recharge_sequence";

pub(super) const TOPUP_FROM: &str =
    "topups t LEFT JOIN journal_transactions j ON j.id = t.credited_transaction_id";

/// Maps a row; the inner result reports stored values that no longer parse.
pub(super) fn topup_row(row: &Row<'_>) -> rusqlite::Result<StoreResult<TopupRecord>> {
    let account: String = row.get(1)?;
    let source: String = row.get(3)?;
    let status: String = row.get(4)?;
    let available_after: Option<i64> = row.get(14)?;
    let held_after: Option<i64> = row.get(15)?;
    let recharge_sequence: Option<i64> = row.get(21)?;
    let (Ok(account), Some(source), Some(status), Ok(recharge_sequence)) = (
        rows::account_id(&account),
        TopupSource::parse(&source),
        TopupStatus::parse(&status),
        recharge_sequence.map(u64::try_from).transpose(),
    ) else {
        return Ok(Err(corrupt("top-up", &row.get::<_, String>(0)?)));
    };
    Ok(Ok(TopupRecord {
        id: row.get(0)?,
        account,
        amount: Micros::new(row.get(2)?),
        source,
        status,
        idempotency_key: row.get(5)?,
        checkout_session: row.get(6)?,
        payment_reference: row.get(7)?,
        charge_reference: row.get(8)?,
        card_brand: row.get(9)?,
        card_last4: row.get(10)?,
        failure_code: row.get(11)?,
        failure_message: row.get(12)?,
        credited_transaction: row.get(13)?,
        balances_after_credit: available_after.zip(held_after).map(|(available, held)| Balances {
            available: Micros::new(available),
            held: Micros::new(held),
        }),
        refunded: Micros::new(row.get(16)?),
        disputed: Micros::new(row.get(17)?),
        created_at: from_unix_micros(row.get(18)?),
        updated_at: from_unix_micros(row.get(19)?),
        succeeded_at: row.get::<_, Option<i64>>(20)?.map(from_unix_micros),
        recharge_sequence,
    }))
}

fn load_topup_where(
    connection: &Connection,
    condition: &str,
    value: &str,
) -> StoreResult<Option<TopupRecord>> {
    connection
        .prepare_cached(&format!(
            // A charge may (in principle) name several top-ups: always the oldest one.
            "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} WHERE {condition} ORDER BY t.id LIMIT 1"
        ))?
        .query_row(params![value], topup_row)
        .optional()?
        .transpose()
}

pub fn load_topup(connection: &Connection, topup_id: &str) -> StoreResult<TopupRecord> {
    load_topup_where(connection, "t.id = ?1", topup_id)?.ok_or_else(|| not_found("top-up", topup_id))
}

pub fn find_topup(connection: &Connection, reference: &TopupReference) -> StoreResult<Option<TopupRecord>> {
    match reference {
        TopupReference::CheckoutSession(id) => load_topup_where(connection, "t.checkout_session_id = ?1", id),
        TopupReference::Payment(id) => load_topup_where(connection, "t.payment_reference = ?1", id),
        TopupReference::Charge(id) => load_topup_where(connection, "t.charge_reference = ?1", id),
    }
}

pub fn list_topups(
    connection: &Connection,
    account: &AccountId,
    page: &PageRequest,
) -> StoreResult<Page<TopupRecord>> {
    ensure_account(connection, account)?;
    // Ids are time-ordered (uuid v7), so id order is creation order.
    let before = match &page.starting_after {
        None => None,
        Some(cursor) => {
            let found: Option<String> = connection
                .prepare_cached("SELECT id FROM topups WHERE id = ?1 AND account_id = ?2")?
                .query_row(params![cursor, account.as_str()], |row| row.get(0))
                .optional()?;
            Some(found.ok_or_else(|| StoreError::InvalidCursor(cursor.clone()))?)
        }
    };
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} WHERE t.account_id = ?1 AND (?2 IS NULL OR t.id < ?2) \
         ORDER BY t.id DESC LIMIT ?3"
    ))?;
    let raw = statement
        .query_map(
            params![account.as_str(), before, i64::from(page.limit) + 1],
            topup_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = raw.into_iter().collect::<StoreResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

pub fn open_topups(
    connection: &Connection,
    created_before: Timestamp,
    limit: usize,
) -> StoreResult<Vec<TopupRecord>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} \
         WHERE t.status IN ('pending', 'requires_payment_method', 'requires_action') AND t.created_at < ?1 \
         ORDER BY t.created_at, t.id LIMIT ?2"
    ))?;
    let raw = statement
        .query_map(
            params![
                to_unix_micros(created_before),
                limit.min(crate::MAX_RECOVERY_BATCH) as i64
            ],
            topup_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    raw.into_iter().collect()
}

pub fn create_topup(context: &WriteContext<'_>, topup: &NewTopup) -> StoreResult<Idempotent<TopupRecord>> {
    crate::recharge::refuse_manual_auto_topup(topup.source)?;
    let fingerprint = topup.fingerprint();
    let existing: Option<(String, String)> = context
        .connection
        .prepare_cached(
            "SELECT id, request_fingerprint FROM topups WHERE account_id = ?1 AND idempotency_key = ?2",
        )?
        .query_row(
            params![topup.account.as_str(), topup.idempotency_key.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some((id, stored)) = existing {
        check_replay(Some(&stored), &fingerprint, &topup.idempotency_key)?;
        return Ok(Idempotent {
            value: load_topup(context.connection, &id)?,
            replayed: true,
        });
    }
    ensure_account(context.connection, &topup.account)?;
    let id = new_id("top");
    let status = initial_status(topup.source);
    let now = to_unix_micros(context.now);
    context
        .connection
        .prepare_cached(
            "INSERT INTO topups (id, account_id, amount_micros, source, status, idempotency_key, \
             request_fingerprint, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        )?
        .execute(params![
            id,
            topup.account.as_str(),
            topup.amount.get().get(),
            topup.source.code(),
            status.code(),
            topup.idempotency_key.as_str(),
            fingerprint,
            now,
        ])?;
    Ok(Idempotent {
        value: load_topup(context.connection, &id)?,
        replayed: false,
    })
}

pub fn link_topup(
    context: &WriteContext<'_>,
    topup_id: &str,
    checkout_session: Option<&str>,
    payment_reference: Option<&str>,
) -> StoreResult<TopupRecord> {
    let topup = load_topup(context.connection, topup_id)?;
    check_link(&topup, checkout_session, payment_reference)?;
    if let Some(session) = checkout_session {
        ensure_reference_free(
            context.connection,
            "checkout_session_id",
            "hosted page",
            session,
            topup_id,
        )?;
    }
    if let Some(payment) = payment_reference {
        ensure_reference_free(
            context.connection,
            "payment_reference",
            "payment",
            payment,
            topup_id,
        )?;
    }
    context
        .connection
        .prepare_cached(
            "UPDATE topups SET checkout_session_id = COALESCE(checkout_session_id, ?2), \
             payment_reference = COALESCE(payment_reference, ?3), updated_at = ?4 WHERE id = ?1",
        )?
        .execute(params![
            topup_id,
            checkout_session,
            payment_reference,
            to_unix_micros(context.now)
        ])?;
    load_topup(context.connection, topup_id)
}

/// Refuses a processor id that another top-up holds already (the unique constraint is the backstop).
fn ensure_reference_free(
    connection: &Connection,
    column: &str,
    what: &str,
    reference: &str,
    topup_id: &str,
) -> StoreResult<()> {
    let other: Option<String> = connection
        .prepare_cached(&format!(
            "SELECT id FROM topups WHERE {column} = ?1 AND id <> ?2 LIMIT 1"
        ))?
        .query_row(params![reference, topup_id], |row| row.get(0))
        .optional()?;
    match other {
        Some(other) => Err(reference_taken(what, reference, &other)),
        None => Ok(()),
    }
}

fn attention_since(connection: &Connection, account: &AccountId) -> StoreResult<Option<Timestamp>> {
    let since: Option<i64> = connection
        .prepare_cached("SELECT attention_since FROM accounts WHERE id = ?1")?
        .query_row(params![account.as_str()], |row| row.get(0))?;
    Ok(since.map(from_unix_micros))
}

/// Saves balances and the attention flag in the order the floor constraint allows.
fn save_flagged(context: &WriteContext<'_>, account: &StoredAccount) -> StoreResult<()> {
    let id = &account.record.id;
    let before = attention_since(context.connection, id)?;
    let after = attention_after(account.record.mode, account.record.balances, before, context.now);
    let mut flag = context
        .connection
        .prepare_cached("UPDATE accounts SET attention_since = ?2 WHERE id = ?1")?;
    if after.is_some() {
        flag.execute(params![id.as_str(), after.map(to_unix_micros)])?;
        rows::save_account(context.connection, account)
    } else {
        rows::save_account(context.connection, account)?;
        flag.execute(params![id.as_str(), Option::<i64>::None])?;
        Ok(())
    }
}

/// Writes a payment journal line for the account and saves it.
fn post(
    context: &WriteContext<'_>,
    account: &AccountId,
    journal: &JournalTransaction,
    description: String,
    reference: &str,
) -> StoreResult<TransactionLine> {
    let mut stored = ops::load_for_write(context, account)?;
    let line = ops::append(
        context,
        &mut stored,
        journal,
        JournalWrite {
            description,
            reference: Some(reference),
            idempotency: None,
        },
    )?;
    save_flagged(context, &stored)?;
    Ok(line)
}

pub fn settle_topup(
    context: &WriteContext<'_>,
    topup_id: &str,
    outcome: &TopupOutcome,
) -> StoreResult<TopupRecord> {
    let mut topup = load_topup(context.connection, topup_id)?;
    let linked = topup.payment_reference.clone();
    let previous = topup.status;
    let settlement = settle(&mut topup, outcome, context.now)?;
    if let Some(payment) = &topup.payment_reference
        && linked.as_ref() != Some(payment)
    {
        ensure_reference_free(
            context.connection,
            "payment_reference",
            "payment",
            payment,
            topup_id,
        )?;
    }
    // A card payment of an invoice says so in the journal, and pays it below.
    let mut paying = None;
    let credited = match settlement {
        Settlement::Unchanged => return Ok(topup),
        Settlement::Status => None,
        Settlement::Credit(journal) => {
            paying = invoices::paid_by_topup(context.connection, &topup.id)?;
            let description = paying
                .as_ref()
                .map(|invoice| card_description(invoice.number))
                .unwrap_or_else(|| credit_description(&topup));
            Some(post(context, &topup.account, &journal, description, &topup.id)?.id)
        }
    };
    context
        .connection
        .prepare_cached(
            "UPDATE topups SET status = ?2, payment_reference = ?3, charge_reference = ?4, card_brand = ?5, \
             card_last4 = ?6, failure_code = ?7, failure_message = ?8, \
             credited_transaction_id = COALESCE(credited_transaction_id, ?9), updated_at = ?10, succeeded_at = ?11 \
             WHERE id = ?1",
        )?
        .execute(params![
            topup.id,
            topup.status.code(),
            topup.payment_reference,
            topup.charge_reference,
            topup.card_brand,
            topup.card_last4,
            topup.failure_code,
            topup.failure_message,
            credited,
            to_unix_micros(context.now),
            topup.succeeded_at.map(to_unix_micros),
        ])?;
    if let (Some(invoice), Some(transaction)) = (&paying, &credited) {
        invoices::pay_by_card(context, invoice, &topup.id, transaction)?;
    }
    // An auto top-up's outcome resolves its rule, in the same transaction.
    recharge::after_settle(context, &topup, outcome)?;
    let settled = load_topup(context.connection, topup_id)?;
    if let Some(event) = topup_event(previous, &settled) {
        events::insert_events(context, &[event])?;
    }
    Ok(settled)
}

// ---------------------------------------------------------------------------
// Refunds

const REFUND_COLUMNS: &str = "r.id, r.topup_id, r.account_id, r.amount_micros, r.state, r.processor_refund_id, \
     r.reason, r.idempotency_key, r.taken_transaction_id, j.available_after_micros, j.held_after_micros, \
     r.created_at";

fn load_refund(connection: &Connection, refund_id: &str) -> StoreResult<RefundRecord> {
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM topup_refunds r JOIN journal_transactions j \
             ON j.id = r.taken_transaction_id WHERE r.id = ?1"
        ))?
        .query_row(params![refund_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, Option<String>>(7)?,
                row.get::<_, String>(8)?,
                row.get::<_, i64>(9)?,
                row.get::<_, i64>(10)?,
                row.get::<_, i64>(11)?,
            ))
        })
        .optional()?
        .ok_or_else(|| not_found("refund", refund_id))?;
    Ok(RefundRecord {
        id: raw.0,
        topup_id: raw.1,
        account: rows::account_id(&raw.2)?,
        amount: Micros::new(raw.3),
        state: RefundState::parse(&raw.4).ok_or_else(|| corrupt("refund state", &raw.4))?,
        processor_refund: raw.5,
        reason: raw.6,
        idempotency_key: raw.7,
        taken_transaction: raw.8,
        balances_after: Balances {
            available: Micros::new(raw.9),
            held: Micros::new(raw.10),
        },
        created_at: from_unix_micros(raw.11),
    })
}

struct NewRefund<'a> {
    amount: Micros,
    state: RefundState,
    processor_refund: Option<&'a str>,
    reason: &'a str,
    idempotency: Option<(&'a str, String)>,
}

fn insert_refund(
    context: &WriteContext<'_>,
    topup: &TopupRecord,
    refund: NewRefund<'_>,
) -> StoreResult<RefundRecord> {
    let id = new_id("ref");
    let journal = JournalTransaction::clawback(TransactionKind::Refund, &topup.account, refund.amount);
    let line = post(
        context,
        &topup.account,
        &journal,
        refund_description(refund.reason),
        &topup.id,
    )?;
    let (key, fingerprint) = match &refund.idempotency {
        Some((key, fingerprint)) => (Some(*key), Some(fingerprint.as_str())),
        None => (None, None),
    };
    let now = to_unix_micros(context.now);
    context
        .connection
        .prepare_cached(
            "INSERT INTO topup_refunds (id, topup_id, account_id, amount_micros, state, processor_refund_id, \
             reason, idempotency_key, request_fingerprint, taken_transaction_id, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        )?
        .execute(params![
            id,
            topup.id,
            topup.account.as_str(),
            refund.amount.get(),
            refund.state.code(),
            refund.processor_refund,
            refund.reason,
            key,
            fingerprint,
            line.id,
            now,
        ])?;
    context
        .connection
        .prepare_cached(
            "UPDATE topups SET refunded_micros = refunded_micros + ?2, updated_at = ?3 WHERE id = ?1",
        )?
        .execute(params![topup.id, refund.amount.get(), now])?;
    load_refund(context.connection, &id)
}

pub fn begin_refund(
    context: &WriteContext<'_>,
    request: &RefundRequest,
) -> StoreResult<Idempotent<RefundRecord>> {
    let fingerprint = request.fingerprint();
    let existing: Option<(String, Option<String>)> = context
        .connection
        .prepare_cached(
            "SELECT id, request_fingerprint FROM topup_refunds WHERE topup_id = ?1 AND idempotency_key = ?2",
        )?
        .query_row(
            params![request.topup_id, request.idempotency_key.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some((id, stored)) = existing {
        check_replay(stored.as_deref(), &fingerprint, &request.idempotency_key)?;
        return Ok(Idempotent {
            value: load_refund(context.connection, &id)?,
            replayed: true,
        });
    }
    let topup = load_topup(context.connection, &request.topup_id)?;
    let amount = refund_amount(&topup, request.amount)?;
    let refund = insert_refund(
        context,
        &topup,
        NewRefund {
            amount,
            state: RefundState::Pending,
            processor_refund: None,
            reason: &request.reason,
            idempotency: Some((request.idempotency_key.as_str(), fingerprint)),
        },
    )?;
    let (before, after) = refund_created_audit(&topup, amount, &request.reason, &refund.id);
    ops::audit(
        context,
        &request.actor,
        "refund.created",
        &topup.account,
        before,
        after,
    )?;
    Ok(Idempotent {
        value: refund,
        replayed: false,
    })
}

pub fn finish_refund(
    context: &WriteContext<'_>,
    refund_id: &str,
    outcome: &Result<String, String>,
) -> StoreResult<RefundRecord> {
    let refund = load_refund(context.connection, refund_id)?;
    if refund.state != RefundState::Pending {
        return Ok(refund);
    }
    let now = to_unix_micros(context.now);
    match outcome {
        Ok(processor_refund) => {
            let other: Option<String> = context
                .connection
                .prepare_cached("SELECT id FROM topup_refunds WHERE processor_refund_id = ?1 AND id <> ?2")?
                .query_row(params![processor_refund, refund_id], |row| row.get(0))
                .optional()?;
            if let Some(other) = other {
                return Err(StoreError::Conflict(format!(
                    "processor refund {processor_refund} belongs to refund {other}"
                )));
            }
            context
                .connection
                .prepare_cached(
                    "UPDATE topup_refunds SET state = 'succeeded', processor_refund_id = ?2, updated_at = ?3 WHERE id = ?1",
                )?
                .execute(params![refund_id, processor_refund, now])?;
        }
        Err(reason) => {
            let journal =
                JournalTransaction::give_back(TransactionKind::Refund, &refund.account, refund.amount);
            let line = post(
                context,
                &refund.account,
                &journal,
                refund_failed_description(reason),
                &refund.topup_id,
            )?;
            context
                .connection
                .prepare_cached(
                    "UPDATE topup_refunds SET state = 'failed', returned_transaction_id = ?2, updated_at = ?3 WHERE id = ?1",
                )?
                .execute(params![refund_id, line.id, now])?;
            context
                .connection
                .prepare_cached(
                    "UPDATE topups SET refunded_micros = refunded_micros - ?2, updated_at = ?3 WHERE id = ?1",
                )?
                .execute(params![refund.topup_id, refund.amount.get(), now])?;
            // While this refund was pending the store counted it as refunded, so a
            // processor total heard meanwhile may have hidden a dashboard refund: with this
            // one refused, whatever that total says beyond the store's is that refund.
            let topup = load_topup(context.connection, &refund.topup_id)?;
            let heard = processor_refunded(context.connection, &topup.id)?;
            if let Some(amount) = unrecorded_refund(&topup, heard) {
                record_dashboard_refund(context, &topup, amount)?;
            }
        }
    }
    load_refund(context.connection, refund_id)
}

/// The largest refunded total the processor reported for the top-up's payment.
fn processor_refunded(connection: &Connection, topup_id: &str) -> StoreResult<Micros> {
    let total: i64 = connection
        .prepare_cached("SELECT processor_refunded_micros FROM topups WHERE id = ?1")?
        .query_row(params![topup_id], |row| row.get(0))?;
    Ok(Micros::new(total))
}

/// Records a refund the store learnt of from the processor's totals (one made in its
/// dashboard): the money leaves the balance, and the refund is final.
fn record_dashboard_refund(
    context: &WriteContext<'_>,
    topup: &TopupRecord,
    amount: Micros,
) -> StoreResult<RefundRecord> {
    let refund = insert_refund(
        context,
        topup,
        NewRefund {
            amount,
            state: RefundState::Succeeded,
            processor_refund: None,
            reason: DASHBOARD_REFUND_REASON,
            idempotency: None,
        },
    )?;
    let (before, after) = refund_reconciled_audit(topup, amount, &refund.id);
    ops::audit(
        context,
        &Actor::System,
        "refund.reconciled",
        &topup.account,
        before,
        after,
    )?;
    Ok(refund)
}

pub fn reconcile_refunded(
    context: &WriteContext<'_>,
    reference: &TopupReference,
    total_refunded: Micros,
) -> StoreResult<Option<RefundRecord>> {
    let Some(topup) = find_topup(context.connection, reference)? else {
        return Ok(None);
    };
    // Kept even when nothing new is recorded now: a refund of ours that is pending is
    // counted in the store's total, and if it is refused the processor's total is what
    // tells what else was refunded (see `finish_refund`). The largest total wins, since
    // totals only grow and their news may arrive out of order.
    context
        .connection
        .prepare_cached(
            "UPDATE topups SET processor_refunded_micros = MAX(processor_refunded_micros, ?2) WHERE id = ?1",
        )?
        .execute(params![topup.id, total_refunded.get().max(0)])?;
    let Some(amount) = unrecorded_refund(&topup, total_refunded) else {
        return Ok(None);
    };
    record_dashboard_refund(context, &topup, amount).map(Some)
}

// ---------------------------------------------------------------------------
// Disputes

pub fn apply_dispute(context: &WriteContext<'_>, news: &DisputeNews) -> StoreResult<Option<DisputeApplied>> {
    let mut topup = None;
    if let Some(payment) = &news.payment_reference {
        topup = find_topup(context.connection, &TopupReference::Payment(payment.clone()))?;
    }
    if topup.is_none() {
        topup = find_topup(
            context.connection,
            &TopupReference::Charge(news.charge_reference.clone()),
        )?;
    }
    let Some(topup) = topup else {
        return Ok(None);
    };
    let recorded: Option<(String, String, i64)> = context
        .connection
        .prepare_cached("SELECT topup_id, status, amount_micros FROM topup_disputes WHERE id = ?1")?
        .query_row(params![news.dispute], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let recorded = recorded
        .map(|(topup_id, code, amount)| {
            Ok::<_, StoreError>(RecordedDispute {
                topup_id,
                status: DisputeStatus::parse(&code).ok_or_else(|| corrupt("dispute status", &code))?,
                amount: Micros::new(amount),
            })
        })
        .transpose()?;
    let decision = decide_dispute(&topup, recorded.as_ref(), news)?;
    if decision.step == DisputeMove::Nothing {
        return Ok(Some(DisputeApplied { topup, line: None }));
    }
    let line = match &decision.journal {
        Some((journal, description)) => Some(post(
            context,
            &topup.account,
            journal,
            description.clone(),
            &topup.id,
        )?),
        None => None,
    };
    let now = to_unix_micros(context.now);
    let line_id = line.as_ref().map(|line| line.id.as_str());
    let (taken, returned) = match decision.step {
        DisputeMove::TakeBack => (line_id, None),
        DisputeMove::Reinstate => (None, line_id),
        DisputeMove::Nothing | DisputeMove::StatusOnly => (None, None),
    };
    // The amount stays the one first heard of: it is what a win gives back.
    context
        .connection
        .prepare_cached(
            "INSERT INTO topup_disputes (id, topup_id, account_id, amount_micros, status, taken_transaction_id, \
             returned_transaction_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             taken_transaction_id = COALESCE(topup_disputes.taken_transaction_id, excluded.taken_transaction_id), \
             returned_transaction_id = COALESCE(topup_disputes.returned_transaction_id, excluded.returned_transaction_id), \
             updated_at = excluded.updated_at",
        )?
        .execute(params![
            news.dispute,
            topup.id,
            topup.account.as_str(),
            news.amount.get(),
            news.status.code(),
            taken,
            returned,
            now,
        ])?;
    context
        .connection
        .prepare_cached("UPDATE topups SET disputed_micros = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![topup.id, decision.disputed_after.get(), now])?;
    Ok(Some(DisputeApplied {
        topup: load_topup(context.connection, &topup.id)?,
        line,
    }))
}

pub fn record_processor_event(
    context: &WriteContext<'_>,
    event_id: &str,
    event_type: &str,
) -> StoreResult<bool> {
    let inserted = context
        .connection
        .prepare_cached(
            "INSERT INTO processor_events (event_id, event_type, received_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?
        .execute(params![event_id, event_type, to_unix_micros(context.now)])?;
    Ok(inserted == 1)
}
