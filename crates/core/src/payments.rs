//! Card money coming in and going back: top-up amounts and their limits, the
//! life of a top-up, and the rules for refunds and disputes.
//!
//! The processor (Stripe) is not named here: these are Tollgate's own rules,
//! which the store enforces in the same transaction as the ledger write.

use std::fmt;

use crate::commands::Actor;
use crate::ids::{AccountId, IdempotencyKey};
use crate::money::{MICROS_PER_DOLLAR, Micros, ParseMoneyError, format_usd};

/// The smallest and largest one-time top-up (PRODUCT.md: $10.00 to $10,000.00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopupLimits {
    minimum: Micros,
    maximum: Micros,
}

/// Why top-up limits were refused at start-up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("top-up limits: {0}")]
pub struct InvalidTopupLimits(&'static str);

impl TopupLimits {
    /// Both limits in whole cents, `0 < minimum <= maximum`.
    pub fn new(minimum: Micros, maximum: Micros) -> Result<TopupLimits, InvalidTopupLimits> {
        if !minimum.is_positive() {
            return Err(InvalidTopupLimits("the minimum must be above zero"));
        }
        if !minimum.is_whole_cents() || !maximum.is_whole_cents() {
            return Err(InvalidTopupLimits("cards are charged in whole cents"));
        }
        if minimum > maximum {
            return Err(InvalidTopupLimits("the minimum must not exceed the maximum"));
        }
        Ok(TopupLimits { minimum, maximum })
    }

    /// The smallest amount a customer may pay at once.
    pub const fn minimum(self) -> Micros {
        self.minimum
    }

    /// The largest amount a customer may pay at once.
    pub const fn maximum(self) -> Micros {
        self.maximum
    }
}

impl Default for TopupLimits {
    fn default() -> TopupLimits {
        TopupLimits {
            minimum: Micros::new(10 * MICROS_PER_DOLLAR),
            maximum: Micros::new(10_000 * MICROS_PER_DOLLAR),
        }
    }
}

/// Why an amount cannot be paid by card; each reason is shown to the customer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTopupAmount {
    /// Not a decimal number of dollars.
    #[error("enter an amount in dollars, like 100 or 49.99")]
    NotANumber,
    /// Cards are charged in cents.
    #[error("use at most 2 decimals (whole cents)")]
    TooManyDecimals,
    /// Under the minimum top-up.
    #[error("the minimum top-up is {}", format_usd(*.0))]
    BelowMinimum(Micros),
    /// Over the maximum top-up.
    #[error("the maximum top-up is {}", format_usd(*.0))]
    AboveMaximum(Micros),
}

/// An amount that may be charged to a card as one top-up: whole cents, within the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopupAmount(Micros);

impl TopupAmount {
    /// Checks an amount against the limits.
    pub fn new(amount: Micros, limits: TopupLimits) -> Result<TopupAmount, InvalidTopupAmount> {
        if !amount.is_whole_cents() {
            return Err(InvalidTopupAmount::TooManyDecimals);
        }
        if amount < limits.minimum {
            return Err(InvalidTopupAmount::BelowMinimum(limits.minimum));
        }
        if amount > limits.maximum {
            return Err(InvalidTopupAmount::AboveMaximum(limits.maximum));
        }
        Ok(TopupAmount(amount))
    }

    /// The amount due on an invoice, charged to the card whatever the top-up limits: an
    /// invoice is paid in full. `None` unless positive whole cents.
    pub fn invoice_due(amount: Micros) -> Option<TopupAmount> {
        (amount.is_positive() && amount.is_whole_cents()).then_some(TopupAmount(amount))
    }

    /// Parses the API's decimal text and checks it.
    pub fn parse(text: &str, limits: TopupLimits) -> Result<TopupAmount, InvalidTopupAmount> {
        match Micros::parse(text.trim()) {
            Ok(amount) => TopupAmount::new(amount, limits),
            Err(ParseMoneyError::TooManyDecimals) => Err(InvalidTopupAmount::TooManyDecimals),
            // A number too large to hold is above any maximum.
            Err(ParseMoneyError::OutOfRange) if !text.trim().starts_with('-') => {
                Err(InvalidTopupAmount::AboveMaximum(limits.maximum))
            }
            Err(_) => Err(InvalidTopupAmount::NotANumber),
        }
    }

    /// The amount.
    pub const fn get(self) -> Micros {
        self.0
    }
}

impl fmt::Display for TopupAmount {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

/// How a top-up is paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopupSource {
    /// The saved card, charged off-session at once.
    SavedCard,
    /// The processor's hosted page, which takes a card, saves it and pays.
    HostedPage,
    /// An automatic top-up of the saved card.
    AutoRecharge,
}

