//! Invoice closing and payment, decided the same way by both backends. Each backend loads
//! the account under its lock, asks here what to write, and writes it in one transaction.

use tollgate_core::invoice::{due_at, is_overdue};
use tollgate_core::plan::DEFAULT_NET_TERMS_DAYS;
use tollgate_core::{
    ActionId, BillingMode, EventType, InvoiceLine, InvoiceNumber, InvoicePeriod, InvoiceTotals, Micros,
    PlanCommand, PriceBook, Timestamp, invoice_lines,
};

use crate::events::PendingEvent;
use crate::{AccountRecord, InvoiceRecord, InvoiceRecordLine, StoreError, StoreResult, new_id};

/// What a plan change does to the account's invoice period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeriodChange {
    /// Nothing: still the same billing mode.
    Keep,
    /// Invoicing starts now: the first period runs to the end of the current cycle.
    Start(InvoicePeriod),
    /// Back to prepaid: no period is open any more (the plan check made sure nothing is owed).
    Stop,
}

/// How `command` changes the invoice period of `account` at `now`.
pub(crate) fn period_change(account: &AccountRecord, command: &PlanCommand, now: Timestamp) -> PeriodChange {
    match (account.mode, command.mode) {
        (BillingMode::Prepaid, BillingMode::Invoice { .. }) => {
            PeriodChange::Start(InvoicePeriod::starting(account.anchor(), now))
        }
        (BillingMode::Invoice { .. }, BillingMode::Prepaid) => PeriodChange::Stop,
        _ => PeriodChange::Keep,
    }
}

/// One usage charge of the period, as stored.
pub(crate) struct PeriodCharge {
    pub action: ActionId,
    pub quantity: u64,
    pub unit_price: Micros,
    pub amount: Micros,
}

/// An invoice to write, with its number still to be drawn.
pub(crate) struct InvoiceDraft {
    pub id: String,
    pub lines: Vec<InvoiceRecordLine>,
    pub totals: InvoiceTotals,
    pub due_at: Timestamp,
}

/// The invoice that closes a period with `charges`, for an account whose balance (available
/// plus held) was `balance_at_end` when the period ended, or `None` when the period had no
/// usage and nothing is due (no invoice is written; the period still closes). The balance at
/// the period's end, not now: usage after it is the next invoice's.
pub(crate) fn draft_invoice(
    book: &PriceBook,
    balance_at_end: Micros,
    charges: Vec<PeriodCharge>,
    open_due: Micros,
    net_terms_days: Option<u16>,
    now: Timestamp,
) -> StoreResult<Option<InvoiceDraft>> {
    let lines = invoice_lines(
        charges
            .into_iter()
            .map(|charge| (charge.action, charge.quantity, charge.unit_price, charge.amount)),
    )
    .map_err(|_| StoreError::Overflow("invoice total"))?;
    let subtotal = lines
        .iter()
        .try_fold(Micros::ZERO, |sum, line| sum.checked_add(line.amount))
        .map_err(|_| StoreError::Overflow("invoice total"))?;
    let totals = InvoiceTotals::compute(subtotal, balance_at_end, open_due)
        .map_err(|_| StoreError::Overflow("invoice total"))?;
    if lines.is_empty() && totals.amount_due.is_zero() {
        return Ok(None);
    }
    let lines = lines
        .into_iter()
        .map(|line: InvoiceLine| InvoiceRecordLine {
            description: book
                .action(&line.action)
                .map(|spec| spec.name.clone())
                .unwrap_or_else(|| line.action.to_string()),
            line,
        })
        .collect();
    Ok(Some(InvoiceDraft {
        id: new_id("inv"),
        lines,
        totals,
        due_at: due_at(now, net_terms_days.unwrap_or(DEFAULT_NET_TERMS_DAYS)),
    }))
}

/// `invoice.created`, and `invoice.paid` too when nothing was due.
pub(crate) fn created_events(invoice: &InvoiceRecord) -> Vec<PendingEvent> {
    let mut events = vec![invoice_event(EventType::InvoiceCreated, invoice)];
    if invoice.paid_at.is_some() {
        events.push(invoice_event(EventType::InvoicePaid, invoice));
    }
    events
}

/// An invoice event: the invoice's id, amount due and number.
pub(crate) fn invoice_event(kind: EventType, invoice: &InvoiceRecord) -> PendingEvent {
    PendingEvent {
        kind,
        account: invoice.account.clone(),
        reference: Some(invoice.id.clone()),
        amount: Some(invoice.totals.amount_due),
        balance: None,
        detail: Some(invoice.number.to_string()),
    }
}

/// The journal line of a bank transfer.
pub(crate) fn transfer_description(number: InvoiceNumber, reference: Option<&str>) -> String {
    match reference {
        Some(reference) => format!("Invoice {number} paid by bank transfer ({reference})"),
        None => format!("Invoice {number} paid by bank transfer"),
    }
}

/// The journal line of a card payment of an invoice.
pub(crate) fn card_description(number: InvoiceNumber) -> String {
    format!("Invoice {number} paid by card")
}

/// Refuses usage of an account with an invoice unpaid past its net terms.
pub(crate) fn check_not_overdue(account: &AccountRecord, now: Timestamp) -> StoreResult<()> {
    match account.invoice_due_at {
        Some(due) if is_overdue(Some(due), now) => Err(StoreError::InvoiceOverdue { due_at: due }),
        _ => Ok(()),
    }
}

/// The stored number of an invoice, read back.
pub(crate) fn stored_number(number: i64) -> StoreResult<InvoiceNumber> {
    u64::try_from(number)
        .ok()
        .and_then(InvoiceNumber::new)
        .ok_or_else(|| StoreError::Database(format!("corrupt invoice number {number}")))
}

/// The audit text of an invoice marked paid.
pub(crate) fn mark_paid_audit(invoice: &InvoiceRecord, reference: Option<&str>) -> String {
    format!(
        "invoice={} number={} amount={} reference={:?}",
        invoice.id, invoice.number, invoice.totals.amount_due, reference
    )
}
