//! The `/v1` Stripe API: routes, authentication, idempotency and injected faults.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json, Router};
use serde_json::Value;

use crate::App;
use crate::faults::{ApiFaultKind, FaultTiming, take_fault};
use crate::objects::API_VERSION;
use crate::state::{IdemEntry, Origin, State as Store};
use crate::wire::{ApiError, Params, new_id, now};

/// Largest request body accepted (Stripe's requests are a few KiB).
pub(crate) const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest an injected hang may last, so a typo cannot park a task forever.
const MAX_HANG_MS: u64 = 10 * 60 * 1000;
/// Largest response body buffered for idempotent replays.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Per-request facts handlers need for `event.request`.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    request_id: String,
    idempotency_key: Option<String>,
}

impl RequestContext {
    fn origin(&self) -> Origin {
        Origin {
            request_id: Some(self.request_id.clone()),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

type ApiResult = Result<Json<Value>, ApiError>;
type Outcome = Result<Value, ApiError>;

fn query_params(query: Option<String>) -> Result<Params, ApiError> {
    Params::parse(query.unwrap_or_default().as_bytes())
}

/// Runs a state operation under the lock.
fn run<F>(app: &App, f: F) -> ApiResult
where
    F: FnOnce(&mut Store) -> Outcome,
{
    app.with(f).map(Json)
}

// Every `/v1` route does the same three things: extract its parameters (the query string of a
// GET, the form body of a POST), take the lock, call one `State` operation. These four
// constructors do the extraction once per request shape, so the route table below names, for
// each route, exactly the operation it runs. POSTs also get the request's origin, which events
// record as `event.request`.

/// `GET` on a collection: query parameters only.
fn get_list(operation: fn(&mut Store, Params) -> Outcome) -> MethodRouter<Arc<App>> {
    get(
        move |State(app): State<Arc<App>>, RawQuery(query): RawQuery| async move {
            let params = query_params(query)?;
            run(&app, |state| operation(state, params))
        },
    )
}

/// `GET` on one object: its id from the path, then query parameters.
fn get_one(operation: fn(&mut Store, &str, Params) -> Outcome) -> MethodRouter<Arc<App>> {
    get(
        move |State(app): State<Arc<App>>, Path(id): Path<String>, RawQuery(query): RawQuery| async move {
            let params = query_params(query)?;
            run(&app, |state| operation(state, &id, params))
        },
    )
}

/// `POST` that creates an object: form parameters.
fn post_new(operation: fn(&mut Store, Params, &Origin) -> Outcome) -> MethodRouter<Arc<App>> {
    post(
        move |State(app): State<Arc<App>>,
              Extension(request_context): Extension<RequestContext>,
              body: Bytes| async move {
            let params = Params::parse(&body)?;
            run(&app, |state| operation(state, params, &request_context.origin()))
        },
    )
}

/// `POST` to one object (update or action): its id from the path, then form parameters.
fn post_to(operation: fn(&mut Store, &str, Params, &Origin) -> Outcome) -> MethodRouter<Arc<App>> {
    post(
        move |State(app): State<Arc<App>>,
              Extension(request_context): Extension<RequestContext>,
              Path(id): Path<String>,
              body: Bytes| async move {
            let params = Params::parse(&body)?;
            run(&app, |state| {
                operation(state, &id, params, &request_context.origin())
            })
        },
    )
}

/// The `/v1` router (without the shared layers).
pub(crate) fn router(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(
            "/v1/customers",
            post_new(|state, params, origin| state.create_customer(params, origin)),
        )
        .route(
            "/v1/customers/{id}",
            get_one(|state, id, params| state.retrieve_customer(id, params)).merge(post_to(
                |state, id, params, origin| state.update_customer(id, params, origin),
            )),
        )
        .route(
            "/v1/customers/{id}/payment_methods",
            get_one(|state, id, params| state.list_payment_methods(Some(id), params)),
        )
        .route(
            "/v1/checkout/sessions",
            post_new(|state, params, _| state.create_session(params)),
        )
        .route(
            "/v1/checkout/sessions/{id}",
            get_one(|state, id, params| state.retrieve_session(id, params)),
        )
        .route(
            "/v1/checkout/sessions/{id}/expire",
            post_to(|state, id, params, origin| state.expire_session(id, params, origin)),
        )
        .route(
            "/v1/payment_methods",
            get_list(|state, params| state.list_payment_methods(None, params)),
        )
        .route(
            "/v1/payment_methods/{id}",
            get_one(|state, id, params| state.retrieve_payment_method(id, params)),
        )
        .route(
            "/v1/payment_methods/{id}/attach",
            post_to(|state, id, params, origin| state.attach_payment_method(id, params, origin)),
        )
        .route(
            "/v1/payment_methods/{id}/detach",
            post_to(|state, id, params, origin| state.detach_payment_method(id, params, origin)),
        )
        .route(
            "/v1/setup_intents/{id}",
            get_one(|state, id, params| state.retrieve_setup_intent(id, params)),
        )
        .route(
            "/v1/payment_intents",
            get_list(|state, params| state.list_payment_intents(params)).merge(post_new(
                |state, params, origin| state.create_payment_intent(params, origin),
            )),
        )
        .route(
            "/v1/payment_intents/{id}",
            get_one(|state, id, params| state.retrieve_payment_intent(id, params)),
        )
        .route(
            "/v1/payment_intents/{id}/confirm",
            post_to(|state, id, params, origin| state.confirm_payment_intent(id, params, origin)),
        )
        .route(
            "/v1/payment_intents/{id}/cancel",
            post_to(|state, id, params, origin| state.cancel_payment_intent(id, params, origin)),
        )
        .route(
            "/v1/charges/{id}",
            get_one(|state, id, params| state.retrieve_charge(id, params)),
        )
        .route(
            "/v1/refunds",
            post_new(|state, params, origin| state.create_refund(params, origin)),
        )
        .route(
            "/v1/refunds/{id}",
            get_one(|state, id, params| state.retrieve_refund(id, params)),
        )
        .route(
            "/v1/disputes/{id}",
            get_one(|state, id, params| state.retrieve_dispute(id, params)),
        )
        .route("/v1/events", get_list(|state, params| state.list_events(params)))
        .route(
            "/v1/events/{id}",
            get_one(|state, id, params| state.retrieve_event(id, params)),
        )
        .route("/v1/{*rest}", axum::routing::any(unrecognized))
        .method_not_allowed_fallback(unrecognized)
        .layer(middleware::from_fn_with_state(app, stripe_layer))
}

/// Stripe's answer to a path or method it does not serve.
pub(crate) async fn unrecognized(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::invalid(format!(
        "Unrecognized request URL ({method}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
        uri.path()
    ))
    .status(StatusCode::NOT_FOUND)
    .into_response()
}

fn authorized(req: &Request) -> Result<(), ApiError> {
    let header = req.headers().get("authorization").and_then(|h| h.to_str().ok());
    let Some(header) = header else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.",
        ));
    };
    let key = header.strip_prefix("Bearer ").unwrap_or("").trim();
    if key.starts_with("sk_test_") && key.len() > "sk_test_".len() {
        return Ok(());
    }
    let shown = if key.len() > 4 {
        format!("{}****{}", &key[..key.len().min(8)], &key[key.len() - 4..])
    } else {
        "****".into()
    };
    Err(ApiError::unauthorized(format!(
        "Invalid API Key provided: {shown}. The sandbox accepts any test secret key (sk_test_…)."
    )))
}

