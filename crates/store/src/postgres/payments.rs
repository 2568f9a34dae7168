//! Card payments on PostgreSQL: the payment profile, top-ups, refunds, disputes
//! and processed webhook events; the twin of `sqlite/payments.rs`, with the
//! same decisions (from `crate::payments`), records and errors.
//!
//! Every write takes its account's row lock first. An operation named by a
//! top-up, a refund or a setup session reads which account that is, locks
//! the account, and reads the row again: the first read may already be stale,
//! the second cannot be, because every writer of these rows holds the same
//! lock. The unique constraints (credited transaction, processor ids,
//! idempotency keys) are the backstop; a violation retries the whole
//! transaction, which then sees the winner's row.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::payments::DisputeMove;
use tollgate_core::{
    AccountId, Actor, Balances, DisputeStatus, JournalTransaction, Micros, NewTopup, Timestamp, TopupOutcome,
    TopupSource, TopupStatus, TransactionKind,
};

use super::PgResult;
use super::events;
use super::ops::{self, Context, JournalWrite};
use super::rows::{self, StoredAccount};
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
    CardRecord, CardSetupResult, DisputeApplied, DisputeNews, Idempotent, MAX_RECOVERY_BATCH, Page,
    PageRequest, PaymentProfile, RefundRecord, RefundRequest, RefundState, StoreError, TopupRecord,
    TopupReference, TransactionLine, new_id,
};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(format!("stored {what} `{value}` is not valid"))
}

/// Takes the account's row lock; an account that does not exist is not found.
async fn lock<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<()> {
    if rows::lock_account(client, account.as_str()).await? {
        Ok(())
    } else {
        Err(not_found("account", account).into())
    }
}

/// For reads: an unknown account is an error, not an empty profile or list.
async fn ensure_account<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<()> {
    if client
        .query_opt_cached("SELECT 1 FROM accounts WHERE id = $1", &[&account.as_str()])
        .await?
        .is_some()
    {
        Ok(())
    } else {
        Err(not_found("account", account).into())
    }
}

// ---------------------------------------------------------------------------
// Payment profile and cards

fn card_from_row(row: &Row, first: usize) -> PgResult<Option<CardRecord>> {
    let id: Option<String> = row.try_get(first)?;
    let Some(processor_id) = id else {
        return Ok(None);
    };
    let month: i64 = row.try_get(first + 3)?;
    let year: i64 = row.try_get(first + 4)?;
    Ok(Some(CardRecord {
        processor_id,
        brand: row.try_get(first + 1)?,
        last4: row.try_get(first + 2)?,
        // The table's CHECK keeps the month in 1–12; 0 marks a value SQLite would show too.
        exp_month: u8::try_from(month).unwrap_or(0),
        exp_year: u16::try_from(year).unwrap_or(0),
        added_at: from_unix_micros(row.try_get(first + 5)?),
    }))
}

/// The account's profile; an account that never paid has an empty one.
pub async fn payment_profile<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
) -> PgResult<PaymentProfile> {
    ensure_account(client, account).await?;
    let row = client
        .query_opt_cached(
            "SELECT processor_customer_id, card_id, card_brand, card_last4, card_exp_month, card_exp_year, \
             card_added_at FROM payment_profiles WHERE account_id = $1",
            &[&account.as_str()],
        )
        .await?;
    match row {
        None => Ok(PaymentProfile::default()),
        Some(row) => Ok(PaymentProfile {
            processor_customer: row.try_get(0)?,
            card: card_from_row(&row, 1)?,
        }),
    }
}

/// Creates the account's (empty) profile row if it has none. The caller holds the lock.
async fn ensure_profile<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
) -> PgResult<()> {
    client
        .execute_cached(
            "INSERT INTO payment_profiles (account_id, updated_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&account.as_str(), &to_unix_micros(context.now)],
        )
        .await?;
    Ok(())
}

