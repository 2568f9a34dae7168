//! Card money in the store: top-ups credited exactly once, refunds, disputes,
//! cards and webhook event dedupe. Runs on SQLite, and on PostgreSQL with
//! `TOLLGATE_TEST_STORE=postgres`.

use std::sync::Arc;

use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, DisputeStatus, IdempotencyKey, ManualClock, Micros, NewAccount, NewTopup,
    Quantity, TierBasis, TopupAmount, TopupLimits, TopupOutcome, TopupSource, TopupStatus, TransactionKind,
    UsageCommand,
};
use tollgate_store::testing::TestDatabase;
use tollgate_store::{
    CardRecord, DisputeNews, PageRequest, RefundRequest, RefundState, SharedStore, StoreError, StoreRules,
    TopupReference,
};

fn dollars(text: &str) -> Micros {
    Micros::parse(text).unwrap()
}

async fn setup() -> (TestDatabase, SharedStore, AccountId) {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = db.open(StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock,
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    });
    let acme = AccountId::parse("acme").unwrap();
    store
        .create_account(NewAccount::new(acme.clone(), "Acme", "billing@acme.test").unwrap())
        .await
        .unwrap();
    (db, store, acme)
}

fn new_topup(account: &AccountId, amount: &str, key: &str, source: TopupSource) -> NewTopup {
    NewTopup {
        account: account.clone(),
        amount: TopupAmount::parse(amount, TopupLimits::default()).unwrap(),
        source,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        actor: Actor::System,
    }
}

fn paid(payment: &str) -> TopupOutcome {
    TopupOutcome::Succeeded {
        payment_reference: payment.to_owned(),
        charge_reference: Some(format!("ch_{payment}")),
        card_brand: Some("visa".to_owned()),
        card_last4: Some("4242".to_owned()),
    }
}

