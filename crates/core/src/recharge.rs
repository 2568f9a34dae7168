//! Auto Top-Up: the settings a customer saves, the state of the rule that acts on
//! them, and the pure decision a debit asks for (recharge or not, and how much).
//!
//! The store is expected to call [`recharge_decision`] in the same transaction as
//! the debit that may trigger it and to record [`RechargeRule::start`] there too:
//! the rule is then in flight before anyone else can look, so exactly one recharge
//! is in flight per account, whatever the number of concurrent requests or server
//! instances. The card is charged only after that commit, under
//! [`recharge_idempotency_key`], so a retry after a crash re-sends the same key and
//! the processor charges at most once.
//!
//! The processor is not named here: failure codes are classified by
//! [`classify_failure`], and everything else is Tollgate's own rule.

use time::Duration;

use crate::cycle::Timestamp;
use crate::ids::AccountId;
use crate::money::{MICROS_PER_CENT, MICROS_PER_DOLLAR, Micros, ParseMoneyError, format_usd};
use crate::payments::TopupLimits;

/// Lowest threshold a customer may set (PRODUCT.md: at least $5).
pub const MIN_RECHARGE_THRESHOLD: Micros = Micros::new(5 * MICROS_PER_DOLLAR);
/// Default monthly cap on auto-recharged money per account (PRODUCT.md: $5,000); it
/// stops a runaway loop from emptying a card.
pub const DEFAULT_MONTHLY_RECHARGE_CAP: Micros = Micros::new(5_000 * MICROS_PER_DOLLAR);
/// How long a failed rule waits before it arms itself again (PRODUCT.md: 1 hour).
pub const RECHARGE_COOL_DOWN_SECONDS: i64 = 3600;
/// Wait after the first transient failure; each further failure doubles it.
pub const RECHARGE_RETRY_BASE_DELAY_MS: u64 = 1_000;
/// Longest wait between two attempts of one recharge.
pub const RECHARGE_RETRY_MAX_DELAY_MS: u64 = 60_000;
/// Most attempts (the first one included) at charging one recharge before the
/// transient failures are given up on: 7 waits, 123 s in all.
pub const MAX_RECHARGE_ATTEMPTS: u32 = 8;
/// First part of every recharge's idempotency key; it keeps recharge keys apart from
/// every other key Tollgate sends to the processor.
pub const RECHARGE_IDEMPOTENCY_KEY_PREFIX: &str = "tollgate-recharge";

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// The customer's Auto Top-Up settings: "when the available balance goes below
/// `threshold`, top it up to `target`".
///
/// Both are whole cents. `threshold` is at least [`MIN_RECHARGE_THRESHOLD`];
/// `target` is at least `threshold` + the minimum top-up, so every recharge is at
/// least a valid top-up, and at most the maximum top-up, so that one recharge from
/// an empty balance always reaches the target: the maximum only cuts a recharge
/// short when the balance is negative (after a refund or a lost dispute). As a
/// consequence the threshold is at most `maximum − minimum` top-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoRechargeSettings {
    threshold: Micros,
    target: Micros,
}

/// A setting of [`AutoRechargeSettings`], as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RechargeSettingsField {
    /// "When the balance goes below."
    Threshold,
    /// "Refill to."
    Target,
}

impl RechargeSettingsField {
    /// The request field, for the error's `param`: `threshold` or `target`.
    pub const fn param(self) -> &'static str {
        match self {
            RechargeSettingsField::Threshold => "threshold",
            RechargeSettingsField::Target => "target",
        }
    }
}

impl std::fmt::Display for RechargeSettingsField {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.param())
    }
}

/// What is wrong with one setting; each reason is shown to the customer after the
/// field's name ("the target must be at least $60.00: …").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RechargeSettingsProblem {
    /// Not a decimal number of dollars.
    #[error("must be an amount in dollars, like 50 or 49.99")]
    NotANumber,
    /// Cards are charged in cents.
    #[error("must have at most 2 decimals (whole cents)")]
    TooManyDecimals,
    /// Under the smallest allowed value, which is given.
    #[error("must be at least {}", format_usd(*.0))]
    BelowMinimum(Micros),
    /// The target is under the threshold plus the minimum top-up (given).
    #[error("must be at least {}: the threshold plus the minimum top-up", format_usd(*.0))]
    TooCloseToThreshold(Micros),
    /// Over the largest allowed value, which is given.
    #[error("must be at most {}", format_usd(*.0))]
    AboveMaximum(Micros),
}

/// Why Auto Top-Up settings were refused: which field, and what is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {field} {problem}")]
pub struct InvalidRechargeSettings {
    /// The field to name as the error's `param`.
    pub field: RechargeSettingsField,
    /// What is wrong with it.
    pub problem: RechargeSettingsProblem,
}

impl InvalidRechargeSettings {
    const fn threshold(problem: RechargeSettingsProblem) -> InvalidRechargeSettings {
        InvalidRechargeSettings {
            field: RechargeSettingsField::Threshold,
            problem,
        }
    }

    const fn target(problem: RechargeSettingsProblem) -> InvalidRechargeSettings {
        InvalidRechargeSettings {
            field: RechargeSettingsField::Target,
            problem,
        }
    }
}

/// An amount as typed, before its range is checked: numbers too large to hold are
/// kept apart so that they are reported as out of range, not as malformed.
enum TypedAmount {
    Exact(Micros),
    TooLarge,
    TooSmall,
}

fn read_amount(text: &str) -> Result<TypedAmount, RechargeSettingsProblem> {
    let text = text.trim();
    match Micros::parse(text) {
        Ok(amount) => Ok(TypedAmount::Exact(amount)),
        Err(ParseMoneyError::TooManyDecimals) => Err(RechargeSettingsProblem::TooManyDecimals),
        Err(ParseMoneyError::OutOfRange) if text.starts_with('-') => Ok(TypedAmount::TooSmall),
        Err(ParseMoneyError::OutOfRange) => Ok(TypedAmount::TooLarge),
        Err(ParseMoneyError::Empty | ParseMoneyError::InvalidFormat) => {
            Err(RechargeSettingsProblem::NotANumber)
        }
    }
}

