//! Auto Top-Up in the store: settings, exactly one recharge in flight per account
//! (whatever the number of callers and, on PostgreSQL, of processes), the amount,
//! outcomes resolving the rule, the cool-down, the monthly cap, the card switching
//! it on and off, and a restart in the middle. Runs on SQLite, and on PostgreSQL
//! with `TOLLGATE_TEST_STORE=postgres`.

use std::sync::Arc;

use time::Duration;
use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::recharge::DEFAULT_MONTHLY_RECHARGE_CAP;
use tollgate_core::{
    AccountId, ActionId, Actor, AutoRechargeSettings, Clock, GrantCommand, HoldCommand, HoldStatus, HoldTtl,
    IdempotencyKey, ManualClock, Micros, NewAccount, NewTopup, RechargeBlocked, RechargeStatus, TierBasis,
    Timestamp, TopupAmount, TopupLimits, TopupOutcome, TopupSource, TopupStatus, TransactionKind,
};
use tollgate_store::testing::{Backend, TestDatabase};
use tollgate_store::{
    AutoRechargeChange, AutoRechargeRecord, AutoRechargeStart, CardRecord, PageRequest, SharedStore,
    StoreError, StoreRules, TopupRecord,
};

const START: Timestamp = datetime!(2026-11-25 10:00 UTC);

fn dollars(text: &str) -> Micros {
    Micros::parse(text).unwrap()
}

struct Setup {
    db: TestDatabase,
    clock: Arc<ManualClock>,
    store: SharedStore,
    acme: AccountId,
}

fn rules(clock: &Arc<ManualClock>) -> StoreRules {
    StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    }
}

/// A store with account `acme` (created at [`START`]: its cycles start on the 25th).
async fn setup() -> Setup {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(START));
    let store = db.open(rules(&clock));
    let acme = AccountId::parse("acme").unwrap();
    store
        .create_account(NewAccount::new(acme.clone(), "Acme", "billing@acme.test").unwrap())
        .await
        .unwrap();
    Setup {
        db,
        clock,
        store,
        acme,
    }
}

fn card(id: &str) -> CardRecord {
    CardRecord {
        processor_id: id.to_owned(),
        brand: "visa".to_owned(),
        last4: "4242".to_owned(),
        exp_month: 12,
        exp_year: 2034,
        added_at: START,
    }
}

fn settings(threshold: &str, target: &str) -> AutoRechargeSettings {
    AutoRechargeSettings::parse(threshold, target, TopupLimits::default()).unwrap()
}

fn customer() -> Actor {
    Actor::ApiKey("key_customer".to_owned())
}

/// Moves the available balance by `amount` (an operator grant or debit).
async fn grant(store: &SharedStore, account: &AccountId, amount: &str) {
    store
        .grant(GrantCommand::new(account.clone(), dollars(amount), "test", None, Actor::System).unwrap())
        .await
        .unwrap();
}

/// Saves a card and switches Auto Top-Up on: below `threshold`, up to `target`.
async fn switch_on(
    store: &SharedStore,
    account: &AccountId,
    threshold: &str,
    target: &str,
    cap: Option<&str>,
) -> AutoRechargeRecord {
    store
        .adopt_card(account, card("pm_first"), Actor::System)
        .await
        .unwrap();
    store
        .set_auto_recharge(
            account,
            AutoRechargeChange {
                enabled: true,
                settings: settings(threshold, target),
                monthly_cap: cap.map(dollars),
            },
            customer(),
        )
        .await
        .unwrap()
}

async fn begin(store: &SharedStore, account: &AccountId) -> AutoRechargeStart {
    store
        .begin_auto_recharge(account, TopupLimits::default())
        .await
        .unwrap()
}

async fn started(store: &SharedStore, account: &AccountId) -> TopupRecord {
    match begin(store, account).await {
        AutoRechargeStart::Started(topup) => *topup,
        other => panic!("expected a recharge to start, got {other:?}"),
    }
}

