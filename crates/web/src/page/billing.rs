//! The page's handlers: the page itself, its htmx fragments, and the forms (card,
//! Buy credits, Auto-recharge), each of which checks the session's CSRF token.
//!
//! An htmx request gets the fragment it swaps in place (status 200 even when it
//! carries an error message, so that htmx shows it); a plain request gets the whole
//! page or, after a form, a redirect (post/redirect/get).

use askama::Template;
use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tollgate_billing::{Billing, TopupStart};
use tollgate_core::money::format_usd;
use tollgate_core::{IdempotencyKey, TopupAmount, TopupStatus};
use tollgate_store::TopupRecord;

use crate::api::auto_recharge::{AutoRechargeRequest, apply_auto_recharge};
use crate::page::session::PortalSession;
use crate::page::view::{self, BillingView, Flash, ViewOptions, brand_name, capitalise};
use crate::page::{PageError, html};
use crate::state::AppState;

/// The whole page.
#[derive(Template)]
#[template(path = "page/billing.html")]
struct BillingPage<'a> {
    assets: &'a crate::page::assets::AssetUrls,
    view: &'a BillingView,
}

/// Everything inside `<main>`, which forms swap in place.
#[derive(Template)]
#[template(path = "page/main.html")]
struct MainFragment<'a> {
    view: &'a BillingView,
}

/// The tier browser.
#[derive(Template)]
#[template(path = "page/tiers.html")]
struct TiersFragment<'a> {
    view: &'a BillingView,
}

/// The transactions block.
#[derive(Template)]
#[template(path = "page/transactions.html")]
struct TransactionsFragment<'a> {
    view: &'a BillingView,
}

fn is_htmx(headers: &HeaderMap) -> bool {
    headers
        .get("hx-request")
        .is_some_and(|value| value.as_bytes() == b"true")
}

fn full_page(view: &BillingView) -> Response {
    html(&BillingPage {
        assets: view.assets,
        view,
    })
}

/// Query of `GET /billing`: what to show, and what a hosted page reported on its way back.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageParams {
    /// Tier to show in the browser (0 first).
    tier: Option<String>,
    /// History cursor.
    starting_after: Option<String>,
    /// After the card page: `updated`, `canceled`, `not_completed`, `expired`.
    payment_method: Option<String>,
    /// After a hosted payment: the top-up.
    topup: Option<String>,
}

fn params(query: Result<Query<PageParams>, QueryRejection>) -> PageParams {
    // A mangled query string shows the plain page rather than an error.
    query.map(|Query(params)| params).unwrap_or_default()
}

fn tier_param(text: Option<&str>) -> Option<usize> {
    text.and_then(|text| text.parse().ok())
}

fn cursor_param(text: Option<String>) -> Option<String> {
    text.filter(|cursor| !cursor.is_empty() && cursor.len() <= 128)
}

/// The message for a top-up, read from the store (never from the query string, which
/// anyone can write): only a top-up of this account is reported.
async fn topup_flash(state: &AppState, session: &PortalSession, topup_id: &str) -> Option<Flash> {
    if topup_id.len() > 128 {
        return None;
    }
    let record = state.store().topup(topup_id).await.ok()?;
    if record.account != session.account {
        return None;
    }
    let balance = state
        .store()
        .account(&session.account)
        .await
        .ok()
        .and_then(|account| account.balances.total().ok());
    Some(topup_outcome_flash(&record, balance))
}

