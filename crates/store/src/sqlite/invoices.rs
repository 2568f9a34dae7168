//! Invoices on SQLite: closing periods, listing, and payment.
//!
//! The one writer thread runs every close, so two closes never interleave; the period
//! cursor on the account row and the unique (account, period start) are what make a close
//! happen once across restarts.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::invoice::CLOSE_GRACE;
use tollgate_core::{
    AccountId, EventType, InvoiceLine, InvoicePayment, InvoicePeriod, InvoiceStatus, InvoiceTotals,
    JournalTransaction, Micros,
};

use super::ops::{self, JournalWrite, append, load_for_write};
use super::writer::WriteContext;
use super::{events, rows};
use crate::decide::not_found;
use crate::invoices::{
    InvoiceDraft, PeriodChange, PeriodCharge, created_events, draft_invoice, invoice_event, mark_paid_audit,
    stored_number, transfer_description,
};
use crate::plan::net_terms;
use crate::{
    Idempotent, InvoiceRecord, InvoiceRecordLine, MarkPaid, Page, PageRequest, StoreError, StoreResult,
};

const INVOICE_COLUMNS: &str = "id, number, account_id, period_start, period_end, subtotal_micros, \
     credit_applied_micros, brought_forward_micros, carried_forward_micros, amount_due_micros, status, due_at, \
     created_at, paid_at, paid_by, payment_reference, card_topup_id, card_attempts";

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(format!("corrupt {what} `{value}` in invoices"))
}

type InvoiceRow = (
    String,
    i64,
    String,
    [i64; 2],
    [i64; 5],
    String,
    [i64; 2],
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

fn invoice_row(row: &Row<'_>) -> rusqlite::Result<InvoiceRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        [row.get(3)?, row.get(4)?],
        [row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?],
        row.get(10)?,
        [row.get(11)?, row.get(12)?],
        row.get(13)?,
        row.get(14)?,
        row.get(15)?,
        row.get(16)?,
        row.get(17)?,
    ))
}

fn invoice_record(connection: &Connection, raw: InvoiceRow) -> StoreResult<InvoiceRecord> {
    let (
        id,
        number,
        account,
        period,
        money,
        status,
        [due_at, created_at],
        paid_at,
        paid_by,
        reference,
        topup,
        attempts,
    ) = raw;
    let mut lines = Vec::new();
    let mut statement = connection.prepare_cached(
        "SELECT action, description, quantity, unit_price_micros, amount_micros FROM invoice_lines \
         WHERE invoice_id = ?1 ORDER BY line",
    )?;
    let mut found = statement.query(params![id])?;
    while let Some(row) = found.next()? {
        let action: String = row.get(0)?;
        let quantity: i64 = row.get(2)?;
        lines.push(InvoiceRecordLine {
            line: InvoiceLine {
                action: rows::action_id(&action)?,
                quantity: u64::try_from(quantity).map_err(|_| corrupt("quantity", &quantity.to_string()))?,
                unit_price: Micros::new(row.get(3)?),
                amount: Micros::new(row.get(4)?),
            },
            description: row.get(1)?,
        });
    }
    Ok(InvoiceRecord {
        number: stored_number(number)?,
        account: rows::account_id(&account)?,
        period: InvoicePeriod {
            start: from_unix_micros(period[0]),
            end: from_unix_micros(period[1]),
        },
        lines,
        totals: InvoiceTotals {
            subtotal: Micros::new(money[0]),
            credit_applied: Micros::new(money[1]),
            brought_forward: Micros::new(money[2]),
            carried_forward: Micros::new(money[3]),
            amount_due: Micros::new(money[4]),
        },
        status: InvoiceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        due_at: from_unix_micros(due_at),
        created_at: from_unix_micros(created_at),
        paid_at: paid_at.map(from_unix_micros),
        paid_by: match paid_by {
            None => None,
            Some(code) => Some(InvoicePayment::parse(&code).ok_or_else(|| corrupt("payment", &code))?),
        },
        payment_reference: reference,
        card_topup: topup,
        card_attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        id,
    })
}

