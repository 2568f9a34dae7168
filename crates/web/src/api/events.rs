//! Events and operator webhook endpoints (API.md "Events"): `GET /v1/events`,
//! `GET /v1/events/{id}`, `POST`/`GET /v1/webhook_endpoints`,
//! `DELETE /v1/webhook_endpoints/{id}` and its delivery log.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tollgate_core::{EventSelection, EventType};
use tollgate_store::{DeliveryRecord, EventFilter, EventRecord, NewWebhookEndpoint, WebhookEndpointRecord};
use utoipa::{IntoParams, ToSchema};

use crate::api::json::timestamp;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, PageQuery, Pagination, parse_account_id};
use crate::state::AppState;

/// Longest endpoint URL accepted.
pub const MAX_ENDPOINT_URL_BYTES: usize = 2_048;
/// Most endpoints an operator may register (each event fans out to all of them).
pub const MAX_WEBHOOK_ENDPOINTS: usize = 50;

/// One event, as listed and as delivered to endpoints (the same body, the same id).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Event {
    /// `evt_…`, stable across deliveries: receivers deduplicate by it.
    pub id: String,
    /// Always `event`.
    #[schema(example = "event")]
    pub object: &'static str,
    /// `balance.low`, `topup.succeeded`, …
    #[serde(rename = "type")]
    #[schema(example = "balance.low")]
    pub kind: &'static str,
    /// Whose account.
    pub account_id: String,
    /// What happened, by type (amounts are decimal strings).
    #[schema(value_type = Object)]
    pub data: Value,
    /// When.
    pub created_at: String,
}

fn money(amount: Option<tollgate_core::Micros>) -> Value {
    amount.map_or(Value::Null, |amount| Value::String(amount.to_string()))
}

impl Event {
    /// Renders a recorded event, with the fields its type carries.
    pub fn render(record: &EventRecord) -> Event {
        let data = match record.kind {
            EventType::BalanceLow => json!({
                "available_balance": money(record.balance),
                "low_level": money(record.amount),
            }),
            EventType::BalanceDepleted => json!({ "available_balance": money(record.balance) }),
            EventType::TopupSucceeded
            | EventType::TopupFailed
            | EventType::AutoRechargeSucceeded
            | EventType::AutoRechargeFailed
            | EventType::AutoRechargeActionRequired => json!({
                "topup_id": record.reference,
                "amount": money(record.amount),
                "available_balance": money(record.balance),
                "failure_code": record.detail,
            }),
            EventType::TierUpgraded => json!({
                "tier": record.reference,
                "previous_tier": record.detail,
            }),
            EventType::PaymentMethodUpdated => json!({
                "payment_method": record.reference.as_ref().map(|id| json!({
                    "id": id,
                    "card": record.detail,
                })),
            }),
            EventType::InvoiceCreated | EventType::InvoicePaid => json!({
                "invoice_id": record.reference,
                "amount": money(record.amount),
                "number": record.detail,
            }),
        };
        Event {
            id: record.id.clone(),
            object: "event",
            kind: record.kind.code(),
            account_id: record.account.to_string(),
            data,
            created_at: timestamp(record.created_at),
        }
    }
}

/// A page of events, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventList {
    /// The events.
    pub data: Vec<Event>,
    /// True when more follow.
    pub has_more: bool,
}

/// `?account_id=&type=` filters of the event list.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this account's events.
    account_id: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
}

impl EventQuery {
    fn filter(&self) -> Result<EventFilter, ApiError> {
        let account = self
            .account_id
            .as_deref()
            .map(|id| parse_account_id(id, "account_id"))
            .transpose()?;
        let kind = self.kind.as_deref().map(parse_event_type).transpose()?;
        Ok(EventFilter { account, kind })
    }
}

fn parse_event_type(code: &str) -> Result<EventType, ApiError> {
    EventType::parse(code).ok_or_else(|| {
        ApiError::invalid_request(format!(
            "`{code}` is not an event type; one of: {}",
            EventType::ALL.map(EventType::code).join(", ")
        ))
        .with_param("type")
    })
}

/// Recorded events, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventQuery, PageQuery),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 400, description = "Unknown type, bad account id or pagination", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    Query(query): Query<EventQuery>,
    Pagination(page): Pagination,
) -> Result<Json<EventList>, ApiError> {
    let page = state.store().list_events(query.filter()?, page).await?;
    Ok(Json(EventList {
        data: page.data.iter().map(Event::render).collect(),
        has_more: page.has_more,
    }))
}

