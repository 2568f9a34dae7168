//! Invoices: paying one with the saved card, and its document.
//!
//! A card payment is a top-up of the amount due, recorded before anything is sent to the
//! processor and attached to the invoice; when that top-up succeeds (whether the charge's
//! answer, a webhook or a recovery pass reports it) its credit pays the invoice in the same
//! store transaction. So every robustness of top-ups (idempotent charges, 3-D Secure,
//! reordered webhooks, recovery after a crash) holds for invoices too.

use tollgate_core::{
    Actor, IdempotencyKey, InvoicePayment, InvoiceStatus, NewTopup, TopupAmount, TopupSource,
};
use tollgate_documents::{Invoice, InvoiceDocumentLine, render_invoice_html, render_invoice_pdf};
use tollgate_store::{InvoiceRecord, Store, StoreError, TopupRecord};

use crate::{Billing, BillingError, BillingResult, ReceiptFormat};

/// What asking to pay an invoice by card came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceCardPayment {
    /// The invoice as it is now: paid, or still open when the charge failed or waits.
    pub invoice: InvoiceRecord,
    /// The card top-up that paid it or tried to.
    pub topup: TopupRecord,
}

/// The idempotency key of a card attempt: a retry of the same attempt finds the same top-up.
fn attempt_key(invoice: &str, attempt: u32) -> BillingResult<IdempotencyKey> {
    IdempotencyKey::parse(&format!("invoice-{invoice}-{attempt}"))
        .map_err(|error| BillingError::Store(StoreError::Database(error.to_string())))
}

impl Billing {
    /// Charges the saved card off-session for an open invoice's amount due. A card payment
    /// still in flight (waiting for 3-D Secure, or not answered yet) is resumed, never
    /// doubled; after a failed one, a new attempt is made.
    pub async fn pay_invoice(&self, invoice_id: &str, actor: Actor) -> BillingResult<InvoiceCardPayment> {
        let invoice = self.store.invoice(invoice_id).await?;
        if invoice.status != InvoiceStatus::Open {
            return Err(StoreError::Conflict(format!(
                "invoice {} is {}",
                invoice.number,
                invoice.status.code()
            ))
            .into());
        }
        if let Some(current) = &invoice.card_topup {
            let topup = self.store.topup(current).await?;
            if topup.status.is_open() {
                let topup = self.charge_saved_card(topup).await?;
                let invoice = self.store.invoice(invoice_id).await?;
                return Ok(InvoiceCardPayment { invoice, topup });
            }
        }
        let profile = self.store.payment_profile(&invoice.account).await?;
        if profile.card.is_none() {
            return Err(BillingError::NoPaymentMethod);
        }
        let amount = TopupAmount::invoice_due(invoice.totals.amount_due)
            .ok_or_else(|| StoreError::Conflict(format!("invoice {} has nothing to pay", invoice.number)))?;
        let attempt = invoice.card_attempts.saturating_add(1);
        let created = self
            .store
            .create_topup(NewTopup {
                account: invoice.account.clone(),
                amount,
                source: TopupSource::SavedCard,
                idempotency_key: attempt_key(&invoice.id, attempt)?,
                actor,
            })
            .await?;
        self.store
            .attach_invoice_topup(&invoice.id, &created.value.id, attempt)
            .await?;
        let topup = self.charge_saved_card(created.value).await?;
        let invoice = self.store.invoice(invoice_id).await?;
        Ok(InvoiceCardPayment { invoice, topup })
    }

    /// The invoice as a document (HTML page or PDF), issued in this merchant's name.
    pub async fn invoice_document(&self, invoice_id: &str, format: ReceiptFormat) -> BillingResult<Vec<u8>> {
        invoice_document(
            self.store.as_ref(),
            &self.settings.issuer_name,
            invoice_id,
            format,
        )
        .await
    }
}

/// The invoice as a document (HTML page or PDF) issued by `issuer_name`: servers without
/// card payments render invoices too.
pub async fn invoice_document(
    store: &dyn Store,
    issuer_name: &str,
    invoice_id: &str,
    format: ReceiptFormat,
) -> BillingResult<Vec<u8>> {
    let invoice = store.invoice(invoice_id).await?;
    let account = store.account(&invoice.account).await?;
    let document = Invoice {
        number: invoice.number.to_string(),
        issuer_name: issuer_name.to_owned(),
        account_id: account.id.to_string(),
        account_name: account.name,
        account_email: account.email,
        period_start: invoice.period.start,
        period_end: invoice.period.end,
        issued_at: invoice.created_at,
        due_at: invoice.due_at,
        status: invoice.status.code().to_owned(),
        lines: invoice
            .lines
            .iter()
            .map(|line| InvoiceDocumentLine {
                description: line.description.clone(),
                quantity: line.line.quantity,
                unit_price: line.line.unit_price,
                amount: line.line.amount,
            })
            .collect(),
        subtotal: invoice.totals.subtotal,
        credit_applied: invoice.totals.credit_applied,
        brought_forward: invoice.totals.brought_forward,
        carried_forward: invoice.totals.carried_forward,
        amount_due: invoice.totals.amount_due,
        paid: invoice.paid_at.zip(invoice.paid_by).map(|(at, method)| {
            let method = match method {
                InvoicePayment::Card => "card",
                InvoicePayment::BankTransfer => "bank transfer",
                InvoicePayment::Credit => "account credit",
            };
            (at, method.to_owned())
        }),
    };
    match format {
        ReceiptFormat::Html => Ok(render_invoice_html(&document).into_bytes()),
        ReceiptFormat::Pdf => {
            render_invoice_pdf(&document).map_err(|error| BillingError::Document(error.to_string()))
        }
    }
}
