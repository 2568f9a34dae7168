//! Invoices on PostgreSQL: closing periods, listing, and payment.
//!
//! A close takes the account's row lock first, then re-reads the account's period: of two
//! closers racing for one account, in any processes, the second finds the period moved on
//! and writes nothing. The number comes from a one-row counter updated in the same
//! transaction (a sequence would leave gaps on rollback); its row lock orders closes.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::invoice::{CLOSE_GRACE, MAX_INVOICE_LINES};
use tollgate_core::{
    AccountId, EventType, InvoiceLine, InvoicePayment, InvoicePeriod, InvoiceStatus, InvoiceTotals,
    JournalTransaction, Micros,
};

use super::ops::{self, Context, JournalWrite, load_for_write};
use super::{PgResult, events, rows};
use crate::decide::not_found;
use crate::invoices::{
    InvoiceDraft, PeriodChange, PeriodCharge, created_events, draft_invoice, invoice_event, mark_paid_audit,
    stored_number, transfer_description,
};
use crate::plan::net_terms;
use crate::{
    Idempotent, InvoiceRecord, InvoiceRecordLine, MAX_INVOICE_CLOSE_BATCH, MarkPaid, Page, PageRequest,
    StoreError,
};

const INVOICE_COLUMNS: &str = "id, number, account_id, period_start, period_end, subtotal_micros, \
     credit_applied_micros, brought_forward_micros, carried_forward_micros, amount_due_micros, status, due_at, \
     created_at, paid_at, paid_by, payment_reference, card_topup_id, card_attempts";

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(format!("corrupt {what} `{value}` in invoices"))
}

async fn invoice_record<C: GenericClient + Sync>(client: &C, row: &Row) -> PgResult<InvoiceRecord> {
    let id: String = row.try_get(0)?;
    let mut lines = Vec::new();
    for line in client
        .query_cached(
            "SELECT action, description, quantity, unit_price_micros, amount_micros FROM invoice_lines \
             WHERE invoice_id = $1 ORDER BY line",
            &[&id],
        )
        .await?
    {
        let action: String = line.try_get(0)?;
        let quantity: i64 = line.try_get(2)?;
        lines.push(InvoiceRecordLine {
            line: InvoiceLine {
                action: rows::action_id(&action)?,
                quantity: u64::try_from(quantity).map_err(|_| corrupt("quantity", &quantity.to_string()))?,
                unit_price: Micros::new(line.try_get(3)?),
                amount: Micros::new(line.try_get(4)?),
            },
            description: line.try_get(1)?,
        });
    }
    let status: String = row.try_get(10)?;
    let paid_by: Option<String> = row.try_get(14)?;
    let account: String = row.try_get(2)?;
    Ok(InvoiceRecord {
        number: stored_number(row.try_get(1)?)?,
        account: rows::account_id(&account)?,
        period: InvoicePeriod {
            start: from_unix_micros(row.try_get(3)?),
            end: from_unix_micros(row.try_get(4)?),
        },
        lines,
        totals: InvoiceTotals {
            subtotal: Micros::new(row.try_get(5)?),
            credit_applied: Micros::new(row.try_get(6)?),
            brought_forward: Micros::new(row.try_get(7)?),
            carried_forward: Micros::new(row.try_get(8)?),
            amount_due: Micros::new(row.try_get(9)?),
        },
        status: InvoiceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        due_at: from_unix_micros(row.try_get(11)?),
        created_at: from_unix_micros(row.try_get(12)?),
        paid_at: row.try_get::<_, Option<i64>>(13)?.map(from_unix_micros),
        paid_by: match paid_by {
            None => None,
            Some(code) => Some(InvoicePayment::parse(&code).ok_or_else(|| corrupt("payment", &code))?),
        },
        payment_reference: row.try_get(15)?,
        card_topup: row.try_get(16)?,
        card_attempts: u32::try_from(row.try_get::<_, i64>(17)?).unwrap_or(u32::MAX),
        id,
    })
}

/// One invoice.
pub async fn invoice<C: GenericClient + Sync>(client: &C, id: &str) -> PgResult<InvoiceRecord> {
    let row = client
        .query_opt_cached(
            &format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found("invoice", id))?;
    invoice_record(client, &row).await
}

