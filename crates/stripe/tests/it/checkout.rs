//! Hosted pages through the real adapter: save a card, pay and save, decline, cancel, expire.

use tollgate_core::Micros;
use tollgate_stripe::{
    CheckoutStatus, CustomerId, PaymentStatus, Payments, PaymentsError, REFERENCE_METADATA_KEY,
};

use crate::common::{
    Browser, CANCEL_URL, assert_succeeded, card_of, charge_request, customer, pay_request, payments, sandbox,
    save_card, save_card_request, usd,
};

#[tokio::test]
async fn setup_checkout_saves_the_card_and_retrieve_shows_it() {
    let sb = sandbox().await;
    // The application holds the port as a trait object.
    let p: std::sync::Arc<dyn Payments> = std::sync::Arc::new(payments(&sb));
    let p = p.as_ref();
    let customer = customer(p, "acme").await;

    let created = p
        .create_checkout(save_card_request(&customer, "acct-acme"))
        .await
        .expect("created");
    assert_eq!(created.status, CheckoutStatus::Open);
    assert!(created.id.as_str().starts_with("cs_"));
    assert!(created.card.is_none() && created.payment.is_none());
    let url = created.url.clone().expect("an open session has a page");
    assert!(url.starts_with(&sb.base_url()));

    let browser = Browser::new();
    let page = browser.pay(&url, "4242 4242 4242 4242").await;
    assert_eq!(page.status, 303, "{}", page.text);
    assert_eq!(
        page.location.as_deref(),
        Some(format!("http://app.test/billing?session={}", created.id).as_str()),
        "{{CHECKOUT_SESSION_ID}} is substituted"
    );

    let session = p.retrieve_checkout(&created.id).await.expect("retrieved");
    assert_eq!(session.status, CheckoutStatus::Complete);
    assert_eq!(session.customer.as_ref(), Some(&customer));
    assert_eq!(session.reference.as_deref(), Some("acct-acme"));
    assert_eq!(session.metadata["account_id"], "acme");
    assert_eq!(session.metadata[REFERENCE_METADATA_KEY], "acct-acme");
    assert!(session.payment.is_none(), "setup mode pays nothing");
    assert!(session.url.is_none(), "a complete session has no page");
    let card = card_of(&session);
    assert_eq!(
        (
            card.brand.as_str(),
            card.last4.as_str(),
            card.exp_month,
            card.exp_year
        ),
        ("visa", "4242", 12, 2034)
    );
    assert!(card.id.as_str().starts_with("pm_"));
    assert_eq!(p.card(&card.id).await.expect("card"), card);

    // The setup intent carries the metadata too, so its events can be matched.
    let state = sb.state();
    let intent = state["setup_intents"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .expect("one setup intent");
    assert_eq!(intent["metadata"][REFERENCE_METADATA_KEY], "acct-acme");
    assert_eq!(intent["payment_method"], card.id.as_str());
}

#[tokio::test]
async fn declined_cards_on_the_page_leave_the_session_open_without_a_card() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "decline").await;
    let created = p
        .create_checkout(save_card_request(&customer, "decline"))
        .await
        .expect("created");
    let url = created.url.clone().expect("page");
    let browser = Browser::new();
    for (number, message) in [
        ("4000000000000002", "Your card was declined."),
        ("4000000000009995", "Your card has insufficient funds."),
    ] {
        let page = browser.pay(&url, number).await;
        assert_eq!(page.status, 200, "the page is shown again");
        assert!(page.text.contains(message), "{}", page.text);
        let session = p.retrieve_checkout(&created.id).await.expect("retrieved");
        assert_eq!(session.status, CheckoutStatus::Open);
        assert!(session.card.is_none(), "{number} saved nothing");
        assert_eq!(session.url.as_deref(), Some(url.as_str()));
    }
    assert_eq!(sb.state()["payment_methods"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn cancelling_changes_nothing_and_expiring_closes_the_page() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "cancel").await;
    let created = p
        .create_checkout(save_card_request(&customer, "cancel"))
        .await
        .expect("created");
    let url = created.url.clone().expect("page");
    let page = Browser::new().open(&url).await;
    assert!(
        page.text.contains(&format!("href=\"{CANCEL_URL}\"")),
        "cancel link"
    );

    // The customer follows the cancel link: that leaves the processor; nothing changes.
    let session = p.retrieve_checkout(&created.id).await.expect("retrieved");
    assert_eq!(session.status, CheckoutStatus::Open);
    assert!(session.card.is_none());
    assert_eq!(session, created, "unchanged");

    let expired = p.expire_checkout(&created.id).await.expect("expired");
    assert_eq!(expired.status, CheckoutStatus::Expired);
    assert!(expired.url.is_none());
    // Expiring again is not an error: the session is reported as it is.
    let again = p.expire_checkout(&created.id).await.expect("still expired");
    assert_eq!(again.status, CheckoutStatus::Expired);
    let page = Browser::new().open(&url).await;
    assert!(
        !page.text.contains("id=\"cardNumber\""),
        "the page no longer takes a card"
    );
}