async fn due(setup: &Setup) -> Vec<AccountId> {
    setup
        .store
        .due_auto_recharges(setup.clock.now(), 100)
        .await
        .unwrap()
}

fn paid(payment: &str) -> TopupOutcome {
    TopupOutcome::Succeeded {
        payment_reference: payment.to_owned(),
        charge_reference: Some(format!("ch_{payment}")),
        card_brand: Some("visa".to_owned()),
        card_last4: Some("4242".to_owned()),
    }
}

fn declined(code: &str) -> TopupOutcome {
    TopupOutcome::Failed {
        payment_reference: Some(format!("pi_{code}")),
        code: code.to_owned(),
        message: "The card was declined.".to_owned(),
    }
}

async fn assert_clean(store: &SharedStore) {
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

async fn available(store: &SharedStore, account: &AccountId) -> Micros {
    store.account(account).await.unwrap().balances.available
}

async fn rule_of(store: &SharedStore, account: &AccountId) -> AutoRechargeRecord {
    store.auto_recharge(account).await.unwrap()
}

#[tokio::test]
async fn settings_need_a_card_are_audited_and_read_back() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    // Never configured: off, no settings, the default cap.
    let fresh = rule_of(store, acme).await;
    assert!(!fresh.rule.enabled());
    assert_eq!(fresh.rule.status(), &RechargeStatus::Armed);
    assert_eq!(fresh.settings, None);
    assert_eq!(fresh.monthly_cap, DEFAULT_MONTHLY_RECHARGE_CAP);
    assert_eq!(fresh.recharged_this_cycle, Micros::ZERO);
    assert_eq!(fresh.cycle_start, datetime!(2026-11-25 00:00 UTC));
    assert_eq!(fresh.updated_at, None);
    assert_eq!(begin(store, acme).await, AutoRechargeStart::NotDue);

    let change = AutoRechargeChange {
        enabled: true,
        settings: settings("50", "100"),
        monthly_cap: None,
    };
    assert!(matches!(
        store.set_auto_recharge(acme, change.clone(), customer()).await,
        Err(StoreError::NoPaymentMethod)
    ));
    assert_eq!(rule_of(store, acme).await, fresh);
    // Settings may be saved switched off without a card.
    let off = store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                enabled: false,
                ..change.clone()
            },
            customer(),
        )
        .await
        .unwrap();
    assert!(!off.rule.enabled());
    assert_eq!(off.settings, Some(settings("50", "100")));
    assert_eq!(off.updated_at, Some(START));

    store.adopt_card(acme, card("pm_1"), Actor::System).await.unwrap();
    let on = store
        .set_auto_recharge(acme, change.clone(), customer())
        .await
        .unwrap();
    assert!(on.rule.enabled());
    assert_eq!(on.rule.status(), &RechargeStatus::Armed);
    assert_eq!(on.monthly_cap, DEFAULT_MONTHLY_RECHARGE_CAP);
    // Saving the same settings again changes (and audits) nothing.
    assert_eq!(
        store
            .set_auto_recharge(acme, change.clone(), customer())
            .await
            .unwrap(),
        on
    );
    let capped = store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                monthly_cap: Some(dollars("250")),
                ..change.clone()
            },
            customer(),
        )
        .await
        .unwrap();
    assert_eq!(capped.monthly_cap, dollars("250"));
    // The cap stays when a later save does not name one.
    assert_eq!(
        store
            .set_auto_recharge(acme, change.clone(), customer())
            .await
            .unwrap()
            .monthly_cap,
        dollars("250")
    );
    for cap in ["-1", "10.005"] {
        assert!(matches!(
            store
                .set_auto_recharge(
                    acme,
                    AutoRechargeChange {
                        monthly_cap: Some(dollars(cap)),
                        ..change.clone()
                    },
                    customer(),
                )
                .await,
            Err(StoreError::Database(_))
        ));
    }
    let ghost = AccountId::parse("ghost").unwrap();
    assert!(matches!(
        store.set_auto_recharge(&ghost, change.clone(), customer()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.auto_recharge(&ghost).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.begin_auto_recharge(&ghost, TopupLimits::default()).await,
        Err(StoreError::NotFound { .. })
    ));

    let audit = store.audit_log(PageRequest::new(100, None)).await.unwrap().data;
    let recharge: Vec<_> = audit
        .iter()
        .filter(|entry| entry.action.starts_with("auto_recharge."))
        .collect();
    // Newest first: cap 250, switched on, saved off.
    let actions: Vec<&str> = recharge.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "auto_recharge.updated",
            "auto_recharge.enabled",
            "auto_recharge.updated"
        ]
    );
    assert!(recharge.iter().all(|entry| entry.actor == "api_key:key_customer"));
    assert_eq!(recharge[2].before, None);
    assert!(
        recharge[1]
            .before
            .as_deref()
            .unwrap()
            .starts_with("enabled=false")
    );
    assert!(recharge[1].after.as_deref().unwrap().starts_with("enabled=true"));
    assert!(recharge[0].after.as_deref().unwrap().contains("monthly_cap=250"));
    assert_clean(store).await;
}

