//! Operator refunds: the money leaves the balance first (recorded, pending), then the
//! processor is asked; a refusal gives it back. A replay with the same key resumes a
//! pending refund with the same processor key, so nothing is refunded twice.

use tollgate_store::{Idempotent, RefundRecord, RefundRequest, RefundState};
use tollgate_stripe::{PaymentIntentId, PaymentsError, RefundStatus};

use crate::{Billing, BillingError, BillingResult};

/// A refund and whether this request replayed an earlier one.
pub type RefundOutcome = Idempotent<RefundRecord>;

impl Billing {
    /// Refunds (part of) a paid top-up to its card and takes the amount back from the balance.
    pub async fn refund_topup(&self, request: RefundRequest) -> BillingResult<RefundOutcome> {
        let begun = self.store.begin_refund(request).await?;
        let refund = begun.value;
        if refund.state != RefundState::Pending {
            return Ok(Idempotent {
                value: refund,
                replayed: begun.replayed,
            });
        }
        let topup = self.store.topup(&refund.topup_id).await?;
        let Some(payment) = topup.payment_reference else {
            let finished = self
                .store
                .finish_refund(&refund.id, Err("the top-up has no card payment".to_owned()))
                .await?;
            return Ok(Idempotent {
                value: finished,
                replayed: begun.replayed,
            });
        };
        let answer = self
            .payments
            .refund(
                &PaymentIntentId::new(payment),
                Some(refund.amount),
                &format!("tollgate-refund-{}", refund.id),
            )
            .await;
        let outcome = match answer {
            Ok(done) => match done.status {
                RefundStatus::Succeeded | RefundStatus::Pending => Ok(done.id.into_string()),
                RefundStatus::Failed { reason } => Err(reason.unwrap_or_else(|| "refused".to_owned())),
                RefundStatus::Canceled => Err("canceled".to_owned()),
            },
            Err(PaymentsError::Rejected { message, .. }) => Err(message),
            Err(PaymentsError::NotFound(what)) => Err(format!("not found at the processor: {what}")),
            // Unknown outcome: stays pending; the same request (same key) resumes it.
            Err(error) => return Err(BillingError::Payments(error)),
        };
        let finished = self.store.finish_refund(&refund.id, outcome).await?;
        Ok(Idempotent {
            value: finished,
            replayed: begun.replayed,
        })
    }
}
