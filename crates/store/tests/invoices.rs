//! Invoice billing in the store, on SQLite and (with `TOLLGATE_TEST_STORE=postgres`)
//! PostgreSQL: each period closes exactly once, whatever the number of closers, stores and
//! restarts; numbers have no gaps; lines add up the period's usage per action and price;
//! an invoice unpaid past its net terms blocks usage until it is paid.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::Duration;
use time::macros::datetime;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, ActionId, Actor, EventType, GrantCommand, HoldCommand, HoldTtl, IdempotencyKey,
    InvoicePayment, InvoiceStatus, ManualClock, Micros, NewAccount, PlanCommand, PlanRequest, Quantity,
    TierBasis, TransactionKind, UsageCommand,
};
use tollgate_store::testing::TestDatabase;
use tollgate_store::{
    EventFilter, InvoiceRecord, MarkPaid, PageRequest, SharedStore, StoreError, StoreRules,
};

/// Accounts made on the 15th: their cycles run from the 15th to the 15th.
const CREATED: time::OffsetDateTime = datetime!(2026-10-15 09:00 UTC);

fn open(db: &TestDatabase, clock: Arc<ManualClock>) -> SharedStore {
    db.open(StoreRules {
        price_book: Arc::new(default_price_book()),
        tier_basis: TierBasis::Cycle,
        clock,
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    })
}

fn plan(account: &AccountId, net_terms_days: u16) -> PlanCommand {
    PlanCommand::new(
        account.clone(),
        PlanRequest {
            invoice: true,
            credit_limit: Some(Micros::from_dollars(1_000).unwrap()),
            discount_percent: None,
            prices: BTreeMap::from([
                ("email_finder".to_owned(), Micros::new(10_000)),
                ("export".to_owned(), Micros::new(55_500)),
            ]),
            net_terms_days: Some(net_terms_days),
        },
        &default_price_book(),
        Actor::Cli("sales".into()),
    )
    .unwrap()
}

async fn invoice_account(store: &SharedStore, id: &str, net_terms_days: u16) -> AccountId {
    let account = AccountId::parse(id).unwrap();
    store
        .create_account(NewAccount::new(account.clone(), id, "billing@example.test").unwrap())
        .await
        .unwrap();
    store.set_plan(plan(&account, net_terms_days)).await.unwrap();
    account
}

async fn charge(store: &SharedStore, account: &AccountId, action: &str, quantity: u64, key: &str) {
    store
        .charge_usage(UsageCommand {
            account: account.clone(),
            action: ActionId::parse(action).unwrap(),
            quantity: Quantity::new(quantity).unwrap(),
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
        })
        .await
        .unwrap();
}

async fn all_invoices(store: &SharedStore, account: &AccountId) -> Vec<InvoiceRecord> {
    store
        .invoices(account, PageRequest::new(100, None))
        .await
        .unwrap()
        .data
}

fn numbers(invoices: &[InvoiceRecord]) -> Vec<u64> {
    let mut numbers: Vec<u64> = invoices.iter().map(|invoice| invoice.number.get()).collect();
    numbers.sort_unstable();
    numbers
}