/// Records the account's processor customer unless it has one; returns the one it has.
pub async fn set_processor_customer<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    customer: &str,
) -> PgResult<String> {
    lock(client, account).await?;
    ensure_profile(client, context, account).await?;
    let owner: Option<String> = client
        .query_opt_cached(
            "SELECT account_id FROM payment_profiles WHERE processor_customer_id = $1",
            &[&customer],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    if owner.is_some_and(|owner| owner != account.as_str()) {
        return Err(customer_taken(customer).into());
    }
    // Under the lock the first creator's customer is visible here: a second one keeps it.
    client
        .execute_cached(
            "UPDATE payment_profiles SET processor_customer_id = $2, updated_at = $3 \
             WHERE account_id = $1 AND processor_customer_id IS NULL",
            &[&account.as_str(), &customer, &to_unix_micros(context.now)],
        )
        .await?;
    payment_profile(client, account)
        .await?
        .processor_customer
        .ok_or_else(|| StoreError::Database("processor customer was not stored".to_owned()).into())
}

/// Records a hosted card-setup session for the account (again for the same account is a no-op).
pub async fn record_card_setup<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    session: &str,
) -> PgResult<()> {
    lock(client, account).await?;
    let owner: Option<String> = client
        .query_opt_cached(
            "SELECT account_id FROM card_setups WHERE session_id = $1",
            &[&session],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    match owner {
        Some(owner) => Ok(check_setup_owner(session, &owner, account)?),
        None => {
            // Another account recording the same session at once is held off by the primary
            // key; the retry then finds its row and refuses.
            client
                .execute_cached(
                    "INSERT INTO card_setups (session_id, account_id, created_at) VALUES ($1, $2, $3)",
                    &[&session, &account.as_str(), &to_unix_micros(context.now)],
                )
                .await?;
            Ok(())
        }
    }
}

/// Sets (or clears) the account's card and audits the change; returns the card it had.
/// The caller holds the lock.
async fn write_card<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    card: Option<&CardRecord>,
    actor: &Actor,
) -> PgResult<Option<CardRecord>> {
    ensure_profile(client, context, account).await?;
    let previous = payment_profile(client, account).await?.card;
    client
        .execute_cached(
            "UPDATE payment_profiles SET card_id = $2, card_brand = $3, card_last4 = $4, card_exp_month = $5, \
             card_exp_year = $6, card_added_at = $7, updated_at = $8 WHERE account_id = $1",
            &[
                &account.as_str(),
                &card.map(|card| card.processor_id.as_str()),
                &card.map(|card| card.brand.as_str()),
                &card.map(|card| card.last4.as_str()),
                &card.map(|card| i64::from(card.exp_month)),
                &card.map(|card| i64::from(card.exp_year)),
                &card.map(|card| to_unix_micros(card.added_at)),
                &to_unix_micros(context.now),
            ],
        )
        .await?;
    let (action, before, after) = card_change_audit(previous.as_ref(), card);
    ops::audit(client, context, actor, action, account, before, after).await?;
    if card_changed(previous.as_ref(), card) {
        events::insert_events(client, context, &[card_event(account, card)]).await?;
    }
    Ok(previous)
}

/// Confirms a setup session once: its card becomes the account's, the old one is returned.
pub async fn complete_card_setup<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    session: &str,
    card: &CardRecord,
    actor: &Actor,
) -> PgResult<CardSetupResult> {
    let setup_account = |row: Option<Row>| -> PgResult<(AccountId, Option<String>)> {
        let row = row.ok_or_else(|| not_found("card setup", session))?;
        let account: String = row.try_get(0)?;
        Ok((rows::account_id(&account)?, row.try_get(1)?))
    };
    const SETUP: &str = "SELECT account_id, card_id FROM card_setups WHERE session_id = $1";
    let (account, _) = setup_account(client.query_opt_cached(SETUP, &[&session]).await?)?;
    lock(client, &account).await?;
    // Read again under the lock: a concurrent confirmation of this session has committed by now.
    let (account, confirmed) = setup_account(client.query_opt_cached(SETUP, &[&session]).await?)?;
    if confirmed.is_some() {
        return Ok(CardSetupResult {
            applied: false,
            replaced: None,
            card: payment_profile(client, &account).await?.card,
        });
    }
    let completed = client
        .execute_cached(
            "UPDATE card_setups SET card_id = $2, completed_at = $3 WHERE session_id = $1 AND card_id IS NULL",
            &[&session, &card.processor_id, &to_unix_micros(context.now)],
        )
        .await?;
    if completed != 1 {
        // Unreachable under the row lock; refusing keeps the card as it is.
        return Err(StoreError::Database(format!("card setup {session} was completed concurrently")).into());
    }
    adopt_locked(client, context, &account, card, actor).await
}

/// Makes `card` the account's card unless it is already. The caller holds the lock.
async fn adopt_locked<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    card: &CardRecord,
    actor: &Actor,
) -> PgResult<CardSetupResult> {
    let current = payment_profile(client, account).await?.card;
    if is_current_card(current.as_ref(), card) {
        return Ok(CardSetupResult {
            applied: false,
            replaced: None,
            card: current,
        });
    }
    let replaced = write_card(client, context, account, Some(card), actor).await?;
    // A new card may succeed where the old one failed: Auto Top-Up arms again.
    recharge::after_new_card(client, context, account).await?;
    Ok(CardSetupResult {
        applied: true,
        replaced,
        card: Some(card.clone()),
    })
}

