//! Tollgate's HTTP API. Only this crate knows HTTP and JSON: requests are
//! parsed into `tollgate-core`'s validated commands at the edge, the store
//! decides, and the results are rendered into the JSON of `API.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
mod config;
pub mod error;
pub mod event_sender;
mod extract;
pub mod openapi;
pub mod page;
mod state;
mod sweeper;
pub mod telemetry;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use config::{
    DEFAULT_HOLD_TTL_SECONDS, DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_LIMIT_PER_SECOND,
    DEFAULT_REQUEST_TIMEOUT_MS, WebConfig,
};
pub use event_sender::{EventSender, spawn_event_sender};
pub use state::AppState;
pub use sweeper::{
    INVOICE_CLOSE_INTERVAL_MS, MAX_SWEEP_ROUNDS, SWEEP_BATCH, close_due_invoices, spawn_hold_sweeper,
    spawn_invoice_closer, sweep_expired_holds,
};

/// The whole HTTP application: API routes, operations endpoints and layers.
pub fn app(state: AppState) -> Router {
    // Installed before the first request so no early metric is lost.
    telemetry::metrics_handle();
    let config = state.config();
    let max_body_bytes = config.max_body_bytes;
    let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
    let (api_routes, document) = api::router(state.clone());
    let pages = page::router(state.clone());
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(telemetry::make_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::map_response(error::json_error_bodies))
        .layer(axum::middleware::from_fn(telemetry::track_http))
        // 503: the server gave up, the client may retry (with its idempotency key).
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes));
    api_routes
        .layer(axum::Extension(openapi::Document::new(document)))
        .fallback(error::route_not_found)
        .with_state(state)
        .layer(layers)
        .merge(pages)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then drains
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
