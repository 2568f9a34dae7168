//! Invoices of invoice-billed accounts (API.md "Sales-assisted accounts"): the list, one
//! invoice (JSON, or its document as HTML or PDF), paying it with the saved card, and
//! marking it paid by bank transfer.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tollgate_store::{InvoiceRecord, MarkPaid};
use utoipa::ToSchema;

use crate::api::json::timestamp;
use crate::api::payments::{Topup, billing};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{PageQuery, Pagination, parse_json, path_account_id};
use crate::state::AppState;

/// Longest bank transfer reference accepted.
const MAX_REFERENCE_LENGTH: usize = 200;

/// One line of an invoice: an action at one unit price.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceLineView {
    /// The action.
    pub action: String,
    /// Its name.
    pub description: String,
    /// Units used at this price.
    pub quantity: u64,
    /// Price per unit.
    pub unit_price: String,
    /// The sum of the charges.
    pub amount: String,
}

/// An invoice.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Invoice {
    /// `inv_…`.
    pub id: String,
    /// Always `invoice`.
    pub object: &'static str,
    /// Gapless number, `INV-000042`.
    pub number: String,
    /// Who is billed.
    pub account_id: String,
    /// `open`, `paid` or `void`.
    pub status: &'static str,
    /// First instant billed.
    pub period_start: String,
    /// First instant not billed.
    pub period_end: String,
    /// The usage lines.
    pub lines: Vec<InvoiceLineView>,
    /// Sum of the lines.
    pub subtotal: String,
    /// Usage already paid from the account's credit.
    pub credit_applied: String,
    /// Owed from before the period.
    pub brought_forward: String,
    /// A fraction of a cent carried to the next invoice.
    pub carried_forward: String,
    /// What is to be paid (whole cents).
    pub amount_due: String,
    /// When it must be paid by: past it, the account's usage is refused (`invoice_overdue`).
    pub due_at: String,
    /// When it was closed.
    pub created_at: String,
    /// When it was paid.
    pub paid_at: Option<String>,
    /// `card`, `bank_transfer` or `credit`.
    pub paid_by: Option<&'static str>,
    /// The card top-up or bank transfer reference.
    pub payment_reference: Option<String>,
    /// The document: HTML, or PDF with `Accept: application/pdf`.
    pub document_url: String,
}

impl Invoice {
    /// The API's view of a stored invoice.
    pub fn render(record: &InvoiceRecord) -> Invoice {
        Invoice {
            id: record.id.clone(),
            object: "invoice",
            number: record.number.to_string(),
            account_id: record.account.to_string(),
            status: record.status.code(),
            period_start: timestamp(record.period.start),
            period_end: timestamp(record.period.end),
            lines: record
                .lines
                .iter()
                .map(|line| InvoiceLineView {
                    action: line.line.action.to_string(),
                    description: line.description.clone(),
                    quantity: line.line.quantity,
                    unit_price: line.line.unit_price.to_string(),
                    amount: line.line.amount.to_string(),
                })
                .collect(),
            subtotal: record.totals.subtotal.to_string(),
            credit_applied: record.totals.credit_applied.to_string(),
            brought_forward: record.totals.brought_forward.to_string(),
            carried_forward: record.totals.carried_forward.to_string(),
            amount_due: record.totals.amount_due.to_string(),
            due_at: timestamp(record.due_at),
            created_at: timestamp(record.created_at),
            paid_at: record.paid_at.map(timestamp),
            paid_by: record.paid_by.map(|method| method.code()),
            payment_reference: record.payment_reference.clone(),
            document_url: format!("/v1/invoices/{}/document", record.id),
        }
    }
}

/// A page of invoices, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceList {
    /// The invoices.
    pub data: Vec<Invoice>,
    /// Whether older ones follow.
    pub has_more: bool,
}

/// The account's invoices, newest first.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/invoices",
    tag = "invoices",
    params(("id" = String, Path, description = "Account id"), PageQuery),
    responses(
        (status = 200, description = "A page of invoices", body = InvoiceList),
        (status = 400, description = "Invalid `limit` or `starting_after`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn list_invoices(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Pagination(page): Pagination,
) -> Result<Json<InvoiceList>, ApiError> {
    let account = path_account_id(&id)?;
    let page = state.store().invoices(&account, page).await?;
    Ok(Json(InvoiceList {
        data: page.data.iter().map(Invoice::render).collect(),
        has_more: page.has_more,
    }))
}

/// One invoice, with its lines and totals.
#[utoipa::path(
    get,
    path = "/v1/invoices/{invoice_id}",
    tag = "invoices",
    params(("invoice_id" = String, Path, description = "Invoice id")),
    responses(
        (status = 200, description = "The invoice", body = Invoice),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such invoice", body = ErrorBody),
    )
)]
pub async fn get_invoice(
    State(state): State<AppState>,
    Path(invoice_id): Path<String>,
) -> Result<Json<Invoice>, ApiError> {
    Ok(Json(Invoice::render(&state.store().invoice(&invoice_id).await?)))
}

