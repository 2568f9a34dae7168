//! `POST /v1/accounts`, `GET /v1/accounts`, `GET /v1/accounts/{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use tollgate_core::{AccountId, NewAccount};
use utoipa::ToSchema;

use crate::api::json::{Account, AccountList, PaymentMethod};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, PageQuery, Pagination, parse_account_id, path_account_id};
use crate::state::AppState;

/// Prefix of generated account ids.
pub const GENERATED_ID_PREFIX: &str = "acct_";

/// Body of `POST /v1/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateAccount {
    /// The operator's own id for the customer: letters, digits, `_`, `-`, at
    /// most 64; generated (`acct_…`) when absent.
    #[schema(example = "acme")]
    pub id: Option<String>,
    /// Display name.
    #[schema(example = "Acme")]
    pub name: String,
    /// Billing e-mail.
    #[schema(example = "billing@acme.test")]
    pub email: String,
}

fn generated_id() -> Result<AccountId, ApiError> {
    // Time-ordered, so generated accounts list in creation order.
    let id = format!("{GENERATED_ID_PREFIX}{}", uuid::Uuid::now_v7().simple());
    AccountId::parse(&id).map_err(|error| ApiError::internal(&error))
}

pub(crate) fn render(state: &AppState, record: &tollgate_store::AccountRecord) -> Result<Account, ApiError> {
    let config = state.config();
    Account::render(record, &config.price_book, config.tier_basis)
}

/// The account's card as the API shows it, if one is saved.
pub(crate) async fn card_of(
    state: &AppState,
    account: &AccountId,
) -> Result<Option<PaymentMethod>, ApiError> {
    let profile = state.store().payment_profile(account).await?;
    Ok(profile.card.as_ref().map(PaymentMethod::render))
}

/// Renders a stored account with its card.
async fn render_with_card(
    state: &AppState,
    record: &tollgate_store::AccountRecord,
) -> Result<Account, ApiError> {
    let mut account = render(state, record)?;
    account.payment_method = card_of(state, &record.id).await?;
    account.auto_recharge = crate::api::auto_recharge::auto_recharge_of(state, &record.id).await?;
    Ok(account)
}

/// Creates an account with a zero balance.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    request_body = CreateAccount,
    responses(
        (status = 201, description = "The account", body = Account),
        (status = 400, description = "Invalid id, name or e-mail", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "An account with this id exists (`account_exists`)", body = ErrorBody),
    )
)]
pub async fn create_account(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    let id = match request.id.as_deref() {
        Some(id) => parse_account_id(id, "id")?,
        None => generated_id()?,
    };
    let account = NewAccount::new(id, &request.name, &request.email)
        .map_err(|error| ApiError::from_command(error, "id"))?
        .created_by(caller.actor);
    let record = state.store().create_account(account).await?;
    Ok((
        StatusCode::CREATED,
        Json(render_with_card(&state, &record).await?),
    ))
}

/// One account, with its balances and current tier.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn get_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    let record = state.store().account(&path_account_id(&id)?).await?;
    Ok(Json(render_with_card(&state, &record).await?))
}

/// Accounts in id order, paginated.
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "accounts",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of accounts", body = AccountList),
        (status = 400, description = "Invalid `limit`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    Pagination(page): Pagination,
) -> Result<Json<AccountList>, ApiError> {
    let page = state.store().list_accounts(page).await?;
    let mut data = Vec::with_capacity(page.data.len());
    for record in &page.data {
        data.push(render_with_card(&state, record).await?);
    }
    Ok(Json(AccountList {
        data,
        has_more: page.has_more,
    }))
}
