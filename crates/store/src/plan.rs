//! Saving the plan Sales agreed, decided the same way by both backends.

use tollgate_core::{AccountPlan, BillingMode, Micros, PlanCommand};

use crate::{AccountRecord, PlanRecord, StoreError, StoreResult};

/// Refuses a plan the account's balance cannot hold: an account that owes money keeps
/// a credit limit that covers the debt (switching to prepaid or lowering the limit
/// would make the balance invalid; the debt is settled first).
pub(crate) fn check_plan(account: &AccountRecord, command: &PlanCommand) -> StoreResult<()> {
    let floor = match command.mode {
        BillingMode::Prepaid => Micros::ZERO,
        BillingMode::Invoice { credit_limit } => credit_limit
            .checked_neg()
            .map_err(|_| StoreError::Overflow("credit limit"))?,
    };
    if account.balances.available < floor {
        return Err(StoreError::Conflict(format!(
            "the account's available balance is {}; a plan whose limit does not cover it cannot be saved until it is paid",
            account.balances.available
        )));
    }
    Ok(())
}

/// The plan record of an account as stored.
pub(crate) fn plan_record(account: &AccountRecord, net_terms_days: Option<u16>) -> PlanRecord {
    PlanRecord {
        account: account.id.clone(),
        mode: account.mode,
        plan: account.plan.clone(),
        net_terms_days,
    }
}

/// The audit texts of a plan change.
pub(crate) fn plan_audit(before: &PlanRecord, command: &PlanCommand) -> (String, String) {
    (
        PlanCommand::describe(before.mode, &before.plan, before.net_terms_days),
        PlanCommand::describe(command.mode, &command.plan, command.net_terms_days),
    )
}

/// The stored text of a billing mode.
pub(crate) fn mode_code(mode: BillingMode) -> (&'static str, i64) {
    match mode {
        BillingMode::Prepaid => ("prepaid", 0),
        BillingMode::Invoice { credit_limit } => ("invoice", credit_limit.get()),
    }
}

/// The personal discount as stored.
pub(crate) fn discount_code(plan: &AccountPlan) -> Option<i64> {
    plan.personal_discount.map(|discount| i64::from(discount.get()))
}

/// Net terms as stored, read back.
pub(crate) fn net_terms(stored: Option<i64>) -> Option<u16> {
    stored.and_then(|days| u16::try_from(days).ok())
}