#[tokio::test]
async fn each_period_closes_once_under_concurrent_closers_and_restarts() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(CREATED));
    let first = open(&db, clock.clone());
    let second = open(&db, clock.clone());
    let mut accounts = Vec::new();
    for index in 0..6 {
        let account = invoice_account(&first, &format!("inv{index}"), 30).await;
        // Each account uses a different amount, some of it at two prices.
        for step in 0..=index {
            charge(&first, &account, "email_finder", 10, &format!("f{step}")).await;
        }
        charge(&second, &account, "export", 2, "e").await;
        accounts.push(account);
    }
    // Before the cycle end (and its grace), nothing closes.
    clock.set(datetime!(2026-11-15 00:00:30 UTC));
    assert!(first.close_due_invoices(100).await.unwrap().is_empty());
    // Usage after the period's end belongs to the next one.
    charge(&first, &accounts[0], "email_finder", 1000, "next-period").await;

    clock.set(datetime!(2026-11-15 00:01:00 UTC));
    let closers: Vec<_> = (0..8)
        .map(|index| {
            let store = if index % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { store.close_due_invoices(3).await })
        })
        .collect();
    let mut closed = Vec::new();
    for closer in closers {
        closed.extend(closer.await.unwrap().unwrap());
    }
    // Whatever was left by the small batches, a last pass finishes it.
    closed.extend(first.close_due_invoices(100).await.unwrap());
    assert_eq!(
        closed.len(),
        accounts.len(),
        "one invoice per account: {closed:?}"
    );
    assert_eq!(
        numbers(&closed),
        (1..=6).collect::<Vec<_>>(),
        "gapless, each once"
    );

    for (index, account) in accounts.iter().enumerate() {
        let invoices = all_invoices(&first, account).await;
        assert_eq!(invoices.len(), 1);
        let invoice = &invoices[0];
        assert_eq!(invoice.status, InvoiceStatus::Open);
        assert_eq!(invoice.period.start, CREATED, "from the switch to invoicing");
        assert_eq!(invoice.period.end, datetime!(2026-11-15 00:00 UTC));
        let lines: Vec<_> = invoice
            .lines
            .iter()
            .map(|line| {
                (
                    line.line.action.to_string(),
                    line.line.quantity,
                    line.line.amount.get(),
                )
            })
            .collect();
        let finder = 10 * (index as u64 + 1);
        assert_eq!(
            lines,
            vec![
                ("email_finder".to_owned(), finder, finder as i64 * 10_000),
                ("export".to_owned(), 2, 111_000),
            ]
        );
        assert_eq!(invoice.lines[0].description, "Email Finder");
        let subtotal = finder as i64 * 10_000 + 111_000;
        assert_eq!(invoice.totals.subtotal.get(), subtotal);
        assert_eq!(invoice.totals.amount_due.get(), subtotal - subtotal % 10_000);
        assert_eq!(invoice.totals.carried_forward.get(), subtotal % 10_000);
        assert_eq!(invoice.due_at, invoice.created_at + Duration::days(30));
        let created = first
            .list_events(
                EventFilter {
                    account: Some(account.clone()),
                    kind: Some(EventType::InvoiceCreated),
                },
                PageRequest::new(10, None),
            )
            .await
            .unwrap()
            .data;
        assert_eq!(created.len(), 1, "one invoice.created");
        assert_eq!(created[0].reference.as_deref(), Some(invoice.id.as_str()));
    }

    // A restart closes nothing twice.
    drop((first, second));
    let restarted = open(&db, clock.clone());
    assert!(restarted.close_due_invoices(100).await.unwrap().is_empty());

    // The next period: its own usage, the sub-cent remainder brought forward, numbers go on.
    clock.set(datetime!(2026-12-15 00:01:00 UTC));
    let next = restarted.close_due_invoices(100).await.unwrap();
    // Only inv0 used anything; the others' sub-cent remainders wait for usage to be billed with.
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(numbers(&next), vec![7]);
    let busy = &next[0];
    assert_eq!(busy.account, accounts[0]);
    assert_eq!(busy.totals.subtotal.get(), 1000 * 10_000);
    assert_eq!(
        busy.totals.brought_forward.get(),
        1_000,
        "the fraction of a cent the first invoice carried"
    );
    assert_eq!(busy.totals.amount_due.get(), 10_000_000);
    assert_eq!(busy.totals.carried_forward.get(), 1_000);
    let report = restarted.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn an_overdue_invoice_blocks_usage_until_it_is_paid() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(CREATED));
    let store = open(&db, clock.clone());
    let account = invoice_account(&store, "late", 7).await;
    charge(&store, &account, "email_finder", 250, "u1").await;
    clock.set(datetime!(2026-11-15 00:05:00 UTC));
    let closed = store.close_due_invoices(100).await.unwrap();
    let invoice = closed.into_iter().next().expect("an invoice");
    assert_eq!(invoice.totals.amount_due, Micros::from_cents(250).unwrap());

    // Within the terms, usage goes on (into the next period).
    clock.set(invoice.due_at - Duration::seconds(1));
    charge(&store, &account, "email_finder", 1, "u2").await;
    // Past them, usage and holds are refused with the due date, nothing charged.
    clock.set(invoice.due_at);
    let before = store.account(&account).await.unwrap().balances;
    let refused = store
        .charge_usage(UsageCommand {
            account: account.clone(),
            action: ActionId::parse("email_finder").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            idempotency_key: IdempotencyKey::parse("u3").unwrap(),
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvoiceOverdue { due_at }) if due_at == invoice.due_at),
        "{refused:?}"
    );
    let hold = store
        .place_hold(
            HoldCommand::new(
                account.clone(),
                ActionId::parse("export").unwrap(),
                Micros::new(100_000),
                HoldTtl::from_seconds(60).unwrap(),
                IdempotencyKey::parse("h1").unwrap(),
            )
            .unwrap(),
        )
        .await;
    assert!(matches!(hold, Err(StoreError::InvoiceOverdue { .. })), "{hold:?}");
    assert_eq!(store.account(&account).await.unwrap().balances, before);

    // Paid by bank transfer: credited once, unblocked, audited, announced.
    let paid = store
        .mark_invoice_paid(MarkPaid {
            invoice: invoice.id.clone(),
            reference: Some("WIRE-42".into()),
            actor: Actor::Cli("ops".into()),
        })
        .await
        .unwrap();
    assert!(!paid.replayed);
    assert_eq!(paid.value.status, InvoiceStatus::Paid);
    assert_eq!(paid.value.paid_by, Some(InvoicePayment::BankTransfer));
    assert_eq!(paid.value.payment_reference.as_deref(), Some("WIRE-42"));
    let after = store.account(&account).await.unwrap();
    assert_eq!(after.balances.available.get(), before.available.get() + 2_500_000);
    assert_eq!(after.invoice_due_at, None);
    charge(&store, &account, "email_finder", 1, "u3").await;
    let again = store
        .mark_invoice_paid(MarkPaid {
            invoice: invoice.id.clone(),
            reference: None,
            actor: Actor::System,
        })
        .await
        .unwrap();
    assert!(again.replayed, "marking twice credits once");
    let lines = store
        .transactions(&account, PageRequest::new(100, None))
        .await
        .unwrap()
        .data;
    let payments: Vec<_> = lines
        .iter()
        .filter(|line| line.kind == TransactionKind::InvoicePayment)
        .collect();
    assert_eq!(payments.len(), 1);
    assert!(
        payments[0].description.contains("INV-"),
        "{}",
        payments[0].description
    );
    let audit = store.audit_log(PageRequest::new(100, None)).await.unwrap().data;
    assert!(
        audit
            .iter()
            .any(|entry| entry.action == "invoice.marked_paid" && entry.actor == "cli:ops"),
        "{audit:?}"
    );
    let paid_events = store
        .list_events(
            EventFilter {
                account: Some(account.clone()),
                kind: Some(EventType::InvoicePaid),
            },
            PageRequest::new(10, None),
        )
        .await
        .unwrap()
        .data;
    assert_eq!(paid_events.len(), 1);
    assert!(store.verify_ledger().await.unwrap().is_clean());
}

