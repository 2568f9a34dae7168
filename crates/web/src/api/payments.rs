//! Card payments (API.md "Payments"): the card on file, one-time top-ups, refunds,
//! receipts, the browser's return from Stripe's hosted page and Stripe's webhooks.
//!
//! Every handler here only parses and renders: the flows (what is recorded before what
//! is sent, how each outcome is learnt from the processor) live in `tollgate-billing`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Redirect, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_billing::{Billing, TopupStart, WebhookOutcome};
use tollgate_core::{IdempotencyKey, Micros, TopupAmount};
use tollgate_store::{CardRecord, RefundRecord, RefundRequest, TopupRecord};
use utoipa::{IntoParams, ToSchema};

use crate::api::json::{PaymentMethod, timestamp, total};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    ApiJson, IDEMPOTENT_REPLAYED_HEADER, IdempotencyHeader, PageQuery, Pagination, parse_money,
    path_account_id,
};
use crate::state::AppState;

/// Longest `reason` accepted on a refund.
const MAX_REFUND_REASON_LENGTH: usize = 500;

/// The payment flows, or `503` when this server runs without a payment processor.
pub(crate) fn billing(state: &AppState) -> Result<&Billing, ApiError> {
    state.billing().ok_or_else(|| {
        ApiError::new(
            crate::error::ErrorCode::ServiceUnavailable,
            "card payments are not configured on this server",
        )
    })
}

impl PaymentMethod {
    /// The card on file, as the API shows it.
    pub fn render(card: &CardRecord) -> PaymentMethod {
        PaymentMethod {
            brand: card.brand.clone(),
            last4: card.last4.clone(),
            exp_month: card.exp_month,
            exp_year: card.exp_year,
            status: "active".to_owned(),
        }
    }
}

/// Body of `POST /v1/accounts/{id}/payment_method/setup`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardSetupRequest {
    /// Where the browser goes back to after the hosted page (default: the Billing page).
    pub return_url: Option<String>,
}

/// A hosted page opened to add or replace the card.
#[derive(Debug, Serialize, ToSchema)]
pub struct CardSetup {
    /// The hosted page session (`cs_…`).
    pub id: String,
    /// Always `payment_method_setup`.
    pub object: &'static str,
    /// Where to send the customer's browser.
    pub url: String,
}

fn check_return_url(url: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(url) = url else { return Ok(None) };
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > tollgate_billing::MAX_RETURN_URL_LENGTH || url.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_request(format!(
            "return_url must be an http(s) URL of at most {} characters",
            tollgate_billing::MAX_RETURN_URL_LENGTH
        ))
        .with_param("return_url"));
    }
    Ok(Some(url))
}

/// Opens Stripe's hosted page (Checkout, setup mode) to add or replace the account's card.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/payment_method/setup",
    tag = "payments",
    params(
        ("id" = String, Path, description = "Account id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Returns the same page for a retried request"),
    ),
    request_body = CardSetupRequest,
    responses(
        (status = 200, description = "The hosted page to send the customer to", body = CardSetup),
        (status = 400, description = "Invalid return URL", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 503, description = "The payment processor is unavailable", body = ErrorBody),
    )
)]
pub async fn setup_payment_method(
    State(state): State<AppState>,
    Path(id): Path<String>,
    header: IdempotencyHeader,
    ApiJson(request): ApiJson<CardSetupRequest>,
) -> Result<Json<CardSetup>, ApiError> {
    let account = path_account_id(&id)?;
    let return_url = check_return_url(request.return_url)?;
    let key = match header.resolve(None)? {
        Some(key) => key.to_string(),
        // Without a key every request opens a page of its own, as Stripe does.
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    let started = billing(&state)?
        .start_card_setup(&account, return_url, &key)
        .await?;
    Ok(Json(CardSetup {
        id: started.session_id,
        object: "payment_method_setup",
        url: started.url,
    }))
}

/// What removing the card did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedPaymentMethod {
    /// Always `payment_method`.
    pub object: &'static str,
    /// True when a card was removed; false when there was none.
    pub deleted: bool,
    /// The card that was removed.
    pub removed: Option<PaymentMethod>,
}

/// Removes the account's card (auto top-up goes off with it).
#[utoipa::path(
    delete,
    path = "/v1/accounts/{id}/payment_method",
    tag = "payments",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The card is gone (or there was none)", body = RemovedPaymentMethod),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn delete_payment_method(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RemovedPaymentMethod>, ApiError> {
    let account = path_account_id(&id)?;
    let removed = billing(&state)?.remove_card(&account, caller.actor).await?;
    Ok(Json(RemovedPaymentMethod {
        object: "payment_method",
        deleted: removed.is_some(),
        removed: removed.as_ref().map(PaymentMethod::render),
    }))
}

