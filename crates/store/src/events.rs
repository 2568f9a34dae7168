//! Which events a state change records, decided the same way by both backends.
//! Each backend writes them in the transaction of the change itself (the outbox), so
//! an event exists exactly when its change committed.

use tollgate_core::{
    AccountId, Balances, DeliveryPolicy, EventSelection, EventType, FailureClass, Micros, TierId, TierIndex,
    Timestamp, TopupSource, TopupStatus, balance_crossings, classify_failure,
};

use crate::{CardRecord, DeliveryAttempt, DeliveryStatus, StoreError, StoreResult, StoreRules, TopupRecord};

/// Largest page of due deliveries one claim returns.
pub const MAX_DELIVERY_BATCH: usize = 100;

/// An event about to be written with the change that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingEvent {
    pub kind: EventType,
    pub account: AccountId,
    pub reference: Option<String>,
    pub amount: Option<Micros>,
    pub balance: Option<Micros>,
    pub detail: Option<String>,
}

impl PendingEvent {
    fn new(kind: EventType, account: &AccountId) -> PendingEvent {
        PendingEvent {
            kind,
            account: account.clone(),
            reference: None,
            amount: None,
            balance: None,
            detail: None,
        }
    }
}

/// `balance.low` and `balance.depleted`, when the available balance crossed a line.
pub(crate) fn balance_events(
    account: &AccountId,
    before: Balances,
    after: Balances,
    low_level: Micros,
) -> Vec<PendingEvent> {
    balance_crossings(before.available, after.available, low_level)
        .into_iter()
        .map(|kind| PendingEvent {
            amount: (kind == EventType::BalanceLow).then_some(low_level),
            balance: Some(after.available),
            ..PendingEvent::new(kind, account)
        })
        .collect()
}

/// `tier.upgraded`, when a charge moved the account to a higher tier.
pub(crate) fn tier_event(
    account: &AccountId,
    before: (usize, &TierId),
    after: (usize, &TierId),
) -> Option<PendingEvent> {
    (after.0 > before.0).then(|| PendingEvent {
        reference: Some(after.1.to_string()),
        detail: Some(before.1.to_string()),
        ..PendingEvent::new(EventType::TierUpgraded, account)
    })
}

/// `tier.upgraded` for a charge that moved the account from tier `before` to `after`.
pub(crate) fn tier_upgrade(
    rules: &StoreRules,
    account: &AccountId,
    before: TierIndex,
    after: TierIndex,
) -> Option<PendingEvent> {
    let book = &rules.price_book;
    tier_event(
        account,
        (before.get(), &book.tier(before).id),
        (after.get(), &book.tier(after).id),
    )
}

/// The event a top-up's move from `previous` to its current status records, if any.
pub(crate) fn topup_event(previous: TopupStatus, topup: &TopupRecord) -> Option<PendingEvent> {
    if previous == topup.status {
        return None;
    }
    let automatic = topup.source == TopupSource::AutoRecharge;
    // An off-session charge the bank wants authenticated ends (the worker cancels it)
    // with an authentication code: for the customer that is "act", not "declined",
    // and said once even when the charge waited in `requires_action` first.
    let needs_customer = topup
        .failure_code
        .as_deref()
        .is_some_and(|code| classify_failure(code) == FailureClass::ActionRequired);
    let kind = match (topup.status, automatic) {
        (TopupStatus::Succeeded, false) => EventType::TopupSucceeded,
        (TopupStatus::Succeeded, true) => EventType::AutoRechargeSucceeded,
        (TopupStatus::Failed, false) => EventType::TopupFailed,
        (TopupStatus::Failed | TopupStatus::Canceled, true) if needs_customer => {
            if previous == TopupStatus::RequiresAction {
                return None;
            }
            EventType::AutoRechargeActionRequired
        }
        (TopupStatus::Failed | TopupStatus::Canceled, true) => EventType::AutoRechargeFailed,
        (TopupStatus::RequiresAction, true) => EventType::AutoRechargeActionRequired,
        _ => return None,
    };
    Some(PendingEvent {
        reference: Some(topup.id.clone()),
        amount: Some(topup.amount),
        balance: topup.balances_after_credit.map(|balances| balances.available),
        detail: topup.failure_code.clone(),
        ..PendingEvent::new(kind, &topup.account)
    })
}

