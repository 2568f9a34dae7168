//! Row mapping and read queries.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::{
    AccountId, AccountPlan, ActionId, Balances, BillingMode, CycleAnchor, DiscountPercent, HoldStatus,
    Micros, PriceSource, Quantity, SpendState, TierId, Timestamp, TransactionKind,
};

use crate::{
    AccountRecord, ApiKeyRecord, AuditRecord, HoldRecord, Page, PageRequest, StoreError, StoreResult,
    TransactionLine, UsageRecord,
};

/// An account as the writer needs it: the record plus its journal position.
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

struct AccountRow {
    id: String,
    name: String,
    email: String,
    created_at: i64,
    billing_mode: String,
    credit_limit: i64,
    available: i64,
    held: i64,
    journal_sequence: i64,
    cycle_start: i64,
    cycle_spend: i64,
    previous_cycle_spend: i64,
    lifetime_spend: i64,
    cycle_savings: i64,
    lifetime_savings: i64,
    personal_discount: Option<i64>,
    invoice_due_at: Option<i64>,
}

fn account_row(row: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        id: row.get(0)?,
        name: row.get(1)?,
        email: row.get(2)?,
        created_at: row.get(3)?,
        billing_mode: row.get(4)?,
        credit_limit: row.get(5)?,
        available: row.get(6)?,
        held: row.get(7)?,
        journal_sequence: row.get(8)?,
        cycle_start: row.get(9)?,
        cycle_spend: row.get(10)?,
        previous_cycle_spend: row.get(11)?,
        lifetime_spend: row.get(12)?,
        cycle_savings: row.get(13)?,
        lifetime_savings: row.get(14)?,
        personal_discount: row.get(15)?,
        invoice_due_at: row.get(16)?,
    })
}

fn account_from_row(connection: &Connection, row: AccountRow, now: Timestamp) -> StoreResult<StoredAccount> {
    let id = account_id(&row.id)?;
    let mode = match row.billing_mode.as_str() {
        "prepaid" => BillingMode::Prepaid,
        "invoice" => BillingMode::Invoice {
            credit_limit: Micros::new(row.credit_limit),
        },
        other => return Err(corrupt("billing mode", other)),
    };
    let personal_discount = match row.personal_discount {
        None => None,
        Some(percent) => Some(
            u8::try_from(percent)
                .ok()
                .and_then(DiscountPercent::new)
                .ok_or_else(|| corrupt("discount", &percent.to_string()))?,
        ),
    };
    let mut custom_prices = std::collections::BTreeMap::new();
    let mut statement =
        connection.prepare_cached("SELECT action, price_micros FROM account_prices WHERE account_id = ?1")?;
    let mut prices = statement.query(params![row.id])?;
    while let Some(price) = prices.next()? {
        let action: String = price.get(0)?;
        custom_prices.insert(action_id(&action)?, Micros::new(price.get(1)?));
    }
    let created_at = from_unix_micros(row.created_at);
    let spend = SpendState {
        cycle_start: from_unix_micros(row.cycle_start),
        cycle_spend: Micros::new(row.cycle_spend),
        previous_cycle_spend: Micros::new(row.previous_cycle_spend),
        lifetime_spend: Micros::new(row.lifetime_spend),
        cycle_savings: Micros::new(row.cycle_savings),
        lifetime_savings: Micros::new(row.lifetime_savings),
    }
    .rolled_to(CycleAnchor::from_created_at(created_at), now);
    Ok(StoredAccount {
        record: AccountRecord {
            id,
            name: row.name,
            email: row.email,
            created_at,
            mode,
            balances: Balances {
                available: Micros::new(row.available),
                held: Micros::new(row.held),
            },
            spend,
            plan: AccountPlan {
                personal_discount,
                custom_prices,
            },
            invoice_due_at: row.invoice_due_at.map(from_unix_micros),
        },
        journal_sequence: row.journal_sequence,
    })
}

