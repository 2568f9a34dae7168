//! One expiry per hold, however many releasers race for it: the background
//! sweeper of every process (`expire_holds`), and the lazy release every write
//! to the account performs first (a grant, a charge, a capture or void of the
//! expired hold itself, an account read that releases). On PostgreSQL the
//! racers run on two stores over one database, as two processes would; SQLite
//! is one process per file, so there they share the one store. Runs on SQLite,
//! and on PostgreSQL with `TOLLGATE_TEST_STORE=postgres`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use time::macros::datetime;
use tokio::sync::Barrier;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, GrantCommand, HoldCommand, HoldStatus, HoldTtl, IdempotencyKey, ManualClock,
    Micros, NewAccount, Quantity, TierBasis, Timestamp, TransactionKind, UsageCommand,
};
use tollgate_store::testing::{Backend, TestDatabase};
use tollgate_store::{PageRequest, SharedStore, StoreError, StoreRules, TransactionLine};

const START: Timestamp = datetime!(2026-11-25 10:00 UTC);
/// A few accounts, so the sweeps lock several rows and the lazy releases of
/// different accounts interleave with them.
const ACCOUNTS: usize = 4;
/// Short-lived holds per account, in each of the two rounds: many, so one
/// sweep (limit [`SWEEP_LIMIT`]) cannot take them all and the sweepers overlap.
const HOLDS_PER_ACCOUNT: usize = 40;
const SWEEP_LIMIT: usize = 7;
/// Sweeps per sweeper: one sweeper alone would need 23 for a round's 160 holds.
const SWEEPS: usize = 30;
/// Sweepers per store handle.
const SWEEPERS_PER_STORE: usize = 6;
/// What each account starts with, what each short hold reserves, and the one
/// long hold per account that is not due and must survive every sweep.
const FUNDING: Micros = Micros::new(200_000_000);
const HOLD_AMOUNT: Micros = Micros::new(1_250_000);
const LONG_HOLD_AMOUNT: Micros = Micros::new(3_000_000);
/// The account writes racing the sweepers: grants of one cent each.
const GRANTS_PER_ACCOUNT: usize = 4;
const GRANT_AMOUNT: Micros = Micros::new(10_000);

fn rules(clock: &Arc<ManualClock>) -> StoreRules {
    StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    }
}

fn account_id(index: usize) -> AccountId {
    AccountId::parse(&format!("acct{index}")).unwrap()
}

fn hold_command(account: &AccountId, amount: Micros, ttl_seconds: i64, key: &str) -> HoldCommand {
    HoldCommand::new(
        account.clone(),
        ActionId::parse("export").unwrap(),
        amount,
        HoldTtl::from_seconds(ttl_seconds).unwrap(),
        IdempotencyKey::parse(key).unwrap(),
    )
    .unwrap()
}

/// The whole journal of `account`, every page of it (newest first).
async fn journal(store: &SharedStore, account: &AccountId) -> Vec<TransactionLine> {
    let mut lines = Vec::new();
    let mut starting_after = None;
    loop {
        let page = store
            .transactions(account, PageRequest::new(100, starting_after.clone()))
            .await
            .unwrap();
        lines.extend(page.data);
        if !page.has_more {
            return lines;
        }
        starting_after = lines.last().map(|line| line.id.clone());
    }
}

/// Places `count` holds of [`HOLD_AMOUNT`] on `account`, expiring after `ttl_seconds`.
async fn place_holds(
    store: &SharedStore,
    account: &AccountId,
    batch: &str,
    count: usize,
    ttl_seconds: i64,
) -> Vec<(String, AccountId)> {
    let mut holds = Vec::with_capacity(count);
    for index in 0..count {
        let hold = store
            .place_hold(hold_command(
                account,
                HOLD_AMOUNT,
                ttl_seconds,
                &format!("{batch}-{account}-{index}"),
            ))
            .await
            .unwrap()
            .value;
        assert_eq!(hold.status, HoldStatus::Active);
        holds.push((hold.id, account.clone()));
    }
    holds
}

/// Sweeps [`SWEEPS`] times, as the background sweeper of every process does
/// on its interval, whatever each sweep finds (a sweep that finds its holds
/// taken by another goes on, so the sweepers keep overlapping to the end);
/// returns how many holds its sweeps released.
async fn sweeper(store: SharedStore, barrier: Arc<Barrier>) -> usize {
    barrier.wait().await;
    let mut released = 0;
    for _ in 0..SWEEPS {
        released += store.expire_holds(SWEEP_LIMIT).await.unwrap();
    }
    released
}

