//! Tollgate's payments port and its Stripe adapter.
//!
//! - [`Payments`] is what the application talks to, in Tollgate's terms: customers, hosted
//!   pages that save a card (or pay and save it), off-session charges, refunds. Money is
//!   [`tollgate_core::Micros`]; a decline is a [`PaymentStatus::Failed`] outcome, not an error.
//! - [`StripePayments`] implements it with async-stripe 1.0, against Stripe or the built-in
//!   sandbox (`tollgate-stripe-sandbox`): explicit timeouts, an idempotency key on every POST,
//!   bounded retries with back-off on transient failures only.
//! - [`WebhookVerifier`] checks `Stripe-Signature` over the raw body and parses the events
//!   Tollgate acts on into [`PaymentEvent`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adapter;
pub mod port;
pub mod webhook;

pub use adapter::{
    ACCOUNT_METADATA_KEY, DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BASE_DELAY_MS, DEFAULT_TIMEOUT_MS, MAX_RETRIES,
    MAX_TIMEOUT_MS, REFERENCE_METADATA_KEY, StripeConfig, StripePayments, install_crypto_provider,
};
pub use port::{
    Card, ChargeRequest, CheckoutPurpose, CheckoutRequest, CheckoutSession, CheckoutSessionId,
    CheckoutStatus, CustomerId, MAX_LISTED_PAYMENTS, Payment, PaymentIntentId, PaymentMethodId,
    PaymentStatus, Payments, PaymentsError, Refund, RefundId, RefundStatus,
};
pub use webhook::{DEFAULT_TOLERANCE_SECS, PaymentEvent, PaymentEventKind, WebhookError, WebhookVerifier};
