//! `tollgate ledger verify` on PostgreSQL: the same checks as
//! `sqlite/verify.rs`, run inside the caller's REPEATABLE READ snapshot.

use std::collections::HashMap;

use tokio_postgres::Transaction;
use tollgate_core::{LedgerAccount, Micros};

use super::PgResult;
use crate::LedgerReport;

#[derive(Default)]
struct Expected {
    available: i64,
    held: i64,
    active_holds: i64,
    usage_amount: i64,
    usage_savings: i64,
}

/// Checks every invariant; problems are collected, never fixed.
pub async fn verify(tx: &Transaction<'_>) -> PgResult<LedgerReport> {
    let mut report = LedgerReport::default();
    let mut expected: HashMap<String, Expected> = HashMap::new();

    // 1. Balances recomputed from the transfers (SUM of BIGINT is NUMERIC: cast back).
    for row in tx
        .query(
            "SELECT code, CAST(SUM(delta) AS BIGINT) FROM ( \
                 SELECT to_account AS code, amount_micros AS delta FROM transfers \
                 UNION ALL SELECT from_account, -amount_micros FROM transfers) AS legs GROUP BY code",
            &[],
        )
        .await?
    {
        let code: String = row.try_get(0)?;
        let sum: i64 = row.try_get(1)?;
        match LedgerAccount::parse(&code) {
            Some(LedgerAccount::Available(account)) => {
                expected.entry(account.to_string()).or_default().available = sum
            }
            Some(LedgerAccount::Held(account)) => expected.entry(account.to_string()).or_default().held = sum,
            Some(_) => {}
            None => report
                .problems
                .push(format!("transfers use unknown ledger account `{code}`")),
        }
    }

    // 2. Held funds equal the active holds.
    for row in tx
        .query(
            "SELECT account_id, CAST(SUM(amount_micros) AS BIGINT) FROM holds WHERE status = 'active' \
             GROUP BY account_id",
            &[],
        )
        .await?
    {
        expected.entry(row.try_get(0)?).or_default().active_holds = row.try_get(1)?;
    }

    // 3. Usage records: exact arithmetic, and their totals for spend.
    for row in tx
        .query(
            "SELECT transaction_id, account_id, quantity, unit_price_micros, unit_list_price_micros, amount_micros, \
             list_amount_micros, savings_micros FROM usage_records",
            &[],
        )
        .await?
    {
        let id: String = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let [quantity, unit, unit_list, amount, list_amount, savings]: [i64; 6] = [
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
        ];
        if quantity.checked_mul(unit) != Some(amount) || quantity.checked_mul(unit_list) != Some(list_amount)
        {
            report
                .problems
                .push(format!("usage {id}: amount is not quantity × unit price"));
        }
        if savings != (list_amount - amount).max(0) {
            report
                .problems
                .push(format!("usage {id}: savings are not list − paid"));
        }
        let totals = expected.entry(account).or_default();
        totals.usage_amount = totals.usage_amount.saturating_add(amount);
        totals.usage_savings = totals.usage_savings.saturating_add(savings);
    }

    // 4. Every journal transaction matches its transfers, and each account's
    //    journal is a gapless chain of balances.
    let journal = tx
        .query(
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
        .await?;
    let mut chain: Option<(String, i64, i64, i64)> = None;
    let mut chain_ends: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for row in journal {
        report.transactions_checked += 1;
        let id: String = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let [
            sequence,
            amount,
            available_amount,
            available_after,
            held_after,
            available_delta,
            held_delta,
        ]: [i64; 7] = [
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
        ];
        if available_amount != available_delta || amount != available_delta + held_delta {
            report.problems.push(format!(
                "transaction {id}: recorded amounts differ from its transfers"
            ));
        }
        let (previous_sequence, previous_available, previous_held) = match &chain {
            Some((chain_account, sequence, available, held)) if *chain_account == account => {
                (*sequence, *available, *held)
            }
            _ => (0, 0, 0),
        };
        if sequence != previous_sequence + 1 {
            report.problems.push(format!(
                "account {account}: journal sequence jumps from {previous_sequence} to {sequence}"
            ));
        }
        if available_after != previous_available + available_delta || held_after != previous_held + held_delta
        {
            report.problems.push(format!(
                "transaction {id}: balance after does not follow from the one before"
            ));
        }
        chain_ends.insert(account.clone(), (sequence, available_after, held_after));
        chain = Some((account, sequence, available_after, held_after));
    }

    // 5. Each account's stored state against everything recomputed.
    let accounts = tx
        .query(
            "SELECT id, billing_mode, credit_limit_micros, available_micros, held_micros, journal_sequence, \
             lifetime_spend_micros, lifetime_savings_micros, cycle_start, cycle_spend_micros FROM accounts",
            &[],
        )
        .await?;
    for row in accounts {
        report.accounts_checked += 1;
        let id: String = row.try_get(0)?;
        let mode: String = row.try_get(1)?;
        let [
            credit_limit,
            available,
            held,
            journal_sequence,
            lifetime_spend,
            lifetime_savings,
            cycle_start,
            cycle_spend,
        ]: [i64; 8] = [
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
            row.try_get(9)?,
        ];
        let recomputed = expected.remove(&id).unwrap_or_default();
        let problems = &mut report.problems;
        if available != recomputed.available {
            problems.push(format!(
                "account {id}: available balance {} but its transfers sum to {}",
                Micros::new(available),
                Micros::new(recomputed.available)
            ));
        }
        if held != recomputed.held || held != recomputed.active_holds {
            problems.push(format!(
                "account {id}: held {} but transfers say {} and active holds {}",
                Micros::new(held),
                Micros::new(recomputed.held),
                Micros::new(recomputed.active_holds)
            ));
        }
        if mode == "prepaid" && credit_limit != 0 {
            problems.push(format!("account {id}: a prepaid account has a credit limit"));
        }
        if available + credit_limit < 0 {
            problems.push(format!(
                "account {id}: available balance {} is below its limit",
                Micros::new(available)
            ));
        }
        let (last_sequence, last_available, last_held) = chain_ends.remove(&id).unwrap_or((0, 0, 0));
        if journal_sequence != last_sequence || available != last_available || held != last_held {
            problems.push(format!(
                "account {id}: stored balances differ from its last journal transaction"
            ));
        }
        if lifetime_spend != recomputed.usage_amount || lifetime_savings != recomputed.usage_savings {
            problems.push(format!(
                "account {id}: lifetime spend or savings differ from its usage records"
            ));
        }
        let cycle_usage: i64 = tx
            .query_one(
                "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) FROM usage_records \
                 WHERE account_id = $1 AND created_at >= $2",
                &[&id, &cycle_start],
            )
            .await?
            .try_get(0)?;
        if cycle_spend != cycle_usage {
            problems.push(format!(
                "account {id}: cycle spend differs from this cycle's usage records"
            ));
        }
    }
    for orphan in expected.keys().chain(chain_ends.keys()) {
        report
            .problems
            .push(format!("ledger entries for unknown account `{orphan}`"));
    }
    Ok(report)
}
