//! Holds over HTTP: place, read, capture, void, and expiry (by the sweeper
//! and lazily on the account's next write).

mod common;

use std::time::Duration;

use common::{TestServer, assert_error, keys, sorted};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn place(server: &TestServer, account: &str, amount: &str, ttl: Option<i64>, key: &str) -> Value {
    let mut body = json!({"action": "export", "amount": amount, "idempotency_key": key});
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = json!(ttl);
    }
    let (status, hold) = server.post(&format!("/v1/accounts/{account}/holds"), body).await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    hold
}

fn id(hold: &Value) -> &str {
    hold["id"].as_str().unwrap()
}

/// Asserts a refusal and that `account` did not change.
async fn refused(
    server: &TestServer,
    account: &str,
    path: &str,
    body: Value,
    status: StatusCode,
    code: &str,
) -> Value {
    let before = server.snapshot(account).await;
    let response = server.post(path, body).await;
    let param = (code == "capture_exceeds_hold").then_some("quantity");
    assert_error(&response, status, code, param);
    assert_eq!(server.snapshot(account).await, before);
    response.1
}

#[tokio::test]
async fn a_hold_reserves_then_captures_the_real_cost() {
    let server = TestServer::start().await;
    server.funded_account("holdco", "10.00").await;
    let hold = place(&server, "holdco", "5.00", None, "h1").await;
    assert_eq!(
        keys(&hold),
        sorted(&[
            "id",
            "object",
            "account_id",
            "action",
            "amount",
            "status",
            "expires_at",
            "captured_amount",
            "closed_at",
            "balance",
            "available_balance",
            "created_at",
        ])
    );
    assert_eq!(hold["object"], "hold");
    assert_eq!(hold["account_id"], "holdco");
    assert_eq!(hold["action"], "export");
    assert_eq!(hold["amount"], "5.00");
    assert_eq!(hold["status"], "active");
    // The configured default TTL: 15 minutes.
    assert_eq!(hold["expires_at"], "2026-11-10T10:15:00Z");
    assert_eq!(hold["balance"], "10.00");
    assert_eq!(hold["available_balance"], "5.00");
    assert!(id(&hold).starts_with("hold_"));

    let account = server.account("holdco").await;
    assert_eq!(
        (
            &account["balance"],
            &account["available_balance"],
            &account["held_balance"]
        ),
        (&json!("10.00"), &json!("5.00"), &json!("5.00"))
    );
    let (status, read) = server.get(&format!("/v1/holds/{}", id(&hold))).await;
    assert_eq!((status, &read), (StatusCode::OK, &hold));

    let (status, captured) = server
        .post(
            &format!("/v1/holds/{}/capture", id(&hold)),
            json!({"quantity": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{captured}");
    assert_eq!(captured["status"], "captured");
    assert_eq!(captured["captured_amount"], "2.00");
    assert_eq!(captured["closed_at"], "2026-11-10T10:00:00Z");
    assert_eq!(captured["balance"], "8.00");
    assert_eq!(captured["available_balance"], "8.00");
    let usage = &captured["usage"];
    assert_eq!(usage["object"], "usage");
    assert_eq!(usage["amount"], "2.00");
    assert_eq!(usage["unit_price"], "0.02");
    assert_eq!(usage["quantity"], 100);
    assert_eq!(usage["hold_id"], hold["id"]);
    assert_eq!(usage["balance"], "8.00");

    let account = server.account("holdco").await;
    assert_eq!(
        (&account["balance"], &account["held_balance"]),
        (&json!("8.00"), &json!("0.00"))
    );
    let (_, ledger) = server.get("/v1/accounts/holdco/transactions").await;
    let lines: Vec<(&str, &str, &str)> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap(),
                t["amount"].as_str().unwrap(),
                t["available_amount"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("usage", "-2.00", "3.00"),
            ("hold", "0.00", "-5.00"),
            ("grant", "10.00", "10.00")
        ]
    );

    // No longer active: both capture and void are refused, nothing moves.
    let capture_path = format!("/v1/holds/{}/capture", id(&hold));
    let void_path = format!("/v1/holds/{}/void", id(&hold));
    let error = refused(
        &server,
        "holdco",
        &capture_path,
        json!({"quantity": 1}),
        StatusCode::CONFLICT,
        "hold_not_active",
    )
    .await;
    assert_eq!(error["error"]["hold_status"], "captured");
    refused(
        &server,
        "holdco",
        &void_path,
        json!({}),
        StatusCode::CONFLICT,
        "hold_not_active",
    )
    .await;
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn captures_above_the_hold_are_refused_and_voids_release_everything() {
    let server = TestServer::start().await;
    server.funded_account("voidco", "10.00").await;
    let hold = place(&server, "voidco", "1.00", Some(600), "h1").await;
    assert_eq!(hold["expires_at"], "2026-11-10T10:10:00Z");
    let capture_path = format!("/v1/holds/{}/capture", id(&hold));
    // 51 rows × 0.02 = 1.02 > 1.00.
    let error = refused(
        &server,
        "voidco",
        &capture_path,
        json!({"quantity": 51}),
        StatusCode::BAD_REQUEST,
        "capture_exceeds_hold",
    )
    .await;
    assert_eq!(
        (
            error["error"]["held"].as_str(),
            error["error"]["required"].as_str()
        ),
        (Some("1.00"), Some("1.02"))
    );
    for quantity in [json!(0), json!("1"), json!(1.5)] {
        let before = server.snapshot("voidco").await;
        let response = server.post(&capture_path, json!({"quantity": quantity})).await;
        assert_error(
            &response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("quantity"),
        );
        assert_eq!(server.snapshot("voidco").await, before);
    }

    let (status, voided) = server
        .post(&format!("/v1/holds/{}/void", id(&hold)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{voided}");
    assert_eq!(voided["status"], "voided");
    assert_eq!(voided["captured_amount"], Value::Null);
    assert_eq!(
        (voided["balance"].as_str(), voided["available_balance"].as_str()),
        (Some("10.00"), Some("10.00"))
    );
    // A void needs no body at all.
    let second = place(&server, "voidco", "2.00", None, "h2").await;
    let response = server
        .send(server.request(Method::POST, &format!("/v1/holds/{}/void", id(&second))))
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);

    let error = refused(
        &server,
        "voidco",
        &capture_path,
        json!({"quantity": 1}),
        StatusCode::CONFLICT,
        "hold_not_active",
    )
    .await;
    assert_eq!(error["error"]["hold_status"], "voided");
    refused(
        &server,
        "voidco",
        &format!("/v1/holds/{}/void", id(&hold)),
        json!({}),
        StatusCode::CONFLICT,
        "hold_not_active",
    )
    .await;
    let (status, _) = server
        .post("/v1/holds/hold_missing/capture", json!({"quantity": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn expired_holds_refuse_capture_and_void() {
    let server = TestServer::start().await;
    server.funded_account("lateco", "10.00").await;
    let hold = place(&server, "lateco", "1.00", Some(60), "h1").await;
    let other = place(&server, "lateco", "1.00", Some(60), "h2").await;
    server.clock.advance(time::Duration::seconds(61));
    // The refused capture still commits the release of the expired hold.
    let (status, error) = server
        .post(
            &format!("/v1/holds/{}/capture", id(&hold)),
            json!({"quantity": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "hold_not_active");
    assert_eq!(error["error"]["hold_status"], "expired");
    let account = server.account("lateco").await;
    assert_eq!(
        (&account["available_balance"], &account["held_balance"]),
        (&json!("10.00"), &json!("0.00"))
    );
    let (_, other) = server.get(&format!("/v1/holds/{}", id(&other))).await;
    assert_eq!(other["status"], "expired");
    // Now nothing moves at all.
    let void_path = format!("/v1/holds/{}/void", id(&other));
    refused(
        &server,
        "lateco",
        &void_path,
        json!({}),
        StatusCode::CONFLICT,
        "hold_not_active",
    )
    .await;
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn the_sweeper_releases_expired_holds_of_idle_accounts() {
    let server = TestServer::start().await;
    server.funded_account("idle", "10.00").await;
    let hold = place(&server, "idle", "4.00", Some(30), "h1").await;
    server.clock.advance(time::Duration::seconds(31));
    // Observed through the journal only: reading the account or the hold
    // would itself release it, and this test is about the sweeper.
    let last_line_type = || async {
        let (_, ledger) = server.get("/v1/accounts/idle/transactions?limit=1").await;
        ledger["data"][0]["type"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(last_line_type().await, "hold");

    let sweeper = tollgate_web::spawn_hold_sweeper(server.store.clone(), 10);
    let mut released = false;
    for _ in 0..200 {
        if last_line_type().await == "hold_release" {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweeper.abort();
    assert!(released, "the sweeper did not release the hold");
    let account = server.account("idle").await;
    assert_eq!(
        (&account["balance"], &account["available_balance"]),
        (&json!("10.00"), &json!("10.00"))
    );
    let (_, hold) = server.get(&format!("/v1/holds/{}", id(&hold))).await;
    assert_eq!(hold["status"], "expired");
    assert_eq!(hold["closed_at"], "2026-11-10T10:00:31Z");
    let (_, ledger) = server.get("/v1/accounts/idle/transactions?limit=1").await;
    assert_eq!(ledger["data"][0]["type"], "hold_release");
    assert_eq!(ledger["data"][0]["description"], "Hold expired");
    assert_eq!(ledger["data"][0]["reference"], hold["id"]);

    // One more, released by a direct sweep.
    place(&server, "idle", "1.00", Some(1), "h2").await;
    assert_eq!(server.account("idle").await["held_balance"], "1.00");
    server.clock.advance(time::Duration::seconds(2));
    assert_eq!(
        tollgate_web::sweep_expired_holds(server.store.as_ref())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        tollgate_web::sweep_expired_holds(server.store.as_ref())
            .await
            .unwrap(),
        0
    );
    assert_eq!(server.account("idle").await["held_balance"], "0.00");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn reading_an_account_or_hold_never_shows_an_expired_hold_as_held() {
    let server = TestServer::start().await;
    server.funded_account("reader", "10.00").await;
    let hold = place(&server, "reader", "4.00", Some(30), "h1").await;
    assert_eq!(server.account("reader").await["held_balance"], "4.00");
    server.clock.advance(time::Duration::seconds(30));
    let account = server.account("reader").await;
    assert_eq!(
        (&account["held_balance"], &account["available_balance"]),
        (&json!("0.00"), &json!("10.00"))
    );
    let (_, hold) = server.get(&format!("/v1/holds/{}", id(&hold))).await;
    assert_eq!(hold["status"], "expired");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn expired_holds_are_released_lazily_on_the_next_charge() {
    let server = TestServer::start().await;
    server.funded_account("busy", "1.00").await;
    place(&server, "busy", "0.90", Some(30), "h1").await;
    // While held, 0.10 is all there is.
    let response = server.usage("busy", "email_finder", 4, "u1").await;
    assert_error(
        &response,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_balance",
        None,
    );
    server.clock.advance(time::Duration::seconds(30));
    let (status, usage) = server.usage("busy", "email_finder", 4, "u1").await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(
        (usage["balance"].as_str(), usage["available_balance"].as_str()),
        (Some("0.88"), Some("0.88"))
    );
    assert_eq!(server.account("busy").await["held_balance"], "0.00");
    server.assert_ledger_clean().await;
}