impl AutoRechargeSettings {
    /// The largest threshold the limits leave room for: the target must be at least
    /// the minimum top-up above it and at most the maximum top-up.
    pub fn max_threshold(limits: TopupLimits) -> Micros {
        // Cannot fail: `TopupLimits` guarantees 0 < minimum <= maximum.
        limits
            .maximum()
            .checked_sub(limits.minimum())
            .unwrap_or(Micros::ZERO)
    }

    /// The smallest target allowed with `threshold`, or `None` when there is none to
    /// speak of (the threshold itself is out of range).
    fn min_target(threshold: Micros, limits: TopupLimits) -> Option<Micros> {
        threshold.checked_add(limits.minimum()).ok()
    }

    fn check_threshold(threshold: Micros, limits: TopupLimits) -> Result<(), RechargeSettingsProblem> {
        if !threshold.is_whole_cents() {
            return Err(RechargeSettingsProblem::TooManyDecimals);
        }
        if threshold < MIN_RECHARGE_THRESHOLD {
            return Err(RechargeSettingsProblem::BelowMinimum(MIN_RECHARGE_THRESHOLD));
        }
        let most = AutoRechargeSettings::max_threshold(limits);
        if threshold > most {
            return Err(RechargeSettingsProblem::AboveMaximum(most));
        }
        Ok(())
    }

    fn check_target(
        threshold: Micros,
        target: TypedAmount,
        limits: TopupLimits,
    ) -> Result<Micros, RechargeSettingsProblem> {
        // A valid threshold is at most `maximum − minimum`, so this cannot overflow.
        let least = AutoRechargeSettings::min_target(threshold, limits).unwrap_or(Micros::MAX);
        let target = match target {
            TypedAmount::Exact(target) => target,
            TypedAmount::TooLarge => return Err(RechargeSettingsProblem::AboveMaximum(limits.maximum())),
            TypedAmount::TooSmall => return Err(RechargeSettingsProblem::TooCloseToThreshold(least)),
        };
        if !target.is_whole_cents() {
            return Err(RechargeSettingsProblem::TooManyDecimals);
        }
        if target < least {
            return Err(RechargeSettingsProblem::TooCloseToThreshold(least));
        }
        if target > limits.maximum() {
            return Err(RechargeSettingsProblem::AboveMaximum(limits.maximum()));
        }
        Ok(target)
    }

    /// Checks a threshold and a target against the top-up limits. The threshold is
    /// checked first: the target's lower bound depends on it.
    pub fn new(
        threshold: Micros,
        target: Micros,
        limits: TopupLimits,
    ) -> Result<AutoRechargeSettings, InvalidRechargeSettings> {
        AutoRechargeSettings::check_threshold(threshold, limits)
            .map_err(InvalidRechargeSettings::threshold)?;
        let target = AutoRechargeSettings::check_target(threshold, TypedAmount::Exact(target), limits)
            .map_err(InvalidRechargeSettings::target)?;
        Ok(AutoRechargeSettings { threshold, target })
    }

    /// Parses the API's decimal texts (`"50.00"`, `"100"`) and checks them.
    pub fn parse(
        threshold: &str,
        target: &str,
        limits: TopupLimits,
    ) -> Result<AutoRechargeSettings, InvalidRechargeSettings> {
        let threshold = match read_amount(threshold).map_err(InvalidRechargeSettings::threshold)? {
            TypedAmount::Exact(threshold) => threshold,
            TypedAmount::TooLarge => {
                return Err(InvalidRechargeSettings::threshold(
                    RechargeSettingsProblem::AboveMaximum(AutoRechargeSettings::max_threshold(limits)),
                ));
            }
            TypedAmount::TooSmall => {
                return Err(InvalidRechargeSettings::threshold(
                    RechargeSettingsProblem::BelowMinimum(MIN_RECHARGE_THRESHOLD),
                ));
            }
        };
        AutoRechargeSettings::check_threshold(threshold, limits)
            .map_err(InvalidRechargeSettings::threshold)?;
        let target = read_amount(target).map_err(InvalidRechargeSettings::target)?;
        let target = AutoRechargeSettings::check_target(threshold, target, limits)
            .map_err(InvalidRechargeSettings::target)?;
        Ok(AutoRechargeSettings { threshold, target })
    }

    /// Recharge when a debit leaves the available balance strictly below this.
    pub const fn threshold(self) -> Micros {
        self.threshold
    }

    /// Recharge up to this available balance.
    pub const fn target(self) -> Micros {
        self.target
    }
}

// ---------------------------------------------------------------------------
// Failure classification and retries
// ---------------------------------------------------------------------------

/// What a processor's failure means for the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Worth retrying with the same idempotency key (a processing error, the issuer
    /// briefly unreachable); network errors and 5xx answers are transient too.
    Transient,
    /// The card was refused: stop the rule (status failed) until the card or the
    /// settings change, or the cool-down ends.
    Declined,
    /// The bank wants the customer to authenticate, which an off-session charge
    /// cannot do: stop the rule (status action required), tell the customer.
    ActionRequired,
}

/// Codes (error codes or decline codes) that ask for the customer's authentication.
const ACTION_REQUIRED_CODES: &[&str] = &[
    "authentication_required",
    "payment_intent_authentication_failure",
    "setup_intent_authentication_failure",
];

/// Codes that say this attempt failed for a reason that may go away by itself.
const TRANSIENT_CODES: &[&str] = &[
    "processing_error",
    "try_again_later",
    "issuer_not_available",
    "reenter_transaction",
    "approve_with_id",
    "rate_limit",
    "lock_timeout",
    "idempotency_key_in_use",
];

