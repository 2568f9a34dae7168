//! Webhook delivery: signatures async-stripe accepts, retries, and the delivery fault knobs.

use std::time::{Duration, Instant};

use serde_json::json;
use stripe_webhook::{EventObject, Webhook, WebhookError};
use tollgate_stripe_sandbox::{DeliveryStatus, WebhookFaults, signature_header};

use crate::common::{Http, Receiver, SECRET, sandbox};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn signatures_verify_with_async_stripe_and_tampering_is_rejected() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let customer = http.customer("ada@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    http.post(
        "/v1/payment_intents",
        &[
            ("amount", "1500"),
            ("currency", "usd"),
            ("customer", &customer),
            ("payment_method", &payment_method),
            ("confirm", "true"),
            ("off_session", "true"),
        ],
    )
    .await;
    let got = rx
        .wait_for_types(&[
            "customer.created",
            "payment_method.attached",
            "setup_intent.succeeded",
            "checkout.session.completed",
            "payment_intent.succeeded",
            "charge.succeeded",
        ])
        .await;

    // Every delivered event verifies and its data.object parses as the matching async-stripe type.
    for r in &got {
        let event = Webhook::construct_event(&r.body, &r.signature, SECRET)
            .unwrap_or_else(|e| panic!("{} did not verify/parse: {e:?}", r.type_()));
        assert_eq!(event.id.as_str(), r.id());
        assert!(
            !matches!(event.data.object, EventObject::Unknown(_)),
            "{} parsed as Unknown",
            r.type_()
        );
    }
    let completed = got
        .iter()
        .find(|r| r.type_() == "checkout.session.completed")
        .unwrap();
    let event = Webhook::construct_event(&completed.body, &completed.signature, SECRET).unwrap();
    let EventObject::CheckoutSessionCompleted(session) = event.data.object else {
        panic!("wrong object")
    };
    assert_eq!(session.metadata.unwrap()["account_id"], "acme");

    // A tampered body, a wrong secret and a stale timestamp are all refused.
    let tampered = completed.body.replace("acme", "evil");
    assert!(matches!(
        Webhook::construct_event(&tampered, &completed.signature, SECRET),
        Err(WebhookError::BadSignature)
    ));
    assert!(matches!(
        Webhook::construct_event(&completed.body, &completed.signature, "whsec_other"),
        Err(WebhookError::BadSignature)
    ));
    let t: i64 = completed
        .signature
        .trim_start_matches("t=")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((unix_now() - t).abs() <= 5, "signed with the current time");
    let later =
        Webhook::construct_event_with_timestamp(&completed.body, &completed.signature, SECRET, t + 301);
    assert!(matches!(later, Err(WebhookError::BadTimestamp(_))));
    let stale = signature_header(SECRET, unix_now() - 600, &completed.body);
    assert!(matches!(
        Webhook::construct_event(&completed.body, &stale, SECRET),
        Err(WebhookError::BadTimestamp(_))
    ));
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_acknowledged() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    rx.fail_next(2);
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    http.customer("retry@example.com").await;
    let got = rx.wait_until(|all| all.len() >= 3).await;
    assert!(got.iter().all(|r| r.type_() == "customer.created"));
    assert!(
        got.iter().all(|r| r.id() == got[0].id()),
        "the same event is retried"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.all().len(), 3, "no delivery after the acknowledgement");
    assert_eq!(sb.delivery_status(got[0].id()), Some(DeliveryStatus::Delivered));
    let attempts: Vec<(u32, Option<u16>)> = sb.deliveries().iter().map(|d| (d.attempt, d.status)).collect();
    assert_eq!(attempts, vec![(1, Some(500)), (2, Some(500)), (3, Some(200))]);
}

#[tokio::test]
async fn retries_are_bounded_and_flush_resends() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    rx.fail_next(100);
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    http.customer("bounded@example.com").await;
    let got = rx.wait_until(|all| all.len() >= 5).await;
    let id = got[0].id().to_string();
    // The test policy allows 5 attempts; wait for the retry task to give up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sb.delivery_status(&id) != Some(DeliveryStatus::Failed) {
        assert!(Instant::now() < deadline, "never marked failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rx.all().len(), 5);
    rx.fail_next(0);
    assert_eq!(sb.flush_webhooks(), 1);
    rx.wait_until(|all| all.len() == 6).await;
}

#[tokio::test]
async fn duplicate_fault_delivers_every_event_twice() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    sb.set_webhook_faults(WebhookFaults {
        duplicate: true,
        ..Default::default()
    });
    let http = Http::new(&sb);
    http.customer("dup@example.com").await;
    let got = rx.wait_until(|all| all.len() >= 2).await;
    assert_eq!(got[0].id(), got[1].id());
    assert_eq!(got[0].body, got[1].body, "identical bytes");
}

#[tokio::test]
async fn reorder_fault_delivers_held_events_in_reverse() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    sb.set_webhook_faults(WebhookFaults {
        reorder_next: 3,
        ..Default::default()
    });
    let http = Http::new(&sb);
    let mut created = Vec::new();
    for i in 0..3 {
        created.push(http.customer(&format!("r{i}@example.com")).await);
    }
    let got = rx.wait_until(|all| all.len() >= 3).await;
    let order: Vec<&str> = got
        .iter()
        .map(|r| r.event["data"]["object"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![created[2].as_str(), created[1].as_str(), created[0].as_str()]
    );
    // Afterwards delivery is back to creation order.
    let next = http.customer("after@example.com").await;
    let got = rx.wait_until(|all| all.len() >= 4).await;
    assert_eq!(got[3].event["data"]["object"]["id"], json!(next));
}

