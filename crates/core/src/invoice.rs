//! Invoice billing: which period an invoice covers, what it bills, what is due and when.
//!
//! An invoice account's usage debits its balance (down to `-credit_limit`); at each cycle
//! end the period's usage is closed into one invoice. The invoice lists the usage, but asks
//! for what the account owes and no other open invoice asks for: prepaid funds and grants
//! already cover part of the usage (credit applied), debt from before the period is brought
//! forward, and an unpaid earlier invoice is never billed twice.

use std::fmt;

use time::Duration;

use crate::cycle::{BillingCycle, CycleAnchor, Timestamp};
use crate::ledger::{JournalTransaction, LedgerAccount, TransactionKind};
use crate::money::{Micros, MoneyOverflow};
use crate::{AccountId, ActionId};

/// How long after its period ends an invoice is closed. Longer than any store operation
/// may run (its timeout), so every charge timed inside the period has committed or failed
/// by then, whichever process made it.
pub const CLOSE_GRACE: Duration = Duration::seconds(60);

/// Most usage lines one invoice lists (an action at one unit price is one line).
pub const MAX_INVOICE_LINES: usize = 1_000;

/// The gapless sequence number of an invoice, shown as `INV-000042`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InvoiceNumber(u64);

impl InvoiceNumber {
    /// The first invoice's number.
    pub const FIRST: InvoiceNumber = InvoiceNumber(1);

    /// A stored number; `None` for zero, which no invoice has.
    pub fn new(number: u64) -> Option<InvoiceNumber> {
        (number > 0).then_some(InvoiceNumber(number))
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The number after this one.
    pub fn next(self) -> InvoiceNumber {
        InvoiceNumber(self.0.saturating_add(1))
    }
}

impl fmt::Display for InvoiceNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "INV-{:06}", self.0)
    }
}

/// Where an invoice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoiceStatus {
    /// Waiting for payment.
    Open,
    /// Paid (by card, bank transfer, or covered by credit).
    Paid,
    /// Cancelled by the operator; nothing is owed on it.
    Void,
}

impl InvoiceStatus {
    /// Stable snake_case code, as in the API.
    pub const fn code(self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }

    /// Parses [`InvoiceStatus::code`].
    pub fn parse(code: &str) -> Option<InvoiceStatus> {
        [InvoiceStatus::Open, InvoiceStatus::Paid, InvoiceStatus::Void]
            .into_iter()
            .find(|status| status.code() == code)
    }
}

/// How an invoice was paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoicePayment {
    /// Charged to the saved card.
    Card,
    /// Paid outside Tollgate (a bank transfer) and marked paid by the operator.
    BankTransfer,
    /// Nothing was due: the account's credit covered the usage.
    Credit,
}

impl InvoicePayment {
    /// Stable snake_case code.
    pub const fn code(self) -> &'static str {
        match self {
            InvoicePayment::Card => "card",
            InvoicePayment::BankTransfer => "bank_transfer",
            InvoicePayment::Credit => "credit",
        }
    }

    /// Parses [`InvoicePayment::code`].
    pub fn parse(code: &str) -> Option<InvoicePayment> {
        [
            InvoicePayment::Card,
            InvoicePayment::BankTransfer,
            InvoicePayment::Credit,
        ]
        .into_iter()
        .find(|method| method.code() == code)
    }
}

/// The period an invoice covers: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvoicePeriod {
    /// First instant billed.
    pub start: Timestamp,
    /// First instant not billed (a cycle boundary).
    pub end: Timestamp,
}

impl InvoicePeriod {
    /// The period that starts at `start` (when invoicing was switched on, or where the last
    /// invoice ended) and runs to the end of the billing cycle containing it.
    pub fn starting(anchor: CycleAnchor, start: Timestamp) -> InvoicePeriod {
        InvoicePeriod {
            start,
            end: BillingCycle::containing(anchor, start).end,
        }
    }

    /// The period after this one: the whole next cycle.
    pub fn next(self, anchor: CycleAnchor) -> InvoicePeriod {
        InvoicePeriod::starting(anchor, self.end)
    }

    /// Whether the invoice for this period may be closed at `now`.
    pub fn may_close(self, now: Timestamp) -> bool {
        self.end + CLOSE_GRACE <= now
    }
}

/// One line of an invoice: the usage of one action at one unit price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceLine {
    /// The action.
    pub action: ActionId,
    /// Units used at this price.
    pub quantity: u64,
    /// The price per unit charged.
    pub unit_price: Micros,
    /// What was charged for them: the sum of the charges (each rounded as it was charged).
    pub amount: Micros,
}

/// What an invoice adds up to.
///
/// `subtotal - credit_applied + brought_forward = amount_due + carried_forward`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvoiceTotals {
    /// The usage of the period: the sum of the lines.
    pub subtotal: Micros,
    /// Usage already paid for from the account's credit (prepaid funds, grants).
    pub credit_applied: Micros,
    /// Owed from before the period and not asked for by another open invoice (a refund
    /// taken back, a fraction of a cent carried from the last invoice).
    pub brought_forward: Micros,
    /// Less than a cent left of what is owed, carried to the next invoice (cards are
    /// charged in whole cents).
    pub carried_forward: Micros,
    /// What the customer is asked to pay: whole cents.
    pub amount_due: Micros,
}