fn topup_outcome_flash(record: &TopupRecord, balance: Option<tollgate_core::Micros>) -> Flash {
    let amount = format_usd(record.amount);
    match record.status {
        TopupStatus::Succeeded => {
            let card = match (&record.card_brand, &record.card_last4) {
                (Some(brand), Some(last4)) => {
                    format!(" to your {} card ending in {last4}", brand_name(brand))
                }
                _ => String::new(),
            };
            let balance = balance.map_or_else(String::new, |balance| {
                format!(" Your balance is now {}.", format_usd(balance))
            });
            Flash::success(
                "Payment received",
                format!("{amount} was charged{card}.{balance}"),
            )
        }
        TopupStatus::Failed => {
            let reason = record
                .failure_message
                .clone()
                .or_else(|| record.failure_code.clone())
                .unwrap_or_else(|| "the card was refused".to_owned());
            Flash::error(
                "Payment failed",
                format!(
                    "{amount} could not be charged: {}. Nothing was taken; try another card (Edit under Payment method).",
                    reason.trim_end_matches('.')
                ),
            )
        }
        TopupStatus::Canceled => Flash::info(
            "Payment canceled",
            format!("You left the payment page; the {amount} top-up was not charged."),
        ),
        TopupStatus::RequiresAction => Flash::error(
            "Your bank wants to confirm this payment",
            format!(
                "{amount} was not charged yet. Replace your card (Edit under Payment method) and try again."
            ),
        ),
        TopupStatus::Pending | TopupStatus::RequiresPaymentMethod => Flash::info(
            "Payment in progress",
            format!("The {amount} top-up is not confirmed yet; your balance updates as soon as it is."),
        ),
    }
}

async fn flash_for(state: &AppState, session: &PortalSession, params: &PageParams) -> Option<Flash> {
    if let Some(topup) = &params.topup {
        return topup_flash(state, session, topup).await;
    }
    match params.payment_method.as_deref()? {
        "updated" => {
            let profile = state.store().payment_profile(&session.account).await.ok()?;
            let card = profile.card?;
            Some(Flash::success(
                "Card saved",
                format!(
                    "Your {} card ending in {} is now your payment method.",
                    brand_name(&card.brand),
                    card.last4
                ),
            ))
        }
        "canceled" | "not_completed" => Some(Flash::info(
            "No changes made",
            "You left Stripe's page without saving a card; your payment method is unchanged.",
        )),
        "expired" => Some(Flash::info(
            "The card page expired",
            "Nothing was changed. Click Add or Edit to try again.",
        )),
        _ => None,
    }
}

/// `GET /billing`: the page for the session's account.
pub(crate) async fn page(
    State(state): State<AppState>,
    session: PortalSession,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params(query);
    let flash = flash_for(&state, &session, &params).await;
    let view = view::build(
        &state,
        &session,
        ViewOptions {
            flash,
            tier: tier_param(params.tier.as_deref()),
            starting_after: cursor_param(params.starting_after.clone()),
        },
    )
    .await?;
    Ok(full_page(&view))
}

/// `GET /billing/tiers?tier=N`: the tier browser showing tier N.
pub(crate) async fn tiers_fragment(
    State(state): State<AppState>,
    session: PortalSession,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params(query);
    let view = view::build(
        &state,
        &session,
        ViewOptions {
            tier: tier_param(params.tier.as_deref()),
            ..ViewOptions::default()
        },
    )
    .await?;
    Ok(html(&TiersFragment { view: &view }))
}

/// `GET /billing/transactions?starting_after=…`: one page of the history.
pub(crate) async fn transactions_fragment(
    State(state): State<AppState>,
    session: PortalSession,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params(query);
    let view = view::build(
        &state,
        &session,
        ViewOptions {
            starting_after: cursor_param(params.starting_after),
            ..ViewOptions::default()
        },
    )
    .await?;
    Ok(html(&TransactionsFragment { view: &view }))
}

/// Where every hosted page sends the browser back: this page.
fn return_url(state: &AppState) -> String {
    format!("{}/billing", state.config().public_url.trim_end_matches('/'))
}

fn payments(state: &AppState) -> Result<&Billing, PageError> {
    state
        .billing()
        .ok_or_else(|| PageError::bad_request("Card payments are not available on this server."))
}

