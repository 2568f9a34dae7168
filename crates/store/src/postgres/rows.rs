//! Row mapping and read queries for PostgreSQL; the twin of `sqlite/rows.rs`.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{
    AccountId, AccountPlan, ActionId, Balances, BillingMode, CycleAnchor, DiscountPercent, HoldStatus,
    Micros, PriceSource, Quantity, SpendState, TierId, Timestamp, TransactionKind,
};

use super::PgResult;
use crate::{
    AccountRecord, ApiKeyRecord, AuditRecord, HoldRecord, Page, PageRequest, StoreError, StoreResult,
    TransactionLine, UsageRecord,
};

/// An account as a write needs it: the record plus its journal position.
#[derive(Clone)]
pub struct StoredAccount {
    /// The account, spend rolled to now.
    pub record: AccountRecord,
    /// Sequence number of its last journal transaction.
    pub journal_sequence: i64,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(format!("stored {what} `{value}` is not valid"))
}

pub fn account_id(text: &str) -> StoreResult<AccountId> {
    AccountId::parse(text).map_err(|_| corrupt("account id", text))
}

pub fn action_id(text: &str) -> StoreResult<ActionId> {
    ActionId::parse(text).map_err(|_| corrupt("action id", text))
}

const ACCOUNT_COLUMNS: &str = "id, name, email, created_at, billing_mode, credit_limit_micros, \
     available_micros, held_micros, journal_sequence, cycle_start, cycle_spend_micros, \
     previous_cycle_spend_micros, lifetime_spend_micros, cycle_savings_micros, lifetime_savings_micros, \
     personal_discount_percent, invoice_due_at";

async fn account_from_row<C: GenericClient + Sync>(
    client: &C,
    row: &Row,
    now: Timestamp,
) -> PgResult<StoredAccount> {
    let raw_id: String = row.try_get(0)?;
    let id = account_id(&raw_id)?;
    let billing_mode: String = row.try_get(4)?;
    let mode = match billing_mode.as_str() {
        "prepaid" => BillingMode::Prepaid,
        "invoice" => BillingMode::Invoice {
            credit_limit: Micros::new(row.try_get(5)?),
        },
        other => return Err(corrupt("billing mode", other).into()),
    };
    let personal_discount = match row.try_get::<_, Option<i64>>(15)? {
        None => None,
        Some(percent) => Some(
            u8::try_from(percent)
                .ok()
                .and_then(DiscountPercent::new)
                .ok_or_else(|| corrupt("discount", &percent.to_string()))?,
        ),
    };
    let mut custom_prices = std::collections::BTreeMap::new();
    for price in client
        .query_cached(
            "SELECT action, price_micros FROM account_prices WHERE account_id = $1",
            &[&raw_id],
        )
        .await?
    {
        let action: String = price.try_get(0)?;
        custom_prices.insert(action_id(&action)?, Micros::new(price.try_get(1)?));
    }
    let created_at = from_unix_micros(row.try_get(3)?);
    let spend = SpendState {
        cycle_start: from_unix_micros(row.try_get(9)?),
        cycle_spend: Micros::new(row.try_get(10)?),
        previous_cycle_spend: Micros::new(row.try_get(11)?),
        lifetime_spend: Micros::new(row.try_get(12)?),
        cycle_savings: Micros::new(row.try_get(13)?),
        lifetime_savings: Micros::new(row.try_get(14)?),
    }
    .rolled_to(CycleAnchor::from_created_at(created_at), now);
    Ok(StoredAccount {
        record: AccountRecord {
            id,
            name: row.try_get(1)?,
            email: row.try_get(2)?,
            created_at,
            mode,
            balances: Balances {
                available: Micros::new(row.try_get(6)?),
                held: Micros::new(row.try_get(7)?),
            },
            spend,
            plan: AccountPlan {
                personal_discount,
                custom_prices,
            },
            invoice_due_at: row.try_get::<_, Option<i64>>(16)?.map(from_unix_micros),
        },
        journal_sequence: row.try_get(8)?,
    })
}

/// One account with its spend rolled to `now`, or `None`.
pub async fn load_account<C: GenericClient + Sync>(
    client: &C,
    id: &AccountId,
    now: Timestamp,
) -> PgResult<Option<StoredAccount>> {
    let row = client
        .query_opt_cached(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"),
            &[&id.as_str()],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some(account_from_row(client, &row, now).await?)),
    }
}