impl TopupSource {
    /// Every source, for parsing.
    pub const ALL: [TopupSource; 3] = [
        TopupSource::SavedCard,
        TopupSource::HostedPage,
        TopupSource::AutoRecharge,
    ];

    /// Stable snake_case code.
    pub const fn code(self) -> &'static str {
        match self {
            TopupSource::SavedCard => "saved_card",
            TopupSource::HostedPage => "hosted_page",
            TopupSource::AutoRecharge => "auto_recharge",
        }
    }

    /// Parses [`TopupSource::code`].
    pub fn parse(code: &str) -> Option<TopupSource> {
        TopupSource::ALL.into_iter().find(|source| source.code() == code)
    }
}

/// Where a top-up stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopupStatus {
    /// Created; the processor has not answered yet (or its answer was lost).
    Pending,
    /// Waiting for the customer on the hosted page (no card saved yet).
    RequiresPaymentMethod,
    /// The customer must authenticate (3-D Secure) before the charge can succeed.
    RequiresAction,
    /// Paid and credited to the balance, exactly once.
    Succeeded,
    /// The card was refused; nothing was taken.
    Failed,
    /// Abandoned (the hosted page expired or was closed for good); nothing was taken.
    Canceled,
}

impl TopupStatus {
    /// Every status, for parsing.
    pub const ALL: [TopupStatus; 6] = [
        TopupStatus::Pending,
        TopupStatus::RequiresPaymentMethod,
        TopupStatus::RequiresAction,
        TopupStatus::Succeeded,
        TopupStatus::Failed,
        TopupStatus::Canceled,
    ];

    /// Stable snake_case code, as in the API.
    pub const fn code(self) -> &'static str {
        match self {
            TopupStatus::Pending => "pending",
            TopupStatus::RequiresPaymentMethod => "requires_payment_method",
            TopupStatus::RequiresAction => "requires_action",
            TopupStatus::Succeeded => "succeeded",
            TopupStatus::Failed => "failed",
            TopupStatus::Canceled => "canceled",
        }
    }

    /// Parses [`TopupStatus::code`].
    pub fn parse(code: &str) -> Option<TopupStatus> {
        TopupStatus::ALL.into_iter().find(|status| status.code() == code)
    }

    /// True while the outcome may still change (recovery asks the processor about these).
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            TopupStatus::Pending | TopupStatus::RequiresPaymentMethod | TopupStatus::RequiresAction
        )
    }

    /// Whether news of `next` may replace this status.
    ///
    /// Success is final: money that arrived is never un-credited by a late or reordered
    /// message. Anything else may still become a success (a customer retries on the hosted
    /// page, or completes 3-D Secure after a decline), because money that was taken must
    /// always be credited.
    pub fn may_become(self, next: TopupStatus) -> bool {
        match (self, next) {
            (TopupStatus::Succeeded, _) => false,
            (_, TopupStatus::Succeeded) => true,
            (from, to) if from == to => false,
            (from, _) => from.is_open(),
        }
    }
}

/// What the processor says happened to a top-up's payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopupOutcome {
    /// The money was taken: credit the balance (once).
    Succeeded {
        /// The processor's payment id.
        payment_reference: String,
        /// The charge refunds and disputes name, when known.
        charge_reference: Option<String>,
        /// The card's brand, for the receipt.
        card_brand: Option<String>,
        /// The card's last four digits, for the receipt.
        card_last4: Option<String>,
    },
    /// The card was refused.
    Failed {
        /// The processor's payment id, when one was created.
        payment_reference: Option<String>,
        /// `card_declined`, `authentication_required`, …
        code: String,
        /// What to tell the customer.
        message: String,
    },
    /// The customer must authenticate first.
    RequiresAction {
        /// The processor's payment id.
        payment_reference: String,
    },
    /// Given up for good; nothing was taken.
    Canceled,
}

impl TopupOutcome {
    /// The status this outcome leads to.
    pub fn status(&self) -> TopupStatus {
        match self {
            TopupOutcome::Succeeded { .. } => TopupStatus::Succeeded,
            TopupOutcome::Failed { .. } => TopupStatus::Failed,
            TopupOutcome::RequiresAction { .. } => TopupStatus::RequiresAction,
            TopupOutcome::Canceled => TopupStatus::Canceled,
        }
    }
}