/// Body of `POST /v1/accounts/{id}/topups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopupRequest {
    /// Dollars to add, whole cents, within the configured minimum and maximum.
    #[schema(value_type = String, example = "100.00")]
    pub amount: Value,
    /// Where the browser goes back to after the hosted page (when there is no card).
    pub return_url: Option<String>,
}

/// A top-up.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Topup {
    /// `top_…`.
    pub id: String,
    /// Always `topup`.
    pub object: &'static str,
    /// Whose balance.
    pub account_id: String,
    /// Amount paid.
    #[schema(example = "100.00")]
    pub amount: String,
    /// `pending`, `requires_payment_method`, `requires_action`, `succeeded`, `failed`, `canceled`.
    #[schema(example = "succeeded")]
    pub status: &'static str,
    /// `saved_card`, `hosted_page` or `auto_recharge`.
    pub source: &'static str,
    /// The account's balance (available + held) right after the credit; the current one
    /// when the top-up is not credited (yet).
    pub balance: Option<String>,
    /// Hosted page to pay on, while the status is `requires_payment_method`.
    pub url: Option<String>,
    /// Why it failed (`card_declined`, `insufficient_funds`, `authentication_required`, …;
    /// `payment_processor_unavailable` when the charge never reached the processor).
    pub failure_code: Option<String>,
    /// The processor's explanation of the failure.
    pub failure_message: Option<String>,
    /// Brand of the card paid with.
    pub card_brand: Option<String>,
    /// Last four digits of the card paid with.
    pub card_last4: Option<String>,
    /// Refunded so far.
    pub refunded: String,
    /// Taken back by open or lost disputes.
    pub disputed: String,
    /// The receipt, once paid.
    pub receipt_url: Option<String>,
    /// The processor's payment (`pi_…`).
    pub payment_reference: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it was credited.
    pub succeeded_at: Option<String>,
}

impl Topup {
    /// Renders a stored top-up; `balance` is the account's balance to show beside it.
    pub fn render(
        record: &TopupRecord,
        balance: Option<Micros>,
        url: Option<String>,
    ) -> Result<Topup, ApiError> {
        let balance = match record.balances_after_credit {
            Some(after) => Some(total(after)?),
            None => balance,
        };
        let paid = record.succeeded_at.is_some();
        Ok(Topup {
            id: record.id.clone(),
            object: "topup",
            account_id: record.account.to_string(),
            amount: record.amount.to_string(),
            status: record.status.code(),
            source: record.source.code(),
            balance: balance.map(|balance| balance.to_string()),
            url,
            failure_code: record.failure_code.clone(),
            failure_message: record.failure_message.clone(),
            card_brand: record.card_brand.clone(),
            card_last4: record.card_last4.clone(),
            refunded: record.refunded.to_string(),
            disputed: record.disputed.to_string(),
            receipt_url: paid.then(|| format!("/v1/topups/{}/receipt", record.id)),
            payment_reference: record.payment_reference.clone(),
            created_at: timestamp(record.created_at),
            succeeded_at: record.succeeded_at.map(timestamp),
        })
    }
}

/// A page of top-ups.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopupList {
    /// Newest first.
    pub data: Vec<Topup>,
    /// More follow.
    pub has_more: bool,
}

/// Parses a top-up amount against the configured limits.
pub fn parse_topup_amount(value: &Value, billing: &Billing) -> Result<TopupAmount, ApiError> {
    let Value::String(text) = value else {
        return Err(ApiError::invalid_amount(
            "amount",
            "amount must be a decimal string such as \"100.00\"",
        ));
    };
    TopupAmount::parse(text, billing.settings().topup_limits)
        .map_err(|reason| ApiError::invalid_amount("amount", reason.to_string()))
}

async fn current_balance(state: &AppState, record: &TopupRecord) -> Result<Option<Micros>, ApiError> {
    if record.balances_after_credit.is_some() {
        return Ok(None);
    }
    let account = state.store().account(&record.account).await?;
    Ok(Some(total(account.balances)?))
}

fn replay_headers(replayed: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    headers
}

