//! Single charges on PostgreSQL are micro-batched per process: concurrent charges share
//! one transaction. This runs on PostgreSQL whichever store the suite is on (the
//! batcher exists only there) and checks that batches do form, and that a batch keeps
//! every guarantee of a single charge when two processes charge one account at once.

use std::sync::Arc;

use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, GrantCommand, IdempotencyKey, ManualClock, Micros, NewAccount, Quantity,
    TierBasis, UsageCommand,
};
use tollgate_store::postgres::PgStore;
use tollgate_store::testing::{Backend, TestDatabase};
use tollgate_store::{Store, StoreError, StoreRules};

fn rules(clock: &Arc<ManualClock>) -> StoreRules {
    StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    }
}

fn usage(account: &AccountId, key: &str) -> UsageCommand {
    UsageCommand {
        account: account.clone(),
        action: ActionId::parse("email_finder").unwrap(),
        quantity: Quantity::new(1).unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    }
}

/// 64 charges arrive at once at one process, and 16 of their keys again at a second
/// process, against a balance that fits 40. Exactly 40 are charged, each key once (the
/// second process replays what the first charged), the balance ends at zero, the
/// ledger verifies, and the first process needed far fewer transactions than charges.
#[tokio::test]
async fn concurrent_single_charges_share_transactions_and_keep_every_guarantee() {
    let database = TestDatabase::of(Backend::Postgres);
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-01 12:00 UTC)));
    let first = Arc::new(PgStore::connect(database.url(), rules(&clock), 8).unwrap());
    let second = Arc::new(PgStore::connect(database.url(), rules(&clock), 8).unwrap());
    let account = AccountId::parse("acct_batched").unwrap();
    first
        .create_account(NewAccount::new(account.clone(), "Batched", "batched@example.test").unwrap())
        .await
        .unwrap();
    // Learn the unit price from one charge, then fund exactly 40 more.
    first
        .grant(
            GrantCommand::new(
                account.clone(),
                Micros::new(1_000_000),
                "probe",
                None,
                Actor::System,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let price = first
        .charge_usage(usage(&account, "probe"))
        .await
        .unwrap()
        .value
        .amount
        .get();
    let left = 1_000_000 - price;
    first
        .grant(
            GrantCommand::new(
                account.clone(),
                Micros::new(40 * price - left),
                "fund",
                None,
                Actor::System,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let (transactions_before, charges_before) = first.micro_batches_committed();

    let mut tasks = Vec::new();
    for index in 0..64 {
        let (store, command) = (first.clone(), usage(&account, &format!("k-{index}")));
        tasks.push(tokio::spawn(
            async move { (index, store.charge_usage(command).await) },
        ));
    }
    for index in 0..16 {
        let (store, command) = (second.clone(), usage(&account, &format!("k-{index}")));
        tasks.push(tokio::spawn(
            async move { (index, store.charge_usage(command).await) },
        ));
    }
    let mut charged_by_key = std::collections::HashMap::new();
    let (mut charged, mut refused) = (0, 0);
    for task in tasks {
        let (index, outcome) = task.await.unwrap();
        match outcome {
            Ok(result) => {
                if !result.replayed {
                    charged += 1;
                }
                let id = charged_by_key
                    .entry(index)
                    .or_insert_with(|| result.value.id.clone());
                assert_eq!(*id, result.value.id, "key k-{index} answered with two charges");
            }
            Err(StoreError::InsufficientFunds(_)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(charged, 40, "exactly what the balance fits");
    assert!(refused >= 24, "{refused} refused");
    let balances = first.account(&account).await.unwrap().balances;
    assert_eq!((balances.available.get(), balances.held.get()), (0, 0));
    assert!(first.verify_ledger().await.unwrap().is_clean());

    let (transactions, charges) = first.micro_batches_committed();
    let (transactions, charges) = (transactions - transactions_before, charges - charges_before);
    assert_eq!(charges, 64);
    assert!(
        transactions <= 16,
        "64 concurrent charges took {transactions} transactions: batches did not form"
    );
}
