//! Off-session charges for every test card, idempotency, and payment lookups.

use tollgate_stripe::{PaymentIntentId, PaymentMethodId, PaymentStatus, Payments, PaymentsError};

use crate::common::{
    assert_succeeded, card_of, charge_request, charges, customer, intents, payments, sandbox, save_card, usd,
};

fn failed(code: &str, decline_code: &str, message: &str) -> PaymentStatus {
    PaymentStatus::Failed {
        code: code.into(),
        decline_code: Some(decline_code.into()),
        message: message.into(),
    }
}

#[tokio::test]
async fn cards_saved_on_the_page_charge_as_their_test_numbers_say() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "cards").await;
    let cases = [
        ("4242424242424242", PaymentStatus::Succeeded),
        // Set up with 3-D Secure on the page: later off-session charges need none.
        ("4000002500003155", PaymentStatus::Succeeded),
        // Authenticated on the page, yet every off-session charge needs authentication again.
        (
            "4000002760003184",
            failed(
                "authentication_required",
                "authentication_required",
                "Your card was declined. This transaction requires authentication.",
            ),
        ),
        // Attaches fine, every charge declined.
        (
            "4000000000000341",
            failed("card_declined", "generic_decline", "Your card was declined."),
        ),
    ];
    for (index, (number, expected)) in cases.into_iter().enumerate() {
        let card = card_of(&save_card(&p, &customer, number).await);
        assert_eq!(card.last4, number[12..]);
        let payment = p
            .charge_off_session(charge_request(
                &customer,
                &card.id,
                usd(12),
                &format!("page-{index}"),
            ))
            .await
            .unwrap_or_else(|e| panic!("{number}: {e:?}"));
        assert_eq!(payment.status, expected, "{number}");
        assert_eq!(payment.amount, usd(12));
        assert_eq!(payment.payment_method.as_ref(), Some(&card.id));
        assert!(
            payment.charge.as_deref().is_some_and(|c| c.starts_with("ch_")),
            "{number}"
        );
        assert_eq!(payment.metadata["recharge"], format!("page-{index}"));
        // Asking again later tells the same story.
        assert_eq!(
            p.payment(&payment.intent).await.expect("retrieved"),
            payment,
            "{number}"
        );
    }
}

#[tokio::test]
async fn stripe_test_payment_methods_decline_as_documented() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "tokens").await;
    let cases = [
        ("pm_card_visa", PaymentStatus::Succeeded),
        (
            "pm_card_chargeDeclined",
            failed("card_declined", "generic_decline", "Your card was declined."),
        ),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            failed(
                "card_declined",
                "insufficient_funds",
                "Your card has insufficient funds.",
            ),
        ),
        (
            "pm_card_authenticationRequired",
            failed(
                "authentication_required",
                "authentication_required",
                "Your card was declined. This transaction requires authentication.",
            ),
        ),
        (
            "pm_card_chargeCustomerFail",
            failed("card_declined", "generic_decline", "Your card was declined."),
        ),
    ];
    for (token, expected) in cases {
        let payment = p
            .charge_off_session(charge_request(
                &customer,
                &PaymentMethodId::new(token),
                usd(10),
                token,
            ))
            .await
            .unwrap_or_else(|e| panic!("{token}: {e:?}"));
        assert_eq!(payment.status, expected, "{token}");
        assert!(payment.intent.as_str().starts_with("pi_"), "{token}");
        assert_eq!(payment.amount, usd(10));
    }
    let (all, ok) = charges(&sb);
    assert_eq!((all, ok), (5, 1), "one attempt per charge, one success");
}

