//! Auto Top-Up over HTTP against the real server, its worker and a Stripe sandbox:
//! exactly one recharge per crossing, whatever the concurrency; failures stop the rule
//! with the reason; the card or a cool-down re-arms it.

mod common;

use std::time::Duration;

use common::payments::{CARD_3DS_ALWAYS, CARD_ATTACH_THEN_FAIL, CARD_OK, charges};
use common::{TestServer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_stripe_sandbox::{ApiFault, ApiFaultKind, FaultTiming, WebhookFaults};

async fn put_rule(server: &TestServer, account: &str, body: Value) -> (StatusCode, Value) {
    server
        .send(
            server
                .request(Method::PUT, &format!("/v1/accounts/{account}/auto_recharge"))
                .json(&body),
        )
        .await
}

async fn recharge_lines(server: &TestServer, account: &str) -> Vec<Value> {
    let (_, body) = server
        .get(&format!("/v1/accounts/{account}/transactions?limit=100"))
        .await;
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["type"] == "auto_recharge")
        .cloned()
        .collect()
}

/// An account with a saved card and `balance` of credit.
async fn account_with_card(server: &TestServer, account: &str, card: &str, balance: &str) {
    server.create_account(account).await;
    server.add_card(account, card).await;
    server.grant(account, balance).await;
}

/// Spends `count` × $0.50 (25 `export` rows each).
async fn spend_halves(server: &TestServer, account: &str, count: usize, prefix: &str) {
    for index in 0..count {
        let (status, body) = server
            .usage(account, "export", 25, &format!("{prefix}-{index}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn settings_are_validated_and_need_a_card() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    let response = put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00"}),
    )
    .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "no_payment_method", None);

    server.add_card("acme", CARD_OK).await;
    // Above every threshold below, so the worker has nothing to recharge meanwhile.
    server.grant("acme", "200.00").await;
    for (body, param) in [
        (
            json!({"enabled": true, "threshold": "4.99", "target": "100.00"}),
            "threshold",
        ),
        (
            json!({"enabled": true, "threshold": "50.00", "target": "59.99"}),
            "target",
        ),
        (
            json!({"enabled": true, "threshold": "50.001", "target": "100.00"}),
            "threshold",
        ),
        (
            json!({"enabled": true, "threshold": "abc", "target": "100.00"}),
            "threshold",
        ),
        (
            json!({"enabled": true, "threshold": "50.00", "target": "20000.00"}),
            "target",
        ),
        (json!({"enabled": true}), "threshold"),
        (
            json!({"enabled": true, "threshold": "50.00", "target": "100.00", "monthly_cap": "1.00"}),
            "monthly_cap",
        ),
    ] {
        let response = put_rule(&server, "acme", body.clone()).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_amount", Some(param));
    }
    assert_eq!(server.account("acme").await["auto_recharge"]["status"], "off");

    let (status, rule) = put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50", "target": "100"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["status"], "active");
    assert_eq!(rule["threshold"], "50.00");
    assert_eq!(rule["target"], "100.00");
    assert_eq!(rule["monthly_cap"], "5000.00");
    let (_, summary) = server.get("/v1/accounts/acme/billing").await;
    assert_eq!(summary["auto_recharge"], rule, "{summary}");

    // Edit, then off (keeping the values), then on again with the stored values.
    let (_, edited) = put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "20.00", "target": "75.00", "monthly_cap": "300.00"}),
    )
    .await;
    assert_eq!(
        (edited["threshold"].as_str(), edited["target"].as_str()),
        (Some("20.00"), Some("75.00"))
    );
    assert_eq!(edited["monthly_cap"], "300.00");
    let (_, off) = put_rule(&server, "acme", json!({"enabled": false})).await;
    assert_eq!(off["status"], "off", "{off}");
    assert_eq!(off["threshold"], "20.00");
    let (_, on) = put_rule(&server, "acme", json!({"enabled": true})).await;
    assert_eq!(on["status"], "active", "{on}");

    // Removing the card switches it off.
    server
        .send(server.request(Method::DELETE, "/v1/accounts/acme/payment_method"))
        .await;
    assert_eq!(server.account("acme").await["auto_recharge"]["status"], "off");
    let (_, audit) = server.get("/v1/audit?limit=100").await;
    let text = audit.to_string();
    assert!(text.contains("auto"), "rule changes are audited: {audit}");
}