/// Makes a card confirmed on a hosted payment page the account's card, when it is new.
pub async fn adopt_card<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    card: &CardRecord,
    actor: &Actor,
) -> PgResult<CardSetupResult> {
    lock(client, account).await?;
    adopt_locked(client, context, account, card, actor).await
}

/// Removes the account's card, if it has one, and returns it.
pub async fn remove_card<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    actor: &Actor,
) -> PgResult<Option<CardRecord>> {
    lock(client, account).await?;
    if payment_profile(client, account).await?.card.is_none() {
        return Ok(None);
    }
    let removed = write_card(client, context, account, None, actor).await?;
    // Without a card Auto Top-Up cannot charge: it is switched off with the card.
    recharge::after_card_gone(client, context, account, actor).await?;
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

pub(super) fn topup_row(row: &Row) -> PgResult<TopupRecord> {
    let id: String = row.try_get(0)?;
    let account: String = row.try_get(1)?;
    let source: String = row.try_get(3)?;
    let status: String = row.try_get(4)?;
    let available_after: Option<i64> = row.try_get(14)?;
    let held_after: Option<i64> = row.try_get(15)?;
    let recharge_sequence: Option<i64> = row.try_get(21)?;
    let (Ok(account), Some(source), Some(status), Ok(recharge_sequence)) = (
        rows::account_id(&account),
        TopupSource::parse(&source),
        TopupStatus::parse(&status),
        recharge_sequence.map(u64::try_from).transpose(),
    ) else {
        return Err(corrupt("top-up", &id).into());
    };
    Ok(TopupRecord {
        id,
        account,
        amount: Micros::new(row.try_get(2)?),
        source,
        status,
        idempotency_key: row.try_get(5)?,
        checkout_session: row.try_get(6)?,
        payment_reference: row.try_get(7)?,
        charge_reference: row.try_get(8)?,
        card_brand: row.try_get(9)?,
        card_last4: row.try_get(10)?,
        failure_code: row.try_get(11)?,
        failure_message: row.try_get(12)?,
        credited_transaction: row.try_get(13)?,
        balances_after_credit: available_after.zip(held_after).map(|(available, held)| Balances {
            available: Micros::new(available),
            held: Micros::new(held),
        }),
        refunded: Micros::new(row.try_get(16)?),
        disputed: Micros::new(row.try_get(17)?),
        created_at: from_unix_micros(row.try_get(18)?),
        updated_at: from_unix_micros(row.try_get(19)?),
        succeeded_at: row.try_get::<_, Option<i64>>(20)?.map(from_unix_micros),
        recharge_sequence,
    })
}

async fn load_topup_where<C: GenericClient + Sync>(
    client: &C,
    condition: &str,
    value: &str,
) -> PgResult<Option<TopupRecord>> {
    client
        .query_opt_cached(
            // A charge may (in principle) name several top-ups: always the oldest one.
            &format!("SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} WHERE {condition} ORDER BY t.id LIMIT 1"),
            &[&value],
        )
        .await?
        .as_ref()
        .map(topup_row)
        .transpose()
}

/// One top-up by id.
pub async fn load_topup<C: GenericClient + Sync>(client: &C, topup_id: &str) -> PgResult<TopupRecord> {
    load_topup_where(client, "t.id = $1", topup_id)
        .await?
        .ok_or_else(|| not_found("top-up", topup_id).into())
}

/// The top-up a processor id belongs to, if any.
pub async fn find_topup<C: GenericClient + Sync>(
    client: &C,
    reference: &TopupReference,
) -> PgResult<Option<TopupRecord>> {
    match reference {
        TopupReference::CheckoutSession(id) => {
            load_topup_where(client, "t.checkout_session_id = $1", id).await
        }
        TopupReference::Payment(id) => load_topup_where(client, "t.payment_reference = $1", id).await,
        TopupReference::Charge(id) => load_topup_where(client, "t.charge_reference = $1", id).await,
    }
}

/// An account's top-ups, newest first, after the cursor.
pub async fn list_topups<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    page: &PageRequest,
) -> PgResult<Page<TopupRecord>> {
    ensure_account(client, account).await?;
    // Ids are time-ordered (uuid v7) and compare bytewise, so id order is creation order.
    if let Some(cursor) = &page.starting_after
        && client
            .query_opt_cached(
                "SELECT 1 FROM topups WHERE id = $1 AND account_id = $2",
                &[cursor, &account.as_str()],
            )
            .await?
            .is_none()
    {
        return Err(StoreError::InvalidCursor(cursor.clone()).into());
    }
    let rows = client
        .query_cached(
            &format!(
                "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} \
                 WHERE t.account_id = $1 AND ($2::TEXT IS NULL OR t.id < $2) ORDER BY t.id DESC LIMIT $3"
            ),
            &[
                &account.as_str(),
                &page.starting_after,
                &(i64::from(page.limit) + 1),
            ],
        )
        .await?;
    let mut data = rows.iter().map(topup_row).collect::<PgResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// Open top-ups created before `created_before`, oldest first, at most one recovery batch.
pub async fn open_topups<C: GenericClient + Sync>(
    client: &C,
    created_before: Timestamp,
    limit: usize,
) -> PgResult<Vec<TopupRecord>> {
    let limit = i64::try_from(limit.min(MAX_RECOVERY_BATCH)).unwrap_or(0);
    client
        .query_cached(
            &format!(
                "SELECT {TOPUP_COLUMNS} FROM {TOPUP_FROM} \
                 WHERE t.status IN ('pending', 'requires_payment_method', 'requires_action') AND t.created_at < $1 \
                 ORDER BY t.created_at, t.id LIMIT $2"
            ),
            &[&to_unix_micros(created_before), &limit],
        )
        .await?
        .iter()
        .map(topup_row)
        .collect()
}

/// Records a new top-up once per idempotency key.
pub async fn create_topup<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    topup: &NewTopup,
) -> PgResult<Idempotent<TopupRecord>> {
    crate::recharge::refuse_manual_auto_topup(topup.source)?;
    // The lock first: a concurrent request with the same key has committed (or not
    // started) by the time the key is looked up.
    lock(client, &topup.account).await?;
    let fingerprint = topup.fingerprint();
    let existing = client
        .query_opt_cached(
            "SELECT id, request_fingerprint FROM topups WHERE account_id = $1 AND idempotency_key = $2",
            &[&topup.account.as_str(), &topup.idempotency_key.as_str()],
        )
        .await?;
    if let Some(row) = existing {
        let id: String = row.try_get(0)?;
        let stored: String = row.try_get(1)?;
        check_replay(Some(&stored), &fingerprint, &topup.idempotency_key)?;
        return Ok(Idempotent {
            value: load_topup(client, &id).await?,
            replayed: true,
        });
    }
    let id = new_id("top");
    let now = to_unix_micros(context.now);
    client
        .execute_cached(
            "INSERT INTO topups (id, account_id, amount_micros, source, status, idempotency_key, \
             request_fingerprint, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            &[
                &id,
                &topup.account.as_str(),
                &topup.amount.get().get(),
                &topup.source.code(),
                &initial_status(topup.source).code(),
                &topup.idempotency_key.as_str(),
                &fingerprint,
                &now,
            ],
        )
        .await?;
    Ok(Idempotent {
        value: load_topup(client, &id).await?,
        replayed: false,
    })
}

