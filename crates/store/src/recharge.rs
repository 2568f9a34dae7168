//! Auto Top-Up decisions both backends make the same way: how a stored rule row
//! reads and writes, what saving settings changes, whether asking for a recharge
//! starts one, and how a settled auto top-up resolves its rule. Each backend only
//! loads rows and writes what is decided here, in the transaction (and under the
//! account lock) of the operation that asked.
//!
//! The rule itself, its transitions and the recharge decision are
//! `tollgate_core::recharge`'s.

use tollgate_core::clock::{from_unix_micros, to_unix_micros};
use tollgate_core::money::MICROS_PER_CENT;
use tollgate_core::recharge::DEFAULT_MONTHLY_RECHARGE_CAP;
use tollgate_core::{
    AccountId, AutoRechargeSettings, BillingCycle, CycleAnchor, FailureClass, Micros, RechargeBlocked,
    RechargeDecision, RechargeOutcome, RechargeRule, RechargeRuleError, RechargeStatus, Timestamp,
    TopupAmount, TopupLimits, TopupOutcome, TopupSource, classify_failure, recharge_decision,
};

use crate::{AutoRechargeChange, AutoRechargeRecord, StoreError, StoreResult, TopupRecord};

/// Most accounts one `due_auto_recharges` call returns, and most top-ups one
/// `open_auto_recharges` call returns.
pub const MAX_AUTO_RECHARGE_BATCH: usize = 100;

/// The reason recorded when a recharge's payment needs the customer (3-D Secure).
pub(crate) const AUTHENTICATION_REQUIRED: &str = "authentication_required";
/// The reason recorded when a recharge's payment was given up.
pub(crate) const CANCELED: &str = "canceled";

fn corrupt(account: &str, what: &str) -> StoreError {
    StoreError::Database(format!(
        "stored auto top-up rule of `{account}` has an invalid {what}"
    ))
}

fn sequence_overflow() -> StoreError {
    StoreError::Overflow("recharge sequence")
}

/// A recharge sequence as stored (BIGINT).
pub(crate) fn stored_sequence(sequence: u64) -> StoreResult<i64> {
    i64::try_from(sequence).map_err(|_| sequence_overflow())
}

/// A stored recharge sequence.
pub(crate) fn read_sequence(stored: i64) -> StoreResult<u64> {
    u64::try_from(stored)
        .map_err(|_| StoreError::Database(format!("stored recharge sequence {stored} is negative")))
}

/// Limits that accept every settings value the store ever saved: the saved ones were
/// checked against the top-up limits of their day, and a later change of the limits
/// must not make a customer's rule unreadable. (Threshold at least $5, target above
/// it, whole cents: what the table's CHECKs keep anyway.)
fn stored_limits() -> TopupLimits {
    TopupLimits::new(
        Micros::new(MICROS_PER_CENT),
        Micros::new(i64::MAX - i64::MAX % MICROS_PER_CENT),
    )
    .unwrap_or_default()
}

/// One `auto_recharge_rules` row, as read or to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuleColumns {
    pub enabled: bool,
    pub threshold: i64,
    pub target: i64,
    pub monthly_cap: i64,
    pub status: &'static str,
    pub status_reason: Option<String>,
    pub status_at: Option<i64>,
    /// Until when the rule cannot be due (end of its cool-down or of its capped cycle).
    pub blocked_until: Option<i64>,
    pub last_sequence: i64,
    pub in_flight_sequence: Option<i64>,
}

/// An account's saved Auto Top-Up: rule, settings and cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuleState {
    pub rule: RechargeRule,
    pub settings: AutoRechargeSettings,
    pub monthly_cap: Micros,
}

/// The stored status code, as [`RechargeStatus::code`] writes it.
pub(crate) fn status_code(code: &str) -> Option<&'static str> {
    ["armed", "in_flight", "failed", "action_required", "cap_reached"]
        .into_iter()
        .find(|known| *known == code)
}