/// An account's invoices, newest first.
pub async fn list_invoices<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    page: &PageRequest,
) -> PgResult<Page<InvoiceRecord>> {
    if client
        .query_opt_cached("SELECT 1 FROM accounts WHERE id = $1", &[&account.as_str()])
        .await?
        .is_none()
    {
        return Err(not_found("account", account).into());
    }
    let before: Option<i64> = match &page.starting_after {
        None => None,
        Some(cursor) => Some(
            client
                .query_opt_cached(
                    "SELECT number FROM invoices WHERE id = $1 AND account_id = $2",
                    &[cursor, &account.as_str()],
                )
                .await?
                .ok_or_else(|| StoreError::InvalidCursor(cursor.clone()))?
                .try_get(0)?,
        ),
    };
    let found = client
        .query_cached(
            &format!(
                "SELECT {INVOICE_COLUMNS} FROM invoices WHERE account_id = $1 AND ($2::BIGINT IS NULL OR number < $2) \
                 ORDER BY number DESC LIMIT $3"
            ),
            &[&account.as_str(), &before, &(i64::from(page.limit) + 1)],
        )
        .await?;
    let mut data = Vec::with_capacity(found.len());
    for row in &found {
        data.push(invoice_record(client, row).await?);
    }
    let has_more = data.len() > page.limit as usize;
    data.truncate(page.limit as usize);
    Ok(Page { data, has_more })
}

/// Applies a plan's change of billing mode to the account's invoice period (the caller
/// holds the account's lock).
pub async fn change_period<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    change: PeriodChange,
) -> PgResult<()> {
    let (start, end) = match change {
        PeriodChange::Keep => return Ok(()),
        PeriodChange::Start(period) => (
            Some(to_unix_micros(period.start)),
            Some(to_unix_micros(period.end)),
        ),
        PeriodChange::Stop => (None, None),
    };
    client
        .execute_cached(
            "UPDATE accounts SET invoice_period_start = $2, invoice_period_end = $3 WHERE id = $1",
            &[&account.as_str(), &start, &end],
        )
        .await?;
    Ok(())
}

/// Accounts whose invoice period is due to close, oldest first.
pub async fn due_periods<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    limit: usize,
) -> PgResult<Vec<AccountId>> {
    let limit = i64::try_from(limit.min(MAX_INVOICE_CLOSE_BATCH)).unwrap_or(0);
    client
        .query_cached(
            "SELECT id FROM accounts WHERE invoice_period_end IS NOT NULL AND invoice_period_end <= $1 \
             ORDER BY invoice_period_end, id LIMIT $2",
            &[&to_unix_micros(context.now - CLOSE_GRACE), &limit],
        )
        .await?
        .iter()
        .map(|row| Ok(rows::account_id(&row.try_get::<_, String>(0)?)?))
        .collect()
}

