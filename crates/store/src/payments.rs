//! Decisions about card money that both backends make the same way: what a
//! processor's news does to a top-up, what a refund or a dispute writes to the
//! ledger, and when an account is flagged for a balance below its floor.
//! Each backend only loads rows and writes what is decided here.

use tollgate_core::payments::{DisputeMove, check_refund, dispute_move, refundable};
use tollgate_core::{
    AccountId, Balances, BillingMode, DisputeStatus, IdempotencyKey, JournalTransaction, Micros, Timestamp,
    TopupOutcome, TopupSource, TopupStatus, TransactionKind,
};

use crate::decide::overflow;
use crate::{CardRecord, DisputeNews, StoreError, StoreResult, TopupRecord};

/// The reason recorded for a refund the store learns of from the processor's totals.
pub(crate) const DASHBOARD_REFUND_REASON: &str = "refunded in the payment processor's dashboard";

/// A replay under `key` returns the stored result only for the same request.
pub(crate) fn check_replay(stored: Option<&str>, fingerprint: &str, key: &IdempotencyKey) -> StoreResult<()> {
    if stored == Some(fingerprint) {
        Ok(())
    } else {
        Err(StoreError::IdempotencyConflict { key: key.to_string() })
    }
}

// ---------------------------------------------------------------------------
// Cards

/// Whether a setup session recorded for `owner` may be recorded again for `account`.
pub(crate) fn check_setup_owner(session: &str, owner: &str, account: &AccountId) -> StoreResult<()> {
    if owner == account.as_str() {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "card setup {session} belongs to another account"
        )))
    }
}

/// The refusal when the processor customer is already another account's: one customer
/// pays for one account, or its cards would be shared.
pub(crate) fn customer_taken(customer: &str) -> StoreError {
    StoreError::Conflict(format!(
        "processor customer {customer} belongs to another account"
    ))
}

/// True when `card` is the account's card already (a replayed confirmation).
pub(crate) fn is_current_card(current: Option<&CardRecord>, card: &CardRecord) -> bool {
    current.map(|current| current.processor_id.as_str()) == Some(card.processor_id.as_str())
}

/// The audit action and before/after texts for the account's card changing from `previous`
/// to `next`.
pub(crate) fn card_change_audit(
    previous: Option<&CardRecord>,
    next: Option<&CardRecord>,
) -> (&'static str, Option<String>, Option<String>) {
    let describe = |card: Option<&CardRecord>| {
        card.map(|card| {
            format!(
                "card={} {} {:02}/{}",
                card.brand, card.last4, card.exp_month, card.exp_year
            )
        })
    };
    let action = if next.is_some() {
        "payment_method.updated"
    } else {
        "payment_method.removed"
    };
    (action, describe(previous), describe(next))
}

// ---------------------------------------------------------------------------
// Top-ups

/// The status a new top-up starts in: a hosted page first waits for the customer's card.
pub(crate) fn initial_status(source: TopupSource) -> TopupStatus {
    match source {
        TopupSource::HostedPage => TopupStatus::RequiresPaymentMethod,
        TopupSource::SavedCard | TopupSource::AutoRecharge => TopupStatus::Pending,
    }
}

/// Checks processor ids given for a top-up against the ones it has: each may be set once.
pub(crate) fn check_link(
    topup: &TopupRecord,
    checkout_session: Option<&str>,
    payment_reference: Option<&str>,
) -> StoreResult<()> {
    for (stored, given, what) in [
        (&topup.checkout_session, checkout_session, "hosted page"),
        (&topup.payment_reference, payment_reference, "payment"),
    ] {
        if let (Some(stored), Some(given)) = (stored, given)
            && stored != given
        {
            return Err(StoreError::Conflict(format!(
                "top-up {} already has {what} {stored}, not {given}",
                topup.id
            )));
        }
    }
    Ok(())
}

