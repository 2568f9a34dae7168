//! The hosted Checkout page driven like a browser: GET the page, POST the form, follow the 303.

use serde_json::{Value, json};

use crate::common::{Http, Receiver, sandbox};

fn location(r: &crate::common::Resp) -> String {
    r.headers["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn setup_mode_with_4242_completes_attaches_and_notifies() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let customer = http.customer("ada@example.com").await;
    let (id, url) = http.setup_session(&customer).await;

    let page = http.page(&url).await;
    assert_eq!(page.status, 200);
    for needle in [
        "id=\"cardNumber\"",
        "id=\"cardExpiry\"",
        "id=\"cardCvc\"",
        "id=\"billingName\"",
        "id=\"submit\"",
        "id=\"cancel\"",
        "role=\"alert\"",
        "<label for=\"cardNumber\">",
    ] {
        assert!(page.text.contains(needle), "page lacks {needle}");
    }

    let r = http.pay(&url, "4242 4242 4242 4242").await;
    assert_eq!(r.status, 303);
    assert_eq!(location(&r), format!("http://app.test/billing?session={id}"));

    let s = http
        .get(&format!(
            "/v1/checkout/sessions/{id}?expand[]=setup_intent.payment_method"
        ))
        .await;
    assert_eq!(s.json["status"], "complete");
    assert_eq!(s.json["setup_intent"]["status"], "succeeded");
    let payment_method = &s.json["setup_intent"]["payment_method"];
    assert_eq!(payment_method["customer"], customer.as_str());
    assert_eq!(payment_method["card"]["brand"], "visa");
    assert_eq!(payment_method["card"]["last4"], "4242");
    assert_eq!(payment_method["card"]["exp_month"], 12);
    assert_eq!(payment_method["card"]["exp_year"], 2034);
    assert_eq!(payment_method["billing_details"]["name"], "Ada Lovelace");

    let got = rx
        .wait_for_types(&[
            "payment_method.attached",
            "setup_intent.succeeded",
            "checkout.session.completed",
        ])
        .await;
    let completed = got
        .iter()
        .find(|r| r.type_() == "checkout.session.completed")
        .unwrap();
    assert_eq!(completed.event["data"]["object"]["id"], id.as_str());
    assert_eq!(
        completed.event["data"]["object"]["metadata"]["account_id"],
        "acme"
    );
    assert!(completed.signature.starts_with("t="));

    // The page of a completed session no longer takes a card.
    let again = http.page(&url).await;
    assert!(again.text.contains("complete") && !again.text.contains("id=\"cardNumber\""));
}

#[tokio::test]
async fn declined_cards_show_an_error_and_save_nothing() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("decline@example.com").await;
    let (id, url) = http.setup_session(&customer).await;
    for (number, message) in [
        ("4000000000000002", "Your card was declined."),
        ("4000000000009995", "Your card has insufficient funds."),
    ] {
        let r = http.pay(&url, number).await;
        assert_eq!(r.status, 200);
        assert!(
            r.text
                .contains(&format!("<div id=\"error\" role=\"alert\">{message}</div>")),
            "{}",
            r.text
        );
        assert!(r.text.contains("id=\"cardNumber\""), "the form is shown again");
    }
    let s = http
        .get(&format!("/v1/checkout/sessions/{id}?expand[]=setup_intent"))
        .await;
    assert_eq!(s.json["status"], "open");
    assert_eq!(s.json["setup_intent"]["status"], "requires_payment_method");
    assert_eq!(
        s.json["setup_intent"]["last_setup_error"]["decline_code"],
        "insufficient_funds"
    );
    let cards = http
        .get(&format!("/v1/payment_methods?customer={customer}&type=card"))
        .await;
    assert_eq!(cards.json["data"].as_array().unwrap().len(), 0);

    // The session can still be completed with a good card.
    let r = http.pay(&url, "4242424242424242").await;
    assert_eq!(r.status, 303);
}

#[tokio::test]
async fn malformed_card_input_is_rejected_on_the_page() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("typo@example.com").await;
    let (_, url) = http.setup_session(&customer).await;
    let cases = [
        (
            ("4242 4242 4242 4241", "12 / 34", "123"),
            "Your card number is incorrect.",
        ),
        (("4242", "12 / 34", "123"), "Your card number is incomplete."),
        (
            ("4242424242424242", "01 / 20", "123"),
            "Your card&#39;s expiration date is in the past.",
        ),
        (
            ("4242424242424242", "1", "123"),
            "Your card&#39;s expiration date is incomplete.",
        ),
        (
            ("4242424242424242", "12 / 34", "1"),
            "Your card&#39;s security code is incomplete.",
        ),
    ];
    for ((number, expiry, cvc), message) in cases {
        let r = http
            .submit(
                &url,
                &[
                    ("cardNumber", number),
                    ("cardExpiry", expiry),
                    ("cardCvc", cvc),
                    ("billingName", "X"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(
            r.text.contains(message),
            "expected {message} for {number}/{expiry}/{cvc}"
        );
    }
}

#[tokio::test]
async fn cancel_link_leads_to_cancel_url_and_changes_nothing() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("cancel@example.com").await;
    let (id, url) = http.setup_session(&customer).await;
    let page = http.page(&url).await;
    assert!(
        page.text
            .contains("<a id=\"cancel\" class=\"back\" href=\"http://app.test/billing?cancelled=1\">")
    );
    let s = http.get(&format!("/v1/checkout/sessions/{id}")).await;
    assert_eq!(s.json["status"], "open");
    let events = http.get("/v1/events").await;
    let types: Vec<&str> = events.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["customer.created"]);
}