impl RuleState {
    /// Reads a stored row of `account`.
    pub fn from_columns(account: &str, columns: &RuleColumns) -> StoreResult<RuleState> {
        let settings = AutoRechargeSettings::new(
            Micros::new(columns.threshold),
            Micros::new(columns.target),
            stored_limits(),
        )
        .map_err(|_| corrupt(account, "threshold or target"))?;
        let failed = || -> StoreResult<(String, Timestamp)> {
            match (&columns.status_reason, columns.status_at) {
                (Some(reason), Some(at)) => Ok((reason.clone(), from_unix_micros(at))),
                _ => Err(corrupt(account, "failure")),
            }
        };
        let status = match columns.status {
            "armed" => RechargeStatus::Armed,
            "in_flight" => RechargeStatus::InFlight {
                sequence: read_sequence(
                    columns
                        .in_flight_sequence
                        .ok_or_else(|| corrupt(account, "in-flight sequence"))?,
                )?,
            },
            "failed" => {
                let (reason, failed_at) = failed()?;
                RechargeStatus::Failed { reason, failed_at }
            }
            "action_required" => {
                let (reason, failed_at) = failed()?;
                RechargeStatus::ActionRequired { reason, failed_at }
            }
            "cap_reached" => RechargeStatus::CapReached {
                cycle_start: from_unix_micros(
                    columns.status_at.ok_or_else(|| corrupt(account, "cap cycle"))?,
                ),
            },
            _ => return Err(corrupt(account, "status")),
        };
        Ok(RuleState {
            rule: RechargeRule::restore(columns.enabled, status, read_sequence(columns.last_sequence)?),
            settings,
            monthly_cap: Micros::new(columns.monthly_cap),
        })
    }

    /// The row to store for this state of an account whose cycles start on `anchor`.
    pub fn to_columns(&self, anchor: CycleAnchor) -> StoreResult<RuleColumns> {
        let rule = &self.rule;
        let (status_reason, status_at, blocked_until) = match rule.status() {
            RechargeStatus::Armed | RechargeStatus::InFlight { .. } => (None, None, None),
            RechargeStatus::Failed { reason, failed_at }
            | RechargeStatus::ActionRequired { reason, failed_at } => (
                Some(reason.clone()),
                Some(to_unix_micros(*failed_at)),
                rule.cool_down_ends_at().map(to_unix_micros),
            ),
            RechargeStatus::CapReached { cycle_start } => (
                None,
                Some(to_unix_micros(*cycle_start)),
                Some(to_unix_micros(BillingCycle::containing(anchor, *cycle_start).end)),
            ),
        };
        Ok(RuleColumns {
            enabled: rule.enabled(),
            threshold: self.settings.threshold().get(),
            target: self.settings.target().get(),
            monthly_cap: self.monthly_cap.get(),
            status: rule.status().code(),
            status_reason,
            status_at,
            blocked_until,
            last_sequence: stored_sequence(rule.last_sequence())?,
            in_flight_sequence: rule.in_flight().map(stored_sequence).transpose()?,
        })
    }

    /// The same settings and cap with another rule.
    pub fn with_rule(&self, rule: RechargeRule) -> RuleState {
        RuleState {
            rule,
            settings: self.settings,
            monthly_cap: self.monthly_cap,
        }
    }
}

/// The record of an account's Auto Top-Up, `saved` being its stored state and when it
/// last changed (`None` when never configured).
pub(crate) fn record(
    account: AccountId,
    saved: Option<(RuleState, Timestamp)>,
    recharged_this_cycle: Micros,
    cycle: BillingCycle,
) -> AutoRechargeRecord {
    match saved {
        Some((state, updated_at)) => AutoRechargeRecord {
            account,
            rule: state.rule,
            settings: Some(state.settings),
            monthly_cap: state.monthly_cap,
            recharged_this_cycle,
            cycle_start: cycle.start,
            updated_at: Some(updated_at),
        },
        None => AutoRechargeRecord {
            account,
            rule: RechargeRule::default(),
            settings: None,
            monthly_cap: DEFAULT_MONTHLY_RECHARGE_CAP,
            recharged_this_cycle,
            cycle_start: cycle.start,
            updated_at: None,
        },
    }
}

/// The billing cycle an account created at `created_at` is in at `now`.
pub(crate) fn cycle_of(created_at: Timestamp, now: Timestamp) -> BillingCycle {
    BillingCycle::containing(CycleAnchor::from_created_at(created_at), now)
}