#[tokio::test]
async fn create_topup_cannot_make_an_auto_top_up_and_customer_keys_are_skipped() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    let topup = |key: &str, source| NewTopup {
        account: acme.clone(),
        amount: TopupAmount::parse("25", TopupLimits::default()).unwrap(),
        source,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        actor: Actor::System,
    };
    assert!(matches!(
        store.create_topup(topup("mine", TopupSource::AutoRecharge)).await,
        Err(StoreError::Conflict(_))
    ));
    // A customer's own top-up happens to use the first recharge's key.
    store
        .create_topup(topup("auto-recharge-1", TopupSource::SavedCard))
        .await
        .unwrap();
    switch_on(store, acme, "50", "100", None).await;
    let recharge = started(store, acme).await;
    assert_eq!(recharge.recharge_sequence, Some(2));
    assert_eq!(recharge.idempotency_key, "auto-recharge-2");
    assert_eq!(rule_of(store, acme).await.rule.in_flight(), Some(2));
    assert_clean(store).await;
}

/// 32 callers ask at once (on PostgreSQL from two stores on one database, as two
/// processes would): exactly one recharge starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_start_exactly_one_recharge() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    grant(store, acme, "20").await;
    switch_on(store, acme, "50", "100", None).await;
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    let second = match setup.db.backend() {
        Backend::Postgres => setup.db.open(rules(&setup.clock)),
        Backend::Sqlite => store.clone(),
    };
    let tasks: Vec<_> = (0..32)
        .map(|index| {
            let store = if index % 2 == 0 {
                store.clone()
            } else {
                second.clone()
            };
            let acme = acme.clone();
            tokio::spawn(async move {
                store
                    .begin_auto_recharge(&acme, TopupLimits::default())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut starts = Vec::new();
    let mut blocked = 0;
    for task in tasks {
        match task.await.unwrap() {
            AutoRechargeStart::Started(topup) => starts.push(*topup),
            AutoRechargeStart::Blocked(RechargeBlocked::InFlight { sequence: 1 }) => blocked += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((starts.len(), blocked), (1, 31));
    let topup = &starts[0];
    assert_eq!(topup.source, TopupSource::AutoRecharge);
    assert_eq!(topup.status, TopupStatus::Pending);
    assert_eq!(topup.amount, dollars("80"));
    assert_eq!(topup.recharge_sequence, Some(1));
    assert_eq!(topup.idempotency_key, "auto-recharge-1");
    assert_eq!(rule_of(store, acme).await.rule.in_flight(), Some(1));
    assert!(due(&setup).await.is_empty());
    let open = store.open_auto_recharges(100).await.unwrap();
    assert_eq!(
        open.iter().map(|topup| topup.id.as_str()).collect::<Vec<_>>(),
        vec![topup.id.as_str()]
    );
    // The concurrent settlement reports credit once, and re-arm the rule once.
    let tasks: Vec<_> = (0..8)
        .map(|index| {
            let store = if index % 2 == 0 {
                store.clone()
            } else {
                second.clone()
            };
            let id = topup.id.clone();
            tokio::spawn(async move { store.settle_topup(&id, paid("pi_1")).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, TopupStatus::Succeeded);
    }
    assert_eq!(available(store, acme).await, dollars("100"));
    let after = rule_of(store, acme).await;
    assert_eq!(after.rule.status(), &RechargeStatus::Armed);
    assert_eq!(after.recharged_this_cycle, dollars("80"));
    assert_clean(store).await;
}

#[tokio::test]
async fn the_amount_reaches_the_target_rounded_up_to_the_cent() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    grant(store, acme, "49.995").await;
    switch_on(store, acme, "50", "100", None).await;
    assert_eq!(started(store, acme).await.amount, dollars("50.01"));

    // At least the minimum top-up of the limits in force when the recharge starts.
    let beta = AccountId::parse("beta").unwrap();
    store
        .create_account(NewAccount::new(beta.clone(), "Beta", "billing@beta.test").unwrap())
        .await
        .unwrap();
    grant(store, &beta, "49.99").await;
    switch_on(store, &beta, "50", "60", None).await;
    let stricter = TopupLimits::new(dollars("25"), dollars("10000")).unwrap();
    match store.begin_auto_recharge(&beta, stricter).await.unwrap() {
        AutoRechargeStart::Started(topup) => assert_eq!(topup.amount, dollars("25")),
        other => panic!("expected a start, got {other:?}"),
    }
    // At or above the threshold nothing is due.
    let gamma = AccountId::parse("gamma").unwrap();
    store
        .create_account(NewAccount::new(gamma.clone(), "Gamma", "billing@gamma.test").unwrap())
        .await
        .unwrap();
    grant(store, &gamma, "50").await;
    switch_on(store, &gamma, "50", "100", None).await;
    assert_eq!(begin(store, &gamma).await, AutoRechargeStart::NotDue);
    assert!(due(&setup).await.is_empty());
    assert_clean(store).await;
}

#[tokio::test]
async fn a_success_credits_once_and_re_arms_the_rule() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    grant(store, acme, "20").await;
    switch_on(store, acme, "50", "100", None).await;
    let topup = started(store, acme).await;
    store
        .link_topup(&topup.id, None, Some("pi_1".to_owned()))
        .await
        .unwrap();
    for _ in 0..3 {
        let settled = store.settle_topup(&topup.id, paid("pi_1")).await.unwrap();
        assert_eq!(settled.status, TopupStatus::Succeeded);
    }
    assert_eq!(available(store, acme).await, dollars("100"));
    let lines = store
        .transactions(acme, PageRequest::default())
        .await
        .unwrap()
        .data;
    let credits: Vec<_> = lines
        .iter()
        .filter(|line| line.kind == TransactionKind::AutoRecharge)
        .collect();
    assert_eq!(credits.len(), 1);
    assert_eq!(credits[0].amount, dollars("80"));
    assert_eq!(credits[0].description, "Auto top-up (Visa •••• 4242)");
    let rule = rule_of(store, acme).await;
    assert_eq!(rule.rule.status(), &RechargeStatus::Armed);
    assert_eq!(rule.rule.last_sequence(), 1);
    assert_eq!(rule.recharged_this_cycle, dollars("80"));
    assert!(store.open_auto_recharges(100).await.unwrap().is_empty());
    assert!(due(&setup).await.is_empty());
    assert_clean(store).await;

    // The next debit below the threshold makes it due again: recharge 2.
    grant(store, acme, "-60").await;
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    let next = started(store, acme).await;
    assert_eq!((next.recharge_sequence, next.amount), (Some(2), dollars("60")));
    assert_clean(store).await;
}

#[tokio::test]
async fn a_decline_cools_down_for_an_hour_and_a_new_card_re_arms() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    switch_on(store, acme, "50", "100", None).await;
    let first = started(store, acme).await;
    let failed = store
        .settle_topup(&first.id, declined("card_declined"))
        .await
        .unwrap();
    assert_eq!(failed.status, TopupStatus::Failed);
    let rule = rule_of(store, acme).await;
    assert_eq!(
        rule.rule.status(),
        &RechargeStatus::Failed {
            reason: "card_declined".to_owned(),
            failed_at: START
        }
    );
    // A repeated report changes nothing.
    store
        .settle_topup(&first.id, declined("card_declined"))
        .await
        .unwrap();
    assert_eq!(rule_of(store, acme).await, rule);
    let until = START + Duration::hours(1);
    assert!(due(&setup).await.is_empty());
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::CoolingDown { until })
    );
    setup.clock.advance(Duration::minutes(59));
    assert!(due(&setup).await.is_empty());
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::CoolingDown { until })
    );
    setup.clock.set(until);
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    let second = started(store, acme).await;
    assert_eq!(second.recharge_sequence, Some(2));
    assert_clean(store).await;

    // Insufficient funds is a decline too; a new card arms the rule at once.
    store
        .settle_topup(&second.id, declined("insufficient_funds"))
        .await
        .unwrap();
    assert_eq!(rule_of(store, acme).await.rule.status().code(), "failed");
    assert!(due(&setup).await.is_empty());
    // The same card confirmed again is no change.
    store
        .adopt_card(acme, card("pm_first"), Actor::System)
        .await
        .unwrap();
    assert_eq!(rule_of(store, acme).await.rule.status().code(), "failed");
    let replaced = store
        .adopt_card(acme, card("pm_second"), Actor::System)
        .await
        .unwrap();
    assert!(replaced.applied);
    assert_eq!(rule_of(store, acme).await.rule.status(), &RechargeStatus::Armed);
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    let third = started(store, acme).await;
    assert_eq!(third.recharge_sequence, Some(3));
    // A settings change re-arms too, and never abandons the recharge in flight.
    let moved = store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                enabled: true,
                settings: settings("40", "90"),
                monthly_cap: None,
            },
            customer(),
        )
        .await
        .unwrap();
    assert_eq!(moved.rule.in_flight(), Some(3));
    store
        .settle_topup(&third.id, declined("expired_card"))
        .await
        .unwrap();
    assert_eq!(rule_of(store, acme).await.rule.status().code(), "failed");
    let rearmed = store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                enabled: true,
                settings: settings("50", "100"),
                monthly_cap: None,
            },
            customer(),
        )
        .await
        .unwrap();
    assert_eq!(rearmed.rule.status(), &RechargeStatus::Armed);
    assert_eq!(started(store, acme).await.recharge_sequence, Some(4));
    assert_clean(store).await;
}

