//! Property tests of the Auto Top-Up policy: settings validation, the recharge
//! amount, the trigger decision, the rule's state machine, idempotency keys and the
//! retry schedule.
//!
//! Expected values come from naive reference code on `i128` (no overflow to think
//! about, explicit remainders) rather than from the functions under test.

use proptest::prelude::*;
use time::{Duration, OffsetDateTime};
use tollgate_core::recharge::{
    MAX_RECHARGE_ATTEMPTS, MIN_RECHARGE_THRESHOLD, RECHARGE_COOL_DOWN_SECONDS, RECHARGE_RETRY_BASE_DELAY_MS,
    RECHARGE_RETRY_MAX_DELAY_MS,
};
use tollgate_core::{
    AccountId, AutoRechargeSettings, FailureClass, Micros, RechargeBlocked, RechargeDecision,
    RechargeOutcome, RechargeRule, RechargeRuleError, RechargeSettingsField, RechargeStatus, Timestamp,
    TopupLimits, classify_failure, classify_payment_failure, recharge_decision, recharge_idempotency_key,
    retry_delay_ms,
};

const CENT: i128 = 10_000;
const DOLLAR: i64 = 1_000_000;

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Top-up limits: mostly the shipped ones, otherwise random whole cents.
fn arb_limits() -> impl Strategy<Value = TopupLimits> {
    prop_oneof![
        2 => Just(TopupLimits::default()),
        1 => (1_i64..=100_000, 0_i64..=2_000_000).prop_map(|(min_cents, extra_cents)| {
            TopupLimits::new(
                Micros::from_cents(min_cents).unwrap(),
                Micros::from_cents(min_cents + extra_cents).unwrap(),
            )
            .unwrap()
        }),
    ]
}

/// An amount near the interesting range (whole cents, or not), or anything at all.
fn arb_money() -> impl Strategy<Value = Micros> {
    prop_oneof![
        4 => (-100_000_i64..=1_500_000).prop_map(|cents| Micros::from_cents(cents).unwrap()),
        2 => (-20_000 * DOLLAR..=20_000 * DOLLAR).prop_map(Micros::new),
        1 => any::<i64>().prop_map(Micros::new),
    ]
}

/// A value at, or one micro-dollar or one cent either side of, one of `edges`.
fn near(edges: Vec<i64>) -> impl Strategy<Value = Micros> {
    (
        prop::sample::select(edges),
        prop::sample::select(vec![-CENT as i64, -1, 0, 1, CENT as i64]),
    )
        .prop_map(|(edge, delta)| Micros::new(edge.saturating_add(delta)))
}

/// A threshold and a target for `limits`, often right on a validation boundary.
fn arb_pair(limits: TopupLimits) -> impl Strategy<Value = (Micros, Micros)> {
    let (min, max) = (limits.minimum().get(), limits.maximum().get());
    let threshold = prop_oneof![
        2 => near(vec![MIN_RECHARGE_THRESHOLD.get(), max - min, 50 * DOLLAR]),
        1 => arb_money(),
    ];
    threshold.prop_flat_map(move |threshold| {
        let target = prop_oneof![
            2 => near(vec![threshold.get().saturating_add(min), max]),
            1 => arb_money(),
        ];
        (Just(threshold), target)
    })
}

/// Valid settings for `limits`, drawn from the valid range directly.
fn arb_settings(limits: TopupLimits) -> BoxedStrategy<AutoRechargeSettings> {
    let min_cents = limits.minimum().to_cents().unwrap();
    let max_cents = limits.maximum().to_cents().unwrap();
    let lowest = MIN_RECHARGE_THRESHOLD.to_cents().unwrap();
    let highest = max_cents - min_cents;
    if highest < lowest {
        // These limits leave no valid settings: fall back to the shipped ones.
        return Just(settings_of(50, 100, TopupLimits::default())).boxed();
    }
    (lowest..=highest)
        .prop_flat_map(move |threshold| (Just(threshold), threshold + min_cents..=max_cents))
        .prop_map(move |(threshold, target)| {
            AutoRechargeSettings::new(
                Micros::from_cents(threshold).unwrap(),
                Micros::from_cents(target).unwrap(),
                limits,
            )
            .unwrap()
        })
        .boxed()
}

