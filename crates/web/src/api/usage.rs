//! `POST /v1/accounts/{id}/usage` and `POST /v1/usage/batch`: the hot path.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::{ActionId, UsageCommand};
use tollgate_store::{Idempotent, MAX_BATCH_EVENTS, StoreResult, UsageRecord};
use utoipa::ToSchema;

use crate::api::json::Usage;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    ApiJson, IdempotencyHeader, from_value, parse_account_id, parse_quantity, path_account_id, require_key,
};
use crate::state::AppState;
use crate::telemetry;

/// Body of `POST /v1/accounts/{id}/usage`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UsageRequest {
    /// The action of the price book.
    #[schema(example = "email_finder")]
    pub action: String,
    /// Units consumed: a whole number from 1 to 10^12.
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_u64, example = 1)]
    pub quantity: Value,
    /// Makes the charge happen once (or send the `Idempotency-Key` header).
    #[schema(example = "evt_123")]
    pub idempotency_key: Option<String>,
}

/// One event of `POST /v1/usage/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchEvent {
    /// Who pays.
    #[schema(example = "acme")]
    pub account_id: String,
    /// The action of the price book.
    #[schema(example = "email_finder")]
    pub action: String,
    /// Units consumed: a whole number from 1 to 10^12.
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_u64, example = 1)]
    pub quantity: Value,
    /// Makes the charge happen once.
    #[schema(example = "evt_124")]
    pub idempotency_key: String,
}

/// Body of `POST /v1/usage/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// Up to 1,000 events, charged in order, each on its own.
    #[schema(value_type = Vec<BatchEvent>)]
    pub events: Vec<Value>,
}

/// One slot of a batch response: the usage object or an error.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    /// The event was charged (or replayed).
    Usage(Box<Usage>),
    /// The event was refused; nothing was charged for it.
    Error(ErrorBody),
}

/// Response of `POST /v1/usage/batch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per event, in the order of the events.
    pub results: Vec<BatchResult>,
}

fn parse_action(text: &str) -> Result<ActionId, ApiError> {
    // An id that cannot exist cannot be in the price book either.
    ActionId::parse(text)
        .map_err(|_| ApiError::invalid_request(format!("unknown action `{text}`")).with_param("action"))
}

/// Renders a charge and counts it.
fn charged(outcome: Idempotent<UsageRecord>) -> Result<Usage, ApiError> {
    telemetry::usage_charged(
        outcome.value.action.as_str(),
        outcome.value.amount,
        outcome.replayed,
    );
    Usage::render(&outcome.value, outcome.replayed)
}

/// Counts a refusal on its way out.
fn refused(error: ApiError) -> ApiError {
    telemetry::usage_refused(error.code().as_str());
    error
}

/// Charges `quantity` units of `action` at the account's current tier, once per idempotency key.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/usage",
    tag = "usage",
    params(
        ("id" = String, Path, description = "Account id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Alternative to the `idempotency_key` field"),
    ),
    request_body = UsageRequest,
    responses(
        (status = 200, description = "The charge (`replayed: true` for a repeat of an earlier request)", body = Usage),
        (status = 400, description = "Invalid field, unknown action, or quantity × price too large", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 402, description = "Not enough balance; nothing charged (`insufficient_balance`)", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Idempotency key used with a different request", body = ErrorBody),
    )
)]
pub async fn charge_usage(
    State(state): State<AppState>,
    Path(account): Path<String>,
    header: IdempotencyHeader,
    ApiJson(request): ApiJson<UsageRequest>,
) -> Result<Json<Usage>, ApiError> {
    let command = parse_usage(&account, &request, &header).map_err(refused)?;
    match state.store().charge_usage(command).await {
        Ok(outcome) => Ok(Json(charged(outcome)?)),
        Err(error) => Err(refused(error.into())),
    }
}

fn parse_usage(
    account: &str,
    request: &UsageRequest,
    header: &IdempotencyHeader,
) -> Result<UsageCommand, ApiError> {
    Ok(UsageCommand {
        account: path_account_id(account)?,
        action: parse_action(&request.action)?,
        quantity: parse_quantity(&request.quantity, "quantity")?,
        idempotency_key: header.require(request.idempotency_key.as_deref())?,
    })
}

fn parse_event(value: Value) -> Result<UsageCommand, ApiError> {
    let event: BatchEvent = from_value(value)?;
    Ok(UsageCommand {
        account: parse_account_id(&event.account_id, "account_id")?,
        action: parse_action(&event.action)?,
        quantity: parse_quantity(&event.quantity, "quantity")?,
        idempotency_key: require_key(Some(&event.idempotency_key))?,
    })
}

fn slot(outcome: StoreResult<Idempotent<UsageRecord>>) -> BatchResult {
    let rendered = match outcome {
        Ok(outcome) => charged(outcome),
        Err(error) => Err(refused(error.into())),
    };
    match rendered {
        Ok(usage) => BatchResult::Usage(Box::new(usage)),
        Err(error) => BatchResult::Error(error.into_body()),
    }
}

/// Charges up to 1,000 events in one durable commit; each succeeds or fails on its own.
#[utoipa::path(
    post,
    path = "/v1/usage/batch",
    tag = "usage",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per event, in order", body = BatchResponse),
        (status = 400, description = "Malformed body or more than 1,000 events", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub async fn charge_usage_batch(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    if request.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::from(tollgate_store::StoreError::BatchTooLarge));
    }
    let parsed: Vec<Result<UsageCommand, ApiError>> = request.events.into_iter().map(parse_event).collect();
    let commands: Vec<UsageCommand> = parsed
        .iter()
        .filter_map(|event| event.as_ref().ok())
        .cloned()
        .collect();
    let mut outcomes = if commands.is_empty() {
        Vec::new()
    } else {
        state.store().charge_usage_batch(commands).await?
    }
    .into_iter();
    let mut results = Vec::with_capacity(parsed.len());
    for event in parsed {
        results.push(match event {
            Err(error) => BatchResult::Error(refused(error).into_body()),
            Ok(_) => match outcomes.next() {
                Some(outcome) => slot(outcome),
                None => {
                    return Err(ApiError::internal(
                        &"the store returned fewer batch results than events",
                    ));
                }
            },
        });
    }
    Ok(Json(BatchResponse { results }))
}