#[tokio::test]
async fn authentication_required_asks_the_customer() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    switch_on(store, acme, "50", "100", None).await;
    let topup = started(store, acme).await;
    let waiting = store
        .settle_topup(
            &topup.id,
            TopupOutcome::RequiresAction {
                payment_reference: "pi_3ds".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(waiting.status, TopupStatus::RequiresAction);
    assert_eq!(
        rule_of(store, acme).await.rule.status(),
        &RechargeStatus::ActionRequired {
            reason: "authentication_required".to_owned(),
            failed_at: START
        }
    );
    // The payment may still be completed by the customer: no second recharge while it
    // is open, even once the cool-down is over.
    setup.clock.advance(Duration::hours(2));
    assert!(due(&setup).await.is_empty());
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::InFlight { sequence: 1 })
    );
    assert_eq!(store.open_auto_recharges(100).await.unwrap().len(), 1);
    assert_clean(store).await;
    // The customer completes it on the hosted page: credited once.
    store.settle_topup(&topup.id, paid("pi_3ds")).await.unwrap();
    assert_eq!(available(store, acme).await, dollars("100"));
    assert!(store.open_auto_recharges(100).await.unwrap().is_empty());
    assert_clean(store).await;

    // An off-session charge refused with `authentication_required` asks for action too.
    grant(store, acme, "-100").await;
    let next = started(store, acme).await;
    store
        .settle_topup(&next.id, declined("authentication_required"))
        .await
        .unwrap();
    assert_eq!(rule_of(store, acme).await.rule.status().code(), "action_required");
    // A canceled recharge is a decline named `canceled`.
    setup.clock.advance(Duration::hours(1));
    let third = started(store, acme).await;
    store
        .settle_topup(&third.id, TopupOutcome::Canceled)
        .await
        .unwrap();
    assert!(matches!(
        rule_of(store, acme).await.rule.status(),
        RechargeStatus::Failed { reason, .. } if reason == "canceled"
    ));
    assert_clean(store).await;
}

