//! Events: the state changes a customer or operator cares about (PRODUCT.md
//! "Events"), when they fire, and how deliveries to operator endpoints are retried.

use std::fmt;

use crate::Micros;

/// The low-balance line when the configuration names none: $10.00.
pub const DEFAULT_BALANCE_LOW_LEVEL: Micros = Micros::new(10_000_000);

/// Every event type Tollgate records, in PRODUCT.md's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// The available balance fell below the configured low level.
    BalanceLow,
    /// The available balance reached zero (or below, for invoice accounts).
    BalanceDepleted,
    /// A one-time top-up was credited.
    TopupSucceeded,
    /// A one-time top-up failed at the processor.
    TopupFailed,
    /// An Auto Top-Up charge was credited.
    AutoRechargeSucceeded,
    /// An Auto Top-Up charge failed.
    AutoRechargeFailed,
    /// An Auto Top-Up charge needs the customer to authenticate (3-D Secure).
    AutoRechargeActionRequired,
    /// Spend moved the account into a higher Spend & Save tier.
    TierUpgraded,
    /// The account's saved card was added, replaced or removed.
    PaymentMethodUpdated,
    /// A cycle's invoice was closed.
    InvoiceCreated,
    /// An invoice was paid (by card or marked paid).
    InvoicePaid,
}

impl EventType {
    /// All types, for validation and documentation.
    pub const ALL: [EventType; 11] = [
        EventType::BalanceLow,
        EventType::BalanceDepleted,
        EventType::TopupSucceeded,
        EventType::TopupFailed,
        EventType::AutoRechargeSucceeded,
        EventType::AutoRechargeFailed,
        EventType::AutoRechargeActionRequired,
        EventType::TierUpgraded,
        EventType::PaymentMethodUpdated,
        EventType::InvoiceCreated,
        EventType::InvoicePaid,
    ];

    /// The stable wire name (`balance.low`).
    pub const fn code(self) -> &'static str {
        match self {
            EventType::BalanceLow => "balance.low",
            EventType::BalanceDepleted => "balance.depleted",
            EventType::TopupSucceeded => "topup.succeeded",
            EventType::TopupFailed => "topup.failed",
            EventType::AutoRechargeSucceeded => "auto_recharge.succeeded",
            EventType::AutoRechargeFailed => "auto_recharge.failed",
            EventType::AutoRechargeActionRequired => "auto_recharge.action_required",
            EventType::TierUpgraded => "tier.upgraded",
            EventType::PaymentMethodUpdated => "payment_method.updated",
            EventType::InvoiceCreated => "invoice.created",
            EventType::InvoicePaid => "invoice.paid",
        }
    }

    /// The type a wire name names, if any.
    pub fn parse(code: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.code())
    }
}

/// Which events an operator endpoint receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSelection {
    /// `["*"]`: every type, including types added later.
    All,
    /// Only these (non-empty, no duplicates, sorted).
    Only(Vec<EventType>),
}

impl EventSelection {
    /// A selection of `types`, sorted and deduplicated; `None` when empty.
    pub fn only(mut types: Vec<EventType>) -> Option<EventSelection> {
        types.sort();
        types.dedup();
        (!types.is_empty()).then_some(EventSelection::Only(types))
    }

    /// Whether an event of `kind` goes to this endpoint.
    pub fn includes(&self, kind: EventType) -> bool {
        match self {
            EventSelection::All => true,
            EventSelection::Only(types) => types.contains(&kind),
        }
    }
}

/// The balance events a move of the available balance from `before` to `after` fires.
///
/// Each fires once per crossing, not once per charge: `balance.low` when the balance
/// goes from at least `low_level` to below it, `balance.depleted` when it goes from
/// above zero to zero or less. A balance that stays low fires nothing more until it has
/// risen back above the line, so no state beyond the two amounts is needed.
pub fn balance_crossings(before: Micros, after: Micros, low_level: Micros) -> Vec<EventType> {
    let mut fired = Vec::new();
    if low_level.is_positive() && before >= low_level && after < low_level {
        fired.push(EventType::BalanceLow);
    }
    if before.is_positive() && !after.is_positive() {
        fired.push(EventType::BalanceDepleted);
    }
    fired
}

/// How deliveries to operator endpoints are timed and bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Wait after the first failed attempt; doubles after each further failure.
    pub first_retry_ms: u64,
    /// The longest wait between two attempts.
    pub max_retry_ms: u64,
    /// How long after the event Tollgate keeps trying (API.md: at least 24 h).
    pub give_up_after_ms: u64,
    /// The endpoint's time to answer one attempt.
    pub timeout_ms: u64,
}

impl Default for DeliveryPolicy {
    fn default() -> DeliveryPolicy {
        DeliveryPolicy {
            first_retry_ms: 10_000,
            max_retry_ms: 3_600_000,
            give_up_after_ms: 25 * 3_600_000,
            timeout_ms: 10_000,
        }
    }
}