/// A one-time top-up, validated and ready to record before anything is sent to the processor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopup {
    /// Whose balance.
    pub account: AccountId,
    /// How much.
    pub amount: TopupAmount,
    /// Saved card, hosted page or auto top-up.
    pub source: TopupSource,
    /// Makes the top-up (and its charge) happen at most once.
    pub idempotency_key: IdempotencyKey,
    /// Who asked.
    pub actor: Actor,
}

impl NewTopup {
    /// Canonical request identity: a replay must match it to get the stored result.
    ///
    /// The source is left out: a retry after the card was removed or added is the same
    /// top-up the customer asked for, not a conflicting one.
    pub fn fingerprint(&self) -> String {
        format!("topup\u{1f}{}", self.amount.get().get())
    }
}

/// How much of a paid top-up may still be taken back by a refund or a dispute.
pub fn refundable(amount: Micros, refunded: Micros, disputed: Micros) -> Micros {
    let taken_back = refunded.checked_add(disputed).unwrap_or(Micros::MAX);
    if taken_back >= amount {
        return Micros::ZERO;
    }
    // Cannot underflow: amount > taken_back >= 0.
    amount.checked_sub(taken_back).unwrap_or(Micros::ZERO)
}

/// Why a refund cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRefund {
    /// Zero or negative, or not whole cents.
    #[error("a refund is a positive amount in whole cents")]
    Amount,
    /// More than what is left of the payment.
    #[error("at most {} of this top-up can still be refunded", format_usd(*.0))]
    ExceedsRefundable(Micros),
    /// Only a paid top-up can be refunded.
    #[error("only a succeeded top-up can be refunded")]
    NotPaid,
}

/// Checks a refund request: `None` refunds everything that is left.
pub fn check_refund(
    status: TopupStatus,
    left: Micros,
    requested: Option<Micros>,
) -> Result<Micros, InvalidRefund> {
    if status != TopupStatus::Succeeded {
        return Err(InvalidRefund::NotPaid);
    }
    let amount = requested.unwrap_or(left);
    if requested.is_some() && (!amount.is_positive() || !amount.is_whole_cents()) {
        return Err(InvalidRefund::Amount);
    }
    if amount > left || !amount.is_positive() {
        return Err(InvalidRefund::ExceedsRefundable(left));
    }
    Ok(amount)
}

/// Where a card dispute (chargeback) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisputeStatus {
    /// Opened: the processor has already taken the money back.
    Open,
    /// Closed in the merchant's favour: the money comes back.
    Won,
    /// Closed in the customer's favour: the money stays taken.
    Lost,
}

impl DisputeStatus {
    /// Stable snake_case code.
    pub const fn code(self) -> &'static str {
        match self {
            DisputeStatus::Open => "open",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
        }
    }

    /// Parses [`DisputeStatus::code`].
    pub fn parse(code: &str) -> Option<DisputeStatus> {
        [DisputeStatus::Open, DisputeStatus::Won, DisputeStatus::Lost]
            .into_iter()
            .find(|status| status.code() == code)
    }
}

/// The balance movement a dispute's news calls for, given what was recorded before.
///
/// Opening takes the amount back once; winning returns it once; losing keeps it taken.
/// News arriving out of order (closed before opened) still ends with the right balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisputeMove {
    /// Nothing to record (a duplicate, or a closed dispute hearing it was opened).
    Nothing,
    /// Take the amount back from the balance.
    TakeBack,
    /// Give back what was taken.
    Reinstate,
    /// Only the status changes.
    StatusOnly,
}

