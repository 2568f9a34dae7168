//! The processor's webhooks: verified over the raw body, applied once per event id, in
//! any order. Every effect is itself idempotent in the store, so a duplicate that slips
//! past the event-id check (two deliveries at once) still changes nothing.

use tollgate_core::{DisputeStatus, TopupOutcome};
use tollgate_store::{DisputeNews, TopupReference};
use tollgate_stripe::{PaymentEvent, PaymentEventKind, REFERENCE_METADATA_KEY, WebhookError};

use crate::topups::outcome_of;
use crate::{Billing, BillingError, BillingResult};

/// What a webhook delivery did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The event was applied now.
    Applied,
    /// The event was applied before; nothing was done.
    Duplicate,
    /// An event Tollgate does not act on (or about an object it does not know): acknowledged.
    Ignored,
}

impl Billing {
    /// Verifies a delivery (`Stripe-Signature` over the exact body) and applies its event once.
    pub async fn handle_webhook(
        &self,
        payload: &[u8],
        signature: Option<&str>,
    ) -> BillingResult<WebhookOutcome> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(BillingError::Webhook(WebhookError::EmptySecret))?;
        let signature = signature.ok_or(BillingError::Webhook(WebhookError::MalformedHeader(
            "the Stripe-Signature header is missing",
        )))?;
        let now = self.clock.now().unix_timestamp();
        let event = verifier.verify(payload, signature, now)?;
        let event_type = event_type(&event.kind);
        let outcome = self.apply_event(&event).await?;
        // Recorded only once applied: a failure leaves it unrecorded, so the processor's
        // retry applies it again. A duplicate is applied again too, harmlessly: every effect
        // is idempotent in the store, which is what makes reordered and concurrent
        // deliveries safe; the record says it was one.
        if !self.store.record_processor_event(&event.id, event_type).await? {
            return Ok(WebhookOutcome::Duplicate);
        }
        Ok(outcome)
    }

    async fn apply_event(&self, event: &PaymentEvent) -> BillingResult<WebhookOutcome> {
        match &event.kind {
            PaymentEventKind::CheckoutCompleted { session, .. }
            | PaymentEventKind::CheckoutExpired { session, .. } => {
                // The event's copy may be stale; the session as it is now is the truth.
                let session = self.payments.retrieve_checkout(session).await?;
                match self.apply_session(&session).await {
                    Ok(_) => Ok(WebhookOutcome::Applied),
                    Err(BillingError::ForeignSession(reason)) => {
                        tracing::info!(%reason, "webhook about a session Tollgate did not open");
                        Ok(WebhookOutcome::Ignored)
                    }
                    Err(error) => Err(error),
                }
            }
            PaymentEventKind::PaymentSucceeded { payment } | PaymentEventKind::PaymentFailed { payment } => {
                let mut topup = self
                    .store
                    .find_topup(TopupReference::Payment(payment.intent.as_str().to_owned()))
                    .await?;
                if topup.is_none()
                    && let Some(reference) = payment.metadata.get(REFERENCE_METADATA_KEY)
                {
                    topup = match self.store.topup(reference).await {
                        Ok(found) => Some(found),
                        Err(tollgate_store::StoreError::NotFound { .. }) => None,
                        Err(error) => return Err(error.into()),
                    };
                }
                let Some(topup) = topup else {
                    return Ok(WebhookOutcome::Ignored);
                };
                let card = match &payment.payment_method {
                    Some(card) if matches!(event.kind, PaymentEventKind::PaymentSucceeded { .. }) => {
                        self.payments.card(card).await.ok()
                    }
                    _ => None,
                };
                match outcome_of(payment, card.as_ref()) {
                    Some(outcome) => {
                        let outcome = match outcome {
                            // The hosted page shows a decline and lets the customer try another
                            // card: a failure there is not the end of the top-up.
                            TopupOutcome::Failed { .. }
                                if topup.source == tollgate_core::TopupSource::HostedPage =>
                            {
                                return Ok(WebhookOutcome::Applied);
                            }
                            outcome => outcome,
                        };
                        self.store.settle_topup(&topup.id, outcome).await?;
                        Ok(WebhookOutcome::Applied)
                    }
                    None => Ok(WebhookOutcome::Ignored),
                }
            }
            PaymentEventKind::ChargeRefunded {
                intent,
                charge,
                amount_refunded,
            } => {
                let reference = match intent {
                    Some(intent) => TopupReference::Payment(intent.as_str().to_owned()),
                    None => TopupReference::Charge(charge.clone()),
                };
                self.store.reconcile_refunded(reference, *amount_refunded).await?;
                Ok(WebhookOutcome::Applied)
            }
            PaymentEventKind::DisputeCreated {
                dispute,
                intent,
                charge,
                amount,
            } => {
                self.dispute(dispute, intent, charge, *amount, DisputeStatus::Open)
                    .await
            }
            PaymentEventKind::DisputeClosed {
                dispute,
                intent,
                charge,
                amount,
                won,
            } => {
                let status = if *won {
                    DisputeStatus::Won
                } else {
                    DisputeStatus::Lost
                };
                self.dispute(dispute, intent, charge, *amount, status).await
            }
            PaymentEventKind::PaymentMethodDetached { .. } | PaymentEventKind::Other { .. } => {
                Ok(WebhookOutcome::Ignored)
            }
        }
    }

    async fn dispute(
        &self,
        dispute: &str,
        intent: &Option<tollgate_stripe::PaymentIntentId>,
        charge: &str,
        amount: tollgate_core::Micros,
        status: DisputeStatus,
    ) -> BillingResult<WebhookOutcome> {
        let applied = self
            .store
            .apply_dispute(DisputeNews {
                dispute: dispute.to_owned(),
                payment_reference: intent.as_ref().map(|intent| intent.as_str().to_owned()),
                charge_reference: charge.to_owned(),
                amount,
                status,
            })
            .await?;
        Ok(match applied {
            Some(_) => WebhookOutcome::Applied,
            None => WebhookOutcome::Ignored,
        })
    }
}

fn event_type(kind: &PaymentEventKind) -> &str {
    match kind {
        PaymentEventKind::CheckoutCompleted { .. } => "checkout.session.completed",
        PaymentEventKind::CheckoutExpired { .. } => "checkout.session.expired",
        PaymentEventKind::PaymentSucceeded { .. } => "payment_intent.succeeded",
        PaymentEventKind::PaymentFailed { .. } => "payment_intent.payment_failed",
        PaymentEventKind::ChargeRefunded { .. } => "charge.refunded",
        PaymentEventKind::DisputeCreated { .. } => "charge.dispute.created",
        PaymentEventKind::DisputeClosed { .. } => "charge.dispute.closed",
        PaymentEventKind::PaymentMethodDetached { .. } => "payment_method.detached",
        PaymentEventKind::Other { event_type } => event_type,
    }
}