/// One account with its spend rolled to `now`, or `None`.
pub fn load_account(
    connection: &Connection,
    id: &AccountId,
    now: Timestamp,
) -> StoreResult<Option<StoredAccount>> {
    let row = connection
        .prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"))?
        .query_row(params![id.as_str()], account_row)
        .optional()?;
    row.map(|row| account_from_row(connection, row, now)).transpose()
}

/// Writes back balances, journal position and spend totals.
pub fn save_account(connection: &Connection, account: &StoredAccount) -> StoreResult<()> {
    let record = &account.record;
    let spend = &record.spend;
    connection
        .prepare_cached(
            "UPDATE accounts SET available_micros = ?2, held_micros = ?3, journal_sequence = ?4, \
             cycle_start = ?5, cycle_spend_micros = ?6, previous_cycle_spend_micros = ?7, \
             lifetime_spend_micros = ?8, cycle_savings_micros = ?9, lifetime_savings_micros = ?10 \
             WHERE id = ?1",
        )?
        .execute(params![
            record.id.as_str(),
            record.balances.available.get(),
            record.balances.held.get(),
            account.journal_sequence,
            to_unix_micros(spend.cycle_start),
            spend.cycle_spend.get(),
            spend.previous_cycle_spend.get(),
            spend.lifetime_spend.get(),
            spend.cycle_savings.get(),
            spend.lifetime_savings.get(),
        ])?;
    Ok(())
}

/// Accounts in id order after the cursor.
pub fn list_accounts(
    connection: &Connection,
    page: &PageRequest,
    now: Timestamp,
) -> StoreResult<Page<AccountRecord>> {
    let after = page.starting_after.clone().unwrap_or_default();
    // A cursor must name an account of the list, as for every other list.
    if let Some(cursor) = &page.starting_after {
        let exists: Option<i64> = connection
            .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
            .query_row(params![cursor], |row| row.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::InvalidCursor(cursor.clone()));
        }
    }
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = statement
        .query_map(params![after, i64::from(page.limit) + 1], account_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = rows
        .into_iter()
        .map(|row| account_from_row(connection, row, now).map(|stored| stored.record))
        .collect::<StoreResult<Vec<_>>>()?;
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
pub fn load_usage(connection: &Connection, transaction_id: &str) -> StoreResult<UsageRecord> {
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage_records u \
             JOIN journal_transactions j ON j.id = u.transaction_id WHERE u.transaction_id = ?1"
        ))?
        .query_row(params![transaction_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                [row.get::<_, i64>(4)?, row.get(5)?, row.get(6)?, row.get(7)?],
                row.get::<_, String>(8)?,
                row.get::<_, String>(9)?,
                row.get::<_, String>(10)?,
                row.get::<_, Option<String>>(11)?,
                row.get::<_, i64>(12)?,
                [row.get::<_, i64>(13)?, row.get(14)?],
            ))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "usage record",
            id: transaction_id.to_owned(),
        })?;
    let (id, account, action, quantity, amounts, source, tier, version, hold_id, created_at, after) = raw;
    let [unit_price, unit_list_price, amount, list_amount] = amounts.map(Micros::new);
    Ok(UsageRecord {
        id,
        account: account_id(&account)?,
        action: action_id(&action)?,
        quantity: u64::try_from(quantity)
            .ok()
            .and_then(|count| Quantity::new(count).ok())
            .ok_or_else(|| corrupt("quantity", &quantity.to_string()))?,
        unit_price,
        unit_list_price,
        amount,
        list_amount,
        price_source: price_source(&source)?,
        tier: TierId::parse(&tier).map_err(|_| corrupt("tier id", &tier))?,
        price_book_version: version,
        balances_after: Balances {
            available: Micros::new(after[0]),
            held: Micros::new(after[1]),
        },
        hold_id,
        created_at: from_unix_micros(created_at),
    })
}

