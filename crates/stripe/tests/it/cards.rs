//! Customers, default cards, detaching, refunds.

use tollgate_core::{AccountId, Micros};
use tollgate_stripe::{
    ACCOUNT_METADATA_KEY, CustomerId, PaymentMethodId, Payments, PaymentsError, RefundStatus,
};

use crate::common::{assert_succeeded, card_of, charge_request, customer, payments, sandbox, save_card, usd};

fn customer_json(sb: &tollgate_stripe_sandbox::Sandbox, id: &CustomerId) -> serde_json::Value {
    sb.state()["customers"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"] == id.as_str()).cloned())
        .expect("customer exists")
}

fn payment_method_json(sb: &tollgate_stripe_sandbox::Sandbox, id: &PaymentMethodId) -> serde_json::Value {
    sb.state()["payment_methods"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"] == id.as_str()).cloned())
        .expect("payment method exists")
}

#[tokio::test]
async fn customers_carry_the_account_and_are_created_once_per_key() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let account = AccountId::parse("acme-corp").expect("valid");
    let first = p
        .create_customer(&account, "Acme Corp", "billing@acme.test", "customer-acme-corp")
        .await
        .expect("created");
    let again = p
        .create_customer(&account, "Acme Corp", "billing@acme.test", "customer-acme-corp")
        .await
        .expect("replayed");
    assert_eq!(first, again);
    assert!(first.as_str().starts_with("cus_"));
    let json = customer_json(&sb, &first);
    assert_eq!(json["metadata"][ACCOUNT_METADATA_KEY], "acme-corp");
    assert_eq!(json["email"], "billing@acme.test");
    assert_eq!(json["name"], "Acme Corp");
    assert_eq!(sb.state()["customers"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn set_default_card_updates_the_customer() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "default").await;
    let old = card_of(&save_card(&p, &customer, "4242424242424242").await);
    let new = card_of(&save_card(&p, &customer, "5555555555554444").await);
    assert_eq!(new.brand, "mastercard");

    p.set_default_card(&customer, &old.id).await.expect("set");
    assert_eq!(
        customer_json(&sb, &customer)["invoice_settings"]["default_payment_method"],
        old.id.as_str()
    );
    p.set_default_card(&customer, &new.id).await.expect("replaced");
    assert_eq!(
        customer_json(&sb, &customer)["invoice_settings"]["default_payment_method"],
        new.id.as_str()
    );
    // Back to the first: every call gets its own key, so this is not a stale replay.
    p.set_default_card(&customer, &old.id).await.expect("set again");
    assert_eq!(
        customer_json(&sb, &customer)["invoice_settings"]["default_payment_method"],
        old.id.as_str()
    );

    let err = p
        .set_default_card(&customer, &PaymentMethodId::new("pm_unknown"))
        .await
        .expect_err("not the customer's card");
    assert!(
        matches!(err, PaymentsError::Rejected { .. } | PaymentsError::NotFound(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn detaching_removes_the_card_and_repeating_it_succeeds() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "detach").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    p.set_default_card(&customer, &card.id).await.expect("default");

    p.detach_card(&card.id).await.expect("detached");
    assert!(payment_method_json(&sb, &card.id)["customer"].is_null());
    assert!(customer_json(&sb, &customer)["invoice_settings"]["default_payment_method"].is_null());
    p.detach_card(&card.id).await.expect("detaching again is fine");
    // The card's details stay readable (receipts, history).
    assert_eq!(p.card(&card.id).await.expect("card").last4, "4242");

    let err = p
        .detach_card(&PaymentMethodId::new("pm_unknown"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, PaymentsError::NotFound(_)), "{err:?}");
    let err = p
        .card(&PaymentMethodId::new("pm_unknown"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, PaymentsError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn full_and_partial_refunds() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "refunds").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    let payment = p
        .charge_off_session(charge_request(&customer, &card.id, usd(50), "refund-me"))
        .await
        .expect("charged");
    assert_succeeded(&payment, usd(50));

    let partial = p
        .refund(
            &payment.intent,
            Some(Micros::parse("20.25").expect("amount")),
            "refund-1",
        )
        .await
        .expect("partial refund");
    assert_eq!(partial.amount, Micros::parse("20.25").expect("amount"));
    assert_eq!(partial.status, RefundStatus::Succeeded);
    assert_eq!(partial.intent.as_ref(), Some(&payment.intent));
    assert_eq!(partial.charge, payment.charge);
    assert!(partial.id.as_str().starts_with("re_"));
    // Same key: the same refund, not a second one.
    let replay = p
        .refund(
            &payment.intent,
            Some(Micros::parse("20.25").expect("amount")),
            "refund-1",
        )
        .await
        .expect("replayed");
    assert_eq!(replay, partial);

    let rest = p
        .refund(&payment.intent, None, "refund-2")
        .await
        .expect("the rest");
    assert_eq!(rest.amount, Micros::parse("29.75").expect("amount"));
    assert_eq!(sb.state()["refunds"].as_array().map(Vec::len), Some(2));

    let err = p
        .refund(&payment.intent, None, "refund-3")
        .await
        .expect_err("nothing left to refund");
    assert!(
        matches!(err, PaymentsError::Rejected { ref code, .. } if code.as_deref() == Some("charge_already_refunded")),
        "{err:?}"
    );
    let err = p
        .refund(&payment.intent, Some(Micros::new(5)), "refund-4")
        .await
        .expect_err("not whole cents");
    assert!(matches!(err, PaymentsError::Rejected { .. }), "{err:?}");

    // A declined payment has nothing to refund.
    let declined = p
        .charge_off_session(charge_request(
            &customer,
            &PaymentMethodId::new("pm_card_chargeDeclined"),
            usd(10),
            "declined",
        ))
        .await
        .expect("declined");
    let err = p
        .refund(&declined.intent, None, "refund-5")
        .await
        .expect_err("no charge");
    assert!(matches!(err, PaymentsError::Rejected { .. }), "{err:?}");
}