fn settings_of(threshold_dollars: i64, target_dollars: i64, limits: TopupLimits) -> AutoRechargeSettings {
    AutoRechargeSettings::new(
        Micros::from_dollars(threshold_dollars).unwrap(),
        Micros::from_dollars(target_dollars).unwrap(),
        limits,
    )
    .unwrap()
}

/// Limits, settings valid under them, and a balance: mostly below the threshold,
/// often just below it, sometimes negative, sometimes not whole cents.
fn arb_case() -> impl Strategy<Value = (TopupLimits, AutoRechargeSettings, Micros)> {
    arb_limits()
        .prop_flat_map(|limits| (Just(limits), arb_settings(limits)))
        .prop_flat_map(|(limits, settings)| {
            let threshold = settings.threshold().get();
            let available = prop_oneof![
                2 => near(vec![threshold]),
                3 => (0..=threshold).prop_map(move |below| Micros::new(threshold - below)),
                2 => (1_i64..=20_000).prop_map(move |below| Micros::new(threshold - below)),
                2 => (-30_000 * DOLLAR..threshold).prop_map(Micros::new),
                1 => any::<i64>().prop_map(Micros::new),
            ];
            (Just(limits), Just(settings), available)
        })
}

/// What auto top-ups already charged this cycle, and the cap.
fn arb_cap_figures() -> impl Strategy<Value = (Micros, Micros)> {
    let recharged = prop_oneof![
        4 => (0_i64..=600_000).prop_map(|cents| Micros::from_cents(cents).unwrap()),
        1 => (-100 * DOLLAR..=10_000 * DOLLAR).prop_map(Micros::new),
        1 => any::<i64>().prop_map(Micros::new),
    ];
    let cap = prop_oneof![
        3 => Just(Micros::from_dollars(5_000).unwrap()),
        3 => (0_i64..=2_000_000).prop_map(|cents| Micros::from_cents(cents).unwrap()),
        1 => (-100 * DOLLAR..=100_000 * DOLLAR).prop_map(Micros::new),
        1 => any::<i64>().prop_map(Micros::new),
    ];
    (recharged, cap)
}

const BASE_UNIX_SECONDS: i64 = 1_790_000_000;

fn at(seconds: i64) -> Timestamp {
    OffsetDateTime::from_unix_timestamp(BASE_UNIX_SECONDS + seconds).unwrap()
}

fn arb_reason() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "card_declined",
        "insufficient_funds",
        "authentication_required",
        "expired_card",
        "processing_error",
    ])
    .prop_map(str::to_owned)
}

/// Any rule a store could hold, with failures around two hours either side of
/// `at(0)`.
fn arb_rule() -> impl Strategy<Value = RechargeRule> {
    let status = prop_oneof![
        Just(RechargeStatus::Armed),
        (1_u64..=1_000).prop_map(|sequence| RechargeStatus::InFlight { sequence }),
        (arb_reason(), -7_200_i64..=7_200).prop_map(|(reason, offset)| RechargeStatus::Failed {
            reason,
            failed_at: at(offset)
        }),
        (arb_reason(), -7_200_i64..=7_200).prop_map(|(reason, offset)| RechargeStatus::ActionRequired {
            reason,
            failed_at: at(offset)
        }),
        (-40_i64..=0).prop_map(|days| RechargeStatus::CapReached {
            cycle_start: at(days * 86_400)
        }),
    ];
    (any::<bool>(), status, 0_u64..=1_000)
        .prop_map(|(enabled, status, last)| RechargeRule::restore(enabled, status, last))
}

