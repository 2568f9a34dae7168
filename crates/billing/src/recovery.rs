//! Resolving top-ups whose outcome is unknown (a crash or a timeout between the processor
//! and the ledger) by asking the processor, never by charging again: a retried charge
//! carries the key derived from the top-up, so the processor answers with the first one.

use time::Duration;
use tollgate_core::{TopupOutcome, TopupSource, TopupStatus};
use tollgate_store::{MAX_RECOVERY_BATCH, TopupRecord};
use tollgate_stripe::{CheckoutSessionId, CheckoutStatus, PaymentIntentId};

use crate::topups::outcome_of;
use crate::{Billing, BillingResult};

/// How often the recovery pass runs in a server.
pub const RECOVERY_INTERVAL_MS: u64 = 60_000;
/// A hosted page left open this long is closed (the processor's own sessions last 24 h).
const HOSTED_PAGE_LIFETIME: Duration = Duration::hours(24);
/// A charge whose request may not have reached the processor is re-sent with its key only
/// while the processor still remembers keys (24 h); after that it is given up.
const CHARGE_RETRY_WINDOW: Duration = Duration::hours(23);

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
            TopupSource::SavedCard | TopupSource::AutoRecharge if age < CHARGE_RETRY_WINDOW => {
                Ok(self.charge_saved_card(topup).await?.status)
            }
            // A hosted page whose session id was never stored: if it is ever paid, its
            // webhook names the top-up and credits it (a canceled top-up may still succeed).
            TopupSource::HostedPage if age < HOSTED_PAGE_LIFETIME => Ok(topup.status),
            _ => Ok(self
                .store
                .settle_topup(&topup.id, TopupOutcome::Canceled)
                .await?
                .status),
        }
    }
}