impl InvoiceTotals {
    /// The totals of an invoice whose lines sum to `subtotal`, for an account whose available
    /// balance is `available` at the close and whose other open invoices ask for `open_due`.
    ///
    /// The account owes `-available` (when negative); of that, `open_due` is asked for
    /// already. The new invoice asks for all the rest, rounded down to whole cents, so that
    /// after every close less than a cent is owed that no open invoice asks for.
    pub fn compute(
        subtotal: Micros,
        available: Micros,
        open_due: Micros,
    ) -> Result<InvoiceTotals, MoneyOverflow> {
        debug_assert!(!subtotal.is_negative() && !open_due.is_negative());
        let owed = available.checked_neg()?.max(Micros::ZERO);
        let billable = owed.checked_sub(open_due)?.max(Micros::ZERO);
        let amount_due = floor_to_cent(billable);
        let totals = InvoiceTotals {
            subtotal,
            credit_applied: subtotal.checked_sub(billable)?.max(Micros::ZERO),
            brought_forward: billable.checked_sub(subtotal)?.max(Micros::ZERO),
            carried_forward: billable.checked_sub(amount_due)?,
            amount_due,
        };
        debug_assert_eq!(
            subtotal
                .checked_sub(totals.credit_applied)
                .and_then(|sum| sum.checked_add(totals.brought_forward)),
            totals.amount_due.checked_add(totals.carried_forward)
        );
        Ok(totals)
    }
}

/// Rounds a non-negative amount down to whole cents.
fn floor_to_cent(amount: Micros) -> Micros {
    const MICROS_PER_CENT: i64 = 10_000;
    Micros::new(amount.get() - amount.get().rem_euclid(MICROS_PER_CENT))
}

/// Sums usage charges into invoice lines: one per action and unit price, in action then
/// price order; an error when a total does not fit in 64 bits.
pub fn invoice_lines<I>(charges: I) -> Result<Vec<InvoiceLine>, MoneyOverflow>
where
    I: IntoIterator<Item = (ActionId, u64, Micros, Micros)>,
{
    let mut lines: std::collections::BTreeMap<(ActionId, Micros), (u64, Micros)> =
        std::collections::BTreeMap::new();
    for (action, quantity, unit_price, amount) in charges {
        let entry = lines.entry((action, unit_price)).or_insert((0, Micros::ZERO));
        entry.0 = entry.0.checked_add(quantity).ok_or(MoneyOverflow)?;
        entry.1 = entry.1.checked_add(amount)?;
    }
    Ok(lines
        .into_iter()
        .map(|((action, unit_price), (quantity, amount))| InvoiceLine {
            action,
            quantity,
            unit_price,
            amount,
        })
        .collect())
}

/// When an invoice closed at `closed_at` falls due.
pub fn due_at(closed_at: Timestamp, net_terms_days: u16) -> Timestamp {
    closed_at + Duration::days(i64::from(net_terms_days))
}

/// Whether an account whose oldest open invoice falls due at `due` is blocked at `now`:
/// past its net terms an unpaid invoice stops usage like an empty balance.
pub fn is_overdue(due: Option<Timestamp>, now: Timestamp) -> bool {
    due.is_some_and(|due| due <= now)
}

