//! Injected API faults: 500s and hangs, before or after the request's effect.

use std::time::Duration;

use serde_json::json;
use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
use stripe_types::Currency;
use tollgate_stripe_sandbox::{ApiFault, FaultTiming};

use crate::common::{Http, KEY, sandbox};

async fn succeeded_count(http: &Http) -> usize {
    http.get("/v1/events?type=payment_intent.succeeded").await.json["data"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn fail_before_has_no_effect_and_a_retry_succeeds() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("before@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let form = [
        ("amount", "2500"),
        ("currency", "usd"),
        ("customer", customer.as_str()),
        ("payment_method", payment_method.as_str()),
        ("confirm", "true"),
        ("off_session", "true"),
    ];

    let r = http
        .admin(
            "/__sandbox/faults/fail_next",
            json!({ "count": 1, "when": "before" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let failed = http
        .post_with("/v1/payment_intents", &form, Some("k-before"))
        .await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json["error"]["type"], "api_error");
    assert_eq!(succeeded_count(&http).await, 0);

    let retry = http
        .post_with("/v1/payment_intents", &form, Some("k-before"))
        .await;
    assert_eq!(retry.status, 200);
    assert!(retry.headers.get("idempotent-replayed").is_none());
    assert_eq!(succeeded_count(&http).await, 1);
}

#[tokio::test]
async fn fail_after_applies_the_effect_and_the_retry_replays_it() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("after@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let form = [
        ("amount", "2500"),
        ("currency", "usd"),
        ("customer", customer.as_str()),
        ("payment_method", payment_method.as_str()),
        ("confirm", "true"),
        ("off_session", "true"),
    ];

    assert!(sb.inject_api_fault(ApiFault::fail(1, FaultTiming::After).on_path("/v1/payment_intents")));
    // Calls to other paths are not affected.
    assert_eq!(http.get("/v1/events").await.status, 200);
    let failed = http
        .post_with("/v1/payment_intents", &form, Some("k-after"))
        .await;
    assert_eq!(failed.status, 500);
    assert_eq!(succeeded_count(&http).await, 1, "the charge happened");

    let retry = http
        .post_with("/v1/payment_intents", &form, Some("k-after"))
        .await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.json["status"], "succeeded");
    assert_eq!(succeeded_count(&http).await, 1, "and only once");
}

#[tokio::test]
async fn hangs_outlast_client_timeouts_with_or_without_effect() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    let customer = http.customer("hang@example.com").await;
    let payment_method = http.save_card(&customer, "4242424242424242").await;
    let impatient = stripe::ClientBuilder::new(KEY)
        .url(sb.base_url())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // Retries use a patient client so a loaded CI machine cannot turn them into timeouts.
    let patient = stripe::ClientBuilder::new(KEY)
        .url(sb.base_url())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let charge = async |key: &str, client: &stripe::Client| {
        CreatePaymentIntent::new(2500, Currency::USD)
            .customer(customer.as_str())
            .payment_method(payment_method.as_str())
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .customize()
            .request_strategy(RequestStrategy::Idempotent(IdempotencyKey::new(key).unwrap()))
            .send(client)
            .await
    };

    // Hang before the effect: the client gives up and nothing happened.
    let r = http
        .admin(
            "/__sandbox/faults/hang_next",
            json!({ "count": 1, "ms": 1000, "when": "before" }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(matches!(
        charge("hang-before", &impatient).await,
        Err(StripeError::Timeout)
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(succeeded_count(&http).await, 0);
    let ok = charge("hang-before", &patient).await.unwrap();
    assert_eq!(succeeded_count(&http).await, 1);

    // Hang after the effect: the client gives up, but the charge took place and replays.
    sb.inject_api_fault(ApiFault::hang(1, Duration::from_millis(1000), FaultTiming::After));
    assert!(matches!(
        charge("hang-after", &impatient).await,
        Err(StripeError::Timeout)
    ));
    assert_eq!(succeeded_count(&http).await, 2);
    let replay = charge("hang-after", &patient).await.unwrap();
    assert_ne!(replay.id, ok.id);
    assert_eq!(succeeded_count(&http).await, 2, "the retry did not charge again");
}

#[tokio::test]
async fn admin_state_reset_and_fault_clearing() {
    let sb = sandbox().await;
    let http = Http::new(&sb);
    http.customer("state@example.com").await;
    let state = http
        .client
        .get(format!("{}/__sandbox/state", sb.base_url()))
        .send()
        .await
        .unwrap();
    let state: serde_json::Value = state.json().await.unwrap();
    assert_eq!(state["customers"].as_array().unwrap().len(), 1);
    assert_eq!(state["events"][0]["type"], "customer.created");

    sb.inject_api_fault(ApiFault::fail(5, FaultTiming::Before));
    let r = http
        .client
        .delete(format!("{}/__sandbox/faults", sb.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(http.get("/v1/events").await.status, 200);

    let r = http.admin("/__sandbox/reset", json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(sb.state()["customers"].as_array().unwrap().len(), 0);
    assert_eq!(
        http.get("/v1/events").await.json["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
