//! Plans on PostgreSQL, under the account's row lock.

use super::prepared::Prepared as _;
use deadpool_postgres::GenericClient;
use tollgate_core::{AccountId, PlanCommand, Timestamp};

use super::PgResult;
use super::ops::{self, Context, load_for_write};
use super::{invoices, rows};
use crate::PlanRecord;
use crate::decide::not_found;
use crate::invoices::period_change;
use crate::plan::{check_plan, discount_code, mode_code, net_terms, plan_audit, plan_record};

async fn stored_terms<C: GenericClient + Sync>(client: &C, account: &AccountId) -> PgResult<Option<u16>> {
    let row = client
        .query_one_cached(
            "SELECT net_terms_days FROM accounts WHERE id = $1",
            &[&account.as_str()],
        )
        .await?;
    Ok(net_terms(row.try_get(0)?))
}

/// The account's plan.
pub async fn plan<C: GenericClient + Sync>(
    client: &C,
    account: &AccountId,
    now: Timestamp,
) -> PgResult<PlanRecord> {
    let stored = rows::load_account(client, account, now)
        .await?
        .ok_or_else(|| not_found("account", account))?;
    Ok(plan_record(&stored.record, stored_terms(client, account).await?))
}

/// Replaces the account's plan (audited).
pub async fn set_plan<C: GenericClient + Sync>(
    client: &C,
    context: &Context<'_>,
    command: &PlanCommand,
) -> PgResult<PlanRecord> {
    if !rows::lock_account(client, command.account.as_str()).await? {
        return Err(not_found("account", &command.account).into());
    }
    let account = load_for_write(client, context, &command.account).await?;
    let before = plan_record(&account.record, stored_terms(client, &command.account).await?);
    check_plan(&account.record, command)?;
    let period = period_change(&account.record, command, context.now);
    // Loading for a write released holds whose time ran out: keep what that moved.
    rows::save_account(client, &account).await?;
    let (mode, credit_limit) = mode_code(command.mode);
    client
        .execute_cached(
            "UPDATE accounts SET billing_mode = $2, credit_limit_micros = $3, personal_discount_percent = $4, \
             net_terms_days = $5 WHERE id = $1",
            &[
                &command.account.as_str(),
                &mode,
                &credit_limit,
                &discount_code(&command.plan),
                &command.net_terms_days.map(i64::from),
            ],
        )
        .await?;
    invoices::change_period(client, &command.account, period).await?;
    client
        .execute_cached(
            "DELETE FROM account_prices WHERE account_id = $1",
            &[&command.account.as_str()],
        )
        .await?;
    for (action, price) in &command.plan.custom_prices {
        client
            .execute_cached(
                "INSERT INTO account_prices (account_id, action, price_micros) VALUES ($1, $2, $3)",
                &[&command.account.as_str(), &action.as_str(), &price.get()],
            )
            .await?;
    }
    let (before_text, after_text) = plan_audit(&before, command);
    ops::audit(
        client,
        context,
        &command.actor,
        "plan.updated",
        &command.account,
        Some(before_text),
        Some(after_text),
    )
    .await?;
    plan(client, &command.account, context.now).await
}