/// One invoice.
pub fn invoice(connection: &Connection, id: &str) -> StoreResult<InvoiceRecord> {
    let raw = connection
        .prepare_cached(&format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = ?1"))?
        .query_row(params![id], invoice_row)
        .optional()?
        .ok_or_else(|| not_found("invoice", id))?;
    invoice_record(connection, raw)
}

/// An account's invoices, newest first.
pub fn list_invoices(
    connection: &Connection,
    account: &AccountId,
    page: &PageRequest,
) -> StoreResult<Page<InvoiceRecord>> {
    super::payments::ensure_account(connection, account)?;
    let before: Option<i64> = match &page.starting_after {
        None => None,
        Some(cursor) => Some(
            connection
                .prepare_cached("SELECT number FROM invoices WHERE id = ?1 AND account_id = ?2")?
                .query_row(params![cursor, account.as_str()], |row| row.get(0))
                .optional()?
                .ok_or_else(|| StoreError::InvalidCursor(cursor.clone()))?,
        ),
    };
    let raw = connection
        .prepare_cached(&format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices WHERE account_id = ?1 AND (?2 IS NULL OR number < ?2) \
             ORDER BY number DESC LIMIT ?3"
        ))?
        .query_map(
            params![account.as_str(), before, i64::from(page.limit) + 1],
            invoice_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = raw
        .into_iter()
        .map(|raw| invoice_record(connection, raw))
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// Applies a plan's change of billing mode to the account's invoice period.
pub fn change_period(
    context: &WriteContext<'_>,
    account: &AccountId,
    change: PeriodChange,
) -> StoreResult<()> {
    let (start, end) = match change {
        PeriodChange::Keep => return Ok(()),
        PeriodChange::Start(period) => (
            Some(to_unix_micros(period.start)),
            Some(to_unix_micros(period.end)),
        ),
        PeriodChange::Stop => (None, None),
    };
    context
        .connection
        .prepare_cached(
            "UPDATE accounts SET invoice_period_start = ?2, invoice_period_end = ?3 WHERE id = ?1",
        )?
        .execute(params![account.as_str(), start, end])?;
    Ok(())
}

/// Closes at most `limit` due invoice periods, oldest first.
pub fn close_due_invoices(context: &WriteContext<'_>, limit: usize) -> StoreResult<Vec<InvoiceRecord>> {
    let limit = limit.min(crate::MAX_INVOICE_CLOSE_BATCH);
    let due: Vec<String> = context
        .connection
        .prepare_cached(
            "SELECT id FROM accounts WHERE invoice_period_end IS NOT NULL AND invoice_period_end <= ?1 \
             ORDER BY invoice_period_end, id LIMIT ?2",
        )?
        .query_map(
            params![to_unix_micros(context.now - CLOSE_GRACE), limit as i64],
            |row| row.get::<_, String>(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut closed = Vec::new();
    for id in due {
        if let Some(invoice) = close_period(context, &rows::account_id(&id)?)? {
            closed.push(invoice);
        }
    }
    Ok(closed)
}

/// Closes the account's current invoice period if it is due: writes its invoice (if any) and
/// moves the period on, together.
fn close_period(context: &WriteContext<'_>, account_id: &AccountId) -> StoreResult<Option<InvoiceRecord>> {
    let connection = context.connection;
    let account = load_for_write(context, account_id)?;
    rows::save_account(connection, &account)?;
    let (start, end, terms): (Option<i64>, Option<i64>, Option<i64>) = connection
        .prepare_cached(
            "SELECT invoice_period_start, invoice_period_end, net_terms_days FROM accounts WHERE id = ?1",
        )?
        .query_row(params![account_id.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    let (Some(start), Some(end)) = (start, end) else {
        return Ok(None);
    };
    let period = InvoicePeriod {
        start: from_unix_micros(start),
        end: from_unix_micros(end),
    };
    if !period.may_close(context.now) {
        return Ok(None);
    }
    let charges = connection
        .prepare_cached(
            "SELECT action, unit_price_micros, SUM(quantity), SUM(amount_micros) FROM usage_records \
             WHERE account_id = ?1 AND created_at >= ?2 AND created_at < ?3 \
             GROUP BY action, unit_price_micros ORDER BY action, unit_price_micros LIMIT ?4",
        )?
        .query_map(
            params![
                account_id.as_str(),
                start,
                end,
                tollgate_core::invoice::MAX_INVOICE_LINES as i64
            ],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(action, unit_price, quantity, amount)| {
            Ok(PeriodCharge {
                action: rows::action_id(&action)?,
                quantity: u64::try_from(quantity).map_err(|_| StoreError::Overflow("invoice quantity"))?,
                unit_price: Micros::new(unit_price),
                amount: Micros::new(amount),
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let open_due: i64 = connection
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_due_micros), 0) FROM invoices WHERE account_id = ?1 AND status = 'open'",
        )?
        .query_row(params![account_id.as_str()], |row| row.get(0))?;
    let balance_at_end: i64 = connection
        .prepare_cached(
            "SELECT available_after_micros + held_after_micros FROM journal_transactions \
             WHERE account_id = ?1 AND created_at < ?2 ORDER BY sequence DESC LIMIT 1",
        )?
        .query_row(params![account_id.as_str(), end], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let draft = draft_invoice(
        &context.rules.price_book,
        Micros::new(balance_at_end),
        charges,
        Micros::new(open_due),
        net_terms(terms),
        context.now,
    )?;
    let next = period.next(account.record.anchor());
    connection
        .prepare_cached(
            "UPDATE accounts SET invoice_period_start = ?2, invoice_period_end = ?3 WHERE id = ?1",
        )?
        .execute(params![
            account_id.as_str(),
            to_unix_micros(next.start),
            to_unix_micros(next.end)
        ])?;
    let Some(draft) = draft else {
        return Ok(None);
    };
    let written = write_invoice(context, account_id, period, draft)?;
    events::insert_events(context, &created_events(&written))?;
    Ok(Some(written))
}

fn write_invoice(
    context: &WriteContext<'_>,
    account: &AccountId,
    period: InvoicePeriod,
    draft: InvoiceDraft,
) -> StoreResult<InvoiceRecord> {
    let connection = context.connection;
    let number: i64 = connection
        .prepare_cached("UPDATE invoice_numbers SET last_number = last_number + 1 RETURNING last_number")?
        .query_row([], |row| row.get(0))?;
    let now = to_unix_micros(context.now);
    // Nothing due (credit covered it): paid at once, by credit.
    let covered = draft.totals.amount_due.is_zero();
    let totals = draft.totals;
    connection
        .prepare_cached(
            "INSERT INTO invoices (id, number, account_id, period_start, period_end, subtotal_micros, \
             credit_applied_micros, brought_forward_micros, carried_forward_micros, amount_due_micros, status, \
             due_at, created_at, paid_at, paid_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?
        .execute(params![
            draft.id,
            number,
            account.as_str(),
            to_unix_micros(period.start),
            to_unix_micros(period.end),
            totals.subtotal.get(),
            totals.credit_applied.get(),
            totals.brought_forward.get(),
            totals.carried_forward.get(),
            totals.amount_due.get(),
            if covered { "paid" } else { "open" },
            to_unix_micros(draft.due_at),
            now,
            covered.then_some(now),
            covered.then_some(InvoicePayment::Credit.code()),
        ])?;
    let mut insert_line = connection.prepare_cached(
        "INSERT INTO invoice_lines (invoice_id, line, action, description, quantity, unit_price_micros, \
         amount_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (index, line) in draft.lines.iter().enumerate() {
        insert_line.execute(params![
            draft.id,
            index as i64,
            line.line.action.as_str(),
            line.description,
            i64::try_from(line.line.quantity).map_err(|_| StoreError::Overflow("invoice quantity"))?,
            line.line.unit_price.get(),
            line.line.amount.get(),
        ])?;
    }
    refresh_due(connection, account)?;
    invoice(connection, &draft.id)
}

/// Keeps the account's `invoice_due_at` at its oldest open invoice's due date.
fn refresh_due(connection: &Connection, account: &AccountId) -> StoreResult<()> {
    connection
        .prepare_cached(
            "UPDATE accounts SET invoice_due_at = \
             (SELECT MIN(due_at) FROM invoices WHERE account_id = ?1 AND status = 'open') WHERE id = ?1",
        )?
        .execute(params![account.as_str()])?;
    Ok(())
}

fn mark_paid_row(
    context: &WriteContext<'_>,
    invoice: &InvoiceRecord,
    method: InvoicePayment,
    reference: Option<&str>,
    transaction: &str,
) -> StoreResult<InvoiceRecord> {
    context
        .connection
        .prepare_cached(
            "UPDATE invoices SET status = 'paid', paid_at = ?2, paid_by = ?3, payment_reference = ?4, \
             paid_transaction_id = ?5 WHERE id = ?1 AND status = 'open'",
        )?
        .execute(params![
            invoice.id,
            to_unix_micros(context.now),
            method.code(),
            reference,
            transaction
        ])?;
    refresh_due(context.connection, &invoice.account)?;
    let paid = self::invoice(context.connection, &invoice.id)?;
    events::insert_events(context, &[invoice_event(EventType::InvoicePaid, &paid)])?;
    Ok(paid)
}

/// Records an invoice paid by bank transfer.
pub fn mark_paid(context: &WriteContext<'_>, command: &MarkPaid) -> StoreResult<Idempotent<InvoiceRecord>> {
    let found = invoice(context.connection, &command.invoice)?;
    match found.status {
        InvoiceStatus::Paid => {
            return Ok(Idempotent {
                value: found,
                replayed: true,
            });
        }
        InvoiceStatus::Void => {
            return Err(StoreError::Conflict(format!("invoice {} is void", found.number)));
        }
        InvoiceStatus::Open => {}
    }
    let mut account = load_for_write(context, &found.account)?;
    let line = append(
        context,
        &mut account,
        &JournalTransaction::invoice_payment(&found.account, found.totals.amount_due),
        JournalWrite {
            description: transfer_description(found.number, command.reference.as_deref()),
            reference: Some(&found.id),
            idempotency: None,
        },
    )?;
    rows::save_account(context.connection, &account)?;
    let paid = mark_paid_row(
        context,
        &found,
        InvoicePayment::BankTransfer,
        command.reference.as_deref(),
        &line.id,
    )?;
    ops::audit(
        context,
        &command.actor,
        "invoice.marked_paid",
        &found.account,
        Some(format!("status=open invoice={}", found.id)),
        Some(mark_paid_audit(&paid, command.reference.as_deref())),
    )?;
    Ok(Idempotent {
        value: paid,
        replayed: false,
    })
}

/// Makes a card top-up the payment in flight of an open invoice.
pub fn attach_topup(
    context: &WriteContext<'_>,
    invoice_id: &str,
    topup: &str,
    attempt: u32,
) -> StoreResult<InvoiceRecord> {
    let found = invoice(context.connection, invoice_id)?;
    if found.status != InvoiceStatus::Open {
        return Err(StoreError::Conflict(format!(
            "invoice {} is {}",
            found.number,
            found.status.code()
        )));
    }
    if let Some(current) = &found.card_topup
        && current != topup
        && topup_in_flight(context.connection, current)?
    {
        return Err(StoreError::Conflict(format!(
            "a card payment of invoice {} is still in flight",
            found.number
        )));
    }
    context
        .connection
        .prepare_cached(
            "UPDATE invoices SET card_topup_id = ?2, card_attempts = MAX(card_attempts, ?3) WHERE id = ?1",
        )?
        .execute(params![invoice_id, topup, i64::from(attempt)])?;
    invoice(context.connection, invoice_id)
}

fn topup_in_flight(connection: &Connection, topup: &str) -> StoreResult<bool> {
    Ok(connection
        .prepare_cached(
            "SELECT 1 FROM topups WHERE id = ?1 AND status IN ('pending', 'requires_payment_method', 'requires_action')",
        )?
        .query_row(params![topup], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The open invoice a card top-up pays, if any.
pub fn paid_by_topup(connection: &Connection, topup: &str) -> StoreResult<Option<InvoiceRecord>> {
    let id: Option<String> = connection
        .prepare_cached("SELECT id FROM invoices WHERE card_topup_id = ?1 AND status = 'open'")?
        .query_row(params![topup], |row| row.get(0))
        .optional()?;
    id.map(|id| invoice(connection, &id)).transpose()
}

/// Pays `invoice` with the card top-up whose credit is `transaction` (same transaction).
pub fn pay_by_card(
    context: &WriteContext<'_>,
    invoice: &InvoiceRecord,
    topup: &str,
    transaction: &str,
) -> StoreResult<()> {
    mark_paid_row(context, invoice, InvoicePayment::Card, Some(topup), transaction).map(|_| ())
}
