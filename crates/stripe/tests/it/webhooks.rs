//! Webhooks as the sandbox really delivers them: verified over the raw bytes, parsed into
//! Tollgate's events, and judged the same way by async-stripe's own verifier.

use std::time::{SystemTime, UNIX_EPOCH};

use stripe_webhook::Webhook;
use tollgate_stripe::{
    CheckoutPurpose, PaymentEvent, PaymentEventKind, PaymentMethodId, PaymentStatus, Payments, WebhookError,
    WebhookVerifier,
};
use tollgate_stripe_sandbox::signature_header;

use crate::common::{
    Received, Receiver, SECRET, card_of, charge_request, customer, payments, sandbox, save_card,
    save_card_request, usd,
};

fn now() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_secs()).expect("fits")
}

fn verifier() -> WebhookVerifier {
    WebhookVerifier::new(SECRET).expect("secret")
}

fn timestamp_of(header: &str) -> i64 {
    header
        .split(',')
        .find_map(|part| part.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .expect("the header has a timestamp")
}

/// async-stripe's verdict on the same input.
fn async_stripe_accepts(body: &[u8], header: &str, secret: &str, now: i64) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    Webhook::construct_event_with_timestamp(text, header, secret, now).is_ok()
}

fn events_of(received: &[Received]) -> Vec<PaymentEvent> {
    let now = now();
    received
        .iter()
        .map(|r| {
            assert!(
                async_stripe_accepts(&r.body, &r.signature, SECRET, now),
                "async-stripe refuses {}",
                r.event_type
            );
            verifier()
                .verify(&r.body, &r.signature, now)
                .unwrap_or_else(|e| panic!("{}: {e}", r.event_type))
        })
        .collect()
}