#[tokio::test]
async fn three_d_secure_challenge_can_be_completed_or_failed() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("3ds@example.com").await;

    // 3155: challenge, complete -> saved.
    let (id, url) = http.setup_session(&customer).await;
    let r = http.pay(&url, "4000 0025 0000 3155").await;
    assert_eq!(r.status, 303);
    let challenge_url = location(&r);
    assert_eq!(
        challenge_url,
        format!("{}/checkout/{id}/authenticate", sb.base_url())
    );
    let page = http.page(&challenge_url).await;
    assert!(page.text.contains("id=\"complete-auth\"") && page.text.contains("id=\"fail-auth\""));
    assert!(page.text.contains("ending in 3155"));
    let r = http.submit(&challenge_url, &[("action", "complete")]).await;
    assert_eq!(r.status, 303);
    assert!(location(&r).starts_with("http://app.test/billing"));
    let s = http
        .get(&format!(
            "/v1/checkout/sessions/{id}?expand[]=setup_intent.payment_method"
        ))
        .await;
    assert_eq!(s.json["status"], "complete");
    assert_eq!(s.json["setup_intent"]["payment_method"]["card"]["last4"], "3155");

    // 3184: challenge, fail -> error on the card page, nothing saved, session open.
    let (id, url) = http.setup_session(&customer).await;
    let r = http.pay(&url, "4000002760003184").await;
    let challenge_url = location(&r);
    let r = http.submit(&challenge_url, &[("action", "fail")]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text
            .contains("We are unable to authenticate your payment method."),
        "{}",
        r.text
    );
    assert!(r.text.contains("id=\"cardNumber\""));
    let s = http
        .get(&format!("/v1/checkout/sessions/{id}?expand[]=setup_intent"))
        .await;
    assert_eq!(s.json["status"], "open");
    assert!(s.json["setup_intent"]["payment_method"].is_null());
    let cards = http
        .get(&format!("/v1/customers/{customer}/payment_methods"))
        .await;
    assert_eq!(
        cards.json["data"].as_array().unwrap().len(),
        1,
        "only the 3155 card"
    );
}

#[tokio::test]
async fn payment_mode_with_setup_future_usage_saves_the_card_and_pays() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let customer = http.customer("topup@example.com").await;
    let r = http
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "payment"),
                ("customer", &customer),
                ("line_items[0][price_data][currency]", "usd"),
                ("line_items[0][price_data][unit_amount]", "10000"),
                ("line_items[0][price_data][product_data][name]", "Tollgate top-up"),
                ("line_items[0][quantity]", "1"),
                ("payment_intent_data[setup_future_usage]", "off_session"),
                ("payment_intent_data[metadata][topup_id]", "tu_1"),
                (
                    "success_url",
                    "http://app.test/topups/done?session={CHECKOUT_SESSION_ID}",
                ),
                ("cancel_url", "http://app.test/topups"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["amount_total"], 10000);
    let id = r.json["id"].as_str().unwrap().to_string();
    let url = r.json["url"].as_str().unwrap().to_string();
    let page = http.page(&url).await;
    assert!(page.text.contains("$100.00") && page.text.contains("Tollgate top-up"));

    // A declined card first: error, nothing saved, session still open.
    let r = http.pay(&url, "4000000000000341").await;
    assert!(r.text.contains("Your card was declined."));

    let r = http.pay(&url, "4242424242424242").await;
    assert_eq!(r.status, 303);
    assert_eq!(location(&r), format!("http://app.test/topups/done?session={id}"));
    let s = http
        .get(&format!("/v1/checkout/sessions/{id}?expand[]=payment_intent"))
        .await;
    assert_eq!(s.json["status"], "complete");
    assert_eq!(s.json["payment_status"], "paid");
    let payment_intent = &s.json["payment_intent"];
    assert_eq!(payment_intent["status"], "succeeded");
    assert_eq!(payment_intent["amount"], 10000);
    assert_eq!(payment_intent["amount_received"], 10000);
    assert_eq!(payment_intent["metadata"]["topup_id"], "tu_1");
    assert_eq!(payment_intent["setup_future_usage"], "off_session");
    let cards = http
        .get(&format!("/v1/payment_methods?customer={customer}&type=card"))
        .await;
    let cards = cards.json["data"].as_array().unwrap();
    assert_eq!(cards.len(), 1, "only the successful card is saved");
    assert_eq!(cards[0]["card"]["last4"], "4242");
    assert_eq!(payment_intent["payment_method"], cards[0]["id"]);

    rx.wait_for_types(&[
        "payment_intent.payment_failed",
        "payment_intent.succeeded",
        "payment_method.attached",
        "checkout.session.completed",
    ])
    .await;
}