const HOLD_COLUMNS: &str = "h.id, h.account_id, h.action, h.amount_micros, h.status, h.expires_at, \
     h.created_at, h.closed_at, h.captured_micros, j.available_after_micros, j.held_after_micros";

/// A hold row as read: id, account, action, amount, status, expires_at,
/// created_at, closed_at, captured, available after, held after.
type HoldRow = (
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
);

fn hold_from_row(row: &Row<'_>) -> rusqlite::Result<HoldRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
    ))
}

/// One hold with the balances after its latest change, or `None`.
pub fn load_hold(connection: &Connection, hold_id: &str) -> StoreResult<Option<HoldRecord>> {
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {HOLD_COLUMNS} FROM holds h JOIN journal_transactions j \
             ON j.id = COALESCE(h.closed_transaction_id, h.placed_transaction_id) WHERE h.id = ?1"
        ))?
        .query_row(params![hold_id], hold_from_row)
        .optional()?;
    let Some((
        id,
        account,
        action,
        amount,
        status,
        expires_at,
        created_at,
        closed_at,
        captured,
        available,
        held,
    )) = raw
    else {
        return Ok(None);
    };
    Ok(Some(HoldRecord {
        id,
        account: account_id(&account)?,
        action: action_id(&action)?,
        amount: Micros::new(amount),
        status: HoldStatus::parse(&status).ok_or_else(|| corrupt("hold status", &status))?,
        expires_at: from_unix_micros(expires_at),
        created_at: from_unix_micros(created_at),
        closed_at: closed_at.map(from_unix_micros),
        captured_amount: captured.map(Micros::new),
        balances_after: Balances {
            available: Micros::new(available),
            held: Micros::new(held),
        },
    }))
}

const TRANSACTION_COLUMNS: &str = "id, account_id, sequence, kind, amount_micros, available_amount_micros, \
     available_after_micros, held_after_micros, description, reference_id, created_at";

/// A journal row as read: id, account, sequence, kind, [amount, available
/// amount, available after, held after], description, reference, created_at.
type TransactionRow = (String, String, i64, String, [i64; 4], String, Option<String>, i64);

fn transaction_from_row(row: &Row<'_>) -> rusqlite::Result<TransactionRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        [row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?],
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
    ))
}

fn transaction_line(raw: TransactionRow) -> StoreResult<TransactionLine> {
    let (id, account, sequence, kind, amounts, description, reference, created_at) = raw;
    let [amount, available_amount, available_after, held_after] = amounts.map(Micros::new);
    Ok(TransactionLine {
        id,
        account: account_id(&account)?,
        sequence,
        kind: TransactionKind::parse(&kind).ok_or_else(|| corrupt("transaction kind", &kind))?,
        amount,
        available_amount,
        balances_after: Balances {
            available: available_after,
            held: held_after,
        },
        description,
        reference,
        created_at: from_unix_micros(created_at),
    })
}

/// One journal transaction by id.
pub fn load_transaction(connection: &Connection, transaction_id: &str) -> StoreResult<TransactionLine> {
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {TRANSACTION_COLUMNS} FROM journal_transactions WHERE id = ?1"
        ))?
        .query_row(params![transaction_id], transaction_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "transaction",
            id: transaction_id.to_owned(),
        })?;
    transaction_line(raw)
}