#[tokio::test]
async fn switching_off_while_in_flight_resolves_it_and_stays_off() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    grant(store, acme, "10").await;
    switch_on(store, acme, "50", "100", None).await;
    let topup = started(store, acme).await;
    let off = store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                enabled: false,
                settings: settings("50", "100"),
                monthly_cap: None,
            },
            customer(),
        )
        .await
        .unwrap();
    assert!(!off.rule.enabled());
    assert_eq!(off.rule.in_flight(), Some(1));
    assert_clean(store).await;
    // Money taken is always credited.
    store.settle_topup(&topup.id, paid("pi_1")).await.unwrap();
    assert_eq!(available(store, acme).await, dollars("100"));
    let after = rule_of(store, acme).await;
    assert!(!after.rule.enabled());
    assert_eq!(after.rule.status(), &RechargeStatus::Armed);
    grant(store, acme, "-90").await;
    assert!(due(&setup).await.is_empty());
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::Disabled)
    );
    let audit = store.audit_log(PageRequest::new(100, None)).await.unwrap().data;
    assert!(audit.iter().any(|entry| entry.action == "auto_recharge.disabled"));
    assert_clean(store).await;
}

#[tokio::test]
async fn the_monthly_cap_stops_recharges_until_the_next_cycle() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    switch_on(store, acme, "50", "100", Some("150")).await;
    let first = started(store, acme).await;
    assert_eq!(first.amount, dollars("100"));
    store.settle_topup(&first.id, paid("pi_1")).await.unwrap();
    grant(store, acme, "-70").await;
    // What is left under the cap (50) cuts the next one.
    let second = started(store, acme).await;
    assert_eq!(second.amount, dollars("50"));
    store.settle_topup(&second.id, paid("pi_2")).await.unwrap();
    assert_eq!(rule_of(store, acme).await.recharged_this_cycle, dollars("150"));
    grant(store, acme, "-50").await;
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::CapReached)
    );
    let capped = rule_of(store, acme).await;
    assert_eq!(
        capped.rule.status(),
        &RechargeStatus::CapReached {
            cycle_start: datetime!(2026-11-25 00:00 UTC)
        }
    );
    // Recorded once: asking again later in the cycle writes nothing.
    setup.clock.advance(Duration::days(3));
    assert!(due(&setup).await.is_empty());
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::CapReached)
    );
    assert_eq!(rule_of(store, acme).await.updated_at, capped.updated_at);
    assert_clean(store).await;

    // The next cycle lifts it.
    setup.clock.set(datetime!(2026-12-25 00:00 UTC));
    let next_cycle = rule_of(store, acme).await;
    assert_eq!(next_cycle.recharged_this_cycle, Micros::ZERO);
    assert_eq!(next_cycle.cycle_start, datetime!(2026-12-25 00:00 UTC));
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    let third = started(store, acme).await;
    assert_eq!(third.amount, dollars("70"));
    store.settle_topup(&third.id, paid("pi_3")).await.unwrap();
    assert_clean(store).await;

    // Raising the cap lifts it at once, too.
    grant(store, acme, "-99").await;
    setup.clock.advance(Duration::hours(1));
    store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                enabled: true,
                settings: settings("50", "100"),
                monthly_cap: Some(dollars("70")),
            },
            customer(),
        )
        .await
        .unwrap();
    assert_eq!(
        begin(store, acme).await,
        AutoRechargeStart::Blocked(RechargeBlocked::CapReached)
    );
    store
        .set_auto_recharge(
            acme,
            AutoRechargeChange {
                enabled: true,
                settings: settings("50", "100"),
                monthly_cap: Some(dollars("1000")),
            },
            customer(),
        )
        .await
        .unwrap();
    assert_eq!(rule_of(store, acme).await.rule.status(), &RechargeStatus::Armed);
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    assert_eq!(started(store, acme).await.amount, dollars("99"));
    assert_clean(store).await;
}

