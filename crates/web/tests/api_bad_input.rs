//! Issue 2's "bad input gets a clear error and changes nothing": each case
//! checks the error code and that balances, ledger and spend did not move.

mod common;

use common::{Options, TestServer, assert_error, book_with_deluxe};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ACCOUNT: &str = "victim";

/// A server with an account that has a balance and some history.
async fn server() -> TestServer {
    let server = TestServer::start_with(Options {
        price_book: book_with_deluxe(),
        ..Options::default()
    })
    .await;
    server.funded_account(ACCOUNT, "1.00").await;
    let (status, _) = server.usage(ACCOUNT, "email_finder", 1, "history").await;
    assert_eq!(status, StatusCode::OK);
    server
}

/// Sends `request`, checks the error, and checks that nothing changed.
async fn refused(
    server: &TestServer,
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
    param: Option<&str>,
) -> Value {
    let before = server.snapshot(ACCOUNT).await;
    let response = server.send(request).await;
    assert_error(&response, status, code, param);
    assert_eq!(
        server.snapshot(ACCOUNT).await,
        before,
        "state changed after {}",
        response.1
    );
    response.1
}

fn usage_path() -> String {
    format!("/v1/accounts/{ACCOUNT}/usage")
}

async fn refused_usage(
    server: &TestServer,
    body: Value,
    status: StatusCode,
    code: &str,
    param: Option<&str>,
) -> Value {
    let request = server.request(Method::POST, &usage_path()).json(&body);
    refused(server, request, status, code, param).await
}

fn raw(server: &TestServer, path: &str, body: &'static str) -> reqwest::RequestBuilder {
    server
        .request(Method::POST, path)
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let server = server().await;
    let path = usage_path();
    for body in [
        r#"{"action": "email_finder","#,
        "not json",
        "",
        "[1, 2]",
        "42",
        r#"{"action": "api"} trailing"#,
    ] {
        refused(
            &server,
            raw(&server, &path, body),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn missing_fields_are_named() {
    let server = server().await;
    for (body, param) in [
        (json!({"quantity": 1, "idempotency_key": "k"}), "action"),
        (
            json!({"action": "email_finder", "idempotency_key": "k"}),
            "quantity",
        ),
        (
            json!({"action": "email_finder", "quantity": 1}),
            "idempotency_key",
        ),
    ] {
        refused_usage(
            &server,
            body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        )
        .await;
    }
}

#[tokio::test]
async fn wrong_types_are_named() {
    let server = server().await;
    for (body, param) in [
        (
            json!({"action": 5, "quantity": 1, "idempotency_key": "k"}),
            "action",
        ),
        (
            json!({"action": ["api"], "quantity": 1, "idempotency_key": "k"}),
            "action",
        ),
        (
            json!({"action": "api", "quantity": 1, "idempotency_key": 7}),
            "idempotency_key",
        ),
        (
            json!({"action": "api", "quantity": {"n": 1}, "idempotency_key": "k"}),
            "quantity",
        ),
    ] {
        refused_usage(
            &server,
            body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        )
        .await;
    }
}

#[tokio::test]
async fn quantities_must_be_positive_whole_numbers() {
    let server = server().await;
    for quantity in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1.0),
        json!("1"),
        json!(null),
        json!(1_000_000_000_001_u64),
    ] {
        let body = json!({"action": "email_finder", "quantity": quantity, "idempotency_key": "q"});
        refused_usage(
            &server,
            body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("quantity"),
        )
        .await;
    }
    // The limit itself is fine: free actions fit any balance.
    let (status, body) = server.usage(ACCOUNT, "ui_search", 1_000_000_000_000, "max").await;
    assert_eq!((status, body["amount"].as_str()), (StatusCode::OK, Some("0.00")));
}

#[tokio::test]
async fn quantity_times_price_overflow_is_refused() {
    let server = server().await;
    let body = json!({"action": "deluxe", "quantity": 1_000_000_000_000_u64, "idempotency_key": "boom"});
    refused_usage(
        &server,
        body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("quantity"),
    )
    .await;
    // Same in a batch slot.
    let event = json!({"events": [{"account_id": ACCOUNT, "action": "deluxe", "quantity": 1_000_000_000_000_u64, "idempotency_key": "boom"}]});
    let before = server.snapshot(ACCOUNT).await;
    let (status, body) = server.post("/v1/usage/batch", event).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["error"]["param"], "quantity");
    assert_eq!(server.snapshot(ACCOUNT).await, before);
}

