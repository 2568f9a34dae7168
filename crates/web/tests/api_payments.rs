//! Card payments end to end over HTTP: the real server, the real Stripe adapter and a
//! Stripe sandbox of each test's own, on random ports. Money must arrive in the balance
//! exactly once whatever the browser, the network or the webhooks do.

mod common;

use std::time::Duration;

use common::payments::{
    Browser, CARD_3DS_ALWAYS, CARD_3DS_ONCE, CARD_ATTACH_THEN_FAIL, CARD_DECLINED, CARD_INSUFFICIENT_FUNDS,
    CARD_OK, WEBHOOK_SECRET, charge_of, charges,
};
use common::{TestServer, assert_error};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tollgate_stripe_sandbox::{ApiFault, ApiFaultKind, FaultTiming, WebhookFaults};

/// Ledger lines of `kind` on the account.
async fn lines_of(server: &TestServer, account: &str, kind: &str) -> Vec<Value> {
    let (status, body) = server
        .get(&format!("/v1/accounts/{account}/transactions?limit=100"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["type"] == kind)
        .cloned()
        .collect()
}

async fn balance(server: &TestServer, account: &str) -> String {
    server.account(account).await["balance"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Opens a hosted top-up (no card on file) and returns the top-up JSON.
async fn hosted_topup(server: &TestServer, account: &str, amount: &str, key: &str) -> Value {
    let (status, topup) = server.topup(account, amount, key).await;
    assert_eq!(status, StatusCode::OK, "{topup}");
    assert_eq!(topup["status"], "requires_payment_method", "{topup}");
    assert!(
        topup["url"]
            .as_str()
            .is_some_and(|url| url.contains("/checkout/")),
        "{topup}"
    );
    topup
}

fn query_of(url: &str) -> String {
    url.split_once('?')
        .map(|(_, query)| query.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn adding_a_card_shows_it_active_at_once_and_replays_change_nothing() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    assert!(server.account("acme").await["payment_method"].is_null());

    let landed = server.add_card("acme", CARD_OK).await;
    assert!(landed.starts_with("https://app.test/billing?"), "{landed}");
    assert!(query_of(&landed).contains("payment_method=updated"), "{landed}");
    // Right after the return, before any webhook is needed.
    let card = server.account("acme").await["payment_method"].clone();
    assert_eq!(card["brand"], "visa", "{card}");
    assert_eq!(card["last4"], "4242");
    assert_eq!(card["status"], "active");
    assert_eq!(card["exp_month"], 12);
    assert_eq!(card["exp_year"], 2034);
    let (_, summary) = server.get("/v1/accounts/acme/billing").await;
    assert_eq!(summary["payment_method"]["last4"], "4242", "{summary}");

    // The webhooks for the same setup arrive too, and change nothing.
    server.settle_webhooks().await;
    assert_eq!(server.account("acme").await["payment_method"], card);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn replacing_the_card_detaches_the_old_one() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    let first = server.sandbox().state()["payment_methods"].clone();
    server.add_card("acme", CARD_3DS_ONCE).await;
    let card = server.account("acme").await["payment_method"].clone();
    assert_eq!(card["last4"], "3155", "{card}");

    let methods = server.sandbox().state()["payment_methods"].clone();
    let old = first
        .as_array()
        .unwrap()
        .iter()
        .find(|method| method["card"]["last4"] == "4242")
        .unwrap()["id"]
        .clone();
    let old_now = methods
        .as_array()
        .unwrap()
        .iter()
        .find(|method| method["id"] == old)
        .unwrap()
        .clone();
    assert!(
        old_now["customer"].is_null(),
        "the replaced card is detached: {old_now}"
    );
}

#[tokio::test]
async fn a_declined_card_or_a_closed_page_changes_nothing() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    let (status, setup) = server
        .post(
            "/v1/accounts/acme/payment_method/setup",
            json!({"return_url": "https://app.test/billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let url = setup["url"].as_str().unwrap();

    // Stripe rejects the card: the hosted page shows the error, nothing is saved.
    let browser = Browser::new();
    let page = browser.enter_card(url, CARD_DECLINED).await;
    assert_ne!(page.status, 303, "a declined card does not leave the page");
    assert!(page.text.contains("declined"), "{}", page.text);
    assert!(server.account("acme").await["payment_method"].is_null());

    // The customer closes the page: the cancel link goes back with nothing changed.
    let page = browser.open(url).await;
    let cancel = page
        .text
        .split("id=\"cancel\" class=\"back\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the hosted page has a cancel link")
        .replace("&amp;", "&");
    assert!(cancel.starts_with("https://app.test/billing?"), "{cancel}");
    assert!(cancel.contains("payment_method=canceled"), "{cancel}");
    // Tollgate learning of the open session (a stray return) changes nothing either.
    let back = format!(
        "{}/checkout/return?session_id={}",
        server.base,
        setup["id"].as_str().unwrap()
    );
    let landed = browser.follow_return(&back).await;
    assert!(landed.contains("payment_method=not_completed"), "{landed}");
    assert!(server.account("acme").await["payment_method"].is_null());
}

#[tokio::test]
async fn a_topup_with_the_saved_card_credits_once_and_replays_return_the_same() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;

    let (status, topup) = server.topup("acme", "100.00", "buy-1").await;
    assert_eq!(status, StatusCode::OK, "{topup}");
    assert_eq!(topup["status"], "succeeded", "{topup}");
    assert_eq!(topup["amount"], "100.00");
    assert_eq!(topup["balance"], "100.00");
    assert_eq!(topup["card_last4"], "4242");
    assert_eq!(balance(&server, "acme").await, "100.00");

    let response = server
        .request(Method::POST, "/v1/accounts/acme/topups")
        .header("Idempotency-Key", "buy-1")
        .json(&json!({"amount": "100.00", "return_url": "https://app.test/billing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let replay: Value = response.json().await.unwrap();
    assert_eq!(replay, topup);
    // Same key, different amount: a conflict, nothing charged.
    let conflict = server.topup("acme", "50.00", "buy-1").await;
    assert_error(
        &conflict,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("idempotency_key"),
    );

    server.settle_webhooks().await;
    assert_eq!(charges(server.sandbox()), (1, 1));
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    assert_eq!(balance(&server, "acme").await, "100.00");
    let (_, fetched) = server
        .get(&format!("/v1/topups/{}", topup["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched["status"], "succeeded");
    let (_, list) = server.get("/v1/accounts/acme/topups").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_topup_without_a_card_pays_on_the_hosted_page_and_saves_the_card() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    let topup = hosted_topup(&server, "acme", "25.00", "first-buy").await;
    assert_eq!(balance(&server, "acme").await, "0.00");

    let browser = Browser::new();
    let back = browser
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    assert!(
        back.starts_with(&format!("{}/checkout/return?session_id=cs_", server.base)),
        "{back}"
    );
    let landed = browser.follow_return(&back).await;
    assert!(landed.starts_with("https://app.test/billing?"), "{landed}");
    assert!(query_of(&landed).contains("topup_status=succeeded"), "{landed}");
    // Credited on the return, the card saved for later.
    let account = server.account("acme").await;
    assert_eq!(account["balance"], "25.00", "{account}");
    assert_eq!(account["payment_method"]["last4"], "4242", "{account}");

    // The webhook and a second return (browser back button) change nothing.
    server.settle_webhooks().await;
    browser.follow_return(&back).await;
    assert_eq!(balance(&server, "acme").await, "25.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    // Later top-ups use the saved card.
    let (_, second) = server.topup("acme", "10.00", "second-buy").await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(balance(&server, "acme").await, "35.00");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn the_webhook_arriving_before_the_return_credits_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    let topup = hosted_topup(&server, "acme", "40.00", "buy").await;
    let browser = Browser::new();
    let back = browser
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    // The browser is slow: the webhook credits first.
    server
        .wait_for_account("acme", "the webhook's credit", |account| {
            account["balance"] == "40.00"
        })
        .await;
    let landed = browser.follow_return(&back).await;
    assert!(landed.contains("topup_status=succeeded"), "{landed}");
    server.settle_webhooks().await;
    assert_eq!(balance(&server, "acme").await, "40.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn duplicated_and_reordered_webhooks_credit_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.sandbox().set_webhook_faults(WebhookFaults {
        duplicate: true,
        reorder_next: 4,
        ..WebhookFaults::default()
    });
    let topup = hosted_topup(&server, "acme", "30.00", "buy").await;
    // The browser never comes back: only webhooks tell Tollgate.
    Browser::new()
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    server.sandbox().flush_webhooks();
    server
        .wait_for_account("acme", "the webhook's credit", |account| {
            account["balance"] == "30.00"
        })
        .await;
    server.settle_webhooks().await;
    assert_eq!(balance(&server, "acme").await, "30.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    assert_eq!(server.account("acme").await["payment_method"]["last4"], "4242");
    // Duplicates and reordering record one event per change.
    assert_eq!(server.event_types("acme", "topup.").await, ["topup.succeeded"]);
    assert_eq!(
        server.event_types("acme", "payment_method.").await,
        ["payment_method.updated"]
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn dropped_webhooks_redelivered_later_credit_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 50,
        ..WebhookFaults::default()
    });
    let topup = hosted_topup(&server, "acme", "20.00", "buy").await;
    Browser::new()
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    server.settle_webhooks().await;
    assert_eq!(
        balance(&server, "acme").await,
        "0.00",
        "nothing told Tollgate yet"
    );

    server.sandbox().clear_faults();
    assert!(server.sandbox().redeliver_all_events() > 0);
    server
        .wait_for_account("acme", "the redelivered webhook's credit", |account| {
            account["balance"] == "20.00"
        })
        .await;
    // And again: every event a second time.
    server.settle_webhooks().await;
    server.sandbox().redeliver_all_events();
    server.settle_webhooks().await;
    assert_eq!(balance(&server, "acme").await, "20.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn bad_amounts_are_refused_before_anything_reaches_stripe() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    for (amount, reason) in [
        (json!("5"), "minimum"),
        (json!("9.99"), "minimum"),
        (json!("10.001"), "2 decimals"),
        (json!("abc"), "dollars"),
        (json!("20000"), "maximum"),
        (json!("10000.01"), "maximum"),
        (json!("-10"), "minimum"),
        (json!(25), "decimal string"),
    ] {
        let response = server
            .send(
                server
                    .request(Method::POST, "/v1/accounts/acme/topups")
                    .header("Idempotency-Key", "bad")
                    .json(&json!({"amount": amount})),
            )
            .await;
        assert_error(
            &response,
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            Some("amount"),
        );
        let message = response.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{amount}: {message}");
    }
    // A key is required: a retry must never charge twice.
    let response = server
        .post("/v1/accounts/acme/topups", json!({"amount": "25.00"}))
        .await;
    assert_error(
        &response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("idempotency_key"),
    );
    let state = server.sandbox().state();
    assert_eq!(
        state["payment_intents"].as_array().map_or(0, Vec::len),
        0,
        "{state}"
    );
    assert_eq!(
        state["checkout_sessions"].as_array().map_or(0, Vec::len),
        0,
        "{state}"
    );
    let (_, list) = server.get("/v1/accounts/acme/topups").await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    // The edges are fine.
    let (_, minimum) = server.topup("acme", "10", "min").await;
    assert_eq!(minimum["status"], "requires_payment_method", "{minimum}");
    assert_eq!(minimum["amount"], "10.00");
    let (_, maximum) = server.topup("acme", "10000.00", "max").await;
    assert_eq!(maximum["status"], "requires_payment_method", "{maximum}");
}

#[tokio::test]
async fn cards_that_fail_leave_the_balance_alone_with_the_reason() {
    let server = TestServer::start_with_payments().await;
    for (account, number, code) in [
        ("attach-fail", CARD_ATTACH_THEN_FAIL, "card_declined"),
        ("always-3ds", CARD_3DS_ALWAYS, "authentication_required"),
    ] {
        server.create_account(account).await;
        server.add_card(account, number).await;
        let (status, topup) = server.topup(account, "50.00", "buy").await;
        assert_eq!(status, StatusCode::OK, "{topup}");
        assert_ne!(topup["status"], "succeeded", "{account}: {topup}");
        assert!(
            topup["status"] == "failed" || topup["status"] == "requires_action",
            "{account}: {topup}"
        );
        assert_eq!(topup["failure_code"], code, "{account}: {topup}");
        assert_eq!(balance(&server, account).await, "0.00");
        assert!(lines_of(&server, account, "topup").await.is_empty());
        // A decline is an event; a charge waiting for the customer is not an outcome yet.
        let expected: &[&str] = if topup["status"] == "failed" {
            &["topup.failed"]
        } else {
            &[]
        };
        assert_eq!(server.event_types(account, "topup.").await, expected, "{account}");
    }
    // The 3-D Secure card that was authenticated when saved pays off-session later.
    server.create_account("once-3ds").await;
    server.add_card("once-3ds", CARD_3DS_ONCE).await;
    let (_, topup) = server.topup("once-3ds", "50.00", "buy").await;
    assert_eq!(topup["status"], "succeeded", "{topup}");

    // On the hosted page, a declined card and a card without funds show the error and
    // leave the top-up waiting for a card.
    server.create_account("hosted").await;
    let topup = hosted_topup(&server, "hosted", "60.00", "buy").await;
    let browser = Browser::new();
    for number in [CARD_DECLINED, CARD_INSUFFICIENT_FUNDS] {
        let page = browser.enter_card(topup["url"].as_str().unwrap(), number).await;
        assert_ne!(page.status, 303, "{number} does not pay");
        assert!(
            page.text.contains("id=\"error\" role=\"alert\">"),
            "{}",
            page.text
        );
    }
    server.settle_webhooks().await;
    assert_eq!(balance(&server, "hosted").await, "0.00");
    let (_, fetched) = server
        .get(&format!("/v1/topups/{}", topup["id"].as_str().unwrap()))
        .await;
    assert!(fetched["status"] != "succeeded", "{fetched}");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn stripe_unreachable_fails_cleanly_and_the_retry_charges_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    // Every attempt (the adapter's own retries included) fails before any effect.
    server.sandbox().inject_api_fault(ApiFault {
        count: 10,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::Before,
        path_prefix: Some("/v1/payment_intents".to_owned()),
    });
    let response = server.topup("acme", "100.00", "buy").await;
    assert_error(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_processor_unavailable",
        None,
    );
    assert_eq!(balance(&server, "acme").await, "0.00");

    server.sandbox().clear_faults();
    let (status, topup) = server.topup("acme", "100.00", "buy").await;
    assert_eq!(status, StatusCode::OK, "{topup}");
    assert_eq!(topup["status"], "succeeded", "{topup}");
    let (_, again) = server.topup("acme", "100.00", "buy").await;
    assert_eq!(again["id"], topup["id"]);
    server.settle_webhooks().await;
    assert_eq!(charges(server.sandbox()).1, 1, "one successful charge");
    assert_eq!(balance(&server, "acme").await, "100.00");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_charge_whose_answer_was_lost_is_recovered_by_asking_stripe_never_by_charging_again() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    server.settle_webhooks().await;
    // Stripe charges, then the answer is lost (as if Tollgate crashed in between), and no
    // webhook reaches Tollgate either.
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 50,
        ..WebhookFaults::default()
    });
    server.sandbox().inject_api_fault(ApiFault {
        count: 10,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::After,
        path_prefix: Some("/v1/payment_intents".to_owned()),
    });
    let response = server.topup("acme", "75.00", "buy").await;
    assert_eq!(response.0, StatusCode::SERVICE_UNAVAILABLE, "{}", response.1);
    assert_eq!(charges(server.sandbox()).1, 1, "Stripe did charge");
    assert_eq!(balance(&server, "acme").await, "0.00");

    server.sandbox().clear_faults();
    // Recovery looks only at top-ups older than its minimum age (here: zero).
    server.clock.advance(time::Duration::seconds(1));
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.resolved, report.errors),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(balance(&server, "acme").await, "75.00");
    // The retried request, the webhooks and another pass find it done.
    let (_, topup) = server.topup("acme", "75.00", "buy").await;
    assert_eq!(topup["status"], "succeeded", "{topup}");
    server.sandbox().redeliver_all_events();
    server.settle_webhooks().await;
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.examined, 0);
    assert_eq!(charges(server.sandbox()).1, 1, "never charged twice");
    assert_eq!(balance(&server, "acme").await, "75.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    server.assert_ledger_clean().await;
}

fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn forged_tampered_and_stale_webhooks_are_refused_and_apply_nothing() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    let topup = hosted_topup(&server, "acme", "30.00", "buy").await;
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 50,
        ..WebhookFaults::default()
    });
    Browser::new()
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    // The real event, which Tollgate has not seen.
    let events = server.sandbox().state()["events"].clone();
    let completed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "checkout.session.completed")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({
        "id": completed, "object": "event", "type": "checkout.session.completed",
        "api_version": "2025-03-31.basil", "created": 1, "livemode": false, "pending_webhooks": 1,
        "data": {"object": {"id": topup["id"], "object": "checkout.session"}}
    })
    .to_string();
    // Stale and future are an hour off, far outside the 300 s tolerance: a margin of one
    // second made the future case pass when the server's clock ticked over mid-test.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cases = [
        ("missing", None, body.clone()),
        (
            "forged",
            Some(signature("whsec_someone_else", now, body.as_bytes())),
            body.clone(),
        ),
        (
            "tampered",
            Some(signature(WEBHOOK_SECRET, now, body.as_bytes())),
            body.replace("30.00", "3000.00")
                .replace("\"created\":1", "\"created\":2"),
        ),
        (
            "stale",
            Some(signature(WEBHOOK_SECRET, now - 3_600, body.as_bytes())),
            body.clone(),
        ),
        (
            "future",
            Some(signature(WEBHOOK_SECRET, now + 3_600, body.as_bytes())),
            body.clone(),
        ),
    ];
    for (what, header, payload) in cases {
        let mut request = server
            .client
            .post(server.url("/webhooks/stripe"))
            .header("content-type", "application/json")
            .body(payload);
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = server.send(request).await;
        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_signature", None);
        assert!(!what.is_empty());
    }
    assert_eq!(balance(&server, "acme").await, "0.00");

    // A correctly signed event of a type Tollgate does not act on is acknowledged.
    let other = json!({
        "id": "evt_unrelated", "object": "event", "type": "customer.created",
        "api_version": "2025-03-31.basil", "created": 1, "livemode": false, "pending_webhooks": 1,
        "data": {"object": {"id": "cus_x", "object": "customer"}}
    })
    .to_string();
    let response = server
        .send(
            server
                .client
                .post(server.url("/webhooks/stripe"))
                .header(
                    "Stripe-Signature",
                    signature(WEBHOOK_SECRET, now, other.as_bytes()),
                )
                .body(other),
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    assert_eq!(response.1["received"], true);
}

#[tokio::test]
async fn refunds_take_the_money_back_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    let (_, topup) = server.topup("acme", "100.00", "buy").await;
    let id = topup["id"].as_str().unwrap().to_owned();
    let refund = |amount: Option<&str>, key: &str| {
        let mut body = json!({"reason": "customer asked"});
        if let Some(amount) = amount {
            body["amount"] = json!(amount);
        }
        server
            .request(Method::POST, &format!("/v1/topups/{id}/refund"))
            .header("Idempotency-Key", key.to_owned())
            .json(&body)
    };

    let (status, partial) = server.send(refund(Some("30.00"), "refund-1")).await;
    assert_eq!(status, StatusCode::OK, "{partial}");
    assert_eq!(partial["status"], "succeeded", "{partial}");
    assert_eq!(partial["amount"], "30.00");
    assert_eq!(partial["balance_after"], "70.00");
    assert!(
        partial["processor_refund"]
            .as_str()
            .is_some_and(|id| id.starts_with("re_"))
    );
    // A replay refunds nothing more.
    let (_, replay) = server.send(refund(Some("30.00"), "refund-1")).await;
    assert_eq!(replay["id"], partial["id"]);
    assert_eq!(balance(&server, "acme").await, "70.00");

    let response = server.send(refund(Some("80.00"), "refund-2")).await;
    assert_error(
        &response,
        StatusCode::BAD_REQUEST,
        "invalid_refund",
        Some("amount"),
    );
    let response = server.send(refund(Some("0.001"), "refund-3")).await;
    assert_error(
        &response,
        StatusCode::BAD_REQUEST,
        "invalid_amount",
        Some("amount"),
    );

    // The rest, with no amount.
    let (_, rest) = server.send(refund(None, "refund-4")).await;
    assert_eq!(rest["amount"], "70.00", "{rest}");
    assert_eq!(balance(&server, "acme").await, "0.00");
    server.settle_webhooks().await;
    assert_eq!(
        balance(&server, "acme").await,
        "0.00",
        "charge.refunded changes nothing more"
    );
    assert_eq!(lines_of(&server, "acme", "refund").await.len(), 2);
    let (_, fetched) = server.get(&format!("/v1/topups/{id}")).await;
    assert_eq!(fetched["refunded"], "100.00", "{fetched}");
    let sandbox_refunds = server.sandbox().state()["refunds"].as_array().map_or(0, Vec::len);
    assert_eq!(sandbox_refunds, 2);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_lost_dispute_takes_the_money_back_and_a_won_one_returns_it() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    let (_, first) = server.topup("acme", "50.00", "buy-1").await;
    let (_, second) = server.topup("acme", "20.00", "buy-2").await;
    assert_eq!(balance(&server, "acme").await, "70.00");

    let lost_charge = charge_of(server.sandbox(), first["payment_reference"].as_str().unwrap());
    let lost = server
        .sandbox()
        .open_dispute(&lost_charge, Some("fraudulent"))
        .unwrap();
    server
        .wait_for_account("acme", "the dispute's debit", |account| {
            account["balance"] == "20.00"
        })
        .await;
    server
        .sandbox()
        .close_dispute(lost["id"].as_str().unwrap(), false)
        .unwrap();

    let won_charge = charge_of(server.sandbox(), second["payment_reference"].as_str().unwrap());
    let won = server.sandbox().open_dispute(&won_charge, None).unwrap();
    server
        .wait_for_account("acme", "the second dispute's debit", |account| {
            account["balance"] == "0.00"
        })
        .await;
    server
        .sandbox()
        .close_dispute(won["id"].as_str().unwrap(), true)
        .unwrap();
    server
        .wait_for_account("acme", "the won dispute's reinstatement", |account| {
            account["balance"] == "20.00"
        })
        .await;
    server.settle_webhooks().await;
    server.sandbox().redeliver_all_events();
    server.settle_webhooks().await;
    assert_eq!(balance(&server, "acme").await, "20.00");
    let disputes = lines_of(&server, "acme", "dispute").await;
    assert_eq!(
        disputes.len(),
        3,
        "two debits and one reinstatement: {disputes:?}"
    );
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn a_paid_topup_has_a_receipt_in_html_and_pdf() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    let (_, topup) = server.topup("acme", "120.50", "buy").await;
    let receipt = topup["receipt_url"].as_str().unwrap().to_owned();

    let response = server.request(Method::GET, &receipt).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("$120.50"), "{html}");
    assert!(html.contains("4242"), "{html}");
    assert!(html.contains(topup["id"].as_str().unwrap()), "{html}");

    let response = server
        .request(Method::GET, &receipt)
        .header("Accept", "application/pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/pdf");
    let pdf = response.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "a PDF document");
    assert!(pdf.len() > 500);

    // No receipt for what was not paid.
    server.create_account("nocard").await;
    let pending = hosted_topup(&server, "nocard", "15.00", "buy").await;
    let response = server
        .get(&format!("/v1/topups/{}/receipt", pending["id"].as_str().unwrap()))
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request", None);
    let response = server.get("/v1/topups/top_missing/receipt").await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn removing_the_card_takes_it_off_the_account() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    let (status, removed) = server
        .send(server.request(Method::DELETE, "/v1/accounts/acme/payment_method"))
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["deleted"], true);
    assert_eq!(removed["removed"]["last4"], "4242");
    assert!(server.account("acme").await["payment_method"].is_null());
    // The next top-up goes through the hosted page again.
    let topup = hosted_topup(&server, "acme", "10.00", "buy").await;
    assert!(topup["url"].is_string());
    let (_, again) = server
        .send(server.request(Method::DELETE, "/v1/accounts/acme/payment_method"))
        .await;
    assert_eq!(again["deleted"], false);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn payment_routes_without_a_processor_answer_503() {
    let server = TestServer::start().await;
    server.create_account("acme").await;
    let response = server
        .post("/v1/accounts/acme/payment_method/setup", json!({}))
        .await;
    assert_error(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        None,
    );
}

// ---------------------------------------------------------------------------
// Webhooks that overtake what they are about, delayed webhooks, returns before webhooks,
// and top-ups whose charge never reached Stripe.

/// Calls the sandbox's Stripe API directly, as Stripe's dashboard (or another program on
/// the same Stripe account) would.
async fn stripe_api(server: &TestServer, path: &str, form: &[(&str, &str)]) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.sandbox().base_url()))
        .bearer_auth("sk_test_dashboard")
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// The only top-up of the account (a 503 answer carries none).
async fn only_topup(server: &TestServer, account: &str) -> Value {
    let (_, list) = server.get(&format!("/v1/accounts/{account}/topups")).await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    data[0].clone()
}

