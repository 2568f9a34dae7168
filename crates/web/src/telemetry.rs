//! Metrics (Prometheus) and request tracing.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tollgate_core::Micros;
use tracing::Span;

/// Requests served, by method, route template and status.
pub const HTTP_REQUESTS: &str = "tollgate_http_requests_total";
/// Request latency in seconds, by method, route template and status.
pub const HTTP_DURATION: &str = "tollgate_http_request_duration_seconds";
/// Usage charges made, by action.
pub const USAGE_CHARGES: &str = "tollgate_usage_charges_total";
/// Micro-dollars charged for usage, by action.
pub const USAGE_CHARGED_MICROS: &str = "tollgate_usage_charged_micros_total";
/// Usage events refused, by error code.
pub const USAGE_REFUSALS: &str = "tollgate_usage_refusals_total";
/// Usage events answered from the idempotency store.
pub const USAGE_REPLAYS: &str = "tollgate_usage_replays_total";
/// Holds released by the sweeper.
pub const HOLDS_EXPIRED: &str = "tollgate_holds_expired_total";
/// Attempts to deliver events to operator endpoints, by outcome.
pub const EVENT_DELIVERIES: &str = "tollgate_event_delivery_attempts_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder's handle, installing the recorder on
/// first use (tests build many apps in one process; there is one recorder).
pub fn metrics_handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may own the process (an embedding program); then
        // this handle renders nothing, which beats failing to start.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests served");
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency");
    metrics::describe_counter!(USAGE_CHARGES, "Usage charges made");
    metrics::describe_counter!(USAGE_CHARGED_MICROS, "Micro-dollars charged for usage");
    metrics::describe_counter!(USAGE_REFUSALS, "Usage events refused, by error code");
    metrics::describe_counter!(USAGE_REPLAYS, "Usage events answered as idempotent replays");
    metrics::describe_counter!(HOLDS_EXPIRED, "Holds released because their time ran out");
    metrics::describe_counter!(
        EVENT_DELIVERIES,
        "Event delivery attempts to operator endpoints, by outcome"
    );
}

/// The Prometheus text exposition of every metric.
pub fn render_metrics() -> String {
    let handle = metrics_handle();
    handle.run_upkeep();
    handle.render()
}

/// Middleware: counts and times every request by its route template (not
/// its path, which would make the label set unbounded).
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The tracing span of a request: method, path and request id, never headers
/// (they carry the secret key).
pub fn make_span(request: &axum::http::Request<axum::body::Body>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
    )
}

/// Records a usage charge (or its replay).
pub(crate) fn usage_charged(action: &str, amount: Micros, replayed: bool) {
    if replayed {
        metrics::counter!(USAGE_REPLAYS).increment(1);
        return;
    }
    metrics::counter!(USAGE_CHARGES, "action" => action.to_owned()).increment(1);
    metrics::counter!(USAGE_CHARGED_MICROS, "action" => action.to_owned())
        .increment(u64::try_from(amount.get()).unwrap_or(0));
}

/// Records a refused usage event by its (bounded) error code.
pub(crate) fn usage_refused(code: &'static str) {
    metrics::counter!(USAGE_REFUSALS, "code" => code).increment(1);
}

/// Records holds released by the sweeper.
pub(crate) fn holds_expired(count: usize) {
    metrics::counter!(HOLDS_EXPIRED).increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// Records one event delivery attempt.
pub(crate) fn event_delivery(delivered: bool) {
    let outcome = if delivered { "delivered" } else { "failed" };
    metrics::counter!(EVENT_DELIVERIES, "outcome" => outcome).increment(1);
}