async fn assert_clean(store: &SharedStore) {
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_top_up_is_credited_exactly_once_whatever_reports_it() {
    let (_db, store, acme) = setup().await;
    let created = store
        .create_topup(new_topup(&acme, "100.00", "t1", TopupSource::SavedCard))
        .await
        .unwrap();
    assert!(!created.replayed);
    let topup = created.value;
    assert_eq!(topup.status, TopupStatus::Pending);
    let replay = store
        .create_topup(new_topup(&acme, "100.00", "t1", TopupSource::SavedCard))
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value.id, topup.id);
    assert!(matches!(
        store
            .create_topup(new_topup(&acme, "50.00", "t1", TopupSource::SavedCard))
            .await,
        Err(StoreError::IdempotencyConflict { .. })
    ));

    store
        .link_topup(&topup.id, None, Some("pi_1".to_owned()))
        .await
        .unwrap();
    // The return, the webhook and a recovery pass all report the same success.
    for _ in 0..3 {
        let settled = store.settle_topup(&topup.id, paid("pi_1")).await.unwrap();
        assert_eq!(settled.status, TopupStatus::Succeeded);
        assert_eq!(settled.balances_after_credit.unwrap().available, dollars("100"));
    }
    // A late decline does not undo money that arrived.
    let late = store
        .settle_topup(
            &topup.id,
            TopupOutcome::Failed {
                payment_reference: Some("pi_1".to_owned()),
                code: "card_declined".to_owned(),
                message: "declined".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(late.status, TopupStatus::Succeeded);
    assert!(matches!(
        store.settle_topup(&topup.id, paid("pi_other")).await,
        Err(StoreError::Conflict(_))
    ));
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.available, dollars("100"));
    let lines = store.transactions(&acme, PageRequest::default()).await.unwrap();
    assert_eq!(lines.data.len(), 1);
    assert_eq!(lines.data[0].kind, TransactionKind::Topup);
    assert_eq!(lines.data[0].description, "Top-up (Visa •••• 4242)");
    assert_eq!(
        store
            .find_topup(TopupReference::Payment("pi_1".to_owned()))
            .await
            .unwrap()
            .map(|found| found.id),
        Some(topup.id.clone())
    );
    assert_eq!(
        store
            .find_topup(TopupReference::Charge("ch_pi_1".to_owned()))
            .await
            .unwrap()
            .map(|found| found.id),
        Some(topup.id.clone())
    );
    assert_clean(&store).await;
}

#[tokio::test]
async fn concurrent_reports_of_one_payment_credit_once() {
    let (_db, store, acme) = setup().await;
    let topup = store
        .create_topup(new_topup(&acme, "25.00", "race", TopupSource::HostedPage))
        .await
        .unwrap()
        .value;
    assert_eq!(topup.status, TopupStatus::RequiresPaymentMethod);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let id = topup.id.clone();
        tasks.push(tokio::spawn(async move {
            store.settle_topup(&id, paid("pi_race")).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status, TopupStatus::Succeeded);
    }
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("25")
    );
    assert_clean(&store).await;
}

#[tokio::test]
async fn failures_and_open_top_ups() {
    let (_db, store, acme) = setup().await;
    let declined = store
        .create_topup(new_topup(&acme, "10.00", "d", TopupSource::SavedCard))
        .await
        .unwrap()
        .value;
    let failed = store
        .settle_topup(
            &declined.id,
            TopupOutcome::Failed {
                payment_reference: Some("pi_d".to_owned()),
                code: "card_declined".to_owned(),
                message: "Your card was declined.".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.status, TopupStatus::Failed);
    assert_eq!(failed.failure_code.as_deref(), Some("card_declined"));
    let open = store
        .create_topup(new_topup(&acme, "10.00", "o", TopupSource::SavedCard))
        .await
        .unwrap()
        .value;
    let later = datetime!(2026-11-25 11:00 UTC);
    let listed = store.open_topups(later, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![open.id.clone()]
    );
    assert!(
        store
            .open_topups(datetime!(2026-11-25 09:00 UTC), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let page = store.list_topups(&acme, PageRequest::new(1, None)).await.unwrap();
    assert_eq!(page.data[0].id, open.id);
    assert!(page.has_more);
    let next = store
        .list_topups(&acme, PageRequest::new(1, Some(open.id.clone())))
        .await
        .unwrap();
    assert_eq!(next.data[0].id, declined.id);
    assert!(!next.has_more);
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        Micros::ZERO
    );
    assert!(matches!(
        store.topup("top_missing").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_clean(&store).await;
}

async fn paid_topup(store: &SharedStore, acme: &AccountId, amount: &str, payment: &str) -> String {
    let topup = store
        .create_topup(new_topup(acme, amount, payment, TopupSource::SavedCard))
        .await
        .unwrap()
        .value;
    store.settle_topup(&topup.id, paid(payment)).await.unwrap();
    topup.id
}

fn refund(topup: &str, amount: Option<&str>, key: &str) -> RefundRequest {
    RefundRequest {
        topup_id: topup.to_owned(),
        amount: amount.map(dollars),
        reason: "customer asked".to_owned(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        actor: Actor::Cli("ops".to_owned()),
    }
}

#[tokio::test]
async fn refunds_take_money_back_once_and_may_leave_a_flagged_negative_balance() {
    let (_db, store, acme) = setup().await;
    let topup = paid_topup(&store, &acme, "100.00", "pi_r").await;
    // Spend most of it: a refund then takes back money already spent.
    store
        .charge_usage(UsageCommand {
            account: acme.clone(),
            action: ActionId::parse("email_finder").unwrap(),
            quantity: Quantity::new(3000).unwrap(),
            idempotency_key: IdempotencyKey::parse("spend").unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("10")
    );

    let first = store
        .begin_refund(refund(&topup, Some("30.00"), "r1"))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.value.state, RefundState::Pending);
    assert_eq!(first.value.balances_after.available, dollars("-20"));
    let again = store
        .begin_refund(refund(&topup, Some("30.00"), "r1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.value.id, first.value.id);
    assert!(matches!(
        store.begin_refund(refund(&topup, Some("80.00"), "r2")).await,
        Err(StoreError::InvalidRefund(_))
    ));
    let confirmed = store
        .finish_refund(&first.value.id, Ok("re_1".to_owned()))
        .await
        .unwrap();
    assert_eq!(confirmed.state, RefundState::Succeeded);
    assert_eq!(confirmed.processor_refund.as_deref(), Some("re_1"));

    // The processor reports the cumulative total: nothing new, then a dashboard refund of 20.
    assert!(
        store
            .reconcile_refunded(TopupReference::Payment("pi_r".to_owned()), dollars("30"))
            .await
            .unwrap()
            .is_none()
    );
    let dashboard = store
        .reconcile_refunded(TopupReference::Payment("pi_r".to_owned()), dollars("50"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dashboard.amount, dollars("20"));

    // A refund the processor refuses gives the money back.
    let second = store
        .begin_refund(refund(&topup, None, "r3"))
        .await
        .unwrap()
        .value;
    assert_eq!(second.amount, dollars("50"));
    let refused = store
        .finish_refund(&second.id, Err("charge already refunded".to_owned()))
        .await
        .unwrap();
    assert_eq!(refused.state, RefundState::Failed);
    assert_eq!(store.topup(&topup).await.unwrap().refunded, dollars("50"));
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("-40")
    );
    // A negative prepaid balance refuses usage.
    assert!(matches!(
        store
            .charge_usage(UsageCommand {
                account: acme.clone(),
                action: ActionId::parse("email_validation").unwrap(),
                quantity: Quantity::new(1).unwrap(),
                idempotency_key: IdempotencyKey::parse("blocked").unwrap(),
            })
            .await,
        Err(StoreError::InsufficientFunds(_))
    ));
    assert_clean(&store).await;
    // Paying again clears the flag and the balance.
    paid_topup(&store, &acme, "40.00", "pi_back").await;
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        Micros::ZERO
    );
    assert_clean(&store).await;
}

/// Gap B (hostile simulation seed 200): a dashboard refund whose `charge.refunded` total
/// arrives while one of Tollgate's refunds is pending looks already counted (the pending
/// refund is in the store's total); when the processor then refuses Tollgate's refund, the
/// total it reported is what records the dashboard refund, in the same transaction.
#[tokio::test]
async fn a_dashboard_refund_heard_while_ours_is_pending_is_recorded_when_ours_is_refused() {
    let (_db, store, acme) = setup().await;
    let topup = paid_topup(&store, &acme, "100.00", "pi_gap_b").await;
    let ours = store
        .begin_refund(refund(&topup, Some("70.00"), "ours"))
        .await
        .unwrap()
        .value;
    assert_eq!(ours.state, RefundState::Pending);
    // Meanwhile $40 is refunded in the dashboard: 40 ≤ the 70 the store counts, so nothing
    // is recorded yet, and the event is acknowledged.
    for _ in 0..2 {
        assert!(
            store
                .reconcile_refunded(TopupReference::Payment("pi_gap_b".to_owned()), dollars("40"))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(store.topup(&topup).await.unwrap().refunded, dollars("70"));
    // 70 + 40 > 100: the processor refuses ours.
    let refused = store
        .finish_refund(&ours.id, Err("amount_too_large".to_owned()))
        .await
        .unwrap();
    assert_eq!(refused.state, RefundState::Failed);
    let settled = store.topup(&topup).await.unwrap();
    assert_eq!(
        settled.refunded,
        dollars("40"),
        "the dashboard refund is recorded"
    );
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("60")
    );
    let lines = store.transactions(&acme, PageRequest::default()).await.unwrap();
    let refund_lines: Vec<(Micros, &str)> = lines
        .data
        .iter()
        .filter(|line| line.kind == TransactionKind::Refund)
        .map(|line| (line.amount, line.description.as_str()))
        .collect();
    assert_eq!(
        refund_lines,
        [
            (
                dollars("-40"),
                "Refund: refunded in the payment processor's dashboard"
            ),
            (dollars("70"), "Refund failed: amount_too_large"),
            (dollars("-70"), "Refund: customer asked"),
        ]
    );
    // The same total heard again, or the answer heard again, changes nothing.
    assert!(
        store
            .reconcile_refunded(TopupReference::Payment("pi_gap_b".to_owned()), dollars("40"))
            .await
            .unwrap()
            .is_none()
    );
    store
        .finish_refund(&ours.id, Err("amount_too_large".to_owned()))
        .await
        .unwrap();
    assert_eq!(store.topup(&topup).await.unwrap().refunded, dollars("40"));
    // What is left can still be refunded, and only that.
    assert!(matches!(
        store
            .begin_refund(refund(&topup, Some("60.01"), "too-much"))
            .await,
        Err(StoreError::InvalidRefund(_))
    ));
    let rest = store
        .begin_refund(refund(&topup, None, "rest"))
        .await
        .unwrap()
        .value;
    assert_eq!(rest.amount, dollars("60"));
    assert_clean(&store).await;
}

/// The processor's totals only grow but may arrive out of order: the largest one heard
/// is what a refused refund is measured against; and a refused refund with no dashboard
/// refund beside it records nothing more.
#[tokio::test]
async fn the_largest_processor_total_heard_is_kept_for_a_refused_refund() {
    let (_db, store, acme) = setup().await;
    let topup = paid_topup(&store, &acme, "100.00", "pi_totals").await;
    let ours = store
        .begin_refund(refund(&topup, Some("50.00"), "ours"))
        .await
        .unwrap()
        .value;
    // Two dashboard refunds (20, then 10 more): the later total arrives first.
    for total in ["30", "20"] {
        assert!(
            store
                .reconcile_refunded(TopupReference::Charge("ch_pi_totals".to_owned()), dollars(total))
                .await
                .unwrap()
                .is_none()
        );
    }
    store
        .finish_refund(&ours.id, Err("expired_or_canceled_card".to_owned()))
        .await
        .unwrap();
    assert_eq!(store.topup(&topup).await.unwrap().refunded, dollars("30"));
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("70")
    );

    // Another top-up: our refund refused, the processor never refunded anything.
    let other = paid_topup(&store, &acme, "20.00", "pi_plain").await;
    let plain = store
        .begin_refund(refund(&other, Some("5.00"), "plain"))
        .await
        .unwrap()
        .value;
    store
        .finish_refund(&plain.id, Err("expired_or_canceled_card".to_owned()))
        .await
        .unwrap();
    assert_eq!(store.topup(&other).await.unwrap().refunded, Micros::ZERO);
    // And one whose total included ours (it went through): no double count.
    let third = store
        .begin_refund(refund(&other, Some("5.00"), "through"))
        .await
        .unwrap()
        .value;
    assert!(
        store
            .reconcile_refunded(TopupReference::Payment("pi_plain".to_owned()), dollars("5"))
            .await
            .unwrap()
            .is_none()
    );
    store
        .finish_refund(&third.id, Ok("re_through".to_owned()))
        .await
        .unwrap();
    assert_eq!(store.topup(&other).await.unwrap().refunded, dollars("5"));
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("85")
    );
    assert_clean(&store).await;
}

#[tokio::test]
async fn disputes_move_money_once_in_any_order() {
    let (_db, store, acme) = setup().await;
    paid_topup(&store, &acme, "60.00", "pi_x").await;
    let news = |status| DisputeNews {
        dispute: "dp_1".to_owned(),
        payment_reference: Some("pi_x".to_owned()),
        charge_reference: "ch_pi_x".to_owned(),
        amount: dollars("60"),
        status,
    };
    let opened = store
        .apply_dispute(news(DisputeStatus::Open))
        .await
        .unwrap()
        .unwrap();
    assert!(opened.line.is_some());
    assert!(
        store
            .apply_dispute(news(DisputeStatus::Open))
            .await
            .unwrap()
            .unwrap()
            .line
            .is_none()
    );
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        Micros::ZERO
    );
    let won = store
        .apply_dispute(news(DisputeStatus::Won))
        .await
        .unwrap()
        .unwrap();
    assert!(won.line.is_some());
    assert!(
        store
            .apply_dispute(news(DisputeStatus::Won))
            .await
            .unwrap()
            .unwrap()
            .line
            .is_none()
    );
    assert!(
        store
            .apply_dispute(news(DisputeStatus::Open))
            .await
            .unwrap()
            .unwrap()
            .line
            .is_none()
    );
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("60")
    );

    // Lost, heard before it was opened: taken back once.
    let lost = DisputeNews {
        dispute: "dp_2".to_owned(),
        status: DisputeStatus::Lost,
        ..news(DisputeStatus::Lost)
    };
    store.apply_dispute(lost.clone()).await.unwrap();
    store
        .apply_dispute(DisputeNews {
            status: DisputeStatus::Open,
            ..lost
        })
        .await
        .unwrap();
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        Micros::ZERO
    );
    assert!(
        store
            .apply_dispute(DisputeNews {
                dispute: "dp_3".to_owned(),
                payment_reference: Some("pi_unknown".to_owned()),
                charge_reference: "ch_unknown".to_owned(),
                amount: dollars("1"),
                status: DisputeStatus::Open,
            })
            .await
            .unwrap()
            .is_none()
    );
    assert_clean(&store).await;
}

fn card(id: &str, last4: &str) -> CardRecord {
    CardRecord {
        processor_id: id.to_owned(),
        brand: "visa".to_owned(),
        last4: last4.to_owned(),
        exp_month: 12,
        exp_year: 2034,
        added_at: datetime!(2026-11-25 10:00 UTC),
    }
}

#[tokio::test]
async fn cards_are_replaced_once_per_setup_and_removed() {
    let (_db, store, acme) = setup().await;
    assert_eq!(store.payment_profile(&acme).await.unwrap(), Default::default());
    assert_eq!(
        store.set_processor_customer(&acme, "cus_1").await.unwrap(),
        "cus_1"
    );
    // A racing second creator learns the first one's customer.
    assert_eq!(
        store.set_processor_customer(&acme, "cus_2").await.unwrap(),
        "cus_1"
    );

    store.record_card_setup(&acme, "cs_a").await.unwrap();
    store.record_card_setup(&acme, "cs_b").await.unwrap();
    let first = store
        .complete_card_setup("cs_a", card("pm_a", "4242"), Actor::System)
        .await
        .unwrap();
    assert!(first.applied);
    assert_eq!(first.replaced, None);
    let second = store
        .complete_card_setup("cs_b", card("pm_b", "0341"), Actor::System)
        .await
        .unwrap();
    assert_eq!(
        second.replaced.map(|card| card.processor_id),
        Some("pm_a".to_owned())
    );
    // Replaying the first setup's return link does not bring the old card back.
    let replay = store
        .complete_card_setup("cs_a", card("pm_a", "4242"), Actor::System)
        .await
        .unwrap();
    assert!(!replay.applied);
    assert_eq!(replay.card.map(|card| card.last4), Some("0341".to_owned()));
    assert!(matches!(
        store
            .complete_card_setup("cs_unknown", card("pm_x", "1111"), Actor::System)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let profile = store.payment_profile(&acme).await.unwrap();
    assert_eq!(profile.processor_customer.as_deref(), Some("cus_1"));
    assert_eq!(
        profile.card.as_ref().map(|card| card.last4.as_str()),
        Some("0341")
    );

    let removed = store.remove_card(&acme, Actor::System).await.unwrap();
    assert_eq!(removed.map(|card| card.processor_id), Some("pm_b".to_owned()));
    assert_eq!(store.remove_card(&acme, Actor::System).await.unwrap(), None);
    assert_eq!(store.payment_profile(&acme).await.unwrap().card, None);
    let adopted = store
        .adopt_card(&acme, card("pm_c", "3155"), Actor::System)
        .await
        .unwrap();
    assert!(adopted.applied);
    assert!(
        !store
            .adopt_card(&acme, card("pm_c", "3155"), Actor::System)
            .await
            .unwrap()
            .applied
    );
    let audit = store.audit_log(PageRequest::default()).await.unwrap();
    assert!(
        audit
            .data
            .iter()
            .any(|entry| entry.action == "payment_method.removed")
    );
    assert!(
        store
            .payment_profile(&AccountId::parse("ghost").unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn webhook_events_are_recorded_once() {
    let (_db, store, _acme) = setup().await;
    assert!(
        store
            .record_processor_event("evt_1", "payment_intent.succeeded")
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_processor_event("evt_1", "payment_intent.succeeded")
            .await
            .unwrap()
    );
    assert!(
        store
            .record_processor_event("evt_2", "charge.refunded")
            .await
            .unwrap()
    );
}

// ---------------------------------------------------------------------------
// Races: on PostgreSQL these run as concurrent transactions on separate
// connections, so they check the row locks and the unique backstops; on
// SQLite they check the single writer gives the same answers.

/// Runs `count` copies of `make(i)` at once and returns their results in order.
async fn all_at_once<T, F, Fut>(count: usize, make: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..count).map(|index| tokio::spawn(make(index))).collect();
    let mut results = Vec::with_capacity(count);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_success_and_declines_reported_at_once_credit_once() {
    let (_db, store, acme) = setup().await;
    let topup = store
        .create_topup(new_topup(&acme, "40.00", "mixed", TopupSource::SavedCard))
        .await
        .unwrap()
        .value;
    let results = all_at_once(12, |index| {
        let (store, id) = (store.clone(), topup.id.clone());
        async move {
            let outcome = if index % 3 == 0 {
                paid("pi_mixed")
            } else {
                TopupOutcome::Failed {
                    payment_reference: Some("pi_mixed".to_owned()),
                    code: "card_declined".to_owned(),
                    message: "declined".to_owned(),
                }
            };
            store.settle_topup(&id, outcome).await
        }
    })
    .await;
    for result in results {
        result.unwrap();
    }
    // Whatever the order, money that arrived is credited, once.
    let settled = store.topup(&topup.id).await.unwrap();
    assert_eq!(settled.status, TopupStatus::Succeeded);
    assert_eq!(settled.failure_code, None);
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("40")
    );
    assert_eq!(
        store
            .transactions(&acme, PageRequest::default())
            .await
            .unwrap()
            .data
            .len(),
        1
    );
    assert_clean(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_ups_settled_while_usage_is_charged_keep_the_ledger_whole() {
    let (_db, store, acme) = setup().await;
    let mut ids = Vec::new();
    for index in 0..6 {
        let key = format!("many-{index}");
        let topup = store
            .create_topup(new_topup(&acme, "10.00", &key, TopupSource::SavedCard))
            .await
            .unwrap()
            .value;
        ids.push(topup.id);
    }
    let ids = Arc::new(ids);
    let results = all_at_once(18, |index| {
        let (store, ids, acme) = (store.clone(), ids.clone(), acme.clone());
        async move {
            if index % 3 == 0 {
                let id = &ids[index / 3];
                store
                    .settle_topup(id, paid(&format!("pi_many_{index}")))
                    .await
                    .map(|_| None)
            } else {
                match store
                    .charge_usage(UsageCommand {
                        account: acme,
                        action: ActionId::parse("email_finder").unwrap(),
                        quantity: Quantity::new(100).unwrap(),
                        idempotency_key: IdempotencyKey::parse(&format!("use-{index}")).unwrap(),
                    })
                    .await
                {
                    Ok(charged) => Ok(Some(charged.value.amount)),
                    // Charges that came before enough money arrived are refused, nothing recorded.
                    Err(StoreError::InsufficientFunds(_)) => Ok(Some(Micros::ZERO)),
                    Err(other) => Err(other),
                }
            }
        }
    })
    .await;
    let mut spent = Micros::ZERO;
    for result in results {
        if let Some(amount) = result.unwrap() {
            spent = spent.checked_add(amount).unwrap();
        }
    }
    let available = store.account(&acme).await.unwrap().balances.available;
    assert_eq!(available.checked_add(spent).unwrap(), dollars("60"));
    assert!(!available.is_negative());
    assert_clean(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_create_one_top_up() {
    let (_db, store, acme) = setup().await;
    let results = all_at_once(10, |_| {
        let (store, acme) = (store.clone(), acme.clone());
        async move {
            store
                .create_topup(new_topup(&acme, "20.00", "same-key", TopupSource::HostedPage))
                .await
        }
    })
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|created| !created.replayed).count(), 1);
    assert!(
        results
            .iter()
            .all(|created| created.value.id == results[0].value.id)
    );
    let listed = store.list_topups(&acme, PageRequest::default()).await.unwrap();
    assert_eq!(listed.data.len(), 1);
    assert_clean(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_confirmations_of_one_card_setup_apply_once() {
    let (_db, store, acme) = setup().await;
    store.record_card_setup(&acme, "cs_race").await.unwrap();
    let results = all_at_once(8, |_| {
        let store = store.clone();
        async move {
            store
                .complete_card_setup("cs_race", card("pm_race", "4242"), Actor::System)
                .await
        }
    })
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|result| result.applied).count(), 1);
    for result in &results {
        assert_eq!(result.replaced, None);
        assert_eq!(
            result.card.as_ref().map(|card| card.processor_id.as_str()),
            Some("pm_race")
        );
    }
    let audit = store.audit_log(PageRequest::default()).await.unwrap();
    assert_eq!(
        audit
            .data
            .iter()
            .filter(|entry| entry.action == "payment_method.updated")
            .count(),
        1
    );

    // Two different setups confirmed at once: both apply, one after the other, and the
    // second one reports the first card as replaced (so it gets detached).
    store.record_card_setup(&acme, "cs_left").await.unwrap();
    store.record_card_setup(&acme, "cs_right").await.unwrap();
    let both = all_at_once(2, |index| {
        let store = store.clone();
        async move {
            let (session, card_id) = if index == 0 {
                ("cs_left", "pm_left")
            } else {
                ("cs_right", "pm_right")
            };
            store
                .complete_card_setup(session, card(card_id, "0000"), Actor::System)
                .await
        }
    })
    .await;
    let both: Vec<_> = both.into_iter().map(Result::unwrap).collect();
    assert!(both.iter().all(|result| result.applied));
    let replaced: Vec<String> = both
        .iter()
        .filter_map(|result| result.replaced.as_ref().map(|card| card.processor_id.clone()))
        .collect();
    assert_eq!(replaced.len(), 2);
    assert!(replaced.contains(&"pm_race".to_owned()));
    let last = store.payment_profile(&acme).await.unwrap().card.unwrap();
    // The card in place is the one no other confirmation replaced.
    assert!(!replaced.contains(&last.processor_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_customer_creators_agree_on_one() {
    let (_db, store, acme) = setup().await;
    let results = all_at_once(8, |index| {
        let (store, acme) = (store.clone(), acme.clone());
        async move { store.set_processor_customer(&acme, &format!("cus_{index}")).await }
    })
    .await;
    let results: Vec<String> = results.into_iter().map(Result::unwrap).collect();
    assert!(results.iter().all(|customer| *customer == results[0]));
    assert_eq!(
        store
            .payment_profile(&acme)
            .await
            .unwrap()
            .processor_customer
            .as_ref(),
        Some(&results[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_take_back_more_than_was_paid() {
    let (_db, store, acme) = setup().await;
    let topup = paid_topup(&store, &acme, "100.00", "pi_many_refunds").await;
    let results = all_at_once(8, |index| {
        let (store, topup) = (store.clone(), topup.clone());
        async move {
            store
                .begin_refund(refund(&topup, Some("30.00"), &format!("rr-{index}")))
                .await
        }
    })
    .await;
    let mut made = 0;
    for result in results {
        match result {
            Ok(refund) => {
                assert!(!refund.replayed);
                made += 1;
            }
            Err(StoreError::InvalidRefund(_)) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(made, 3);
    assert_eq!(store.topup(&topup).await.unwrap().refunded, dollars("90"));
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("10")
    );
    // One key sent many times at once refunds once.
    let replays = all_at_once(6, |_| {
        let (store, topup) = (store.clone(), topup.clone());
        async move { store.begin_refund(refund(&topup, Some("10.00"), "rr-last")).await }
    })
    .await;
    let replays: Vec<_> = replays.into_iter().map(Result::unwrap).collect();
    assert_eq!(replays.iter().filter(|refund| !refund.replayed).count(), 1);
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        Micros::ZERO
    );
    // The processor reporting the same dashboard total many times records it once.
    let reconciled = all_at_once(6, |_| {
        let store = store.clone();
        async move {
            store
                .reconcile_refunded(
                    TopupReference::Payment("pi_many_refunds".to_owned()),
                    dollars("100"),
                )
                .await
        }
    })
    .await;
    assert_eq!(
        reconciled
            .into_iter()
            .map(Result::unwrap)
            .filter(Option::is_some)
            .count(),
        0,
        "everything was refunded already"
    );
    assert_clean(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dashboard_totals_record_one_refund() {
    let (_db, store, acme) = setup().await;
    paid_topup(&store, &acme, "50.00", "pi_dash").await;
    let reconciled = all_at_once(8, |_| {
        let store = store.clone();
        async move {
            store
                .reconcile_refunded(TopupReference::Charge("ch_pi_dash".to_owned()), dollars("20"))
                .await
        }
    })
    .await;
    let made: Vec<_> = reconciled.into_iter().filter_map(Result::unwrap).collect();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].amount, dollars("20"));
    assert_eq!(made[0].state, RefundState::Succeeded);
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("30")
    );
    assert_clean(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dispute_news_moves_money_once() {
    let (_db, store, acme) = setup().await;
    paid_topup(&store, &acme, "60.00", "pi_dispute_race").await;
    let news = |status| DisputeNews {
        dispute: "dp_race".to_owned(),
        payment_reference: Some("pi_dispute_race".to_owned()),
        charge_reference: "ch_pi_dispute_race".to_owned(),
        amount: dollars("60"),
        status,
    };
    for (status, available) in [
        (DisputeStatus::Open, Micros::ZERO),
        (DisputeStatus::Won, dollars("60")),
    ] {
        let results = all_at_once(8, |_| {
            let (store, news) = (store.clone(), news(status));
            async move { store.apply_dispute(news).await }
        })
        .await;
        let lines = results
            .into_iter()
            .map(|result| result.unwrap().unwrap())
            .filter(|applied| applied.line.is_some())
            .count();
        assert_eq!(lines, 1, "{status:?}");
        assert_eq!(store.account(&acme).await.unwrap().balances.available, available);
    }
    assert_clean(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_webhook_event_record_it_once() {
    let (_db, store, _acme) = setup().await;
    let results = all_at_once(8, |_| {
        let store = store.clone();
        async move { store.record_processor_event("evt_race", "charge.refunded").await }
    })
    .await;
    assert_eq!(
        results
            .into_iter()
            .map(Result::unwrap)
            .filter(|first| *first)
            .count(),
        1
    );
}

// ---------------------------------------------------------------------------
// Processor ids that do not fit what is stored

#[tokio::test]
async fn a_won_dispute_gives_back_what_was_taken() {
    let (_db, store, acme) = setup().await;
    let topup = paid_topup(&store, &acme, "60.00", "pi_amounts").await;
    let news = |status, amount| DisputeNews {
        dispute: "dp_amounts".to_owned(),
        payment_reference: Some("pi_amounts".to_owned()),
        charge_reference: "ch_pi_amounts".to_owned(),
        amount: dollars(amount),
        status,
    };
    store
        .apply_dispute(news(DisputeStatus::Open, "60"))
        .await
        .unwrap();
    assert_eq!(store.topup(&topup).await.unwrap().disputed, dollars("60"));
    // The closing news carries another amount: the balance still ends where it started.
    let won = store
        .apply_dispute(news(DisputeStatus::Won, "45"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(won.line.unwrap().available_amount, dollars("60"));
    assert_eq!(won.topup.disputed, Micros::ZERO);
    assert_eq!(
        store.account(&acme).await.unwrap().balances.available,
        dollars("60")
    );
    assert_clean(&store).await;
}

#[tokio::test]
async fn processor_ids_belong_to_one_top_up_and_one_account() {
    let (_db, store, acme) = setup().await;
    let first = store
        .create_topup(new_topup(&acme, "10.00", "own-1", TopupSource::HostedPage))
        .await
        .unwrap()
        .value;
    let second = store
        .create_topup(new_topup(&acme, "10.00", "own-2", TopupSource::HostedPage))
        .await
        .unwrap()
        .value;
    store
        .link_topup(&first.id, Some("cs_own".to_owned()), Some("pi_own".to_owned()))
        .await
        .unwrap();
    // Linking twice with the same ids is a replay, not a conflict.
    store
        .link_topup(&first.id, Some("cs_own".to_owned()), Some("pi_own".to_owned()))
        .await
        .unwrap();
    assert!(matches!(
        store
            .link_topup(&first.id, None, Some("pi_other".to_owned()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .link_topup(&second.id, Some("cs_own".to_owned()), None)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .link_topup(&second.id, None, Some("pi_own".to_owned()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A success naming another top-up's payment credits nothing.
    assert!(matches!(
        store.settle_topup(&second.id, paid("pi_own")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.topup(&second.id).await.unwrap().status,
        TopupStatus::RequiresPaymentMethod
    );
    assert_eq!(
        store
            .find_topup(TopupReference::CheckoutSession("cs_own".to_owned()))
            .await
            .unwrap()
            .map(|found| found.id),
        Some(first.id.clone())
    );

    // A processor customer pays for one account.
    let other = AccountId::parse("other").unwrap();
    store
        .create_account(NewAccount::new(other.clone(), "Other", "billing@other.test").unwrap())
        .await
        .unwrap();
    store.set_processor_customer(&acme, "cus_own").await.unwrap();
    assert!(matches!(
        store.set_processor_customer(&other, "cus_own").await,
        Err(StoreError::Conflict(_))
    ));
    // A setup session belongs to the account that opened it.
    store.record_card_setup(&acme, "cs_setup_own").await.unwrap();
    store.record_card_setup(&acme, "cs_setup_own").await.unwrap();
    assert!(matches!(
        store.record_card_setup(&other, "cs_setup_own").await,
        Err(StoreError::Conflict(_))
    ));

    // A dispute is about one top-up.
    store.settle_topup(&first.id, paid("pi_own")).await.unwrap();
    let paid_other = paid_topup(&store, &acme, "10.00", "pi_own_b").await;
    store
        .apply_dispute(DisputeNews {
            dispute: "dp_own".to_owned(),
            payment_reference: Some("pi_own".to_owned()),
            charge_reference: "ch_pi_own".to_owned(),
            amount: dollars("10"),
            status: DisputeStatus::Open,
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .apply_dispute(DisputeNews {
                dispute: "dp_own".to_owned(),
                payment_reference: Some("pi_own_b".to_owned()),
                charge_reference: "ch_pi_own_b".to_owned(),
                amount: dollars("10"),
                status: DisputeStatus::Won,
            })
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.topup(&paid_other).await.unwrap().disputed, Micros::ZERO);

    // A processor refund confirms one refund.
    let one = store
        .begin_refund(refund(&paid_other, Some("5.00"), "own-r1"))
        .await
        .unwrap()
        .value;
    let two = store
        .begin_refund(refund(&paid_other, Some("5.00"), "own-r2"))
        .await
        .unwrap()
        .value;
    store
        .finish_refund(&one.id, Ok("re_own".to_owned()))
        .await
        .unwrap();
    assert!(matches!(
        store.finish_refund(&two.id, Ok("re_own".to_owned())).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .finish_refund(&two.id, Ok("re_own_2".to_owned()))
            .await
            .unwrap()
            .state,
        RefundState::Succeeded
    );
    assert_clean(&store).await;
}

/// Runs one statement straight on the test database, as a careless operator would.
async fn tamper(db: &TestDatabase, statement: &'static str) {
    if let Some(path) = db.sqlite_path() {
        tokio::task::spawn_blocking(move || {
            let connection = rusqlite::Connection::open(path).unwrap();
            connection
                .busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            connection.execute(statement, []).unwrap();
        })
        .await
        .unwrap();
    } else {
        let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.execute(statement, &[]).await.unwrap();
    }
}

#[tokio::test]
async fn verification_checks_top_up_totals_on_either_store() {
    let (db, store, acme) = setup().await;
    let topup = paid_topup(&store, &acme, "50.00", "pi_tampered").await;
    store
        .begin_refund(refund(&topup, Some("10.00"), "tampered-r"))
        .await
        .unwrap();
    assert_clean(&store).await;
    tamper(
        &db,
        "UPDATE topups SET disputed_micros = 5000000, refunded_micros = 20000000",
    )
    .await;
    let problems = store.verify_ledger().await.unwrap().problems;
    assert!(
        problems.iter().any(|problem| problem.contains("disputes hold")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|problem| problem.contains("refunds sum to")),
        "{problems:?}"
    );
}