/// A rule and a time: around `at(0)`, or, for a failed rule, often within a second
/// of the end of its cool-down.
fn arb_rule_and_now() -> impl Strategy<Value = (RechargeRule, Timestamp)> {
    arb_rule().prop_flat_map(|rule| {
        let failed_at = match rule.status() {
            RechargeStatus::Failed { failed_at, .. } | RechargeStatus::ActionRequired { failed_at, .. } => {
                Some(*failed_at)
            }
            _ => None,
        };
        let around = (-7_200_i64..=10_800).prop_map(at).boxed();
        let now = match failed_at {
            Some(failed_at) => prop_oneof![
                around,
                (-1_000_000_i64..=1_000_000).prop_map(move |micros| {
                    failed_at + Duration::seconds(RECHARGE_COOL_DOWN_SECONDS) + Duration::microseconds(micros)
                }),
                prop::sample::select(vec![-1_i64, 0, 1]).prop_map(move |micros| {
                    failed_at + Duration::seconds(RECHARGE_COOL_DOWN_SECONDS) + Duration::microseconds(micros)
                }),
            ]
            .boxed(),
            None => around,
        };
        (Just(rule), now)
    })
}

// ---------------------------------------------------------------------------
// Reference code
// ---------------------------------------------------------------------------

fn valid_reference(threshold: i64, target: i64, limits: TopupLimits) -> bool {
    let (threshold, target) = (i128::from(threshold), i128::from(target));
    let (min, max) = (
        i128::from(limits.minimum().get()),
        i128::from(limits.maximum().get()),
    );
    threshold % CENT == 0
        && target % CENT == 0
        && threshold >= i128::from(MIN_RECHARGE_THRESHOLD.get())
        && target >= threshold + min
        && target <= max
}

/// Whether the threshold alone is out of bounds (so the error must name it).
fn threshold_alone_invalid(threshold: i64, limits: TopupLimits) -> bool {
    let threshold = i128::from(threshold);
    let (min, max) = (
        i128::from(limits.minimum().get()),
        i128::from(limits.maximum().get()),
    );
    threshold % CENT != 0 || threshold < i128::from(MIN_RECHARGE_THRESHOLD.get()) || threshold > max - min
}

/// Ceiling of `value` to a multiple of one cent.
fn ceil_cent(value: i128) -> i128 {
    let remainder = value.rem_euclid(CENT);
    if remainder == 0 {
        value
    } else {
        value + CENT - remainder
    }
}

/// Floor of `value` to a multiple of one cent.
fn floor_cent(value: i128) -> i128 {
    value - value.rem_euclid(CENT)
}

/// What is left under the cap, as whole cents (never below zero).
fn left_under_cap(recharged: Micros, cap: Micros) -> i128 {
    let used = i128::from(recharged.get()).max(0);
    floor_cent((i128::from(cap.get()) - used).max(0))
}

fn is_cooling_down(rule: &RechargeRule, now: Timestamp) -> bool {
    match rule.status() {
        RechargeStatus::Failed { failed_at, .. } | RechargeStatus::ActionRequired { failed_at, .. } => {
            now < *failed_at + Duration::seconds(RECHARGE_COOL_DOWN_SECONDS)
        }
        _ => false,
    }
}