/// What one racing task of the second round did.
enum Outcome {
    /// A sweeper: the holds its sweeps released.
    Swept(usize),
    /// Anything else, already checked.
    Done,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_expired_hold_is_released_exactly_once_by_racing_sweepers_and_writers() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(START));
    let first = db.open(rules(&clock));
    // A second store on the same database stands for a second process.
    let second = match db.backend() {
        Backend::Postgres => db.open(rules(&clock)),
        Backend::Sqlite => first.clone(),
    };
    let stores = [first.clone(), second.clone()];

    let accounts: Vec<AccountId> = (0..ACCOUNTS).map(account_id).collect();
    // Round one's holds expire after 1 s, round two's after 10 s, the long ones after an hour.
    let mut sweep_only: Vec<(String, AccountId)> = Vec::new();
    let mut mixed: Vec<(String, AccountId)> = Vec::new();
    let mut long_holds: BTreeMap<AccountId, String> = BTreeMap::new();
    for account in &accounts {
        first
            .create_account(
                NewAccount::new(account.clone(), account.as_str(), "billing@example.test").unwrap(),
            )
            .await
            .unwrap();
        first
            .grant(GrantCommand::new(account.clone(), FUNDING, "funding", None, Actor::System).unwrap())
            .await
            .unwrap();
        sweep_only.extend(place_holds(&first, account, "sweep", HOLDS_PER_ACCOUNT, 1).await);
        mixed.extend(place_holds(&first, account, "mixed", HOLDS_PER_ACCOUNT, 10).await);
        let long = first
            .place_hold(hold_command(
                account,
                LONG_HOLD_AMOUNT,
                3_600,
                &format!("long-{account}"),
            ))
            .await
            .unwrap()
            .value;
        long_holds.insert(account.clone(), long.id);
        let view = first.account(account).await.unwrap();
        let held = HOLD_AMOUNT
            .checked_mul(2 * HOLDS_PER_ACCOUNT as u64)
            .unwrap()
            .checked_add(LONG_HOLD_AMOUNT)
            .unwrap();
        assert_eq!(view.balances.held, held);
        assert_eq!(view.balances.available, FUNDING.checked_sub(held).unwrap());
    }

    // Round one: only sweepers, on both stores, race for the first batch. Each
    // release is counted by the one sweep that made it, so the counts add up
    // to the number of holds exactly when each hold is released once.
    clock.advance(time::Duration::seconds(5));
    let sweepers = 2 * SWEEPERS_PER_STORE;
    let barrier = Arc::new(Barrier::new(sweepers));
    let tasks: Vec<_> = (0..sweepers)
        .map(|index| tokio::spawn(sweeper(stores[index % 2].clone(), barrier.clone())))
        .collect();
    let mut swept = Vec::with_capacity(sweepers);
    for task in tasks {
        swept.push(task.await.unwrap());
    }
    println!("round one, releases per sweeper: {swept:?}");
    // Whatever the racing sweeps left (normally nothing), one more sweep takes.
    let mut left = 0;
    loop {
        match first.expire_holds(SWEEP_LIMIT).await.unwrap() {
            0 => break,
            count => left += count,
        }
    }
    assert_eq!(
        swept.iter().sum::<usize>() + left,
        sweep_only.len(),
        "releases per sweeper: {swept:?}, then {left}"
    );
    for (hold_id, _) in &mixed {
        assert_eq!(first.hold(hold_id).await.unwrap().status, HoldStatus::Active);
    }

    // Round two: the second batch expires, and sweepers race the lazy release of
    // every kind of write: captures and voids of the expired holds themselves,
    // grants, charges and account reads.
    clock.advance(time::Duration::seconds(10));
    let writes_per_account = 2 * GRANTS_PER_ACCOUNT + stores.len();
    let racers = sweepers + 2 * mixed.len() + ACCOUNTS * writes_per_account;
    // Every racer waits at the barrier, so they all start together.
    let barrier = Arc::new(Barrier::new(racers));
    let mut tasks = Vec::with_capacity(racers);
    for index in 0..sweepers {
        let sweep = sweeper(stores[index % 2].clone(), barrier.clone());
        tasks.push(tokio::spawn(async move { Outcome::Swept(sweep.await) }));
    }
    for (index, (hold_id, _)) in mixed.iter().enumerate() {
        // A capture and a void of the hold itself, each on a different store:
        // both must see it expired (releasing it first if nobody has yet).
        let (store, other) = (stores[index % 2].clone(), stores[(index + 1) % 2].clone());
        let (id, gate) = (hold_id.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let refused = store.capture_hold(&id, Quantity::ONE).await;
            assert!(
                matches!(refused, Err(StoreError::HoldNotActive(HoldStatus::Expired))),
                "capture of expired hold {id}: {refused:?}"
            );
            Outcome::Done
        }));
        let (id, gate) = (hold_id.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let refused = other.void_hold(&id).await;
            assert!(
                matches!(refused, Err(StoreError::HoldNotActive(HoldStatus::Expired))),
                "void of expired hold {id}: {refused:?}"
            );
            Outcome::Done
        }));
    }
    for (account_index, account) in accounts.iter().enumerate() {
        for index in 0..GRANTS_PER_ACCOUNT {
            // Writes to the account release its due holds before they do anything else.
            let (store, owner, gate) = (
                stores[(account_index + index) % 2].clone(),
                account.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                let key = IdempotencyKey::parse(&format!("grant-{owner}-{index}")).unwrap();
                let command =
                    GrantCommand::new(owner, GRANT_AMOUNT, "race", Some(key), Actor::System).unwrap();
                let granted = store.grant(command).await.unwrap();
                assert!(!granted.replayed);
                Outcome::Done
            }));
            let (store, owner, gate) = (
                stores[(account_index + index + 1) % 2].clone(),
                account.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                // A free action: a write that moves no money.
                let charged = store
                    .charge_usage(UsageCommand {
                        idempotency_key: IdempotencyKey::parse(&format!("search-{owner}-{index}")).unwrap(),
                        account: owner,
                        action: ActionId::parse("ui_search").unwrap(),
                        quantity: Quantity::new(1).unwrap(),
                    })
                    .await
                    .unwrap();
                assert_eq!(charged.value.amount, Micros::ZERO);
                Outcome::Done
            }));
        }
        for store in &stores {
            // Reading the account never shows expired funds as held.
            let (store, owner, gate) = (store.clone(), account.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                let view = store.account(&owner).await.unwrap();
                assert_eq!(view.balances.held, LONG_HOLD_AMOUNT, "{owner}: {view:?}");
                Outcome::Done
            }));
        }
    }
    assert_eq!(tasks.len(), racers);
    let mut swept = 0;
    for task in tasks {
        if let Outcome::Swept(released) = task.await.unwrap() {
            swept += released;
        }
    }
    // The sweepers released some of the holds, never more than there were (a
    // count above that would mean a hold released twice); the writers did the rest.
    assert!(swept <= mixed.len(), "{swept} releases of {} holds", mixed.len());
    println!(
        "round two: sweepers released {swept} of {} holds, writers the rest",
        mixed.len()
    );
    // Nothing due is left over, and the long holds are not due.
    assert_eq!(first.expire_holds(10_000).await.unwrap(), 0);
    assert_eq!(second.expire_holds(10_000).await.unwrap(), 0);

    let expired: Vec<&(String, AccountId)> = sweep_only.iter().chain(&mixed).collect();
    for (hold_id, _) in &expired {
        let hold = first.hold(hold_id).await.unwrap();
        assert_eq!(hold.status, HoldStatus::Expired, "{hold:?}");
        assert_eq!(hold.captured_amount, None, "{hold:?}");
    }
    let grants = GRANT_AMOUNT.checked_mul(GRANTS_PER_ACCOUNT as u64).unwrap();
    for account in &accounts {
        let long = &long_holds[account];
        assert_eq!(first.hold(long).await.unwrap().status, HoldStatus::Active);
        // One release line per expired hold, none for the long one; each gives
        // back exactly what its hold reserved.
        let lines = journal(&first, account).await;
        let mut releases: BTreeMap<String, usize> = BTreeMap::new();
        for line in lines
            .iter()
            .filter(|line| line.kind == TransactionKind::HoldReleased)
        {
            assert_eq!(line.available_amount, HOLD_AMOUNT, "{line:?}");
            assert_eq!(line.amount, Micros::ZERO, "{line:?}");
            *releases
                .entry(line.reference.clone().expect("a release names its hold"))
                .or_default() += 1;
        }
        let expected: BTreeSet<String> = expired
            .iter()
            .filter(|(_, owner)| owner == account)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            releases.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{account}: the released holds are exactly the expired ones"
        );
        for (hold_id, count) in &releases {
            assert_eq!(*count, 1, "{account}: hold {hold_id} released {count} times");
        }
        // The journal is numbered without gaps: nothing was written twice under one number.
        let mut sequences: Vec<i64> = lines.iter().map(|line| line.sequence).collect();
        sequences.sort_unstable();
        assert_eq!(
            sequences,
            (1..=lines.len() as i64).collect::<Vec<_>>(),
            "{account}"
        );

        // Held is only the long hold; available is everything else.
        let view = second.account(account).await.unwrap();
        assert_eq!(view.balances.held, LONG_HOLD_AMOUNT, "{account}");
        assert_eq!(
            view.balances.available,
            FUNDING
                .checked_add(grants)
                .unwrap()
                .checked_sub(LONG_HOLD_AMOUNT)
                .unwrap(),
            "{account}"
        );
    }
    let report = first.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);

    // Voiding the long holds leaves nothing held and every cent available.
    for (account, long) in &long_holds {
        assert_eq!(second.void_hold(long).await.unwrap().status, HoldStatus::Voided);
        let view = first.account(account).await.unwrap();
        assert_eq!(view.balances.held, Micros::ZERO, "{account}");
        assert_eq!(
            view.balances.available,
            FUNDING.checked_add(grants).unwrap(),
            "{account}"
        );
    }
    let report = second.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