/// Buys credits: charges the saved card at once, or opens the hosted page that takes a card
/// (saving it) and the payment together.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/topups",
    tag = "payments",
    params(
        ("id" = String, Path, description = "Account id"),
        ("Idempotency-Key" = String, Header, description = "Required: a retry never charges twice"),
    ),
    request_body = TopupRequest,
    responses(
        (status = 200, description = "The top-up: `succeeded`, `failed`, `requires_action`, or `requires_payment_method` with the hosted page's `url`", body = Topup),
        (status = 400, description = "Invalid amount (`invalid_amount`), missing key or bad return URL", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Idempotency key used with a different amount", body = ErrorBody),
        (status = 503, description = "The payment processor could not be reached: nothing was credited, retry with the same key", body = ErrorBody),
    )
)]
pub async fn create_topup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    header: IdempotencyHeader,
    ApiJson(request): ApiJson<TopupRequest>,
) -> Result<(StatusCode, HeaderMap, Json<Topup>), ApiError> {
    let account = path_account_id(&id)?;
    let billing = billing(&state)?;
    // Validated before anything is recorded or sent to the processor.
    let amount = parse_topup_amount(&request.amount, billing)?;
    let return_url = check_return_url(request.return_url)?;
    let key = header.require(None)?;
    let started = billing
        .start_topup(&account, amount, return_url, key, caller.actor)
        .await?;
    let (record, url) = match started.value {
        TopupStart::Charged(record) => (record, None),
        TopupStart::HostedPage { topup, url } => (topup, Some(url)),
    };
    let balance = current_balance(&state, &record).await?;
    Ok((
        StatusCode::OK,
        replay_headers(started.replayed),
        Json(Topup::render(&record, balance, url)?),
    ))
}

/// One top-up.
#[utoipa::path(
    get,
    path = "/v1/topups/{topup_id}",
    tag = "payments",
    params(("topup_id" = String, Path, description = "Top-up id")),
    responses(
        (status = 200, description = "The top-up", body = Topup),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such top-up", body = ErrorBody),
    )
)]
pub async fn get_topup(
    State(state): State<AppState>,
    Path(topup_id): Path<String>,
) -> Result<Json<Topup>, ApiError> {
    let record = state.store().topup(&topup_id).await?;
    let balance = current_balance(&state, &record).await?;
    Ok(Json(Topup::render(&record, balance, None)?))
}

/// The account's top-ups, newest first.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/topups",
    tag = "payments",
    params(("id" = String, Path, description = "Account id"), PageQuery),
    responses(
        (status = 200, description = "A page of top-ups", body = TopupList),
        (status = 400, description = "Invalid `limit` or `starting_after`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn list_topups(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Pagination(page): Pagination,
) -> Result<Json<TopupList>, ApiError> {
    let account = path_account_id(&id)?;
    let page = state.store().list_topups(&account, page).await?;
    let data = page
        .data
        .iter()
        .map(|record| Topup::render(record, None, None))
        .collect::<Result<_, _>>()?;
    Ok(Json(TopupList {
        data,
        has_more: page.has_more,
    }))
}

/// Body of `POST /v1/topups/{topup_id}/refund`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundTopupRequest {
    /// Dollars to refund, whole cents; omitted: everything still refundable.
    #[schema(value_type = Option<String>, example = "25.00")]
    pub amount: Option<Value>,
    /// Why: recorded in the ledger and the audit log.
    pub reason: Option<String>,
}

/// A refund of a top-up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refund {
    /// `ref_…`.
    pub id: String,
    /// Always `refund`.
    pub object: &'static str,
    /// The refunded top-up.
    pub topup_id: String,
    /// Whose balance.
    pub account_id: String,
    /// Amount refunded.
    pub amount: String,
    /// `pending`, `succeeded` or `failed` (the balance was given back).
    pub status: &'static str,
    /// Why.
    pub reason: String,
    /// The account's balance right after the money was taken back.
    pub balance_after: String,
    /// The processor's refund (`re_…`).
    pub processor_refund: Option<String>,
    /// When.
    pub created_at: String,
}

impl Refund {
    fn render(record: &RefundRecord) -> Result<Refund, ApiError> {
        Ok(Refund {
            id: record.id.clone(),
            object: "refund",
            topup_id: record.topup_id.clone(),
            account_id: record.account.to_string(),
            amount: record.amount.to_string(),
            status: record.state.code(),
            reason: record.reason.clone(),
            balance_after: total(record.balances_after)?.to_string(),
            processor_refund: record.processor_refund.clone(),
            created_at: timestamp(record.created_at),
        })
    }
}