/// Closes the account's current invoice period if it is (still) due: writes its invoice
/// (if any) and moves the period on, together.
pub async fn close_period<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account_id: &AccountId,
) -> PgResult<Option<InvoiceRecord>> {
    if !rows::lock_account(client, account_id.as_str()).await? {
        return Ok(None);
    }
    let account = load_for_write(client, context, account_id).await?;
    rows::save_account(client, &account).await?;
    let row = client
        .query_one_cached(
            "SELECT invoice_period_start, invoice_period_end, net_terms_days FROM accounts WHERE id = $1",
            &[&account_id.as_str()],
        )
        .await?;
    let (Some(start), Some(end)) = (
        row.try_get::<_, Option<i64>>(0)?,
        row.try_get::<_, Option<i64>>(1)?,
    ) else {
        return Ok(None);
    };
    let terms: Option<i64> = row.try_get(2)?;
    let period = InvoicePeriod {
        start: from_unix_micros(start),
        end: from_unix_micros(end),
    };
    if !period.may_close(context.now) {
        return Ok(None);
    }
    let mut charges = Vec::new();
    for charge in client
        .query_cached(
            "SELECT action, unit_price_micros, SUM(quantity)::BIGINT, SUM(amount_micros)::BIGINT FROM usage_records \
             WHERE account_id = $1 AND created_at >= $2 AND created_at < $3 \
             GROUP BY action, unit_price_micros ORDER BY action, unit_price_micros LIMIT $4",
            &[&account_id.as_str(), &start, &end, &(MAX_INVOICE_LINES as i64)],
        )
        .await?
    {
        let action: String = charge.try_get(0)?;
        let quantity: i64 = charge.try_get(2)?;
        charges.push(PeriodCharge {
            action: rows::action_id(&action)?,
            quantity: u64::try_from(quantity).map_err(|_| StoreError::Overflow("invoice quantity"))?,
            unit_price: Micros::new(charge.try_get(1)?),
            amount: Micros::new(charge.try_get(3)?),
        });
    }
    let open_due: i64 = client
        .query_one_cached(
            "SELECT COALESCE(SUM(amount_due_micros), 0)::BIGINT FROM invoices \
             WHERE account_id = $1 AND status = 'open'",
            &[&account_id.as_str()],
        )
        .await?
        .try_get(0)?;
    let balance_at_end: i64 = match client
        .query_opt_cached(
            "SELECT available_after_micros + held_after_micros FROM journal_transactions \
             WHERE account_id = $1 AND created_at < $2 ORDER BY sequence DESC LIMIT 1",
            &[&account_id.as_str(), &end],
        )
        .await?
    {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    let draft = draft_invoice(
        &context.rules.price_book,
        Micros::new(balance_at_end),
        charges,
        Micros::new(open_due),
        net_terms(terms),
        context.now,
    )?;
    let next = period.next(account.record.anchor());
    client
        .execute_cached(
            "UPDATE accounts SET invoice_period_start = $2, invoice_period_end = $3 WHERE id = $1",
            &[
                &account_id.as_str(),
                &to_unix_micros(next.start),
                &to_unix_micros(next.end),
            ],
        )
        .await?;
    let Some(draft) = draft else {
        return Ok(None);
    };
    let written = write_invoice(client, context, account_id, period, draft).await?;
    events::insert_events(client, context, &created_events(&written)).await?;
    Ok(Some(written))
}

async fn write_invoice<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    account: &AccountId,
    period: InvoicePeriod,
    draft: InvoiceDraft,
) -> PgResult<InvoiceRecord> {
    let number: i64 = client
        .query_one_cached(
            "UPDATE invoice_numbers SET last_number = last_number + 1 RETURNING last_number",
            &[],
        )
        .await?
        .try_get(0)?;
    let now = to_unix_micros(context.now);
    // Nothing due (credit covered it): paid at once, by credit.
    let covered = draft.totals.amount_due.is_zero();
    let totals = draft.totals;
    client
        .execute_cached(
            "INSERT INTO invoices (id, number, account_id, period_start, period_end, subtotal_micros, \
             credit_applied_micros, brought_forward_micros, carried_forward_micros, amount_due_micros, status, \
             due_at, created_at, paid_at, paid_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &[
                &draft.id,
                &number,
                &account.as_str(),
                &to_unix_micros(period.start),
                &to_unix_micros(period.end),
                &totals.subtotal.get(),
                &totals.credit_applied.get(),
                &totals.brought_forward.get(),
                &totals.carried_forward.get(),
                &totals.amount_due.get(),
                &(if covered { "paid" } else { "open" }),
                &to_unix_micros(draft.due_at),
                &now,
                &covered.then_some(now),
                &covered.then_some(InvoicePayment::Credit.code()),
            ],
        )
        .await?;
    for (index, line) in draft.lines.iter().enumerate() {
        client
            .execute_cached(
                "INSERT INTO invoice_lines (invoice_id, line, action, description, quantity, unit_price_micros, \
                 amount_micros) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &draft.id,
                    &(index as i64),
                    &line.line.action.as_str(),
                    &line.description,
                    &i64::try_from(line.line.quantity).map_err(|_| StoreError::Overflow("invoice quantity"))?,
                    &line.line.unit_price.get(),
                    &line.line.amount.get(),
                ],
            )
            .await?;
    }
    refresh_due(client, account).await?;
    invoice(client, &draft.id).await
}

/// Keeps the account's `invoice_due_at` at its oldest open invoice's due date.
async fn refresh_due<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<()> {
    client
        .execute_cached(
            "UPDATE accounts SET invoice_due_at = \
             (SELECT MIN(due_at) FROM invoices WHERE account_id = $1 AND status = 'open') WHERE id = $1",
            &[&account.as_str()],
        )
        .await?;
    Ok(())
}

async fn mark_paid_row<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    invoice: &InvoiceRecord,
    method: InvoicePayment,
    reference: Option<&str>,
    transaction: &str,
) -> PgResult<InvoiceRecord> {
    client
        .execute_cached(
            "UPDATE invoices SET status = 'paid', paid_at = $2, paid_by = $3, payment_reference = $4, \
             paid_transaction_id = $5 WHERE id = $1 AND status = 'open'",
            &[
                &invoice.id,
                &to_unix_micros(context.now),
                &method.code(),
                &reference,
                &transaction,
            ],
        )
        .await?;
    refresh_due(client, &invoice.account).await?;
    let paid = self::invoice(client, &invoice.id).await?;
    events::insert_events(client, context, &[invoice_event(EventType::InvoicePaid, &paid)]).await?;
    Ok(paid)
}