/// Takes the account's row lock until the transaction ends; false when there is no such account.
///
/// Every write to an account's money, journal or holds takes this lock first,
/// so writers of one account, in any process, run one after the other.
pub async fn lock_account<C: GenericClient + Sync>(client: &C, id: &str) -> PgResult<bool> {
    Ok(client
        .query_opt_cached("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .is_some())
}

/// Locks the accounts named in `sorted_ids` (sorted, no repeats), in that order, with one
/// statement: two batches locking overlapping accounts queue instead of deadlocking.
pub async fn lock_accounts_in_order<C: GenericClient + Sync>(
    client: &C,
    sorted_ids: &[&str],
) -> PgResult<()> {
    debug_assert!(sorted_ids.windows(2).all(|pair| pair[0] < pair[1]));
    // LockRows sits above the Sort: rows are locked in the order they are returned.
    client
        .query_cached(
            "SELECT id FROM accounts WHERE id = ANY($1) ORDER BY id COLLATE \"C\" FOR UPDATE",
            &[&sorted_ids],
        )
        .await?;
    Ok(())
}

/// Writes back balances, journal position and spend totals.
pub async fn save_account<C: GenericClient + Sync>(client: &C, account: &StoredAccount) -> PgResult<()> {
    let record = &account.record;
    let spend = &record.spend;
    client
        .execute_cached(
            "UPDATE accounts SET available_micros = $2, held_micros = $3, journal_sequence = $4, \
             cycle_start = $5, cycle_spend_micros = $6, previous_cycle_spend_micros = $7, \
             lifetime_spend_micros = $8, cycle_savings_micros = $9, lifetime_savings_micros = $10 \
             WHERE id = $1",
            &[
                &record.id.as_str(),
                &record.balances.available.get(),
                &record.balances.held.get(),
                &account.journal_sequence,
                &to_unix_micros(spend.cycle_start),
                &spend.cycle_spend.get(),
                &spend.previous_cycle_spend.get(),
                &spend.lifetime_spend.get(),
                &spend.cycle_savings.get(),
                &spend.lifetime_savings.get(),
            ],
        )
        .await?;
    Ok(())
}

/// Accounts in id order after the cursor.
pub async fn list_accounts<C: GenericClient + Sync>(
    client: &C,
    page: &PageRequest,
    now: Timestamp,
) -> PgResult<Page<AccountRecord>> {
    let after = page.starting_after.clone().unwrap_or_default();
    // A cursor must name an account of the list, as for every other list.
    if let Some(cursor) = &page.starting_after
        && client
            .query_opt_cached("SELECT 1 FROM accounts WHERE id = $1", &[cursor])
            .await?
            .is_none()
    {
        return Err(StoreError::InvalidCursor(cursor.clone()).into());
    }
    let rows = client
        .query_cached(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > $1 ORDER BY id LIMIT $2"),
            &[&after, &(i64::from(page.limit) + 1)],
        )
        .await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(account_from_row(client, row, now).await?.record);
    }
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

const USAGE_COLUMNS: &str = "u.transaction_id, u.account_id, u.action, u.quantity, u.unit_price_micros, \
     u.unit_list_price_micros, u.amount_micros, u.list_amount_micros, u.price_source, u.tier_id, \
     u.price_book_version, u.hold_id, u.created_at, j.available_after_micros, j.held_after_micros";

fn price_source(code: &str) -> StoreResult<PriceSource> {
    [
        PriceSource::Tier,
        PriceSource::PersonalDiscount,
        PriceSource::Custom,
    ]
    .into_iter()
    .find(|source| source.code() == code)
    .ok_or_else(|| corrupt("price source", code))
}

/// One usage record by its transaction id.
pub async fn load_usage<C: GenericClient + Sync>(client: &C, transaction_id: &str) -> PgResult<UsageRecord> {
    let row = client
        .query_opt_cached(
            &format!(
                "SELECT {USAGE_COLUMNS} FROM usage_records u \
                 JOIN journal_transactions j ON j.id = u.transaction_id WHERE u.transaction_id = $1"
            ),
            &[&transaction_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "usage record",
            id: transaction_id.to_owned(),
        })?;
    let account: String = row.try_get(1)?;
    let action: String = row.try_get(2)?;
    let quantity: i64 = row.try_get(3)?;
    let source: String = row.try_get(8)?;
    let tier: String = row.try_get(9)?;
    Ok(UsageRecord {
        id: row.try_get(0)?,
        account: account_id(&account)?,
        action: action_id(&action)?,
        quantity: u64::try_from(quantity)
            .ok()
            .and_then(|count| Quantity::new(count).ok())
            .ok_or_else(|| corrupt("quantity", &quantity.to_string()))?,
        unit_price: Micros::new(row.try_get(4)?),
        unit_list_price: Micros::new(row.try_get(5)?),
        amount: Micros::new(row.try_get(6)?),
        list_amount: Micros::new(row.try_get(7)?),
        price_source: price_source(&source)?,
        tier: TierId::parse(&tier).map_err(|_| corrupt("tier id", &tier))?,
        price_book_version: row.try_get(10)?,
        balances_after: Balances {
            available: Micros::new(row.try_get(13)?),
            held: Micros::new(row.try_get(14)?),
        },
        hold_id: row.try_get(11)?,
        created_at: from_unix_micros(row.try_get(12)?),
    })
}

const HOLD_COLUMNS: &str = "h.id, h.account_id, h.action, h.amount_micros, h.status, h.expires_at, \
     h.created_at, h.closed_at, h.captured_micros, j.available_after_micros, j.held_after_micros";

/// One hold with the balances after its latest change, or `None`.
pub async fn load_hold<C: GenericClient + Sync>(client: &C, hold_id: &str) -> PgResult<Option<HoldRecord>> {
    let Some(row) = client
        .query_opt_cached(
            &format!(
                "SELECT {HOLD_COLUMNS} FROM holds h JOIN journal_transactions j \
                 ON j.id = COALESCE(h.closed_transaction_id, h.placed_transaction_id) WHERE h.id = $1"
            ),
            &[&hold_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let account: String = row.try_get(1)?;
    let action: String = row.try_get(2)?;
    let status: String = row.try_get(4)?;
    Ok(Some(HoldRecord {
        id: row.try_get(0)?,
        account: account_id(&account)?,
        action: action_id(&action)?,
        amount: Micros::new(row.try_get(3)?),
        status: HoldStatus::parse(&status).ok_or_else(|| corrupt("hold status", &status))?,
        expires_at: from_unix_micros(row.try_get(5)?),
        created_at: from_unix_micros(row.try_get(6)?),
        closed_at: row.try_get::<_, Option<i64>>(7)?.map(from_unix_micros),
        captured_amount: row.try_get::<_, Option<i64>>(8)?.map(Micros::new),
        balances_after: Balances {
            available: Micros::new(row.try_get(9)?),
            held: Micros::new(row.try_get(10)?),
        },
    }))
}

const TRANSACTION_COLUMNS: &str = "id, account_id, sequence, kind, amount_micros, available_amount_micros, \
     available_after_micros, held_after_micros, description, reference_id, created_at";

fn transaction_line(row: &Row) -> PgResult<TransactionLine> {
    let account: String = row.try_get(1)?;
    let kind: String = row.try_get(3)?;
    Ok(TransactionLine {
        id: row.try_get(0)?,
        account: account_id(&account)?,
        sequence: row.try_get(2)?,
        kind: TransactionKind::parse(&kind).ok_or_else(|| corrupt("transaction kind", &kind))?,
        amount: Micros::new(row.try_get(4)?),
        available_amount: Micros::new(row.try_get(5)?),
        balances_after: Balances {
            available: Micros::new(row.try_get(6)?),
            held: Micros::new(row.try_get(7)?),
        },
        description: row.try_get(8)?,
        reference: row.try_get(9)?,
        created_at: from_unix_micros(row.try_get(10)?),
    })
}

/// One journal transaction by id.
pub async fn load_transaction<C: GenericClient + Sync>(
    client: &C,
    transaction_id: &str,
) -> PgResult<TransactionLine> {
    let row = client
        .query_opt_cached(
            &format!("SELECT {TRANSACTION_COLUMNS} FROM journal_transactions WHERE id = $1"),
            &[&transaction_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "transaction",
            id: transaction_id.to_owned(),
        })?;
    transaction_line(&row)
}

/// An account's journal, newest first, after the cursor.
pub async fn list_transactions<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    page: &PageRequest,
) -> PgResult<Page<TransactionLine>> {
    // An unknown account is not an empty journal.
    if client
        .query_opt_cached("SELECT 1 FROM accounts WHERE id = $1", &[&account.as_str()])
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound {
            what: "account",
            id: account.to_string(),
        }
        .into());
    }
    let before_sequence: i64 = match &page.starting_after {
        None => i64::MAX,
        Some(cursor) => client
            .query_opt_cached(
                "SELECT sequence FROM journal_transactions WHERE id = $1 AND account_id = $2",
                &[cursor, &account.as_str()],
            )
            .await?
            .ok_or_else(|| StoreError::InvalidCursor(cursor.clone()))?
            .try_get(0)?,
    };
    let rows = client
        .query_cached(
            &format!(
                "SELECT {TRANSACTION_COLUMNS} FROM journal_transactions \
                 WHERE account_id = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3"
            ),
            &[&account.as_str(), &before_sequence, &(i64::from(page.limit) + 1)],
        )
        .await?;
    let mut data = rows.iter().map(transaction_line).collect::<PgResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Usage per UTC day and action since `since`.
pub async fn daily_usage<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    since: Timestamp,
) -> PgResult<Vec<(time::Date, String, Micros)>> {
    // Integer division floors like SQLite's for the non-negative times stored.
    let rows = client
        .query_cached(
            "SELECT created_at / $3 AS day, action, CAST(SUM(amount_micros) AS BIGINT) FROM usage_records \
             WHERE account_id = $1 AND created_at >= $2 GROUP BY day, action ORDER BY day, action",
            &[&account.as_str(), &to_unix_micros(since), &MICROS_PER_DAY],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let day: i64 = row.try_get(0)?;
            Ok((
                from_unix_micros(day * MICROS_PER_DAY).date(),
                row.try_get(1)?,
                Micros::new(row.try_get(2)?),
            ))
        })
        .collect()
}

