//! The Billing & Usage page, served by Tollgate itself: server-rendered HTML (askama),
//! htmx for in-place updates, a little plain JavaScript for dialogs and live validation.
//!
//! The customer reaches it through a single-use portal link (`POST /v1/portal_sessions`,
//! made by the integrating backend with its API key) that becomes an HttpOnly session
//! cookie; every form carries the session's CSRF token.
//!
//! The page has its own middleware stack rather than the API's: its error responses
//! are HTML for people (the API's rewrite every non-JSON error into JSON), and it sends
//! browser security headers (CSP, no framing, no caching of account data).

mod assets;
mod billing;
mod chart;
pub mod portal;
mod session;
mod view;

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

pub use session::{LINK_TTL_SECONDS, SESSION_COOKIE, SESSION_TTL_SECONDS};

/// Largest form body the page accepts; its forms hold a few short fields.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Where only scripts and styles of our own run: htmx and `billing.js` are files
/// under `/static/`, and no inline script or style attribute is used anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The page's routes, with their own layers (see the module docs), ready to merge into
/// the application after the API's layers.
pub fn router(state: AppState) -> Router {
    let timeout = Duration::from_millis(state.config().request_timeout_ms.max(1));
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(crate::telemetry::make_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_FORM_BYTES));
    Router::new()
        .route("/portal/{token}", get(portal::redeem))
        .route("/billing", get(billing::page))
        .route("/billing/tiers", get(billing::tiers_fragment))
        .route("/billing/transactions", get(billing::transactions_fragment))
        .route("/billing/payment_method", post(billing::change_card))
        .route("/billing/topups", post(billing::buy_credits))
        .route("/billing/auto_recharge", post(billing::save_auto_recharge))
        .route("/billing/receipts/{topup_id}", get(billing::receipt))
        .route("/billing/invoices/{invoice_id}", get(billing::invoice))
        .route("/static/{file}", get(assets::serve))
        .with_state(state)
        .layer(layers)
}

/// Browser security headers on every page response: the CSP (unless the handler set its
/// own), no framing (clickjacking), no MIME sniffing, and no referrer to other sites (a
/// portal link's token is in its path).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// An error shown to the customer as a page (or, for htmx, as a fragment).
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    title: String,
    message: String,
}

impl PageError {
    /// No session, or it expired: 401 with the way out.
    pub fn expired() -> PageError {
        PageError {
            status: StatusCode::UNAUTHORIZED,
            title: "This billing link has expired".to_owned(),
            message: "Billing links work once and only for a few minutes. Go back to the app \
                      and open Billing again to ask for a new one."
                .to_owned(),
        }
    }

    /// A form without this session's CSRF token.
    pub fn forbidden() -> PageError {
        PageError {
            status: StatusCode::FORBIDDEN,
            title: "This form has expired".to_owned(),
            message: "Reload the page and try again.".to_owned(),
        }
    }

    /// Something the customer can correct.
    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError {
            status: StatusCode::BAD_REQUEST,
            title: "That did not work".to_owned(),
            message: message.into(),
        }
    }

    /// No such thing for this account.
    pub fn not_found() -> PageError {
        PageError {
            status: StatusCode::NOT_FOUND,
            title: "Not found".to_owned(),
            message: "There is nothing here for this account.".to_owned(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What is shown to the customer.
    pub fn message_text(&self) -> String {
        self.message.clone()
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        let status = error.status();
        // The API's messages are written for people too, and never carry internals.
        let message = error.into_body().error.message;
        PageError {
            status,
            title: if status.is_server_error() {
                "Something went wrong on our side".to_owned()
            } else {
                "That did not work".to_owned()
            },
            message,
        }
    }
}

impl From<tollgate_store::StoreError> for PageError {
    fn from(error: tollgate_store::StoreError) -> PageError {
        PageError::from(ApiError::from(error))
    }
}

impl From<tollgate_billing::BillingError> for PageError {
    fn from(error: tollgate_billing::BillingError) -> PageError {
        PageError::from(ApiError::from(error))
    }
}

/// The page for an error.
#[derive(Template)]
#[template(path = "page/error.html")]
struct ErrorPage<'a> {
    assets: &'a assets::AssetUrls,
    title: &'a str,
    message: &'a str,
    expired: bool,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            assets: assets::urls(),
            title: &self.title,
            message: &self.message,
            expired: self.status == StatusCode::UNAUTHORIZED,
        };
        let mut response = (self.status, html(&page)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // htmx swaps nothing on a 401: send the whole browser to the explanation.
            response.headers_mut().insert(
                HeaderName::from_static("hx-refresh"),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// Renders a template; a failure (which askama's compile-time checks make very
/// unlikely) is logged and becomes a plain 500.
pub(crate) fn html(template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Html(body),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "page template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}