/// Records an invoice paid by bank transfer, under the account's lock.
pub async fn mark_paid<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    command: &MarkPaid,
) -> PgResult<Idempotent<InvoiceRecord>> {
    let unlocked = invoice(client, &command.invoice).await?;
    rows::lock_account(client, unlocked.account.as_str()).await?;
    // Read again under the lock: a concurrent payment may have won.
    let found = invoice(client, &command.invoice).await?;
    match found.status {
        InvoiceStatus::Paid => {
            return Ok(Idempotent {
                value: found,
                replayed: true,
            });
        }
        InvoiceStatus::Void => {
            return Err(StoreError::Conflict(format!("invoice {} is void", found.number)).into());
        }
        InvoiceStatus::Open => {}
    }
    let mut account = load_for_write(client, context, &found.account).await?;
    let line = ops::append(
        client,
        context,
        &mut account,
        &JournalTransaction::invoice_payment(&found.account, found.totals.amount_due),
        JournalWrite {
            description: transfer_description(found.number, command.reference.as_deref()),
            reference: Some(&found.id),
            idempotency: None,
        },
    )
    .await?;
    rows::save_account(client, &account).await?;
    let paid = mark_paid_row(
        client,
        context,
        &found,
        InvoicePayment::BankTransfer,
        command.reference.as_deref(),
        &line.id,
    )
    .await?;
    ops::audit(
        client,
        context,
        &command.actor,
        "invoice.marked_paid",
        &found.account,
        Some(format!("status=open invoice={}", found.id)),
        Some(mark_paid_audit(&paid, command.reference.as_deref())),
    )
    .await?;
    Ok(Idempotent {
        value: paid,
        replayed: false,
    })
}

/// Makes a card top-up the payment in flight of an open invoice, under the invoice's row lock.
pub async fn attach_topup<C: GenericClient + Sync>(
    client: &C,
    invoice_id: &str,
    topup: &str,
    attempt: u32,
) -> PgResult<InvoiceRecord> {
    if client
        .query_opt_cached("SELECT 1 FROM invoices WHERE id = $1 FOR UPDATE", &[&invoice_id])
        .await?
        .is_none()
    {
        return Err(not_found("invoice", invoice_id).into());
    }
    let found = invoice(client, invoice_id).await?;
    if found.status != InvoiceStatus::Open {
        return Err(
            StoreError::Conflict(format!("invoice {} is {}", found.number, found.status.code())).into(),
        );
    }
    if let Some(current) = &found.card_topup
        && current != topup
        && client
            .query_opt_cached(
                "SELECT 1 FROM topups WHERE id = $1 AND status IN ('pending', 'requires_payment_method', 'requires_action')",
                &[current],
            )
            .await?
            .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "a card payment of invoice {} is still in flight",
            found.number
        ))
        .into());
    }
    client
        .execute_cached(
            "UPDATE invoices SET card_topup_id = $2, card_attempts = GREATEST(card_attempts, $3) WHERE id = $1",
            &[&invoice_id, &topup, &i64::from(attempt)],
        )
        .await?;
    invoice(client, invoice_id).await
}

/// The open invoice a card top-up pays, if any.
pub async fn paid_by_topup<C: GenericClient + Sync>(
    client: &C,
    topup: &str,
) -> PgResult<Option<InvoiceRecord>> {
    match client
        .query_opt_cached(
            "SELECT id FROM invoices WHERE card_topup_id = $1 AND status = 'open'",
            &[&topup],
        )
        .await?
    {
        None => Ok(None),
        Some(row) => Ok(Some(invoice(client, &row.try_get::<_, String>(0)?).await?)),
    }
}

/// Pays `invoice` with the card top-up whose credit is `transaction` (same transaction,
/// under the account's lock).
pub async fn pay_by_card<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    invoice: &InvoiceRecord,
    topup: &str,
    transaction: &str,
) -> PgResult<()> {
    mark_paid_row(
        client,
        context,
        invoice,
        InvoicePayment::Card,
        Some(topup),
        transaction,
    )
    .await?;
    Ok(())
}