/// Loads a top-up and locks its account, then loads it again: only the second read is
/// sure to see every write committed before this transaction got the lock.
async fn lock_topup<C: GenericClient + Sync>(client: &C, topup_id: &str) -> PgResult<TopupRecord> {
    let topup = load_topup(client, topup_id).await?;
    lock(client, &topup.account).await?;
    load_topup(client, topup_id).await
}

/// Refuses a processor id that another top-up holds already (the unique constraint is the backstop).
async fn ensure_reference_free<C: GenericClient + Sync>(
    client: &C,
    column: &str,
    what: &str,
    reference: &str,
    topup_id: &str,
) -> PgResult<()> {
    let other = client
        .query_opt_cached(
            &format!("SELECT id FROM topups WHERE {column} = $1 AND id <> $2 LIMIT 1"),
            &[&reference, &topup_id],
        )
        .await?;
    match other {
        Some(row) => Err(reference_taken(what, reference, &row.try_get::<_, String>(0)?).into()),
        None => Ok(()),
    }
}

/// Records the processor's ids for a top-up; each is set once.
pub async fn link_topup<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    topup_id: &str,
    checkout_session: Option<&str>,
    payment_reference: Option<&str>,
) -> PgResult<TopupRecord> {
    let topup = lock_topup(client, topup_id).await?;
    check_link(&topup, checkout_session, payment_reference)?;
    if let Some(session) = checkout_session {
        ensure_reference_free(client, "checkout_session_id", "hosted page", session, topup_id).await?;
    }
    if let Some(payment) = payment_reference {
        ensure_reference_free(client, "payment_reference", "payment", payment, topup_id).await?;
    }
    client
        .execute_cached(
            "UPDATE topups SET checkout_session_id = COALESCE(checkout_session_id, $2), \
             payment_reference = COALESCE(payment_reference, $3), updated_at = $4 WHERE id = $1",
            &[
                &topup_id,
                &checkout_session,
                &payment_reference,
                &to_unix_micros(context.now),
            ],
        )
        .await?;
    load_topup(client, topup_id).await
}

