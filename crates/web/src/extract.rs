//! Request parsing at the edge: JSON bodies, money and quantity fields,
//! idempotency keys and pagination, each failure an [`ApiError`] naming the
//! field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tollgate_core::{AccountId, IdempotencyKey, Micros, ParseMoneyError, Quantity};
use tollgate_store::{MAX_PAGE_SIZE, PageRequest};
use utoipa::IntoParams;

use crate::error::{ApiError, ErrorCode};

/// Header carrying the idempotency key of a money-moving POST.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Response header set when a response is the replay of an earlier one.
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";
/// Items per page when `limit` is absent.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// A JSON body whose errors come out in the API's error format.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body is over the size limit",
                )
            } else {
                ApiError::invalid_request(format!("the request body could not be read: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document into `T`, which must come from a JSON object.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "the request body must be a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::invalid_request(format!(
            "the request body is not valid JSON: {}",
            without_position(&error)
        ))
    })?;
    from_value(value)
}

/// Deserialises one JSON object (a body, a batch event) into `T`. serde
/// would also fill a struct from an array by position; the API takes objects only.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid_request("expected a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(deserialize_error)
}

fn deserialize_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let message = without_position(&error.into_inner());
    // serde reports a missing field at its parent; name the field itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        let param = join_path(&path, field);
        return ApiError::invalid_request(format!("{param} is required")).with_param(param);
    }
    if path == "." {
        return ApiError::invalid_request(message);
    }
    ApiError::invalid_request(format!("{path}: {message}")).with_param(path)
}

fn join_path(parent: &str, field: &str) -> String {
    if parent == "." {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_owned(),
        None => text,
    }
}

/// Parses a money field: a JSON string in the API's decimal form.
pub fn parse_money(value: &Value, param: &str) -> Result<Micros, ApiError> {
    let Value::String(text) = value else {
        return Err(ApiError::invalid_amount(
            param,
            format!("{param} must be a decimal string such as \"25.00\""),
        ));
    };
    Micros::parse(text).map_err(|error| {
        let reason = match error {
            ParseMoneyError::Empty => "must not be empty".to_owned(),
            ParseMoneyError::InvalidFormat => "must be a decimal string such as \"25.00\"".to_owned(),
            ParseMoneyError::TooManyDecimals => "has more than 6 decimals".to_owned(),
            ParseMoneyError::OutOfRange => "is too large".to_owned(),
        };
        ApiError::invalid_amount(param, format!("{param} {reason}"))
    })
}

/// Parses a quantity: a JSON integer from 1 to core's `MAX_QUANTITY`.
pub fn parse_quantity(value: &Value, param: &str) -> Result<Quantity, ApiError> {
    let refused = || {
        ApiError::invalid_request(format!(
            "{param} must be a whole number from 1 to {}",
            tollgate_core::ids::MAX_QUANTITY
        ))
        .with_param(param)
    };
    // Strings ("1"), floats (1.5, 1.0), negatives and zero are all refused.
    let count = value.as_u64().ok_or_else(refused)?;
    Quantity::new(count).map_err(|_| refused())
}

/// Parses a whole number of seconds within `range`.
pub fn parse_seconds(
    value: &Value,
    param: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    value
        .as_i64()
        .filter(|seconds| range.contains(seconds))
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "{param} must be a whole number of seconds from {} to {}",
                range.start(),
                range.end()
            ))
            .with_param(param)
        })
}

/// Parses an account id from the request body.
pub fn parse_account_id(text: &str, param: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(text).map_err(|error| ApiError::invalid_request(error.to_string()).with_param(param))
}

/// Parses an account id from the path: one that cannot exist is simply not found.
pub fn path_account_id(text: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(text).map_err(|_| ApiError::not_found(format!("no such account: `{text}`")))
}

fn parse_key(text: &str) -> Result<IdempotencyKey, ApiError> {
    IdempotencyKey::parse(text)
        .map_err(|error| ApiError::invalid_request(error.to_string()).with_param("idempotency_key"))
}

/// The `Idempotency-Key` header, if sent.
#[derive(Clone, Debug, Default)]
pub struct IdempotencyHeader(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<IdempotencyHeader, ApiError> {
        header_key(&parts.headers).map(IdempotencyHeader)
    }
}

fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::invalid_request("the Idempotency-Key header must be printable ASCII")
            .with_param("idempotency_key")
    })?;
    Ok(Some(text.to_owned()))
}