fn may_start(rule: &RechargeRule, now: Timestamp) -> bool {
    rule.enabled() && rule.in_flight().is_none() && !is_cooling_down(rule, now)
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn settings_validation_accepts_exactly_the_valid_pairs(
        (limits, (threshold, target)) in arb_limits().prop_flat_map(|limits| (Just(limits), arb_pair(limits))),
    ) {
        let result = AutoRechargeSettings::new(threshold, target, limits);
        let valid = valid_reference(threshold.get(), target.get(), limits);
        prop_assert_eq!(result.is_ok(), valid, "{:?}", result);
        match result {
            Ok(settings) => {
                prop_assert_eq!(settings.threshold(), threshold);
                prop_assert_eq!(settings.target(), target);
            }
            Err(error) => {
                let field = if threshold_alone_invalid(threshold.get(), limits) {
                    RechargeSettingsField::Threshold
                } else {
                    RechargeSettingsField::Target
                };
                prop_assert_eq!(error.field, field, "{}", error);
                let prefix = format!("the {}", field.param());
                prop_assert!(error.to_string().starts_with(&prefix), "{}", error);
            }
        }
        // The API's text form gives the same answer.
        let parsed = AutoRechargeSettings::parse(&threshold.to_string(), &target.to_string(), limits);
        prop_assert_eq!(parsed, result);
    }

    #[test]
    fn settings_on_the_valid_boundary_are_accepted(limits in arb_limits(), settings in arb_settings(TopupLimits::default())) {
        // Drawn from the valid range: always accepted, and a cent beyond an edge is not.
        prop_assert!(AutoRechargeSettings::new(settings.threshold(), settings.target(), TopupLimits::default()).is_ok());
        let least = settings.threshold().checked_add(TopupLimits::default().minimum()).unwrap();
        let below = least.checked_sub(Micros::from_cents(1).unwrap()).unwrap();
        prop_assert!(AutoRechargeSettings::new(settings.threshold(), below, TopupLimits::default()).is_err());
        let max = limits.maximum();
        prop_assert!(
            AutoRechargeSettings::new(settings.threshold(), max.checked_add(Micros::from_cents(1).unwrap()).unwrap(), limits).is_err()
        );
    }
}

// ---------------------------------------------------------------------------
// Amount and decision
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn the_amount_obeys_every_bound(
        (limits, settings, available) in arb_case(),
        (recharged, cap) in arb_cap_figures(),
    ) {
        let rule = RechargeRule::new(true);
        let now = at(0);
        let decision = recharge_decision(settings, &rule, available, now, recharged, cap, limits);
        let (threshold, target) = (i128::from(settings.threshold().get()), i128::from(settings.target().get()));
        let available_exact = i128::from(available.get());
        let (min, max) = (i128::from(limits.minimum().get()), i128::from(limits.maximum().get()));
        let left = left_under_cap(recharged, cap);
        let needed = target - available_exact;

        if available_exact >= threshold {
            prop_assert_eq!(decision, RechargeDecision::NotNeeded);
            return Ok(());
        }
        if left < min {
            prop_assert_eq!(decision, RechargeDecision::Blocked(RechargeBlocked::CapReached));
            return Ok(());
        }
        let RechargeDecision::Start { amount } = decision else {
            return Err(TestCaseError::fail(format!("expected a start, got {decision:?}")));
        };
        let amount = i128::from(amount.get());
        prop_assert_eq!(amount % CENT, 0, "whole cents");
        prop_assert!(amount >= min, "at least the minimum top-up");
        prop_assert!(amount <= max, "at most the maximum top-up");
        prop_assert!(i128::from(recharged.get()).max(0) + amount <= i128::from(cap.get()), "within the cap");
        prop_assert!(i128::from(recharged.get()) + amount <= i128::from(cap.get()), "within the cap");
        let capped = ceil_cent(needed) > max || ceil_cent(needed) > left;
        if !capped {
            prop_assert!(available_exact + amount >= target, "reaches the target");
        }
        if needed >= min {
            prop_assert!(amount - needed < CENT, "less than a cent over what is needed");
        }
        // The exact reference amount.
        let expected = ceil_cent(needed).max(min).min(max).min(left);
        prop_assert_eq!(amount, expected);
    }

    #[test]
    fn never_start_while_in_flight_cooling_down_or_disabled(
        (limits, settings, available) in arb_case(),
        (recharged, cap) in arb_cap_figures(),
        (rule, now) in arb_rule_and_now(),
    ) {
        let decision = recharge_decision(settings, &rule, available, now, recharged, cap, limits);
        match decision {
            RechargeDecision::Start { amount } => {
                prop_assert!(may_start(&rule, now), "{:?} started from {:?}", decision, rule);
                prop_assert!(rule.start(now).is_ok());
                // The cap holds whatever the rule's state.
                prop_assert!(i128::from(recharged.get()) + i128::from(amount.get()) <= i128::from(cap.get()));
            }
            RechargeDecision::Blocked(RechargeBlocked::Disabled) => prop_assert!(!rule.enabled()),
            RechargeDecision::Blocked(RechargeBlocked::InFlight { sequence }) => {
                prop_assert!(rule.enabled());
                prop_assert_eq!(rule.in_flight(), Some(sequence));
            }
            RechargeDecision::Blocked(RechargeBlocked::CoolingDown { until }) => {
                prop_assert!(rule.enabled() && rule.in_flight().is_none());
                prop_assert!(is_cooling_down(&rule, now) && now < until);
            }
            RechargeDecision::Blocked(RechargeBlocked::CapReached) => {
                prop_assert!(may_start(&rule, now));
                prop_assert!(left_under_cap(recharged, cap) < i128::from(limits.minimum().get()));
            }
            RechargeDecision::NotNeeded => prop_assert!(available >= settings.threshold()),
        }
        // The rule guards itself too, whatever the caller decided.
        prop_assert_eq!(rule.start(now).is_ok(), may_start(&rule, now) && rule.last_sequence() < u64::MAX);
    }
}

