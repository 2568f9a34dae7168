//! Stripe's protocol rules: authentication, idempotency, unknown parameters, errors, expansion,
//! pagination.

use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
use stripe_types::Currency;

use crate::common::{Http, KEY, sandbox, stripe};

#[tokio::test]
async fn missing_or_invalid_api_key_is_401() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let url = format!("{}/v1/customers", sb.base_url());
    let r = http
        .client
        .post(&url)
        .form(&[("email", "x@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You did not provide an API key.")
    );

    let r = http
        .client
        .get(&url)
        .bearer_auth("sk_live_123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .client
        .get(format!("{}/v1/events", sb.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let bad = stripe::ClientBuilder::new("rk_nope")
        .url(sb.base_url())
        .build()
        .unwrap();
    let err = stripe_core::customer::CreateCustomer::new()
        .send(&bad)
        .await
        .unwrap_err();
    assert!(matches!(err, StripeError::Stripe(_, 401)));
}

#[tokio::test]
async fn unknown_parameters_are_rejected_like_stripe() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let r = http
        .post(
            "/v1/customers",
            &[("email", "x@example.com"), ("favourite_colour", "blue")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["code"], "parameter_unknown");
    assert_eq!(r.json["error"]["param"], "favourite_colour");
    assert_eq!(
        r.json["error"]["message"],
        "Received unknown parameter: favourite_colour"
    );

    let r = http
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "setup"),
                ("currency", "usd"),
                ("payment_intent_data[nope]", "1"),
            ],
        )
        .await;
    assert_eq!(r.json["error"]["param"], "payment_intent_data[nope]");
    let r = http.get("/v1/events?color=red").await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("color"))
    );
    assert_eq!(
        http.get("/v1/events").await.json["data"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was created"
    );

    let r = http
        .post("/v1/payment_intents", &[("amount", "ten"), ("currency", "usd")])
        .await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("amount"))
    );
    let r = http.post("/v1/checkout/sessions", &[("currency", "usd")]).await;
    assert_eq!(
        (
            r.json["error"]["code"].as_str(),
            r.json["error"]["param"].as_str()
        ),
        (Some("parameter_missing"), Some("mode"))
    );
}

#[tokio::test]
async fn idempotency_key_replays_and_rejects_mismatch() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("idem@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let form = [
        ("amount", "2500"),
        ("currency", "usd"),
        ("customer", customer.as_str()),
        ("payment_method", payment_method.as_str()),
        ("confirm", "true"),
        ("off_session", "true"),
    ];

    let first = http
        .post_with("/v1/payment_intents", &form, Some("recharge-acme-1"))
        .await;
    assert_eq!(first.status, 200);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Same parameters in another order are the same request.
    let mut reordered = form;
    reordered.reverse();
    let replay = http
        .post_with("/v1/payment_intents", &reordered, Some("recharge-acme-1"))
        .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json, first.json);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let succeeded = http.get("/v1/events?type=payment_intent.succeeded").await;
    assert_eq!(
        succeeded.json["data"].as_array().unwrap().len(),
        1,
        "charged once"
    );

    let mut other = form;
    other[0] = ("amount", "9900");
    let r = http
        .post_with("/v1/payment_intents", &other, Some("recharge-acme-1"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["type"], "idempotency_error");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same parameters")
    );
    let r = http
        .post_with("/v1/customers", &[], Some("recharge-acme-1"))
        .await;
    assert_eq!(r.json["error"]["type"], "idempotency_error");

    // Declines are stored too: the replay is the same 402, not a second attempt.
    let decline = [
        ("amount", "2500"),
        ("currency", "usd"),
        ("payment_method", "pm_card_chargeDeclined"),
        ("confirm", "true"),
        ("off_session", "true"),
    ];
    let a = http
        .post_with("/v1/payment_intents", &decline, Some("decline-1"))
        .await;
    let b = http
        .post_with("/v1/payment_intents", &decline, Some("decline-1"))
        .await;
    assert_eq!((a.status, b.status), (402, 402));
    assert_eq!(a.json, b.json);
    // Validation errors are not stored: fixing the request under the same key works.
    let bad = http
        .post_with("/v1/customers", &[("nope", "1")], Some("fixable"))
        .await;
    assert_eq!(bad.status, 400);
    let good = http
        .post_with(
            "/v1/customers",
            &[("email", "fixed@example.com")],
            Some("fixable"),
        )
        .await;
    assert_eq!(good.status, 200);

    // async-stripe's idempotent strategy sends the header; replays return the same object.
    let client = stripe(&sb);
    let send = || {
        CreatePaymentIntent::new(1234, Currency::USD)
            .customer(customer.as_str())
            .payment_method(payment_method.as_str())
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .customize()
            .request_strategy(RequestStrategy::Idempotent(
                IdempotencyKey::new("acme-recharge-7").unwrap(),
            ))
            .send(&client)
    };
    let one = send().await.unwrap();
    let two = send().await.unwrap();
    assert_eq!(one.id, two.id);
}

#[tokio::test]
async fn errors_have_stripes_shapes() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let r = http.get("/v1/customers/cus_missing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"]["code"], "resource_missing");
    assert_eq!(r.json["error"]["message"], "No such customer: 'cus_missing'");
    let r = http
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "2500"),
                ("currency", "usd"),
                ("customer", "cus_missing"),
            ],
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("customer"))
    );
    let r = http.get("/v1/nothing_here").await;
    assert_eq!(r.status, 404);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unrecognized request URL (GET: /v1/nothing_here)")
    );
    let r = http
        .client
        .delete(format!("{}/v1/customers", sb.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("request-id"));
}

