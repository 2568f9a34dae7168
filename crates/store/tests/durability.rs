//! Durability and concurrency of the stores. The crash copy is SQLite's by
//! nature (it copies the files); its PostgreSQL counterpart kills the
//! connections mid-run. The concurrency tests run on the store
//! `TOLLGATE_TEST_STORE` names.

use std::path::Path;
use std::sync::Arc;

use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, GrantCommand, IdempotencyKey, ManualClock, Micros, NewAccount, Quantity,
    TierBasis, UsageCommand,
};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::testing::{Backend, TestDatabase};
use tollgate_store::{PageRequest, SharedStore, Store, StoreError, StoreRules};

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

fn usage(account: &str, quantity: u64, key: &str) -> UsageCommand {
    UsageCommand {
        account: AccountId::parse(account).unwrap(),
        action: ActionId::parse("email_finder").unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    }
}

async fn funded_account(store: &dyn Store, id: &str, micros: i64) -> AccountId {
    let account = AccountId::parse(id).unwrap();
    store
        .create_account(NewAccount::new(account.clone(), id, &format!("{id}@example.test")).unwrap())
        .await
        .unwrap();
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
    account
}

/// Once `charge_usage` has answered, the charge is in the files: a copy of
/// them taken right then (what a killed process leaves behind) has it, and
/// so does the database after a clean restart. The replay of its key still
/// returns it, so the client's retry cannot charge twice.
#[tokio::test]
async fn acknowledged_charge_survives_a_crash_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durable.db");
    let clock = Arc::new(ManualClock::new(datetime!(2026-03-31 12:00 UTC)));
    let store = open(&path, &clock);
    let acme = funded_account(&store, "acme", 1_000_000).await;
    let charged = store.charge_usage(usage("acme", 3, "evt-1")).await.unwrap();
    assert!(!charged.replayed);
    assert_eq!(charged.value.balances_after.available, Micros::new(910_000));

    // A "crash": copy the database and its write-ahead log while the store
    // is still running, without closing anything.
    let crashed = tempfile::tempdir().unwrap();
    let crashed_path = crashed.path().join("durable.db");
    std::fs::copy(&path, &crashed_path).unwrap();
    let wal = dir.path().join("durable.db-wal");
    if wal.exists() {
        std::fs::copy(&wal, crashed.path().join("durable.db-wal")).unwrap();
    }
    let recovered = open(&crashed_path, &clock);
    check_charge_is_there(&recovered, &acme, &charged.value).await;
    drop(recovered);

    // A clean restart of the original.
    drop(store);
    let reopened = open(&path, &clock);
    check_charge_is_there(&reopened, &acme, &charged.value).await;
}

async fn check_charge_is_there(store: &dyn Store, acme: &AccountId, charged: &tollgate_store::UsageRecord) {
    let account = store.account(acme).await.unwrap();
    assert_eq!(account.balances.available, Micros::new(910_000));
    assert_eq!(account.spend.cycle_spend, Micros::new(90_000));
    let replay = store.charge_usage(usage("acme", 3, "evt-1")).await.unwrap();
    assert!(
        replay.replayed,
        "the retry of an acknowledged charge must be a replay"
    );
    assert_eq!(&replay.value, charged);
    assert_eq!(
        store.account(acme).await.unwrap().balances.available,
        Micros::new(910_000)
    );
    let journal = store.transactions(acme, PageRequest::default()).await.unwrap();
    assert_eq!(journal.data.len(), 2);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// Many tasks on many threads charge at once: every job lands in some group
/// commit, each with its own savepoint, and the ledger adds up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_of_many_concurrent_charges_verifies() {
    const ACCOUNTS: usize = 10;
    const TASKS: usize = 40;
    const CHARGES_PER_TASK: usize = 25;
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store: SharedStore = db.open(rules(&clock));
    for index in 0..ACCOUNTS {
        funded_account(&*store, &format!("acct{index}"), 100_000_000).await;
    }
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut charged = [0_i64; ACCOUNTS];
            for charge in 0..CHARGES_PER_TASK {
                let account = (task * 7 + charge * 3) % ACCOUNTS;
                let quantity = (charge % 4 + 1) as u64;
                let result = store
                    .charge_usage(usage(
                        &format!("acct{account}"),
                        quantity,
                        &format!("t{task}-c{charge}"),
                    ))
                    .await
                    .unwrap();
                assert!(!result.replayed);
                charged[account] += result.value.amount.get();
            }
            charged
        }));
    }
    let mut expected_spend = [0_i64; ACCOUNTS];
    for task in tasks {
        for (account, amount) in task.await.unwrap().into_iter().enumerate() {
            expected_spend[account] += amount;
        }
    }
    let mut total = 0;
    for (index, spend) in expected_spend.iter().enumerate() {
        let id = AccountId::parse(&format!("acct{index}")).unwrap();
        let account = store.account(&id).await.unwrap();
        assert_eq!(account.balances.available.get(), 100_000_000 - spend);
        assert_eq!(account.spend.cycle_spend.get(), *spend);
        total += spend;
    }
    // Every account stays at Starter: $0.03 per unit, whatever the order.
    let units: u64 = (0..TASKS)
        .flat_map(|_| (0..CHARGES_PER_TASK).map(|charge| (charge % 4 + 1) as u64))
        .sum();
    assert_eq!(total, 30_000 * units as i64);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        report.transactions_checked,
        (ACCOUNTS + TASKS * CHARGES_PER_TASK) as u64
    );
}

