//! Wire compatibility: every object the sandbox returns is parsed by async-stripe's own types,
//! through its request builders (which parse with miniserde exactly as in production).

use std::collections::HashMap;

use stripe::{ApiErrorsCode, ApiErrorsType, StripeError};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionAllowedPaymentMethodTypes,
    CreateCheckoutSessionExcludedPaymentMethodTypes, CreateCheckoutSessionLineItems,
    CreateCheckoutSessionLineItemsPriceData, CreateCheckoutSessionPaymentIntentData,
    CreateCheckoutSessionPaymentIntentDataSetupFutureUsage, ExpireCheckoutSession, ProductData,
    RetrieveCheckoutSession,
};
use stripe_core::charge::RetrieveCharge;
use stripe_core::customer::{
    CreateCustomer, ListPaymentMethodsCustomer, RetrieveCustomer, RetrieveCustomerReturned, UpdateCustomer,
    UpdateCustomerInvoiceSettings,
};
use stripe_core::dispute::RetrieveDispute;
use stripe_core::event::{ListEvent, RetrieveEvent};
use stripe_core::payment_intent::{
    CreatePaymentIntent, CreatePaymentIntentOffSession, RetrievePaymentIntent,
};
use stripe_core::refund::{CreateRefund, RetrieveRefund};
use stripe_core::setup_intent::RetrieveSetupIntent;
use stripe_payment::payment_method::{
    AttachPaymentMethod, DetachPaymentMethod, ListPaymentMethod, ListPaymentMethodType, RetrievePaymentMethod,
};
use stripe_shared::{
    CheckoutSessionMode, CheckoutSessionPaymentStatus, CheckoutSessionStatus, PaymentIntentStatus,
    SetupIntentStatus,
};
use stripe_types::{Currency, Expandable};

use crate::common::{Http, sandbox, stripe};

fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn customers_round_trip_through_async_stripe() {
    let sb = sandbox().await;
    let client = stripe(&sb);
    let http = Http::new(&sb);

    let created = CreateCustomer::new()
        .email("ada@example.com")
        .name("Ada")
        .metadata(md(&[("account_id", "acme")]))
        .send(&client)
        .await
        .unwrap();
    assert!(created.id.as_str().starts_with("cus_"));
    assert!(!created.livemode);
    assert_eq!(created.metadata.as_ref().unwrap()["account_id"], "acme");

    let fetched = RetrieveCustomer::new(created.id.clone())
        .send(&client)
        .await
        .unwrap();
    let RetrieveCustomerReturned::Customer(fetched) = fetched else {
        panic!("deleted customer")
    };
    assert_eq!(fetched.email.as_deref(), Some("ada@example.com"));

    let payment_method = http.save_card(created.id.as_str(), "4242424242424242").await;
    let mut settings = UpdateCustomerInvoiceSettings::new();
    settings.default_payment_method = Some(payment_method.clone());
    let updated = UpdateCustomer::new(created.id.clone())
        .invoice_settings(settings)
        .email("ada@lovelace.dev")
        .send(&client)
        .await
        .unwrap();
    assert_eq!(updated.email.as_deref(), Some("ada@lovelace.dev"));
    let default = updated.invoice_settings.unwrap().default_payment_method.unwrap();
    assert_eq!(default.id().as_str(), payment_method);

    let cards = ListPaymentMethodsCustomer::new(created.id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(cards.data.len(), 1);
    assert_eq!(cards.data[0].card.as_ref().unwrap().last4, "4242");
}

#[tokio::test]
async fn checkout_sessions_parse_in_both_modes() {
    let sb = sandbox().await;
    let client = stripe(&sb);
    let http = Http::new(&sb);
    let customer = CreateCustomer::new().send(&client).await.unwrap();

    let setup = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Setup)
        .currency(Currency::USD)
        .customer(customer.id.as_str())
        .success_url("http://app.test/ok?session={CHECKOUT_SESSION_ID}")
        .cancel_url("http://app.test/cancel")
        .client_reference_id("acme")
        .metadata(md(&[("account_id", "acme")]))
        .send(&client)
        .await
        .unwrap();
    assert_eq!(setup.mode, CheckoutSessionMode::Setup);
    assert_eq!(setup.status, Some(CheckoutSessionStatus::Open));
    assert_eq!(
        setup.payment_status,
        CheckoutSessionPaymentStatus::NoPaymentRequired
    );
    assert_eq!(setup.client_reference_id.as_deref(), Some("acme"));
    let url = setup.url.clone().unwrap();
    assert!(url.starts_with(&sb.base_url()));

    http.pay(&url, "4242424242424242").await;
    let done = RetrieveCheckoutSession::new(setup.id.clone())
        .expand(vec!["setup_intent.payment_method".to_string()])
        .send(&client)
        .await
        .unwrap();
    assert_eq!(done.status, Some(CheckoutSessionStatus::Complete));
    let Some(Expandable::Object(setup_intent)) = done.setup_intent else {
        panic!("setup_intent not expanded")
    };
    assert_eq!(setup_intent.status, SetupIntentStatus::Succeeded);
    let Some(Expandable::Object(payment_method)) = setup_intent.payment_method else {
        panic!("payment_method not expanded")
    };
    assert_eq!(payment_method.card.unwrap().brand, "visa");

    let mut price = CreateCheckoutSessionLineItemsPriceData::new(Currency::USD);
    price.product_data = Some(ProductData::new("Tollgate top-up"));
    price.unit_amount = Some(2500);
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price_data = Some(price);
    item.quantity = Some(2);
    let mut pi_data = CreateCheckoutSessionPaymentIntentData::new();
    pi_data.setup_future_usage = Some(CreateCheckoutSessionPaymentIntentDataSetupFutureUsage::OffSession);
    pi_data.metadata = Some(md(&[("topup_id", "t_1")]));
    let payment = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .customer(customer.id.as_str())
        .line_items(vec![item])
        .payment_intent_data(pi_data)
        .success_url("http://app.test/ok")
        .send(&client)
        .await
        .unwrap();
    assert_eq!(payment.amount_total, Some(5000));
    assert_eq!(payment.payment_status, CheckoutSessionPaymentStatus::Unpaid);

    let expired = ExpireCheckoutSession::new(payment.id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(expired.status, Some(CheckoutSessionStatus::Expired));
    let again = ExpireCheckoutSession::new(payment.id.clone())
        .send(&client)
        .await
        .unwrap_err();
    assert!(matches!(again, StripeError::Stripe(e, 400) if e.type_ == ApiErrorsType::InvalidRequestError));
}

#[tokio::test]
async fn checkout_payment_method_filters_through_async_stripe() {
    // async-stripe has no setter for the legacy `payment_method_types[]`: these filters are the
    // only way a Tollgate built on it can restrict Checkout to cards.
    let sb = sandbox().await;
    let client = stripe(&sb);
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Setup)
        .currency(Currency::USD)
        .allowed_payment_method_types(vec![CreateCheckoutSessionAllowedPaymentMethodTypes::Card])
        .excluded_payment_method_types(vec![CreateCheckoutSessionExcludedPaymentMethodTypes::Paypal])
        .send(&client)
        .await
        .unwrap();
    assert_eq!(
        session.allowed_payment_method_types,
        Some(vec!["card".to_string()])
    );
    assert_eq!(
        session.excluded_payment_method_types,
        Some(vec!["paypal".to_string()])
    );
    assert_eq!(session.payment_method_types, vec!["card".to_string()]);

    let err = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Setup)
        .currency(Currency::USD)
        .allowed_payment_method_types(vec![CreateCheckoutSessionAllowedPaymentMethodTypes::Paypal])
        .send(&client)
        .await
        .unwrap_err();
    let StripeError::Stripe(e, 400) = err else {
        panic!("expected a 400, got {err:?}")
    };
    assert_eq!(e.type_, ApiErrorsType::InvalidRequestError);
    assert_eq!(e.param.as_deref(), Some("allowed_payment_method_types[0]"));
}