// ---------------------------------------------------------------------------
// The rule as a state machine
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Event {
    Start,
    Succeed,
    Fail(FailureClass, String),
    /// A report for a sequence that may not be the one in flight.
    StaleReport(u64),
    Enable,
    Disable,
    SettingsChanged,
    CardChanged,
    Wait(i64),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Start),
        2 => Just(Event::Succeed),
        2 => (
            prop::sample::select(vec![FailureClass::Transient, FailureClass::Declined, FailureClass::ActionRequired]),
            arb_reason(),
        )
            .prop_map(|(class, reason)| Event::Fail(class, reason)),
        1 => (0_u64..=20).prop_map(Event::StaleReport),
        1 => Just(Event::Enable),
        1 => Just(Event::Disable),
        1 => Just(Event::SettingsChanged),
        1 => Just(Event::CardChanged),
        2 => (0_i64..=4_000).prop_map(Event::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_rule_hands_out_each_sequence_once_and_one_at_a_time(
        events in prop::collection::vec(arb_event(), 1..60),
    ) {
        let mut rule = RechargeRule::new(true);
        let mut now = at(0);
        let mut started: Vec<u64> = Vec::new();
        for event in events {
            let before = rule.clone();
            match event {
                Event::Start => match rule.start(now) {
                    Ok((next, sequence)) => {
                        prop_assert!(may_start(&before, now));
                        prop_assert_eq!(sequence, before.last_sequence() + 1);
                        prop_assert_eq!(next.in_flight(), Some(sequence));
                        prop_assert!(!started.contains(&sequence));
                        started.push(sequence);
                        rule = next;
                    }
                    Err(RechargeRuleError::Blocked(_)) => prop_assert!(!may_start(&before, now)),
                    Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
                },
                Event::Succeed | Event::Fail(..) => {
                    let outcome = match &event {
                        Event::Fail(class, reason) => RechargeOutcome::Failed { class: *class, reason: reason.clone() },
                        _ => RechargeOutcome::Succeeded,
                    };
                    let Some(sequence) = rule.in_flight() else {
                        prop_assert!(rule.resolve(1, &outcome, now).is_err());
                        continue;
                    };
                    let next = rule.resolve(sequence, &outcome, now).unwrap();
                    prop_assert_eq!(next.enabled(), before.enabled(), "resolving keeps on/off");
                    prop_assert_eq!(next.in_flight(), None);
                    let expected_code = match &outcome {
                        RechargeOutcome::Succeeded => "armed",
                        RechargeOutcome::Failed { class: FailureClass::ActionRequired, .. } => "action_required",
                        RechargeOutcome::Failed { .. } => "failed",
                    };
                    prop_assert_eq!(next.status().code(), expected_code);
                    rule = next;
                }
                Event::StaleReport(sequence) => {
                    if rule.in_flight() != Some(sequence) {
                        prop_assert_eq!(
                            rule.resolve(sequence, &RechargeOutcome::Succeeded, now),
                            Err(RechargeRuleError::NotInFlight { sequence })
                        );
                    }
                }
                Event::Enable => {
                    rule = rule.enable();
                    prop_assert!(rule.enabled());
                    prop_assert_eq!(rule.in_flight(), before.in_flight());
                    if before.in_flight().is_none() {
                        prop_assert_eq!(rule.status(), &RechargeStatus::Armed);
                    }
                }
                Event::Disable => {
                    rule = rule.disable();
                    prop_assert!(!rule.enabled());
                    prop_assert_eq!(rule.status(), before.status(), "an in-flight recharge is still resolved");
                }
                Event::SettingsChanged | Event::CardChanged => {
                    rule = if matches!(event, Event::CardChanged) { rule.card_changed() } else { rule.settings_changed() };
                    prop_assert_eq!(rule.enabled(), before.enabled());
                    prop_assert_eq!(rule.in_flight(), before.in_flight());
                    if before.in_flight().is_none() {
                        prop_assert_eq!(rule.status(), &RechargeStatus::Armed);
                    }
                }
                Event::Wait(seconds) => now += Duration::seconds(seconds),
            }
            // Invariants after every event.
            prop_assert!(rule.last_sequence() >= before.last_sequence());
            prop_assert_eq!(rule.last_sequence(), started.len() as u64);
            if let Some(sequence) = rule.in_flight() {
                prop_assert_eq!(Some(&sequence), started.last());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Idempotency keys, retries, classification
// ---------------------------------------------------------------------------

fn arb_account() -> impl Strategy<Value = AccountId> {
    "[a-zA-Z0-9_-]{1,64}".prop_map(|text| AccountId::parse(&text).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn idempotency_keys_are_stable_and_tell_recharges_apart(
        a in arb_account(),
        b in arb_account(),
        sequence_a in any::<u64>(),
        sequence_b in any::<u64>(),
    ) {
        let key = recharge_idempotency_key(&a, sequence_a);
        prop_assert_eq!(&key, &recharge_idempotency_key(&a, sequence_a));
        prop_assert!(key.len() <= 255);
        // The key gives back the account and the sequence: distinct pairs, distinct keys.
        let rest = key.strip_prefix("tollgate-recharge-").unwrap();
        let (account, sequence) = rest.rsplit_once('-').unwrap();
        prop_assert_eq!(account, a.as_str());
        prop_assert_eq!(sequence.parse::<u64>().unwrap(), sequence_a);
        let other = recharge_idempotency_key(&b, sequence_b);
        prop_assert_eq!(key == other, a == b && sequence_a == sequence_b);
    }

    #[test]
    fn retries_are_bounded_and_never_shrink(attempt in 0_u32..=100) {
        let delay = retry_delay_ms(attempt);
        prop_assert_eq!(delay.is_some(), (1..MAX_RECHARGE_ATTEMPTS).contains(&attempt));
        if let Some(delay) = delay {
            prop_assert!((RECHARGE_RETRY_BASE_DELAY_MS..=RECHARGE_RETRY_MAX_DELAY_MS).contains(&delay));
            if let Some(next) = retry_delay_ms(attempt + 1) {
                prop_assert!(next >= delay && next <= delay.saturating_mul(2));
            }
        }
    }

    #[test]
    fn a_payment_failure_without_decline_code_is_its_code(code in "[a-z_]{0,30}", decline in "[a-z_]{0,30}") {
        prop_assert_eq!(classify_payment_failure(&code, None), classify_failure(&code));
        let combined = classify_payment_failure(&code, Some(&decline));
        let classes = [classify_failure(&code), classify_failure(&decline)];
        if classes.contains(&FailureClass::ActionRequired) {
            prop_assert_eq!(combined, FailureClass::ActionRequired);
        } else if classes.contains(&FailureClass::Transient) {
            prop_assert_eq!(combined, FailureClass::Transient);
        } else {
            prop_assert_eq!(combined, FailureClass::Declined);
        }
    }
}