/// Saves balances and the attention flag in the order the floor constraint allows
/// (it is checked after each statement): flag before going below the floor, unflag after
/// coming back.
async fn save_flagged<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &StoredAccount,
) -> PgResult<()> {
    let id = account.record.id.as_str();
    let before: Option<i64> = client
        .query_one_cached("SELECT attention_since FROM accounts WHERE id = $1", &[&id])
        .await?
        .try_get(0)?;
    let after = attention_after(
        account.record.mode,
        account.record.balances,
        before.map(from_unix_micros),
        context.now,
    );
    const FLAG: &str = "UPDATE accounts SET attention_since = $2 WHERE id = $1";
    if after.is_some() {
        client
            .execute_cached(FLAG, &[&id, &after.map(to_unix_micros)])
            .await?;
        rows::save_account(client, account).await
    } else {
        rows::save_account(client, account).await?;
        client.execute_cached(FLAG, &[&id, &Option::<i64>::None]).await?;
        Ok(())
    }
}

/// Writes a payment journal line for the account and saves it. The caller holds the lock.
async fn post<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    journal: &JournalTransaction,
    description: String,
    reference: &str,
) -> PgResult<TransactionLine> {
    let mut stored = ops::load_for_write(client, context, account).await?;
    let line = ops::append(
        client,
        context,
        &mut stored,
        journal,
        JournalWrite {
            description,
            reference: Some(reference),
            idempotency: None,
        },
    )
    .await?;
    save_flagged(client, context, &stored).await?;
    Ok(line)
}

/// Applies the processor's news to a top-up; a success credits the balance exactly once.
pub async fn settle_topup<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    topup_id: &str,
    outcome: &TopupOutcome,
) -> PgResult<TopupRecord> {
    // Under the lock, a success reported twice at once finds the first one applied and
    // changes nothing; `credited_transaction_id` being unique is the backstop.
    let mut topup = lock_topup(client, topup_id).await?;
    let linked = topup.payment_reference.clone();
    let previous = topup.status;
    let settlement = settle(&mut topup, outcome, context.now)?;
    if let Some(payment) = &topup.payment_reference
        && linked.as_ref() != Some(payment)
    {
        ensure_reference_free(client, "payment_reference", "payment", payment, topup_id).await?;
    }
    // A card payment of an invoice says so in the journal, and pays it below.
    let mut paying = None;
    let credited = match settlement {
        Settlement::Unchanged => return Ok(topup),
        Settlement::Status => None,
        Settlement::Credit(journal) => {
            paying = invoices::paid_by_topup(client, &topup.id).await?;
            let description = paying
                .as_ref()
                .map(|invoice| card_description(invoice.number))
                .unwrap_or_else(|| credit_description(&topup));
            Some(
                post(client, context, &topup.account, &journal, description, &topup.id)
                    .await?
                    .id,
            )
        }
    };
    let updated = client
        .execute_cached(
            "UPDATE topups SET status = $2, payment_reference = $3, charge_reference = $4, card_brand = $5, \
             card_last4 = $6, failure_code = $7, failure_message = $8, \
             credited_transaction_id = COALESCE(credited_transaction_id, $9), updated_at = $10, succeeded_at = $11 \
             WHERE id = $1 AND status = $12",
            &[
                &topup.id,
                &topup.status.code(),
                &topup.payment_reference,
                &topup.charge_reference,
                &topup.card_brand,
                &topup.card_last4,
                &topup.failure_code,
                &topup.failure_message,
                &credited,
                &to_unix_micros(context.now),
                &topup.succeeded_at.map(to_unix_micros),
                &previous.code(),
            ],
        )
        .await?;
    if updated != 1 {
        // Unreachable under the row lock; refusing keeps the money where it is.
        return Err(StoreError::Database(format!("top-up {topup_id} was settled concurrently")).into());
    }
    if let (Some(invoice), Some(transaction)) = (&paying, &credited) {
        invoices::pay_by_card(client, context, invoice, &topup.id, transaction).await?;
    }
    // An auto top-up's outcome resolves its rule, in the same transaction.
    recharge::after_settle(client, context, &topup, outcome).await?;
    let settled = load_topup(client, topup_id).await?;
    if let Some(event) = topup_event(previous, &settled) {
        events::insert_events(client, context, &[event]).await?;
    }
    Ok(settled)
}

