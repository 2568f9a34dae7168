//! `POST /v1/portal_sessions` (the backend asks for a link, with its API key) and
//! `GET /portal/{token}` (the customer's browser follows it, once).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use tollgate_core::{AccountId, Actor};

use crate::api::json::timestamp;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, parse_account_id};
use crate::page::PageError;
use crate::page::session;
use crate::state::AppState;

/// Longest `return_url` accepted.
const MAX_RETURN_URL_LENGTH: usize = 2_000;

/// Body of `POST /v1/portal_sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePortalSession {
    /// Whose Billing & Usage page the link opens.
    #[schema(example = "acme")]
    pub account_id: String,
    /// Where the page's "Back" link leads (your app); omitted: no such link.
    #[schema(example = "https://app.example.com/settings")]
    pub return_url: Option<String>,
}

/// A single-use link to an account's Billing & Usage page.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalSession {
    /// Session id (`ps_…`); not a secret.
    pub id: String,
    /// Always `portal_session`.
    #[schema(example = "portal_session")]
    pub object: &'static str,
    /// The account.
    pub account_id: String,
    /// Send the customer's browser here, once, before `expires_at`. It sets an
    /// HttpOnly, SameSite=Lax session cookie and opens `/billing`.
    pub url: String,
    /// Until when the link can be used (5 minutes after creation).
    pub expires_at: String,
    /// Where the page's "Back" link leads.
    pub return_url: Option<String>,
}

fn check_return_url(url: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(url) = url else { return Ok(None) };
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > MAX_RETURN_URL_LENGTH || url.chars().any(char::is_control) {
        return Err(ApiError::invalid_request(format!(
            "return_url must be an http(s) URL of at most {MAX_RETURN_URL_LENGTH} characters"
        ))
        .with_param("return_url"));
    }
    Ok(Some(url))
}

/// A single-use link to an account's page.
#[derive(Clone, Debug)]
pub struct PortalLink {
    /// Session id (`ps_…`); not a secret.
    pub id: String,
    /// Where to send the browser.
    pub url: String,
    /// Until when it works.
    pub expires_at: tollgate_core::Timestamp,
}

/// Issues a link to `account`'s page on behalf of `actor`, as `POST /v1/portal_sessions`
/// does (the binary uses it to print a ready link to the demo account's page).
pub async fn create_link(
    state: &AppState,
    account: &AccountId,
    return_url: Option<String>,
    actor: &Actor,
) -> Result<PortalLink, ApiError> {
    // An unknown account is a 404 now, not a link that leads nowhere.
    state.store().account(account).await?;
    let link = session::issue_link(state, account.clone(), return_url, actor).await?;
    let base = state.config().public_url.trim_end_matches('/');
    Ok(PortalLink {
        id: link.id,
        url: format!("{base}/portal/{}", link.token),
        expires_at: link.expires_at,
    })
}

/// Creates a single-use link (valid 5 minutes) that opens the account's Billing & Usage
/// page in the customer's browser.
#[utoipa::path(
    post,
    path = "/v1/portal_sessions",
    tag = "billing",
    request_body = CreatePortalSession,
    responses(
        (status = 201, description = "The link to send the customer's browser to", body = PortalSession),
        (status = 400, description = "Invalid account id or return URL", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub async fn create_portal_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<CreatePortalSession>,
) -> Result<(StatusCode, Json<PortalSession>), ApiError> {
    let account = parse_account_id(&request.account_id, "account_id")?;
    let return_url = check_return_url(request.return_url)?;
    let link = create_link(&state, &account, return_url.clone(), &caller.actor).await?;
    Ok((
        StatusCode::CREATED,
        Json(PortalSession {
            id: link.id,
            object: "portal_session",
            account_id: account.to_string(),
            url: link.url,
            expires_at: timestamp(link.expires_at),
            return_url,
        }),
    ))
}

/// Follows a portal link: sets the session cookie and opens the page, or explains that
/// the link was used already or has expired (401).
pub(crate) async fn redeem(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    let redeemed = session::redeem_link(&state, &token)
        .await?
        .ok_or_else(PageError::expired)?;
    let cookie = session::session_cookie(&state, &redeemed.secret)
        .ok_or_else(|| PageError::from(ApiError::internal(&"session cookie is not a header value")))?;
    let mut response = Redirect::to("/billing").into_response();
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, cookie);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
