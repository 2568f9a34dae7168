//! Sandbox-only endpoints under `/__sandbox`: state, reset, faults, webhooks, disputes.
//!
//! Bodies are JSON. These routes need no API key: they exist only in the sandbox.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::faults::{ApiFault, ApiFaultKind, FaultTiming, MAX_QUEUED_FAULTS, WebhookFaults};
use crate::webhooks;

/// Routes of the admin API.
pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/__sandbox/state", get(state))
        .route("/__sandbox/reset", post(reset))
        .route("/__sandbox/webhooks/config", post(webhook_config))
        .route("/__sandbox/webhooks/faults", post(webhook_faults))
        .route("/__sandbox/webhooks/flush", post(flush))
        .route("/__sandbox/webhooks/deliveries", get(deliveries))
        .route("/__sandbox/events/{id}/redeliver", post(redeliver))
        .route("/__sandbox/faults/fail_next", post(fail_next))
        .route("/__sandbox/faults/hang_next", post(hang_next))
        .route("/__sandbox/faults", delete(clear_faults))
        .route("/__sandbox/charges/{id}/dispute", post(open_dispute))
        .route("/__sandbox/disputes/{id}/close", post(close_dispute))
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": { "type": "invalid_request_error", "message": message.into() } })),
    )
        .into_response()
}

async fn state(State(app): State<Arc<App>>) -> Json<Value> {
    Json(app.with(|state| state.dump()))
}

async fn reset(State(app): State<Arc<App>>) -> Json<Value> {
    app.with(|state| state.reset());
    Json(json!({ "reset": true }))
}

/// Body of `POST /__sandbox/webhooks/config`.
#[derive(Debug, Deserialize)]
struct WebhookConfig {
    url: Option<String>,
}

async fn webhook_config(State(app): State<Arc<App>>, Json(cfg): Json<WebhookConfig>) -> Json<Value> {
    app.with(|state| state.set_webhook_url(cfg.url.clone()));
    Json(json!({ "url": cfg.url }))
}

async fn webhook_faults(State(app): State<Arc<App>>, Json(faults): Json<WebhookFaults>) -> Json<Value> {
    app.with(|state| state.webhook_faults = faults.clone());
    Json(json!(faults))
}

/// Optional body of `POST /__sandbox/webhooks/flush`.
#[derive(Debug, Default, Deserialize)]
struct Flush {
    #[serde(default)]
    all: bool,
}

async fn flush(State(app): State<Arc<App>>, body: Option<Json<Flush>>) -> Json<Value> {
    let all = body.is_some_and(|Json(b)| b.all);
    let queued = webhooks::flush(&app, all);
    Json(json!({ "queued": queued }))
}

async fn deliveries(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "data": app.with(|state| state.deliveries.iter().cloned().collect::<Vec<_>>()) }))
}

async fn redeliver(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if webhooks::redeliver(&app, &id) {
        Json(json!({ "queued": id })).into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({ "error": { "type": "invalid_request_error", "code": "resource_missing", "message": format!("No such event: '{id}'") } })))
            .into_response()
    }
}

/// Body of `POST /__sandbox/faults/fail_next`.
#[derive(Debug, Deserialize)]
struct FailNext {
    count: u32,
    #[serde(default)]
    when: FaultTiming,
    #[serde(default)]
    path_prefix: Option<String>,
}

/// Body of `POST /__sandbox/faults/hang_next`.
#[derive(Debug, Deserialize)]
struct HangNext {
    count: u32,
    ms: u64,
    #[serde(default)]
    when: FaultTiming,
    #[serde(default)]
    path_prefix: Option<String>,
}

/// Queues a fault, refusing to grow the queue without bound.
pub(crate) fn push_fault(app: &App, fault: ApiFault) -> bool {
    app.with(|state| {
        if state.api_faults.len() >= MAX_QUEUED_FAULTS {
            return false;
        }
        if fault.count > 0 {
            state.api_faults.push_back(fault);
        }
        true
    })
}

async fn fail_next(State(app): State<Arc<App>>, Json(b): Json<FailNext>) -> Response {
    let fault = ApiFault {
        count: b.count,
        kind: ApiFaultKind::Fail,
        when: b.when,
        path_prefix: b.path_prefix,
    };
    queue_response(&app, fault)
}

async fn hang_next(State(app): State<Arc<App>>, Json(b): Json<HangNext>) -> Response {
    let fault = ApiFault {
        count: b.count,
        kind: ApiFaultKind::Hang { ms: b.ms },
        when: b.when,
        path_prefix: b.path_prefix,
    };
    queue_response(&app, fault)
}

fn queue_response(app: &App, fault: ApiFault) -> Response {
    if push_fault(app, fault.clone()) {
        Json(json!(fault)).into_response()
    } else {
        bad_request(format!("At most {MAX_QUEUED_FAULTS} faults can be queued."))
    }
}

async fn clear_faults(State(app): State<Arc<App>>) -> Json<Value> {
    app.with(|state| {
        state.api_faults.clear();
        state.webhook_faults = WebhookFaults::default();
    });
    Json(json!({ "cleared": true }))
}

/// Body of `POST /__sandbox/charges/{id}/dispute`.
#[derive(Debug, Default, Deserialize)]
struct OpenDispute {
    reason: Option<String>,
    amount: Option<i64>,
}

async fn open_dispute(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Option<Json<OpenDispute>>,
) -> Response {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    match app.with(|state| state.open_dispute(&id, b.reason, b.amount)) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /__sandbox/disputes/{id}/close`.
#[derive(Debug, Deserialize)]
struct CloseDispute {
    status: String,
}

async fn close_dispute(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Json(b): Json<CloseDispute>,
) -> Response {
    let won = match b.status.as_str() {
        "won" => true,
        "lost" => false,
        other => return bad_request(format!("status must be won or lost, not {other}")),
    };
    match app.with(|state| state.close_dispute(&id, won)) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