// ---------------------------------------------------------------------------
// Refunds

const REFUND_COLUMNS: &str = "r.id, r.topup_id, r.account_id, r.amount_micros, r.state, r.processor_refund_id, \
     r.reason, r.idempotency_key, r.taken_transaction_id, j.available_after_micros, j.held_after_micros, \
     r.created_at";

async fn load_refund<C: GenericClient + Sync>(client: &C, refund_id: &str) -> PgResult<RefundRecord> {
    let row = client
        .query_opt_cached(
            &format!(
                "SELECT {REFUND_COLUMNS} FROM topup_refunds r JOIN journal_transactions j \
                 ON j.id = r.taken_transaction_id WHERE r.id = $1"
            ),
            &[&refund_id],
        )
        .await?
        .ok_or_else(|| not_found("refund", refund_id))?;
    let account: String = row.try_get(2)?;
    let state: String = row.try_get(4)?;
    Ok(RefundRecord {
        id: row.try_get(0)?,
        topup_id: row.try_get(1)?,
        account: rows::account_id(&account)?,
        amount: Micros::new(row.try_get(3)?),
        state: RefundState::parse(&state).ok_or_else(|| corrupt("refund state", &state))?,
        processor_refund: row.try_get(5)?,
        reason: row.try_get(6)?,
        idempotency_key: row.try_get(7)?,
        taken_transaction: row.try_get(8)?,
        balances_after: Balances {
            available: Micros::new(row.try_get(9)?),
            held: Micros::new(row.try_get(10)?),
        },
        created_at: from_unix_micros(row.try_get(11)?),
    })
}

struct NewRefund<'a> {
    amount: Micros,
    state: RefundState,
    processor_refund: Option<&'a str>,
    reason: &'a str,
    idempotency: Option<(&'a str, String)>,
}

/// Takes a refund back from the balance and records it. The caller holds the lock and
/// checked the amount against the top-up as it is under the lock.
async fn insert_refund<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    topup: &TopupRecord,
    refund: NewRefund<'_>,
) -> PgResult<RefundRecord> {
    let id = new_id("ref");
    let journal = JournalTransaction::clawback(TransactionKind::Refund, &topup.account, refund.amount);
    let line = post(
        client,
        context,
        &topup.account,
        &journal,
        refund_description(refund.reason),
        &topup.id,
    )
    .await?;
    let (key, fingerprint) = match &refund.idempotency {
        Some((key, fingerprint)) => (Some(*key), Some(fingerprint.as_str())),
        None => (None, None),
    };
    let now = to_unix_micros(context.now);
    client
        .execute_cached(
            "INSERT INTO topup_refunds (id, topup_id, account_id, amount_micros, state, processor_refund_id, \
             reason, idempotency_key, request_fingerprint, taken_transaction_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
            &[
                &id,
                &topup.id,
                &topup.account.as_str(),
                &refund.amount.get(),
                &refund.state.code(),
                &refund.processor_refund,
                &refund.reason,
                &key,
                &fingerprint,
                &line.id,
                &now,
            ],
        )
        .await?;
    client
        .execute_cached(
            "UPDATE topups SET refunded_micros = refunded_micros + $2, updated_at = $3 WHERE id = $1",
            &[&topup.id, &refund.amount.get(), &now],
        )
        .await?;
    load_refund(client, &id).await
}