#[tokio::test]
async fn expired_sessions_refuse_cards() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("late@example.com").await;
    let (id, url) = http.setup_session(&customer).await;
    let r = http
        .post(&format!("/v1/checkout/sessions/{id}/expire"), &[])
        .await;
    assert_eq!(r.json["status"], "expired");
    assert!(r.json["url"].is_null());
    let page = http.page(&url).await;
    assert_eq!(page.status, 410);
    let r = http.pay(&url, "4242424242424242").await;
    assert_eq!(r.status, 410);
    assert_eq!(http.page("/checkout/cs_test_nope").await.status, 404);
}

#[tokio::test]
async fn legacy_amount_line_items_and_customer_creation() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let r = http
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "payment"),
                ("line_items[0][amount]", "1250"),
                ("line_items[0][currency]", "usd"),
                ("line_items[0][name]", "Credits"),
                ("line_items[0][quantity]", "2"),
                ("customer_email", "new@example.com"),
                ("payment_intent_data[setup_future_usage]", "off_session"),
                ("success_url", "http://app.test/ok"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["amount_total"], 2500);
    assert!(r.json["customer"].is_null());
    let id = r.json["id"].as_str().unwrap().to_string();
    let done = http
        .pay(r.json["url"].as_str().unwrap(), "5555 5555 5555 4444")
        .await;
    assert_eq!(done.status, 303);
    // Saving the card for later needs a customer, so Checkout created one.
    let s = http
        .get(&format!("/v1/checkout/sessions/{id}?expand[]=customer"))
        .await;
    assert_eq!(s.json["customer"]["email"], "new@example.com");
    assert_eq!(s.json["customer_details"]["email"], "new@example.com");
    let cards = http
        .get(&format!(
            "/v1/customers/{}/payment_methods",
            s.json["customer"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(cards.json["data"][0]["card"]["brand"], "mastercard");

    let r = http
        .post(
            "/v1/checkout/sessions",
            &[("mode", "payment"), ("success_url", "http://app.test/ok")],
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("line_items"))
    );
    let r = http
        .post(
            "/v1/checkout/sessions",
            &[("mode", "payment"), ("line_items[0][price]", "price_123")],
        )
        .await;
    assert_eq!(r.json["error"]["code"], "resource_missing");
}

#[tokio::test]
async fn payment_method_type_filters_are_accepted_and_echoed() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let base = [("mode", "setup"), ("currency", "usd")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut form = base.to_vec();
        form.extend_from_slice(extra);
        form
    };

    let r = http
        .post(
            "/v1/checkout/sessions",
            &with(&[
                ("allowed_payment_method_types[0]", "card"),
                ("excluded_payment_method_types[0]", "sepa_debit"),
                ("excluded_payment_method_types[1]", "paypal"),
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["id"].as_str().unwrap();
    let fetched = http.get(&format!("/v1/checkout/sessions/{id}")).await;
    for session in [&r.json, &fetched.json] {
        assert_eq!(session["allowed_payment_method_types"], json!(["card"]));
        assert_eq!(
            session["excluded_payment_method_types"],
            json!(["sepa_debit", "paypal"])
        );
        assert_eq!(session["payment_method_types"], json!(["card"]));
    }

    // The legacy list still works, and the filters stay null when not given, as on Stripe.
    let legacy = http
        .post(
            "/v1/checkout/sessions",
            &with(&[("payment_method_types[0]", "card")]),
        )
        .await;
    assert_eq!(legacy.status, 200, "{}", legacy.text);
    assert_eq!(legacy.json["allowed_payment_method_types"], Value::Null);
    assert_eq!(legacy.json["excluded_payment_method_types"], Value::Null);

    for (form, param) in [
        (
            with(&[
                ("allowed_payment_method_types[0]", "card"),
                ("allowed_payment_method_types[1]", "us_bank_account"),
            ]),
            "allowed_payment_method_types[1]",
        ),
        (
            with(&[("excluded_payment_method_types[0]", "card")]),
            "excluded_payment_method_types[0]",
        ),
    ] {
        let r = http.post("/v1/checkout/sessions", &form).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.json["error"]["type"], "invalid_request_error");
        assert_eq!(r.json["error"]["param"], param);
    }
}
