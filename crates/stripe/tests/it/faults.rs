//! Transient faults: bounded retries with the same idempotency key, timeouts, odd answers.

use std::time::{Duration, Instant};

use tollgate_stripe::{PaymentMethodId, Payments, PaymentsError, StripeConfig, StripePayments};
use tollgate_stripe_sandbox::{ApiFault, FaultTiming};

use crate::common::{
    FakeStripe, KEY, assert_succeeded, card_of, charge_request, charges, config, customer, payments, sandbox,
    save_card, usd,
};

const CHARGES: &str = "/v1/payment_intents";

fn queued_faults(sb: &tollgate_stripe_sandbox::Sandbox) -> Vec<serde_json::Value> {
    sb.state()["api_faults"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_failure_before_the_effect_is_retried_and_charges_once() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "retry").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    assert!(sb.inject_api_fault(ApiFault::fail(1, FaultTiming::Before).on_path(CHARGES)));
    let payment = p
        .charge_off_session(charge_request(&customer, &card.id, usd(25), "retry-1"))
        .await
        .expect("the retry succeeds");
    assert_succeeded(&payment, usd(25));
    assert!(queued_faults(&sb).is_empty(), "the fault was hit");
    assert_eq!(charges(&sb), (1, 1));
}

#[tokio::test]
async fn a_failure_after_the_effect_is_retried_and_replays_the_one_charge() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "after").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    assert!(sb.inject_api_fault(ApiFault::fail(1, FaultTiming::After).on_path(CHARGES)));
    let payment = p
        .charge_off_session(charge_request(&customer, &card.id, usd(25), "after-1"))
        .await
        .expect("the retry replays the stored answer");
    assert_succeeded(&payment, usd(25));
    assert!(queued_faults(&sb).is_empty());
    assert_eq!(charges(&sb), (1, 1), "charged exactly once");
    let intents = crate::common::intents(&sb);
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["id"], payment.intent.as_str());
}

#[tokio::test]
async fn persistent_failures_surface_as_transient_after_bounded_retries() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "down").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    let request = charge_request(&customer, &card.id, usd(25), "down-1");

    assert!(sb.inject_api_fault(ApiFault::fail(5, FaultTiming::Before).on_path(CHARGES)));
    let err = p
        .charge_off_session(request.clone())
        .await
        .expect_err("Stripe is down");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("3 attempts"), "{err}");
    // max_retries = 2: three attempts used three of the five queued failures, no more.
    assert_eq!(queued_faults(&sb)[0]["count"], 2);
    assert_eq!(charges(&sb), (0, 0));

    // Once Stripe is back, the same call with the same key charges once.
    sb.clear_faults();
    let payment = p.charge_off_session(request.clone()).await.expect("charged");
    assert_succeeded(&payment, usd(25));
    let again = p.charge_off_session(request).await.expect("replayed");
    assert_eq!(again.intent, payment.intent);
    assert_eq!(charges(&sb), (1, 1));
}

#[tokio::test]
async fn without_retries_one_failure_is_final() {
    let sb = sandbox().await;
    let p = StripePayments::new(StripeConfig {
        max_retries: 0,
        ..config(&sb)
    })
    .expect("adapter");
    let customer = customer(&p, "once").await;
    assert!(sb.inject_api_fault(ApiFault::fail(2, FaultTiming::Before)));
    let err = p
        .charge_off_session(charge_request(
            &customer,
            &PaymentMethodId::new("pm_card_visa"),
            usd(10),
            "k",
        ))
        .await
        .expect_err("no retry");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(queued_faults(&sb)[0]["count"], 1, "exactly one attempt");
    // Reads fail the same way and are retried the same way.
    let err = p.card(&PaymentMethodId::new("pm_x")).await.expect_err("fault");
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_hang_past_the_timeout_is_transient_within_the_timeout() {
    let sb = sandbox().await;
    let setup = payments(&sb);
    let customer = customer(&setup, "hang").await;
    let card = card_of(&save_card(&setup, &customer, "4242424242424242").await);
    let impatient = StripePayments::new(StripeConfig {
        timeout_ms: 300,
        max_retries: 0,
        ..config(&sb)
    })
    .expect("adapter");
    let request = charge_request(&customer, &card.id, usd(25), "hang-1");

    assert!(sb.inject_api_fault(ApiFault::hang(1, Duration::from_secs(3), FaultTiming::Before)));
    let started = Instant::now();
    let err = impatient
        .charge_off_session(request.clone())
        .await
        .expect_err("times out");
    let elapsed = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("300 ms"), "{err}");
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(1500),
        "gave up after {elapsed:?}"
    );
    assert_eq!(charges(&sb), (0, 0), "the hang happened before the effect");

    let payment = setup.charge_off_session(request).await.expect("charged");
    assert_succeeded(&payment, usd(25));
    assert_eq!(charges(&sb), (1, 1));
}