#[tokio::test]
async fn removing_the_card_switches_auto_top_up_off() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    switch_on(store, acme, "50", "100", None).await;
    let topup = started(store, acme).await;
    store.remove_card(acme, customer()).await.unwrap();
    let off = rule_of(store, acme).await;
    assert!(!off.rule.enabled());
    // The recharge in flight is still the only one, and still resolved.
    assert_eq!(off.rule.in_flight(), Some(1));
    assert_clean(store).await;
    store.settle_topup(&topup.id, paid("pi_1")).await.unwrap();
    assert_eq!(rule_of(store, acme).await.rule.in_flight(), None);
    let audit = store.audit_log(PageRequest::new(100, None)).await.unwrap().data;
    let actions: Vec<&str> = audit.iter().take(2).map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, vec!["auto_recharge.disabled", "payment_method.removed"]);
    assert!(audit[0].actor == "api_key:key_customer");
    assert!(matches!(
        store
            .set_auto_recharge(
                acme,
                AutoRechargeChange {
                    enabled: true,
                    settings: settings("50", "100"),
                    monthly_cap: None,
                },
                customer(),
            )
            .await,
        Err(StoreError::NoPaymentMethod)
    ));
    assert_clean(store).await;
}

/// A crash after the recharge was recorded and before its payment settled: after the
/// restart the worker finds it, and nothing starts a second one.
#[tokio::test]
async fn a_recharge_in_flight_survives_a_restart() {
    let setup = setup().await;
    grant(&setup.store, &setup.acme, "5").await;
    switch_on(&setup.store, &setup.acme, "50", "100", None).await;
    let topup = started(&setup.store, &setup.acme).await;
    let Setup {
        db,
        clock,
        store,
        acme,
    } = setup;
    drop(store);
    // Give SQLite's writer thread the moment it needs to stop.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    clock.advance(Duration::minutes(5));
    let store = db.open(rules(&clock));
    let open = store.open_auto_recharges(100).await.unwrap();
    assert_eq!(open, vec![topup.clone()]);
    // The recovery pass of one-time top-ups sees it too.
    assert!(
        store
            .open_topups(clock.now(), 100)
            .await
            .unwrap()
            .iter()
            .any(|open| open.id == topup.id)
    );
    assert!(
        store
            .due_auto_recharges(clock.now(), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .begin_auto_recharge(&acme, TopupLimits::default())
            .await
            .unwrap(),
        AutoRechargeStart::Blocked(RechargeBlocked::InFlight { sequence: 1 })
    );
    assert_clean(&store).await;
    store.settle_topup(&topup.id, paid("pi_1")).await.unwrap();
    assert_eq!(available(&store, &acme).await, dollars("100"));
    assert_clean(&store).await;
}

#[tokio::test]
async fn a_hold_below_the_threshold_makes_it_due_and_expired_holds_give_back_first() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    grant(store, acme, "100").await;
    switch_on(store, acme, "50", "100", None).await;
    let hold = |key: &str| {
        HoldCommand::new(
            acme.clone(),
            ActionId::parse("export").unwrap(),
            dollars("70"),
            HoldTtl::from_seconds(60).unwrap(),
            IdempotencyKey::parse(key).unwrap(),
        )
        .unwrap()
    };
    let placed = store.place_hold(hold("h1")).await.unwrap().value;
    assert_eq!(due(&setup).await, vec![acme.clone()]);
    // The hold runs out before the worker gets to it: its funds come back first, and no
    // recharge is needed any more.
    setup.clock.advance(Duration::seconds(61));
    assert_eq!(begin(store, acme).await, AutoRechargeStart::NotDue);
    assert_eq!(store.hold(&placed.id).await.unwrap().status, HoldStatus::Expired);
    assert!(due(&setup).await.is_empty());
    store.place_hold(hold("h2")).await.unwrap();
    // Topping up ahead of a large job: the available balance is what counts.
    assert_eq!(started(store, acme).await.amount, dollars("70"));
    assert_clean(store).await;
}