/// One event.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    params(("id" = String, Path, description = "Event id (`evt_…`)")),
    responses(
        (status = 200, description = "The event", body = Event),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    )
)]
pub async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Event>, ApiError> {
    Ok(Json(Event::render(&state.store().event(&id).await?)))
}

/// Body of `POST /v1/webhook_endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WebhookEndpointRequest {
    /// Where deliveries are POSTed (http or https).
    #[schema(example = "https://example.com/tollgate/webhooks")]
    pub url: String,
    /// `["*"]` for every type, or the types wanted.
    #[schema(example = json!(["*"]))]
    pub events: Vec<String>,
}

/// A registered endpoint. The secret is shown when it is created and in the list, for
/// the operator's own systems: only API-key holders see either.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    /// `we_…`.
    pub id: String,
    /// Always `webhook_endpoint`.
    #[schema(example = "webhook_endpoint")]
    pub object: &'static str,
    /// Where deliveries go.
    pub url: String,
    /// `["*"]` or the selected types.
    pub events: Vec<String>,
    /// The `Tollgate-Signature` key (`whsec_…`).
    pub secret: String,
    /// `enabled` or `disabled`.
    #[schema(example = "enabled")]
    pub status: &'static str,
    /// When it was registered.
    pub created_at: String,
}

impl WebhookEndpoint {
    fn render(record: &WebhookEndpointRecord) -> WebhookEndpoint {
        WebhookEndpoint {
            id: record.id.clone(),
            object: "webhook_endpoint",
            url: record.url.clone(),
            events: match &record.events {
                EventSelection::All => vec!["*".to_owned()],
                EventSelection::Only(types) => types.iter().map(|kind| kind.code().to_owned()).collect(),
            },
            secret: record.secret.clone(),
            status: if record.disabled_at.is_some() {
                "disabled"
            } else {
                "enabled"
            },
            created_at: timestamp(record.created_at),
        }
    }
}

/// The registered endpoints, oldest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookEndpointList {
    /// The endpoints.
    pub data: Vec<WebhookEndpoint>,
    /// Always false: the list is bounded by [`MAX_WEBHOOK_ENDPOINTS`].
    pub has_more: bool,
}