#[tokio::test]
async fn every_event_kind_the_sandbox_delivers_verifies_and_parses() {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let p = payments(&sb);
    let customer = customer(&p, "hooks").await;

    let saved = save_card(&p, &customer, "4242424242424242").await;
    let card = card_of(&saved);
    let paid = p
        .charge_off_session(charge_request(&customer, &card.id, usd(30), "hook-pay"))
        .await
        .expect("charged");
    let declined = p
        .charge_off_session(charge_request(
            &customer,
            &PaymentMethodId::new("pm_card_chargeDeclined"),
            usd(10),
            "hook-decline",
        ))
        .await
        .expect("declined");
    p.refund(&paid.intent, Some(usd(10)), "hook-refund-1")
        .await
        .expect("refund");
    p.refund(&paid.intent, Some(usd(5)), "hook-refund-2")
        .await
        .expect("refund");

    let lost = p
        .charge_off_session(charge_request(&customer, &card.id, usd(20), "hook-lost"))
        .await
        .expect("charged");
    let won = p
        .charge_off_session(charge_request(&customer, &card.id, usd(15), "hook-won"))
        .await
        .expect("charged");
    let mut disputes = Vec::new();
    for (payment, keep) in [(&lost, false), (&won, true)] {
        let charge = payment.charge.as_deref().expect("charge");
        let dispute = sb
            .open_dispute(charge, Some("fraudulent"))
            .expect("dispute opened");
        let id = dispute["id"].as_str().expect("dispute id").to_string();
        sb.close_dispute(&id, keep).expect("dispute closed");
        disputes.push(id);
    }

    let mut abandoned = save_card_request(&customer, "abandoned");
    abandoned.purpose = CheckoutPurpose::SaveCard;
    let abandoned = p.create_checkout(abandoned).await.expect("created");
    p.expire_checkout(&abandoned.id).await.expect("expired");
    p.detach_card(&card.id).await.expect("detached");

    let received = rx
        .wait_for(&[
            ("checkout.session.completed", 1),
            ("checkout.session.expired", 1),
            ("payment_intent.succeeded", 3),
            ("payment_intent.payment_failed", 1),
            ("charge.refunded", 2),
            ("charge.dispute.created", 2),
            ("charge.dispute.closed", 2),
            ("payment_method.detached", 1),
        ])
        .await;
    let events = events_of(&received);
    for (event, raw) in events.iter().zip(&received) {
        let json: serde_json::Value = serde_json::from_slice(&raw.body).expect("json");
        assert_eq!(event.id, json["id"].as_str().expect("id"));
        assert!(event.id.starts_with("evt_"));
        assert_eq!(event.created, json["created"].as_i64().expect("created"));
    }
    let kinds: Vec<&PaymentEventKind> = events.iter().map(|e| &e.kind).collect();

    assert!(kinds.contains(&&PaymentEventKind::CheckoutCompleted {
        session: saved.id.clone(),
        reference: saved.reference.clone(),
    }));
    assert!(kinds.contains(&&PaymentEventKind::CheckoutExpired {
        session: abandoned.id.clone(),
        reference: Some("abandoned".into()),
    }));

    // The webhook's view of a payment is the API's view of it.
    let succeeded: Vec<_> = kinds
        .iter()
        .filter_map(|k| match k {
            PaymentEventKind::PaymentSucceeded { payment } => Some(payment.clone()),
            _ => None,
        })
        .collect();
    let paid_now = p.payment(&paid.intent).await.expect("payment");
    assert!(succeeded.contains(&paid_now), "{succeeded:?}");
    let failed: Vec<_> = kinds
        .iter()
        .filter_map(|k| match k {
            PaymentEventKind::PaymentFailed { payment } => Some(payment.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![p.payment(&declined.intent).await.expect("payment")]);
    assert!(matches!(
        &failed[0].status,
        PaymentStatus::Failed { code, decline_code, .. }
            if code == "card_declined" && decline_code.as_deref() == Some("generic_decline")
    ));

    let refunded: Vec<_> = kinds
        .iter()
        .filter_map(|k| match k {
            PaymentEventKind::ChargeRefunded {
                intent,
                charge,
                amount_refunded,
            } => Some((intent.clone(), charge.clone(), *amount_refunded)),
            _ => None,
        })
        .collect();
    let paid_charge = paid.charge.clone().expect("charge");
    assert_eq!(
        refunded,
        vec![
            (Some(paid.intent.clone()), paid_charge.clone(), usd(10)),
            (Some(paid.intent.clone()), paid_charge, usd(15)),
        ],
        "amount_refunded is cumulative"
    );

    for (payment, dispute, keep) in [(&lost, &disputes[0], false), (&won, &disputes[1], true)] {
        let charge = payment.charge.clone().expect("charge");
        assert!(kinds.contains(&&PaymentEventKind::DisputeCreated {
            dispute: dispute.clone(),
            intent: Some(payment.intent.clone()),
            charge: charge.clone(),
            amount: payment.amount,
        }));
        assert!(kinds.contains(&&PaymentEventKind::DisputeClosed {
            dispute: dispute.clone(),
            intent: Some(payment.intent.clone()),
            charge,
            amount: payment.amount,
            won: keep,
        }));
    }

    assert!(kinds.contains(&&PaymentEventKind::PaymentMethodDetached {
        card: card.id.clone(),
        customer: Some(customer.clone()),
    }));
    // Everything else is acknowledged as `Other`.
    for event_type in [
        "customer.created",
        "setup_intent.succeeded",
        "payment_method.attached",
        "charge.succeeded",
    ] {
        assert!(
            kinds.contains(&&PaymentEventKind::Other {
                event_type: event_type.into()
            }),
            "{event_type}"
        );
    }
}

/// One real, sandbox-signed delivery.
async fn one_delivery() -> Received {
    let sb = sandbox().await;
    let rx = Receiver::start().await;
    sb.set_webhook_url(rx.url.clone());
    let p = payments(&sb);
    customer(&p, "sample").await;
    let received = rx.wait_for(&[("customer.created", 1)]).await;
    received.into_iter().next().expect("one delivery")
}

#[tokio::test]
async fn forged_tampered_stale_and_foreign_signatures_are_refused() {
    let delivery = one_delivery().await;
    let body = delivery.body.clone();
    let header = delivery.signature.clone();
    let t = timestamp_of(&header);
    let text = String::from_utf8(body.clone()).expect("utf-8");

    // Valid, at the edges of the tolerance.
    for now in [t, t + 300, t - 300] {
        assert!(
            verifier().verify(&body, &header, now).is_ok(),
            "now = t{:+}",
            now - t
        );
        assert!(async_stripe_accepts(&body, &header, SECRET, now));
    }
    // Stale or from the future.
    for now in [t + 301, t - 301, t + 86_400] {
        assert!(matches!(
            verifier().verify(&body, &header, now),
            Err(WebhookError::OutsideTolerance { .. })
        ));
        assert!(!async_stripe_accepts(&body, &header, SECRET, now));
    }
    // Tampered body: one byte changed, a space added, re-serialised JSON.
    let mut flipped = body.clone();
    let at = flipped
        .iter()
        .position(|b| *b == b'c')
        .expect("a 'c' in the body");
    flipped[at] = b'k';
    let reserialised =
        serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&body).expect("json"))
            .expect("json");
    for tampered in [flipped, [body.clone(), b" ".to_vec()].concat(), reserialised] {
        assert_eq!(
            verifier().verify(&tampered, &header, t),
            Err(WebhookError::BadSignature)
        );
        assert!(!async_stripe_accepts(&tampered, &header, SECRET, t));
    }
    // Signed with another secret (another endpoint's, or a forger's).
    let foreign = signature_header("whsec_someone_else", t, &text);
    assert_eq!(
        verifier().verify(&body, &foreign, t),
        Err(WebhookError::BadSignature)
    );
    assert!(!async_stripe_accepts(&body, &foreign, SECRET, t));
    let wrong_secret = WebhookVerifier::new("whsec_wrong").expect("secret");
    assert_eq!(
        wrong_secret.verify(&body, &header, t),
        Err(WebhookError::BadSignature)
    );
    assert!(!async_stripe_accepts(&body, &header, "whsec_wrong", t));
    // A valid signature moved to another timestamp.
    let v1 = header.split(',').find_map(|p| p.strip_prefix("v1=")).expect("v1");
    let moved = format!("t={},v1={v1}", t + 1);
    assert_eq!(
        verifier().verify(&body, &moved, t),
        Err(WebhookError::BadSignature)
    );
    assert!(!async_stripe_accepts(&body, &moved, SECRET, t));
    // No v1 at all.
    let v0_only = format!("t={t},v0={v1}");
    assert!(verifier().verify(&body, &v0_only, t).is_err());
    assert!(!async_stripe_accepts(&body, &v0_only, SECRET, t));
}