impl IdempotencyHeader {
    /// The key from the body or the header; both may be sent, but must agree.
    pub fn resolve(&self, body: Option<&str>) -> Result<Option<IdempotencyKey>, ApiError> {
        let text = match (body, self.0.as_deref()) {
            (Some(body), Some(header)) if body != header => {
                return Err(ApiError::invalid_request(
                    "the idempotency_key field and the Idempotency-Key header differ",
                )
                .with_param("idempotency_key"));
            }
            (Some(text), _) | (None, Some(text)) => text,
            (None, None) => return Ok(None),
        };
        parse_key(text).map(Some)
    }

    /// Like [`IdempotencyHeader::resolve`], for requests that must carry a key.
    pub fn require(&self, body: Option<&str>) -> Result<IdempotencyKey, ApiError> {
        self.resolve(body)?.ok_or_else(|| {
            ApiError::invalid_request(
                "idempotency_key is required (in the body or the Idempotency-Key header)",
            )
            .with_param("idempotency_key")
        })
    }
}

/// Parses a batch event's own key (no header applies to batch events).
pub fn require_key(body: Option<&str>) -> Result<IdempotencyKey, ApiError> {
    IdempotencyHeader(None).require(body)
}

/// `?limit=` and `?starting_after=`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Id of the item after which the page starts.
    starting_after: Option<String>,
}

/// Validated pagination.
pub struct Pagination(pub PageRequest);

impl<S: Send + Sync> FromRequestParts<S> for Pagination {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Pagination, ApiError> {
        let Query(query) = Query::<PageQuery>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid_request(format!("invalid query string: {rejection}")))?;
        let limit = match query.limit.as_deref() {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "limit must be a whole number from 1 to {MAX_PAGE_SIZE}"
                    ))
                    .with_param("limit")
                })?,
        };
        let starting_after = match query.starting_after {
            Some(cursor) if cursor.is_empty() => {
                return Err(ApiError::invalid_request("starting_after must not be empty")
                    .with_param("starting_after"));
            }
            other => other,
        };
        Ok(Pagination(PageRequest::new(limit, starting_after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        action: String,
        nested: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    fn param(error: &ApiError) -> Option<String> {
        error.body().error.param
    }

    #[test]
    fn json_errors_name_the_field() {
        let error = parse_json::<Probe>(b"{").unwrap_err();
        assert_eq!((error.code(), param(&error)), (ErrorCode::InvalidRequest, None));
        let error = parse_json::<Probe>(b"{}").unwrap_err();
        assert_eq!(param(&error).as_deref(), Some("action"));
        let error = parse_json::<Probe>(br#"{"action": 5}"#).unwrap_err();
        assert_eq!(param(&error).as_deref(), Some("action"));
        let error = parse_json::<Probe>(br#"{"action": "a", "nested": {}}"#).unwrap_err();
        assert_eq!(param(&error).as_deref(), Some("nested.name"));
        let error = parse_json::<Probe>(b"[]").unwrap_err();
        assert_eq!(param(&error), None);
        assert!(parse_json::<Probe>(br#"{"action": "a"} x"#).is_err());
        assert!(parse_json::<Probe>(b"  ").is_err());
    }

    #[test]
    fn quantities_are_positive_integers() {
        assert_eq!(parse_quantity(&json!(3), "quantity").unwrap().get(), 3);
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(1.0),
            json!("1"),
            json!(null),
            json!(1e13),
        ] {
            let error = parse_quantity(&bad, "quantity").unwrap_err();
            assert_eq!(param(&error).as_deref(), Some("quantity"), "{bad}");
        }
    }

    #[test]
    fn money_is_a_decimal_string() {
        assert_eq!(
            parse_money(&json!("0.004500"), "amount").unwrap(),
            Micros::new(4_500)
        );
        for bad in [
            json!(25),
            json!("1.0000001"),
            json!("1e3"),
            json!(""),
            json!("99999999999999999999"),
        ] {
            let error = parse_money(&bad, "amount").unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidAmount, "{bad}");
        }
    }

    #[test]
    fn keys_from_body_and_header_must_agree() {
        let header = IdempotencyHeader(Some("k1".to_owned()));
        assert_eq!(header.require(Some("k1")).unwrap().as_str(), "k1");
        assert_eq!(header.require(None).unwrap().as_str(), "k1");
        assert!(header.require(Some("k2")).is_err());
        assert!(require_key(None).is_err());
        assert!(require_key(Some("")).is_err());
        assert!(require_key(Some(&"k".repeat(256))).is_err());
        assert!(require_key(Some(&"k".repeat(255))).is_ok());
    }
}
