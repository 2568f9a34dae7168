//! `tollgate ledger verify` on PostgreSQL: gathers the facts inside the
//! caller's REPEATABLE READ snapshot; the rules live in `crate::invariants`.

use super::prepared::Prepared as _;
use deadpool_postgres::Transaction;

use super::PgResult;
use crate::LedgerReport;
use crate::invariants::{
    AccountFacts, AutoTopupFacts, INVOICE_DUE_SQL, INVOICE_FACTS_SQL, INVOICE_NUMBERS_SQL, InvoiceFacts,
    JournalFacts, LedgerCheck, RechargeRuleFacts, TopupFacts, UsageFacts,
};

/// Checks every invariant; problems are collected, never fixed.
pub async fn verify(tx: &Transaction<'_>) -> PgResult<LedgerReport> {
    let mut check = LedgerCheck::default();

    // SUM of BIGINT is NUMERIC in PostgreSQL: every sum is cast back.
    for row in tx
        .query_cached(
            "SELECT code, CAST(SUM(delta) AS BIGINT) FROM ( \
                 SELECT to_account AS code, amount_micros AS delta FROM transfers \
                 UNION ALL SELECT from_account, -amount_micros FROM transfers) AS legs GROUP BY code",
            &[],
        )
        .await?
    {
        check.transfer_sum(&row.try_get::<_, String>(0)?, row.try_get(1)?);
    }

    for row in tx
        .query_cached(
            "SELECT account_id, CAST(SUM(amount_micros) AS BIGINT) FROM holds WHERE status = 'active' \
             GROUP BY account_id",
            &[],
        )
        .await?
    {
        check.active_holds(row.try_get(0)?, row.try_get(1)?);
    }

    for row in tx
        .query_cached(
            "SELECT transaction_id, account_id, quantity, unit_price_micros, unit_list_price_micros, amount_micros, \
             list_amount_micros, savings_micros FROM usage_records",
            &[],
        )
        .await?
    {
        check.usage(UsageFacts {
            id: row.try_get(0)?,
            account: row.try_get(1)?,
            quantity: row.try_get(2)?,
            unit_price: row.try_get(3)?,
            unit_list_price: row.try_get(4)?,
            amount: row.try_get(5)?,
            list_amount: row.try_get(6)?,
            savings: row.try_get(7)?,
        });
    }

    for row in tx
        .query_cached(
            "SELECT j.id, j.account_id, j.sequence, j.amount_micros, j.available_amount_micros, \
                    j.available_after_micros, j.held_after_micros, \
                    CAST(COALESCE(SUM(CASE WHEN t.to_account = 'available:' || j.account_id THEN t.amount_micros \
                                      WHEN t.from_account = 'available:' || j.account_id THEN -t.amount_micros \
                                      ELSE 0 END), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(CASE WHEN t.to_account = 'held:' || j.account_id THEN t.amount_micros \
                                      WHEN t.from_account = 'held:' || j.account_id THEN -t.amount_micros \
                                      ELSE 0 END), 0) AS BIGINT) \
             FROM journal_transactions j LEFT JOIN transfers t ON t.transaction_id = j.id \
             GROUP BY j.id, j.account_id, j.sequence, j.amount_micros, j.available_amount_micros, \
                      j.available_after_micros, j.held_after_micros \
             ORDER BY j.account_id, j.sequence",
            &[],
        )
        .await?
    {
        check.journal(JournalFacts {
            id: row.try_get(0)?,
            account: row.try_get(1)?,
            sequence: row.try_get(2)?,
            amount: row.try_get(3)?,
            available_amount: row.try_get(4)?,
            available_after: row.try_get(5)?,
            held_after: row.try_get(6)?,
            available_delta: row.try_get(7)?,
            held_delta: row.try_get(8)?,
        });
    }

    for row in tx
        .query_cached(
            "SELECT a.id, a.billing_mode, a.credit_limit_micros, a.available_micros, a.held_micros, \
                    a.journal_sequence, a.lifetime_spend_micros, a.lifetime_savings_micros, a.cycle_spend_micros, \
                    CAST((SELECT COALESCE(SUM(u.amount_micros), 0) FROM usage_records u \
                          WHERE u.account_id = a.id AND u.created_at >= a.cycle_start) AS BIGINT), \
                    a.attention_since IS NOT NULL \
             FROM accounts a",
            &[],
        )
        .await?
    {
        check.account(AccountFacts {
            id: row.try_get(0)?,
            billing_mode: row.try_get(1)?,
            credit_limit: row.try_get(2)?,
            available: row.try_get(3)?,
            held: row.try_get(4)?,
            journal_sequence: row.try_get(5)?,
            lifetime_spend: row.try_get(6)?,
            lifetime_savings: row.try_get(7)?,
            cycle_spend: row.try_get(8)?,
            cycle_usage: row.try_get(9)?,
            flagged: row.try_get(10)?,
        });
    }
    for row in tx
        .query_cached(
            "SELECT t.id, t.status, t.amount_micros, j.available_amount_micros, t.refunded_micros, \
                    CAST((SELECT COALESCE(SUM(r.amount_micros), 0) FROM topup_refunds r \
                          WHERE r.topup_id = t.id AND r.state <> 'failed') AS BIGINT), \
                    t.disputed_micros, \
                    CAST((SELECT COALESCE(SUM(COALESCE(-taken.available_amount_micros, 0) \
                                              - COALESCE(returned.available_amount_micros, 0)), 0) \
                          FROM topup_disputes d \
                          LEFT JOIN journal_transactions taken ON taken.id = d.taken_transaction_id \
                          LEFT JOIN journal_transactions returned ON returned.id = d.returned_transaction_id \
                          WHERE d.topup_id = t.id) AS BIGINT) \
             FROM topups t LEFT JOIN journal_transactions j ON j.id = t.credited_transaction_id",
            &[],
        )
        .await?
    {
        check.topup(TopupFacts {
            id: row.try_get(0)?,
            status: row.try_get(1)?,
            amount: row.try_get(2)?,
            credited_amount: row.try_get(3)?,
            refunded_recorded: row.try_get(4)?,
            refunded_by_refunds: row.try_get(5)?,
            disputed_recorded: row.try_get(6)?,
            disputed_by_disputes: row.try_get(7)?,
        });
    }
    let credits = tx
        .query_one_cached(
            "SELECT (SELECT COUNT(*) FROM journal_transactions WHERE kind IN ('topup', 'auto_recharge')), \
                    (SELECT COUNT(*) FROM topups WHERE credited_transaction_id IS NOT NULL)",
            &[],
        )
        .await?;
    check.card_credits(credits.try_get(0)?, credits.try_get(1)?);
    for row in tx
        .query_cached(
            "SELECT account_id, in_flight_sequence, last_sequence FROM auto_recharge_rules",
            &[],
        )
        .await?
    {
        check.recharge_rule(RechargeRuleFacts {
            account: row.try_get(0)?,
            in_flight: row.try_get(1)?,
            last_sequence: row.try_get(2)?,
        });
    }
    for row in tx
        .query_cached(
            "SELECT id, account_id, recharge_sequence, status FROM topups WHERE source = 'auto_recharge'",
            &[],
        )
        .await?
    {
        check.auto_topup(AutoTopupFacts {
            id: row.try_get(0)?,
            account: row.try_get(1)?,
            sequence: row.try_get(2)?,
            status: row.try_get(3)?,
        });
    }
    for row in tx.query_cached(INVOICE_FACTS_SQL, &[]).await? {
        check.invoice(InvoiceFacts {
            id: row.try_get(0)?,
            number: row.try_get(1)?,
            status: row.try_get(2)?,
            amount_due: row.try_get(3)?,
            subtotal: row.try_get(4)?,
            credit_applied: row.try_get(5)?,
            brought_forward: row.try_get(6)?,
            carried_forward: row.try_get(7)?,
            paid_by: row.try_get(8)?,
            paid_amount: row.try_get(9)?,
            lines_total: row.try_get(10)?,
        });
    }
    let numbers = tx.query_one_cached(INVOICE_NUMBERS_SQL, &[]).await?;
    check.invoice_numbers(numbers.try_get(0)?, numbers.try_get(1)?, numbers.try_get(2)?);
    for row in tx.query_cached(INVOICE_DUE_SQL, &[]).await? {
        let account: String = row.try_get(0)?;
        check.invoice_due(&account, row.try_get(1)?, row.try_get(2)?);
    }
    Ok(check.finish())
}