#[tokio::test]
async fn sixty_four_concurrent_debits_across_the_threshold_recharge_exactly_once() {
    let server = TestServer::start_with_payments().await;
    account_with_card(&server, "busy", CARD_OK, "60.00").await;
    let (status, rule) = put_rule(
        &server,
        "busy",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    let charges_before = charges(server.sandbox()).1;

    // 64 × $0.50 = $32: the balance crosses $50 once, somewhere in the middle.
    let requests = (0..64).map(|index| {
        let server = &server;
        async move { server.usage("busy", "export", 25, &format!("hot-{index}")).await }
    });
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let account = server
        .wait_for_account("busy", "the recharge", |account| {
            account["auto_recharge"]["status"] == "active" && account["balance"] != "28.00"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.settle_webhooks().await;

    let lines = recharge_lines(&server, "busy").await;
    assert_eq!(lines.len(), 1, "one recharge per crossing: {lines:?}");
    assert_eq!(charges(server.sandbox()).1 - charges_before, 1, "one charge");
    // Topped up to the target from wherever the balance stood when it ran.
    let amount = lines[0]["amount"].as_str().unwrap();
    let balance = server.account("busy").await["balance"]
        .as_str()
        .unwrap()
        .to_owned();
    let money = |text: &str| tollgate_core::Micros::parse(text).unwrap();
    assert!(
        money(&balance) >= money("68.00"),
        "{balance} after {amount}: {account}"
    );
    assert_eq!(
        money(&balance),
        money("28.00").checked_add(money(amount)).unwrap(),
        "60.00 − 32.00 + the recharge"
    );
    assert_eq!(
        server.account("busy").await["auto_recharge"]["recharged_this_cycle"],
        amount
    );
    // One event for the one recharge, carrying its amount.
    assert_eq!(
        server.event_types("busy", "auto_recharge.").await,
        ["auto_recharge.succeeded"]
    );
    let succeeded = server
        .events_of("busy")
        .await
        .into_iter()
        .find(|event| event["type"] == "auto_recharge.succeeded")
        .unwrap();
    assert_eq!(succeeded["data"]["amount"], amount);
    assert_eq!(
        succeeded["data"]["topup_id"], lines[0]["reference"],
        "{succeeded} {lines:?}"
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_declined_card_stops_the_rule_until_the_card_changes() {
    let server = TestServer::start_with_payments().await;
    account_with_card(&server, "acme", CARD_ATTACH_THEN_FAIL, "52.00").await;
    put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00"}),
    )
    .await;
    spend_halves(&server, "acme", 6, "a").await;
    let account = server
        .wait_for_account("acme", "the failure", |account| {
            account["auto_recharge"]["status"] == "failed"
        })
        .await;
    assert_eq!(
        account["auto_recharge"]["failure_code"], "card_declined",
        "{account}"
    );
    assert!(account["auto_recharge"]["retry_at"].is_string(), "{account}");
    assert_eq!(account["balance"], "49.00");
    let attempts = charges(server.sandbox()).0;

    // More debits below the threshold do not hammer the card.
    spend_halves(&server, "acme", 4, "b").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        charges(server.sandbox()).0,
        attempts,
        "no retry of a declined card"
    );
    assert!(recharge_lines(&server, "acme").await.is_empty());

    // A new card re-arms it: the worker recharges at once (the balance is below the threshold).
    server.add_card("acme", CARD_OK).await;
    let account = server
        .wait_for_account("acme", "the recharge with the new card", |account| {
            account["balance"] == "100.00"
        })
        .await;
    assert_eq!(account["auto_recharge"]["status"], "active", "{account}");
    assert_eq!(recharge_lines(&server, "acme").await.len(), 1);
    assert_eq!(
        server.event_types("acme", "auto_recharge.").await,
        ["auto_recharge.failed", "auto_recharge.succeeded"]
    );
    // The card changed twice: added, then replaced.
    assert_eq!(
        server.event_types("acme", "payment_method.").await,
        ["payment_method.updated", "payment_method.updated"]
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_failed_rule_arms_again_after_the_cool_down() {
    let server = TestServer::start_with_payments().await;
    account_with_card(&server, "acme", CARD_ATTACH_THEN_FAIL, "51.00").await;
    put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00"}),
    )
    .await;
    spend_halves(&server, "acme", 4, "a").await;
    server
        .wait_for_account("acme", "the failure", |account| {
            account["auto_recharge"]["status"] == "failed"
        })
        .await;
    let attempts = charges(server.sandbox()).0;
    // Webhooks signed in real time would now be stale; none matter here.
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 1_000,
        ..WebhookFaults::default()
    });
    server.clock.advance(time::Duration::minutes(59));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(charges(server.sandbox()).0, attempts, "still cooling down");
    server.clock.advance(time::Duration::minutes(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while charges(server.sandbox()).0 == attempts {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt after the cool-down"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server
        .wait_for_account("acme", "the second failure", |account| {
            account["auto_recharge"]["status"] == "failed"
        })
        .await;
    assert_eq!(
        charges(server.sandbox()).0,
        attempts + 1,
        "exactly one more attempt"
    );
}

#[tokio::test]
async fn a_card_that_needs_authentication_asks_for_action() {
    let server = TestServer::start_with_payments().await;
    account_with_card(&server, "acme", CARD_3DS_ALWAYS, "50.50").await;
    put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00"}),
    )
    .await;
    spend_halves(&server, "acme", 2, "a").await;
    let account = server
        .wait_for_account("acme", "the authentication request", |account| {
            account["auto_recharge"]["status"] == "action_required"
        })
        .await;
    assert_eq!(
        account["auto_recharge"]["failure_code"], "authentication_required",
        "{account}"
    );
    assert_eq!(account["balance"], "49.50");
    let events = server.events_of("acme").await;
    let asked: Vec<&Value> = events
        .iter()
        .filter(|event| event["type"] == "auto_recharge.action_required")
        .collect();
    assert_eq!(asked.len(), 1, "{events:?}");
    assert_eq!(asked[0]["data"]["failure_code"], "authentication_required");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_charge_whose_answer_is_lost_is_retried_with_the_same_key_and_credited_once() {
    let server = TestServer::start_with_payments().await;
    account_with_card(&server, "acme", CARD_OK, "50.50").await;
    put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00"}),
    )
    .await;
    let charges_before = charges(server.sandbox()).1;
    // Stripe charges but every answer is lost, and no webhook arrives: as if Tollgate
    // crashed between the charge and the credit.
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 1_000,
        ..WebhookFaults::default()
    });
    server.sandbox().inject_api_fault(ApiFault {
        count: 3,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::After,
        path_prefix: Some("/v1/payment_intents".to_owned()),
    });
    spend_halves(&server, "acme", 2, "a").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while charges(server.sandbox()).1 == charges_before {
        assert!(tokio::time::Instant::now() < deadline, "Stripe was never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker retries after its back-off with the same key and learns the first charge.
    let account = server
        .wait_for_account("acme", "the recovered recharge", |account| {
            account["balance"] == "100.00"
        })
        .await;
    assert_eq!(account["auto_recharge"]["status"], "active", "{account}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(charges(server.sandbox()).1 - charges_before, 1, "charged once");
    assert_eq!(recharge_lines(&server, "acme").await.len(), 1);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn the_monthly_cap_stops_recharging() {
    let server = TestServer::start_with_payments().await;
    account_with_card(&server, "acme", CARD_OK, "50.50").await;
    put_rule(
        &server,
        "acme",
        json!({"enabled": true, "threshold": "50.00", "target": "100.00", "monthly_cap": "60.00"}),
    )
    .await;
    spend_halves(&server, "acme", 2, "a").await;
    server
        .wait_for_account("acme", "the first recharge", |account| {
            account["balance"] == "100.00"
        })
        .await;
    // $50.50 recharged; $9.50 left under the cap is less than the minimum top-up.
    let (_, grant) = server
        .post(
            "/v1/accounts/acme/grants",
            json!({"amount": "-51.00", "reason": "test debit"}),
        )
        .await;
    assert_eq!(grant["type"], "grant", "{grant}");
    let account = server
        .wait_for_account("acme", "the cap", |account| {
            account["auto_recharge"]["status"] == "cap_reached"
        })
        .await;
    assert_eq!(account["balance"], "49.00", "{account}");
    assert_eq!(recharge_lines(&server, "acme").await.len(), 1);
}
