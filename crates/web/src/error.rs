//! The error model: `{"error": {"code", "message", "param"?}}` with a stable
//! snake_case code, whose HTTP status follows from the code.

use axum::Json;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tollgate_billing::BillingError;
use tollgate_core::{InvalidCommand, Micros};
use tollgate_store::StoreError;
use tollgate_stripe::PaymentsError;
use utoipa::ToSchema;

/// Every error code the API answers with. The status follows from the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 401: missing or wrong API key.
    Unauthorized,
    /// 404: no such route, account, hold, …
    NotFound,
    /// 400: malformed JSON, a missing or wrong field, an out-of-range value.
    InvalidRequest,
    /// 400: a money field that is not a valid amount.
    InvalidAmount,
    /// 402: the debit does not fit the balance.
    InsufficientBalance,
    /// 409: the idempotency key was used with a different request.
    IdempotencyConflict,
    /// 409: an account with this id exists already.
    AccountExists,
    /// 409: the hold was captured, voided or expired already.
    HoldNotActive,
    /// 400: the capture costs more than the hold.
    CaptureExceedsHold,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 413: the body is over the configured limit.
    PayloadTooLarge,
    /// 429: too many requests.
    RateLimited,
    /// 500: a failure on our side; details are logged, never returned.
    InternalError,
    /// 503: the store is unavailable or the request took too long.
    ServiceUnavailable,
    /// 400: the action needs a saved card and the account has none.
    NoPaymentMethod,
    /// 402: the card was refused.
    CardDeclined,
    /// 402: an invoice is unpaid past its net terms; usage is blocked until it is paid.
    InvoiceOverdue,
    /// 402: the card needs the customer to authenticate (3-D Secure) on-session.
    AuthenticationRequired,
    /// 400: a webhook whose signature is missing, forged, tampered with or stale.
    InvalidSignature,
    /// 400: the refund is not possible (not paid, more than is left).
    InvalidRefund,
    /// 409: the request contradicts what is recorded.
    Conflict,
    /// 502: the payment processor answered something unusable; the outcome is being reconciled.
    PaymentProcessorError,
    /// 503: the payment processor could not be reached; nothing was charged twice, retry.
    PaymentProcessorUnavailable,
}

