//! Off-session payments for every test card, refunds and disputes.

use serde_json::json;

use crate::common::{Http, Receiver, sandbox};

async fn off_session(
    http: &Http,
    customer: Option<&str>,
    payment_method: &str,
    key: Option<&str>,
) -> crate::common::Resp {
    let mut form = vec![
        ("amount", "2500"),
        ("currency", "usd"),
        ("payment_method", payment_method),
        ("confirm", "true"),
        ("off_session", "true"),
        ("metadata[account_id]", "acme"),
    ];
    if let Some(c) = customer {
        form.push(("customer", c));
    }
    http.post_with("/v1/payment_intents", &form, key).await
}

#[tokio::test]
async fn off_session_payments_follow_the_test_cards() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("cards@example.com").await;

    // 4242: succeeds, with a charge.
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let r = off_session(&http, Some(&customer), &payment_method, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "succeeded");
    let charge = http
        .get(&format!(
            "/v1/charges/{}",
            r.json["latest_charge"].as_str().unwrap()
        ))
        .await;
    assert_eq!(charge.json["status"], "succeeded");
    assert_eq!(charge.json["amount"], 2500);
    assert_eq!(charge.json["customer"], customer.as_str());

    // 3155 after the 3-D Secure setup: off-session succeeds.
    let payment_method = http.save_card(&customer, "4000002500003155").await;
    let r = off_session(&http, Some(&customer), &payment_method, None).await;
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);

    // 3155 attached without a setup needs authentication.
    let payment_method = http
        .post(
            "/v1/payment_methods/pm_card_authenticationRequiredOnSetup/attach",
            &[("customer", &customer)],
        )
        .await;
    let r = off_session(
        &http,
        Some(&customer),
        payment_method.json["id"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.json["error"]["code"], "authentication_required");

    // 3184: always needs authentication; off-session fails like Stripe.
    let payment_method = http.save_card(&customer, "4000002760003184").await;
    let r = off_session(&http, Some(&customer), &payment_method, None).await;
    assert_eq!(r.status, 402);
    let e = &r.json["error"];
    assert_eq!(e["type"], "card_error");
    assert_eq!(e["code"], "authentication_required");
    assert_eq!(e["payment_intent"]["status"], "requires_payment_method");
    assert_eq!(
        e["payment_intent"]["last_payment_error"]["code"],
        "authentication_required"
    );

    // 3184 on-session: requires_action with a challenge page that completes the payment.
    let r = http
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "2500"),
                ("currency", "usd"),
                ("customer", &customer),
                ("payment_method", &payment_method),
                ("confirm", "true"),
                ("return_url", "http://app.test/back"),
            ],
        )
        .await;
    assert_eq!(r.json["status"], "requires_action", "{}", r.text);
    let payment_intent = r.json["id"].as_str().unwrap().to_string();
    let challenge = r.json["next_action"]["redirect_to_url"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let done = http.submit(&challenge, &[("action", "complete")]).await;
    assert_eq!(done.status, 303);
    assert_eq!(
        done.headers["location"],
        format!("http://app.test/back?payment_intent={payment_intent}&redirect_status=succeeded").as_str()
    );
    assert_eq!(
        http.get(&format!("/v1/payment_intents/{payment_intent}"))
            .await
            .json["status"],
        "succeeded"
    );

    // 0341: attaches fine, every charge is declined.
    let payment_method = http.save_card(&customer, "4000000000000341").await;
    let r = off_session(&http, Some(&customer), &payment_method, None).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.json["error"]["code"], "card_declined");
    assert!(r.json["error"]["charge"].as_str().unwrap().starts_with("ch_"));

    // 0002 and 9995 never attach; Stripe's test ids reach the decline paths.
    for (token, decline) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ] {
        let r = off_session(&http, None, token, None).await;
        assert_eq!(r.status, 402);
        assert_eq!(r.json["error"]["code"], "card_declined");
        assert_eq!(r.json["error"]["decline_code"], decline);
        assert_eq!(
            r.json["error"]["payment_intent"]["last_payment_error"]["decline_code"],
            decline
        );
        let attach = http
            .post(
                &format!("/v1/payment_methods/{token}/attach"),
                &[("customer", &customer)],
            )
            .await;
        assert_eq!(attach.status, 402);
    }
}

#[tokio::test]
async fn payment_intent_validation_and_lifecycle() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("pi@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;

    let r = http
        .post("/v1/payment_intents", &[("amount", "20"), ("currency", "usd")])
        .await;
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (400, Some("amount_too_small"))
    );
    let r = http.post("/v1/payment_intents", &[("currency", "usd")]).await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("amount"))
    );
    let r = http
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "2500"),
                ("currency", "usd"),
                ("payment_method", &payment_method),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "an attached card needs its customer");

    let r = http
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "2500"),
                ("currency", "usd"),
                ("customer", &customer),
                ("payment_method", &payment_method),
                ("payment_method_types[0]", "card"),
            ],
        )
        .await;
    assert_eq!(r.json["status"], "requires_confirmation");
    let id = r.json["id"].as_str().unwrap().to_string();
    let r = http
        .post(
            &format!("/v1/payment_intents/{id}/confirm"),
            &[("off_session", "true")],
        )
        .await;
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    let r = http.post(&format!("/v1/payment_intents/{id}/confirm"), &[]).await;
    assert_eq!(r.json["error"]["code"], "payment_intent_unexpected_state");
    let r = http.post(&format!("/v1/payment_intents/{id}/cancel"), &[]).await;
    assert_eq!(r.status, 400);

    let r = http
        .post("/v1/payment_intents", &[("amount", "2500"), ("currency", "usd")])
        .await;
    assert_eq!(r.json["status"], "requires_payment_method");
    let r = http
        .post(
            &format!("/v1/payment_intents/{}/cancel", r.json["id"].as_str().unwrap()),
            &[],
        )
        .await;
    assert_eq!(r.json["status"], "canceled");
}

