//! The payments port: what Tollgate asks of a card processor, in Tollgate's own terms.
//!
//! Nothing here names a Stripe type; the adapter in [`crate::adapter`] translates. Money is
//! [`Micros`] throughout; amounts sent to the processor must be whole cents.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use tollgate_core::{AccountId, Micros};

macro_rules! processor_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Wraps an identifier the processor issued (or one stored from it earlier).
            pub fn new(id: impl Into<String>) -> Self {
                $name(id.into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The identifier as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

processor_id!(
    /// The processor's customer (`cus_…`), one per Tollgate account.
    CustomerId
);
processor_id!(
    /// A saved card (`pm_…`).
    PaymentMethodId
);
processor_id!(
    /// A hosted payment page session (`cs_…`).
    CheckoutSessionId
);
processor_id!(
    /// One payment (`pi_…`): the unit a top-up is charged, retried and refunded by.
    PaymentIntentId
);
processor_id!(
    /// A refund (`re_…`).
    RefundId
);

/// Most payments [`Payments::customer_payments`] reads before it gives up (in pages of 100):
/// bounds the work one lookup can cause.
pub const MAX_LISTED_PAYMENTS: usize = 1_000;

/// A saved card as the Billing page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    /// The card's processor id, used to charge or detach it.
    pub id: PaymentMethodId,
    /// `visa`, `mastercard`, `amex`, …
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month, 1–12.
    pub exp_month: u8,
    /// Expiry year, four digits.
    pub exp_year: u16,
}

/// What a hosted page is opened for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckoutPurpose {
    /// Take a card and save it for later off-session charges; nothing is charged.
    SaveCard,
    /// Charge `amount` now and save the card for later off-session charges.
    PayAndSaveCard {
        /// Amount to charge; must be whole cents.
        amount: Micros,
        /// Shown to the customer on the page and on the receipt line.
        description: String,
    },
}

/// A request to open a hosted page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRequest {
    /// The customer the card is saved to.
    pub customer: CustomerId,
    /// Save a card, or pay and save it.
    pub purpose: CheckoutPurpose,
    /// Where the browser returns on success; `{CHECKOUT_SESSION_ID}` is replaced by the session id.
    pub success_url: String,
    /// Where the page's back link leads.
    pub cancel_url: String,
    /// Tollgate's own reference (a top-up id, an account id), echoed back on the session and
    /// in its metadata so a webhook can be matched without a lookup.
    pub reference: String,
    /// Extra key/value pairs stored on the session and its payment or setup intent.
    pub metadata: BTreeMap<String, String>,
    /// Makes a retried creation return the same session.
    pub idempotency_key: String,
}

/// Where a hosted page session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckoutStatus {
    /// Waiting for the customer (a rejected card leaves it open).
    Open,
    /// The card was saved (and, in payment mode, the payment went through).
    Complete,
    /// Expired or expired on request; nothing more can happen on it.
    Expired,
}

/// A hosted page session and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutSession {
    /// The session id.
    pub id: CheckoutSessionId,
    /// The page to send the browser to, while the session is open.
    pub url: Option<String>,
    /// Open, complete or expired.
    pub status: CheckoutStatus,
    /// The [`CheckoutRequest::reference`] it was created with.
    pub reference: Option<String>,
    /// The customer the card belongs to.
    pub customer: Option<CustomerId>,
    /// The card entered on the page, once the setup or payment succeeded.
    pub card: Option<Card>,
    /// The payment, for a session that charges (absent until the customer first tries to pay).
    pub payment: Option<Payment>,
    /// The session's metadata (the request's, plus the reference).
    pub metadata: BTreeMap<String, String>,
}

/// An off-session charge of a saved card (auto top-up, a top-up with a card on file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The card's owner.
    pub customer: CustomerId,
    /// The saved card.
    pub payment_method: PaymentMethodId,
    /// Amount; must be whole cents.
    pub amount: Micros,
    /// Derive it from what is being paid (the top-up, the recharge's sequence number) so a
    /// retry after a crash can never charge twice.
    pub idempotency_key: String,
    /// Shown on the customer's statement line and in the processor's dashboard.
    pub description: String,
    /// Extra key/value pairs stored on the payment.
    pub metadata: BTreeMap<String, String>,
}

/// A payment and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// The payment's id: retrieve, refund and match webhooks by it.
    pub intent: PaymentIntentId,
    /// Succeeded, failed, …
    pub status: PaymentStatus,
    /// The amount asked for.
    pub amount: Micros,
    /// The customer charged, when known.
    pub customer: Option<CustomerId>,
    /// The card charged, when known.
    pub payment_method: Option<PaymentMethodId>,
    /// The latest charge attempt (`ch_…`), which refunds and disputes name.
    pub charge: Option<String>,
    /// The payment's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Where a payment stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentStatus {
    /// The money was taken.
    Succeeded,
    /// The customer must authenticate (3-D Secure) on the page at `url`.
    RequiresAction {
        /// Where to send the customer, when the processor gave one.
        url: Option<String>,
    },
    /// Accepted, outcome not known yet; ask again later or wait for the webhook.
    Processing,
    /// Not attempted yet: waiting for a card or a confirmation (a fresh hosted-page payment).
    Pending,
    /// The last attempt was refused. A business outcome, not an error.
    Failed {
        /// `card_declined`, `authentication_required`, `expired_card`, …
        code: String,
        /// The issuer's reason for `card_declined` (`insufficient_funds`, `generic_decline`, …).
        decline_code: Option<String>,
        /// A message that may be shown to the customer.
        message: String,
    },
    /// Abandoned (an expired hosted page) or cancelled; it will never succeed.
    Canceled,
}

