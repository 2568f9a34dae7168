//! Adding, replacing and removing the account's card through the hosted page.

use tollgate_core::{AccountId, Actor};
use tollgate_store::{CardRecord, CardSetupResult};
use tollgate_stripe::{Card, CheckoutPurpose, CheckoutRequest, CheckoutSession, CheckoutStatus};

use crate::{Billing, BillingError, BillingResult};

/// A hosted card page opened for an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardSetupStart {
    /// The session id.
    pub session_id: String,
    /// Where to send the browser.
    pub url: String,
}

/// What came of a card setup session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardReturn {
    /// The card is the account's card now (or already was: a replayed return).
    Saved(Option<CardRecord>),
    /// The customer has not finished on the page; nothing changed.
    NotCompleted,
    /// The page expired; nothing changed.
    Expired,
}

pub(crate) fn card_record(card: &Card, now: time::OffsetDateTime) -> CardRecord {
    CardRecord {
        processor_id: card.id.as_str().to_owned(),
        brand: card.brand.clone(),
        last4: card.last4.clone(),
        exp_month: card.exp_month,
        exp_year: card.exp_year,
        added_at: now,
    }
}

impl Billing {
    /// Opens the processor's hosted page to add or replace the account's card.
    pub async fn start_card_setup(
        &self,
        account: &AccountId,
        return_url: Option<String>,
        idempotency_key: &str,
    ) -> BillingResult<CardSetupStart> {
        let customer = self.customer(account).await?;
        let return_url = self.return_url(return_url);
        let session = self
            .payments
            .create_checkout(CheckoutRequest {
                customer,
                purpose: CheckoutPurpose::SaveCard,
                success_url: self.success_url(),
                cancel_url: crate::with_query(&return_url, &[("payment_method", "canceled")]),
                reference: account.to_string(),
                metadata: self.session_metadata(account, "card_setup", &return_url),
                idempotency_key: format!("tollgate-card-setup-{account}-{idempotency_key}"),
            })
            .await?;
        self.store.record_card_setup(account, session.id.as_str()).await?;
        let url = session.url.clone().ok_or_else(|| {
            BillingError::Payments(tollgate_stripe::PaymentsError::Unexpected(
                "the hosted page session has no URL".to_owned(),
            ))
        })?;
        Ok(CardSetupStart {
            session_id: session.id.into_string(),
            url,
        })
    }

    /// Applies a card setup session as the processor reports it; safe to repeat.
    pub(crate) async fn apply_card_setup(&self, session: &CheckoutSession) -> BillingResult<CardReturn> {
        match (session.status, &session.card) {
            (CheckoutStatus::Complete, Some(card)) => {
                let now = self.clock.now();
                let result = self
                    .store
                    .complete_card_setup(session.id.as_str(), card_record(card, now), Actor::System)
                    .await?;
                self.after_card_change(session, &result).await;
                Ok(CardReturn::Saved(result.card))
            }
            (CheckoutStatus::Complete, None) => Err(BillingError::Payments(
                tollgate_stripe::PaymentsError::Unexpected(format!(
                    "setup session {} is complete without a card",
                    session.id
                )),
            )),
            (CheckoutStatus::Open, _) => Ok(CardReturn::NotCompleted),
            (CheckoutStatus::Expired, _) => Ok(CardReturn::Expired),
        }
    }

    /// Makes the new card the processor's default and detaches the one it replaced.
    ///
    /// Best effort: the account's card is already switched in the store, which is what
    /// Tollgate charges; a failure here leaves an extra card at the processor, logged.
    pub(crate) async fn after_card_change(&self, session: &CheckoutSession, result: &CardSetupResult) {
        if !result.applied {
            return;
        }
        if let (Some(customer), Some(card)) = (&session.customer, &session.card)
            && let Err(error) = self.payments.set_default_card(customer, &card.id).await
        {
            tracing::warn!(%error, session = %session.id, "could not make the new card the processor's default");
        }
        if let Some(old) = &result.replaced {
            let old_id = tollgate_stripe::PaymentMethodId::new(old.processor_id.clone());
            if let Err(error) = self.payments.detach_card(&old_id).await {
                tracing::warn!(%error, card = %old.processor_id, "could not detach the replaced card");
            }
        }
    }

    /// Removes the account's card, here and at the processor.
    pub async fn remove_card(&self, account: &AccountId, actor: Actor) -> BillingResult<Option<CardRecord>> {
        let removed = self.store.remove_card(account, actor).await?;
        if let Some(card) = &removed {
            let id = tollgate_stripe::PaymentMethodId::new(card.processor_id.clone());
            if let Err(error) = self.payments.detach_card(&id).await {
                // The card is no longer Tollgate's to charge either way.
                tracing::warn!(%error, card = %card.processor_id, "could not detach the removed card");
            }
        }
        Ok(removed)
    }
}