/// The refusal when a processor id is already another top-up's: one payment pays one top-up.
pub(crate) fn reference_taken(what: &str, reference: &str, other_topup: &str) -> StoreError {
    StoreError::Conflict(format!("{what} {reference} belongs to top-up {other_topup}"))
}

/// The journal kind a top-up's credit is recorded as.
pub(crate) fn credit_kind(source: TopupSource) -> TransactionKind {
    match source {
        TopupSource::AutoRecharge => TransactionKind::AutoRecharge,
        TopupSource::SavedCard | TopupSource::HostedPage => TransactionKind::Topup,
    }
}

/// The journal line's text for a top-up's credit.
pub(crate) fn credit_description(topup: &TopupRecord) -> String {
    let card = match (&topup.card_brand, &topup.card_last4) {
        (Some(brand), Some(last4)) => format!(" ({} •••• {last4})", capitalised(brand)),
        _ => String::new(),
    };
    match topup.source {
        TopupSource::AutoRecharge => format!("Auto top-up{card}"),
        TopupSource::SavedCard | TopupSource::HostedPage => format!("Top-up{card}"),
    }
}

fn capitalised(text: &str) -> String {
    let mut characters = text.chars();
    match characters.next() {
        Some(first) => first.to_uppercase().chain(characters).collect(),
        None => String::new(),
    }
}

/// What applying an outcome to a top-up does.
pub(crate) enum Settlement {
    /// Nothing: a duplicate, or news that may no longer change the top-up.
    Unchanged,
    /// The status (and failure details) change; no money moves.
    Status,
    /// The top-up succeeded: write this credit, in the same transaction as the status.
    Credit(JournalTransaction),
}

/// Decides what `outcome` does to `topup`, and updates the record's fields to match
/// (the caller writes the record and, for a credit, the journal).
pub(crate) fn settle(
    topup: &mut TopupRecord,
    outcome: &TopupOutcome,
    now: Timestamp,
) -> StoreResult<Settlement> {
    let next = outcome.status();
    if let Some(reference) = outcome_payment(outcome)
        && let Some(stored) = &topup.payment_reference
        && stored != reference
    {
        // One top-up is paid by one payment; news of another one is not ours to apply.
        return Err(StoreError::Conflict(format!(
            "top-up {} is paid by {stored}, not {reference}",
            topup.id
        )));
    }
    if !topup.status.may_become(next) {
        return Ok(Settlement::Unchanged);
    }
    if let Some(reference) = outcome_payment(outcome) {
        topup.payment_reference = Some(reference.to_owned());
    }
    topup.status = next;
    topup.updated_at = now;
    match outcome {
        TopupOutcome::Succeeded {
            charge_reference,
            card_brand,
            card_last4,
            ..
        } => {
            topup.charge_reference = charge_reference.clone().or(topup.charge_reference.take());
            topup.card_brand = card_brand.clone().or(topup.card_brand.take());
            topup.card_last4 = card_last4.clone().or(topup.card_last4.take());
            topup.failure_code = None;
            topup.failure_message = None;
            topup.succeeded_at = Some(now);
            Ok(Settlement::Credit(JournalTransaction::card_payment(
                credit_kind(topup.source),
                &topup.account,
                topup.amount,
            )))
        }
        TopupOutcome::Failed { code, message, .. } => {
            topup.failure_code = Some(code.clone());
            topup.failure_message = Some(message.clone());
            Ok(Settlement::Status)
        }
        TopupOutcome::RequiresAction { .. } | TopupOutcome::Canceled => Ok(Settlement::Status),
    }
}

fn outcome_payment(outcome: &TopupOutcome) -> Option<&str> {
    match outcome {
        TopupOutcome::Succeeded {
            payment_reference, ..
        }
        | TopupOutcome::RequiresAction { payment_reference } => Some(payment_reference),
        TopupOutcome::Failed {
            payment_reference, ..
        } => payment_reference.as_deref(),
        TopupOutcome::Canceled => None,
    }
}