/// A refund of (part of) a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    /// The refund's id.
    pub id: RefundId,
    /// The refunded payment.
    pub intent: Option<PaymentIntentId>,
    /// The refunded charge.
    pub charge: Option<String>,
    /// The amount of this refund (not cumulative).
    pub amount: Micros,
    /// Succeeded, pending, …
    pub status: RefundStatus,
}

/// Where a refund stands; card refunds normally succeed at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    /// The money is on its way back to the card.
    Succeeded,
    /// Not settled yet.
    Pending,
    /// The refund could not be made; the money stays with the merchant.
    Failed {
        /// The processor's reason, when given.
        reason: Option<String>,
    },
    /// Cancelled before it was made.
    Canceled,
}

/// Why a payments call did not give an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentsError {
    /// Network error, timeout, 5xx, 429 or a conflicting concurrent request. The outcome is
    /// unknown; the same call with the same idempotency key is safe to retry and never repeats
    /// an effect that already happened.
    #[error("payment processor unavailable: {0}")]
    Transient(String),
    /// The processor (or this adapter, before sending) refused the request as it stands: fix
    /// the request, don't retry it. Card errors outside a charge land here too.
    #[error("payment request rejected: {message}")]
    Rejected {
        /// The processor's error code (`parameter_invalid_integer`, `idempotency_error`, …).
        code: Option<String>,
        /// What was wrong, for logs and operators.
        message: String,
        /// The offending parameter, when one was named.
        param: Option<String>,
    },
    /// The object (customer, card, payment, session…) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Bad key, bad URL, missing permission: an operator must fix the settings.
    #[error("payment processor misconfigured: {0}")]
    Configuration(String),
    /// The processor answered something this adapter could not understand. The request's effect
    /// is unknown: reconcile by retrieving the object, and never assume it failed.
    #[error("unexpected answer from the payment processor: {0}")]
    Unexpected(String),
}

impl PaymentsError {
    /// True when the same call (same idempotency key) may simply be tried again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, PaymentsError::Transient(_))
    }
}

/// The payments port: everything Tollgate asks of a card processor.
///
/// Every call that creates something or moves money takes an idempotency key; an
/// implementation must make repeating such a call with the same key repeat nothing.
#[async_trait]
pub trait Payments: Send + Sync + 'static {
    /// Creates the processor's customer for an account; the account id is stored on it.
    async fn create_customer(
        &self,
        account: &AccountId,
        name: &str,
        email: &str,
        idempotency_key: &str,
    ) -> Result<CustomerId, PaymentsError>;

    /// Opens a hosted page to save a card, or to pay and save it.
    async fn create_checkout(&self, request: CheckoutRequest) -> Result<CheckoutSession, PaymentsError>;

    /// The session now, with the saved card and the payment once there are any.
    async fn retrieve_checkout(&self, id: &CheckoutSessionId) -> Result<CheckoutSession, PaymentsError>;

    /// Closes an open session so it can no longer be paid; returns the session as it ends up.
    ///
    /// A session that is already complete or expired is returned as it is, not as an error: a
    /// `Complete` answer means the customer paid before the page could be closed.
    async fn expire_checkout(&self, id: &CheckoutSessionId) -> Result<CheckoutSession, PaymentsError>;

    /// A saved card's display details.
    async fn card(&self, id: &PaymentMethodId) -> Result<Card, PaymentsError>;

    /// Makes `card` (attached to `customer`) the customer's default.
    async fn set_default_card(
        &self,
        customer: &CustomerId,
        card: &PaymentMethodId,
    ) -> Result<(), PaymentsError>;

    /// Detaches a card from its customer; detaching a card that is already detached succeeds.
    async fn detach_card(&self, card: &PaymentMethodId) -> Result<(), PaymentsError>;

    /// Charges a saved card without the customer present.
    ///
    /// A decline (including `authentication_required`) is `Ok` with
    /// [`PaymentStatus::Failed`]: a business outcome, not an error.
    async fn charge_off_session(&self, request: ChargeRequest) -> Result<Payment, PaymentsError>;

    /// A payment as it stands now (to resolve an unknown outcome).
    async fn payment(&self, id: &PaymentIntentId) -> Result<Payment, PaymentsError>;

    /// Every payment of `customer` created at or after `created_since` (Unix seconds), newest
    /// first: how a charge whose request may never have arrived is looked for, by the
    /// reference in its metadata, instead of being sent again.
    ///
    /// All pages are read; a customer with more than [`MAX_LISTED_PAYMENTS`] such payments is
    /// an error rather than a partial answer, since "not found" must mean not there.
    async fn customer_payments(
        &self,
        customer: &CustomerId,
        created_since: i64,
    ) -> Result<Vec<Payment>, PaymentsError>;

    /// The payment a charge (`ch_…`) belongs to; `None` for a charge made without one.
    async fn charge_payment(&self, charge: &str) -> Result<Option<PaymentIntentId>, PaymentsError>;

    /// Refunds a payment: all of what remains, or `amount` (whole cents) of it.
    async fn refund(
        &self,
        intent: &PaymentIntentId,
        amount: Option<Micros>,
        idempotency_key: &str,
    ) -> Result<Refund, PaymentsError>;
}