#[tokio::test]
async fn unknown_actions_are_bad_requests() {
    let server = server().await;
    for action in ["teleport", "a b", ""] {
        let body = json!({"action": action, "quantity": 1, "idempotency_key": "x"});
        refused_usage(
            &server,
            body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("action"),
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_accounts_are_not_found() {
    let server = server().await;
    let body = json!({"action": "email_finder", "quantity": 1, "idempotency_key": "x"});
    for path in ["/v1/accounts/nobody/usage", "/v1/accounts/no%20body/usage"] {
        let request = server.request(Method::POST, path).json(&body);
        refused(&server, request, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    for path in [
        "/v1/accounts/nobody",
        "/v1/accounts/nobody/billing",
        "/v1/accounts/nobody/transactions",
        "/v1/holds/hold_nothing",
    ] {
        refused(
            &server,
            server.request(Method::GET, path),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    let grant = server
        .request(Method::POST, "/v1/accounts/nobody/grants")
        .json(&json!({"amount": "1.00", "reason": "x"}));
    refused(&server, grant, StatusCode::NOT_FOUND, "not_found", None).await;
}

#[tokio::test]
async fn insufficient_balance_charges_nothing() {
    let server = server().await;
    let body = json!({"action": "email_finder", "quantity": 100, "idempotency_key": "big"});
    let error = refused_usage(
        &server,
        body,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        None,
    )
    .await;
    assert_eq!(error["error"]["spendable"], "0.97");
    assert_eq!(error["error"]["required"], "3.00");
    // The refused key was not consumed: the same key works once funds arrive.
    server.grant(ACCOUNT, "5.00").await;
    let (status, _) = server.usage(ACCOUNT, "email_finder", 100, "big").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn idempotency_keys_are_bounded() {
    let server = server().await;
    let long = "k".repeat(256);
    for key in ["", long.as_str(), "line\nbreak"] {
        let body = json!({"action": "email_finder", "quantity": 1, "idempotency_key": key});
        refused_usage(
            &server,
            body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("idempotency_key"),
        )
        .await;
    }
    let mismatch = server
        .request(Method::POST, &usage_path())
        .header("Idempotency-Key", "header-key")
        .json(&json!({"action": "email_finder", "quantity": 1, "idempotency_key": "body-key"}));
    refused(
        &server,
        mismatch,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("idempotency_key"),
    )
    .await;
    let long_header = server
        .request(Method::POST, &format!("/v1/accounts/{ACCOUNT}/grants"))
        .header("Idempotency-Key", long.as_str())
        .json(&json!({"amount": "1.00", "reason": "x"}));
    refused(
        &server,
        long_header,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("idempotency_key"),
    )
    .await;
}

#[tokio::test]
async fn money_must_be_a_bounded_decimal_string() {
    let server = server().await;
    let grants = format!("/v1/accounts/{ACCOUNT}/grants");
    for amount in [
        json!("1.0000001"),
        json!("-0.0000001"),
        json!(25),
        json!(25.5),
        json!("1e3"),
        json!(" 1"),
        json!("abc"),
        json!(""),
        json!(null),
        json!("99999999999999999999"),
        json!("2000000.00"),
        json!("-2000000.00"),
        json!("0"),
    ] {
        let request = server
            .request(Method::POST, &grants)
            .json(&json!({"amount": amount, "reason": "x"}));
        refused(
            &server,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            Some("amount"),
        )
        .await;
    }
    // A debit larger than the balance would take money already spent.
    let request = server
        .request(Method::POST, &grants)
        .json(&json!({"amount": "-50.00", "reason": "x"}));
    refused(
        &server,
        request,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        None,
    )
    .await;
    for (body, param) in [
        (json!({"amount": "1.00"}), "reason"),
        (json!({"amount": "1.00", "reason": "   "}), "reason"),
        (json!({"reason": "x"}), "amount"),
    ] {
        let request = server.request(Method::POST, &grants).json(&body);
        refused(
            &server,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        )
        .await;
    }
}

#[tokio::test]
async fn hold_requests_are_validated() {
    let server = server().await;
    let holds = format!("/v1/accounts/{ACCOUNT}/holds");
    let hold = |amount: Value, extra: Value| {
        let mut body = json!({"action": "export", "amount": amount, "idempotency_key": "h"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        server.request(Method::POST, &holds).json(&body)
    };
    for amount in [
        json!("-1.00"),
        json!("0.00"),
        json!("5000000.00"),
        json!("1.1234567"),
        json!(5),
    ] {
        refused(
            &server,
            hold(amount, json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            Some("amount"),
        )
        .await;
    }
    for ttl in [json!(0), json!(-5), json!(604_801), json!("60"), json!(1.5)] {
        let request = hold(json!("0.50"), json!({"ttl_seconds": ttl}));
        refused(
            &server,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("ttl_seconds"),
        )
        .await;
    }
    let unknown = hold(json!("0.50"), json!({"action": "teleport"}));
    refused(
        &server,
        unknown,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("action"),
    )
    .await;
    let too_much = hold(json!("50.00"), json!({}));
    refused(
        &server,
        too_much,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        None,
    )
    .await;
    let keyless = server
        .request(Method::POST, &holds)
        .json(&json!({"action": "export", "amount": "0.50"}));
    refused(
        &server,
        keyless,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("idempotency_key"),
    )
    .await;
}

#[tokio::test]
async fn batches_over_a_thousand_events_are_refused_whole() {
    let server = server().await;
    let events: Vec<Value> = (0..1001)
        .map(|index| json!({"account_id": ACCOUNT, "action": "email_finder", "quantity": 1, "idempotency_key": format!("b{index}")}))
        .collect();
    let request = server
        .request(Method::POST, "/v1/usage/batch")
        .json(&json!({"events": events}));
    refused(
        &server,
        request,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events"),
    )
    .await;
    let not_a_list = server
        .request(Method::POST, "/v1/usage/batch")
        .json(&json!({"events": {}}));
    refused(
        &server,
        not_a_list,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events"),
    )
    .await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let server = server().await;
    let padding = "x".repeat(tollgate_web::DEFAULT_MAX_BODY_BYTES + 1);
    let body =
        format!(r#"{{"action": "email_finder", "quantity": 1, "idempotency_key": "k", "pad": "{padding}"}}"#);
    let request = server
        .request(Method::POST, &usage_path())
        .header("content-type", "application/json")
        .body(body);
    refused(
        &server,
        request,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401() {
    let server = server().await;
    let body = json!({"action": "email_finder", "quantity": 1, "idempotency_key": "auth"});
    let url = server.url(&usage_path());
    for auth in [
        None,
        Some("Bearer tg_sk_wrong"),
        Some("Basic b3BlcmF0b3I6"),
        Some("Bearer "),
    ] {
        let mut request = server.client.post(&url).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        refused(&server, request, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    }
}

#[tokio::test]
async fn pagination_parameters_are_validated() {
    let server = server().await;
    let transactions = format!("/v1/accounts/{ACCOUNT}/transactions");
    for query in ["limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1.5"] {
        let request = server.request(Method::GET, &format!("{transactions}?{query}"));
        refused(
            &server,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("limit"),
        )
        .await;
    }
    for query in ["starting_after=txn_nothing", "starting_after="] {
        let request = server.request(Method::GET, &format!("{transactions}?{query}"));
        refused(
            &server,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("starting_after"),
        )
        .await;
    }
    let request = server.request(Method::GET, "/v1/accounts?limit=500");
    refused(
        &server,
        request,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("limit"),
    )
    .await;
}

#[tokio::test]
async fn account_creation_is_validated() {
    let server = server().await;
    for (body, code, param) in [
        (
            json!({"id": ACCOUNT, "name": "Again", "email": "a@b.test"}),
            "account_exists",
            "id",
        ),
        (
            json!({"id": "bad id!", "name": "X", "email": "a@b.test"}),
            "invalid_request",
            "id",
        ),
        (
            json!({"id": "x".repeat(65), "name": "X", "email": "a@b.test"}),
            "invalid_request",
            "id",
        ),
        (
            json!({"id": "ok", "name": "X", "email": "not-an-email"}),
            "invalid_request",
            "email",
        ),
        (
            json!({"id": "ok", "name": " ", "email": "a@b.test"}),
            "invalid_request",
            "name",
        ),
        (
            json!({"id": "ok", "email": "a@b.test"}),
            "invalid_request",
            "name",
        ),
        (
            json!({"id": 7, "name": "X", "email": "a@b.test"}),
            "invalid_request",
            "id",
        ),
    ] {
        let status = if code == "account_exists" {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        let request = server.request(Method::POST, "/v1/accounts").json(&body);
        refused(&server, request, status, code, Some(param)).await;
    }
    let (status, _) = server.get("/v1/accounts/ok").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