impl ErrorCode {
    /// The stable snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidAmount => "invalid_amount",
            ErrorCode::InsufficientBalance => "insufficient_balance",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::AccountExists => "account_exists",
            ErrorCode::HoldNotActive => "hold_not_active",
            ErrorCode::CaptureExceedsHold => "capture_exceeds_hold",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::NoPaymentMethod => "no_payment_method",
            ErrorCode::CardDeclined => "card_declined",
            ErrorCode::InvoiceOverdue => "invoice_overdue",
            ErrorCode::AuthenticationRequired => "authentication_required",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::InvalidRefund => "invalid_refund",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PaymentProcessorError => "payment_processor_error",
            ErrorCode::PaymentProcessorUnavailable => "payment_processor_unavailable",
        }
    }

    /// The HTTP status that goes with the code.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidAmount
            | ErrorCode::CaptureExceedsHold
            | ErrorCode::NoPaymentMethod
            | ErrorCode::InvalidSignature
            | ErrorCode::InvalidRefund => StatusCode::BAD_REQUEST,
            ErrorCode::InsufficientBalance
            | ErrorCode::CardDeclined
            | ErrorCode::AuthenticationRequired
            | ErrorCode::InvoiceOverdue => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::PaymentProcessorError => StatusCode::BAD_GATEWAY,
            ErrorCode::PaymentProcessorUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::IdempotencyConflict
            | ErrorCode::AccountExists
            | ErrorCode::HoldNotActive
            | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The JSON body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`, `param`) and people (`message`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    #[schema(example = "insufficient_balance")]
    pub code: String,
    /// Explanation for people; may change between versions.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "quantity")]
    pub param: Option<String>,
    /// `insufficient_balance`: what the account may still spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0.02")]
    pub spendable: Option<String>,
    /// `insufficient_balance`: what the request needs; `capture_exceeds_hold`: what the capture costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0.03")]
    pub required: Option<String>,
    /// `capture_exceeds_hold`: the amount held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// `hold_not_active`: the status the hold is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "captured")]
    pub hold_status: Option<String>,
}

/// An error on its way to becoming a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    // Boxed: errors travel in every `Result` of the request path; keep that small.
    detail: Box<ErrorDetail>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: Box::new(ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
                param: None,
                spendable: None,
                required: None,
                held: None,
                hold_status: None,
            }),
        }
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.detail.param = Some(param.into());
        self
    }

    /// `400 invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// `400 invalid_amount` for the money field `param`.
    pub fn invalid_amount(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidAmount, message).with_param(param)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// `401 unauthorized`.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            ErrorCode::Unauthorized,
            "a valid API key is required: send `Authorization: Bearer <secret key>`",
        )
    }

    /// `500 internal_error`; the cause goes to the log, not to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "internal error");
        ApiError::new(
            ErrorCode::InternalError,
            "something went wrong on our side; the request may be retried with the same idempotency key",
        )
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: (*self.detail).clone(),
        }
    }

    /// The JSON body, consuming the error.
    pub fn into_body(self) -> ErrorBody {
        ErrorBody { error: *self.detail }
    }

    /// The error for a command `tollgate-core` refused to build; `param` names
    /// the field of an invalid id or count.
    pub fn from_command(error: InvalidCommand, id_param: &str) -> ApiError {
        match error {
            InvalidCommand::Id(invalid) => {
                ApiError::invalid_request(invalid.to_string()).with_param(id_param)
            }
            InvalidCommand::Amount(message) => ApiError::invalid_amount("amount", message),
            InvalidCommand::Text { field, reason } => {
                ApiError::invalid_request(format!("{field} {reason}")).with_param(field)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound { what, id } => ApiError::not_found(format!("no such {what}: `{id}`")),
            StoreError::AccountExists(id) => {
                ApiError::new(ErrorCode::AccountExists, format!("account `{id}` already exists"))
                    .with_param("id")
            }
            StoreError::InsufficientFunds(refused) => {
                let mut error = ApiError::new(
                    ErrorCode::InsufficientBalance,
                    format!(
                        "insufficient balance: {} needed, {} available",
                        refused.required, refused.spendable
                    ),
                );
                error.detail.spendable = Some(refused.spendable.to_string());
                error.detail.required = Some(refused.required.to_string());
                error
            }
            StoreError::IdempotencyConflict { key } => ApiError::new(
                ErrorCode::IdempotencyConflict,
                format!("idempotency key `{key}` was already used with a different request"),
            )
            .with_param("idempotency_key"),
            StoreError::UnknownAction(action) => {
                ApiError::invalid_request(format!("unknown action `{action}`")).with_param("action")
            }
            StoreError::ChargeTooLarge => {
                ApiError::invalid_request("quantity × price is too large").with_param("quantity")
            }
            StoreError::Overflow(what) => {
                ApiError::invalid_amount("amount", format!("the amount would overflow the {what}"))
            }
            StoreError::HoldNotActive(status) => {
                let mut error = ApiError::new(
                    ErrorCode::HoldNotActive,
                    format!("the hold is {} and can no longer change", status.code()),
                );
                error.detail.hold_status = Some(status.code().to_owned());
                error
            }
            StoreError::CaptureExceedsHold { held, cost } => capture_exceeds_hold(held, cost),
            StoreError::InvalidCursor(cursor) => {
                ApiError::invalid_request(format!("starting_after `{cursor}` is not in this list"))
                    .with_param("starting_after")
            }
            StoreError::BatchTooLarge => ApiError::invalid_request(format!(
                "a batch holds at most {} events",
                tollgate_store::MAX_BATCH_EVENTS
            ))
            .with_param("events"),
            StoreError::InvalidRefund(reason) => {
                ApiError::new(ErrorCode::InvalidRefund, reason.to_string()).with_param("amount")
            }
            StoreError::Conflict(reason) => ApiError::new(ErrorCode::Conflict, reason),
            StoreError::InvoiceOverdue { due_at } => ApiError::new(
                ErrorCode::InvoiceOverdue,
                format!(
                    "an invoice was due {} and is unpaid: usage is blocked until it is paid",
                    crate::api::json::timestamp(due_at)
                ),
            ),
            StoreError::NoPaymentMethod => ApiError::new(
                ErrorCode::NoPaymentMethod,
                "the account has no payment method: add a card first",
            ),
            StoreError::Database(cause) => ApiError::internal(&cause),
            StoreError::Unavailable => ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the service is temporarily unavailable; retry with the same idempotency key",
            ),
        }
    }
}