/// Decides the move for dispute news `next` when `recorded` is what the store knows.
pub fn dispute_move(recorded: Option<DisputeStatus>, next: DisputeStatus) -> DisputeMove {
    match (recorded, next) {
        (None, DisputeStatus::Open | DisputeStatus::Lost) => DisputeMove::TakeBack,
        // Won before we heard it was opened: the money went and came back; nothing moves.
        (None, DisputeStatus::Won) => DisputeMove::StatusOnly,
        (Some(DisputeStatus::Open), DisputeStatus::Won) => DisputeMove::Reinstate,
        (Some(DisputeStatus::Open), DisputeStatus::Lost) => DisputeMove::StatusOnly,
        _ => DisputeMove::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dollars(text: &str) -> Micros {
        Micros::parse(text).expect("test amount")
    }

    #[test]
    fn top_up_amounts_are_whole_cents_within_the_limits() {
        let limits = TopupLimits::default();
        assert_eq!(
            TopupAmount::parse("100.00", limits).map(TopupAmount::get),
            Ok(dollars("100"))
        );
        assert_eq!(
            TopupAmount::parse("10", limits).map(TopupAmount::get),
            Ok(dollars("10"))
        );
        assert_eq!(
            TopupAmount::parse("10000.00", limits).map(TopupAmount::get),
            Ok(dollars("10000"))
        );
        assert_eq!(
            TopupAmount::parse("9.99", limits),
            Err(InvalidTopupAmount::BelowMinimum(dollars("10")))
        );
        assert_eq!(
            TopupAmount::parse("10000.01", limits),
            Err(InvalidTopupAmount::AboveMaximum(dollars("10000")))
        );
        assert_eq!(
            TopupAmount::parse("99999999999999999999", limits),
            Err(InvalidTopupAmount::AboveMaximum(dollars("10000")))
        );
        assert_eq!(
            TopupAmount::parse("10.001", limits),
            Err(InvalidTopupAmount::TooManyDecimals)
        );
        assert_eq!(
            TopupAmount::parse("10.0000001", limits),
            Err(InvalidTopupAmount::TooManyDecimals)
        );
        for text in ["", "abc", "1e3", "-20", "$20", "20,00", ".5"] {
            let result = TopupAmount::parse(text, limits);
            assert!(
                matches!(
                    result,
                    Err(InvalidTopupAmount::NotANumber | InvalidTopupAmount::BelowMinimum(_))
                ),
                "{text:?} gave {result:?}"
            );
        }
        assert_eq!(
            InvalidTopupAmount::BelowMinimum(dollars("10")).to_string(),
            "the minimum top-up is $10.00"
        );
    }

    #[test]
    fn limits_are_checked() {
        assert!(TopupLimits::new(Micros::ZERO, dollars("10")).is_err());
        assert!(TopupLimits::new(dollars("10.001"), dollars("20")).is_err());
        assert!(TopupLimits::new(dollars("30"), dollars("20")).is_err());
        assert!(TopupLimits::new(dollars("5"), dollars("5")).is_ok());
    }

    #[test]
    fn success_is_final_and_anything_open_may_still_succeed() {
        use TopupStatus::*;
        for from in TopupStatus::ALL {
            assert_eq!(from.may_become(Succeeded), from != Succeeded, "{from:?}");
            for to in TopupStatus::ALL {
                if from == Succeeded {
                    assert!(!from.may_become(to));
                }
            }
        }
        assert!(Failed.may_become(Succeeded));
        assert!(!Failed.may_become(Pending));
        assert!(!Canceled.may_become(Failed));
        assert!(Pending.may_become(Failed));
        assert!(RequiresAction.may_become(Canceled));
        for status in TopupStatus::ALL {
            assert_eq!(TopupStatus::parse(status.code()), Some(status));
        }
    }

    #[test]
    fn refunds_never_exceed_what_is_left() {
        let paid = TopupStatus::Succeeded;
        let left = refundable(dollars("100"), dollars("30"), dollars("0"));
        assert_eq!(left, dollars("70"));
        assert_eq!(check_refund(paid, left, None), Ok(dollars("70")));
        assert_eq!(check_refund(paid, left, Some(dollars("70"))), Ok(dollars("70")));
        assert_eq!(
            check_refund(paid, left, Some(dollars("70.01"))),
            Err(InvalidRefund::ExceedsRefundable(dollars("70")))
        );
        assert_eq!(
            check_refund(paid, left, Some(dollars("0.001"))),
            Err(InvalidRefund::Amount)
        );
        assert_eq!(
            check_refund(paid, Micros::ZERO, None),
            Err(InvalidRefund::ExceedsRefundable(Micros::ZERO))
        );
        assert_eq!(
            check_refund(TopupStatus::Pending, left, None),
            Err(InvalidRefund::NotPaid)
        );
        assert_eq!(
            refundable(dollars("100"), dollars("60"), dollars("60")),
            Micros::ZERO
        );
    }

    #[test]
    fn dispute_news_moves_money_once_in_any_order() {
        use DisputeMove::*;
        use DisputeStatus::*;
        assert_eq!(dispute_move(None, Open), TakeBack);
        assert_eq!(dispute_move(Some(Open), Open), Nothing);
        assert_eq!(dispute_move(Some(Open), Won), Reinstate);
        assert_eq!(dispute_move(Some(Open), Lost), StatusOnly);
        assert_eq!(dispute_move(Some(Won), Won), Nothing);
        assert_eq!(dispute_move(Some(Won), Open), Nothing);
        assert_eq!(dispute_move(Some(Lost), Open), Nothing);
        assert_eq!(dispute_move(None, Lost), TakeBack);
        assert_eq!(dispute_move(None, Won), StatusOnly);
    }
}
