//! Decisions both backends make the same way: pricing a usage charge,
//! checking it fits, the journal transaction it writes, and the record it
//! returns. Each backend only loads state and writes rows around them.

use tollgate_core::ledger::check_debit;
use tollgate_core::{
    ActionId, ChargeQuote, JournalTransaction, Micros, MoneyOverflow, PricingError, Quantity, TierId,
    Timestamp,
};

use crate::invoices::check_not_overdue;
use crate::{AccountRecord, StoreError, StoreResult, StoreRules, TransactionLine, UsageRecord};

/// `NotFound` for a kind of thing and its id.
pub(crate) fn not_found(what: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

/// A balance or total that no longer fits in 64 bits.
pub(crate) fn overflow(_: MoneyOverflow) -> StoreError {
    StoreError::Overflow("balance")
}

/// A charge the price book cannot price.
pub(crate) fn pricing_error(error: PricingError) -> StoreError {
    match error {
        PricingError::UnknownAction(action) => StoreError::UnknownAction(action.to_string()),
        PricingError::Overflow => StoreError::ChargeTooLarge,
    }
}

/// A priced usage charge that fits, and what to write for it.
pub(crate) struct UsageDecision {
    /// The price, at the tier before the charge.
    pub quote: ChargeQuote,
    /// The transfers.
    pub journal: JournalTransaction,
    /// The journal line's text (`Email Finder × 3`).
    pub description: String,
    /// The tier it was priced at.
    pub tier: TierId,
}

/// Prices `quantity` of `action` for `account` and checks it may be charged:
/// from the available balance, or (`held` given) from a hold of that amount.
pub(crate) fn decide_usage(
    rules: &StoreRules,
    account: &AccountRecord,
    action: &ActionId,
    quantity: Quantity,
    held: Option<Micros>,
    now: Timestamp,
) -> StoreResult<UsageDecision> {
    // A hold's capture goes through: the action ran on funds reserved before.
    if held.is_none() {
        check_not_overdue(account, now)?;
    }
    let book = &rules.price_book;
    let tier = account.spend.current_tier(book, rules.tier_basis);
    let quote = book
        .quote(action, quantity, tier, &account.plan)
        .map_err(pricing_error)?;
    let journal = match held {
        None => {
            check_debit(account.mode, account.balances, quote.amount)?;
            JournalTransaction::usage(&account.id, quote.amount)
        }
        Some(held) => {
            if quote.amount > held {
                return Err(StoreError::CaptureExceedsHold {
                    held,
                    cost: quote.amount,
                });
            }
            JournalTransaction::hold_captured(&account.id, held, quote.amount).map_err(overflow)?
        }
    };
    let action_name = book
        .action(action)
        .map(|spec| spec.name.as_str())
        .unwrap_or_default();
    Ok(UsageDecision {
        description: format!("{action_name} × {quantity}"),
        tier: book.tier(quote.tier).id.clone(),
        quote,
        journal,
    })
}

/// The usage record a decided charge becomes once its journal line is written.
/// Adds a decided charge to the account's spend. Returns the `tier.upgraded` event if the
/// charge moved the account up a tier (it was priced at the tier it started from).
pub(crate) fn record_spend(
    rules: &StoreRules,
    account: &mut AccountRecord,
    decision: &UsageDecision,
) -> StoreResult<Option<crate::events::PendingEvent>> {
    let quote = &decision.quote;
    account
        .spend
        .record_charge(quote.amount, quote.savings)
        .map_err(overflow)?;
    let tier_after = account.spend.current_tier(&rules.price_book, rules.tier_basis);
    Ok(crate::events::tier_upgrade(
        rules,
        &account.id,
        quote.tier,
        tier_after,
    ))
}

pub(crate) fn usage_record(
    rules: &StoreRules,
    decision: UsageDecision,
    line: TransactionLine,
    hold_id: Option<&str>,
    now: Timestamp,
) -> UsageRecord {
    let quote = decision.quote;
    UsageRecord {
        id: line.id,
        account: line.account,
        action: quote.action,
        quantity: quote.quantity,
        unit_price: quote.unit_price,
        unit_list_price: quote.unit_list_price,
        amount: quote.amount,
        list_amount: quote.list_amount,
        price_source: quote.price_source,
        tier: decision.tier,
        price_book_version: rules.price_book.version().to_owned(),
        balances_after: line.balances_after,
        hold_id: hold_id.map(str::to_owned),
        created_at: now,
    }
}
