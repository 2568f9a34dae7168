//! End-to-end checks of the SQLite store's basic operations.

use std::sync::Arc;

use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, GrantCommand, HoldCommand, HoldStatus, HoldTtl, IdempotencyKey, ManualClock,
    Micros, NewAccount, Quantity, TierBasis, UsageCommand,
};
use tollgate_store::testing::TestDatabase;
use tollgate_store::{SharedStore, StoreError, StoreRules};

fn open(db: &TestDatabase, clock: Arc<ManualClock>) -> SharedStore {
    db.open(StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock,
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    })
}

fn usage(account: &str, action: &str, quantity: u64, key: &str) -> UsageCommand {
    UsageCommand {
        account: AccountId::parse(account).unwrap(),
        action: ActionId::parse(action).unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    }
}

#[tokio::test]
async fn charges_replays_holds_and_verifies() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = open(&db, clock.clone());
    let acme = AccountId::parse("acme").unwrap();
    store
        .create_account(NewAccount::new(acme.clone(), "Acme", "billing@acme.test").unwrap())
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_account(NewAccount::new(acme.clone(), "Acme", "billing@acme.test").unwrap())
            .await,
        Err(StoreError::AccountExists(_))
    ));
    assert!(matches!(
        store.charge_usage(usage("acme", "email_finder", 1, "k1")).await,
        Err(StoreError::InsufficientFunds(_))
    ));
    let free = store
        .charge_usage(usage("acme", "ui_search", 5, "free"))
        .await
        .unwrap();
    assert_eq!(free.value.amount, Micros::ZERO);
    store
        .grant(
            GrantCommand::new(
                acme.clone(),
                Micros::from_dollars(1).unwrap(),
                "test",
                None,
                Actor::System,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let charged = store
        .charge_usage(usage("acme", "email_finder", 3, "k1"))
        .await
        .unwrap();
    assert!(!charged.replayed);
    assert_eq!(charged.value.amount, Micros::new(90_000));
    assert_eq!(charged.value.balances_after.available, Micros::new(910_000));
    let replay = store
        .charge_usage(usage("acme", "email_finder", 3, "k1"))
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value, charged.value);
    assert!(matches!(
        store.charge_usage(usage("acme", "email_finder", 4, "k1")).await,
        Err(StoreError::IdempotencyConflict { .. })
    ));
    let hold = store
        .place_hold(
            HoldCommand::new(
                acme.clone(),
                ActionId::parse("export").unwrap(),
                Micros::new(500_000),
                HoldTtl::from_seconds(60).unwrap(),
                IdempotencyKey::parse("h1").unwrap(),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(hold.balances_after.available, Micros::new(410_000));
    assert!(matches!(
        store.capture_hold(&hold.id, Quantity::new(26).unwrap()).await,
        Err(StoreError::CaptureExceedsHold { .. })
    ));
    let (captured, capture_usage) = store
        .capture_hold(&hold.id, Quantity::new(10).unwrap())
        .await
        .unwrap();
    assert_eq!(captured.status, HoldStatus::Captured);
    assert_eq!(capture_usage.amount, Micros::new(200_000));
    assert_eq!(captured.balances_after.available, Micros::new(710_000));
    assert!(matches!(
        store.void_hold(&hold.id).await,
        Err(StoreError::HoldNotActive(HoldStatus::Captured))
    ));
    // An expiring hold releases lazily.
    let short = store
        .place_hold(
            HoldCommand::new(
                acme.clone(),
                ActionId::parse("export").unwrap(),
                Micros::new(100_000),
                HoldTtl::from_seconds(1).unwrap(),
                IdempotencyKey::parse("h2").unwrap(),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .value;
    clock.advance(time::Duration::seconds(2));
    assert!(matches!(
        store.capture_hold(&short.id, Quantity::ONE).await,
        Err(StoreError::HoldNotActive(HoldStatus::Expired))
    ));
    assert_eq!(store.hold(&short.id).await.unwrap().status, HoldStatus::Expired);
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.available, Micros::new(710_000));
    assert_eq!(account.balances.held, Micros::ZERO);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let lines = store.transactions(&acme, Default::default()).await.unwrap();
    assert_eq!(lines.data.len(), 7);
    assert_eq!(lines.data[0].sequence, 7);
}