/// Takes a refund back from the balance, pending the processor's answer, once per key.
pub async fn begin_refund<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    request: &RefundRequest,
) -> PgResult<Idempotent<RefundRecord>> {
    // Lock before the key and the refundable amount are checked: two refunds of one
    // top-up at once can never both take what only one of them may.
    let topup = lock_topup(client, &request.topup_id).await?;
    let fingerprint = request.fingerprint();
    let existing = client
        .query_opt_cached(
            "SELECT id, request_fingerprint FROM topup_refunds WHERE topup_id = $1 AND idempotency_key = $2",
            &[&request.topup_id, &request.idempotency_key.as_str()],
        )
        .await?;
    if let Some(row) = existing {
        let id: String = row.try_get(0)?;
        let stored: Option<String> = row.try_get(1)?;
        check_replay(stored.as_deref(), &fingerprint, &request.idempotency_key)?;
        return Ok(Idempotent {
            value: load_refund(client, &id).await?,
            replayed: true,
        });
    }
    let amount = refund_amount(&topup, request.amount)?;
    let refund = insert_refund(
        client,
        context,
        &topup,
        NewRefund {
            amount,
            state: RefundState::Pending,
            processor_refund: None,
            reason: &request.reason,
            idempotency: Some((request.idempotency_key.as_str(), fingerprint)),
        },
    )
    .await?;
    let (before, after) = refund_created_audit(&topup, amount, &request.reason, &refund.id);
    ops::audit(
        client,
        context,
        &request.actor,
        "refund.created",
        &topup.account,
        before,
        after,
    )
    .await?;
    Ok(Idempotent {
        value: refund,
        replayed: false,
    })
}

/// Applies the processor's answer to a pending refund; a refusal gives the money back.
pub async fn finish_refund<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    refund_id: &str,
    outcome: &Result<String, String>,
) -> PgResult<RefundRecord> {
    let refund = load_refund(client, refund_id).await?;
    lock(client, &refund.account).await?;
    // Read again under the lock: a concurrent answer has committed by now, and only the
    // first answer about a pending refund counts.
    let refund = load_refund(client, refund_id).await?;
    if refund.state != RefundState::Pending {
        return Ok(refund);
    }
    let now = to_unix_micros(context.now);
    match outcome {
        Ok(processor_refund) => {
            if let Some(other) = client
                .query_opt_cached(
                    "SELECT id FROM topup_refunds WHERE processor_refund_id = $1 AND id <> $2",
                    &[processor_refund, &refund_id],
                )
                .await?
            {
                return Err(StoreError::Conflict(format!(
                    "processor refund {processor_refund} belongs to refund {}",
                    other.try_get::<_, String>(0)?
                ))
                .into());
            }
            client
                .execute_cached(
                    "UPDATE topup_refunds SET state = 'succeeded', processor_refund_id = $2, updated_at = $3 \
                     WHERE id = $1",
                    &[&refund_id, processor_refund, &now],
                )
                .await?;
        }
        Err(reason) => {
            let journal =
                JournalTransaction::give_back(TransactionKind::Refund, &refund.account, refund.amount);
            let line = post(
                client,
                context,
                &refund.account,
                &journal,
                refund_failed_description(reason),
                &refund.topup_id,
            )
            .await?;
            client
                .execute_cached(
                    "UPDATE topup_refunds SET state = 'failed', returned_transaction_id = $2, updated_at = $3 \
                     WHERE id = $1",
                    &[&refund_id, &line.id, &now],
                )
                .await?;
            client
                .execute_cached(
                    "UPDATE topups SET refunded_micros = refunded_micros - $2, updated_at = $3 WHERE id = $1",
                    &[&refund.topup_id, &refund.amount.get(), &now],
                )
                .await?;
            // While this refund was pending the store counted it as refunded, so a
            // processor total heard meanwhile may have hidden a dashboard refund: with this
            // one refused, whatever that total says beyond the store's is that refund.
            let topup = load_topup(client, &refund.topup_id).await?;
            let heard = processor_refunded(client, &topup.id).await?;
            if let Some(amount) = unrecorded_refund(&topup, heard) {
                record_dashboard_refund(client, context, &topup, amount).await?;
            }
        }
    }
    load_refund(client, refund_id).await
}

/// The largest refunded total the processor reported for the top-up's payment.
async fn processor_refunded<C: GenericClient + Sync>(client: &C, topup_id: &str) -> PgResult<Micros> {
    let total: i64 = client
        .query_one_cached(
            "SELECT processor_refunded_micros FROM topups WHERE id = $1",
            &[&topup_id],
        )
        .await?
        .try_get(0)?;
    Ok(Micros::new(total))
}

/// Records a refund the store learnt of from the processor's totals (one made in its
/// dashboard): the money leaves the balance, and the refund is final. The caller holds
/// the lock.
async fn record_dashboard_refund<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    topup: &TopupRecord,
    amount: Micros,
) -> PgResult<RefundRecord> {
    let refund = insert_refund(
        client,
        context,
        topup,
        NewRefund {
            amount,
            state: RefundState::Succeeded,
            processor_refund: None,
            reason: DASHBOARD_REFUND_REASON,
            idempotency: None,
        },
    )
    .await?;
    let (before, after) = refund_reconciled_audit(topup, amount, &refund.id);
    ops::audit(
        client,
        context,
        &Actor::System,
        "refund.reconciled",
        &topup.account,
        before,
        after,
    )
    .await?;
    Ok(refund)
}