/// An account's journal, newest first, after the cursor.
pub fn list_transactions(
    connection: &Connection,
    account: &AccountId,
    page: &PageRequest,
) -> StoreResult<Page<TransactionLine>> {
    // An unknown account is not an empty journal.
    let exists: Option<i64> = connection
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row(params![account.as_str()], |row| row.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NotFound {
            what: "account",
            id: account.to_string(),
        });
    }
    let before_sequence = match &page.starting_after {
        None => i64::MAX,
        Some(cursor) => connection
            .prepare_cached("SELECT sequence FROM journal_transactions WHERE id = ?1 AND account_id = ?2")?
            .query_row(params![cursor, account.as_str()], |row| row.get(0))
            .optional()?
            .ok_or_else(|| StoreError::InvalidCursor(cursor.clone()))?,
    };
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TRANSACTION_COLUMNS} FROM journal_transactions \
         WHERE account_id = ?1 AND sequence < ?2 ORDER BY sequence DESC LIMIT ?3"
    ))?;
    let rows = statement
        .query_map(
            params![account.as_str(), before_sequence, i64::from(page.limit) + 1],
            transaction_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = rows
        .into_iter()
        .map(transaction_line)
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Usage per UTC day and action since `since`.
pub fn daily_usage(
    connection: &Connection,
    account: &AccountId,
    since: Timestamp,
) -> StoreResult<Vec<(time::Date, String, Micros)>> {
    let mut statement = connection.prepare_cached(
        "SELECT created_at / ?3 AS day, action, SUM(amount_micros) FROM usage_records \
         WHERE account_id = ?1 AND created_at >= ?2 GROUP BY day, action ORDER BY day, action",
    )?;
    let rows = statement
        .query_map(
            params![account.as_str(), to_unix_micros(since), MICROS_PER_DAY],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(day, action, amount)| {
            (
                from_unix_micros(day * MICROS_PER_DAY).date(),
                action,
                Micros::new(amount),
            )
        })
        .collect())
}

/// Stores an API key.
pub fn insert_api_key(connection: &Connection, key: &ApiKeyRecord) -> StoreResult<()> {
    connection
        .prepare_cached("INSERT INTO api_keys (id, key_hash, label, created_at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            key.id,
            key.key_hash,
            key.label,
            to_unix_micros(key.created_at)
        ])?;
    Ok(())
}

/// The live key with this hash.
pub fn api_key_by_hash(connection: &Connection, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
    Ok(connection
        .prepare_cached(
            "SELECT id, key_hash, label, created_at FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL",
        )?
        .query_row(params![key_hash], |row| {
            Ok(ApiKeyRecord {
                id: row.get(0)?,
                key_hash: row.get(1)?,
                label: row.get(2)?,
                created_at: from_unix_micros(row.get(3)?),
            })
        })
        .optional()?)
}

/// Number of live keys.
pub fn count_api_keys(connection: &Connection) -> StoreResult<u64> {
    let count: i64 = connection.query_row(
        "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL",
        [],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Appends an audit entry.
pub fn insert_audit(connection: &Connection, entry: &AuditRecord) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO audit_log (id, actor, action, account_id, before_state, after_state, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            entry.id,
            entry.actor,
            entry.action,
            entry.account.as_ref().map(AccountId::as_str),
            entry.before,
            entry.after,
            to_unix_micros(entry.created_at),
        ])?;
    Ok(())
}

/// The audit log, newest first.
pub fn list_audit(connection: &Connection, page: &PageRequest) -> StoreResult<Page<AuditRecord>> {
    let before = page
        .starting_after
        .clone()
        .unwrap_or_else(|| "\u{10ffff}".to_owned());
    let mut statement = connection.prepare_cached(
        "SELECT id, actor, action, account_id, before_state, after_state, created_at FROM audit_log \
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = statement
        .query_map(params![before, i64::from(page.limit) + 1], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = rows
        .into_iter()
        .map(|(id, actor, action, account, before, after, created_at)| {
            Ok(AuditRecord {
                id,
                actor,
                action,
                account: account.as_deref().map(account_id).transpose()?,
                before,
                after,
                created_at: from_unix_micros(created_at),
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// True when the account has an active hold whose time ran out.
pub fn has_due_holds(connection: &Connection, account: &AccountId, now: Timestamp) -> StoreResult<bool> {
    Ok(connection
        .prepare_cached(
            "SELECT 1 FROM holds WHERE account_id = ?1 AND status = 'active' AND expires_at <= ?2 LIMIT 1",
        )?
        .query_row(params![account.as_str(), to_unix_micros(now)], |row| {
            row.get::<_, i64>(0)
        })
        .optional()?
        .is_some())
}
