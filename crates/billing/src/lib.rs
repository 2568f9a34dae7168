//! Tollgate's payment flows, between the store and the card processor.
//!
//! The store decides and records (a top-up is credited once, a refund takes money back
//! once); the [`Payments`] port talks to Stripe or the sandbox. This crate sequences the
//! two so that every crash or lost answer is recoverable: a top-up is recorded before
//! anything is sent, every processor request carries an idempotency key derived from
//! what Tollgate recorded, and every outcome is learnt from the processor itself (on the
//! browser's return, from a webhook, or by a recovery pass), never assumed.
//!
//! No HTTP and no SQL here: the web crate calls these flows, the store persists them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auto_recharge;
mod cards;
mod invoices;
mod receipts;
mod recovery;
mod refunds;
mod topups;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate_core::{AccountId, Clock, TopupLimits};
use tollgate_store::{SharedStore, StoreError};
use tollgate_stripe::{
    ACCOUNT_METADATA_KEY, CustomerId, Payments, PaymentsError, WebhookError, WebhookVerifier,
};

pub use auto_recharge::{
    AUTO_RECHARGE_BATCH, AUTO_RECHARGE_POLL_INTERVAL_MS, AutoRechargeReport, AutoRechargeWorker,
};
pub use cards::{CardReturn, CardSetupStart};
pub use invoices::{InvoiceCardPayment, invoice_document};
pub use receipts::ReceiptFormat;
pub use recovery::{RECOVERY_INTERVAL_MS, RecoveryReport, UNSENT_CHARGE_GIVE_UP, UNSENT_FAILURE_CODE};
pub use refunds::RefundOutcome;
pub use topups::{CheckoutReturn, TopupStart};
pub use webhooks::WebhookOutcome;

/// Metadata key of the page the browser goes back to after the hosted page.
pub const RETURN_URL_METADATA_KEY: &str = "tollgate_return_url";
/// Metadata key saying what a hosted page session is for (`card_setup` or `topup`).
pub const PURPOSE_METADATA_KEY: &str = "tollgate_purpose";
/// Longest return URL accepted: the processor keeps metadata values up to 500 characters.
pub const MAX_RETURN_URL_LENGTH: usize = 500;

/// What the flows need to know about where Tollgate lives.
#[derive(Clone, Debug)]
pub struct BillingSettings {
    /// One-time top-up limits.
    pub topup_limits: TopupLimits,
    /// Tollgate's public base URL (no trailing slash), for the hosted page's return links.
    pub public_url: String,
    /// Where the browser goes after the hosted page when the caller named no page.
    pub default_return_url: String,
    /// The merchant named on receipts.
    pub issuer_name: String,
}

/// Why a payment flow could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The processor could not be reached or refused the request.
    #[error(transparent)]
    Payments(#[from] PaymentsError),
    /// The account has no card to charge.
    #[error("the account has no payment method")]
    NoPaymentMethod,
    /// A webhook's signature, timestamp or body was not acceptable.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// A hosted page session that does not belong to this flow or account.
    #[error("{0}")]
    ForeignSession(String),
    /// A receipt asked for a top-up that was never paid.
    #[error("top-up `{0}` has no receipt: it was not paid")]
    NotPaid(String),
    /// The receipt could not be rendered.
    #[error("receipt: {0}")]
    Document(String),
}

/// Shorthand for flow results.
pub type BillingResult<T> = Result<T, BillingError>;

/// The payment flows of one Tollgate process.
#[derive(Clone)]
pub struct Billing {
    store: SharedStore,
    payments: Arc<dyn Payments>,
    verifier: Option<Arc<WebhookVerifier>>,
    clock: Arc<dyn Clock>,
    settings: Arc<BillingSettings>,
}

impl Billing {
    /// Flows over `store` and `payments`; `verifier` checks webhooks (none: webhooks are refused).
    pub fn new(
        store: SharedStore,
        payments: Arc<dyn Payments>,
        verifier: Option<WebhookVerifier>,
        clock: Arc<dyn Clock>,
        settings: BillingSettings,
    ) -> Billing {
        Billing {
            store,
            payments,
            verifier: verifier.map(Arc::new),
            clock,
            settings: Arc::new(settings),
        }
    }

    /// The settings the flows run with.
    pub fn settings(&self) -> &BillingSettings {
        &self.settings
    }

    /// The processor's customer for the account, created on first need.
    async fn customer(&self, account: &AccountId) -> BillingResult<CustomerId> {
        if let Some(customer) = self.store.payment_profile(account).await?.processor_customer {
            return Ok(CustomerId::new(customer));
        }
        let record = self.store.account(account).await?;
        // Keyed by the account: racing first payments create one customer at the processor.
        let created = self
            .payments
            .create_customer(
                account,
                &record.name,
                &record.email,
                &format!("tollgate-customer-{account}"),
            )
            .await?;
        let stored = self
            .store
            .set_processor_customer(account, created.as_str())
            .await?;
        Ok(CustomerId::new(stored))
    }

    /// Tollgate's return endpoint for hosted pages, with the processor's session placeholder.
    fn success_url(&self) -> String {
        format!(
            "{}/checkout/return?session_id={{CHECKOUT_SESSION_ID}}",
            self.settings.public_url
        )
    }

    fn return_url(&self, requested: Option<String>) -> String {
        requested.unwrap_or_else(|| self.settings.default_return_url.clone())
    }

    fn session_metadata(
        &self,
        account: &AccountId,
        purpose: &str,
        return_url: &str,
    ) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ACCOUNT_METADATA_KEY.to_owned(), account.to_string()),
            (PURPOSE_METADATA_KEY.to_owned(), purpose.to_owned()),
            (RETURN_URL_METADATA_KEY.to_owned(), return_url.to_owned()),
        ])
    }
}

/// Adds `key=value` to a URL's query, keeping what is there.
pub(crate) fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let mut out = base.to_owned();
    for (index, (key, value)) in pairs.iter().enumerate() {
        let separator = if index == 0 && !base.contains('?') {
            '?'
        } else {
            '&'
        };
        out.push(separator);
        out.push_str(&encode(key));
        out.push('=');
        out.push_str(&encode(value));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_added_and_encoded() {
        assert_eq!(
            with_query(
                "https://app.test/billing",
                &[("topup", "top_1"), ("status", "ok")]
            ),
            "https://app.test/billing?topup=top_1&status=ok"
        );
        assert_eq!(
            with_query("https://app.test/b?x=1#top", &[("error", "card declined & more")]),
            "https://app.test/b?x=1&error=card%20declined%20%26%20more#top"
        );
    }
}
