//! Holds: reserve funds for an action of unknown final cost, then capture
//! the real cost or void.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::hold::{MAX_HOLD_TTL_SECONDS, MIN_HOLD_TTL_SECONDS};
use tollgate_core::{ActionId, HoldCommand, HoldTtl};
use utoipa::ToSchema;

use crate::api::json::{Hold, Usage};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    ApiJson, IDEMPOTENT_REPLAYED_HEADER, IdempotencyHeader, parse_money, parse_quantity, parse_seconds,
    path_account_id,
};
use crate::state::AppState;
use crate::telemetry;

/// Body of `POST /v1/accounts/{id}/holds`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct HoldRequest {
    /// The action whose price applies at capture.
    #[schema(example = "export")]
    pub action: String,
    /// Amount to reserve: a decimal string, above 0.
    #[schema(value_type = String, example = "5.00")]
    pub amount: Value,
    /// Seconds until an uncaptured hold releases itself (1 to 604800; default 900).
    #[schema(value_type = Option<i64>, example = 900)]
    pub ttl_seconds: Option<Value>,
    /// Makes the hold happen once (or send the `Idempotency-Key` header).
    #[schema(example = "export_42")]
    pub idempotency_key: Option<String>,
}

/// Body of `POST /v1/holds/{id}/capture`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CaptureRequest {
    /// Units actually consumed; their price must not exceed the hold.
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_u64, example = 120)]
    pub quantity: Value,
}

/// Response of a capture: the hold and the usage charge it became.
#[derive(Debug, Serialize, ToSchema)]
pub struct CapturedHold {
    /// The captured hold.
    #[serde(flatten)]
    pub hold: Hold,
    /// The usage charge.
    pub usage: Usage,
}

fn parse_hold(
    state: &AppState,
    account: &str,
    request: &HoldRequest,
    header: &IdempotencyHeader,
) -> Result<HoldCommand, ApiError> {
    let account = path_account_id(account)?;
    let action = ActionId::parse(&request.action).map_err(|_| {
        ApiError::invalid_request(format!("unknown action `{}`", request.action)).with_param("action")
    })?;
    let amount = parse_money(&request.amount, "amount")?;
    let ttl = match &request.ttl_seconds {
        None => state.config().default_hold_ttl,
        Some(value) => {
            let seconds = parse_seconds(value, "ttl_seconds", MIN_HOLD_TTL_SECONDS..=MAX_HOLD_TTL_SECONDS)?;
            HoldTtl::from_seconds(seconds).ok_or_else(|| {
                ApiError::invalid_request("ttl_seconds is out of range").with_param("ttl_seconds")
            })?
        }
    };
    let key = header.require(request.idempotency_key.as_deref())?;
    HoldCommand::new(account, action, amount, ttl, key)
        .map_err(|error| ApiError::from_command(error, "amount"))
}

/// Reserves `amount` of the account's available balance.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/holds",
    tag = "holds",
    params(
        ("id" = String, Path, description = "Account id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Alternative to the `idempotency_key` field"),
    ),
    request_body = HoldRequest,
    responses(
        (status = 201, description = "The hold (header `Idempotent-Replayed: true` on a replay)", body = Hold),
        (status = 400, description = "Invalid field or unknown action", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 402, description = "Not enough available balance", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Idempotency key used with a different request", body = ErrorBody),
    )
)]
pub async fn place_hold(
    State(state): State<AppState>,
    Path(account): Path<String>,
    header: IdempotencyHeader,
    ApiJson(request): ApiJson<HoldRequest>,
) -> Result<(StatusCode, HeaderMap, Json<Hold>), ApiError> {
    let command = parse_hold(&state, &account, &request, &header)?;
    let outcome = state.store().place_hold(command).await?;
    let mut headers = HeaderMap::new();
    if outcome.replayed {
        headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok((StatusCode::CREATED, headers, Json(Hold::render(&outcome.value)?)))
}

/// One hold.
#[utoipa::path(
    get,
    path = "/v1/holds/{id}",
    tag = "holds",
    params(("id" = String, Path, description = "Hold id")),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody),
    )
)]
pub async fn get_hold(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Hold>, ApiError> {
    let hold = state.store().hold(&id).await?;
    Ok(Json(Hold::render(&hold)?))
}

/// Charges the action's tier price for `quantity` from the hold and releases the rest.
#[utoipa::path(
    post,
    path = "/v1/holds/{id}/capture",
    tag = "holds",
    params(("id" = String, Path, description = "Hold id")),
    request_body = CaptureRequest,
    responses(
        (status = 200, description = "The captured hold and its usage charge", body = CapturedHold),
        (status = 400, description = "Invalid quantity, or it costs more than the hold (`capture_exceeds_hold`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 409, description = "The hold was captured, voided or expired (`hold_not_active`)", body = ErrorBody),
    )
)]
pub async fn capture_hold(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CaptureRequest>,
) -> Result<Json<CapturedHold>, ApiError> {
    let quantity = parse_quantity(&request.quantity, "quantity")?;
    let (hold, usage) = state.store().capture_hold(&id, quantity).await?;
    telemetry::usage_charged(usage.action.as_str(), usage.amount, false);
    Ok(Json(CapturedHold {
        hold: Hold::render(&hold)?,
        usage: Usage::render(&usage, false)?,
    }))
}

/// Releases the hold without charge.
#[utoipa::path(
    post,
    path = "/v1/holds/{id}/void",
    tag = "holds",
    params(("id" = String, Path, description = "Hold id")),
    responses(
        (status = 200, description = "The voided hold", body = Hold),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 409, description = "The hold was captured, voided or expired (`hold_not_active`)", body = ErrorBody),
    )
)]
pub async fn void_hold(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Hold>, ApiError> {
    let hold = state.store().void_hold(&id).await?;
    Ok(Json(Hold::render(&hold)?))
}