/// Classifies one processor failure code (`card_declined`, `insufficient_funds`,
/// `authentication_required`, `expired_card`, `processing_error`, …).
///
/// An unknown code is a decline: stopping the rule (which arms again after the
/// cool-down) is safe, while retrying an unknown refusal could hammer a card.
pub fn classify_failure(code: &str) -> FailureClass {
    if ACTION_REQUIRED_CODES.contains(&code) {
        FailureClass::ActionRequired
    } else if TRANSIENT_CODES.contains(&code) {
        FailureClass::Transient
    } else {
        FailureClass::Declined
    }
}

/// Classifies a failed payment from its error code and, when the card was declined,
/// the issuer's decline code (`card_declined` + `try_again_later` is transient,
/// `card_declined` + `authentication_required` needs the customer).
///
/// Authentication wins over everything (only the customer can fix it), then a
/// transient reason on either code, else it is a decline.
pub fn classify_payment_failure(code: &str, decline_code: Option<&str>) -> FailureClass {
    let classes = [Some(classify_failure(code)), decline_code.map(classify_failure)];
    if classes.contains(&Some(FailureClass::ActionRequired)) {
        FailureClass::ActionRequired
    } else if classes.contains(&Some(FailureClass::Transient)) {
        FailureClass::Transient
    } else {
        FailureClass::Declined
    }
}

/// How long to wait, in milliseconds, before trying again after attempt number
/// `attempt` (1-based: 1 is the first try) failed transiently; `None` once
/// [`MAX_RECHARGE_ATTEMPTS`] attempts have failed (and for 0, which is no attempt).
///
/// 1 s, 2 s, 4 s, … doubling up to [`RECHARGE_RETRY_MAX_DELAY_MS`]. Every attempt of
/// one recharge re-sends the same idempotency key, so a retry of a charge that did
/// go through only returns its result. No jitter here: the core has no randomness,
/// and a caller that retries many accounts at once may add its own.
pub fn retry_delay_ms(attempt: u32) -> Option<u64> {
    if attempt == 0 || attempt >= MAX_RECHARGE_ATTEMPTS {
        return None;
    }
    let delay_ms = 2_u64
        .checked_pow(attempt - 1)
        .and_then(|factor| RECHARGE_RETRY_BASE_DELAY_MS.checked_mul(factor))
        .unwrap_or(RECHARGE_RETRY_MAX_DELAY_MS);
    Some(delay_ms.min(RECHARGE_RETRY_MAX_DELAY_MS))
}

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

/// The idempotency key the processor gets for recharge number `sequence` of
/// `account`: `tollgate-recharge-{account}-{sequence}`.
///
/// This is what makes a retry after a crash never charge twice: the key depends only
/// on what was recorded before the card was charged (the account and the sequence
/// number [`RechargeRule::start`] gave the recharge), so whoever resumes the
/// recharge, whenever, sends the same key and the processor replays the first
/// result instead of charging again. A new recharge gets a new sequence number,
/// hence a new key. Distinct (account, sequence) pairs give distinct keys: account
/// ids never end in `-` followed by digits only and a sequence is digits only, so
/// the last `-` splits the key unambiguously (at most 103 characters, well under
/// the processor's 255).
pub fn recharge_idempotency_key(account: &AccountId, sequence: u64) -> String {
    format!("{RECHARGE_IDEMPOTENCY_KEY_PREFIX}-{account}-{sequence}")
}

// ---------------------------------------------------------------------------
// The rule
// ---------------------------------------------------------------------------

/// Where the Auto Top-Up rule stands (independently of whether it is enabled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RechargeStatus {
    /// Ready: the next debit that leaves the balance below the threshold recharges.
    Armed,
    /// Recharge number `sequence` has started and its outcome is not recorded yet.
    /// Nothing else starts until it is resolved.
    InFlight {
        /// The recharge's sequence number (its idempotency key derives from it).
        sequence: u64,
    },
    /// The last recharge was declined (or kept failing transiently): stopped until
    /// the card or the settings change, or the cool-down ends.
    Failed {
        /// The processor's failure code, for the banner and the event.
        reason: String,
        /// When the failure was recorded; the cool-down runs from here.
        failed_at: Timestamp,
    },
    /// The bank asked for the customer's authentication (`authentication_required`):
    /// stopped like [`RechargeStatus::Failed`], and the customer is asked to act.
    ActionRequired {
        /// The processor's failure code.
        reason: String,
        /// When the failure was recorded; the cool-down runs from here.
        failed_at: Timestamp,
    },
    /// The monthly cap left no room for a recharge in the cycle starting at
    /// `cycle_start`. Informational: every decision re-checks the cap from the
    /// cycle's figures, so a new cycle or a raised cap lifts it at once.
    CapReached {
        /// Start of the billing cycle whose cap was reached.
        cycle_start: Timestamp,
    },
}

impl RechargeStatus {
    /// Stable snake_case code: `armed`, `in_flight`, `failed`, `action_required`,
    /// `cap_reached`.
    pub const fn code(&self) -> &'static str {
        match self {
            RechargeStatus::Armed => "armed",
            RechargeStatus::InFlight { .. } => "in_flight",
            RechargeStatus::Failed { .. } => "failed",
            RechargeStatus::ActionRequired { .. } => "action_required",
            RechargeStatus::CapReached { .. } => "cap_reached",
        }
    }
}

/// Why no recharge starts even though the balance is below the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RechargeBlocked {
    /// The customer switched Auto Top-Up off.
    #[error("auto top-up is off")]
    Disabled,
    /// Another recharge is in flight; it is the only one.
    #[error("recharge {sequence} is already in flight")]
    InFlight {
        /// The in-flight recharge.
        sequence: u64,
    },
    /// The last recharge failed; the rule arms again at `until` (or sooner, when the
    /// card or the settings change).
    #[error("the last recharge failed; auto top-up resumes at {until}")]
    CoolingDown {
        /// End of the cool-down.
        until: Timestamp,
    },
    /// What is left under the monthly cap is below the minimum top-up.
    #[error("the monthly auto top-up cap is reached")]
    CapReached,
}