/// Records the refunds the processor knows of and the store does not (dashboard refunds).
pub async fn reconcile_refunded<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    reference: &TopupReference,
    total_refunded: Micros,
) -> PgResult<Option<RefundRecord>> {
    let Some(found) = find_topup(client, reference).await? else {
        return Ok(None);
    };
    // Two reports of one total at once: the second sees the first's refund and adds nothing.
    let topup = lock_topup(client, &found.id).await?;
    // Kept even when nothing new is recorded now: a refund of ours that is pending is
    // counted in the store's total, and if it is refused the processor's total is what
    // tells what else was refunded (see `finish_refund`). The largest total wins, since
    // totals only grow and their news may arrive out of order.
    client
        .execute_cached(
            "UPDATE topups SET processor_refunded_micros = GREATEST(processor_refunded_micros, $2) \
             WHERE id = $1",
            &[&topup.id, &total_refunded.get().max(0)],
        )
        .await?;
    let Some(amount) = unrecorded_refund(&topup, total_refunded) else {
        return Ok(None);
    };
    record_dashboard_refund(client, context, &topup, amount)
        .await
        .map(Some)
}

// ---------------------------------------------------------------------------
// Disputes

/// Applies dispute news to the disputed top-up; `None` when no top-up matches.
pub async fn apply_dispute<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    news: &DisputeNews,
) -> PgResult<Option<DisputeApplied>> {
    let mut found = None;
    if let Some(payment) = &news.payment_reference {
        found = find_topup(client, &TopupReference::Payment(payment.clone())).await?;
    }
    if found.is_none() {
        found = find_topup(client, &TopupReference::Charge(news.charge_reference.clone())).await?;
    }
    let Some(found) = found else {
        return Ok(None);
    };
    // Under the lock, the same news delivered twice at once moves money once.
    let topup = lock_topup(client, &found.id).await?;
    let recorded = client
        .query_opt_cached(
            "SELECT topup_id, status, amount_micros FROM topup_disputes WHERE id = $1",
            &[&news.dispute],
        )
        .await?
        .map(|row| {
            let code: String = row.try_get(1)?;
            PgResult::Ok(RecordedDispute {
                topup_id: row.try_get(0)?,
                status: DisputeStatus::parse(&code).ok_or_else(|| corrupt("dispute status", &code))?,
                amount: Micros::new(row.try_get(2)?),
            })
        })
        .transpose()?;
    let decision = decide_dispute(&topup, recorded.as_ref(), news)?;
    if decision.step == DisputeMove::Nothing {
        return Ok(Some(DisputeApplied { topup, line: None }));
    }
    let line = match &decision.journal {
        Some((journal, description)) => Some(
            post(
                client,
                context,
                &topup.account,
                journal,
                description.clone(),
                &topup.id,
            )
            .await?,
        ),
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
    client
        .execute_cached(
            "INSERT INTO topup_disputes (id, topup_id, account_id, amount_micros, status, taken_transaction_id, \
             returned_transaction_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, \
             taken_transaction_id = COALESCE(topup_disputes.taken_transaction_id, EXCLUDED.taken_transaction_id), \
             returned_transaction_id = COALESCE(topup_disputes.returned_transaction_id, EXCLUDED.returned_transaction_id), \
             updated_at = EXCLUDED.updated_at",
            &[
                &news.dispute,
                &topup.id,
                &topup.account.as_str(),
                &news.amount.get(),
                &news.status.code(),
                &taken,
                &returned,
                &now,
            ],
        )
        .await?;
    client
        .execute_cached(
            "UPDATE topups SET disputed_micros = $2, updated_at = $3 WHERE id = $1",
            &[&topup.id, &decision.disputed_after.get(), &now],
        )
        .await?;
    Ok(Some(DisputeApplied {
        topup: load_topup(client, &topup.id).await?,
        line,
    }))
}

/// Records a webhook event as applied; false when it was recorded before.
pub async fn record_processor_event<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    event_id: &str,
    event_type: &str,
) -> PgResult<bool> {
    // A concurrent insert of the same id waits for the first to commit, then does nothing:
    // exactly one caller hears `true`.
    let inserted = client
        .execute_cached(
            "INSERT INTO processor_events (event_id, event_type, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &[&event_id, &event_type, &to_unix_micros(context.now)],
        )
        .await?;
    Ok(inserted == 1)
}