#[tokio::test]
async fn refunds_full_partial_and_over_refund() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let customer = http.customer("refund@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let payment_intent = off_session(&http, Some(&customer), &payment_method, None).await;
    let pi_id = payment_intent.json["id"].as_str().unwrap();
    let charge = payment_intent.json["latest_charge"].as_str().unwrap();

    let r = http
        .post(
            "/v1/refunds",
            &[
                ("payment_intent", pi_id),
                ("amount", "1000"),
                ("reason", "requested_by_customer"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["amount"], 1000);
    assert_eq!(r.json["status"], "succeeded");
    let c = http.get(&format!("/v1/charges/{charge}")).await;
    assert_eq!(
        (c.json["amount_refunded"].as_i64(), c.json["refunded"].as_bool()),
        (Some(1000), Some(false))
    );

    let r = http
        .post("/v1/refunds", &[("charge", charge), ("amount", "2000")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["param"], "amount");
    assert!(r.json["error"]["message"].as_str().unwrap().contains("$15.00"));

    let r = http.post("/v1/refunds", &[("charge", charge)]).await;
    assert_eq!(r.json["amount"], 1500, "the rest by default");
    let c = http.get(&format!("/v1/charges/{charge}")).await;
    assert_eq!(
        (c.json["amount_refunded"].as_i64(), c.json["refunded"].as_bool()),
        (Some(2500), Some(true))
    );
    let r = http.post("/v1/refunds", &[("charge", charge)]).await;
    assert_eq!(r.json["error"]["code"], "charge_already_refunded");
    let got = http
        .get(&format!(
            "/v1/refunds/{}",
            http.get("/v1/events?type=refund.created&limit=1").await.json["data"][0]["data"]["object"]["id"]
                .as_str()
                .unwrap()
        ))
        .await;
    assert_eq!(got.json["object"], "refund");

    let refunded = rx
        .wait_until(|all| all.iter().filter(|r| r.type_() == "charge.refunded").count() == 2)
        .await;
    let last = refunded.iter().rfind(|r| r.type_() == "charge.refunded").unwrap();
    assert_eq!(last.event["data"]["object"]["amount_refunded"], 2500);
    assert_eq!(last.event["data"]["previous_attributes"]["amount_refunded"], 1000);
}

#[tokio::test]
async fn disputes_open_and_close_with_events() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let customer = http.customer("dispute@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;

    let mut charges = Vec::new();
    for _ in 0..2 {
        let payment_intent = off_session(&http, Some(&customer), &payment_method, None).await;
        charges.push(payment_intent.json["latest_charge"].as_str().unwrap().to_string());
    }
    for (charge, outcome) in charges.iter().zip(["lost", "won"]) {
        let d = http
            .admin(
                &format!("/__sandbox/charges/{charge}/dispute"),
                json!({ "reason": "fraudulent" }),
            )
            .await;
        assert_eq!(d.status, 200, "{}", d.text);
        assert_eq!(d.json["status"], "needs_response");
        assert_eq!(d.json["amount"], 2500);
        let id = d.json["id"].as_str().unwrap();
        assert!(id.starts_with("dp_"));
        assert_eq!(
            http.get(&format!("/v1/charges/{charge}")).await.json["disputed"],
            true
        );
        let refund = http.post("/v1/refunds", &[("charge", charge)]).await;
        assert_eq!(refund.json["error"]["code"], "charge_disputed");

        let closed = http
            .admin(
                &format!("/__sandbox/disputes/{id}/close"),
                json!({ "status": outcome }),
            )
            .await;
        assert_eq!(closed.json["status"], outcome);
        assert_eq!(
            http.get(&format!("/v1/disputes/{id}")).await.json["status"],
            outcome
        );
        let again = http
            .admin(
                &format!("/__sandbox/disputes/{id}/close"),
                json!({ "status": "won" }),
            )
            .await;
        assert_eq!(again.status, 400);
    }
    // The won dispute's reinstatement is the last event emitted.
    let got = rx
        .wait_until(|all| all.iter().any(|r| r.type_() == "charge.dispute.funds_reinstated"))
        .await;
    // Per dispute, in creation order: the money leaves when it opens and comes back only if won.
    let dispute_events: Vec<(&str, &str, &str)> = got
        .iter()
        .filter(|r| r.type_().starts_with("charge.dispute."))
        .map(|r| {
            let object = &r.event["data"]["object"];
            (
                object["charge"].as_str().unwrap(),
                r.type_(),
                object["status"].as_str().unwrap(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for (charge, outcome) in charges.iter().zip(["lost", "won"]) {
        expected.push((charge.as_str(), "charge.dispute.created", "needs_response"));
        expected.push((
            charge.as_str(),
            "charge.dispute.funds_withdrawn",
            "needs_response",
        ));
        expected.push((charge.as_str(), "charge.dispute.closed", outcome));
        if outcome == "won" {
            expected.push((charge.as_str(), "charge.dispute.funds_reinstated", "won"));
        }
    }
    assert_eq!(dispute_events, expected);
}
