//! The SQLite writer keeps accounts and a filter of idempotency keys in memory so the
//! hot path does no reads. These tests pin down when that memory must give way to the
//! database: another connection writing the file, a refused event inside a batch, a job
//! that writes accounts with its own SQL, and a hold whose time runs out while cached.

use std::path::Path;
use std::sync::Arc;

use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, GrantCommand, HoldCommand, HoldTtl, IdempotencyKey, ManualClock, Micros,
    NewAccount, Quantity, TierBasis, UsageCommand,
};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{Store, StoreError, StoreRules};

fn rules(clock: &Arc<ManualClock>) -> StoreRules {
    StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    }
}

fn open(path: &Path, clock: &Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(path, rules(clock)).unwrap()
}

fn usage(account: &AccountId, quantity: u64, key: &str) -> UsageCommand {
    UsageCommand {
        account: account.clone(),
        action: ActionId::parse("email_finder").unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    }
}

async fn funded(store: &dyn Store, id: &str, micros: i64) -> AccountId {
    let account = AccountId::parse(id).unwrap();
    store
        .create_account(NewAccount::new(account.clone(), id, &format!("{id}@example.test")).unwrap())
        .await
        .unwrap();
    grant(store, &account, micros).await;
    account
}

async fn grant(store: &dyn Store, account: &AccountId, micros: i64) {
    store
        .grant(
            GrantCommand::new(
                account.clone(),
                Micros::new(micros),
                "funding",
                None,
                Actor::System,
            )
            .unwrap(),
        )
        .await
        .unwrap();
}

async fn available(store: &dyn Store, account: &AccountId) -> i64 {
    store.account(account).await.unwrap().balances.available.get()
}

/// Email Finder's list price in the default price book, per unit.
async fn unit_price(store: &dyn Store, account: &AccountId) -> i64 {
    let before = available(store, account).await;
    let charged = store
        .charge_usage(usage(account, 1, "price-probe"))
        .await
        .unwrap();
    assert_eq!(
        available(store, account).await,
        before - charged.value.amount.get()
    );
    charged.value.amount.get()
}

/// Two stores on one file stand for two processes (a `tollgate grant` beside the
/// server, say). Each writer caches the account; each must see the other's commits
/// before its next decision, and a key the other recorded must replay, not charge.
#[tokio::test]
async fn writes_by_another_connection_are_seen_before_the_next_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let server = open(&path, &clock);
    let account = funded(&server, "acct_shared", 10_000_000).await;
    let price = unit_price(&server, &account).await;
    // The server's writer now holds the account in memory.
    server.charge_usage(usage(&account, 1, "k-1")).await.unwrap();

    let other = open(&path, &clock);
    grant(&other, &account, 5_000_000).await;
    let by_other = other.charge_usage(usage(&account, 2, "k-2")).await.unwrap();
    assert!(!by_other.replayed);

    // The server charges from the balance the other left, not from its stale copy…
    let next = server.charge_usage(usage(&account, 1, "k-3")).await.unwrap();
    let expected = 10_000_000 + 5_000_000 - 5 * price;
    assert_eq!(next.value.balances_after.available.get(), expected);
    // …and the key the other recorded is a replay of its charge.
    let replay = server.charge_usage(usage(&account, 2, "k-2")).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value.id, by_other.value.id);
    assert_eq!(available(&server, &account).await, expected);
    assert_eq!(available(&other, &account).await, expected);
    assert!(server.verify_ledger().await.unwrap().is_clean());
}

/// A batch whose middle event is refused keeps the events around it; the refused one
/// leaves no trace in the writer's memory either: the next charge starts from the
/// balance the committed events left.
#[tokio::test]
async fn a_refused_event_in_a_batch_leaves_the_cached_balance_as_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.db");
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let store = open(&path, &clock);
    let account = funded(&store, "acct_batch", 1_000_000).await;
    let price = unit_price(&store, &account).await;
    let left = 1_000_000 - price;
    let fits = u64::try_from(left / price).unwrap();
    let results = store
        .charge_usage_batch(vec![
            usage(&account, 1, "b-1"),
            usage(&account, fits * 10, "b-too-much"),
            usage(&account, 1, "b-3"),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(StoreError::InsufficientFunds(_))));
    let after_batch = left - 2 * price;
    assert_eq!(available(&store, &account).await, after_batch);
    let next = store.charge_usage(usage(&account, 1, "b-4")).await.unwrap();
    assert_eq!(next.value.balances_after.available.get(), after_batch - price);
    // The refused key recorded nothing: it is evaluated afresh, not replayed.
    let retried = store
        .charge_usage(usage(&account, 1, "b-too-much"))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert!(store.verify_ledger().await.unwrap().is_clean());
}

/// A plan change writes the account with SQL of its own (billing mode, discount); the
/// next charge must be priced with it, not with the cached plan.
#[tokio::test]
async fn a_plan_change_reaches_the_next_charge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let store = open(&path, &clock);
    let account = funded(&store, "acct_plan", 10_000_000).await;
    let price = unit_price(&store, &account).await;
    let plan = tollgate_core::PlanCommand::new(
        account.clone(),
        tollgate_core::PlanRequest {
            discount_percent: Some(50),
            ..tollgate_core::PlanRequest::default()
        },
        &default_price_book(),
        Actor::System,
    )
    .unwrap();
    store.set_plan(plan).await.unwrap();
    let charged = store.charge_usage(usage(&account, 2, "p-1")).await.unwrap();
    assert_eq!(charged.value.amount.get(), price);
    assert!(store.verify_ledger().await.unwrap().is_clean());
}

/// The writer remembers when an account's earliest hold runs out; once the clock has
/// passed it, the next write releases the hold before deciding.
#[tokio::test]
async fn a_hold_that_ran_out_while_cached_is_released_before_the_next_charge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holds.db");
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let store = open(&path, &clock);
    let account = funded(&store, "acct_hold", 1_000_000).await;
    let price = unit_price(&store, &account).await;
    let left = 1_000_000 - price;
    store
        .place_hold(HoldCommand {
            account: account.clone(),
            action: ActionId::parse("email_finder").unwrap(),
            amount: Micros::new(left),
            ttl: HoldTtl::from_seconds(60).unwrap(),
            idempotency_key: IdempotencyKey::parse("h-1").unwrap(),
        })
        .await
        .unwrap();
    let refused = store.charge_usage(usage(&account, 1, "h-charge-1")).await;
    assert!(matches!(refused, Err(StoreError::InsufficientFunds(_))));
    clock.advance(time::Duration::seconds(61));
    let charged = store
        .charge_usage(usage(&account, 1, "h-charge-2"))
        .await
        .unwrap();
    assert_eq!(charged.value.balances_after.available.get(), left - price);
    assert_eq!(charged.value.balances_after.held.get(), 0);
    assert!(store.verify_ledger().await.unwrap().is_clean());
}
