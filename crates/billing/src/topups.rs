//! One-time top-ups: with the saved card (off-session, at once) or through the hosted
//! page (which takes a card, saves it and pays), and the browser's return from it.

use std::collections::BTreeMap;

use tollgate_core::{
    AccountId, Actor, IdempotencyKey, NewTopup, TopupAmount, TopupOutcome, TopupSource, TopupStatus,
};
use tollgate_store::{Idempotent, TopupRecord, TopupReference};
use tollgate_stripe::{
    ACCOUNT_METADATA_KEY, Card, ChargeRequest, CheckoutPurpose, CheckoutRequest, CheckoutSession,
    CheckoutSessionId, CheckoutStatus, Payment, PaymentStatus, REFERENCE_METADATA_KEY,
};

use crate::cards::{CardReturn, card_record};
use crate::{
    Billing, BillingError, BillingResult, PURPOSE_METADATA_KEY, RETURN_URL_METADATA_KEY, with_query,
};

/// How a top-up request was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopupStart {
    /// The saved card was charged: succeeded, failed or waiting for authentication.
    Charged(TopupRecord),
    /// No card: the customer pays (and saves a card) on the hosted page at `url`.
    HostedPage {
        /// The top-up, waiting for the customer.
        topup: TopupRecord,
        /// Where to send the browser.
        url: String,
    },
}

/// Where the browser goes after the hosted page, and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutReturn {
    /// The page to redirect to, with the result in its query.
    pub redirect_url: String,
    /// The account concerned.
    pub account: Option<AccountId>,
}

/// The processor's idempotency key of a top-up's charge: derived from the recorded
/// top-up, so a retry after any crash asks for the same charge.
pub(crate) fn charge_key(topup_id: &str) -> String {
    format!("tollgate-topup-{topup_id}")
}

/// What a payment's state means for its top-up; `None` while the outcome is unknown.
pub(crate) fn outcome_of(payment: &Payment, card: Option<&Card>) -> Option<TopupOutcome> {
    let reference = payment.intent.as_str().to_owned();
    match &payment.status {
        PaymentStatus::Succeeded => Some(TopupOutcome::Succeeded {
            payment_reference: reference,
            charge_reference: payment.charge.clone(),
            card_brand: card.map(|card| card.brand.clone()),
            card_last4: card.map(|card| card.last4.clone()),
        }),
        PaymentStatus::Failed {
            code,
            decline_code,
            message,
        } => Some(TopupOutcome::Failed {
            payment_reference: Some(reference),
            // The issuer's reason is the more useful one for insufficient funds and the like.
            code: match (code.as_str(), decline_code.as_deref()) {
                ("card_declined", Some("insufficient_funds")) => "insufficient_funds".to_owned(),
                _ => code.clone(),
            },
            message: message.clone(),
        }),
        PaymentStatus::RequiresAction { .. } => Some(TopupOutcome::RequiresAction {
            payment_reference: reference,
        }),
        PaymentStatus::Canceled => Some(TopupOutcome::Canceled),
        PaymentStatus::Processing | PaymentStatus::Pending => None,
    }
}

impl Billing {
    /// Records a top-up and pays it: with the saved card at once, or through the hosted page.
    ///
    /// A replay with the same key resumes the recorded top-up and never charges twice: the
    /// processor request carries a key derived from the top-up's id.
    pub async fn start_topup(
        &self,
        account: &AccountId,
        amount: TopupAmount,
        return_url: Option<String>,
        idempotency_key: IdempotencyKey,
        actor: Actor,
    ) -> BillingResult<Idempotent<TopupStart>> {
        let profile = self.store.payment_profile(account).await?;
        let source = if profile.card.is_some() {
            TopupSource::SavedCard
        } else {
            TopupSource::HostedPage
        };
        let created = self
            .store
            .create_topup(NewTopup {
                account: account.clone(),
                amount,
                source,
                idempotency_key,
                actor,
            })
            .await?;
        let replayed = created.replayed;
        let topup = created.value;
        let start = match topup.source {
            TopupSource::HostedPage => self.hosted_topup(topup, return_url).await?,
            TopupSource::SavedCard | TopupSource::AutoRecharge => {
                TopupStart::Charged(self.charge_saved_card(topup).await?)
            }
        };
        Ok(Idempotent {
            value: start,
            replayed,
        })
    }

