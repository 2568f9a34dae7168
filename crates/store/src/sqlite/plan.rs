//! Plans on SQLite.

use rusqlite::{Connection, params};
use tollgate_core::{AccountId, PlanCommand};

use super::ops::{self, load_for_write};
use super::writer::WriteContext;
use super::{invoices, rows};
use crate::decide::not_found;
use crate::invoices::period_change;
use crate::plan::{check_plan, discount_code, mode_code, net_terms, plan_audit, plan_record};
use crate::{PlanRecord, StoreResult};

fn stored_terms(connection: &Connection, account: &AccountId) -> StoreResult<Option<u16>> {
    let days: Option<i64> = connection
        .prepare_cached("SELECT net_terms_days FROM accounts WHERE id = ?1")?
        .query_row(params![account.as_str()], |row| row.get(0))?;
    Ok(net_terms(days))
}

/// The account's plan.
pub fn plan(
    connection: &Connection,
    account: &AccountId,
    now: tollgate_core::Timestamp,
) -> StoreResult<PlanRecord> {
    let stored =
        rows::load_account(connection, account, now)?.ok_or_else(|| not_found("account", account))?;
    Ok(plan_record(&stored.record, stored_terms(connection, account)?))
}

/// Replaces the account's plan (audited).
pub fn set_plan(context: &WriteContext<'_>, command: &PlanCommand) -> StoreResult<PlanRecord> {
    let connection = context.connection;
    let account = load_for_write(context, &command.account)?;
    let before = plan_record(&account.record, stored_terms(connection, &command.account)?);
    check_plan(&account.record, command)?;
    let period = period_change(&account.record, command, context.now);
    // Loading for a write released holds whose time ran out: keep what that moved.
    rows::save_account(connection, &account)?;
    let (mode, credit_limit) = mode_code(command.mode);
    connection
        .prepare_cached(
            "UPDATE accounts SET billing_mode = ?2, credit_limit_micros = ?3, personal_discount_percent = ?4, \
             net_terms_days = ?5 WHERE id = ?1",
        )?
        .execute(params![
            command.account.as_str(),
            mode,
            credit_limit,
            discount_code(&command.plan),
            command.net_terms_days.map(i64::from),
        ])?;
    invoices::change_period(context, &command.account, period)?;
    connection
        .prepare_cached("DELETE FROM account_prices WHERE account_id = ?1")?
        .execute(params![command.account.as_str()])?;
    let mut insert = connection.prepare_cached(
        "INSERT INTO account_prices (account_id, action, price_micros) VALUES (?1, ?2, ?3)",
    )?;
    for (action, price) in &command.plan.custom_prices {
        insert.execute(params![command.account.as_str(), action.as_str(), price.get()])?;
    }
    let (before_text, after_text) = plan_audit(&before, command);
    ops::audit(
        context,
        &command.actor,
        "plan.updated",
        &command.account,
        Some(before_text),
        Some(after_text),
    )?;
    plan(connection, &command.account, context.now)
}