/// The sandbox's payment intent made for `topup` (found by the reference Tollgate sent).
fn intent_for(server: &TestServer, topup: &str) -> Value {
    let state = server.sandbox().state();
    state["payment_intents"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|intent| intent["metadata"]["tollgate_reference"] == topup)
        .cloned()
        .unwrap_or_else(|| panic!("no payment intent for {topup}: {state}"))
}

/// How many times Tollgate acknowledged each event so far.
fn acknowledged(server: &TestServer) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for delivery in server.sandbox().deliveries() {
        if delivery.succeeded() {
            *counts.entry(delivery.event_id).or_default() += 1;
        }
    }
    counts
}

/// Sends every event Stripe holds again and waits until Tollgate acknowledged each once more
/// (a queued event keeps its old delivery status, so `settle_webhooks` cannot tell).
async fn redeliver_all_and_wait(server: &TestServer) {
    let before = acknowledged(server);
    let events: Vec<String> = server.sandbox().state()["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["id"].as_str().map(str::to_owned))
        .collect();
    // Events already queued are not queued twice; they are delivered all the same.
    server.sandbox().redeliver_all_events();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = acknowledged(server);
        let behind: Vec<&String> = events
            .iter()
            .filter(|id| now.get(*id).copied().unwrap_or(0) <= before.get(*id).copied().unwrap_or(0))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not acknowledged again: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn event_ids(server: &TestServer, kind: &str) -> Vec<String> {
    server.sandbox().state()["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == kind)
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A saved-card top-up that Stripe charged but whose answer, and every webhook about it,
/// never reached Tollgate: it stays pending with no payment stored.
async fn charged_but_unheard(server: &TestServer, amount: &str) -> (String, String) {
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    server.settle_webhooks().await;
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 50,
        ..WebhookFaults::default()
    });
    // The first attempt and the adapter's two retries: each is charged (or replayed), then fails.
    server.sandbox().inject_api_fault(ApiFault {
        count: 3,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::After,
        path_prefix: Some("/v1/payment_intents".to_owned()),
    });
    let response = server.topup("acme", amount, "buy").await;
    assert_eq!(response.0, StatusCode::SERVICE_UNAVAILABLE, "{}", response.1);
    let topup = only_topup(server, "acme").await;
    assert_eq!(topup["status"], "pending", "{topup}");
    assert!(topup["payment_reference"].is_null(), "{topup}");
    let intent = intent_for(server, topup["id"].as_str().unwrap());
    assert_eq!(intent["status"], "succeeded", "Stripe did charge: {intent}");
    server.settle_webhooks().await;
    server.sandbox().clear_faults();
    (
        topup["id"].as_str().unwrap().to_owned(),
        intent["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_refund_heard_before_the_payment_is_applied_after_asking_stripe_for_the_payment() {
    let server = TestServer::start_with_payments().await;
    let (topup, intent) = charged_but_unheard(&server, "75.00").await;
    assert_eq!(balance(&server, "acme").await, "0.00");

    // Refunded in Stripe's dashboard; `charge.refunded` is the first Tollgate hears of it.
    stripe_api(
        &server,
        "/v1/refunds",
        &[("payment_intent", intent.as_str()), ("amount", "2500")],
    )
    .await;
    let refunded = event_ids(&server, "charge.refunded");
    assert_eq!(refunded.len(), 1);
    server
        .wait_for_account("acme", "the credit and the refund", |account| {
            account["balance"] == "50.00"
        })
        .await;
    server.settle_webhooks().await;
    assert_eq!(
        server.sandbox().delivery_status(&refunded[0]),
        Some(tollgate_stripe_sandbox::DeliveryStatus::Delivered)
    );
    let (_, fetched) = server.get(&format!("/v1/topups/{topup}")).await;
    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    assert_eq!(fetched["payment_reference"], intent.as_str());
    assert_eq!(fetched["refunded"], "25.00", "{fetched}");

    // Every event again, in any order: credited once, refunded once.
    redeliver_all_and_wait(&server).await;
    assert_eq!(balance(&server, "acme").await, "50.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    assert_eq!(lines_of(&server, "acme", "refund").await.len(), 1);
    assert_eq!(charges(server.sandbox()).1, 1);
    server.assert_ledger_clean().await;

    // A payment that is not Tollgate's, refunded: acknowledged, nothing changes.
    let foreign = stripe_api(
        &server,
        "/v1/payment_intents",
        &[
            ("amount", "1200"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
        ],
    )
    .await;
    assert_eq!(foreign["status"], "succeeded", "{foreign}");
    stripe_api(
        &server,
        "/v1/refunds",
        &[("payment_intent", foreign["id"].as_str().unwrap())],
    )
    .await;
    server.settle_webhooks().await;
    let refunded = event_ids(&server, "charge.refunded");
    assert_eq!(refunded.len(), 2);
    for event in &refunded {
        assert_eq!(
            server.sandbox().delivery_status(event),
            Some(tollgate_stripe_sandbox::DeliveryStatus::Delivered),
            "{event}"
        );
    }
    assert_eq!(balance(&server, "acme").await, "50.00");
}

#[tokio::test]
async fn a_dispute_heard_before_the_payment_waits_for_stripe_then_applies_once() {
    let server = TestServer::start_with_payments().await;
    let (topup, intent) = charged_but_unheard(&server, "60.00").await;
    // Stripe cannot be asked about the payment when the dispute's webhook first arrives:
    // the delivery fails (nothing recorded, nothing acknowledged) and Stripe sends it again.
    server.sandbox().inject_api_fault(ApiFault {
        count: 3,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::Before,
        path_prefix: Some(format!("/v1/payment_intents/{intent}")),
    });
    let charge = charge_of(server.sandbox(), &intent);
    let dispute = server
        .sandbox()
        .open_dispute(&charge, Some("fraudulent"))
        .unwrap();
    server
        .wait_for_account("acme", "the credit and the dispute's debit", |account| {
            account["balance"] == "0.00"
        })
        .await;
    server.settle_webhooks().await;
    let created = event_ids(&server, "charge.dispute.created");
    assert_eq!(created.len(), 1);
    let attempts: Vec<Option<u16>> = server
        .sandbox()
        .deliveries()
        .iter()
        .filter(|delivery| delivery.event_id == created[0])
        .map(|delivery| delivery.status)
        .collect();
    assert!(
        attempts.len() >= 2
            && attempts[0].is_some_and(|status| status >= 500)
            && attempts.last() == Some(&Some(200)),
        "refused while Stripe could not be asked, then applied: {attempts:?}"
    );
    let (_, fetched) = server.get(&format!("/v1/topups/{topup}")).await;
    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    assert_eq!(fetched["disputed"], "60.00", "{fetched}");
    let topups = lines_of(&server, "acme", "topup").await;
    assert_eq!(topups.len(), 1, "{topups:?}");
    assert_eq!(lines_of(&server, "acme", "dispute").await.len(), 1);

    // Won: the money comes back, once, whatever is redelivered.
    server
        .sandbox()
        .close_dispute(dispute["id"].as_str().unwrap(), true)
        .unwrap();
    server
        .wait_for_account("acme", "the won dispute's reinstatement", |account| {
            account["balance"] == "60.00"
        })
        .await;
    redeliver_all_and_wait(&server).await;
    assert_eq!(balance(&server, "acme").await, "60.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    assert_eq!(lines_of(&server, "acme", "dispute").await.len(), 2);
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn delayed_webhooks_credit_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.sandbox().set_webhook_faults(WebhookFaults {
        delay_ms: 300,
        ..WebhookFaults::default()
    });
    let topup = hosted_topup(&server, "acme", "45.00", "buy").await;
    let browser = Browser::new();
    let back = browser
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    // The browser never comes back in time: the late webhooks credit.
    server
        .wait_for_account("acme", "the delayed webhook's credit", |account| {
            account["balance"] == "45.00"
        })
        .await;
    server.settle_webhooks().await;
    // The return, late, and every event a second time (still delayed) change nothing.
    let landed = browser.follow_return(&back).await;
    assert!(landed.contains("topup_status=succeeded"), "{landed}");
    redeliver_all_and_wait(&server).await;
    assert_eq!(balance(&server, "acme").await, "45.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    assert_eq!(server.event_types("acme", "topup.").await, ["topup.succeeded"]);
    assert_eq!(server.account("acme").await["payment_method"]["last4"], "4242");
    server.assert_ledger_clean().await;
}

#[tokio::test]
async fn the_return_before_any_webhook_credits_at_once_and_the_webhooks_later_change_nothing() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    // Every webhook is held back until the return has been handled.
    server.sandbox().set_webhook_faults(WebhookFaults {
        drop_next: 50,
        ..WebhookFaults::default()
    });
    let topup = hosted_topup(&server, "acme", "35.00", "buy").await;
    let browser = Browser::new();
    let back = browser
        .complete_hosted_page(topup["url"].as_str().unwrap(), CARD_OK)
        .await;
    server.settle_webhooks().await;
    let completed = event_ids(&server, "checkout.session.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(
        server.sandbox().delivery_status(&completed[0]),
        Some(tollgate_stripe_sandbox::DeliveryStatus::Dropped),
        "no webhook reached Tollgate before the return"
    );
    let landed = browser.follow_return(&back).await;
    assert!(landed.contains("topup_status=succeeded"), "{landed}");
    // Credited by the return itself, with the card saved.
    let account = server.account("acme").await;
    assert_eq!(account["balance"], "35.00", "{account}");
    assert_eq!(account["payment_method"]["last4"], "4242", "{account}");

    // Now the webhooks arrive (redelivered), twice.
    server.sandbox().clear_faults();
    redeliver_all_and_wait(&server).await;
    assert_eq!(
        server.sandbox().delivery_status(&completed[0]),
        Some(tollgate_stripe_sandbox::DeliveryStatus::Delivered)
    );
    redeliver_all_and_wait(&server).await;
    assert_eq!(balance(&server, "acme").await, "35.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    assert_eq!(server.event_types("acme", "topup.").await, ["topup.succeeded"]);
    assert_eq!(
        server.event_types("acme", "payment_method.").await,
        ["payment_method.updated"]
    );
    server.assert_ledger_clean().await;
}

/// The customer is told the top-up could not be made (503), Stripe never received it, and
/// the customer does not retry: the recovery pass asks Stripe, never charges, and once no
/// request of it can still arrive, the top-up has failed.
#[tokio::test]
async fn recovery_never_charges_a_top_up_whose_charge_never_reached_stripe() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    server.settle_webhooks().await;
    server.sandbox().inject_api_fault(ApiFault {
        count: 3,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::Before,
        path_prefix: Some("/v1/payment_intents".to_owned()),
    });
    let response = server.topup("acme", "100.00", "buy").await;
    assert_error(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_processor_unavailable",
        None,
    );
    let intents = |server: &TestServer| {
        server.sandbox().state()["payment_intents"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(intents(&server), 0, "Stripe never received it");

    // A pass soon after: nothing at Stripe yet, so nothing is decided (and nothing sent).
    server.clock.advance(time::Duration::seconds(40));
    let report = server
        .billing()
        .recover_open_topups(time::Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.resolved, report.errors),
        (1, 0, 0),
        "{report:?}"
    );
    assert_eq!(intents(&server), 0, "recovery does not charge");
    assert_eq!(only_topup(&server, "acme").await["status"], "pending");

    // Once no request of it can still arrive: failed, with the reason.
    server.clock.advance(tollgate_billing::UNSENT_CHARGE_GIVE_UP);
    let report = server
        .billing()
        .recover_open_topups(time::Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.resolved, report.errors),
        (1, 1, 0),
        "{report:?}"
    );
    let topup = only_topup(&server, "acme").await;
    assert_eq!(topup["status"], "failed", "{topup}");
    assert_eq!(
        topup["failure_code"],
        tollgate_billing::UNSENT_FAILURE_CODE,
        "{topup}"
    );
    assert_eq!(server.event_types("acme", "topup.").await, ["topup.failed"]);
    // The customer's retry with the same key, now, answers that and charges nothing.
    let (status, retried) = server.topup("acme", "100.00", "buy").await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["id"], topup["id"]);
    assert_eq!(retried["status"], "failed", "{retried}");
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.examined, 0);
    assert_eq!(intents(&server), 0, "never charged");
    assert_eq!(charges(server.sandbox()), (0, 0));
    assert_eq!(balance(&server, "acme").await, "0.00");
    assert!(lines_of(&server, "acme", "topup").await.is_empty());
    server.assert_ledger_clean().await;
}

/// Before recovery gives up, the customer's retry with the same key charges, once.
#[tokio::test]
async fn a_retry_before_recovery_gives_up_charges_once() {
    let server = TestServer::start_with_payments().await;
    server.create_account("acme").await;
    server.add_card("acme", CARD_OK).await;
    server.settle_webhooks().await;
    server.sandbox().inject_api_fault(ApiFault {
        count: 3,
        kind: ApiFaultKind::Fail,
        when: FaultTiming::Before,
        path_prefix: Some("/v1/payment_intents".to_owned()),
    });
    let response = server.topup("acme", "80.00", "buy").await;
    assert_eq!(response.0, StatusCode::SERVICE_UNAVAILABLE, "{}", response.1);
    // Recovery looks only at top-ups older than its minimum age (here: zero).
    server.clock.advance(time::Duration::seconds(1));
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((report.examined, report.resolved), (1, 0), "{report:?}");

    let (status, topup) = server.topup("acme", "80.00", "buy").await;
    assert_eq!(status, StatusCode::OK, "{topup}");
    assert_eq!(topup["status"], "succeeded", "{topup}");
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.examined, 0);
    server.settle_webhooks().await;
    assert_eq!(charges(server.sandbox()), (1, 1));
    assert_eq!(balance(&server, "acme").await, "80.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    server.assert_ledger_clean().await;
}

/// Stripe charged but the answer was lost, and the card was removed since: recovery finds
/// the payment at Stripe by the top-up's reference and credits it, once, without a card to
/// charge (so it cannot have charged again).
#[tokio::test]
async fn recovery_finds_a_charge_whose_answer_was_lost_and_credits_it_once() {
    let server = TestServer::start_with_payments().await;
    let (topup, intent) = charged_but_unheard(&server, "55.00").await;
    let (status, removed) = server
        .send(server.request(Method::DELETE, "/v1/accounts/acme/payment_method"))
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");

    server.clock.advance(time::Duration::seconds(1));
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.resolved, report.errors),
        (1, 1, 0),
        "{report:?}"
    );
    let (_, fetched) = server.get(&format!("/v1/topups/{topup}")).await;
    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    assert_eq!(fetched["payment_reference"], intent.as_str());
    assert_eq!(fetched["card_last4"], "4242", "{fetched}");
    assert_eq!(balance(&server, "acme").await, "55.00");

    // Another pass, the customer's retry and every webhook: nothing more.
    let report = server
        .billing()
        .recover_open_topups(time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.examined, 0);
    let (_, retried) = server.topup("acme", "55.00", "buy").await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    redeliver_all_and_wait(&server).await;
    assert_eq!(charges(server.sandbox()), (1, 1), "charged once");
    assert_eq!(balance(&server, "acme").await, "55.00");
    assert_eq!(lines_of(&server, "acme", "topup").await.len(), 1);
    server.assert_ledger_clean().await;
}