#[tokio::test]
async fn expand_and_pagination() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("expand@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let r = http
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "2500"),
                ("currency", "usd"),
                ("customer", &customer),
                ("payment_method", &payment_method),
                ("confirm", "true"),
                ("off_session", "true"),
                ("expand[]", "latest_charge"),
                ("expand[]", "customer"),
            ],
        )
        .await;
    assert_eq!(r.json["latest_charge"]["object"], "charge");
    assert_eq!(r.json["customer"]["email"], "expand@example.com");
    let r = http
        .get(&format!(
            "/v1/payment_intents/{}?expand[0]=payment_method",
            r.json["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.json["payment_method"]["card"]["last4"], "4242");
    let r = http
        .get(&format!("/v1/customers/{customer}?expand[]=email"))
        .await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("expand"))
    );
    let r = http
        .get(&format!(
            "/v1/customers/{customer}?expand[]=invoice_settings.default_payment_method"
        ))
        .await;
    assert_eq!(r.status, 200, "null expandable fields stay null");

    for i in 0..5 {
        http.customer(&format!("page{i}@example.com")).await;
    }
    let page1 = http.get("/v1/events?type=customer.created&limit=2").await;
    let data = page1.json["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(page1.json["has_more"], true);
    assert_eq!(page1.json["object"], "list");
    assert_eq!(
        data[0]["data"]["object"]["email"], "page4@example.com",
        "newest first"
    );
    let last = data[1]["id"].as_str().unwrap();
    let page2 = http
        .get(&format!(
            "/v1/events?type=customer.created&limit=10&starting_after={last}"
        ))
        .await;
    assert_eq!(page2.json["data"].as_array().unwrap().len(), 4);
    assert_eq!(page2.json["has_more"], false);
    let r = http.get("/v1/events?limit=0").await;
    assert_eq!(r.status, 400);
    let r = http.get("/v1/events?limit=101").await;
    assert_eq!(r.status, 400);
    let r = http.get("/v1/events?types[]=charge.*").await;
    assert!(
        r.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"].as_str().unwrap().starts_with("charge."))
    );
    assert_eq!(r.json["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn customer_updates_and_detach_emit_events() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("upd@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let r = http
        .post(
            &format!("/v1/customers/{customer}"),
            &[
                ("invoice_settings[default_payment_method]", &payment_method),
                ("metadata[tier]", "pro"),
                ("metadata[account_id]", ""),
            ],
        )
        .await;
    assert_eq!(
        r.json["invoice_settings"]["default_payment_method"],
        payment_method.as_str()
    );
    assert_eq!(r.json["metadata"], serde_json::json!({ "tier": "pro" }));
    let r = http
        .post(
            &format!("/v1/customers/{customer}"),
            &[("invoice_settings[default_payment_method]", "pm_other")],
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["param"].as_str()),
        (400, Some("invoice_settings[default_payment_method]"))
    );

    let r = http
        .post(&format!("/v1/payment_methods/{payment_method}/detach"), &[])
        .await;
    assert!(r.json["customer"].is_null());
    let c = http.get(&format!("/v1/customers/{customer}")).await;
    assert!(c.json["invoice_settings"]["default_payment_method"].is_null());
    let r = http
        .post(&format!("/v1/payment_methods/{payment_method}/detach"), &[])
        .await;
    assert_eq!(r.status, 400);
    let updates = http.get("/v1/events?type=customer.updated").await;
    let updates = updates.json["data"].as_array().unwrap();
    assert_eq!(updates.len(), 2);
    assert_eq!(
        updates[1]["data"]["previous_attributes"]["invoice_settings"]["default_payment_method"],
        serde_json::Value::Null
    );
    let detached = http.get("/v1/events?type=payment_method.detached").await;
    assert_eq!(
        detached.json["data"][0]["data"]["previous_attributes"]["customer"],
        customer.as_str()
    );
}

#[tokio::test]
async fn event_filters_and_retry_hints() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    http.customer("filters@example.com").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = http.get(&format!("/v1/events?created[gte]={}", now - 60)).await;
    assert_eq!(r.json["data"].as_array().unwrap().len(), 1);
    let r = http.get(&format!("/v1/events?created[gt]={}", now + 60)).await;
    assert_eq!(r.json["data"].as_array().unwrap().len(), 0);
    let r = http.get("/v1/events?created[between]=1").await;
    assert_eq!(r.json["error"]["param"], "created[between]");
    // No webhook endpoint: nothing was delivered.
    let r = http.get("/v1/events?delivery_success=false").await;
    assert_eq!(r.json["data"].as_array().unwrap().len(), 1);
    let r = http.get("/v1/events?delivery_success=true").await;
    assert_eq!(r.json["data"].as_array().unwrap().len(), 0);

    // Stripe-Should-Retry guides retrying clients.
    assert_eq!(
        http.get("/v1/customers/cus_nope").await.headers["stripe-should-retry"],
        "false"
    );
    sb.inject_api_fault(tollgate_stripe_sandbox::ApiFault::fail(
        1,
        tollgate_stripe_sandbox::FaultTiming::Before,
    ));
    let r = http.get("/v1/events").await;
    assert_eq!(
        (r.status, r.headers["stripe-should-retry"].to_str().unwrap()),
        (500, "true")
    );
}