/// Refunds (part of) a paid top-up to its card; the amount leaves the balance.
#[utoipa::path(
    post,
    path = "/v1/topups/{topup_id}/refund",
    tag = "payments",
    params(
        ("topup_id" = String, Path, description = "Top-up id"),
        ("Idempotency-Key" = String, Header, description = "Required: a retry never refunds twice"),
    ),
    request_body = RefundTopupRequest,
    responses(
        (status = 200, description = "The refund", body = Refund),
        (status = 400, description = "Invalid amount, more than is refundable, or not paid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such top-up", body = ErrorBody),
        (status = 409, description = "Idempotency key used with a different request", body = ErrorBody),
        (status = 503, description = "The payment processor could not be reached: retry with the same key", body = ErrorBody),
    )
)]
pub async fn refund_topup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(topup_id): Path<String>,
    header: IdempotencyHeader,
    ApiJson(request): ApiJson<RefundTopupRequest>,
) -> Result<(StatusCode, HeaderMap, Json<Refund>), ApiError> {
    let amount = match &request.amount {
        None | Some(Value::Null) => None,
        Some(value) => {
            let amount = parse_money(value, "amount")?;
            if !amount.is_positive() || !amount.is_whole_cents() {
                return Err(ApiError::invalid_amount(
                    "amount",
                    "amount must be positive, in whole cents",
                ));
            }
            Some(amount)
        }
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "requested by the operator".to_owned());
    if reason.trim().is_empty() || reason.chars().count() > MAX_REFUND_REASON_LENGTH {
        return Err(ApiError::invalid_request(format!(
            "reason must be 1 to {MAX_REFUND_REASON_LENGTH} characters"
        ))
        .with_param("reason"));
    }
    let key: IdempotencyKey = header.require(None)?;
    let outcome = billing(&state)?
        .refund_topup(RefundRequest {
            topup_id,
            amount,
            reason,
            idempotency_key: key,
            actor: caller.actor,
        })
        .await?;
    Ok((
        StatusCode::OK,
        replay_headers(outcome.replayed),
        Json(Refund::render(&outcome.value)?),
    ))
}

/// The receipt of a paid top-up: HTML, or PDF with `Accept: application/pdf`.
#[utoipa::path(
    get,
    path = "/v1/topups/{topup_id}/receipt",
    tag = "payments",
    params(("topup_id" = String, Path, description = "Top-up id")),
    responses(
        (status = 200, description = "The receipt (text/html or application/pdf)", content_type = "text/html"),
        (status = 400, description = "The top-up was not paid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such top-up", body = ErrorBody),
    )
)]
pub async fn topup_receipt(
    State(state): State<AppState>,
    Path(topup_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    receipt_response(billing(&state)?, &topup_id, &headers).await
}

/// A receipt rendered in the format the `Accept` header asks for.
pub(crate) async fn receipt_response(
    billing: &Billing,
    topup_id: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (format, content_type) = crate::api::document::wanted_format(headers);
    let bytes = billing.receipt(topup_id, format).await?;
    Ok(crate::api::document::document_response(bytes, content_type))
}

/// Query of the browser's return from the hosted page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckoutReturnQuery {
    /// The hosted page session Stripe put in the return URL.
    pub session_id: String,
}

/// Where Stripe's hosted page sends the browser back: Tollgate asks Stripe what happened,
/// applies it (once), and redirects to the page the flow started from.
#[utoipa::path(
    get,
    path = "/checkout/return",
    tag = "payments",
    params(CheckoutReturnQuery),
    responses(
        (status = 303, description = "To the return URL, with the outcome in its query"),
        (status = 400, description = "Not a session Tollgate opened", body = ErrorBody),
        (status = 503, description = "The payment processor is unavailable; the webhook or recovery will apply it", body = ErrorBody),
    )
)]
pub async fn checkout_return(
    State(state): State<AppState>,
    Query(query): Query<CheckoutReturnQuery>,
) -> Result<Redirect, ApiError> {
    if query.session_id.is_empty() || query.session_id.len() > 255 {
        return Err(
            ApiError::invalid_request("session_id is not a hosted page session").with_param("session_id"),
        );
    }
    let returned = billing(&state)?.checkout_return(&query.session_id).await?;
    Ok(Redirect::to(&returned.redirect_url))
}

/// Acknowledgement of a webhook delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    /// Always true: the event is applied (or was before, or is not one Tollgate acts on).
    pub received: bool,
    /// `applied`, `duplicate` or `ignored`.
    pub outcome: &'static str,
}

/// Stripe's events: the signature is checked over the raw body (300 s tolerance), each
/// event is applied once, in any order; unknown types are acknowledged.
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "t=…,v1=…")),
    request_body(content = Object, content_type = "application/json", description = "A Stripe event, verified over its raw bytes"),
    responses(
        (status = 200, description = "Applied, duplicate or ignored", body = WebhookReceipt),
        (status = 400, description = "Missing, forged, tampered or stale signature: nothing applied", body = ErrorBody),
        (status = 503, description = "Could not be applied now; Stripe retries", body = ErrorBody),
    )
)]
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookReceipt>, ApiError> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok());
    let outcome = billing(&state)?.handle_webhook(&body, signature).await?;
    Ok(Json(WebhookReceipt {
        received: true,
        outcome: match outcome {
            WebhookOutcome::Applied => "applied",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Ignored => "ignored",
        },
    }))
}