#[tokio::test]
async fn prepaid_funds_are_credited_and_an_empty_period_has_no_invoice() {
    let db = TestDatabase::new();
    let clock = Arc::new(ManualClock::new(CREATED));
    let store = open(&db, clock.clone());
    let account = AccountId::parse("mixed").unwrap();
    store
        .create_account(NewAccount::new(account.clone(), "Mixed", "m@example.test").unwrap())
        .await
        .unwrap();
    store
        .grant(
            GrantCommand::new(
                account.clone(),
                Micros::from_dollars(1).unwrap(),
                "prepaid",
                None,
                Actor::System,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    store.set_plan(plan(&account, 30)).await.unwrap();
    charge(&store, &account, "email_finder", 300, "u1").await;
    let idle = invoice_account(&store, "idle", 30).await;
    clock.set(datetime!(2026-11-16 00:00 UTC));
    let closed = store.close_due_invoices(100).await.unwrap();
    assert_eq!(closed.len(), 1, "the idle account gets none");
    let totals = closed[0].totals;
    assert_eq!(totals.subtotal, Micros::from_dollars(3).unwrap());
    assert_eq!(totals.credit_applied, Micros::from_dollars(1).unwrap());
    assert_eq!(totals.amount_due, Micros::from_dollars(2).unwrap());
    assert!(all_invoices(&store, &idle).await.is_empty());
    // Invoice numbers are global and gapless: the next one anywhere is 2.
    charge(&store, &idle, "export", 1, "e1").await;
    clock.set(datetime!(2026-12-16 00:00 UTC));
    let next = store.close_due_invoices(100).await.unwrap();
    assert_eq!(numbers(&next), vec![2]);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}