impl From<BillingError> for ApiError {
    fn from(error: BillingError) -> ApiError {
        match error {
            BillingError::Store(error) => ApiError::from(error),
            BillingError::NoPaymentMethod => ApiError::new(
                ErrorCode::NoPaymentMethod,
                "the account has no payment method: add a card first",
            ),
            BillingError::Payments(PaymentsError::Transient(cause)) => {
                tracing::warn!(%cause, "payment processor unavailable");
                ApiError::new(
                    ErrorCode::PaymentProcessorUnavailable,
                    "the payment processor could not be reached; nothing was credited twice: \
                     retry with the same Idempotency-Key",
                )
            }
            BillingError::Payments(PaymentsError::NotFound(what)) => {
                ApiError::not_found(format!("not found at the payment processor: {what}"))
            }
            BillingError::Payments(error @ PaymentsError::Configuration(_)) => ApiError::internal(&error),
            BillingError::Payments(error) => {
                tracing::error!(%error, "payment processor error");
                ApiError::new(
                    ErrorCode::PaymentProcessorError,
                    "the payment processor answered unexpectedly; the outcome is reconciled \
                     with it automatically",
                )
            }
            BillingError::Webhook(error) => {
                ApiError::new(ErrorCode::InvalidSignature, format!("webhook refused: {error}"))
            }
            BillingError::ForeignSession(reason) => ApiError::invalid_request(reason),
            BillingError::NotPaid(id) => ApiError::new(
                ErrorCode::InvalidRequest,
                format!("top-up `{id}` has no receipt: it was not paid"),
            ),
            BillingError::Document(cause) => ApiError::internal(&cause),
        }
    }
}

fn capture_exceeds_hold(held: Micros, cost: Micros) -> ApiError {
    let mut error = ApiError::new(
        ErrorCode::CaptureExceedsHold,
        format!("the capture costs {cost}, more than the {held} held"),
    )
    .with_param("quantity");
    error.detail.held = Some(held.to_string());
    error.detail.required = Some(cost.to_string());
    error
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.into_body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Fallback handler: `404 not_found` in the error format.
pub async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// Middleware: rewrites error responses produced outside our handlers (axum's
/// 405, tower-http's 413 and timeouts, rejections) into the JSON error format.
pub async fn json_error_bodies(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this route does not take this method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "the request body is over the size limit",
        ),
        StatusCode::UNAUTHORIZED => (ErrorCode::Unauthorized, "a valid API key is required"),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::RateLimited, "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => (
            ErrorCode::ServiceUnavailable,
            "the request took too long; retry with the same idempotency key",
        ),
        status if status.is_client_error() => {
            (ErrorCode::InvalidRequest, "the request could not be understood")
        }
        _ => (ErrorCode::InternalError, "something went wrong on our side"),
    };
    let (mut parts, _) = response.into_parts();
    let rewritten = ApiError::new(code, message).into_response();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_TYPE);
    let (rewritten_parts, body) = rewritten.into_parts();
    parts.headers.extend(rewritten_parts.headers);
    // Keep the original status: a 4xx without a code of its own stays what it was.
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        assert_eq!(
            ErrorCode::InsufficientBalance.status(),
            StatusCode::PAYMENT_REQUIRED
        );
        assert_eq!(ErrorCode::IdempotencyConflict.status(), StatusCode::CONFLICT);
        assert_eq!(ErrorCode::PayloadTooLarge.as_str(), "payload_too_large");
    }

    #[test]
    fn database_errors_do_not_leak() {
        let error = ApiError::from(StoreError::Database("no such table: secrets".to_owned()));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.body().error.message.contains("secrets"));
    }
}