#[tokio::test]
async fn drop_fault_then_redeliver_and_flush() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    sb.set_webhook_faults(WebhookFaults {
        drop_next: 2,
        ..Default::default()
    });
    let http = Http::new(&sb);
    http.customer("a@example.com").await;
    http.customer("b@example.com").await;
    http.customer("c@example.com").await;
    let got = rx.wait_until(|all| !all.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(rx.all().len(), 1, "two dropped, one delivered");
    assert_eq!(got[0].event["data"]["object"]["email"], "c@example.com");

    let events = http.get("/v1/events?type=customer.created").await;
    let ids: Vec<String> = events.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    // Newest first: ids[2] is the first (dropped) customer.
    assert_eq!(sb.delivery_status(&ids[2]), Some(DeliveryStatus::Dropped));
    let r = http
        .admin(&format!("/__sandbox/events/{}/redeliver", ids[2]), json!({}))
        .await;
    assert_eq!(r.status, 200);
    rx.wait_until(|all| all.len() == 2).await;
    assert_eq!(rx.all()[1].id(), ids[2]);

    let r = http.admin("/__sandbox/webhooks/flush", json!({})).await;
    assert_eq!(r.json["queued"], 1, "only the still-dropped event");
    let all = rx.wait_until(|all| all.len() == 3).await;
    assert_eq!(all[2].id(), ids[1]);
    let missing = http
        .admin("/__sandbox/events/evt_missing/redeliver", json!({}))
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn delay_fault_holds_each_delivery() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let r = http
        .admin("/__sandbox/webhooks/faults", json!({ "delay_ms": 400 }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let start = Instant::now();
    http.customer("slow@example.com").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.all().is_empty(), "not before the delay");
    rx.wait_until(|all| all.len() == 1).await;
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn events_wait_for_a_webhook_url_and_are_sent_once_it_is_set() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    http.customer("early@example.com").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rx = Receiver::start().await;
    let r = http
        .admin("/__sandbox/webhooks/config", json!({ "url": rx.url }))
        .await;
    assert_eq!(r.status, 200);
    let got = rx.wait_until(|all| all.len() == 1).await;
    assert_eq!(got[0].type_(), "customer.created");
}

#[tokio::test]
async fn every_event_type_parses_as_an_async_stripe_webhook() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let http = Http::new(&sb);
    let customer = http.customer("all@example.com").await;
    let (_, url) = http.setup_session(&customer).await;
    http.pay(&url, "4000000000000002").await; // setup_intent.setup_failed
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    http.post(
        &format!("/v1/customers/{customer}"),
        &[("invoice_settings[default_payment_method]", &payment_method)],
    )
    .await;
    let (expiring, _) = http.setup_session(&customer).await;
    http.post(&format!("/v1/checkout/sessions/{expiring}/expire"), &[])
        .await;
    // Two paid charges: one refunded in part and lost in dispute, one whose dispute is won
    // (`charge.dispute.funds_reinstated`).
    for won in [false, true] {
        let paid = http
            .post(
                "/v1/payment_intents",
                &[
                    ("amount", "5000"),
                    ("currency", "usd"),
                    ("customer", &customer),
                    ("payment_method", &payment_method),
                    ("confirm", "true"),
                    ("off_session", "true"),
                ],
            )
            .await;
        let charge = paid.json["latest_charge"].as_str().unwrap().to_string();
        if !won {
            http.post("/v1/refunds", &[("charge", &charge), ("amount", "1000")])
                .await;
        }
        let dispute = sb.open_dispute(&charge, None).unwrap();
        sb.close_dispute(dispute["id"].as_str().unwrap(), won).unwrap();
    }
    http.post(
        "/v1/payment_intents",
        &[
            ("amount", "5000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_chargeDeclined"),
            ("confirm", "true"),
            ("off_session", "true"),
        ],
    )
    .await;
    http.post(
        "/v1/payment_intents",
        &[
            ("amount", "5000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_authenticationRequired"),
            ("confirm", "true"),
        ],
    )
    .await;
    let open = http
        .post("/v1/payment_intents", &[("amount", "5000"), ("currency", "usd")])
        .await;
    http.post(
        &format!("/v1/payment_intents/{}/cancel", open.json["id"].as_str().unwrap()),
        &[],
    )
    .await;
    http.post(&format!("/v1/payment_methods/{payment_method}/detach"), &[])
        .await;

    let all_types = [
        "customer.created",
        "customer.updated",
        "setup_intent.setup_failed",
        "setup_intent.succeeded",
        "payment_method.attached",
        "payment_method.detached",
        "checkout.session.completed",
        "checkout.session.expired",
        "payment_intent.created",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_intent.canceled",
        "charge.succeeded",
        "charge.failed",
        "charge.refunded",
        "refund.created",
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.closed",
        "charge.dispute.funds_reinstated",
    ];
    let got = rx.wait_for_types(&all_types).await;
    for r in &got {
        let event = Webhook::construct_event(&r.body, &r.signature, SECRET)
            .unwrap_or_else(|e| panic!("{} did not verify/parse: {e:?}", r.type_()));
        assert!(
            !matches!(event.data.object, EventObject::Unknown(_)),
            "{} parsed as Unknown",
            r.type_()
        );
    }
}
