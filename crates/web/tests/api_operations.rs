//! Operations endpoints, auth, and the error format outside the handlers.

mod common;

use common::{TestServer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn healthz_answers_without_a_key() {
    let server = TestServer::start().await;
    let response = server.client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn the_openapi_document_lists_every_path() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with('3'),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "Tollgate");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let expected: &[(&str, &[&str])] = &[
        ("/v1/accounts", &["get", "post"]),
        ("/v1/accounts/{id}", &["get"]),
        ("/v1/accounts/{id}/usage", &["post"]),
        ("/v1/usage/batch", &["post"]),
        ("/v1/accounts/{id}/holds", &["post"]),
        ("/v1/holds/{id}", &["get"]),
        ("/v1/holds/{id}/capture", &["post"]),
        ("/v1/holds/{id}/void", &["post"]),
        ("/v1/accounts/{id}/billing", &["get"]),
        ("/v1/tiers", &["get"]),
        ("/v1/accounts/{id}/transactions", &["get"]),
        ("/v1/accounts/{id}/grants", &["post"]),
        ("/v1/audit", &["get"]),
        ("/v1/accounts/{id}/payment_method/setup", &["post"]),
        ("/v1/accounts/{id}/payment_method", &["delete"]),
        ("/v1/accounts/{id}/topups", &["get", "post"]),
        ("/v1/topups/{topup_id}", &["get"]),
        ("/v1/topups/{topup_id}/refund", &["post"]),
        ("/v1/topups/{topup_id}/receipt", &["get"]),
        ("/v1/accounts/{id}/auto_recharge", &["put"]),
        ("/v1/portal_sessions", &["post"]),
        ("/v1/accounts/{id}/plan", &["get", "put"]),
        ("/v1/accounts/{id}/invoices", &["get"]),
        ("/v1/invoices/{invoice_id}", &["get"]),
        ("/v1/invoices/{invoice_id}/document", &["get"]),
        ("/v1/invoices/{invoice_id}/pay", &["post"]),
        ("/v1/invoices/{invoice_id}/mark_paid", &["post"]),
        ("/v1/events", &["get"]),
        ("/v1/events/{id}", &["get"]),
        ("/v1/webhook_endpoints", &["get", "post"]),
        ("/v1/webhook_endpoints/{id}", &["delete"]),
        ("/v1/webhook_endpoints/{id}/deliveries", &["get"]),
        ("/checkout/return", &["get"]),
        ("/webhooks/stripe", &["post"]),
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ];
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(
        paths.len(),
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in expected {
        for method in *methods {
            assert!(paths[*path][*method].is_object(), "{method} {path} missing");
        }
    }
    let usage = &paths["/v1/accounts/{id}/usage"]["post"];
    for status in ["200", "400", "401", "402", "404", "409"] {
        assert!(
            usage["responses"][status].is_object(),
            "usage response {status} missing"
        );
    }
    let schemes = &document["components"]["securitySchemes"]["api_key"];
    assert_eq!(
        (schemes["type"].as_str(), schemes["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    for schema in [
        "Account",
        "Usage",
        "Hold",
        "Transaction",
        "BillingSummary",
        "TierList",
        "ErrorBody",
    ] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    // The open endpoints say so.
    assert_eq!(paths["/healthz"]["get"]["security"], json!([{}]));
}

#[tokio::test]
async fn metrics_count_requests_and_charges() {
    let server = TestServer::start().await;
    server.funded_account("metered", "0.05").await;
    server.usage("metered", "email_finder", 1, "m1").await;
    server.usage("metered", "email_finder", 1, "m1").await;
    server.usage("metered", "email_finder", 5, "m2").await;
    let response = server.client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "tollgate_http_requests_total{",
        r#"route="/v1/accounts/{id}/usage""#,
        r#"status="402""#,
        "tollgate_http_request_duration_seconds_bucket{",
        r#"tollgate_usage_charges_total{action="email_finder"}"#,
        r#"tollgate_usage_refusals_total{code="insufficient_balance"}"#,
        "tollgate_usage_replays_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[tokio::test]
async fn the_api_needs_a_key_but_operations_do_not() {
    let server = TestServer::start().await;
    for path in ["/v1/tiers", "/v1/accounts", "/v1/audit"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let wrong = server
        .client
        .get(server.url("/v1/tiers"))
        .bearer_auth("tg_sk_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_format() {
    let server = TestServer::start().await;
    let response = server.get("/v1/nothing").await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found", None);
    let response = server.get("/nothing").await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found", None);
    let response = server.send(server.request(Method::DELETE, "/v1/accounts")).await;
    assert_error(
        &response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    let response = server.send(server.request(Method::GET, "/v1/usage/batch")).await;
    assert_error(
        &response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
}

#[tokio::test]
async fn request_ids_are_set_and_propagated() {
    let server = TestServer::start().await;
    let response = server.client.get(server.url("/healthz")).send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    let response = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "req_from_client")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req_from_client");
}

#[tokio::test]
async fn streamed_bodies_over_the_limit_are_413_in_process() {
    use axum::body::{Body, Bytes};
    use tower::ServiceExt;

    // No Content-Length: the limit is enforced while the body is read.
    let (state, parts) = common::app_state(common::Options {
        max_body_bytes: 1024,
        ..common::Options::default()
    });
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64])));
    let request = axum::http::Request::post("/v1/usage/batch")
        .header("authorization", format!("Bearer {}", common::OPERATOR_KEY))
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let response = tollgate_web::app(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    drop(parts);
}