#[tokio::test]
async fn payment_objects_parse_through_async_stripe() {
    let sb = sandbox().await;
    let client = stripe(&sb);
    let http = Http::new(&sb);
    let customer = CreateCustomer::new()
        .email("grace@example.com")
        .send(&client)
        .await
        .unwrap();
    let (session, url) = http.setup_session(customer.id.as_str()).await;
    http.pay(&url, "5555555555554444").await;
    let s = http.get(&format!("/v1/checkout/sessions/{session}")).await;
    let si_id = s.json["setup_intent"].as_str().unwrap().to_string();

    let setup_intent = RetrieveSetupIntent::new(si_id.as_str())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(setup_intent.status, SetupIntentStatus::Succeeded);
    assert_eq!(setup_intent.usage, "off_session");
    let pm_id = setup_intent.payment_method.unwrap().id().clone();

    let payment_method = RetrievePaymentMethod::new(pm_id.clone())
        .send(&client)
        .await
        .unwrap();
    let card = payment_method.card.unwrap();
    assert_eq!(
        (
            card.brand.as_str(),
            card.last4.as_str(),
            card.exp_month,
            card.exp_year
        ),
        ("mastercard", "4444", 12, 2034)
    );
    assert_eq!(payment_method.customer.unwrap().id(), &customer.id);

    let listed = ListPaymentMethod::new()
        .customer(customer.id.as_str())
        .type_(ListPaymentMethodType::Card)
        .send(&client)
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 1);
    assert!(!listed.has_more);

    let payment_intent = CreatePaymentIntent::new(2500, Currency::USD)
        .customer(customer.id.as_str())
        .payment_method(pm_id.as_str())
        .confirm(true)
        .off_session(CreatePaymentIntentOffSession::Bool(true))
        .metadata(md(&[("recharge", "acme-1")]))
        .description("Auto top-up")
        .send(&client)
        .await
        .unwrap();
    assert_eq!(payment_intent.status, PaymentIntentStatus::Succeeded);
    assert_eq!(payment_intent.amount_received, 2500);
    let charge_id = payment_intent.latest_charge.clone().unwrap().id().clone();
    let fetched = RetrievePaymentIntent::new(payment_intent.id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(fetched.metadata["recharge"], "acme-1");

    let charge = RetrieveCharge::new(charge_id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(
        (charge.amount, charge.paid, charge.refunded, charge.disputed),
        (2500, true, false, false)
    );

    let refund = CreateRefund::new()
        .payment_intent(payment_intent.id.as_str())
        .amount(1000)
        .send(&client)
        .await
        .unwrap();
    assert_eq!(refund.amount, 1000);
    let refund = RetrieveRefund::new(refund.id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(refund.charge.unwrap().id(), &charge_id);

    let dispute = sb.open_dispute(charge_id.as_str(), Some("fraudulent")).unwrap();
    let dispute = RetrieveDispute::new(dispute["id"].as_str().unwrap())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(dispute.amount, 1500);
    assert_eq!(dispute.status.as_str(), "needs_response");

    let detached = DetachPaymentMethod::new(pm_id.clone())
        .send(&client)
        .await
        .unwrap();
    assert!(detached.customer.is_none());
    let visa = AttachPaymentMethod::new("pm_card_visa")
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .unwrap();
    assert!(visa.id.as_str().starts_with("pm_") && visa.id.as_str() != "pm_card_visa");

    // Every event kind produced above parses as async-stripe's Event, one by one and as a list.
    let events = ListEvent::new().limit(100).send(&client).await.unwrap();
    let types: Vec<&str> = events.data.iter().map(|e| e.type_.as_str()).collect();
    for expected in [
        "customer.created",
        "payment_method.attached",
        "setup_intent.succeeded",
        "checkout.session.completed",
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "refund.created",
        "charge.refunded",
        "charge.dispute.created",
        "payment_method.detached",
    ] {
        assert!(types.contains(&expected), "missing {expected} in {types:?}");
    }
    for e in &events.data {
        let one = RetrieveEvent::new(e.id.clone()).send(&client).await.unwrap();
        assert_eq!(one.type_, e.type_);
    }
}

#[tokio::test]
async fn declined_payment_intent_error_parses() {
    let sb = sandbox().await;
    let client = stripe(&sb);
    let err = CreatePaymentIntent::new(2500, Currency::USD)
        .payment_method("pm_card_chargeDeclinedInsufficientFunds")
        .confirm(true)
        .off_session(CreatePaymentIntentOffSession::Bool(true))
        .send(&client)
        .await
        .unwrap_err();
    let StripeError::Stripe(e, status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status, 402);
    assert_eq!(e.type_, ApiErrorsType::CardError);
    assert_eq!(e.code, Some(ApiErrorsCode::CardDeclined));
    assert_eq!(e.decline_code.as_deref(), Some("insufficient_funds"));
    assert!(e.charge.as_deref().is_some_and(|c| c.starts_with("ch_")));
    let payment_intent = e.payment_intent.as_ref().unwrap();
    assert_eq!(payment_intent.status, PaymentIntentStatus::RequiresPaymentMethod);
    let last = payment_intent.last_payment_error.as_ref().unwrap();
    assert_eq!(last.code, Some(ApiErrorsCode::CardDeclined));
    assert!(e.payment_method.is_some());

    // The failed intent and its failed charge are retrievable too.
    let payment_intent = RetrievePaymentIntent::new(payment_intent.id.clone())
        .send(&client)
        .await
        .unwrap();
    let charge = RetrieveCharge::new(payment_intent.latest_charge.unwrap().id().clone())
        .send(&client)
        .await
        .unwrap();
    assert!(!charge.paid);
    assert_eq!(charge.failure_code.as_deref(), Some("card_declined"));
}
