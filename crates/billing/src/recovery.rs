//! Resolving top-ups whose outcome is unknown (a crash or a timeout between the processor
//! and the ledger) by asking the processor, never by charging again.
//!
//! A top-up the customer asked for with the saved card and whose charge has no payment id
//! stored is looked for among the customer's payments, by the reference in their metadata:
//! its request may have reached the processor (the answer was lost) or not (the customer
//! was told the processor could not be reached). Found, it is settled from what the
//! processor says; not found once no request of it can still arrive, it failed. Sending
//! the charge again instead would charge a customer who was told it failed and who may have
//! moved on. A retry of the customer's own request, with the same key, still charges (at
//! most once: the processor's key derives from the top-up) until then.
//!
//! Auto top-ups keep being re-sent with their key while the processor remembers it: no
//! customer was told one failed, the rule that started it still wants it (its one open
//! recharge holds the account's next ones), and the key makes a re-send charge at most once.

use time::Duration;
use tollgate_core::{TopupOutcome, TopupSource, TopupStatus};
use tollgate_store::{MAX_RECOVERY_BATCH, TopupRecord};
use tollgate_stripe::{
    CheckoutSessionId, CheckoutStatus, CustomerId, Payment, PaymentIntentId, REFERENCE_METADATA_KEY,
};

use crate::topups::outcome_of;
use crate::{Billing, BillingResult};

/// How often the recovery pass runs in a server.
pub const RECOVERY_INTERVAL_MS: u64 = 60_000;
/// A hosted page left open this long is closed (the processor's own sessions last 24 h).
const HOSTED_PAGE_LIFETIME: Duration = Duration::hours(24);
/// An auto top-up whose request may not have reached the processor is re-sent with its key
/// only while the processor still remembers keys (24 h); after that it is given up.
const CHARGE_RETRY_WINDOW: Duration = Duration::hours(23);
/// A saved-card charge not found at the processor this long after its top-up was recorded
/// never reached it: longer than any request of it can take, the adapter's retries
/// included (at most 11 attempts of at most 2 minutes, with back-off, about 23 minutes),
/// and than a customer's retry of a request that was answered with an error.
pub const UNSENT_CHARGE_GIVE_UP: Duration = Duration::minutes(30);
/// Payments are looked for from this long before the top-up was recorded: the processor's
/// clock is not ours.
const CLOCK_SLACK: Duration = Duration::hours(1);
/// The failure code of a saved-card top-up whose charge never reached the processor.
pub const UNSENT_FAILURE_CODE: &str = "payment_processor_unavailable";

/// What one recovery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Open top-ups looked at.
    pub examined: usize,
    /// Of those, now succeeded, failed or canceled.
    pub resolved: usize,
    /// Of those, the processor could not be asked (tried again next pass).
    pub errors: usize,
}

impl Billing {
    /// Resolves open top-ups created at least `min_age` ago (at most [`MAX_RECOVERY_BATCH`]).
    pub async fn recover_open_topups(&self, min_age: Duration) -> BillingResult<RecoveryReport> {
        let now = self.clock.now();
        let open = self.store.open_topups(now - min_age, MAX_RECOVERY_BATCH).await?;
        let mut report = RecoveryReport {
            examined: open.len(),
            ..RecoveryReport::default()
        };
        for topup in open {
            let id = topup.id.clone();
            match self.recover(topup, now).await {
                Ok(status) if !status.is_open() => report.resolved += 1,
                Ok(_) => {}
                Err(error) => {
                    report.errors += 1;
                    tracing::warn!(topup = %id, %error, "could not resolve an open top-up yet");
                }
            }
        }
        Ok(report)
    }