fn finish_headers(mut resp: Response, request_id: &str) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("request-id", v);
    }
    h.insert("stripe-version", HeaderValue::from_static(API_VERSION));
    // Tells retrying clients (async-stripe honours it) what Stripe would: conflicts and server
    // errors are worth retrying, other client errors are not.
    let status = resp.status();
    let retry = match status.as_u16() {
        409 | 500..=599 => Some("true"),
        400..=499 => Some("false"),
        _ => None,
    };
    if let Some(v) = retry {
        resp.headers_mut()
            .insert("stripe-should-retry", HeaderValue::from_static(v));
    }
    resp
}

/// What the idempotency check decided for a request.
enum Idem {
    /// No key (or not a POST).
    None,
    /// A stored response to send back as is.
    Replay(Response),
    /// A new key, now marked in progress.
    Fresh(String),
}

fn check_idempotency(
    app: &App,
    key: Option<String>,
    endpoint: &str,
    fingerprint: &[(String, String)],
) -> Result<Idem, ApiError> {
    let Some(key) = key else {
        return Ok(Idem::None);
    };
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::invalid_param(
            "Idempotency-Key",
            "Idempotency keys must be 1 to 255 characters long.",
        ));
    }
    app.with(|state| {
        let mismatch_endpoint = |stored: &str| {
            ApiError::idempotency(format!(
                "Keys for idempotent requests can only be used for the same endpoint they were first used for ('{endpoint}' vs '{stored}'). Try using a key other than '{key}' if you meant to execute a different request."
            ))
        };
        let mismatch_params = || {
            ApiError::idempotency(format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ))
        };
        match state.idempotent_entry(&key) {
            Some(IdemEntry::InProgress { .. }) => Err(ApiError::idempotency(
                "There is currently another in-progress request using this Stripe idempotency key (that probably means you submitted twice, and the other request is still going through). Please try again later.",
            )
            .with("code", "idempotency_key_in_use")
            .status(StatusCode::CONFLICT)),
            Some(IdemEntry::Done { endpoint: e, .. }) if e != endpoint => Err(mismatch_endpoint(e)),
            Some(IdemEntry::Done { fingerprint: f, .. }) if f.as_slice() != fingerprint => Err(mismatch_params()),
            Some(IdemEntry::Done { status, body, .. }) => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                let mut resp = (status, body.clone()).into_response();
                resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                Ok(Idem::Replay(resp))
            }
            None => {
                state.remember_key(
                    key.clone(),
                    IdemEntry::InProgress { created: now() },
                );
                Ok(Idem::Fresh(key))
            }
        }
    })
}