/// The amount a refund request takes back, checked against what is left of the top-up.
pub(crate) fn refund_amount(topup: &TopupRecord, requested: Option<Micros>) -> StoreResult<Micros> {
    let left = refundable(topup.amount, topup.refunded, topup.disputed);
    Ok(check_refund(topup.status, left, requested)?)
}

/// The difference between what the processor says was refunded and what is recorded,
/// when the processor knows of more (a refund made in its dashboard).
///
/// What the processor refunded is a fact, bounded only by the payment: the disputed total
/// is not subtracted, because it may be stale (a dispute won at the processor before the
/// refund, whose news has not arrived yet, is given back when it does). Capping by it would
/// drop that refund for good, since an applied `charge.refunded` is never sent again.
pub(crate) fn unrecorded_refund(topup: &TopupRecord, total_refunded: Micros) -> Option<Micros> {
    if topup.status != TopupStatus::Succeeded || total_refunded <= topup.refunded {
        return None;
    }
    let missing = total_refunded.checked_sub(topup.refunded).ok()?;
    let left = topup.amount.checked_sub(topup.refunded).ok()?;
    Some(missing.min(left)).filter(|amount| amount.is_positive())
}

/// The journal line's text for a refund taking money back.
pub(crate) fn refund_description(reason: &str) -> String {
    format!("Refund: {reason}")
}

/// The journal line's text for a refund the processor refused (the money comes back).
pub(crate) fn refund_failed_description(reason: &str) -> String {
    format!("Refund failed: {reason}")
}

/// The audit texts of a refund asked for by a person.
pub(crate) fn refund_created_audit(
    topup: &TopupRecord,
    amount: Micros,
    reason: &str,
    refund_id: &str,
) -> (Option<String>, Option<String>) {
    (
        Some(format!("refunded={}", topup.refunded)),
        Some(format!(
            "topup={} amount={amount} reason={reason:?} refund={refund_id}",
            topup.id
        )),
    )
}

/// The audit texts of a refund learnt from the processor's totals.
pub(crate) fn refund_reconciled_audit(
    topup: &TopupRecord,
    amount: Micros,
    refund_id: &str,
) -> (Option<String>, Option<String>) {
    (
        Some(format!("refunded={}", topup.refunded)),
        Some(format!("topup={} amount={amount} refund={refund_id}", topup.id)),
    )
}

// ---------------------------------------------------------------------------
// Disputes

/// A dispute as stored before the news arrived.
pub(crate) struct RecordedDispute {
    /// The disputed top-up.
    pub topup_id: String,
    /// What the store knew.
    pub status: DisputeStatus,
    /// The amount recorded when it was first heard of (what was taken back, if anything was).
    pub amount: Micros,
}

/// What dispute news writes.
pub(crate) struct DisputeDecision {
    /// The balance movement.
    pub step: DisputeMove,
    /// The ledger transaction and its journal text, when money moves.
    pub journal: Option<(JournalTransaction, String)>,
    /// The top-up's disputed total afterwards.
    pub disputed_after: Micros,
}

/// Decides what dispute news does, given the dispute as recorded (if it is).
///
/// A win gives back what was taken when the dispute opened, whatever amount the news
/// carries, so the balance ends where it started.
pub(crate) fn decide_dispute(
    topup: &TopupRecord,
    recorded: Option<&RecordedDispute>,
    news: &DisputeNews,
) -> StoreResult<DisputeDecision> {
    if let Some(recorded) = recorded
        && recorded.topup_id != topup.id
    {
        return Err(StoreError::Conflict(format!(
            "dispute {} is about top-up {}, not {}",
            news.dispute, recorded.topup_id, topup.id
        )));
    }
    let step = dispute_move(recorded.map(|recorded| recorded.status), news.status);
    let (journal, disputed_after) = match (step, recorded) {
        (DisputeMove::TakeBack, _) => (
            Some((
                JournalTransaction::clawback(TransactionKind::Dispute, &topup.account, news.amount),
                format!("Card dispute {}", news.dispute),
            )),
            topup.disputed.checked_add(news.amount).map_err(overflow)?,
        ),
        (DisputeMove::Reinstate, Some(recorded)) => (
            Some((
                JournalTransaction::give_back(TransactionKind::Dispute, &topup.account, recorded.amount),
                "Dispute won: funds returned".to_owned(),
            )),
            topup.disputed.checked_sub(recorded.amount).map_err(overflow)?,
        ),
        // Reinstating needs a recorded dispute (dispute_move never asks otherwise).
        (DisputeMove::Reinstate, None) | (DisputeMove::Nothing | DisputeMove::StatusOnly, _) => {
            (None, topup.disputed)
        }
    };
    if disputed_after.is_negative() {
        return Err(StoreError::Database(format!(
            "top-up {} would have a negative disputed total",
            topup.id
        )));
    }
    Ok(DisputeDecision {
        step,
        journal,
        disputed_after,
    })
}