impl JournalTransaction {
    /// An invoice paid outside the card processor (bank transfer): invoice payments → available.
    pub fn invoice_payment(account: &AccountId, amount: Micros) -> JournalTransaction {
        debug_assert!(amount.is_positive());
        JournalTransaction::new(
            TransactionKind::InvoicePayment,
            account,
            vec![(
                LedgerAccount::InvoicePayments,
                LedgerAccount::Available(account.clone()),
                amount,
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn micros(value: i64) -> Micros {
        Micros::new(value)
    }

    #[test]
    fn numbers_read_as_invoice_numbers() {
        assert_eq!(InvoiceNumber::FIRST.to_string(), "INV-000001");
        assert_eq!(InvoiceNumber::new(1_234_567).unwrap().to_string(), "INV-1234567");
        assert_eq!(InvoiceNumber::new(0), None);
        assert_eq!(InvoiceNumber::FIRST.next().get(), 2);
    }

    #[test]
    fn the_first_period_runs_to_the_cycle_end_and_the_next_is_a_whole_cycle() {
        let anchor = CycleAnchor::from_created_at(datetime!(2026-10-15 09:00 UTC));
        let switched = datetime!(2026-11-20 12:00 UTC);
        let first = InvoicePeriod::starting(anchor, switched);
        assert_eq!(first.start, switched);
        assert_eq!(first.end, datetime!(2026-12-15 00:00 UTC));
        let second = first.next(anchor);
        assert_eq!(second.start, first.end);
        assert_eq!(second.end, datetime!(2027-01-15 00:00 UTC));
        assert!(!first.may_close(first.end));
        assert!(!first.may_close(first.end + Duration::seconds(59)));
        assert!(first.may_close(first.end + CLOSE_GRACE));
    }

    #[test]
    fn totals_ask_only_for_what_is_owed_and_not_asked_yet() {
        // (subtotal, available, open due) → (credit applied, brought forward, carried, due).
        let cases = [
            // A pure invoice account: everything used is due.
            (25_000_000, -25_000_000, 0, (0, 0, 0, 25_000_000)),
            // Prepaid funds covered $10 of the $25.
            (25_000_000, -15_000_000, 0, (10_000_000, 0, 0, 15_000_000)),
            // Still in credit: nothing due.
            (25_000_000, 5_000_000, 0, (25_000_000, 0, 0, 0)),
            // Last month's $40 is unpaid and asked for already.
            (25_000_000, -65_000_000, 40_000_000, (0, 0, 0, 25_000_000)),
            // A grant paid part of last month's invoice: this one asks for the rest of the debt.
            (
                25_000_000,
                -55_000_000,
                40_000_000,
                (10_000_000, 0, 0, 15_000_000),
            ),
            // A refund taken back after the last invoice: brought forward.
            (25_000_000, -30_000_000, 0, (0, 5_000_000, 0, 30_000_000)),
            // Sub-cent usage: the fraction is carried to the next invoice.
            (12_345_678, -12_345_678, 0, (0, 0, 5_678, 12_340_000)),
            (9_999, -9_999, 0, (0, 0, 9_999, 0)),
            (0, 0, 0, (0, 0, 0, 0)),
        ];
        for (subtotal, available, open_due, (credit, brought, carried, due)) in cases {
            let totals =
                InvoiceTotals::compute(micros(subtotal), micros(available), micros(open_due)).unwrap();
            assert_eq!(
                (
                    totals.credit_applied,
                    totals.brought_forward,
                    totals.carried_forward,
                    totals.amount_due
                ),
                (micros(credit), micros(brought), micros(carried), micros(due)),
                "subtotal {subtotal} available {available} open {open_due}"
            );
        }
    }

    #[test]
    fn lines_group_by_action_and_price() {
        let finder = ActionId::parse("email_finder").unwrap();
        let export = ActionId::parse("export").unwrap();
        let lines = invoice_lines([
            (finder.clone(), 3, micros(10_000), micros(30_000)),
            (export.clone(), 1, micros(50_000), micros(50_000)),
            (finder.clone(), 2, micros(10_000), micros(20_000)),
            (finder.clone(), 5, micros(8_000), micros(40_000)),
        ])
        .unwrap();
        assert_eq!(
            lines,
            vec![
                InvoiceLine {
                    action: finder.clone(),
                    quantity: 5,
                    unit_price: micros(8_000),
                    amount: micros(40_000)
                },
                InvoiceLine {
                    action: finder,
                    quantity: 5,
                    unit_price: micros(10_000),
                    amount: micros(50_000)
                },
                InvoiceLine {
                    action: export,
                    quantity: 1,
                    unit_price: micros(50_000),
                    amount: micros(50_000)
                },
            ]
        );
    }

    #[test]
    fn overdue_only_past_the_due_date() {
        let due = datetime!(2026-12-31 00:00 UTC);
        assert!(!is_overdue(None, due));
        assert!(!is_overdue(Some(due), due - Duration::seconds(1)));
        assert!(is_overdue(Some(due), due));
        assert_eq!(due_at(datetime!(2026-12-01 00:00 UTC), 30), due);
    }

    proptest! {
        /// Over any run of periods (usage, grants, refunds taken back, payments) an invoice
        /// asks only for what is owed and no open invoice asks for, and after every close
        /// less than a cent is owed that no open invoice asks for.
        #[test]
        fn invoices_ask_for_every_debt_once(
            months in proptest::collection::vec((0i64..50_000_000, -5_000_000i64..30_000_000, 0usize..3), 1..24),
            start in -20_000_000i64..20_000_000,
        ) {
            let mut available = start;
            let mut open: Vec<i64> = Vec::new();
            for (usage, credit, paid) in months {
                available = available - usage + credit;
                let open_due: i64 = open.iter().sum();
                let totals = InvoiceTotals::compute(micros(usage), micros(available), micros(open_due)).unwrap();
                let due = totals.amount_due.get();
                prop_assert!(totals.amount_due.is_whole_cents());
                prop_assert!(due >= 0);
                let owed = (-available).max(0);
                prop_assert!(open_due + due <= owed.max(open_due));
                prop_assert!(owed - (open_due + due) < 10_000);
                if due > 0 {
                    open.push(due);
                }
                // Pay the oldest `paid` invoices.
                for amount in open.drain(..paid.min(open.len())) {
                    available += amount;
                }
            }
        }
    }
}