    /// Charges the saved card for a recorded top-up (or learns the earlier charge's result).
    pub(crate) async fn charge_saved_card(&self, topup: TopupRecord) -> BillingResult<TopupRecord> {
        if !topup.status.is_open() || topup.status == TopupStatus::RequiresAction {
            return Ok(topup);
        }
        let profile = self.store.payment_profile(&topup.account).await?;
        let (Some(customer), Some(card)) = (profile.processor_customer, profile.card) else {
            // The card was removed before the charge could be sent.
            return Ok(self
                .store
                .settle_topup(
                    &topup.id,
                    TopupOutcome::Failed {
                        payment_reference: None,
                        code: "no_payment_method".to_owned(),
                        message: "The account has no card to charge.".to_owned(),
                    },
                )
                .await?);
        };
        let payment = self
            .payments
            .charge_off_session(ChargeRequest {
                customer: tollgate_stripe::CustomerId::new(customer),
                payment_method: tollgate_stripe::PaymentMethodId::new(card.processor_id.clone()),
                amount: topup.amount,
                idempotency_key: charge_key(&topup.id),
                description: match topup.source {
                    TopupSource::AutoRecharge => "Tollgate auto top-up".to_owned(),
                    _ => "Tollgate balance top-up".to_owned(),
                },
                metadata: BTreeMap::from([
                    (ACCOUNT_METADATA_KEY.to_owned(), topup.account.to_string()),
                    (REFERENCE_METADATA_KEY.to_owned(), topup.id.clone()),
                ]),
            })
            .await?;
        self.store
            .link_topup(&topup.id, None, Some(payment.intent.as_str().to_owned()))
            .await?;
        let card = Card {
            id: tollgate_stripe::PaymentMethodId::new(card.processor_id),
            brand: card.brand,
            last4: card.last4,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        };
        match outcome_of(&payment, Some(&card)) {
            Some(outcome) => Ok(self.store.settle_topup(&topup.id, outcome).await?),
            None => Ok(self.store.topup(&topup.id).await?),
        }
    }

    async fn hosted_topup(
        &self,
        topup: TopupRecord,
        return_url: Option<String>,
    ) -> BillingResult<TopupStart> {
        if !topup.status.is_open() {
            return Ok(TopupStart::Charged(topup));
        }
        if let Some(session) = &topup.checkout_session {
            let session = self
                .payments
                .retrieve_checkout(&CheckoutSessionId::new(session.clone()))
                .await?;
            if let (CheckoutStatus::Open, Some(url)) = (session.status, session.url.clone()) {
                return Ok(TopupStart::HostedPage { topup, url });
            }
            // Completed or expired meanwhile: report what it came to.
            self.apply_topup_session(&session, &topup).await?;
            return Ok(TopupStart::Charged(self.store.topup(&topup.id).await?));
        }
        let customer = self.customer(&topup.account).await?;
        let return_url = self.return_url(return_url);
        let mut metadata = self.session_metadata(&topup.account, "topup", &return_url);
        metadata.insert(REFERENCE_METADATA_KEY.to_owned(), topup.id.clone());
        let session = self
            .payments
            .create_checkout(CheckoutRequest {
                customer,
                purpose: CheckoutPurpose::PayAndSaveCard {
                    amount: topup.amount,
                    description: "Tollgate balance top-up".to_owned(),
                },
                success_url: self.success_url(),
                cancel_url: with_query(&return_url, &[("topup", &topup.id), ("topup_status", "canceled")]),
                reference: topup.id.clone(),
                metadata,
                idempotency_key: format!("tollgate-topup-checkout-{}", topup.id),
            })
            .await?;
        let topup = self
            .store
            .link_topup(&topup.id, Some(session.id.as_str().to_owned()), None)
            .await?;
        let url = session.url.ok_or_else(|| {
            BillingError::Payments(tollgate_stripe::PaymentsError::Unexpected(
                "the hosted page session has no URL".to_owned(),
            ))
        })?;
        Ok(TopupStart::HostedPage { topup, url })
    }

