//! Auto Top-Up settings: `PUT /v1/accounts/{id}/auto_recharge`, and the rule as every
//! account view shows it.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::{AccountId, Actor, AutoRechargeSettings, Micros, RechargeStatus, TopupLimits};
use tollgate_store::{AutoRechargeChange, AutoRechargeRecord};
use utoipa::ToSchema;

use crate::api::json::{AutoRecharge, timestamp};
use crate::api::payments::billing;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, parse_money, path_account_id};
use crate::state::AppState;

/// Largest monthly cap an operator may set ($1,000,000): a bound, not a budget.
const MAX_MONTHLY_CAP_DOLLARS: i64 = 1_000_000;

/// Body of `PUT /v1/accounts/{id}/auto_recharge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoRechargeRequest {
    /// On or off. Switching on needs an active card.
    pub enabled: bool,
    /// Recharge when the available balance goes below this (at least $5.00, whole cents).
    /// May be omitted to keep the stored value.
    #[schema(value_type = Option<String>, example = "50.00")]
    pub threshold: Option<Value>,
    /// Recharge up to this balance (at least threshold + the minimum top-up, whole cents).
    /// May be omitted to keep the stored value.
    #[schema(value_type = Option<String>, example = "100.00")]
    pub target: Option<Value>,
    /// Most auto-recharged money per billing cycle (default $5,000.00).
    #[schema(value_type = Option<String>, example = "5000.00")]
    pub monthly_cap: Option<Value>,
}

impl AutoRecharge {
    /// The rule as the API shows it at `now`.
    pub fn render(record: &AutoRechargeRecord, now: tollgate_core::Timestamp) -> AutoRecharge {
        let rule = &record.rule;
        let status = rule.status_at(now, record.cycle_start);
        let (failure_code, failed_at) = match &status {
            RechargeStatus::Failed { reason, failed_at }
            | RechargeStatus::ActionRequired { reason, failed_at } => {
                (Some(reason.clone()), Some(timestamp(*failed_at)))
            }
            _ => (None, None),
        };
        let status_code = if rule.enabled() {
            match status {
                RechargeStatus::Armed => "active",
                RechargeStatus::InFlight { .. } => "in_progress",
                RechargeStatus::Failed { .. } => "failed",
                RechargeStatus::ActionRequired { .. } => "action_required",
                RechargeStatus::CapReached { .. } => "cap_reached",
            }
        } else {
            "off"
        };
        AutoRecharge {
            enabled: rule.enabled(),
            threshold: record.settings.map(|settings| settings.threshold().to_string()),
            target: record.settings.map(|settings| settings.target().to_string()),
            status: status_code.to_owned(),
            monthly_cap: Some(record.monthly_cap.to_string()),
            recharged_this_cycle: Some(record.recharged_this_cycle.to_string()),
            failure_code,
            failed_at,
            retry_at: rule.cool_down_ends_at().filter(|end| *end > now).map(timestamp),
        }
    }
}

/// The account's rule, rendered.
pub(crate) async fn auto_recharge_of(
    state: &AppState,
    account: &AccountId,
) -> Result<AutoRecharge, ApiError> {
    let record = state.store().auto_recharge(account).await?;
    Ok(AutoRecharge::render(&record, state.config().clock.now()))
}

fn parse_settings(
    threshold: Option<&Value>,
    target: Option<&Value>,
    stored: Option<AutoRechargeSettings>,
    limits: TopupLimits,
) -> Result<Option<AutoRechargeSettings>, ApiError> {
    let threshold = match threshold {
        Some(value) => Some(parse_money(value, "threshold")?),
        None => stored.map(|settings| settings.threshold()),
    };
    let target = match target {
        Some(value) => Some(parse_money(value, "target")?),
        None => stored.map(|settings| settings.target()),
    };
    match (threshold, target) {
        (Some(threshold), Some(target)) => AutoRechargeSettings::new(threshold, target, limits)
            .map(Some)
            .map_err(|error| ApiError::invalid_amount(error.field.param(), error.to_string())),
        (None, _) => Ok(None),
        (Some(_), None) => Err(ApiError::invalid_amount("target", "target is required")),
    }
}

/// Changes the rule: validated, audited with the caller, re-armed on any change.
pub async fn apply_auto_recharge(
    state: &AppState,
    account: &AccountId,
    request: &AutoRechargeRequest,
    actor: Actor,
) -> Result<AutoRecharge, ApiError> {
    let limits = billing(state)?.settings().topup_limits;
    let stored = state.store().auto_recharge(account).await?;
    let settings = parse_settings(
        request.threshold.as_ref(),
        request.target.as_ref(),
        stored.settings,
        limits,
    )?;
    let monthly_cap = match &request.monthly_cap {
        None | Some(Value::Null) => None,
        Some(value) => {
            let cap = parse_money(value, "monthly_cap")?;
            let ceiling = Micros::from_dollars(MAX_MONTHLY_CAP_DOLLARS)
                .ok_or_else(|| ApiError::internal(&"the cap ceiling overflows"))?;
            if cap < limits.minimum() || cap > ceiling || !cap.is_whole_cents() {
                return Err(ApiError::invalid_amount(
                    "monthly_cap",
                    format!(
                        "monthly_cap must be whole cents from {} to {}",
                        limits.minimum(),
                        ceiling
                    ),
                ));
            }
            Some(cap)
        }
    };
    let Some(settings) = settings else {
        if request.enabled {
            return Err(ApiError::invalid_amount(
                "threshold",
                "threshold and target are required to switch auto top-up on",
            ));
        }
        // Never configured and asked to be off: it is.
        return Ok(AutoRecharge::render(&stored, state.config().clock.now()));
    };
    let record = state
        .store()
        .set_auto_recharge(
            account,
            AutoRechargeChange {
                enabled: request.enabled,
                settings,
                monthly_cap,
            },
            actor,
        )
        .await?;
    Ok(AutoRecharge::render(&record, state.config().clock.now()))
}

/// Switches Auto Top-Up on or off and sets its threshold, target and monthly cap.
#[utoipa::path(
    put,
    path = "/v1/accounts/{id}/auto_recharge",
    tag = "payments",
    params(("id" = String, Path, description = "Account id")),
    request_body = AutoRechargeRequest,
    responses(
        (status = 200, description = "The rule", body = AutoRecharge),
        (status = 400, description = "Invalid threshold, target or cap (`invalid_amount`), or no card to switch it on with (`no_payment_method`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn put_auto_recharge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<AutoRechargeRequest>,
) -> Result<Json<AutoRecharge>, ApiError> {
    let account = path_account_id(&id)?;
    Ok(Json(
        apply_auto_recharge(&state, &account, &request, caller.actor).await?,
    ))
}