/// Whether the account's card is another one than before (added, replaced or removed).
pub(crate) fn card_changed(previous: Option<&CardRecord>, card: Option<&CardRecord>) -> bool {
    previous.map(|card| &card.processor_id) != card.map(|card| &card.processor_id)
}

/// `payment_method.updated`: the account's card is now `card` (none: removed).
pub(crate) fn card_event(account: &AccountId, card: Option<&CardRecord>) -> PendingEvent {
    PendingEvent {
        reference: card.map(|card| card.processor_id.clone()),
        detail: card.map(|card| format!("{} {}", card.brand, card.last4)),
        ..PendingEvent::new(EventType::PaymentMethodUpdated, account)
    }
}

/// Where a delivery stands after `attempt`, its attempt number `attempts_before + 1`,
/// made `now` for an event recorded at `event_created_at`: delivered, due again after
/// the policy's back-off, or given up once the retry window is over.
pub(crate) fn after_attempt(
    attempt: &DeliveryAttempt,
    attempts_before: u32,
    event_created_at: Timestamp,
    now: Timestamp,
    policy: &DeliveryPolicy,
) -> (DeliveryStatus, Timestamp) {
    if attempt.error.is_none() {
        return (DeliveryStatus::Delivered, now);
    }
    let age_ms = u64::try_from((now - event_created_at).whole_milliseconds()).unwrap_or(0);
    match policy.retry_delay_ms(attempts_before.saturating_add(1), age_ms) {
        Some(delay_ms) => (
            DeliveryStatus::Pending,
            now + time::Duration::milliseconds(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
        ),
        None => (DeliveryStatus::Failed, now),
    }
}

/// How an endpoint's selection is stored: `*` or the sorted codes joined by commas.
pub(crate) fn selection_text(selection: &EventSelection) -> String {
    match selection {
        EventSelection::All => "*".to_owned(),
        EventSelection::Only(types) => types.iter().map(|kind| kind.code()).collect::<Vec<_>>().join(","),
    }
}

/// The selection a stored text names.
pub(crate) fn parse_selection(text: &str) -> StoreResult<EventSelection> {
    if text == "*" {
        return Ok(EventSelection::All);
    }
    let types = text
        .split(',')
        .map(|code| EventType::parse(code).ok_or_else(|| corrupt("event type", code)))
        .collect::<StoreResult<Vec<_>>>()?;
    EventSelection::only(types).ok_or_else(|| corrupt("event selection", text))
}

/// The type a stored code names.
pub(crate) fn parse_kind(code: &str) -> StoreResult<EventType> {
    EventType::parse(code).ok_or_else(|| corrupt("event type", code))
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Database(format!("stored {what} `{value}` is not valid"))
}

/// The SQL condition (on `webhook_endpoints` aliased `w`, the event's code as parameter
/// `code`) that an endpoint receives an event: both dialects concatenate with `||`.
pub(crate) fn endpoint_receives_sql(code: &str) -> String {
    format!("(w.event_types = '*' OR ',' || w.event_types || ',' LIKE '%,' || {code} || ',%')")
}

/// The audit texts of an endpoint's registration.
pub(crate) fn endpoint_audit(url: &str, selection: &EventSelection) -> String {
    format!("url={url:?} events={}", selection_text(selection))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::parse("acme").unwrap()
    }

    #[test]
    fn selections_round_trip_through_their_stored_text() {
        for selection in [
            EventSelection::All,
            EventSelection::only(vec![EventType::BalanceLow]).unwrap(),
            EventSelection::only(vec![EventType::InvoicePaid, EventType::TopupFailed]).unwrap(),
        ] {
            assert_eq!(parse_selection(&selection_text(&selection)).unwrap(), selection);
        }
        assert!(parse_selection("balance.low,nope").is_err());
        assert!(parse_selection("").is_err());
    }

    #[test]
    fn a_failed_attempt_backs_off_until_the_window_closes() {
        let policy = DeliveryPolicy::default();
        let created = Timestamp::UNIX_EPOCH;
        let failed = DeliveryAttempt {
            status_code: Some(500),
            error: Some("HTTP 500".to_owned()),
        };
        let (status, next) = after_attempt(&failed, 0, created, created, &policy);
        assert_eq!(status, DeliveryStatus::Pending);
        assert_eq!(next - created, time::Duration::seconds(10));
        let (status, next) = after_attempt(&failed, 3, created, created, &policy);
        assert_eq!(
            (status, next - created),
            (DeliveryStatus::Pending, time::Duration::seconds(80))
        );
        let late = created + time::Duration::hours(25);
        assert_eq!(
            after_attempt(&failed, 30, created, late, &policy).0,
            DeliveryStatus::Failed
        );
        let delivered = DeliveryAttempt {
            status_code: Some(204),
            error: None,
        };
        assert_eq!(
            after_attempt(&delivered, 7, created, late, &policy),
            (DeliveryStatus::Delivered, late)
        );
    }

    #[test]
    fn a_tier_event_only_goes_up() {
        let bronze = TierId::parse("bronze").unwrap();
        let silver = TierId::parse("silver").unwrap();
        let event = tier_event(&account(), (0, &bronze), (1, &silver)).unwrap();
        assert_eq!(event.reference.as_deref(), Some("silver"));
        assert_eq!(event.detail.as_deref(), Some("bronze"));
        assert!(tier_event(&account(), (1, &silver), (1, &silver)).is_none());
        assert!(tier_event(&account(), (1, &silver), (0, &bronze)).is_none());
    }

    #[test]
    fn top_up_outcomes_name_their_source() {
        let now = Timestamp::UNIX_EPOCH;
        let mut topup = TopupRecord {
            id: "top_1".to_owned(),
            account: account(),
            amount: Micros::new(25_000_000),
            source: TopupSource::SavedCard,
            status: TopupStatus::Succeeded,
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
        };
        let kind = |previous, topup: &TopupRecord| topup_event(previous, topup).map(|event| event.kind);
        assert_eq!(
            kind(TopupStatus::Pending, &topup),
            Some(EventType::TopupSucceeded)
        );
        assert_eq!(kind(TopupStatus::Succeeded, &topup), None);
        topup.source = TopupSource::AutoRecharge;
        assert_eq!(
            kind(TopupStatus::Pending, &topup),
            Some(EventType::AutoRechargeSucceeded)
        );
        topup.status = TopupStatus::RequiresAction;
        assert_eq!(
            kind(TopupStatus::Pending, &topup),
            Some(EventType::AutoRechargeActionRequired)
        );
        topup.status = TopupStatus::Canceled;
        assert_eq!(
            kind(TopupStatus::RequiresAction, &topup),
            Some(EventType::AutoRechargeFailed)
        );
        // Authentication asked for: "act", once.
        topup.failure_code = Some("authentication_required".to_owned());
        assert_eq!(
            kind(TopupStatus::Pending, &topup),
            Some(EventType::AutoRechargeActionRequired)
        );
        assert_eq!(kind(TopupStatus::RequiresAction, &topup), None);
        topup.failure_code = None;
        topup.source = TopupSource::HostedPage;
        assert_eq!(kind(TopupStatus::RequiresPaymentMethod, &topup), None);
        topup.status = TopupStatus::Failed;
        topup.failure_code = Some("card_declined".to_owned());
        let failed = topup_event(TopupStatus::Pending, &topup).unwrap();
        assert_eq!(failed.kind, EventType::TopupFailed);
        assert_eq!(failed.detail.as_deref(), Some("card_declined"));
    }
}