fn parse_endpoint_url(url: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::invalid_request(format!("url {why}")).with_param("url");
    if url.len() > MAX_ENDPOINT_URL_BYTES {
        return Err(invalid(&format!("is longer than {MAX_ENDPOINT_URL_BYTES} bytes")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|error| invalid(&format!("is not a URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid("must be an http:// or https:// URL with a host"));
    }
    Ok(parsed.to_string())
}

fn parse_selection(events: &[String]) -> Result<EventSelection, ApiError> {
    if events.iter().any(|code| code == "*") {
        if events.len() > 1 {
            return Err(
                ApiError::invalid_request("`*` selects every event: list it alone").with_param("events"),
            );
        }
        return Ok(EventSelection::All);
    }
    let types = events
        .iter()
        .enumerate()
        .map(|(index, code)| {
            parse_event_type(code).map_err(|error| error.with_param(format!("events[{index}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    EventSelection::only(types).ok_or_else(|| {
        ApiError::invalid_request("events must name at least one type, or `*`").with_param("events")
    })
}

fn new_secret() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("whsec_{random}")
}

/// Registers an endpoint that receives the events recorded from now on, signed with
/// `Tollgate-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")`.
#[utoipa::path(
    post,
    path = "/v1/webhook_endpoints",
    tag = "events",
    request_body = WebhookEndpointRequest,
    responses(
        (status = 201, description = "The endpoint, with its signing secret", body = WebhookEndpoint),
        (status = 400, description = "Bad URL or unknown event type", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "Too many endpoints", body = ErrorBody),
    )
)]
pub async fn create_webhook_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<WebhookEndpointRequest>,
) -> Result<(StatusCode, Json<WebhookEndpoint>), ApiError> {
    let url = parse_endpoint_url(&request.url)?;
    let events = parse_selection(&request.events)?;
    let enabled = state
        .store()
        .webhook_endpoints()
        .await?
        .iter()
        .filter(|endpoint| endpoint.disabled_at.is_none())
        .count();
    if enabled >= MAX_WEBHOOK_ENDPOINTS {
        return Err(ApiError::new(
            crate::error::ErrorCode::Conflict,
            format!("at most {MAX_WEBHOOK_ENDPOINTS} endpoints may be enabled: delete one first"),
        ));
    }
    let record = state
        .store()
        .create_webhook_endpoint(NewWebhookEndpoint {
            id: format!("we_{}", uuid::Uuid::now_v7().simple()),
            url,
            secret: new_secret(),
            events,
            actor: caller.actor,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(WebhookEndpoint::render(&record))))
}

/// The registered endpoints.
#[utoipa::path(
    get,
    path = "/v1/webhook_endpoints",
    tag = "events",
    responses(
        (status = 200, description = "Every endpoint, oldest first", body = WebhookEndpointList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub async fn list_webhook_endpoints(
    State(state): State<AppState>,
) -> Result<Json<WebhookEndpointList>, ApiError> {
    let endpoints = state.store().webhook_endpoints().await?;
    Ok(Json(WebhookEndpointList {
        data: endpoints.iter().map(WebhookEndpoint::render).collect(),
        has_more: false,
    }))
}

/// Switches an endpoint off: nothing more is sent to it, its pending deliveries stop.
#[utoipa::path(
    delete,
    path = "/v1/webhook_endpoints/{id}",
    tag = "events",
    params(("id" = String, Path, description = "Endpoint id (`we_…`)")),
    responses(
        (status = 200, description = "The endpoint, disabled", body = WebhookEndpoint),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn delete_webhook_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    let record = state.store().disable_webhook_endpoint(&id, caller.actor).await?;
    Ok(Json(WebhookEndpoint::render(&record)))
}

/// One event's delivery to one endpoint.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// Always `delivery`.
    #[schema(example = "delivery")]
    pub object: &'static str,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event sent.
    pub event: Event,
    /// `pending`, `delivered` or `failed` (given up after the retry window).
    #[schema(example = "delivered")]
    pub status: &'static str,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    /// The endpoint's HTTP status at the last attempt.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<String>,
    /// When it was acknowledged.
    pub delivered_at: Option<String>,
}

impl Delivery {
    fn render(record: &DeliveryRecord) -> Delivery {
        let pending = record.status == tollgate_store::DeliveryStatus::Pending;
        Delivery {
            object: "delivery",
            endpoint_id: record.endpoint.clone(),
            event: Event::render(&record.event),
            status: record.status.code(),
            attempts: record.attempts,
            next_attempt_at: pending.then(|| timestamp(record.next_attempt_at)),
            last_status_code: record.last_status_code,
            last_error: record.last_error.clone(),
            last_attempt_at: record.last_attempt_at.map(timestamp),
            delivered_at: record.delivered_at.map(timestamp),
        }
    }
}

/// A page of deliveries, newest event first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    pub data: Vec<Delivery>,
    /// True when more follow.
    pub has_more: bool,
}

/// An endpoint's delivery log: every event sent or to be sent to it, and how it went.
#[utoipa::path(
    get,
    path = "/v1/webhook_endpoints/{id}/deliveries",
    tag = "events",
    params(("id" = String, Path, description = "Endpoint id (`we_…`)"), PageQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Pagination(page): Pagination,
) -> Result<Json<DeliveryList>, ApiError> {
    let page = state.store().deliveries(&id, page).await?;
    Ok(Json(DeliveryList {
        data: page.data.iter().map(Delivery::render).collect(),
        has_more: page.has_more,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_accept_star_alone_or_known_types() {
        assert_eq!(parse_selection(&["*".to_owned()]).unwrap(), EventSelection::All);
        assert_eq!(
            parse_selection(&["topup.failed".to_owned(), "balance.low".to_owned()]).unwrap(),
            EventSelection::only(vec![EventType::BalanceLow, EventType::TopupFailed]).unwrap()
        );
        assert!(parse_selection(&[]).is_err());
        assert!(parse_selection(&["*".to_owned(), "balance.low".to_owned()]).is_err());
        assert!(parse_selection(&["balance.low".to_owned(), "nope".to_owned()]).is_err());
    }

    #[test]
    fn endpoint_urls_must_be_http_with_a_host() {
        assert!(parse_endpoint_url("https://example.com/hook").is_ok());
        assert!(parse_endpoint_url("http://127.0.0.1:9/x").is_ok());
        assert!(parse_endpoint_url("ftp://example.com").is_err());
        assert!(parse_endpoint_url("not a url").is_err());
        assert!(parse_endpoint_url(&format!("https://example.com/{}", "a".repeat(3_000))).is_err());
    }
}