#[tokio::test]
async fn any_of_several_v1_signatures_is_enough_as_during_a_secret_rotation() {
    let delivery = one_delivery().await;
    let body = delivery.body;
    let t = timestamp_of(&delivery.signature);
    let text = String::from_utf8(body.clone()).expect("utf-8");
    let old_secret = "whsec_before_rotation";
    let v1 = |secret: &str| {
        signature_header(secret, t, &text)
            .split(',')
            .find_map(|p| p.strip_prefix("v1=").map(str::to_string))
            .expect("v1")
    };
    let (old, new) = (v1(old_secret), v1(SECRET));
    for header in [
        format!("t={t},v1={old},v1={new}"),
        format!("t={t},v1={new},v1={old}"),
    ] {
        for secret in [SECRET, old_secret] {
            let ours = WebhookVerifier::new(secret)
                .expect("secret")
                .verify(&body, &header, t);
            assert!(ours.is_ok(), "{secret}: {ours:?}");
            assert!(async_stripe_accepts(&body, &header, secret, t));
        }
        let third = WebhookVerifier::new("whsec_third").expect("secret");
        assert_eq!(third.verify(&body, &header, t), Err(WebhookError::BadSignature));
        assert!(!async_stripe_accepts(&body, &header, "whsec_third", t));
    }
    // The sandbox's delivered header is exactly `signature_header` over the same bytes.
    assert_eq!(delivery.signature, signature_header(SECRET, t, &text));
}