#[tokio::test]
async fn a_hang_after_the_effect_is_retried_and_replays_the_one_charge() {
    let sb = sandbox().await;
    let setup = payments(&sb);
    let customer = customer(&setup, "slow").await;
    let card = card_of(&save_card(&setup, &customer, "4242424242424242").await);
    let impatient = StripePayments::new(StripeConfig {
        timeout_ms: 300,
        max_retries: 2,
        ..config(&sb)
    })
    .expect("adapter");
    assert!(
        sb.inject_api_fault(ApiFault::hang(1, Duration::from_secs(2), FaultTiming::After).on_path(CHARGES))
    );
    let payment = impatient
        .charge_off_session(charge_request(&customer, &card.id, usd(25), "slow-1"))
        .await
        .expect("the retry gets the stored answer");
    assert_succeeded(&payment, usd(25));
    assert_eq!(charges(&sb), (1, 1), "charged exactly once");
}

#[tokio::test]
async fn a_gateway_error_page_is_transient_and_retried() {
    let fake = FakeStripe::start(502, "text/html", "<html><body>Bad Gateway</body></html>").await;
    let p = StripePayments::new(StripeConfig {
        api_base: Some(fake.base.clone()),
        max_retries: 1,
        retry_base_delay_ms: 10,
        ..StripeConfig::new(KEY)
    })
    .expect("adapter");
    let err = p
        .payment(&tollgate_stripe::PaymentIntentId::new("pi_1"))
        .await
        .expect_err("gateway down");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(fake.hits(), 2, "one retry");
}

#[tokio::test]
async fn an_unreadable_success_is_unexpected_and_not_retried() {
    let fake = FakeStripe::start(200, "application/json", "{\"surprise\": true}").await;
    let p = StripePayments::new(StripeConfig {
        api_base: Some(fake.base.clone()),
        max_retries: 3,
        retry_base_delay_ms: 10,
        ..StripeConfig::new(KEY)
    })
    .expect("adapter");
    let err = p
        .payment(&tollgate_stripe::PaymentIntentId::new("pi_1"))
        .await
        .expect_err("unreadable");
    assert!(matches!(err, PaymentsError::Unexpected(_)), "{err:?}");
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn an_unreachable_stripe_is_transient() {
    // Bind then free a port, so nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let p = StripePayments::new(StripeConfig {
        api_base: Some(format!("http://{addr}")),
        max_retries: 1,
        retry_base_delay_ms: 10,
        ..StripeConfig::new(KEY)
    })
    .expect("adapter");
    let err = p
        .payment(&tollgate_stripe::PaymentIntentId::new("pi_1"))
        .await
        .expect_err("nobody there");
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_wrong_key_is_a_configuration_error_and_not_retried() {
    let sb = sandbox().await;
    let p = StripePayments::new(StripeConfig {
        secret_key: "sk_live_not_for_the_sandbox".into(),
        ..config(&sb)
    })
    .expect("adapter");
    let err = p
        .payment(&tollgate_stripe::PaymentIntentId::new("pi_1"))
        .await
        .expect_err("refused");
    assert!(matches!(err, PaymentsError::Configuration(_)), "{err:?}");
    assert!(
        !err.to_string().contains("not_for_the_sandbox"),
        "the key is not echoed: {err}"
    );
}