    /// Applies a hosted payment session to its top-up: credit once on payment, adopt the card.
    pub(crate) async fn apply_topup_session(
        &self,
        session: &CheckoutSession,
        topup: &TopupRecord,
    ) -> BillingResult<TopupRecord> {
        if topup.account.as_str()
            != session
                .metadata
                .get(ACCOUNT_METADATA_KEY)
                .map(String::as_str)
                .unwrap_or_default()
        {
            return Err(BillingError::ForeignSession(format!(
                "session {} does not belong to top-up {}",
                session.id, topup.id
            )));
        }
        if topup.checkout_session.is_none() {
            // The session was created but its id not stored (a crash in between).
            self.store
                .link_topup(&topup.id, Some(session.id.as_str().to_owned()), None)
                .await?;
        }
        let outcome = match (session.status, &session.payment) {
            (CheckoutStatus::Expired, payment) => match payment.as_ref().and_then(|p| outcome_of(p, None)) {
                // Paid just before it expired: the money is ours to credit.
                Some(paid @ TopupOutcome::Succeeded { .. }) => Some(paid),
                _ => Some(TopupOutcome::Canceled),
            },
            (_, Some(payment)) => outcome_of(payment, session.card.as_ref()),
            (_, None) => None,
        };
        let Some(outcome) = outcome else {
            return Ok(self.store.topup(&topup.id).await?);
        };
        let succeeded = matches!(outcome, TopupOutcome::Succeeded { .. });
        let settled = self.store.settle_topup(&topup.id, outcome).await?;
        if succeeded && let Some(card) = &session.card {
            let result = self
                .store
                .adopt_card(&topup.account, card_record(card, self.clock.now()), Actor::System)
                .await?;
            self.after_card_change(session, &result).await;
        }
        Ok(settled)
    }

    /// Applies any hosted page session (card setup or top-up) as the processor reports it.
    pub(crate) async fn apply_session(&self, session: &CheckoutSession) -> BillingResult<SessionApplied> {
        match session.metadata.get(PURPOSE_METADATA_KEY).map(String::as_str) {
            Some("card_setup") => Ok(SessionApplied::Card(self.apply_card_setup(session).await?)),
            Some("topup") => {
                let topup = match self
                    .store
                    .find_topup(TopupReference::CheckoutSession(session.id.as_str().to_owned()))
                    .await?
                {
                    Some(topup) => topup,
                    None => {
                        let reference = session
                            .reference
                            .clone()
                            .or_else(|| session.metadata.get(REFERENCE_METADATA_KEY).cloned())
                            .ok_or_else(|| {
                                BillingError::ForeignSession(format!(
                                    "session {} names no top-up",
                                    session.id
                                ))
                            })?;
                        self.store.topup(&reference).await?
                    }
                };
                Ok(SessionApplied::Topup(Box::new(
                    self.apply_topup_session(session, &topup).await?,
                )))
            }
            _ => Err(BillingError::ForeignSession(format!(
                "session {} was not opened by Tollgate",
                session.id
            ))),
        }
    }

    /// Handles the browser's return from the hosted page: asks the processor what happened,
    /// applies it, and says where to send the browser.
    pub async fn checkout_return(&self, session_id: &str) -> BillingResult<CheckoutReturn> {
        let session = self
            .payments
            .retrieve_checkout(&CheckoutSessionId::new(session_id.to_owned()))
            .await?;
        let applied = self.apply_session(&session).await?;
        let return_url = session
            .metadata
            .get(RETURN_URL_METADATA_KEY)
            .cloned()
            .unwrap_or_else(|| self.settings.default_return_url.clone());
        let account = session
            .metadata
            .get(ACCOUNT_METADATA_KEY)
            .and_then(|id| AccountId::parse(id).ok());
        let redirect_url = match applied {
            SessionApplied::Card(CardReturn::Saved(_)) => {
                with_query(&return_url, &[("payment_method", "updated")])
            }
            SessionApplied::Card(CardReturn::NotCompleted) => {
                with_query(&return_url, &[("payment_method", "not_completed")])
            }
            SessionApplied::Card(CardReturn::Expired) => {
                with_query(&return_url, &[("payment_method", "expired")])
            }
            SessionApplied::Topup(topup) => {
                let mut pairs = vec![
                    ("topup", topup.id.as_str()),
                    ("topup_status", topup.status.code()),
                ];
                if let Some(code) = &topup.failure_code {
                    pairs.push(("failure_code", code));
                }
                with_query(&return_url, &pairs)
            }
        };
        Ok(CheckoutReturn {
            redirect_url,
            account,
        })
    }
}

/// What applying a hosted page session did.
pub(crate) enum SessionApplied {
    /// A card setup.
    Card(CardReturn),
    /// A top-up, as it stands now (boxed: a top-up record is large).
    Topup(Box<TopupRecord>),
}