/// A transition the rule refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RechargeRuleError {
    /// A recharge cannot start (or the cap be recorded) now.
    #[error("{0}")]
    Blocked(RechargeBlocked),
    /// An outcome for a recharge that is not the one in flight: a duplicate or late
    /// report, which must change nothing.
    #[error("recharge {sequence} is not in flight")]
    NotInFlight {
        /// The recharge the outcome was for.
        sequence: u64,
    },
    /// The account used every sequence number (2⁶⁴ − 1 recharges).
    #[error("no recharge sequence number is left")]
    SequenceExhausted,
}

/// How a recharge ended, as reported by the payment side.
///
/// Only a known outcome is reported: while the processor's answer is unknown (a
/// timeout, a crash), the recharge stays in flight and is resumed with the same
/// idempotency key, never resolved as failed and started afresh under a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RechargeOutcome {
    /// The card was charged; the balance is credited in the same transaction.
    Succeeded,
    /// The processor refused the charge.
    Failed {
        /// How the failure was classified; a transient one is reported here only once
        /// its retries are exhausted, and then stops the rule like a decline.
        class: FailureClass,
        /// The processor's failure code.
        reason: String,
    },
}

/// The Auto Top-Up rule of one account: on or off, its status, and the last
/// recharge sequence number it handed out.
///
/// Every transition returns the next rule and leaves this one as it was; the store
/// persists the result in the transaction that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RechargeRule {
    enabled: bool,
    status: RechargeStatus,
    last_sequence: u64,
}

impl Default for RechargeRule {
    /// Off, armed, no recharge yet: every account before Auto Top-Up is switched on.
    fn default() -> RechargeRule {
        RechargeRule::new(false)
    }
}

fn cool_down_end(failed_at: Timestamp) -> Option<Timestamp> {
    failed_at.checked_add(Duration::seconds(RECHARGE_COOL_DOWN_SECONDS))
}

impl RechargeRule {
    /// A rule that has never recharged, armed, on or off.
    pub const fn new(enabled: bool) -> RechargeRule {
        RechargeRule {
            enabled,
            status: RechargeStatus::Armed,
            last_sequence: 0,
        }
    }

    /// A rule as the store persisted it. An in-flight sequence beyond
    /// `last_sequence` raises it, so a restored rule never hands out a number twice.
    pub fn restore(enabled: bool, status: RechargeStatus, last_sequence: u64) -> RechargeRule {
        let last_sequence = match status {
            RechargeStatus::InFlight { sequence } => last_sequence.max(sequence),
            _ => last_sequence,
        };
        RechargeRule {
            enabled,
            status,
            last_sequence,
        }
    }

    /// Whether the customer has Auto Top-Up on.
    pub const fn enabled(&self) -> bool {
        self.enabled
    }

    /// The recorded status (see [`RechargeRule::status_at`] for what it means now).
    pub const fn status(&self) -> &RechargeStatus {
        &self.status
    }

    /// The sequence number of the latest recharge started (0: none yet).
    pub const fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// The recharge in flight, if any.
    pub const fn in_flight(&self) -> Option<u64> {
        match self.status {
            RechargeStatus::InFlight { sequence } => Some(sequence),
            _ => None,
        }
    }

    /// When a failed rule arms itself again. A failure so close to the end of time
    /// that the sum overflows never cools down: refusing is the safe side.
    pub fn cool_down_ends_at(&self) -> Option<Timestamp> {
        match &self.status {
            RechargeStatus::Failed { failed_at, .. } | RechargeStatus::ActionRequired { failed_at, .. } => {
                Some(cool_down_end(*failed_at).unwrap_or(time::PrimitiveDateTime::MAX.assume_utc()))
            }
            _ => None,
        }
    }

    /// The status as it stands at `now` in the cycle starting at `cycle_start`: a
    /// failure whose cool-down is over, and a cap reached in an earlier cycle, read
    /// as armed. For display; decisions apply the same reading.
    pub fn status_at(&self, now: Timestamp, cycle_start: Timestamp) -> RechargeStatus {
        match &self.status {
            RechargeStatus::Failed { .. } | RechargeStatus::ActionRequired { .. }
                if self.cool_down_ends_at().is_some_and(|until| now >= until) =>
            {
                RechargeStatus::Armed
            }
            RechargeStatus::CapReached { cycle_start: reached } if *reached != cycle_start => {
                RechargeStatus::Armed
            }
            status => status.clone(),
        }
    }

    /// What stops a recharge from starting at `now`, before money is looked at:
    /// off, in flight, or cooling down after a failure.
    pub fn blocked_at(&self, now: Timestamp) -> Option<RechargeBlocked> {
        if !self.enabled {
            return Some(RechargeBlocked::Disabled);
        }
        if let RechargeStatus::InFlight { sequence } = self.status {
            return Some(RechargeBlocked::InFlight { sequence });
        }
        match self.cool_down_ends_at() {
            Some(until) if now < until => Some(RechargeBlocked::CoolingDown { until }),
            _ => None,
        }
    }

    /// Back to armed after something the customer did that may fix a failure. A
    /// recharge in flight stays in flight: it is still the only one, and is resolved
    /// as usual.
    fn rearmed(&self) -> RechargeRule {
        let status = match self.status {
            RechargeStatus::InFlight { sequence } => RechargeStatus::InFlight { sequence },
            _ => RechargeStatus::Armed,
        };
        RechargeRule {
            enabled: self.enabled,
            status,
            last_sequence: self.last_sequence,
        }
    }

    /// The customer switched Auto Top-Up on (with settings saved): on and re-armed.
    pub fn enable(&self) -> RechargeRule {
        RechargeRule {
            enabled: true,
            ..self.rearmed()
        }
    }

    /// The customer switched Auto Top-Up off, or removed the card. Allowed at any
    /// time: a recharge in flight is still resolved (money taken is always
    /// credited), but no new one starts.
    pub fn disable(&self) -> RechargeRule {
        RechargeRule {
            enabled: false,
            ..self.clone()
        }
    }

    /// The threshold, the target or the monthly cap changed: re-armed.
    pub fn settings_changed(&self) -> RechargeRule {
        self.rearmed()
    }

