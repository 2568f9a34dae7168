//! `PUT`/`GET /v1/accounts/{id}/plan`: what Sales agreed with an account (billing mode,
//! credit limit, personal discount, custom prices, net terms).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::{BillingMode, InvalidPlan, PlanCommand, PlanRequest};
use tollgate_store::PlanRecord;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, parse_money, path_account_id};
use crate::state::AppState;

/// Body of `PUT /v1/accounts/{id}/plan`: the whole plan, replacing the one there.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// `prepaid` or `invoice`.
    #[schema(example = "invoice")]
    pub billing_mode: String,
    /// How far below zero an invoice account may go (whole cents).
    #[schema(value_type = Option<String>, example = "5000.00")]
    pub credit_limit: Option<Value>,
    /// Personal discount, 0–100: the account gets the larger of it and its tier's.
    #[schema(example = 15)]
    pub discount_percent: Option<u8>,
    /// Unit prices by action; they win over tiers and discounts.
    #[schema(value_type = Option<Object>, example = json!({"email_finder": "0.010"}))]
    pub prices: Option<BTreeMap<String, Value>>,
    /// Days an invoice may stay unpaid (invoice accounts; default 30).
    #[schema(example = 30)]
    pub net_terms_days: Option<u16>,
}

/// An account's plan.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Plan {
    /// Always `plan`.
    #[schema(example = "plan")]
    pub object: &'static str,
    /// Whose.
    pub account_id: String,
    /// `prepaid` or `invoice`.
    pub billing_mode: &'static str,
    /// Invoice accounts' credit limit.
    pub credit_limit: Option<String>,
    /// Personal discount, when agreed.
    pub discount_percent: Option<u8>,
    /// Custom unit prices by action.
    #[schema(value_type = Object)]
    pub prices: BTreeMap<String, String>,
    /// Invoice accounts' net terms.
    pub net_terms_days: Option<u16>,
}

impl Plan {
    fn render(record: &PlanRecord) -> Plan {
        Plan {
            object: "plan",
            account_id: record.account.to_string(),
            billing_mode: record.mode.code(),
            credit_limit: match record.mode {
                BillingMode::Prepaid => None,
                BillingMode::Invoice { credit_limit } => Some(credit_limit.to_string()),
            },
            discount_percent: record.plan.personal_discount.map(|discount| discount.get()),
            prices: record
                .plan
                .custom_prices
                .iter()
                .map(|(action, price)| (action.to_string(), price.to_string()))
                .collect(),
            net_terms_days: record.net_terms_days,
        }
    }
}

fn plan_error(error: InvalidPlan) -> ApiError {
    let message = format!("{} {}", error.field, error.reason);
    if error.field == "credit_limit" || error.field.starts_with("prices.") {
        ApiError::invalid_amount(&error.field, message)
    } else {
        ApiError::invalid_request(message).with_param(error.field)
    }
}

fn parse_body(body: PlanBody) -> Result<PlanRequest, ApiError> {
    let invoice = match body.billing_mode.as_str() {
        "prepaid" => false,
        "invoice" => true,
        _ => {
            return Err(
                ApiError::invalid_request("billing_mode must be \"prepaid\" or \"invoice\"")
                    .with_param("billing_mode"),
            );
        }
    };
    let credit_limit = body
        .credit_limit
        .as_ref()
        .map(|value| parse_money(value, "credit_limit"))
        .transpose()?;
    let prices = body
        .prices
        .unwrap_or_default()
        .iter()
        .map(|(action, value)| Ok((action.clone(), parse_money(value, &format!("prices.{action}"))?)))
        .collect::<Result<_, ApiError>>()?;
    Ok(PlanRequest {
        invoice,
        credit_limit,
        discount_percent: body.discount_percent,
        prices,
        net_terms_days: body.net_terms_days,
    })
}

/// Replaces the account's plan; the change is in the audit log with who made it.
#[utoipa::path(
    put,
    path = "/v1/accounts/{id}/plan",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    request_body = PlanBody,
    responses(
        (status = 200, description = "The plan now", body = Plan),
        (status = 400, description = "A field out of range or an unknown action", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The new limit does not cover what the account owes", body = ErrorBody),
    )
)]
pub async fn put_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PlanBody>,
) -> Result<Json<Plan>, ApiError> {
    let account = path_account_id(&id)?;
    let request = parse_body(body)?;
    let command =
        PlanCommand::new(account, request, &state.config().price_book, caller.actor).map_err(plan_error)?;
    Ok(Json(Plan::render(&state.store().set_plan(command).await?)))
}

/// The account's plan.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/plan",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The plan", body = Plan),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn get_plan(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Plan>, ApiError> {
    let account = path_account_id(&id)?;
    Ok(Json(Plan::render(&state.store().plan(&account).await?)))
}