// ---------------------------------------------------------------------------
// Settings

/// What saving `change` makes of the stored state (`None`: never configured), or
/// `None` when it changes nothing.
///
/// Switching on needs a card. A change of threshold, target or cap re-arms the rule
/// (and so does switching it on); switching off keeps the status, and a recharge in
/// flight stays in flight either way: it is resolved when its payment settles.
pub(crate) fn apply_change(
    current: Option<&RuleState>,
    change: &AutoRechargeChange,
    has_card: bool,
) -> StoreResult<Option<RuleState>> {
    if change.enabled && !has_card {
        return Err(StoreError::NoPaymentMethod);
    }
    let monthly_cap = change
        .monthly_cap
        .or(current.map(|current| current.monthly_cap))
        .unwrap_or(DEFAULT_MONTHLY_RECHARGE_CAP);
    if monthly_cap.is_negative() || !monthly_cap.is_whole_cents() {
        // The edge validates the cap; refusing here keeps a caller's bug out of the table.
        return Err(StoreError::Database(format!(
            "an auto top-up monthly cap is zero or more in whole cents, not {monthly_cap}"
        )));
    }
    let rule = current.map(|current| current.rule.clone()).unwrap_or_default();
    let settings_changed = current
        .is_none_or(|current| current.settings != change.settings || current.monthly_cap != monthly_cap);
    let rule = if settings_changed {
        rule.settings_changed()
    } else {
        rule
    };
    let rule = match (change.enabled, rule.enabled()) {
        (true, true) => rule,
        (true, false) => rule.enable(),
        (false, _) => rule.disable(),
    };
    let next = RuleState {
        rule,
        settings: change.settings,
        monthly_cap,
    };
    Ok((current != Some(&next)).then_some(next))
}

fn describe(state: &RuleState) -> String {
    format!(
        "enabled={} threshold={} target={} monthly_cap={} status={}",
        state.rule.enabled(),
        state.settings.threshold(),
        state.settings.target(),
        state.monthly_cap,
        state.rule.status().code()
    )
}

/// The audit action and before/after texts of a change of the rule.
pub(crate) fn change_audit(
    before: Option<&RuleState>,
    after: &RuleState,
) -> (&'static str, Option<String>, Option<String>) {
    let was_on = before.is_some_and(|before| before.rule.enabled());
    let action = match (was_on, after.rule.enabled()) {
        (false, true) => "auto_recharge.enabled",
        (true, false) => "auto_recharge.disabled",
        _ => "auto_recharge.updated",
    };
    (action, before.map(describe), Some(describe(after)))
}

/// The rule after the account's card was replaced, when that changes it.
pub(crate) fn after_card_changed(state: &RuleState) -> Option<RuleState> {
    let rule = state.rule.card_changed();
    (rule != state.rule).then(|| state.with_rule(rule))
}

/// The rule after the account's card was removed: switched off, when it was on.
pub(crate) fn after_card_removed(state: &RuleState) -> Option<RuleState> {
    state
        .rule
        .enabled()
        .then(|| state.with_rule(state.rule.disable()))
}

// ---------------------------------------------------------------------------
// Beginning a recharge

/// What asking for a recharge does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BeginPlan {
    /// Nothing to do, nothing to write.
    NotDue,
    /// Refused; nothing to write.
    Blocked(RechargeBlocked),
    /// The monthly cap stopped it: write this rule, when it says so for the first time
    /// in this cycle.
    CapReached(Option<RechargeRule>),
    /// Record this pending auto top-up and the rule, in flight.
    Start {
        /// The rule, now in flight with `sequence`.
        rule: RechargeRule,
        /// The recharge's sequence number.
        sequence: u64,
        /// How much to charge.
        amount: TopupAmount,
    },
}