/// Stores an API key.
pub async fn insert_api_key<C: GenericClient + Sync>(client: &C, key: &ApiKeyRecord) -> PgResult<()> {
    client
        .execute_cached(
            "INSERT INTO api_keys (id, key_hash, label, created_at) VALUES ($1, $2, $3, $4)",
            &[
                &key.id,
                &key.key_hash,
                &key.label,
                &to_unix_micros(key.created_at),
            ],
        )
        .await?;
    Ok(())
}

/// The live key with this hash.
pub async fn api_key_by_hash<C: GenericClient + Sync>(
    client: &C,
    key_hash: &str,
) -> PgResult<Option<ApiKeyRecord>> {
    let row = client
        .query_opt_cached(
            "SELECT id, key_hash, label, created_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            &[&key_hash],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some(ApiKeyRecord {
            id: row.try_get(0)?,
            key_hash: row.try_get(1)?,
            label: row.try_get(2)?,
            created_at: from_unix_micros(row.try_get(3)?),
        })),
    }
}

/// Number of live keys.
pub async fn count_api_keys<C: GenericClient + Sync>(client: &C) -> PgResult<u64> {
    let count: i64 = client
        .query_one_cached("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL", &[])
        .await?
        .try_get(0)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Appends an audit entry.
pub async fn insert_audit<C: GenericClient + Sync>(client: &C, entry: &AuditRecord) -> PgResult<()> {
    client
        .execute_cached(
            "INSERT INTO audit_log (id, actor, action, account_id, before_state, after_state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &entry.id,
                &entry.actor,
                &entry.action,
                &entry.account.as_ref().map(AccountId::as_str),
                &entry.before,
                &entry.after,
                &to_unix_micros(entry.created_at),
            ],
        )
        .await?;
    Ok(())
}