    /// The default card was replaced: re-armed (the new card may succeed where the
    /// old one failed).
    pub fn card_changed(&self) -> RechargeRule {
        self.rearmed()
    }

    /// Starts the next recharge at `now`: returns the rule, now in flight, and the
    /// new recharge's sequence number (for [`recharge_idempotency_key`]). Refused
    /// while off, in flight or cooling down, whatever the caller decided.
    pub fn start(&self, now: Timestamp) -> Result<(RechargeRule, u64), RechargeRuleError> {
        if let Some(blocked) = self.blocked_at(now) {
            return Err(RechargeRuleError::Blocked(blocked));
        }
        let sequence = self
            .last_sequence
            .checked_add(1)
            .ok_or(RechargeRuleError::SequenceExhausted)?;
        let rule = RechargeRule {
            enabled: self.enabled,
            status: RechargeStatus::InFlight { sequence },
            last_sequence: sequence,
        };
        Ok((rule, sequence))
    }

    /// Records the outcome of recharge `sequence` at `now`. Success re-arms; a
    /// decline (or exhausted transient failures) fails the rule, an authentication
    /// request puts it in action required; both cool down from `now`. Resolves even
    /// when the rule was switched off meanwhile, and stays off.
    pub fn resolve(
        &self,
        sequence: u64,
        outcome: &RechargeOutcome,
        now: Timestamp,
    ) -> Result<RechargeRule, RechargeRuleError> {
        if self.in_flight() != Some(sequence) {
            return Err(RechargeRuleError::NotInFlight { sequence });
        }
        let status = match outcome {
            RechargeOutcome::Succeeded => RechargeStatus::Armed,
            RechargeOutcome::Failed {
                class: FailureClass::ActionRequired,
                reason,
            } => RechargeStatus::ActionRequired {
                reason: reason.clone(),
                failed_at: now,
            },
            RechargeOutcome::Failed {
                class: FailureClass::Declined | FailureClass::Transient,
                reason,
            } => RechargeStatus::Failed {
                reason: reason.clone(),
                failed_at: now,
            },
        };
        Ok(RechargeRule {
            enabled: self.enabled,
            status,
            last_sequence: self.last_sequence,
        })
    }

    /// Records that the monthly cap of the cycle starting at `cycle_start` stopped a
    /// recharge (after [`RechargeBlocked::CapReached`]), for the page and the event.
    pub fn cap_reached(
        &self,
        cycle_start: Timestamp,
        now: Timestamp,
    ) -> Result<RechargeRule, RechargeRuleError> {
        if let Some(blocked) = self.blocked_at(now) {
            return Err(RechargeRuleError::Blocked(blocked));
        }
        Ok(RechargeRule {
            enabled: self.enabled,
            status: RechargeStatus::CapReached { cycle_start },
            last_sequence: self.last_sequence,
        })
    }
}

// ---------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------

/// What a debit calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RechargeDecision {
    /// The available balance is at or above the threshold.
    NotNeeded,
    /// Start a recharge of `amount` (whole cents, within the top-up limits, within
    /// the monthly cap): record [`RechargeRule::start`] with the debit.
    Start {
        /// How much to charge.
        amount: Micros,
    },
    /// The balance is below the threshold, but no recharge may start.
    Blocked(RechargeBlocked),
}

/// Rounds a non-negative amount down to the cent.
fn round_down_to_cent(amount: Micros) -> Micros {
    Micros::new(amount.get() - amount.get().rem_euclid(MICROS_PER_CENT))
}

/// What a recharge from `available` would charge, or `None` when what is left under
/// the monthly cap is below the minimum top-up.
///
/// `target − available`, rounded up to the cent, raised to the minimum top-up, cut
/// to the maximum top-up and to what is left under the cap (rounded down to the
/// cent). A negative `available` (after a refund or a dispute) only makes the
/// amount larger, up to the maximum. `recharged_this_cycle` below zero counts as
/// zero and a cap below zero as no room at all, so that figures gone wrong can
/// never open more room than the cap.
pub fn recharge_amount(
    settings: AutoRechargeSettings,
    available: Micros,
    recharged_this_cycle: Micros,
    monthly_cap: Micros,
    limits: TopupLimits,
) -> Option<Micros> {
    // The target is positive, so only a hugely negative balance overflows, and then
    // the true difference is above any maximum: saturating is exact after the cut.
    let needed = settings
        .target()
        .checked_sub(available)
        .and_then(Micros::round_up_to_cent)
        .unwrap_or(Micros::MAX);
    let amount = needed.max(limits.minimum()).min(limits.maximum());
    // A cap far below zero overflows the difference, and leaves no room either way.
    let left_under_cap = monthly_cap
        .checked_sub(recharged_this_cycle.max(Micros::ZERO))
        .unwrap_or(Micros::ZERO)
        .max(Micros::ZERO);
    let left_under_cap = round_down_to_cent(left_under_cap);
    if left_under_cap < limits.minimum() {
        return None;
    }
    Some(amount.min(left_under_cap))
}