/// Decides whether a recharge starts for an account whose saved state is `state`,
/// whose available balance is `available`, which has an open auto top-up of
/// sequence `open` (if any) and whose auto top-ups charged `recharged` in `cycle`.
pub(crate) fn plan_begin(
    state: Option<&RuleState>,
    available: Micros,
    open: Option<u64>,
    recharged: Micros,
    cycle: BillingCycle,
    now: Timestamp,
    limits: TopupLimits,
) -> StoreResult<BeginPlan> {
    let Some(state) = state else {
        return Ok(BeginPlan::NotDue);
    };
    let decision = recharge_decision(
        state.settings,
        &state.rule,
        available,
        now,
        recharged,
        state.monthly_cap,
        limits,
    );
    match decision {
        RechargeDecision::NotNeeded => Ok(BeginPlan::NotDue),
        RechargeDecision::Blocked(RechargeBlocked::CapReached) => {
            let recorded = matches!(
                state.rule.status(),
                RechargeStatus::CapReached { cycle_start } if *cycle_start == cycle.start
            );
            if recorded {
                return Ok(BeginPlan::CapReached(None));
            }
            match state.rule.cap_reached(cycle.start, now) {
                Ok(rule) => Ok(BeginPlan::CapReached(Some(rule))),
                Err(error) => rule_refusal(error),
            }
        }
        RechargeDecision::Blocked(blocked) => Ok(BeginPlan::Blocked(blocked)),
        RechargeDecision::Start { amount } => {
            // A payment waiting for the customer (3-D Secure) may still take money: no
            // second recharge while it is open, whatever the rule says.
            if let Some(sequence) = open {
                return Ok(BeginPlan::Blocked(RechargeBlocked::InFlight { sequence }));
            }
            let (rule, sequence) = match state.rule.start(now) {
                Ok(started) => started,
                Err(error) => return rule_refusal(error),
            };
            let amount = TopupAmount::new(amount, limits).map_err(|error| {
                StoreError::Database(format!("recharge amount {amount} is not a valid top-up: {error}"))
            })?;
            Ok(BeginPlan::Start {
                rule,
                sequence,
                amount,
            })
        }
    }
}

fn rule_refusal(error: RechargeRuleError) -> StoreResult<BeginPlan> {
    match error {
        RechargeRuleError::Blocked(blocked) => Ok(BeginPlan::Blocked(blocked)),
        RechargeRuleError::SequenceExhausted => Err(sequence_overflow()),
        RechargeRuleError::NotInFlight { sequence } => Err(StoreError::Database(format!(
            "recharge {sequence} is not in flight"
        ))),
    }
}

/// The rule as it would be had recharge `sequence` been handed out and resolved
/// already: used to skip a sequence whose top-up key a customer's top-up took.
pub(crate) fn skip_sequence(rule: &RechargeRule, sequence: u64) -> RechargeRule {
    RechargeRule::restore(rule.enabled(), rule.status().clone(), sequence)
}

/// The top-up idempotency key of recharge `sequence` (unique per account, like every
/// top-up key).
pub(crate) fn topup_key(sequence: u64) -> String {
    format!("auto-recharge-{sequence}")
}

/// The request fingerprint stored with an auto top-up.
pub(crate) fn topup_fingerprint(sequence: u64, amount: TopupAmount) -> String {
    format!("auto_recharge\u{1f}{sequence}\u{1f}{}", amount.get().get())
}