#[tokio::test]
async fn the_same_charge_with_the_same_key_charges_once() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "once").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    let request = charge_request(&customer, &card.id, usd(40), "acme-recharge-7");

    let first = p.charge_off_session(request.clone()).await.expect("charged");
    let second = p.charge_off_session(request.clone()).await.expect("replayed");
    assert_succeeded(&first, usd(40));
    assert_eq!(first, second, "the replay is the same payment");
    assert_eq!(charges(&sb), (1, 1));
    assert_eq!(intents(&sb).len(), 1);

    // Another key is another charge.
    let other = p
        .charge_off_session(charge_request(&customer, &card.id, usd(40), "acme-recharge-8"))
        .await
        .expect("charged");
    assert_ne!(other.intent, first.intent);
    assert_eq!(charges(&sb), (2, 2));

    // The same key with different parameters is a caller bug, refused, and charges nothing.
    let err = p
        .charge_off_session(charge_request(&customer, &card.id, usd(41), "acme-recharge-7"))
        .await
        .expect_err("key reused for another amount");
    assert!(
        matches!(err, PaymentsError::Rejected { ref code, .. } if code.as_deref() == Some("idempotency_error")),
        "{err:?}"
    );
    assert_eq!(charges(&sb), (2, 2));
}

#[tokio::test]
async fn concurrent_charges_with_one_key_charge_once() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "racing").await;
    let card = card_of(&save_card(&p, &customer, "4242424242424242").await);
    let request = charge_request(&customer, &card.id, usd(60), "acme-recharge-42");
    // Several servers retrying the same recharge at once: a request that finds the key in use
    // gets 409, which is retried until the first one's answer can be replayed.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (p, request) = (p.clone(), request.clone());
            tokio::spawn(async move { p.charge_off_session(request).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task finished").expect("same payment"));
    }
    assert_succeeded(&results[0], usd(60));
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!(charges(&sb), (1, 1));
}

#[tokio::test]
async fn a_declined_charge_replays_as_the_same_decline() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "replay").await;
    let request = charge_request(
        &customer,
        &PaymentMethodId::new("pm_card_chargeDeclinedInsufficientFunds"),
        usd(10),
        "declined-once",
    );
    let first = p.charge_off_session(request.clone()).await.expect("declined");
    let second = p.charge_off_session(request).await.expect("declined again");
    assert!(matches!(first.status, PaymentStatus::Failed { .. }));
    assert_eq!(first, second);
    assert_eq!(charges(&sb), (1, 0), "no second attempt at the card");
}

#[tokio::test]
async fn bad_charges_are_refused() {
    let sb = sandbox().await;
    let p = payments(&sb);
    let customer = customer(&p, "bad").await;
    let visa = PaymentMethodId::new("pm_card_visa");

    for (amount, why) in [
        (tollgate_core::Micros::new(10_000_001), "fraction"),
        (usd(0), "zero"),
        (usd(-5), "negative"),
    ] {
        let err = p
            .charge_off_session(charge_request(&customer, &visa, amount, why))
            .await
            .expect_err(why);
        assert!(matches!(err, PaymentsError::Rejected { .. }), "{why}: {err:?}");
    }
    // Below Stripe's minimum charge: Stripe's own refusal, with the parameter named.
    let err = p
        .charge_off_session(charge_request(
            &customer,
            &visa,
            tollgate_core::Micros::new(100_000),
            "tiny",
        ))
        .await
        .expect_err("below the minimum");
    assert!(
        matches!(err, PaymentsError::Rejected { ref param, .. } if param.as_deref() == Some("amount")),
        "{err:?}"
    );
    let err = p
        .charge_off_session(charge_request(
            &tollgate_stripe::CustomerId::new("cus_nobody"),
            &visa,
            usd(10),
            "ghost",
        ))
        .await
        .expect_err("no such customer");
    assert!(matches!(err, PaymentsError::NotFound(_)), "{err:?}");
    let err = p
        .payment(&PaymentIntentId::new("pi_missing"))
        .await
        .expect_err("no such payment");
    assert!(matches!(err, PaymentsError::NotFound(_)), "{err:?}");
    let err = p
        .payment(&PaymentIntentId::new("pi_1/../../v1/customers"))
        .await
        .expect_err("not an id");
    assert!(matches!(err, PaymentsError::Rejected { .. }), "{err:?}");
    assert_eq!(charges(&sb), (0, 0));
}