/// Decides whether the debit that left `available_after_debit` starts a recharge.
///
/// The trigger is a debit leaving the available balance strictly below the
/// threshold. It is level-triggered: every debit below the threshold asks again, so
/// a rule that arms again after its cool-down (or a new cycle under the cap)
/// recharges on the next debit even though the balance crossed the threshold
/// earlier. Above the threshold nothing is needed, whatever the rule's state;
/// below it, in this order: off, in flight, cooling down, cap reached, else start.
/// `recharged_this_cycle` is what auto top-ups already charged in the billing cycle
/// containing `now`; `monthly_cap` its limit ([`DEFAULT_MONTHLY_RECHARGE_CAP`] by
/// default).
pub fn recharge_decision(
    settings: AutoRechargeSettings,
    rule: &RechargeRule,
    available_after_debit: Micros,
    now: Timestamp,
    recharged_this_cycle: Micros,
    monthly_cap: Micros,
    limits: TopupLimits,
) -> RechargeDecision {
    if available_after_debit >= settings.threshold() {
        return RechargeDecision::NotNeeded;
    }
    if let Some(blocked) = rule.blocked_at(now) {
        return RechargeDecision::Blocked(blocked);
    }
    match recharge_amount(
        settings,
        available_after_debit,
        recharged_this_cycle,
        monthly_cap,
        limits,
    ) {
        Some(amount) => RechargeDecision::Start { amount },
        None => RechargeDecision::Blocked(RechargeBlocked::CapReached),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn dollars(text: &str) -> Micros {
        Micros::parse(text).expect("test amount")
    }

    fn settings(threshold: &str, target: &str) -> AutoRechargeSettings {
        AutoRechargeSettings::parse(threshold, target, TopupLimits::default()).expect("test settings")
    }

    fn threshold_error(
        problem: RechargeSettingsProblem,
    ) -> Result<AutoRechargeSettings, InvalidRechargeSettings> {
        Err(InvalidRechargeSettings::threshold(problem))
    }

    fn target_error(
        problem: RechargeSettingsProblem,
    ) -> Result<AutoRechargeSettings, InvalidRechargeSettings> {
        Err(InvalidRechargeSettings::target(problem))
    }

    const NOW: Timestamp = datetime!(2026-11-25 12:00 UTC);
    const CYCLE: Timestamp = datetime!(2026-11-01 00:00 UTC);

    fn decide(rule: &RechargeRule, available: &str, recharged: &str) -> RechargeDecision {
        recharge_decision(
            settings("50", "100"),
            rule,
            dollars(available),
            NOW,
            dollars(recharged),
            DEFAULT_MONTHLY_RECHARGE_CAP,
            TopupLimits::default(),
        )
    }

    fn start(amount: &str) -> RechargeDecision {
        RechargeDecision::Start {
            amount: dollars(amount),
        }
    }

    fn declined() -> RechargeOutcome {
        RechargeOutcome::Failed {
            class: FailureClass::Declined,
            reason: "card_declined".to_owned(),
        }
    }

    #[test]
    fn settings_accept_the_product_example_and_the_edges() {
        let example = settings("50.00", "100.00");
        assert_eq!(
            (example.threshold(), example.target()),
            (dollars("50"), dollars("100"))
        );
        assert!(AutoRechargeSettings::parse("5", "15", TopupLimits::default()).is_ok());
        assert!(AutoRechargeSettings::parse(" 9990 ", "10000", TopupLimits::default()).is_ok());
        assert!(AutoRechargeSettings::new(dollars("5"), dollars("10000"), TopupLimits::default()).is_ok());
    }

    #[test]
    fn settings_errors_name_the_field_and_the_reason() {
        let limits = TopupLimits::default();
        let parse = |threshold, target| AutoRechargeSettings::parse(threshold, target, limits);
        use RechargeSettingsProblem::*;
        assert_eq!(parse("4.99", "100"), threshold_error(BelowMinimum(dollars("5"))));
        assert_eq!(parse("-5", "100"), threshold_error(BelowMinimum(dollars("5"))));
        assert_eq!(parse("5.001", "100"), threshold_error(TooManyDecimals));
        assert_eq!(parse("abc", "100"), threshold_error(NotANumber));
        assert_eq!(parse("", "100"), threshold_error(NotANumber));
        assert_eq!(
            parse("9990.01", "10000"),
            threshold_error(AboveMaximum(dollars("9990")))
        );
        assert_eq!(
            parse("99999999999999999999", "100"),
            threshold_error(AboveMaximum(dollars("9990")))
        );
        assert_eq!(
            parse("-99999999999999999999", "100"),
            threshold_error(BelowMinimum(dollars("5")))
        );
        // The threshold is reported first, even when both are wrong.
        assert_eq!(parse("1", "2"), threshold_error(BelowMinimum(dollars("5"))));
        assert_eq!(
            parse("50", "59.99"),
            target_error(TooCloseToThreshold(dollars("60")))
        );
        assert_eq!(
            parse("50", "-1"),
            target_error(TooCloseToThreshold(dollars("60")))
        );
        assert_eq!(
            parse("50", "-99999999999999999999"),
            target_error(TooCloseToThreshold(dollars("60")))
        );
        assert_eq!(parse("50", "100.005"), target_error(TooManyDecimals));
        assert_eq!(parse("50", "1e3"), target_error(NotANumber));
        assert_eq!(
            parse("50", "10000.01"),
            target_error(AboveMaximum(dollars("10000")))
        );
        assert_eq!(
            parse("50", "99999999999999999999"),
            target_error(AboveMaximum(dollars("10000")))
        );
        let error = parse("50", "59.99").unwrap_err();
        assert_eq!(error.field.param(), "target");
        assert_eq!(
            error.to_string(),
            "the target must be at least $60.00: the threshold plus the minimum top-up"
        );
        assert_eq!(
            parse("4", "100").unwrap_err().to_string(),
            "the threshold must be at least $5.00"
        );
    }

    #[test]
    fn a_debit_below_the_threshold_starts_a_recharge_to_the_target() {
        let rule = RechargeRule::new(true);
        assert_eq!(decide(&rule, "50", "0"), RechargeDecision::NotNeeded);
        assert_eq!(decide(&rule, "75", "0"), RechargeDecision::NotNeeded);
        assert_eq!(decide(&rule, "49.99", "0"), start("50.01"));
        // Sub-cent balances round the amount up, so the target is always reached.
        assert_eq!(decide(&rule, "49.995", "0"), start("50.01"));
        assert_eq!(decide(&rule, "49.990001", "0"), start("50.01"));
        assert_eq!(decide(&rule, "0", "0"), start("100"));
        // A negative balance (after a refund or a dispute) recharges more…
        assert_eq!(decide(&rule, "-20.50", "0"), start("120.50"));
        // …up to the monthly cap ($5,000 by default)…
        assert_eq!(decide(&rule, "-20000", "0"), start("5000"));
        // …and the maximum top-up, even from the lowest balance there is.
        for available in [dollars("-20000"), Micros::new(i64::MIN)] {
            assert_eq!(
                recharge_decision(
                    settings("50", "100"),
                    &rule,
                    available,
                    NOW,
                    Micros::ZERO,
                    Micros::MAX,
                    TopupLimits::default(),
                ),
                start("10000")
            );
        }
    }

    #[test]
    fn the_monthly_cap_cuts_and_then_stops_recharges() {
        let rule = RechargeRule::new(true);
        assert_eq!(decide(&rule, "0", "4950"), start("50"));
        assert_eq!(decide(&rule, "0", "4990"), start("10"));
        assert_eq!(
            decide(&rule, "0", "4990.01"),
            RechargeDecision::Blocked(RechargeBlocked::CapReached)
        );
        assert_eq!(
            decide(&rule, "0", "6000"),
            RechargeDecision::Blocked(RechargeBlocked::CapReached)
        );
        // Above the threshold the cap does not matter.
        assert_eq!(decide(&rule, "60", "6000"), RechargeDecision::NotNeeded);
        // A cap that is not whole cents leaves whole cents only.
        let odd_cap = recharge_amount(
            settings("50", "100"),
            Micros::ZERO,
            Micros::ZERO,
            dollars("20.005"),
            TopupLimits::default(),
        );
        assert_eq!(odd_cap, Some(dollars("20")));
        for cap in [Micros::ZERO, dollars("-1"), Micros::new(i64::MIN)] {
            assert_eq!(
                recharge_amount(
                    settings("50", "100"),
                    Micros::ZERO,
                    Micros::ZERO,
                    cap,
                    TopupLimits::default()
                ),
                None
            );
        }
        // A negative count opens no room beyond the cap.
        assert_eq!(
            recharge_amount(
                settings("50", "100"),
                Micros::ZERO,
                dollars("-100"),
                dollars("30"),
                TopupLimits::default()
            ),
            Some(dollars("30"))
        );
    }

    #[test]
    fn exactly_one_recharge_in_flight() {
        let rule = RechargeRule::new(true);
        let (in_flight, sequence) = rule.start(NOW).unwrap();
        assert_eq!(sequence, 1);
        assert_eq!(in_flight.in_flight(), Some(1));
        assert_eq!(
            decide(&in_flight, "0", "0"),
            RechargeDecision::Blocked(RechargeBlocked::InFlight { sequence: 1 })
        );
        assert_eq!(
            in_flight.start(NOW),
            Err(RechargeRuleError::Blocked(RechargeBlocked::InFlight {
                sequence: 1
            }))
        );
        // Neither a settings nor a card change abandons the recharge in flight.
        assert_eq!(in_flight.settings_changed(), in_flight);
        assert_eq!(in_flight.card_changed(), in_flight);
        assert_eq!(in_flight.enable(), in_flight);
        let done = in_flight.resolve(1, &RechargeOutcome::Succeeded, NOW).unwrap();
        assert_eq!(done.status(), &RechargeStatus::Armed);
        // A duplicate report changes nothing.
        assert_eq!(
            done.resolve(1, &RechargeOutcome::Succeeded, NOW),
            Err(RechargeRuleError::NotInFlight { sequence: 1 })
        );
        let (next, sequence) = done.start(NOW).unwrap();
        assert_eq!((sequence, next.last_sequence()), (2, 2));
        assert_eq!(
            next.resolve(1, &declined(), NOW),
            Err(RechargeRuleError::NotInFlight { sequence: 1 })
        );
    }

    #[test]
    fn a_failure_cools_down_for_an_hour() {
        let (in_flight, sequence) = RechargeRule::new(true).start(NOW).unwrap();
        let failed = in_flight.resolve(sequence, &declined(), NOW).unwrap();
        assert_eq!(
            failed.status(),
            &RechargeStatus::Failed {
                reason: "card_declined".to_owned(),
                failed_at: NOW
            }
        );
        let until = datetime!(2026-11-25 13:00 UTC);
        assert_eq!(failed.cool_down_ends_at(), Some(until));
        assert_eq!(
            decide(&failed, "0", "0"),
            RechargeDecision::Blocked(RechargeBlocked::CoolingDown { until })
        );
        let almost = until - Duration::microseconds(1);
        assert_eq!(
            failed.start(almost),
            Err(RechargeRuleError::Blocked(RechargeBlocked::CoolingDown { until }))
        );
        assert_eq!(failed.status_at(almost, CYCLE).code(), "failed");
        assert_eq!(failed.status_at(until, CYCLE), RechargeStatus::Armed);
        let (again, sequence) = failed.start(until).unwrap();
        assert_eq!(sequence, 2);
        assert_eq!(again.in_flight(), Some(2));
    }

    #[test]
    fn authentication_required_asks_the_customer_and_cools_down_too() {
        let (in_flight, sequence) = RechargeRule::new(true).start(NOW).unwrap();
        let outcome = RechargeOutcome::Failed {
            class: classify_failure("authentication_required"),
            reason: "authentication_required".to_owned(),
        };
        let stopped = in_flight.resolve(sequence, &outcome, NOW).unwrap();
        assert_eq!(stopped.status().code(), "action_required");
        assert!(matches!(
            stopped.blocked_at(NOW),
            Some(RechargeBlocked::CoolingDown { .. })
        ));
        // A new card (3-D Secure done on the hosted page) re-arms at once.
        let rearmed = stopped.card_changed();
        assert_eq!(rearmed.status(), &RechargeStatus::Armed);
        assert_eq!(rearmed.blocked_at(NOW), None);
        assert_eq!(rearmed.last_sequence(), 1);
        // So does a settings change.
        assert_eq!(stopped.settings_changed().status(), &RechargeStatus::Armed);
    }

    #[test]
    fn exhausted_transient_failures_fail_the_rule() {
        let (in_flight, sequence) = RechargeRule::new(true).start(NOW).unwrap();
        let outcome = RechargeOutcome::Failed {
            class: FailureClass::Transient,
            reason: "processing_error".to_owned(),
        };
        let failed = in_flight.resolve(sequence, &outcome, NOW).unwrap();
        assert_eq!(failed.status().code(), "failed");
    }

    #[test]
    fn disabling_stops_new_recharges_but_resolves_the_one_in_flight() {
        let (in_flight, sequence) = RechargeRule::new(true).start(NOW).unwrap();
        let off = in_flight.disable();
        assert!(!off.enabled());
        assert_eq!(off.in_flight(), Some(sequence));
        assert_eq!(
            decide(&off, "0", "0"),
            RechargeDecision::Blocked(RechargeBlocked::Disabled)
        );
        let resolved = off.resolve(sequence, &RechargeOutcome::Succeeded, NOW).unwrap();
        assert!(!resolved.enabled());
        assert_eq!(resolved.status(), &RechargeStatus::Armed);
        assert_eq!(
            resolved.start(NOW),
            Err(RechargeRuleError::Blocked(RechargeBlocked::Disabled))
        );
        assert_eq!(decide(&resolved, "60", "0"), RechargeDecision::NotNeeded);
        // Switching it on again re-arms, even from a failure.
        let failed = RechargeRule::restore(
            false,
            RechargeStatus::Failed {
                reason: "card_declined".to_owned(),
                failed_at: NOW,
            },
            4,
        );
        let on = failed.enable();
        assert!(on.enabled());
        assert_eq!(on.status(), &RechargeStatus::Armed);
        assert_eq!(on.start(NOW).map(|(_, sequence)| sequence), Ok(5));
        assert_eq!(RechargeRule::default(), RechargeRule::new(false));
    }

    #[test]
    fn the_cap_status_lasts_for_its_cycle_only() {
        let rule = RechargeRule::new(true);
        let capped = rule.cap_reached(CYCLE, NOW).unwrap();
        assert_eq!(capped.status_at(NOW, CYCLE).code(), "cap_reached");
        assert_eq!(
            capped.status_at(NOW, datetime!(2026-12-01 00:00 UTC)),
            RechargeStatus::Armed
        );
        // Decisions read the cap from the figures: room left means a recharge.
        assert_eq!(decide(&capped, "0", "0"), start("100"));
        assert!(capped.start(NOW).is_ok());
        let (in_flight, _) = rule.start(NOW).unwrap();
        assert_eq!(
            in_flight.cap_reached(CYCLE, NOW),
            Err(RechargeRuleError::Blocked(RechargeBlocked::InFlight {
                sequence: 1
            }))
        );
    }

    #[test]
    fn restoring_never_reuses_a_sequence() {
        let rule = RechargeRule::restore(true, RechargeStatus::InFlight { sequence: 9 }, 3);
        assert_eq!(rule.last_sequence(), 9);
        let done = rule.resolve(9, &RechargeOutcome::Succeeded, NOW).unwrap();
        assert_eq!(done.start(NOW).map(|(_, sequence)| sequence), Ok(10));
        let exhausted = RechargeRule::restore(true, RechargeStatus::Armed, u64::MAX);
        assert_eq!(exhausted.start(NOW), Err(RechargeRuleError::SequenceExhausted));
    }

    #[test]
    fn a_cool_down_past_the_end_of_time_never_ends() {
        let far = Timestamp::new_utc(time::Date::MAX, time::Time::MIDNIGHT);
        let failed = RechargeRule::restore(
            true,
            RechargeStatus::Failed {
                reason: "card_declined".to_owned(),
                failed_at: far,
            },
            1,
        );
        assert!(matches!(
            failed.blocked_at(far),
            Some(RechargeBlocked::CoolingDown { .. })
        ));
        assert!(failed.cool_down_ends_at().is_some_and(|until| until > far));
    }

    #[test]
    fn idempotency_keys_derive_from_account_and_sequence() {
        let account = AccountId::parse("acme").unwrap();
        assert_eq!(recharge_idempotency_key(&account, 7), "tollgate-recharge-acme-7");
        assert_eq!(
            recharge_idempotency_key(&account, 7),
            recharge_idempotency_key(&account, 7)
        );
        assert_ne!(
            recharge_idempotency_key(&account, 7),
            recharge_idempotency_key(&account, 8)
        );
        let longest = AccountId::parse(&"a".repeat(64)).unwrap();
        assert!(recharge_idempotency_key(&longest, u64::MAX).len() <= 255);
    }

    #[test]
    fn retries_back_off_exponentially_and_stop() {
        let delays: Vec<Option<u64>> = (0..=9).map(retry_delay_ms).collect();
        assert_eq!(
            delays,
            vec![
                None,
                Some(1_000),
                Some(2_000),
                Some(4_000),
                Some(8_000),
                Some(16_000),
                Some(32_000),
                Some(60_000),
                None,
                None
            ]
        );
        assert_eq!(retry_delay_ms(u32::MAX), None);
    }

    #[test]
    fn failure_codes_are_classified() {
        use FailureClass::*;
        let cases = [
            ("card_declined", Declined),
            ("insufficient_funds", Declined),
            ("expired_card", Declined),
            ("incorrect_cvc", Declined),
            ("generic_decline", Declined),
            ("something_new", Declined),
            ("", Declined),
            ("authentication_required", ActionRequired),
            ("payment_intent_authentication_failure", ActionRequired),
            ("processing_error", Transient),
            ("try_again_later", Transient),
            ("rate_limit", Transient),
        ];
        for (code, class) in cases {
            assert_eq!(classify_failure(code), class, "{code}");
        }
        assert_eq!(classify_payment_failure("card_declined", None), Declined);
        assert_eq!(
            classify_payment_failure("card_declined", Some("insufficient_funds")),
            Declined
        );
        assert_eq!(
            classify_payment_failure("card_declined", Some("try_again_later")),
            Transient
        );
        assert_eq!(
            classify_payment_failure("card_declined", Some("authentication_required")),
            ActionRequired
        );
        assert_eq!(
            classify_payment_failure("authentication_required", Some("authentication_required")),
            ActionRequired
        );
        assert_eq!(classify_payment_failure("processing_error", None), Transient);
    }
}