impl DeliveryPolicy {
    /// The wait before attempt `failed_attempts + 1`, or `None` to give up because the
    /// event is `event_age_ms` old and the wait would end past the window.
    pub fn retry_delay_ms(&self, failed_attempts: u32, event_age_ms: u64) -> Option<u64> {
        debug_assert!(failed_attempts >= 1, "a retry follows a failure");
        let doublings = failed_attempts.saturating_sub(1).min(40);
        let delay_ms = self
            .first_retry_ms
            .saturating_mul(1_u64 << doublings)
            .min(self.max_retry_ms)
            .max(1);
        (event_age_ms.saturating_add(delay_ms) <= self.give_up_after_ms).then_some(delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LEVEL: Micros = Micros::new(10_000_000);

    #[test]
    fn codes_round_trip_and_are_unique() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.code()), Some(kind));
        }
        let mut codes: Vec<_> = EventType::ALL.iter().map(|kind| kind.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), EventType::ALL.len());
        assert_eq!(EventType::parse("balance.lowish"), None);
    }

    #[test]
    fn a_fall_through_the_low_level_fires_once_and_a_fall_to_zero_fires_depleted() {
        let dollars = |amount: i64| Micros::from_dollars(amount).unwrap();
        assert_eq!(
            balance_crossings(dollars(12), dollars(9), LEVEL),
            vec![EventType::BalanceLow]
        );
        assert_eq!(
            balance_crossings(dollars(10), dollars(9), LEVEL),
            vec![EventType::BalanceLow]
        );
        // Still low: nothing more.
        assert!(balance_crossings(dollars(9), dollars(8), LEVEL).is_empty());
        assert_eq!(
            balance_crossings(dollars(8), dollars(0), LEVEL),
            vec![EventType::BalanceDepleted]
        );
        assert_eq!(
            balance_crossings(dollars(50), Micros::ZERO, LEVEL),
            vec![EventType::BalanceLow, EventType::BalanceDepleted]
        );
        // Rising fires nothing; invoice accounts already below zero fire nothing again.
        assert!(balance_crossings(dollars(0), dollars(100), LEVEL).is_empty());
        assert!(balance_crossings(dollars(-5), dollars(-9), LEVEL).is_empty());
        // A zero level switches `balance.low` off.
        assert!(balance_crossings(dollars(5), dollars(1), Micros::ZERO).is_empty());
    }

    proptest! {
        /// Along any path of balances, `balance.low` fires exactly as often as the path
        /// crosses the level downwards: never twice without a rise above it in between.
        #[test]
        fn balance_low_fires_once_per_downward_crossing(
            start in -50_000_000_i64..50_000_000,
            moves in proptest::collection::vec(-20_000_000_i64..20_000_000, 0..60),
        ) {
            let mut balance = Micros::new(start);
            let mut armed = balance >= LEVEL;
            for step in moves {
                let next = Micros::new(balance.get() + step);
                let fired = balance_crossings(balance, next, LEVEL).contains(&EventType::BalanceLow);
                prop_assert_eq!(fired, armed && next < LEVEL);
                if fired {
                    armed = false;
                }
                if next >= LEVEL {
                    armed = true;
                }
                balance = next;
            }
        }
    }

    #[test]
    fn retries_double_up_to_the_cap_and_stop_after_the_window() {
        let policy = DeliveryPolicy::default();
        assert_eq!(policy.retry_delay_ms(1, 0), Some(10_000));
        assert_eq!(policy.retry_delay_ms(2, 0), Some(20_000));
        assert_eq!(policy.retry_delay_ms(30, 0), Some(3_600_000));
        assert_eq!(policy.retry_delay_ms(u32::MAX, 0), Some(3_600_000));
        // Still trying at 24 h.
        assert!(policy.retry_delay_ms(40, 24 * 3_600_000).is_some());
        assert_eq!(policy.retry_delay_ms(40, 25 * 3_600_000), None);
        // The whole schedule covers at least 24 h.
        let mut age_ms = 0_u64;
        let mut attempt = 1;
        while let Some(delay) = policy.retry_delay_ms(attempt, age_ms) {
            age_ms += delay;
            attempt += 1;
        }
        assert!(age_ms >= 24 * 3_600_000, "{age_ms}");
        assert!(attempt < 100);
    }

    #[test]
    fn selections_filter_by_type() {
        assert!(EventSelection::All.includes(EventType::InvoicePaid));
        let only = EventSelection::only(vec![
            EventType::TopupFailed,
            EventType::BalanceLow,
            EventType::BalanceLow,
        ])
        .unwrap();
        assert_eq!(
            only,
            EventSelection::Only(vec![EventType::BalanceLow, EventType::TopupFailed])
        );
        assert!(only.includes(EventType::BalanceLow));
        assert!(!only.includes(EventType::TopupSucceeded));
        assert_eq!(EventSelection::only(Vec::new()), None);
    }
}