/// Sends the browser to `url`: htmx follows `HX-Redirect` with a full navigation (an
/// XHR cannot follow a redirect to another origin).
fn navigate(headers: &HeaderMap, url: &str) -> Result<Response, PageError> {
    if is_htmx(headers) {
        let value = HeaderValue::from_str(url)
            .map_err(|_| PageError::bad_request("The payment page address is invalid."))?;
        let mut response = StatusCode::OK.into_response();
        response
            .headers_mut()
            .insert(HeaderName::from_static("hx-redirect"), value);
        return Ok(response);
    }
    Ok(Redirect::to(url).into_response())
}

/// The form of the card buttons.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    csrf_token: Option<String>,
}

/// `POST /billing/payment_method`: opens Stripe's hosted page to add or replace the card.
pub(crate) async fn change_card(
    State(state): State<AppState>,
    session: PortalSession,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|_| PageError::forbidden())?;
    session.check_csrf(&headers, form.csrf_token.as_deref())?;
    // Every click opens a page of its own, as Stripe's portal does.
    let key = uuid::Uuid::now_v7().simple().to_string();
    let started = payments(&state)?
        .start_card_setup(&session.account, Some(return_url(&state)), &key)
        .await?;
    navigate(&headers, &started.url)
}

/// The Buy credits form.
#[derive(Debug, Deserialize)]
pub(crate) struct BuyForm {
    csrf_token: Option<String>,
    amount: Option<String>,
    form_key: Option<String>,
}

/// Answers a form with a message: the fragment for htmx, the whole page otherwise.
async fn answer(
    state: &AppState,
    session: &PortalSession,
    headers: &HeaderMap,
    status: StatusCode,
    flash: Flash,
) -> Result<Response, PageError> {
    let view = view::build(
        state,
        session,
        ViewOptions {
            flash: Some(flash),
            ..ViewOptions::default()
        },
    )
    .await?;
    if is_htmx(headers) {
        return Ok(html(&MainFragment { view: &view }));
    }
    let mut response = full_page(&view);
    *response.status_mut() = status;
    Ok(response)
}

/// The idempotency key of a Buy credits submission: the form's own key (new on every
/// render) and the amount, so a double click charges once and a corrected amount is a
/// new top-up rather than a conflict.
fn topup_key(form_key: Option<&str>, amount: TopupAmount) -> Result<IdempotencyKey, PageError> {
    let form_key = form_key
        .filter(|key| {
            !key.is_empty() && key.len() <= 64 && key.bytes().all(|byte| byte.is_ascii_alphanumeric())
        })
        .ok_or_else(PageError::forbidden)?;
    let cents = amount.get().to_cents().unwrap_or(0);
    IdempotencyKey::parse(&format!("portal-topup-{form_key}-{cents}")).map_err(|_| PageError::forbidden())
}

/// `POST /billing/topups`: buys credits with the saved card at once, or sends the browser
/// to Stripe's hosted page to add a card and pay.
pub(crate) async fn buy_credits(
    State(state): State<AppState>,
    session: PortalSession,
    headers: HeaderMap,
    form: Result<Form<BuyForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|_| PageError::forbidden())?;
    session.check_csrf(&headers, form.csrf_token.as_deref())?;
    let billing = payments(&state)?;
    let text = form.amount.unwrap_or_default();
    let amount = match TopupAmount::parse(&text, billing.settings().topup_limits) {
        Ok(amount) => amount,
        Err(reason) => {
            let flash = Flash::error(
                "Check the amount",
                format!("{}.", capitalise(&reason.to_string())),
            );
            return answer(&state, &session, &headers, StatusCode::BAD_REQUEST, flash).await;
        }
    };
    let key = topup_key(form.form_key.as_deref(), amount)?;
    let started = match billing
        .start_topup(
            &session.account,
            amount,
            Some(return_url(&state)),
            key,
            session.actor.clone(),
        )
        .await
    {
        Ok(started) => started,
        Err(error) => {
            let error = PageError::from(error);
            let flash = Flash::error("Payment not started", error.message_text());
            return answer(&state, &session, &headers, error.status(), flash).await;
        }
    };
    match started.value {
        TopupStart::HostedPage { url, .. } => navigate(&headers, &url),
        TopupStart::Charged(record) => {
            if !is_htmx(&headers) {
                return Ok(Redirect::to(&format!("/billing?topup={}", record.id)).into_response());
            }
            let balance = state
                .store()
                .account(&session.account)
                .await?
                .balances
                .total()
                .ok();
            let flash = topup_outcome_flash(&record, balance);
            answer(&state, &session, &headers, StatusCode::OK, flash).await
        }
    }
}