/// Runs one statement directly on the test database; the error's text on failure.
async fn execute(db: &TestDatabase, sql: &str) -> Result<(), String> {
    match db.backend() {
        Backend::Sqlite => {
            let connection = rusqlite::Connection::open(db.sqlite_path().unwrap()).unwrap();
            connection.execute_batch(sql).map_err(|error| error.to_string())
        }
        Backend::Postgres => {
            let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(sql).await.map_err(|error| error.to_string())
        }
    }
}

/// The constraints, not the code, keep one auto top-up open per account; and the ledger
/// check names a rule and top-ups that disagree.
#[tokio::test]
async fn the_database_refuses_a_second_open_auto_top_up_and_verify_names_disagreements() {
    let setup = setup().await;
    let (store, acme) = (&setup.store, &setup.acme);
    switch_on(store, acme, "50", "100", None).await;
    let topup = started(store, acme).await;
    let insert = |id: &str, sequence: i64, source: &str| {
        format!(
            "INSERT INTO topups (id, account_id, amount_micros, source, status, idempotency_key, \
             request_fingerprint, created_at, updated_at, recharge_sequence) \
             VALUES ('{id}', 'acme', 10000000, '{source}', 'pending', 'k-{id}', 'f', 0, 0, {sequence})"
        )
    };
    let refused = execute(&setup.db, &insert("top_second", 2, "auto_recharge")).await;
    assert!(refused.is_err(), "a second open auto top-up was stored");
    // A recharge sequence only on auto top-ups, and every auto top-up has one.
    assert!(
        execute(&setup.db, &insert("top_manual", 9, "saved_card"))
            .await
            .is_err()
    );
    assert!(
        execute(
            &setup.db,
            "INSERT INTO topups (id, account_id, amount_micros, source, status, idempotency_key, \
             request_fingerprint, created_at, updated_at) \
             VALUES ('top_bare', 'acme', 10000000, 'auto_recharge', 'failed', 'k-bare', 'f', 0, 0)"
        )
        .await
        .is_err()
    );
    assert_clean(store).await;

    // A rule that forgot its recharge in flight is named.
    execute(
        &setup.db,
        "UPDATE auto_recharge_rules SET status = 'armed', in_flight_sequence = NULL",
    )
    .await
    .unwrap();
    let report = store.verify_ledger().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|problem| problem.contains(&topup.id) && problem.contains("nothing in flight")),
        "{:?}",
        report.problems
    );
}
