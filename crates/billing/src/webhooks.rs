//! The processor's webhooks: verified over the raw body, applied once per event id, in
//! any order. Every effect is itself idempotent in the store, so a duplicate that slips
//! past the event-id check (two deliveries at once) still changes nothing.
//!
//! An event is recorded (and so acknowledged, never sent again) only once it was applied.
//! News about a charge (a refund, a dispute) may come before the store knows that its
//! payment succeeded; it is then not applied blind, nor dropped: the payment is first
//! asked of the processor and its top-up settled from the answer. When the processor
//! cannot be asked, the delivery fails and the processor sends it again.

use tollgate_core::{DisputeStatus, TopupOutcome, TopupSource, TopupStatus};
use tollgate_store::{DisputeNews, StoreError, TopupRecord, TopupReference};
use tollgate_stripe::{
    ACCOUNT_METADATA_KEY, Payment, PaymentEvent, PaymentEventKind, PaymentIntentId, PaymentsError,
    REFERENCE_METADATA_KEY, WebhookError,
};

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
                let Some(topup) = self.topup_of_payment(payment).await? else {
                    return Ok(WebhookOutcome::Ignored);
                };
                Ok(match self.settle_from_payment(&topup, payment).await? {
                    Some(_) => WebhookOutcome::Applied,
                    None => WebhookOutcome::Ignored,
                })
            }
            PaymentEventKind::ChargeRefunded {
                intent,
                charge,
                amount_refunded,
            } => {
                let Some(topup) = self.paid_topup_of_charge(intent.as_ref(), charge).await? else {
                    return Ok(WebhookOutcome::Ignored);
                };
                self.store
                    .reconcile_refunded(payment_reference(&topup, charge), *amount_refunded)
                    .await?;
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
        intent: &Option<PaymentIntentId>,
        charge: &str,
        amount: tollgate_core::Micros,
        status: DisputeStatus,
    ) -> BillingResult<WebhookOutcome> {
        let Some(topup) = self.paid_topup_of_charge(intent.as_ref(), charge).await? else {
            return Ok(WebhookOutcome::Ignored);
        };
        let applied = self
            .store
            .apply_dispute(DisputeNews {
                dispute: dispute.to_owned(),
                payment_reference: topup.payment_reference.clone(),
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

    /// The top-up a payment pays: the one it is linked to, or the one its metadata names
    /// (a payment whose id was never stored: the answer to its request was lost). `None`
    /// for a payment Tollgate did not make.
    pub(crate) async fn topup_of_payment(&self, payment: &Payment) -> BillingResult<Option<TopupRecord>> {
        if let Some(topup) = self
            .store
            .find_topup(TopupReference::Payment(payment.intent.as_str().to_owned()))
            .await?
        {
            return Ok(Some(topup));
        }
        let Some(reference) = payment.metadata.get(REFERENCE_METADATA_KEY) else {
            return Ok(None);
        };
        let topup = match self.store.topup(reference).await {
            Ok(topup) => topup,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        // The metadata must describe this top-up: its account, and no other payment of it.
        let same_account = payment
            .metadata
            .get(ACCOUNT_METADATA_KEY)
            .is_none_or(|account| account == topup.account.as_str());
        let unpaid_by_another = topup
            .payment_reference
            .as_ref()
            .is_none_or(|linked| linked == payment.intent.as_str());
        if same_account && unpaid_by_another {
            Ok(Some(topup))
        } else {
            tracing::warn!(topup = %topup.id, payment = %payment.intent, "a payment names a top-up that is not its own");
            Ok(None)
        }
    }

    /// Settles a top-up from its payment as the processor reports it; `None` when that says
    /// nothing final yet (or nothing that ends a hosted page's top-up).
    pub(crate) async fn settle_from_payment(
        &self,
        topup: &TopupRecord,
        payment: &Payment,
    ) -> BillingResult<Option<TopupRecord>> {
        let card = match (&payment.status, &payment.payment_method) {
            // The card's details for the receipt; without them the credit is the same.
            (tollgate_stripe::PaymentStatus::Succeeded, Some(card)) => self.payments.card(card).await.ok(),
            _ => None,
        };
        match outcome_of(payment, card.as_ref()) {
            // The hosted page shows a decline and lets the customer try another card: a
            // failure there is not the end of the top-up.
            Some(TopupOutcome::Failed { .. }) if topup.source == TopupSource::HostedPage => {
                Ok(Some(topup.clone()))
            }
            Some(outcome) => Ok(Some(self.store.settle_topup(&topup.id, outcome).await?)),
            None => Ok(None),
        }
    }

    /// The succeeded top-up a charge's news (a refund, a dispute) is about; `None` when the
    /// charge is not a payment Tollgate made.
    ///
    /// When the store does not know yet that the payment succeeded (the news overtook the
    /// success, or the payment was never linked to its top-up), the payment is asked of the
    /// processor and the top-up settled from it first: applied now, the news would find no
    /// succeeded top-up, and acknowledged, it would never come again. A processor that
    /// cannot be asked is an error, so the delivery fails and is sent again.
    async fn paid_topup_of_charge(
        &self,
        intent: Option<&PaymentIntentId>,
        charge: &str,
    ) -> BillingResult<Option<TopupRecord>> {
        let mut known = match intent {
            Some(intent) => {
                self.store
                    .find_topup(TopupReference::Payment(intent.as_str().to_owned()))
                    .await?
            }
            None => None,
        };
        if known.is_none() {
            known = self
                .store
                .find_topup(TopupReference::Charge(charge.to_owned()))
                .await?;
        }
        if let Some(topup) = &known
            && topup.status == TopupStatus::Succeeded
        {
            return Ok(known);
        }
        let linked = known
            .as_ref()
            .and_then(|topup| topup.payment_reference.clone())
            .map(PaymentIntentId::new);
        let intent = match intent.cloned().or(linked) {
            Some(intent) => intent,
            None => match self.payments.charge_payment(charge).await {
                Ok(Some(intent)) => intent,
                // A charge without a payment, or one the processor does not know: not ours.
                Ok(None) | Err(PaymentsError::NotFound(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            },
        };
        let payment = match self.payments.payment(&intent).await {
            Ok(payment) => payment,
            Err(PaymentsError::NotFound(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let topup = match known {
            Some(topup) => topup,
            None => match self.topup_of_payment(&payment).await? {
                Some(topup) => topup,
                None => return Ok(None),
            },
        };
        let settled = self.settle_from_payment(&topup, &payment).await?;
        match settled {
            Some(settled) if settled.status == TopupStatus::Succeeded => {
                tracing::info!(topup = %settled.id, payment = %intent, "charge news came first: the payment was settled from the processor");
                Ok(Some(settled))
            }
            // A refunded or disputed charge was paid, so the processor will say so: until
            // it does, the delivery fails and comes again rather than being lost.
            _ => Err(PaymentsError::Unexpected(format!(
                "news about charge {charge} of payment {intent}, which the processor does not report as succeeded"
            ))
            .into()),
        }
    }
}

/// How the store finds a paid top-up: by its payment (always stored with a success), else
/// by the charge.
fn payment_reference(topup: &TopupRecord, charge: &str) -> TopupReference {
    match &topup.payment_reference {
        Some(payment) => TopupReference::Payment(payment.clone()),
        None => TopupReference::Charge(charge.to_owned()),
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
