//! `tollgate ledger verify` on SQLite: gathers the facts inside one read
//! snapshot; the rules live in `crate::invariants`.

use rusqlite::{Connection, params};

use super::StoreRules;
use crate::invariants::{
    AccountFacts, AutoTopupFacts, INVOICE_DUE_SQL, INVOICE_FACTS_SQL, INVOICE_NUMBERS_SQL, InvoiceFacts,
    JournalFacts, LedgerCheck, RechargeRuleFacts, TopupFacts, UsageFacts,
};
use crate::{LedgerReport, StoreResult};

/// Checks every invariant; problems are collected, never fixed. The caller (the store's
/// read path) runs it in one transaction: one consistent WAL snapshot for every query.
pub fn verify(connection: &Connection, _rules: &StoreRules) -> StoreResult<LedgerReport> {
    debug_assert!(!connection.is_autocommit(), "verify needs one snapshot");
    verify_in_snapshot(connection)
}

fn verify_in_snapshot(connection: &Connection) -> StoreResult<LedgerReport> {
    let mut check = LedgerCheck::default();

    let mut statement = connection.prepare(
        "SELECT code, SUM(delta) FROM ( \
             SELECT to_account AS code, amount_micros AS delta FROM transfers \
             UNION ALL SELECT from_account, -amount_micros FROM transfers) GROUP BY code",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        check.transfer_sum(&row.get::<_, String>(0)?, row.get(1)?);
    }

    let mut statement = connection.prepare(
        "SELECT account_id, SUM(amount_micros) FROM holds WHERE status = 'active' GROUP BY account_id",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        check.active_holds(row.get(0)?, row.get(1)?);
    }

    let mut statement = connection.prepare(
        "SELECT transaction_id, account_id, quantity, unit_price_micros, unit_list_price_micros, amount_micros, \
         list_amount_micros, savings_micros FROM usage_records",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        check.usage(UsageFacts {
            id: row.get(0)?,
            account: row.get(1)?,
            quantity: row.get(2)?,
            unit_price: row.get(3)?,
            unit_list_price: row.get(4)?,
            amount: row.get(5)?,
            list_amount: row.get(6)?,
            savings: row.get(7)?,
        });
    }

    let mut statement = connection.prepare(
        "SELECT j.id, j.account_id, j.sequence, j.amount_micros, j.available_amount_micros, \
                j.available_after_micros, j.held_after_micros, \
                COALESCE(SUM(CASE WHEN t.to_account = 'available:' || j.account_id THEN t.amount_micros \
                                  WHEN t.from_account = 'available:' || j.account_id THEN -t.amount_micros ELSE 0 END), 0), \
                COALESCE(SUM(CASE WHEN t.to_account = 'held:' || j.account_id THEN t.amount_micros \
                                  WHEN t.from_account = 'held:' || j.account_id THEN -t.amount_micros ELSE 0 END), 0) \
         FROM journal_transactions j LEFT JOIN transfers t ON t.transaction_id = j.id \
         GROUP BY j.id ORDER BY j.account_id, j.sequence",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        check.journal(JournalFacts {
            id: row.get(0)?,
            account: row.get(1)?,
            sequence: row.get(2)?,
            amount: row.get(3)?,
            available_amount: row.get(4)?,
            available_after: row.get(5)?,
            held_after: row.get(6)?,
            available_delta: row.get(7)?,
            held_delta: row.get(8)?,
        });
    }

    let mut statement = connection.prepare(
        "SELECT id, billing_mode, credit_limit_micros, available_micros, held_micros, journal_sequence, \
         lifetime_spend_micros, lifetime_savings_micros, cycle_spend_micros, \
         (SELECT COALESCE(SUM(u.amount_micros), 0) FROM usage_records u \
          WHERE u.account_id = accounts.id AND u.created_at >= accounts.cycle_start), \
         attention_since IS NOT NULL \
         FROM accounts",
    )?;
    let mut rows = statement.query(params![])?;
    while let Some(row) = rows.next()? {
        check.account(AccountFacts {
            id: row.get(0)?,
            billing_mode: row.get(1)?,
            credit_limit: row.get(2)?,
            available: row.get(3)?,
            held: row.get(4)?,
            journal_sequence: row.get(5)?,
            lifetime_spend: row.get(6)?,
            lifetime_savings: row.get(7)?,
            cycle_spend: row.get(8)?,
            cycle_usage: row.get(9)?,
            flagged: row.get(10)?,
        });
    }
    let mut statement = connection.prepare(
        "SELECT t.id, t.status, t.amount_micros, j.available_amount_micros, t.refunded_micros, \
         (SELECT COALESCE(SUM(r.amount_micros), 0) FROM topup_refunds r WHERE r.topup_id = t.id AND r.state <> 'failed'), \
         t.disputed_micros, \
         (SELECT COALESCE(SUM(COALESCE(-taken.available_amount_micros, 0) - COALESCE(returned.available_amount_micros, 0)), 0) \
          FROM topup_disputes d \
          LEFT JOIN journal_transactions taken ON taken.id = d.taken_transaction_id \
          LEFT JOIN journal_transactions returned ON returned.id = d.returned_transaction_id \
          WHERE d.topup_id = t.id) \
         FROM topups t LEFT JOIN journal_transactions j ON j.id = t.credited_transaction_id",
    )?;
    let mut rows = statement.query(params![])?;
    while let Some(row) = rows.next()? {
        check.topup(TopupFacts {
            id: row.get(0)?,
            status: row.get(1)?,
            amount: row.get(2)?,
            credited_amount: row.get(3)?,
            refunded_recorded: row.get(4)?,
            refunded_by_refunds: row.get(5)?,
            disputed_recorded: row.get(6)?,
            disputed_by_disputes: row.get(7)?,
        });
    }
    let (journal_credits, credited_topups): (i64, i64) = connection.query_row(
        "SELECT (SELECT COUNT(*) FROM journal_transactions WHERE kind IN ('topup', 'auto_recharge')), \
                (SELECT COUNT(*) FROM topups WHERE credited_transaction_id IS NOT NULL)",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    check.card_credits(journal_credits, credited_topups);
    let mut statement = connection
        .prepare("SELECT account_id, in_flight_sequence, last_sequence FROM auto_recharge_rules")?;
    let mut rows = statement.query(params![])?;
    while let Some(row) = rows.next()? {
        check.recharge_rule(RechargeRuleFacts {
            account: row.get(0)?,
            in_flight: row.get(1)?,
            last_sequence: row.get(2)?,
        });
    }
    let mut statement = connection.prepare(
        "SELECT id, account_id, recharge_sequence, status FROM topups WHERE source = 'auto_recharge'",
    )?;
    let mut rows = statement.query(params![])?;
    while let Some(row) = rows.next()? {
        check.auto_topup(AutoTopupFacts {
            id: row.get(0)?,
            account: row.get(1)?,
            sequence: row.get(2)?,
            status: row.get(3)?,
        });
    }
    let mut statement = connection.prepare(INVOICE_FACTS_SQL)?;
    let mut rows = statement.query(params![])?;
    while let Some(row) = rows.next()? {
        check.invoice(InvoiceFacts {
            id: row.get(0)?,
            number: row.get(1)?,
            status: row.get(2)?,
            amount_due: row.get(3)?,
            subtotal: row.get(4)?,
            credit_applied: row.get(5)?,
            brought_forward: row.get(6)?,
            carried_forward: row.get(7)?,
            paid_by: row.get(8)?,
            paid_amount: row.get(9)?,
            lines_total: row.get(10)?,
        });
    }
    let (count, largest, counter): (i64, i64, i64) =
        connection.query_row(INVOICE_NUMBERS_SQL, params![], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    check.invoice_numbers(count, largest, counter);
    let mut statement = connection.prepare(INVOICE_DUE_SQL)?;
    let mut rows = statement.query(params![])?;
    while let Some(row) = rows.next()? {
        let account: String = row.get(0)?;
        check.invoice_due(&account, row.get(1)?, row.get(2)?);
    }
    Ok(check.finish())
}