/// Authentication, idempotency and fault injection around every `/v1` call.
async fn stripe_layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let request_id = new_id("req", 14);
    if let Err(e) = authorized(&req) {
        let mut resp = e.into_response();
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"Stripe\""),
        );
        return finish_headers(resp, &request_id);
    }
    // Handle the call in its own task so that a client giving up (a timeout) cannot cancel an
    // effect half-way: the call completes or fails exactly as the fault configuration says.
    let rid = request_id.clone();
    let handle = tokio::spawn(async move { handle_call(app, req, next, rid).await });
    let resp = match handle.await {
        Ok(resp) => resp,
        Err(_) => ApiError::api("The sandbox failed while handling this request.").into_response(),
    };
    finish_headers(resp, &request_id)
}

async fn handle_call(app: Arc<App>, req: Request, next: Next, request_id: String) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let fault = app.with(|state| take_fault(&mut state.api_faults, &path));
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::invalid("The request body is too large.")
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .into_response();
        }
    };
    let key = if parts.method == Method::POST {
        parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };
    let fingerprint = Params::fingerprint(&body);

    if let Some((kind, FaultTiming::Before)) = fault {
        if let ApiFaultKind::Hang { ms } = kind {
            tokio::time::sleep(Duration::from_millis(ms.min(MAX_HANG_MS))).await;
        }
        return injected_failure();
    }

    let idem_key = match check_idempotency(&app, key, &path, &fingerprint) {
        Ok(Idem::Replay(resp)) => return after_fault(fault, resp).await,
        Ok(Idem::Fresh(k)) => Some(k),
        Ok(Idem::None) => None,
        Err(e) => return e.into_response(),
    };
    parts.extensions.insert(RequestContext {
        request_id,
        idempotency_key: idem_key.clone(),
    });
    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;

    let (resp_parts, resp_body) = resp.into_parts();
    let bytes = axum::body::to_bytes(resp_body, MAX_RESPONSE_BYTES)
        .await
        .unwrap_or_default();
    if let Some(k) = idem_key {
        // Stripe saves results once an endpoint started executing; validation errors are not
        // saved. Here: successes and card declines are saved, everything else frees the key.
        let status = resp_parts.status;
        app.with(|state| {
            if status.is_success() || status == StatusCode::PAYMENT_REQUIRED {
                state.remember_key(
                    k,
                    IdemEntry::Done {
                        endpoint: path.clone(),
                        fingerprint,
                        created: now(),
                        status: status.as_u16(),
                        body: bytes.clone(),
                    },
                );
            } else {
                state.forget_key(&k);
            }
        });
    }
    after_fault(fault, Response::from_parts(resp_parts, Body::from(bytes))).await
}

async fn after_fault(fault: Option<(ApiFaultKind, FaultTiming)>, resp: Response) -> Response {
    match fault {
        Some((ApiFaultKind::Fail, FaultTiming::After)) => injected_failure(),
        Some((ApiFaultKind::Hang { ms }, FaultTiming::After)) => {
            tokio::time::sleep(Duration::from_millis(ms.min(MAX_HANG_MS))).await;
            resp
        }
        _ => resp,
    }
}

fn injected_failure() -> Response {
    ApiError::api("An unknown error occurred (injected by the Stripe sandbox).").into_response()
}