    async fn recover(&self, topup: TopupRecord, now: time::OffsetDateTime) -> BillingResult<TopupStatus> {
        let age = now - topup.created_at;
        if let Some(session) = &topup.checkout_session {
            let id = CheckoutSessionId::new(session.clone());
            let mut session = self.payments.retrieve_checkout(&id).await?;
            if session.status == CheckoutStatus::Open && age > HOSTED_PAGE_LIFETIME {
                session = self.payments.expire_checkout(&id).await?;
            }
            return Ok(self.apply_topup_session(&session, &topup).await?.status);
        }
        if let Some(payment) = &topup.payment_reference {
            let payment = self
                .payments
                .payment(&PaymentIntentId::new(payment.clone()))
                .await?;
            return Ok(match outcome_of(&payment, None) {
                Some(outcome) => self.store.settle_topup(&topup.id, outcome).await?.status,
                None => topup.status,
            });
        }
        match topup.source {
            TopupSource::SavedCard => self.recover_unsent_charge(topup, age).await,
            TopupSource::AutoRecharge if age < CHARGE_RETRY_WINDOW => {
                Ok(self.charge_saved_card(topup).await?.status)
            }
            TopupSource::AutoRecharge => {
                // Too old to re-send with its key: whether it was charged is asked, not assumed.
                if let Some(status) = self.settle_from_listed(&topup).await? {
                    return Ok(status);
                }
                Ok(self
                    .store
                    .settle_topup(&topup.id, TopupOutcome::Canceled)
                    .await?
                    .status)
            }
            // A hosted page whose session id was never stored: if it is ever paid, its
            // webhook names the top-up and credits it (a canceled top-up may still succeed).
            TopupSource::HostedPage if age < HOSTED_PAGE_LIFETIME => Ok(topup.status),
            TopupSource::HostedPage => Ok(self
                .store
                .settle_topup(&topup.id, TopupOutcome::Canceled)
                .await?
                .status),
        }
    }

    /// A saved-card top-up with no payment stored: found at the processor, it is settled
    /// from there; not found, it waits until no request of it can still arrive, then fails.
    /// It is never charged from here (see the module's comment).
    async fn recover_unsent_charge(&self, topup: TopupRecord, age: Duration) -> BillingResult<TopupStatus> {
        if let Some(status) = self.settle_from_listed(&topup).await? {
            return Ok(status);
        }
        if age < UNSENT_CHARGE_GIVE_UP {
            return Ok(topup.status);
        }
        tracing::warn!(topup = %topup.id, "the top-up's charge never reached the payment processor; it failed");
        let settled = self
            .store
            .settle_topup(
                &topup.id,
                TopupOutcome::Failed {
                    payment_reference: None,
                    code: UNSENT_FAILURE_CODE.to_owned(),
                    message: "The payment processor could not be reached, so the card was not charged."
                        .to_owned(),
                },
            )
            .await?;
        Ok(settled.status)
    }

    /// Looks for the top-up's payment among its customer's and, found, links and settles
    /// the top-up from it; `None` when there is none (or no customer, so no charge was sent).
    async fn settle_from_listed(&self, topup: &TopupRecord) -> BillingResult<Option<TopupStatus>> {
        let profile = self.store.payment_profile(&topup.account).await?;
        let Some(customer) = profile.processor_customer else {
            return Ok(None);
        };
        let since = (topup.created_at - CLOCK_SLACK).unix_timestamp();
        let payments = self
            .payments
            .customer_payments(&CustomerId::new(customer), since)
            .await?;
        let Some(payment) = payments.into_iter().find(|payment| names(payment, topup)) else {
            return Ok(None);
        };
        let linked = self
            .store
            .link_topup(&topup.id, None, Some(payment.intent.as_str().to_owned()))
            .await?;
        Ok(Some(match self.settle_from_payment(&linked, &payment).await? {
            Some(settled) => settled.status,
            // Still processing: the next pass retrieves it by the id now stored.
            None => linked.status,
        }))
    }
}

/// Whether the payment was made for the top-up (its request carried the top-up's id).
fn names(payment: &Payment, topup: &TopupRecord) -> bool {
    payment
        .metadata
        .get(REFERENCE_METADATA_KEY)
        .is_some_and(|reference| *reference == topup.id)
}
