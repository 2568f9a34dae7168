//! Receipts of paid top-ups.

use tollgate_core::{TopupSource, TopupStatus};
use tollgate_documents::{Receipt, render_receipt_html, render_receipt_pdf};

use crate::{Billing, BillingError, BillingResult};

/// How a receipt or an invoice is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptFormat {
    /// A printable HTML page.
    Html,
    /// A PDF document.
    Pdf,
}

impl Billing {
    /// The receipt of a paid top-up.
    pub async fn receipt(&self, topup_id: &str, format: ReceiptFormat) -> BillingResult<Vec<u8>> {
        let topup = self.store.topup(topup_id).await?;
        let (TopupStatus::Succeeded, Some(paid_at)) = (topup.status, topup.succeeded_at) else {
            return Err(BillingError::NotPaid(topup.id));
        };
        let account = self.store.account(&topup.account).await?;
        let receipt = Receipt {
            receipt_number: topup.id.clone(),
            issuer_name: self.settings.issuer_name.clone(),
            account_id: account.id.to_string(),
            account_name: account.name,
            account_email: account.email,
            description: match topup.source {
                TopupSource::AutoRecharge => "Auto top-up of prepaid balance".to_owned(),
                TopupSource::SavedCard | TopupSource::HostedPage => "Top-up of prepaid balance".to_owned(),
            },
            amount: topup.amount,
            refunded: topup.refunded,
            paid_at,
            card_brand: topup.card_brand,
            card_last4: topup.card_last4,
            payment_reference: topup.payment_reference,
            balance_after: topup
                .balances_after_credit
                .and_then(|balances| balances.total().ok()),
        };
        match format {
            ReceiptFormat::Html => Ok(render_receipt_html(&receipt).into_bytes()),
            ReceiptFormat::Pdf => {
                render_receipt_pdf(&receipt).map_err(|error| BillingError::Document(error.to_string()))
            }
        }
    }
}
