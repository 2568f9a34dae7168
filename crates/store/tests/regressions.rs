//! Focused tests for bugs the simulation found (it keeps checking them too).

use std::sync::Arc;

use time::Duration;
use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, GrantCommand, HoldCommand, HoldStatus, HoldTtl, IdempotencyKey, ManualClock,
    Micros, NewAccount, Quantity, TierBasis, TransactionKind,
};
use tollgate_store::testing::TestDatabase;
use tollgate_store::{HoldRecord, PageRequest, SharedStore, StoreRules};

fn open(db: &TestDatabase, clock: Arc<ManualClock>) -> SharedStore {
    db.open(StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock,
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    })
}

async fn funded(store: &SharedStore, id: &str) -> AccountId {
    let account = AccountId::parse(id).unwrap();
    store
        .create_account(NewAccount::new(account.clone(), id, "billing@example.test").unwrap())
        .await
        .unwrap();
    store
        .grant(
            GrantCommand::new(
                account.clone(),
                Micros::from_dollars(10).unwrap(),
                "funding",
                None,
                Actor::System,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    account
}

fn hold(account: &AccountId, micros: i64, ttl: i64, key: &str) -> HoldCommand {
    HoldCommand::new(
        account.clone(),
        ActionId::parse("export").unwrap(),
        Micros::new(micros),
        HoldTtl::from_seconds(ttl).unwrap(),
        IdempotencyKey::parse(key).unwrap(),
    )
    .unwrap()
}

/// Which of `holds` the journal shows released. Read from the journal on
/// purpose: `Store::hold` itself releases a due hold when asked about it.
async fn released(store: &SharedStore, account: &AccountId, holds: &[HoldRecord]) -> Vec<bool> {
    let lines = store
        .transactions(account, PageRequest::new(100, None))
        .await
        .unwrap()
        .data;
    holds
        .iter()
        .map(|hold| {
            lines.iter().any(|line| {
                line.kind == TransactionKind::HoldReleased
                    && line.reference.as_deref() == Some(hold.id.as_str())
            })
        })
        .collect()
}

/// A replayed hold placement returns the original result, not the hold as
/// it is after its capture (API.md: "returns the original result").
#[tokio::test]
async fn hold_replay_returns_the_original_result() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = open(&db, clock);
    let acme = funded(&store, "acme").await;
    let placed = store.place_hold(hold(&acme, 500_000, 60, "h1")).await.unwrap();
    assert!(!placed.replayed);
    store
        .capture_hold(&placed.value.id, Quantity::new(10).unwrap())
        .await
        .unwrap();
    let replay = store.place_hold(hold(&acme, 500_000, 60, "h1")).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value, placed.value);
    assert_eq!(replay.value.status, HoldStatus::Active);
    // Nothing moved, and the hold itself still says captured.
    assert_eq!(
        store.hold(&placed.value.id).await.unwrap().status,
        HoldStatus::Captured
    );
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.available, Micros::new(9_800_000));
    assert!(store.verify_ledger().await.unwrap().is_clean());
}

/// `expire_holds(limit)` releases at most `limit` holds, oldest expiry first,
/// even when one account has more due (it used to release all of them).
#[tokio::test]
async fn expire_holds_honours_its_limit() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = open(&db, clock.clone());
    let acme = funded(&store, "acme").await;
    let mut holds: Vec<HoldRecord> = Vec::new();
    for (index, ttl) in [30, 10, 20].into_iter().enumerate() {
        holds.push(
            store
                .place_hold(hold(&acme, 100_000, ttl, &format!("h{index}")))
                .await
                .unwrap()
                .value,
        );
    }
    clock.advance(Duration::minutes(1));
    assert_eq!(store.expire_holds(1).await.unwrap(), 1);
    // The one with the earliest expiry (ttl 10 s) went first.
    assert_eq!(released(&store, &acme, &holds).await, [false, true, false]);
    assert_eq!(store.expire_holds(10).await.unwrap(), 2);
    assert_eq!(store.expire_holds(10).await.unwrap(), 0);
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.held, Micros::ZERO);
    assert_eq!(account.balances.available, Micros::from_dollars(10).unwrap());
    assert!(store.verify_ledger().await.unwrap().is_clean());
}

/// Reading an account or a hold never shows funds held by a hold whose time
/// ran out: the read releases it (through the writer) and says so.
#[tokio::test]
async fn reads_release_holds_whose_time_ran_out() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = open(&db, clock.clone());
    let acme = funded(&store, "acme").await;
    let placed = store
        .place_hold(hold(&acme, 400_000, 5, "h"))
        .await
        .unwrap()
        .value;
    assert_eq!(
        store.account(&acme).await.unwrap().balances.held,
        Micros::new(400_000)
    );
    clock.advance(Duration::seconds(5));
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.held, Micros::ZERO);
    assert_eq!(account.balances.available, Micros::from_dollars(10).unwrap());
    assert_eq!(store.hold(&placed.id).await.unwrap().status, HoldStatus::Expired);
    assert!(store.verify_ledger().await.unwrap().is_clean());
}

/// The journal of an account that does not exist is not an empty page.
#[tokio::test]
async fn transactions_of_an_unknown_account_are_not_found() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = open(&db, clock);
    let ghost = AccountId::parse("ghost").unwrap();
    assert!(matches!(
        store.transactions(&ghost, PageRequest::default()).await,
        Err(tollgate_store::StoreError::NotFound { .. })
    ));
}

/// Paging accounts from a cursor that names no account is refused, like
/// every other list (it used to return the accounts after that text).
#[tokio::test]
async fn listing_accounts_from_an_unknown_cursor_is_refused() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store = open(&db, clock);
    funded(&store, "acme").await;
    funded(&store, "zeta").await;
    let page = store
        .list_accounts(PageRequest::new(10, Some("acme".to_owned())))
        .await
        .unwrap();
    assert_eq!(
        page.data
            .iter()
            .map(|account| account.id.as_str())
            .collect::<Vec<_>>(),
        ["zeta"]
    );
    assert!(matches!(
        store
            .list_accounts(PageRequest::new(10, Some("b".to_owned())))
            .await,
        Err(tollgate_store::StoreError::InvalidCursor(_))
    ));
}