/// The refusal of `create_topup` for an auto top-up: only the rule starts those.
pub(crate) fn refuse_manual_auto_topup(source: TopupSource) -> StoreResult<()> {
    if source == TopupSource::AutoRecharge {
        return Err(StoreError::Conflict(
            "auto top-ups are started by the auto top-up rule (begin_auto_recharge), not created directly"
                .to_owned(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Resolving

/// What a top-up outcome means for the recharge it pays.
pub(crate) fn recharge_outcome(outcome: &TopupOutcome) -> RechargeOutcome {
    match outcome {
        TopupOutcome::Succeeded { .. } => RechargeOutcome::Succeeded,
        TopupOutcome::Failed { code, .. } => RechargeOutcome::Failed {
            class: classify_failure(code),
            reason: code.clone(),
        },
        TopupOutcome::RequiresAction { .. } => RechargeOutcome::Failed {
            class: FailureClass::ActionRequired,
            reason: AUTHENTICATION_REQUIRED.to_owned(),
        },
        TopupOutcome::Canceled => RechargeOutcome::Failed {
            class: FailureClass::Declined,
            reason: CANCELED.to_owned(),
        },
    }
}

/// The rule after `topup` settled with `outcome`, when the top-up is the recharge in
/// flight; `None` otherwise (another kind of top-up, a late or repeated report).
pub(crate) fn resolve(
    state: &RuleState,
    topup: &TopupRecord,
    outcome: &TopupOutcome,
    now: Timestamp,
) -> Option<RuleState> {
    if topup.source != TopupSource::AutoRecharge {
        return None;
    }
    let sequence = topup.recharge_sequence?;
    state
        .rule
        .resolve(sequence, &recharge_outcome(outcome), now)
        .ok()
        .map(|rule| state.with_rule(rule))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: Timestamp = datetime!(2026-11-25 12:00 UTC);

    fn dollars(text: &str) -> Micros {
        Micros::parse(text).expect("amount")
    }

    fn settings(threshold: &str, target: &str) -> AutoRechargeSettings {
        AutoRechargeSettings::parse(threshold, target, TopupLimits::default()).expect("settings")
    }

    fn state(rule: RechargeRule) -> RuleState {
        RuleState {
            rule,
            settings: settings("50", "100"),
            monthly_cap: DEFAULT_MONTHLY_RECHARGE_CAP,
        }
    }

    fn cycle() -> BillingCycle {
        BillingCycle::containing(CycleAnchor::from_created_at(datetime!(2026-10-01 9:00 UTC)), NOW)
    }

    #[test]
    fn every_status_survives_a_round_trip() {
        let anchor = CycleAnchor::from_created_at(datetime!(2026-10-01 9:00 UTC));
        let statuses = [
            RechargeStatus::Armed,
            RechargeStatus::InFlight { sequence: 7 },
            RechargeStatus::Failed {
                reason: "card_declined".to_owned(),
                failed_at: NOW,
            },
            RechargeStatus::ActionRequired {
                reason: AUTHENTICATION_REQUIRED.to_owned(),
                failed_at: NOW,
            },
            RechargeStatus::CapReached {
                cycle_start: cycle().start,
            },
        ];
        for status in statuses {
            for enabled in [true, false] {
                let saved = state(RechargeRule::restore(enabled, status.clone(), 7));
                let columns = saved.to_columns(anchor).expect("columns");
                assert_eq!(RuleState::from_columns("acme", &columns).expect("read"), saved);
            }
        }
        let failed = state(RechargeRule::restore(
            true,
            RechargeStatus::Failed {
                reason: "card_declined".to_owned(),
                failed_at: NOW,
            },
            1,
        ));
        assert_eq!(
            failed.to_columns(anchor).expect("columns").blocked_until,
            Some(to_unix_micros(datetime!(2026-11-25 13:00 UTC)))
        );
        let capped = state(RechargeRule::restore(
            true,
            RechargeStatus::CapReached {
                cycle_start: cycle().start,
            },
            1,
        ));
        assert_eq!(
            capped.to_columns(anchor).expect("columns").blocked_until,
            Some(to_unix_micros(datetime!(2026-12-01 00:00 UTC)))
        );
    }

    #[test]
    fn enabling_needs_a_card_and_changes_re_arm() {
        let change = AutoRechargeChange {
            enabled: true,
            settings: settings("50", "100"),
            monthly_cap: None,
        };
        assert!(matches!(
            apply_change(None, &change, false),
            Err(StoreError::NoPaymentMethod)
        ));
        let on = apply_change(None, &change, true)
            .expect("saved")
            .expect("changed");
        assert!(on.rule.enabled());
        assert_eq!(on.monthly_cap, DEFAULT_MONTHLY_RECHARGE_CAP);
        assert_eq!(apply_change(Some(&on), &change, true).expect("same"), None);
        let failed = on.with_rule(RechargeRule::restore(
            true,
            RechargeStatus::Failed {
                reason: "card_declined".to_owned(),
                failed_at: NOW,
            },
            1,
        ));
        // The same settings saved again change nothing: the failure stands.
        assert_eq!(apply_change(Some(&failed), &change, true).expect("same"), None);
        let raised = AutoRechargeChange {
            monthly_cap: Some(dollars("6000")),
            ..change.clone()
        };
        let rearmed = apply_change(Some(&failed), &raised, true)
            .expect("saved")
            .expect("changed");
        assert_eq!(rearmed.rule.status(), &RechargeStatus::Armed);
        // Switching off needs no card and keeps a recharge in flight.
        let in_flight = on.with_rule(RechargeRule::restore(
            true,
            RechargeStatus::InFlight { sequence: 3 },
            3,
        ));
        let off = AutoRechargeChange {
            enabled: false,
            ..change.clone()
        };
        let stopped = apply_change(Some(&in_flight), &off, false)
            .expect("saved")
            .expect("changed");
        assert!(!stopped.rule.enabled());
        assert_eq!(stopped.rule.in_flight(), Some(3));
        assert_eq!(
            change_audit(Some(&in_flight), &stopped).0,
            "auto_recharge.disabled"
        );
        assert_eq!(change_audit(None, &on).0, "auto_recharge.enabled");
        for cap in [dollars("-1"), dollars("10.005")] {
            let odd = AutoRechargeChange {
                monthly_cap: Some(cap),
                ..change.clone()
            };
            assert!(matches!(
                apply_change(Some(&on), &odd, true),
                Err(StoreError::Database(_))
            ));
        }
    }

    #[test]
    fn begin_starts_once_and_records_the_cap_once_per_cycle() {
        let armed = state(RechargeRule::new(true));
        let plan = |state: &RuleState, available: &str, open, recharged: &str| {
            plan_begin(
                Some(state),
                dollars(available),
                open,
                dollars(recharged),
                cycle(),
                NOW,
                TopupLimits::default(),
            )
            .expect("plan")
        };
        assert_eq!(plan(&armed, "50", None, "0"), BeginPlan::NotDue);
        let BeginPlan::Start {
            rule,
            sequence,
            amount,
        } = plan(&armed, "49.995", None, "0")
        else {
            panic!("a recharge starts");
        };
        assert_eq!((sequence, amount.get()), (1, dollars("50.01")));
        assert_eq!(rule.in_flight(), Some(1));
        assert_eq!(
            plan(&armed.with_rule(rule), "0", None, "0"),
            BeginPlan::Blocked(RechargeBlocked::InFlight { sequence: 1 })
        );
        // An auto top-up waiting for the customer blocks the next one.
        assert_eq!(
            plan(&armed, "0", Some(4), "0"),
            BeginPlan::Blocked(RechargeBlocked::InFlight { sequence: 4 })
        );
        let BeginPlan::CapReached(Some(capped)) = plan(&armed, "0", None, "4995") else {
            panic!("the cap is recorded");
        };
        assert_eq!(
            plan(&armed.with_rule(capped), "0", None, "4995"),
            BeginPlan::CapReached(None)
        );
        assert_eq!(
            plan_begin(
                None,
                Micros::ZERO,
                None,
                Micros::ZERO,
                cycle(),
                NOW,
                TopupLimits::default()
            )
            .expect("plan"),
            BeginPlan::NotDue
        );
        assert_eq!(
            skip_sequence(&RechargeRule::new(true), 5)
                .start(NOW)
                .map(|(_, next)| next),
            Ok(6)
        );
    }

    #[test]
    fn outcomes_resolve_the_recharge_in_flight_only() {
        assert_eq!(
            recharge_outcome(&TopupOutcome::RequiresAction {
                payment_reference: "pi_1".to_owned()
            }),
            RechargeOutcome::Failed {
                class: FailureClass::ActionRequired,
                reason: AUTHENTICATION_REQUIRED.to_owned()
            }
        );
        assert_eq!(
            recharge_outcome(&TopupOutcome::Canceled),
            RechargeOutcome::Failed {
                class: FailureClass::Declined,
                reason: CANCELED.to_owned()
            }
        );
        assert_eq!(
            recharge_outcome(&TopupOutcome::Failed {
                payment_reference: None,
                code: "insufficient_funds".to_owned(),
                message: String::new(),
            }),
            RechargeOutcome::Failed {
                class: FailureClass::Declined,
                reason: "insufficient_funds".to_owned()
            }
        );
    }
}