/// The invoice as a document: HTML, or PDF with `Accept: application/pdf`.
#[utoipa::path(
    get,
    path = "/v1/invoices/{invoice_id}/document",
    tag = "invoices",
    params(("invoice_id" = String, Path, description = "Invoice id")),
    responses(
        (status = 200, description = "The invoice (text/html or application/pdf)", content_type = "text/html"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such invoice", body = ErrorBody),
    )
)]
pub async fn invoice_document(
    State(state): State<AppState>,
    Path(invoice_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    document_response(&state, &invoice_id, &headers).await
}

/// An invoice rendered in the format the `Accept` header asks for.
pub(crate) async fn document_response(
    state: &AppState,
    invoice_id: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (format, content_type) = crate::api::document::wanted_format(headers);
    let bytes = match state.billing() {
        Some(billing) => billing.invoice_document(invoice_id, format).await?,
        // Without card payments there is no merchant name configured: the product's own.
        None => {
            tollgate_billing::invoice_document(state.store().as_ref(), "Tollgate", invoice_id, format).await?
        }
    };
    Ok(crate::api::document::document_response(bytes, content_type))
}

/// What `POST /v1/invoices/{id}/pay` came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoicePaymentView {
    /// The invoice now: `paid`, or still `open` when the charge failed or waits for the customer.
    pub invoice: Invoice,
    /// The card top-up that paid it or tried to (`status`, `failure_code`).
    pub payment: Topup,
}

/// Charges the saved card off-session for the invoice's amount due. A payment still in
/// flight is resumed, never doubled.
#[utoipa::path(
    post,
    path = "/v1/invoices/{invoice_id}/pay",
    tag = "invoices",
    params(("invoice_id" = String, Path, description = "Invoice id")),
    responses(
        (status = 200, description = "Charged (see `payment.status`)", body = InvoicePaymentView),
        (status = 400, description = "The account has no card (`no_payment_method`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such invoice", body = ErrorBody),
        (status = 409, description = "The invoice is paid or void", body = ErrorBody),
        (status = 503, description = "Card payments are not configured, or the processor is unreachable", body = ErrorBody),
    )
)]
pub async fn pay_invoice(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(invoice_id): Path<String>,
) -> Result<Json<InvoicePaymentView>, ApiError> {
    let paid = billing(&state)?.pay_invoice(&invoice_id, caller.actor).await?;
    Ok(Json(InvoicePaymentView {
        invoice: Invoice::render(&paid.invoice),
        payment: Topup::render(&paid.topup, None, None)?,
    }))
}

/// Body of `POST /v1/invoices/{id}/mark_paid`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkPaidBody {
    /// The bank transfer's reference, kept on the invoice and in the audit log.
    #[schema(example = "WIRE-2026-12-0042")]
    pub reference: Option<String>,
}

/// Records the invoice paid by bank transfer: its amount due is credited to the balance
/// (`invoice_payment`), and usage blocked by it resumes. Marking a paid invoice again
/// changes nothing.
#[utoipa::path(
    post,
    path = "/v1/invoices/{invoice_id}/mark_paid",
    tag = "invoices",
    params(("invoice_id" = String, Path, description = "Invoice id")),
    request_body = MarkPaidBody,
    responses(
        (status = 200, description = "The invoice, paid", body = Invoice),
        (status = 400, description = "A reference that is too long", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such invoice", body = ErrorBody),
        (status = 409, description = "The invoice is void", body = ErrorBody),
    )
)]
pub async fn mark_invoice_paid(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(invoice_id): Path<String>,
    body: Bytes,
) -> Result<Json<Invoice>, ApiError> {
    // The body is optional: an empty one marks the invoice paid without a reference.
    let body: MarkPaidBody = if body.iter().all(u8::is_ascii_whitespace) {
        MarkPaidBody::default()
    } else {
        parse_json(&body)?
    };
    let reference = match body.reference.map(|text| text.trim().to_owned()) {
        Some(text) if text.is_empty() => None,
        Some(text) if text.chars().count() > MAX_REFERENCE_LENGTH || text.chars().any(char::is_control) => {
            return Err(ApiError::invalid_request(format!(
                "reference must be at most {MAX_REFERENCE_LENGTH} printable characters"
            ))
            .with_param("reference"));
        }
        other => other,
    };
    let marked = state
        .store()
        .mark_invoice_paid(MarkPaid {
            invoice: invoice_id,
            reference,
            actor: caller.actor,
        })
        .await?;
    Ok(Json(Invoice::render(&marked.value)))
}