/// The audit log, newest first.
pub async fn list_audit<C: GenericClient + Sync>(
    client: &C,
    page: &PageRequest,
) -> PgResult<Page<AuditRecord>> {
    let before = page
        .starting_after
        .clone()
        .unwrap_or_else(|| "\u{10ffff}".to_owned());
    let rows = client
        .query_cached(
            "SELECT id, actor, action, account_id, before_state, after_state, created_at FROM audit_log \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before, &(i64::from(page.limit) + 1)],
        )
        .await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        let account: Option<String> = row.try_get(3)?;
        data.push(AuditRecord {
            id: row.try_get(0)?,
            actor: row.try_get(1)?,
            action: row.try_get(2)?,
            account: account.as_deref().map(account_id).transpose()?,
            before: row.try_get(4)?,
            after: row.try_get(5)?,
            created_at: from_unix_micros(row.try_get(6)?),
        });
    }
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// True when the account has an active hold whose time ran out.
pub async fn has_due_holds<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    now: Timestamp,
) -> PgResult<bool> {
    Ok(client
        .query_opt_cached(
            "SELECT 1 FROM holds WHERE account_id = $1 AND status = 'active' AND expires_at <= $2 LIMIT 1",
            &[&account.as_str(), &to_unix_micros(now)],
        )
        .await?
        .is_some())
}