#[tokio::test]
async fn expiring_a_paid_session_reports_it_complete() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "raced").await;
    let session = save_card(&p, &customer, "4242424242424242").await;
    let after = p.expire_checkout(&session.id).await.expect("reported");
    assert_eq!(after.status, CheckoutStatus::Complete);
    assert_eq!(after.card, session.card);
}

#[tokio::test]
async fn payment_checkout_charges_and_saves_the_card_for_off_session_use() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "payer").await;
    let amount = Micros::parse("25.50").expect("amount");
    let created = p
        .create_checkout(pay_request(&customer, "topup-1", amount))
        .await
        .expect("created");
    assert_eq!(created.status, CheckoutStatus::Open);
    assert!(
        created.payment.is_none(),
        "the payment starts with the first attempt"
    );

    let location = Browser::new()
        .pay_and_authenticate(created.url.as_deref().expect("page"), "4242424242424242")
        .await;
    assert_eq!(
        location,
        format!("http://app.test/billing?session={}", created.id)
    );

    let session = p.retrieve_checkout(&created.id).await.expect("retrieved");
    assert_eq!(session.status, CheckoutStatus::Complete);
    let payment = session.payment.clone().expect("payment mode has a payment");
    assert_succeeded(&payment, amount);
    assert_eq!(payment.metadata[REFERENCE_METADATA_KEY], "topup-1");
    assert_eq!(payment.customer.as_ref(), Some(&customer));
    let card = card_of(&session);
    assert_eq!(card.last4, "4242");
    assert_eq!(payment.payment_method.as_ref(), Some(&card.id));
    assert_eq!(p.payment(&payment.intent).await.expect("payment"), payment);
    let state = sb.state();
    let saved = state["payment_methods"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["id"] == card.id.as_str()).cloned())
        .expect("the card exists");
    assert_eq!(saved["customer"], customer.as_str(), "attached to the customer");

    // Saved for later: an off-session charge of the same card goes through.
    let later = p
        .charge_off_session(charge_request(&customer, &card.id, usd(10), "recharge-1"))
        .await
        .expect("charged");
    assert_succeeded(&later, usd(10));
}

#[tokio::test]
async fn payment_checkout_decline_shows_a_failed_payment_and_no_card() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "poor").await;
    let created = p
        .create_checkout(pay_request(&customer, "topup-2", usd(20)))
        .await
        .expect("created");
    let page = Browser::new()
        .pay(created.url.as_deref().expect("page"), "4000000000009995")
        .await;
    assert_eq!(page.status, 200);
    let session = p.retrieve_checkout(&created.id).await.expect("retrieved");
    assert_eq!(session.status, CheckoutStatus::Open);
    assert!(session.card.is_none(), "a declined card is not shown as saved");
    let payment = session.payment.expect("the attempt created the payment");
    assert_eq!(
        payment.status,
        PaymentStatus::Failed {
            code: "card_declined".into(),
            decline_code: Some("insufficient_funds".into()),
            message: "Your card has insufficient funds.".into(),
        }
    );
}

#[tokio::test]
async fn three_d_secure_on_the_page_then_off_session_charges_succeed() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "secure").await;
    let session = save_card(&p, &customer, "4000002500003155").await;
    assert_eq!(session.status, CheckoutStatus::Complete);
    let card = card_of(&session);
    assert_eq!(card.last4, "3155");
    let payment = p
        .charge_off_session(charge_request(&customer, &card.id, usd(15), "3155-1"))
        .await
        .expect("charged");
    assert_succeeded(&payment, usd(15));
}

#[tokio::test]
async fn creating_a_checkout_twice_with_one_key_gives_one_session() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "twice").await;
    let first = p
        .create_checkout(pay_request(&customer, "topup-3", usd(30)))
        .await
        .expect("created");
    let second = p
        .create_checkout(pay_request(&customer, "topup-3", usd(30)))
        .await
        .expect("replayed");
    assert_eq!(first.id, second.id);
    assert_eq!(sb.state()["checkout_sessions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn bad_requests_are_refused_before_or_by_stripe() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "careful").await;

    // Not whole cents: refused before anything is sent.
    let err = p
        .create_checkout(pay_request(&customer, "frac", Micros::new(10_000_001)))
        .await
        .expect_err("fraction of a cent");
    assert!(matches!(err, PaymentsError::Rejected { ref param, .. } if param.as_deref() == Some("amount")));
    let mut request = save_card_request(&customer, "nokey");
    request.idempotency_key.clear();
    assert!(matches!(
        p.create_checkout(request).await,
        Err(PaymentsError::Rejected { .. })
    ));
    assert_eq!(sb.state()["checkout_sessions"].as_array().map(Vec::len), Some(0));

    // Unknown customer: Stripe answers 400 resource_missing on the parameter.
    let err = p
        .create_checkout(save_card_request(&CustomerId::new("cus_nobody"), "ghost"))
        .await
        .expect_err("no such customer");
    assert!(matches!(err, PaymentsError::NotFound(_)), "{err:?}");

    let err = p
        .retrieve_checkout(&tollgate_stripe::CheckoutSessionId::new("cs_test_missing"))
        .await
        .expect_err("no such session");
    assert!(matches!(err, PaymentsError::NotFound(_)), "{err:?}");
}