/// The Auto-recharge popup's form.
#[derive(Debug, Deserialize)]
pub(crate) struct RechargeForm {
    csrf_token: Option<String>,
    enabled: Option<String>,
    threshold: Option<String>,
    target: Option<String>,
}

/// `POST /billing/auto_recharge`: saves the Auto-recharge settings, or switches it off
/// (keeping the stored amounts for the next time it is switched on).
pub(crate) async fn save_auto_recharge(
    State(state): State<AppState>,
    session: PortalSession,
    headers: HeaderMap,
    form: Result<Form<RechargeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|_| PageError::forbidden())?;
    session.check_csrf(&headers, form.csrf_token.as_deref())?;
    let enabled = form.enabled.as_deref() == Some("true");
    let amount = |text: Option<String>| {
        text.filter(|_| enabled)
            .map(|text| serde_json::Value::String(text.trim().to_owned()))
    };
    let request = AutoRechargeRequest {
        enabled,
        threshold: amount(form.threshold),
        target: amount(form.target),
        monthly_cap: None,
    };
    let flash = match apply_auto_recharge(&state, &session.account, &request, session.actor.clone()).await {
        Ok(rule) if rule.enabled => Flash::success(
            "Auto-recharge on",
            format!(
                "When your balance goes below {}, your card is charged to top it up to {}.",
                rule.threshold.as_deref().map(view::usd).unwrap_or_default(),
                rule.target.as_deref().map(view::usd).unwrap_or_default(),
            ),
        ),
        Ok(_) => Flash::info(
            "Auto-recharge off",
            "Your card will not be charged automatically.",
        ),
        Err(error) => {
            let status = error.status();
            let message = capitalise(&error.into_body().error.message);
            let flash = Flash::error(
                "Auto-recharge not saved",
                format!("{}.", message.trim_end_matches('.')),
            );
            return answer(&state, &session, &headers, status, flash).await;
        }
    };
    if !is_htmx(&headers) {
        // Post/redirect/get: the message is not carried over; the banner says it.
        return Ok(Redirect::to("/billing#auto-recharge").into_response());
    }
    answer(&state, &session, &headers, StatusCode::OK, flash).await
}

/// `GET /billing/receipts/{topup_id}`: the receipt of one of this account's top-ups.
pub(crate) async fn receipt(
    State(state): State<AppState>,
    session: PortalSession,
    Path(topup_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let record = state
        .store()
        .topup(&topup_id)
        .await
        .map_err(|_| PageError::not_found())?;
    if record.account != session.account {
        // Another account's top-up does not exist, as far as this session knows.
        return Err(PageError::not_found());
    }
    let response = crate::api::payments::receipt_response(payments(&state)?, &topup_id, &headers).await?;
    Ok(standalone_document(response))
}

/// `GET /billing/invoices/{invoice_id}`: one of this account's invoices (HTML, or PDF
/// where asked).
pub(crate) async fn invoice(
    State(state): State<AppState>,
    session: PortalSession,
    Path(invoice_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let record = state
        .store()
        .invoice(&invoice_id)
        .await
        .map_err(|_| PageError::not_found())?;
    if record.account != session.account {
        // Another account's invoice does not exist, as far as this session knows.
        return Err(PageError::not_found());
    }
    let response = crate::api::invoices::document_response(&state, &invoice_id, &headers).await?;
    Ok(standalone_document(response))
}

/// A receipt or invoice is a standalone document with its own inline styles: its own CSP.
fn standalone_document(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
        ),
    );
    response
}
