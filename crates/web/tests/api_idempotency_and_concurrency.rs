//! Exactly-once charging: replays, conflicting reuse of a key, and a burst
//! of parallel requests against a balance that fits exactly half of them.

mod common;

use common::{TestServer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

fn without_replayed(mut usage: Value) -> Value {
    usage.as_object_mut().unwrap().remove("replayed");
    usage
}

#[tokio::test]
async fn a_replayed_usage_event_returns_the_original_and_moves_nothing() {
    let server = TestServer::start().await;
    server.funded_account("acme", "5.00").await;
    let (status, original) = server.usage("acme", "email_finder", 3, "evt_1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(original["replayed"], false);
    // Later charges change the balance; the replay still shows the original's.
    server.usage("acme", "email_finder", 1, "evt_2").await;
    let before = server.snapshot("acme").await;
    server.clock.advance(time::Duration::minutes(5));

    let (status, replay) = server.usage("acme", "email_finder", 3, "evt_1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replay["replayed"], true);
    assert_eq!(without_replayed(replay), without_replayed(original.clone()));
    assert_eq!(server.snapshot("acme").await, before);

    // The key may come in the header instead, or in both when they agree.
    let header_only = server
        .request(Method::POST, "/v1/accounts/acme/usage")
        .header("Idempotency-Key", "evt_1")
        .json(&json!({"action": "email_finder", "quantity": 3}));
    let (status, replay) = server.send(header_only).await;
    assert_eq!(
        (status, &replay["id"], &replay["replayed"]),
        (StatusCode::OK, &original["id"], &json!(true))
    );
    let both = server
        .request(Method::POST, "/v1/accounts/acme/usage")
        .header("Idempotency-Key", "evt_1")
        .json(&json!({"action": "email_finder", "quantity": 3, "idempotency_key": "evt_1"}));
    let (status, replay) = server.send(both).await;
    assert_eq!((status, &replay["replayed"]), (StatusCode::OK, &json!(true)));
    assert_eq!(server.snapshot("acme").await, before);

    // In a batch too.
    let (_, batch) = server
        .post(
            "/v1/usage/batch",
            json!({"events": [{"account_id": "acme", "action": "email_finder", "quantity": 3, "idempotency_key": "evt_1"}]}),
        )
        .await;
    assert_eq!(batch["results"][0]["replayed"], true);
    assert_eq!(batch["results"][0]["id"], original["id"]);
    assert_eq!(server.snapshot("acme").await, before);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn reusing_a_key_for_a_different_request_is_a_conflict() {
    let server = TestServer::start().await;
    server.funded_account("acme", "5.00").await;
    server.usage("acme", "email_finder", 3, "evt_1").await;
    let before = server.snapshot("acme").await;
    for (action, quantity) in [("email_finder", 4), ("export", 3)] {
        let response = server.usage("acme", action, quantity, "evt_1").await;
        assert_error(
            &response,
            StatusCode::CONFLICT,
            "idempotency_conflict",
            Some("idempotency_key"),
        );
        assert_eq!(server.snapshot("acme").await, before);
    }
    // Grants and holds share the rule.
    let grant = |amount: &str| {
        server
            .request(Method::POST, "/v1/accounts/acme/grants")
            .header("Idempotency-Key", "grant_1")
            .json(&json!({"amount": amount, "reason": "promo"}))
    };
    assert_eq!(server.send(grant("1.00")).await.0, StatusCode::CREATED);
    let before = server.snapshot("acme").await;
    let response = server.send(grant("2.00")).await;
    assert_error(
        &response,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("idempotency_key"),
    );
    assert_eq!(server.snapshot("acme").await, before);

    let hold = |amount: &str| json!({"action": "export", "amount": amount, "idempotency_key": "hold_1"});
    let (status, first) = server.post("/v1/accounts/acme/holds", hold("1.00")).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = server.snapshot("acme").await;
    let replay = server
        .request(Method::POST, "/v1/accounts/acme/holds")
        .json(&hold("1.00"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_eq!(server.snapshot("acme").await, before);
    let response = server.post("/v1/accounts/acme/holds", hold("2.00")).await;
    assert_error(
        &response,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("idempotency_key"),
    );
    assert_eq!(server.snapshot("acme").await, before);
    server.assert_ledger_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_charges_never_overdraw() {
    let server = TestServer::start().await;
    // 100 × 0.03 = 3.00 exactly.
    server.funded_account("rush", "3.00").await;
    let mut requests = JoinSet::new();
    for index in 0..200 {
        let request = server.request(Method::POST, "/v1/accounts/rush/usage").json(
            &json!({"action": "email_finder", "quantity": 1, "idempotency_key": format!("rush_{index}")}),
        );
        requests.spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        });
    }
    let (mut charged, mut refused) = (0, 0);
    while let Some(outcome) = requests.join_next().await {
        let (status, body) = outcome.unwrap();
        match status {
            StatusCode::OK => charged += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(body["error"]["code"], "insufficient_balance");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((charged, refused), (100, 100));
    let account = server.account("rush").await;
    assert_eq!(
        (&account["balance"], &account["available_balance"]),
        (&json!("0.00"), &json!("0.00"))
    );
    let (_, ledger) = server.get("/v1/accounts/rush/transactions?limit=100").await;
    assert_eq!(ledger["data"].as_array().unwrap().len(), 100);
    assert_eq!(ledger["has_more"], true);
    let (_, billing) = server.get("/v1/accounts/rush/billing").await;
    assert_eq!(billing["cycle"]["spent"], "3.00");
    server.assert_ledger_clean().await;
}