/// 200 concurrent charges on one account whose balance fits exactly 100 of
/// them: exactly 100 succeed, 100 are refused, the balance ends at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_charges_exactly_what_fits() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store: SharedStore = db.open(rules(&clock));
    let acme = funded_account(&*store, "acme", 100 * 30_000).await;
    let tasks: Vec<_> = (0..200)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move { store.charge_usage(usage("acme", 1, &format!("c{index}"))).await })
        })
        .collect();
    let (mut charged, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(result) => {
                assert!(!result.replayed);
                assert_eq!(result.value.amount, Micros::new(30_000));
                charged += 1;
            }
            Err(StoreError::InsufficientFunds(_)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((charged, refused), (100, 100));
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.available, Micros::ZERO);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.transactions_checked, 101);
}

/// PostgreSQL's counterpart of the crash copy: every server connection of
/// the store is killed (`pg_terminate_backend`) while 64 tasks charge one
/// account. A charge that failed is retried with its key until it answers;
/// in the end each key is charged exactly once, nothing is half-written and
/// the ledger verifies. Runs in the PostgreSQL pass only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_lose_or_duplicate_nothing() {
    if Backend::from_env() != Backend::Postgres {
        println!("PostgreSQL only: runs with TOLLGATE_TEST_STORE=postgres");
        return;
    }
    const TASKS: usize = 64;
    const CHARGES_PER_TASK: usize = 10;
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 10:00 UTC)));
    let store: SharedStore = db.open(rules(&clock));
    let acme = funded_account(&*store, "acme", 1_000_000_000).await;
    let killer = {
        let url = db.url().to_owned();
        let database = url.rsplit('/').next().unwrap_or_default().to_owned();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(
                &tollgate_store::testing::postgres_server_url(),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(connection);
            let mut killed = 0_i64;
            for _ in 0..5 {
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
                let row = client
                    .query_one(
                        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = $1 AND pid <> pg_backend_pid()) AS terminated",
                        &[&database],
                    )
                    .await
                    .unwrap();
                killed += row.get::<_, i64>(0);
            }
            killed
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut failures = 0;
                for charge in 0..CHARGES_PER_TASK {
                    let command = usage("acme", 1, &format!("t{task}-c{charge}"));
                    loop {
                        match store.charge_usage(command.clone()).await {
                            Ok(_) => break,
                            Err(StoreError::Database(_)) if failures < 1_000 => failures += 1,
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = 0;
    for task in tasks {
        failures += task.await.unwrap();
    }
    let killed = killer.await.unwrap();
    println!("killed {killed} connections; {failures} charges failed and were retried");
    let charges = (TASKS * CHARGES_PER_TASK) as i64;
    let account = store.account(&acme).await.unwrap();
    assert_eq!(account.balances.available.get(), 1_000_000_000 - charges * 30_000);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.transactions_checked, 1 + charges as u64);
}
