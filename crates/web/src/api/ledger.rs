//! The account's ledger: `GET /v1/accounts/{id}/transactions` and operator
//! grants, `POST /v1/accounts/{id}/grants`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::GrantCommand;
use utoipa::ToSchema;

use crate::api::json::{Transaction, TransactionList};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    ApiJson, IDEMPOTENT_REPLAYED_HEADER, IdempotencyHeader, PageQuery, Pagination, parse_money,
    path_account_id,
};
use crate::state::AppState;

/// Body of `POST /v1/accounts/{id}/grants`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GrantRequest {
    /// Credit (positive) or debit (negative), at most 1,000,000.00 either way.
    #[schema(value_type = String, example = "25.00")]
    pub amount: Value,
    /// Why: recorded in the ledger and the audit log.
    #[schema(example = "goodwill")]
    pub reason: String,
}

/// The account's ledger lines, newest first.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/transactions",
    tag = "billing",
    params(("id" = String, Path, description = "Account id"), PageQuery),
    responses(
        (status = 200, description = "A page of ledger lines", body = TransactionList),
        (status = 400, description = "Invalid `limit` or `starting_after`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn list_transactions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Pagination(page): Pagination,
) -> Result<Json<TransactionList>, ApiError> {
    let account = path_account_id(&id)?;
    let page = state.store().transactions(&account, page).await?;
    let data = page
        .data
        .iter()
        .map(Transaction::render)
        .collect::<Result<_, _>>()?;
    Ok(Json(TransactionList {
        data,
        has_more: page.has_more,
    }))
}

/// Credits (or, with a negative amount, debits) the account by operator decision.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/grants",
    tag = "billing",
    params(
        ("id" = String, Path, description = "Account id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the grant happen once"),
    ),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "The ledger line (header `Idempotent-Replayed: true` on a replay)", body = Transaction),
        (status = 400, description = "Invalid amount or reason", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 402, description = "A debit larger than the available balance", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Idempotency key used with a different request", body = ErrorBody),
    )
)]
pub async fn create_grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    header: IdempotencyHeader,
    ApiJson(request): ApiJson<GrantRequest>,
) -> Result<(StatusCode, HeaderMap, Json<Transaction>), ApiError> {
    let account = path_account_id(&id)?;
    let amount = parse_money(&request.amount, "amount")?;
    let key = header.resolve(None)?;
    let command = GrantCommand::new(account, amount, &request.reason, key, caller.actor)
        .map_err(|error| ApiError::from_command(error, "idempotency_key"))?;
    let outcome = state.store().grant(command).await?;
    let mut headers = HeaderMap::new();
    if outcome.replayed {
        headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(Transaction::render(&outcome.value)?),
    ))
}