/// The account's attention flag after its balances changed: set when money taken back left
/// the balance below its floor (spent money cannot be refused), cleared once it is back.
pub(crate) fn attention_after(
    mode: BillingMode,
    balances: Balances,
    flagged_since: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let floor = mode.credit_limit();
    let below = balances
        .available
        .checked_add(floor)
        .map(Micros::is_negative)
        .unwrap_or(true);
    match (below, flagged_since) {
        (true, Some(since)) => Some(since),
        (true, None) => Some(now),
        (false, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topup(status: TopupStatus) -> TopupRecord {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        TopupRecord {
            id: "top_1".to_owned(),
            account: AccountId::parse("acme").expect("id"),
            amount: Micros::new(100_000_000),
            source: TopupSource::SavedCard,
            status,
            idempotency_key: "k".to_owned(),
            checkout_session: None,
            payment_reference: None,
            charge_reference: None,
            card_brand: None,
            card_last4: None,
            failure_code: None,
            failure_message: None,
            credited_transaction: None,
            balances_after_credit: None,
            refunded: Micros::ZERO,
            disputed: Micros::ZERO,
            created_at: now,
            updated_at: now,
            succeeded_at: None,
            recharge_sequence: None,
        }
    }

    fn succeeded(payment: &str) -> TopupOutcome {
        TopupOutcome::Succeeded {
            payment_reference: payment.to_owned(),
            charge_reference: Some("ch_1".to_owned()),
            card_brand: Some("visa".to_owned()),
            card_last4: Some("4242".to_owned()),
        }
    }

    #[test]
    fn success_credits_once_and_is_final() {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let mut record = topup(TopupStatus::Pending);
        assert!(matches!(
            settle(&mut record, &succeeded("pi_1"), now),
            Ok(Settlement::Credit(_))
        ));
        assert_eq!(record.status, TopupStatus::Succeeded);
        assert!(matches!(
            settle(&mut record, &succeeded("pi_1"), now),
            Ok(Settlement::Unchanged)
        ));
        let failed = TopupOutcome::Failed {
            payment_reference: Some("pi_1".to_owned()),
            code: "card_declined".to_owned(),
            message: "declined".to_owned(),
        };
        assert!(matches!(
            settle(&mut record, &failed, now),
            Ok(Settlement::Unchanged)
        ));
        assert_eq!(record.status, TopupStatus::Succeeded);
        assert!(matches!(
            settle(&mut record, &succeeded("pi_2"), now),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn a_decline_may_still_be_followed_by_a_success() {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let mut record = topup(TopupStatus::RequiresPaymentMethod);
        let failed = TopupOutcome::Failed {
            payment_reference: None,
            code: "card_declined".to_owned(),
            message: "declined".to_owned(),
        };
        assert!(matches!(
            settle(&mut record, &failed, now),
            Ok(Settlement::Status)
        ));
        assert_eq!(record.failure_code.as_deref(), Some("card_declined"));
        assert!(matches!(
            settle(&mut record, &succeeded("pi_9"), now),
            Ok(Settlement::Credit(_))
        ));
        assert_eq!(record.failure_code, None);
        assert_eq!(credit_description(&record), "Top-up (Visa •••• 4242)");
    }

    #[test]
    fn dashboard_refunds_are_the_unrecorded_difference() {
        let mut record = topup(TopupStatus::Succeeded);
        record.refunded = Micros::new(30_000_000);
        assert_eq!(unrecorded_refund(&record, Micros::new(30_000_000)), None);
        assert_eq!(unrecorded_refund(&record, Micros::new(20_000_000)), None);
        assert_eq!(
            unrecorded_refund(&record, Micros::new(50_000_000)),
            Some(Micros::new(20_000_000))
        );
        assert_eq!(
            unrecorded_refund(&record, Micros::new(500_000_000)),
            Some(Micros::new(70_000_000))
        );
        // A dispute the store still counts (won at the processor, news not yet arrived)
        // does not hide a refund the processor made.
        record.disputed = Micros::new(70_000_000);
        assert_eq!(
            unrecorded_refund(&record, Micros::new(100_000_000)),
            Some(Micros::new(70_000_000))
        );
    }

    #[test]
    fn a_won_dispute_returns_what_was_taken_and_names_one_top_up() {
        let mut record = topup(TopupStatus::Succeeded);
        let news = |status, amount| DisputeNews {
            dispute: "dp_1".to_owned(),
            payment_reference: None,
            charge_reference: "ch_1".to_owned(),
            amount: Micros::new(amount),
            status,
        };
        let opened = decide_dispute(&record, None, &news(DisputeStatus::Open, 60_000_000)).expect("opened");
        assert_eq!(opened.step, DisputeMove::TakeBack);
        assert_eq!(opened.disputed_after, Micros::new(60_000_000));
        record.disputed = opened.disputed_after;
        let recorded = RecordedDispute {
            topup_id: record.id.clone(),
            status: DisputeStatus::Open,
            amount: Micros::new(60_000_000),
        };
        let won =
            decide_dispute(&record, Some(&recorded), &news(DisputeStatus::Won, 45_000_000)).expect("won");
        assert_eq!(won.step, DisputeMove::Reinstate);
        assert_eq!(won.disputed_after, Micros::ZERO);
        let (journal, _) = won.journal.expect("money returns");
        assert_eq!(
            journal.customer_delta().expect("fits").available,
            Micros::new(60_000_000)
        );
        let elsewhere = RecordedDispute {
            topup_id: "top_2".to_owned(),
            ..recorded
        };
        assert!(matches!(
            decide_dispute(&record, Some(&elsewhere), &news(DisputeStatus::Won, 60_000_000)),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn processor_ids_are_set_once() {
        let mut record = topup(TopupStatus::Pending);
        assert!(check_link(&record, Some("cs_1"), Some("pi_1")).is_ok());
        record.checkout_session = Some("cs_1".to_owned());
        record.payment_reference = Some("pi_1".to_owned());
        assert!(check_link(&record, Some("cs_1"), Some("pi_1")).is_ok());
        assert!(check_link(&record, None, None).is_ok());
        assert!(matches!(
            check_link(&record, Some("cs_2"), None),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            check_link(&record, None, Some("pi_2")),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            initial_status(TopupSource::HostedPage),
            TopupStatus::RequiresPaymentMethod
        );
        assert_eq!(initial_status(TopupSource::AutoRecharge), TopupStatus::Pending);
    }

    #[test]
    fn accounts_are_flagged_only_below_their_floor() {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let below = Balances {
            available: Micros::new(-1),
            held: Micros::ZERO,
        };
        assert_eq!(attention_after(BillingMode::Prepaid, below, None, now), Some(now));
        assert_eq!(
            attention_after(
                BillingMode::Invoice {
                    credit_limit: Micros::new(5)
                },
                below,
                None,
                now
            ),
            None
        );
        assert_eq!(
            attention_after(BillingMode::Prepaid, Balances::default(), Some(now), now),
            None
        );
    }
}
