//! Deterministic simulation of the store against a plain reference model.
//!
//! Each seed drives a random sequence of operations (usage, batches, replays,
//! grants, holds, expiry, clock jumps across cycles, restarts and concurrent
//! groups) against the real store (SQLite, or PostgreSQL with
//! `TOLLGATE_TEST_STORE=postgres`) with a `ManualClock`, and mirrors
//! them in `Model`: its own balances, holds, idempotency map, billing cycles and
//! a deliberately naive pricing (linear scan of tiers, explicit half-up
//! rounding), so a pricing or cycle bug in the core cannot hide behind itself.
//! After every step the ledger must verify and every account must equal the
//! model.
//!
//! A share of the steps (20, 35 or 50% per seed) is card money and Auto Top-Up
//! (`simulation/payments.rs`): cards, top-ups and their keys, a simulated processor
//! whose news arrives duplicated, reordered, late or not at all, refunds (ours and the
//! dashboard's), disputes, Auto Top-Up rules and 1–3 concurrent workers, cool-downs and
//! monthly caps. Each seed ends with a drain (restart, resume, recovery, every webhook
//! not yet acknowledged); the store must then hold exactly what the processor charged,
//! refunded and lost to disputes.
//!
//! ```text
//! cargo test -p tollgate-store --test simulation                 # 300 seeds × 100 steps
//! TOLLGATE_TEST_STORE=postgres cargo test -p tollgate-store --test simulation   # 40 seeds × 100 steps
//! TOLLGATE_SIM_SEED=123 cargo test -p tollgate-store --test simulation -- --nocapture
//! TOLLGATE_SIM_SEEDS=5000 cargo test -p tollgate-store --test simulation --release
//! ```
//! Also: `TOLLGATE_SIM_FIRST_SEED` (default 0), `TOLLGATE_SIM_STEPS` (default 100),
//! `TOLLGATE_SIM_PAYMENTS` (percentage of steps on card money and Auto Top-Up; default:
//! each seed draws 20, 35 or 50),
//! `TOLLGATE_SIM_THREADS` (default: available cores), `TOLLGATE_SIM_DIR` (where the
//! databases go; default /dev/shm when present, else the temp directory),
//! `TOLLGATE_SIM_KEEP_GOING=1` (run every seed and list each failure instead of stopping
//! at the first), `TOLLGATE_SIM_LOG_LINES` (how many recent steps a failure shows; 30).
//! Webhook news is always hostile: refunds and disputes before the store heard of the
//! payment's success, dashboard refunds while one of Tollgate's is pending (see
//! `simulation/payments.rs`).

#[path = "simulation/payments.rs"]
mod payments;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use time::{Date, Duration, Month, OffsetDateTime, Time};
use tollgate_core::commands::MAX_OPERATION_AMOUNT;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{
    AccountId, AccountPlan, ActionId, ActionSpec, Actor, Balances, BillingMode, Clock, DiscountPercent,
    GrantCommand, HoldCommand, HoldStatus, HoldTtl, IdempotencyKey, InsufficientFunds, ManualClock, Micros,
    NewAccount, PriceBook, PriceSource, Quantity, TierBasis, TierId, TierSpec, TransactionKind, UsageCommand,
};
use tollgate_store::testing::{Backend, TestDatabase};
use tollgate_store::{
    AccountRecord, HoldRecord, Idempotent, PageRequest, SharedStore, StoreError, StoreResult, StoreRules,
    TransactionLine, UsageRecord,
};

type Ts = OffsetDateTime;

thread_local! {
    /// The step being run, for the report when something panics.
    static CURRENT_STEP: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

// ===========================================================================
// The reference price book: plain data, priced by linear scans.
// ===========================================================================

#[derive(Debug)]
struct ModelTier {
    id: &'static str,
    min_spend: i64,
    discount: u8,
    overrides: &'static [(&'static str, i64)],
}

#[derive(Debug)]
struct ModelBook {
    actions: &'static [(&'static str, i64)],
    tiers: &'static [ModelTier],
    /// Use `default_price_book()` in the store (then this table, typed from
    /// PRODUCT.md, also checks the shipped book).
    is_default: bool,
}

/// PRODUCT.md's table, typed by hand.
#[rustfmt::skip]
static PRODUCT_BOOK: ModelBook = ModelBook {
    actions: &[
        ("email_finder", 30_000),
        ("email_validation", 5_000),
        ("export", 20_000),
        ("ui_search", 0),
        ("api", 20_000),
    ],
    tiers: &[
        ModelTier { id: "starter", min_spend: 0, discount: 0, overrides: &[("export", 20_000)] },
        ModelTier { id: "growth", min_spend: 100_000_000, discount: 10, overrides: &[("export", 19_600)] },
        ModelTier { id: "pro", min_spend: 500_000_000, discount: 20, overrides: &[("export", 19_200)] },
        ModelTier { id: "scale", min_spend: 2_000_000_000, discount: 35, overrides: &[("export", 18_800)] },
        ModelTier { id: "business", min_spend: 10_000_000_000, discount: 50, overrides: &[("export", 18_400)] },
        ModelTier { id: "enterprise", min_spend: 50_000_000_000, discount: 60, overrides: &[("export", 18_000)] },
    ],
    is_default: true,
};

/// Low thresholds so tiers are crossed (and retained, and lost) often; odd
/// prices and percentages so half-up rounding matters; a $10 action so
/// `quantity × price` can overflow; a 100% tier so charges become free.
#[rustfmt::skip]
static SMALL_BOOK: ModelBook = ModelBook {
    actions: &[
        ("email_finder", 30_000),
        ("email_validation", 5_000),
        ("export", 20_000),
        ("ui_search", 0),
        ("odd", 7),
        ("thirds", 333),
        ("premium", 10_000_000),
    ],
    tiers: &[
        ModelTier { id: "starter", min_spend: 0, discount: 0, overrides: &[] },
        ModelTier { id: "growth", min_spend: 1_000_000, discount: 7, overrides: &[("export", 19_999)] },
        ModelTier { id: "pro", min_spend: 5_000_000, discount: 33, overrides: &[("export", 19_000), ("odd", 5)] },
        ModelTier { id: "scale", min_spend: 20_000_000, discount: 50, overrides: &[("export", 15_000)] },
        ModelTier { id: "business", min_spend: 80_000_000, discount: 75, overrides: &[("premium", 2_400_000)] },
        ModelTier { id: "unlimited", min_spend: 300_000_000, discount: 100, overrides: &[("export", 1)] },
    ],
    is_default: false,
};

impl ModelBook {
    fn price_book(&self) -> PriceBook {
        if self.is_default {
            return default_price_book();
        }
        let actions = self
            .actions
            .iter()
            .map(|(id, list)| ActionSpec {
                id: ActionId::parse(id).unwrap(),
                name: format!("Action {id}"),
                unit: "unit".to_owned(),
                list_price: Micros::new(*list),
            })
            .collect();
        let tiers = self
            .tiers
            .iter()
            .map(|tier| TierSpec {
                id: TierId::parse(tier.id).unwrap(),
                name: format!("Tier {}", tier.id),
                min_spend: Micros::new(tier.min_spend),
                discount: DiscountPercent::new(tier.discount).unwrap(),
                price_overrides: tier
                    .overrides
                    .iter()
                    .map(|(action, price)| (ActionId::parse(action).unwrap(), Micros::new(*price)))
                    .collect(),
            })
            .collect();
        PriceBook::new(actions, tiers).expect("the small book is valid")
    }

    /// The last tier (scanning all of them) whose threshold `spend` reached.
    fn tier_for(&self, spend: i64) -> usize {
        let mut reached = 0;
        for (index, tier) in self.tiers.iter().enumerate() {
            if spend >= tier.min_spend {
                reached = index;
            }
        }
        reached
    }

    fn list_price(&self, action: &str) -> Option<i64> {
        self.actions
            .iter()
            .find(|(id, _)| *id == action)
            .map(|(_, list)| *list)
    }

    /// `(list, paid)` per unit at `tier`.
    fn price(&self, action: &str, tier: usize) -> Option<(i64, i64)> {
        let list = self.list_price(action)?;
        let tier = &self.tiers[tier];
        if let Some((_, price)) = tier.overrides.iter().find(|(id, _)| *id == action) {
            return Some((list, *price));
        }
        // list × (100 − d) / 100, half up, via the remainder.
        let numerator = list * i64::from(100 - tier.discount);
        let (quotient, remainder) = (numerator / 100, numerator % 100);
        let paid = if remainder * 2 >= 100 {
            quotient + 1
        } else {
            quotient
        };
        Some((list, paid))
    }
}

// ===========================================================================
// Reference billing cycles: enumerate month by month from the creation month.
// ===========================================================================

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Start of the `index`-th cycle of an account created at `created`.
fn cycle_start(created: Ts, index: i64) -> Ts {
    let months = i64::from(created.year()) * 12 + i64::from(u8::from(created.month()) - 1) + index;
    let year = i32::try_from(months.div_euclid(12)).unwrap();
    let month = u8::try_from(months.rem_euclid(12) + 1).unwrap();
    let day = created.day().min(days_in_month(year, month));
    Date::from_calendar_date(year, Month::try_from(month).unwrap(), day)
        .unwrap()
        .with_time(Time::MIDNIGHT)
        .assume_utc()
}

// ===========================================================================
// The reference model
// ===========================================================================

/// One expected line of an account's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JournalLine {
    kind: TransactionKind,
    /// Change of the total balance.
    amount: i64,
    /// Change of the available balance.
    available_amount: i64,
    balances_after: Balances,
    /// The hold a hold line (placed, released, captured) is about.
    reference: Option<String>,
}

#[derive(Clone, Debug)]
struct ModelAccount {
    created_at: Ts,
    available: i64,
    held: i64,
    /// What Sales agreed (set straight in the database, see `Step::SalesPlan`).
    personal_discount: Option<u8>,
    custom_prices: BTreeMap<String, i64>,
    /// `Some` for an invoice account.
    credit_limit: Option<i64>,
    /// Every journal line, oldest first (line `i` has sequence `i + 1`).
    journal: Vec<JournalLine>,
    /// Every usage record: when, which action, how much.
    usage: Vec<(Ts, String, i64)>,
    /// Which cycle (0 = the creation cycle) the `cycle_*` totals belong to.
    cycle_index: i64,
    cycle_spend: i64,
    previous_spend: i64,
    lifetime_spend: i64,
    cycle_savings: i64,
    lifetime_savings: i64,
}

impl ModelAccount {
    fn balances(&self) -> Balances {
        Balances {
            available: Micros::new(self.available),
            held: Micros::new(self.held),
        }
    }

    /// What a debit may take: the available balance plus any credit line.
    fn spendable(&self) -> i64 {
        self.available + self.credit_limit.unwrap_or(0)
    }

    /// Moves the balances and appends the journal line that says so.
    fn append(
        &mut self,
        kind: TransactionKind,
        available_delta: i64,
        held_delta: i64,
        reference: Option<&str>,
    ) {
        self.available += available_delta;
        self.held += held_delta;
        self.journal.push(JournalLine {
            kind,
            amount: available_delta + held_delta,
            available_amount: available_delta,
            balances_after: self.balances(),
            reference: reference.map(str::to_owned),
        });
    }

    fn sequence(&self) -> i64 {
        self.journal.len() as i64
    }

    /// Moves the totals into the cycle containing `now`: the cycle just ended
    /// becomes the previous one, a gap retains nothing.
    fn roll(&mut self, now: Ts) -> Option<&'static str> {
        let mut index = self.cycle_index;
        while cycle_start(self.created_at, index + 1) <= now {
            index += 1;
        }
        if index == self.cycle_index {
            return None;
        }
        let happened = match (index == self.cycle_index + 1, self.cycle_spend > 0) {
            (true, true) => "cycle rolled, spend retained",
            (false, true) => "cycle skipped, spend dropped",
            (_, false) => "cycle rolled without spend",
        };
        self.previous_spend = if index == self.cycle_index + 1 {
            self.cycle_spend
        } else {
            0
        };
        self.cycle_spend = 0;
        self.cycle_savings = 0;
        self.cycle_index = index;
        Some(happened)
    }
}

#[derive(Clone, Debug)]
struct ModelHold {
    id: String,
    account: String,
    action: String,
    amount: i64,
    status: HoldStatus,
    expires_at: Ts,
    created_at: Ts,
    closed_at: Option<Ts>,
    captured: Option<i64>,
    balances_after: Balances,
}

impl ModelHold {
    fn record(&self) -> HoldRecord {
        HoldRecord {
            id: self.id.clone(),
            account: AccountId::parse(&self.account).unwrap(),
            action: ActionId::parse(&self.action).unwrap(),
            amount: Micros::new(self.amount),
            status: self.status,
            expires_at: self.expires_at,
            created_at: self.created_at,
            closed_at: self.closed_at,
            captured_amount: self.captured.map(Micros::new),
            balances_after: self.balances_after,
        }
    }
}

/// What an idempotency key was first used for (successes only).
#[derive(Clone, Debug)]
enum ModelKey {
    Usage {
        action: String,
        quantity: u64,
        record: UsageRecord,
    },
    Grant {
        amount: i64,
        reason: String,
        line: TransactionLine,
    },
    Hold {
        action: String,
        amount: i64,
        ttl: i64,
        /// The hold as first returned, whatever happened to it since.
        placed: HoldRecord,
    },
}

#[derive(Clone)]
struct Model {
    book: &'static ModelBook,
    basis: TierBasis,
    version: String,
    accounts: BTreeMap<String, ModelAccount>,
    holds: BTreeMap<String, ModelHold>,
    keys: HashMap<(String, String), ModelKey>,
    /// Cards, top-ups, refunds, disputes and Auto Top-Up rules (`payments.rs`).
    pay: payments::PayModel,
    /// How often interesting situations arose: evidence the runs cover them.
    counters: BTreeMap<&'static str, u64>,
}

/// A store operation.
#[derive(Clone, Debug)]
enum Op {
    CreateAccount(String),
    Usage(UsageCommand),
    Batch(Vec<UsageCommand>),
    Grant(GrantCommand),
    PlaceHold(HoldCommand),
    Capture(String, Quantity),
    Void(String),
    ExpireHolds(usize),
    /// Card money and Auto Top-Up (`payments.rs`).
    Pay(payments::PayOp),
}

/// What the store answered.
#[derive(Debug)]
enum Outcome {
    Account(StoreResult<AccountRecord>),
    Usage(StoreResult<Idempotent<UsageRecord>>),
    Batch(StoreResult<Vec<StoreResult<Idempotent<UsageRecord>>>>),
    Grant(StoreResult<Idempotent<TransactionLine>>),
    Hold(StoreResult<Idempotent<HoldRecord>>),
    Capture(StoreResult<(HoldRecord, UsageRecord)>),
    Void(StoreResult<HoldRecord>),
    Expired(StoreResult<usize>),
    Pay(payments::PayOutcome),
}

type Check = Result<(), String>;

fn same<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Check {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: store says {got:?}, model says {want:?}"))
    }
}

/// `StoreError` has no `PartialEq`; its `Debug` form carries every field.
fn expect_err<T: Debug>(observed: &StoreResult<T>, want: StoreError) -> Check {
    match observed {
        Err(error) if format!("{error:?}") == format!("{want:?}") => Ok(()),
        other => Err(format!("expected Err({want:?}), store says {other:?}")),
    }
}

fn expect_ok<T: Debug>(observed: &StoreResult<T>) -> Result<&T, String> {
    observed
        .as_ref()
        .map_err(|error| format!("expected success, store says Err({error:?})"))
}

fn not_found(what: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_owned(),
    }
}

fn insufficient(available: i64, required: i64) -> StoreError {
    StoreError::InsufficientFunds(InsufficientFunds {
        spendable: Micros::new(available.max(0)),
        required: Micros::new(required),
    })
}

/// The account and hold state an operation may undo when it is refused.
struct Undo {
    account: (String, ModelAccount),
    holds: Vec<ModelHold>,
}

impl Model {
    fn tier(&self, account: &ModelAccount) -> usize {
        match self.basis {
            TierBasis::Cycle => self
                .book
                .tier_for(account.cycle_spend)
                .max(self.book.tier_for(account.previous_spend)),
            TierBasis::Lifetime => self.book.tier_for(account.lifetime_spend),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.counters.entry(what).or_default() += 1;
    }

    fn roll_all(&mut self, now: Ts) {
        let mut happened = Vec::new();
        for account in self.accounts.values_mut() {
            happened.extend(account.roll(now));
        }
        for what in happened {
            self.count(what);
        }
    }

    /// `(list, paid, source)` per unit: a custom price wins, else the lower of
    /// the tier's price and the personal-discount price.
    fn unit_price(
        &self,
        account: &ModelAccount,
        action: &str,
        tier: usize,
    ) -> Option<(i64, i64, PriceSource)> {
        let (list, tier_price) = self.book.price(action, tier)?;
        if let Some(custom) = account.custom_prices.get(action) {
            return Some((list, *custom, PriceSource::Custom));
        }
        if let Some(percent) = account.personal_discount {
            let numerator = list * i64::from(100 - percent);
            let personal = numerator / 100 + i64::from(numerator % 100 >= 50);
            if personal < tier_price {
                return Some((list, personal, PriceSource::PersonalDiscount));
            }
        }
        Some((list, tier_price, PriceSource::Tier))
    }

    /// Records a priced charge on the spend totals and the usage log.
    fn record_spend(
        &mut self,
        account_id: &str,
        action: &str,
        amount: i64,
        list_amount: i64,
        tier: usize,
        now: Ts,
    ) {
        let account = self.accounts.get_mut(account_id).unwrap();
        account.cycle_spend += amount;
        account.lifetime_spend += amount;
        account.cycle_savings += (list_amount - amount).max(0);
        account.lifetime_savings += (list_amount - amount).max(0);
        account.usage.push((now, action.to_owned(), amount));
        let basis_spend = match self.basis {
            TierBasis::Cycle => account.cycle_spend,
            TierBasis::Lifetime => account.lifetime_spend,
        };
        let earned_this_cycle = self.book.tier_for(basis_spend - amount);
        let after = self.tier(&self.accounts[account_id]);
        if amount == 0 {
            self.count("charge was free");
        }
        if after > tier {
            self.count("charge crossed a threshold (priced at the old tier)");
        }
        if tier > earned_this_cycle {
            self.count("charge priced at a tier retained from the previous cycle");
        }
        self.count(
            [
                "priced at tier 0",
                "priced at tier 1",
                "priced at tier 2",
                "priced at tier 3",
                "priced at tier 4+",
            ][tier.min(4)],
        );
    }

    /// Releases the account's holds whose time ran out, oldest expiry first,
    /// as the store does whenever it writes to an account.
    fn expire_due(&mut self, account_id: &str, now: Ts) -> Undo {
        let mut undo = Undo {
            account: (account_id.to_owned(), self.accounts[account_id].clone()),
            holds: Vec::new(),
        };
        let mut due: Vec<(Ts, String)> = self
            .holds
            .values()
            .filter(|hold| {
                hold.account == account_id && hold.status == HoldStatus::Active && hold.expires_at <= now
            })
            .map(|hold| (hold.expires_at, hold.id.clone()))
            .collect();
        due.sort();
        for (_, hold_id) in due {
            undo.holds.push(self.holds[&hold_id].clone());
            self.release(&hold_id, HoldStatus::Expired, now);
        }
        if !undo.holds.is_empty() {
            self.count("holds released lazily by a write");
        }
        undo
    }

    /// Void or expiry: held → available, one journal line.
    fn release(&mut self, hold_id: &str, status: HoldStatus, now: Ts) {
        let hold = self.holds.get_mut(hold_id).unwrap();
        let account = self.accounts.get_mut(&hold.account).unwrap();
        account.append(
            TransactionKind::HoldReleased,
            hold.amount,
            -hold.amount,
            Some(&hold.id),
        );
        hold.status = status;
        hold.closed_at = Some(now);
        hold.balances_after = account.balances();
    }

    fn undo(&mut self, undo: Undo) {
        self.accounts.insert(undo.account.0, undo.account.1);
        for hold in undo.holds {
            self.holds.insert(hold.id.clone(), hold);
        }
    }

    fn apply(&mut self, op: &Op, outcome: &Outcome, now: Ts) -> Check {
        self.roll_all(now);
        match (op, outcome) {
            (Op::CreateAccount(id), Outcome::Account(observed)) => self.create_account(id, observed, now),
            (Op::Usage(command), Outcome::Usage(observed)) => self.charge(command, observed, now),
            (Op::Batch(commands), Outcome::Batch(observed)) => {
                let results = expect_ok(observed)?;
                same("batch result count", results.len(), commands.len())?;
                for (index, (command, result)) in commands.iter().zip(results).enumerate() {
                    self.charge(command, result, now)
                        .map_err(|problem| format!("batch event {index}: {problem}"))?;
                }
                Ok(())
            }
            (Op::Grant(command), Outcome::Grant(observed)) => self.grant(command, observed, now),
            (Op::PlaceHold(command), Outcome::Hold(observed)) => self.place_hold(command, observed, now),
            (Op::Capture(hold_id, quantity), Outcome::Capture(observed)) => {
                self.capture(hold_id, *quantity, observed, now)
            }
            (Op::Void(hold_id), Outcome::Void(observed)) => self.void(hold_id, observed, now),
            (Op::ExpireHolds(limit), Outcome::Expired(observed)) => self.expire_holds(*limit, observed, now),
            (Op::Pay(op), Outcome::Pay(observed)) => self.apply_pay(op, observed, now),
            (op, outcome) => Err(format!("outcome {outcome:?} does not belong to {op:?}")),
        }
    }

    fn create_account(&mut self, id: &str, observed: &StoreResult<AccountRecord>, now: Ts) -> Check {
        if self.accounts.contains_key(id) {
            return expect_err(observed, StoreError::AccountExists(AccountId::parse(id).unwrap()));
        }
        let record = expect_ok(observed)?;
        let account = ModelAccount {
            created_at: now,
            available: 0,
            held: 0,
            personal_discount: None,
            custom_prices: BTreeMap::new(),
            credit_limit: None,
            journal: Vec::new(),
            usage: Vec::new(),
            cycle_index: 0,
            cycle_spend: 0,
            previous_spend: 0,
            lifetime_spend: 0,
            cycle_savings: 0,
            lifetime_savings: 0,
        };
        same("new account id", record.id.as_str(), id)?;
        same("new account created_at", record.created_at, now)?;
        same("new account mode", record.mode, BillingMode::Prepaid)?;
        same("new account plan", &record.plan, &AccountPlan::default())?;
        same(
            "new account cycle start",
            record.spend.cycle_start,
            cycle_start(now, 0),
        )?;
        same("new account balances", record.balances, Balances::default())?;
        self.accounts.insert(id.to_owned(), account);
        Ok(())
    }

    fn charge(
        &mut self,
        command: &UsageCommand,
        observed: &StoreResult<Idempotent<UsageRecord>>,
        now: Ts,
    ) -> Check {
        let account_id = command.account.as_str();
        let key = (account_id.to_owned(), command.idempotency_key.as_str().to_owned());
        if let Some(first) = self.keys.get(&key) {
            // A replay: nothing moves, not even a lazy expiry.
            return match first {
                ModelKey::Usage {
                    action,
                    quantity,
                    record,
                } if action == command.action.as_str() && *quantity == command.quantity.get() => {
                    let replay = expect_ok(observed)?;
                    same("replayed flag", replay.replayed, true)?;
                    same("replayed record", &replay.value, record)
                }
                _ => expect_err(observed, StoreError::IdempotencyConflict { key: key.1 }),
            };
        }
        if !self.accounts.contains_key(account_id) {
            return expect_err(observed, not_found("account", account_id));
        }
        let undo = self.expire_due(account_id, now);
        let account = &self.accounts[account_id];
        let tier = self.tier(account);
        let Some((list, paid, source)) = self.unit_price(account, command.action.as_str(), tier) else {
            self.undo(undo);
            return expect_err(observed, StoreError::UnknownAction(command.action.to_string()));
        };
        let quantity = i64::try_from(command.quantity.get()).unwrap();
        let (Some(amount), Some(list_amount)) = (paid.checked_mul(quantity), list.checked_mul(quantity))
        else {
            self.undo(undo);
            return expect_err(observed, StoreError::ChargeTooLarge);
        };
        if amount > 0 && amount > account.spendable() {
            let spendable = account.spendable();
            if undo.holds.is_empty() {
                self.count("charge refused (402)");
            } else {
                self.count("charge refused (402) even after a lazy release");
            }
            self.undo(undo);
            return expect_err(observed, insufficient(spendable, amount));
        }
        self.accounts
            .get_mut(account_id)
            .unwrap()
            .append(TransactionKind::Usage, -amount, 0, None);
        self.record_spend(
            account_id,
            command.action.as_str(),
            amount,
            list_amount,
            tier,
            now,
        );
        let balances = self.accounts[account_id].balances();
        let charged = expect_ok(observed)?;
        same("replayed flag", charged.replayed, false)?;
        let record = &charged.value;
        same("usage account", record.account.as_str(), account_id)?;
        same("usage action", &record.action, &command.action)?;
        same("usage quantity", record.quantity, command.quantity)?;
        same("usage unit price", record.unit_price.get(), paid)?;
        same("usage unit list price", record.unit_list_price.get(), list)?;
        same("usage amount", record.amount.get(), amount)?;
        same("usage list amount", record.list_amount.get(), list_amount)?;
        same("usage price source", record.price_source, source)?;
        same("usage tier", record.tier.as_str(), self.book.tiers[tier].id)?;
        same(
            "usage price book version",
            record.price_book_version.as_str(),
            self.version.as_str(),
        )?;
        same("usage balances after", record.balances_after, balances)?;
        same("usage hold", &record.hold_id, &None)?;
        same("usage created_at", record.created_at, now)?;
        self.keys.insert(
            key,
            ModelKey::Usage {
                action: command.action.to_string(),
                quantity: command.quantity.get(),
                record: record.clone(),
            },
        );
        Ok(())
    }

    fn grant(
        &mut self,
        command: &GrantCommand,
        observed: &StoreResult<Idempotent<TransactionLine>>,
        now: Ts,
    ) -> Check {
        let account_id = command.account.as_str();
        let key = command
            .idempotency_key
            .as_ref()
            .map(|key| (account_id.to_owned(), key.as_str().to_owned()));
        if let Some(first) = key.as_ref().and_then(|key| self.keys.get(key)) {
            return match first {
                ModelKey::Grant { amount, reason, line }
                    if *amount == command.amount.get() && *reason == command.reason =>
                {
                    let replay = expect_ok(observed)?;
                    same("replayed flag", replay.replayed, true)?;
                    same("replayed grant", &replay.value, line)
                }
                _ => expect_err(observed, StoreError::IdempotencyConflict { key: key.unwrap().1 }),
            };
        }
        if !self.accounts.contains_key(account_id) {
            return expect_err(observed, not_found("account", account_id));
        }
        let undo = self.expire_due(account_id, now);
        let amount = command.amount.get();
        let spendable = self.accounts[account_id].spendable();
        if amount < 0 && -amount > spendable {
            self.undo(undo);
            return expect_err(observed, insufficient(spendable, -amount));
        }
        let account = self.accounts.get_mut(account_id).unwrap();
        account.append(TransactionKind::Grant, amount, 0, None);
        let granted = expect_ok(observed)?;
        same("replayed flag", granted.replayed, false)?;
        let line = &granted.value;
        same("grant account", line.account.as_str(), account_id)?;
        same("grant sequence", line.sequence, account.sequence())?;
        same("grant kind", line.kind, TransactionKind::Grant)?;
        same("grant amount", line.amount.get(), amount)?;
        same("grant available amount", line.available_amount.get(), amount)?;
        same("grant balances after", line.balances_after, account.balances())?;
        same(
            "grant description",
            line.description.as_str(),
            command.reason.as_str(),
        )?;
        same("grant reference", &line.reference, &None)?;
        same("grant created_at", line.created_at, now)?;
        if let Some(key) = key {
            self.keys.insert(
                key,
                ModelKey::Grant {
                    amount,
                    reason: command.reason.clone(),
                    line: line.clone(),
                },
            );
        }
        Ok(())
    }

    fn place_hold(
        &mut self,
        command: &HoldCommand,
        observed: &StoreResult<Idempotent<HoldRecord>>,
        now: Ts,
    ) -> Check {
        let account_id = command.account.as_str();
        let key = (account_id.to_owned(), command.idempotency_key.as_str().to_owned());
        let ttl = command.ttl.duration().whole_seconds();
        if let Some(first) = self.keys.get(&key) {
            return match first {
                ModelKey::Hold {
                    action,
                    amount,
                    ttl: first_ttl,
                    placed,
                } if action == command.action.as_str()
                    && *amount == command.amount.get()
                    && *first_ttl == ttl =>
                {
                    // A replay answers with the original result (API.md),
                    // even if the hold was captured or released since.
                    let replay = expect_ok(observed)?;
                    same("replayed flag", replay.replayed, true)?;
                    same("replayed hold", &replay.value, placed)
                }
                _ => expect_err(observed, StoreError::IdempotencyConflict { key: key.1 }),
            };
        }
        if self.book.list_price(command.action.as_str()).is_none() {
            return expect_err(observed, StoreError::UnknownAction(command.action.to_string()));
        }
        if !self.accounts.contains_key(account_id) {
            return expect_err(observed, not_found("account", account_id));
        }
        let undo = self.expire_due(account_id, now);
        let amount = command.amount.get();
        let spendable = self.accounts[account_id].spendable();
        if amount > spendable {
            self.undo(undo);
            return expect_err(observed, insufficient(spendable, amount));
        }
        let account = self.accounts.get_mut(account_id).unwrap();
        account.append(TransactionKind::HoldPlaced, -amount, amount, None);
        let placed = expect_ok(observed)?;
        // The id is the store's to choose; the placement line refers to it.
        account.journal.last_mut().unwrap().reference = Some(placed.value.id.clone());
        same("replayed flag", placed.replayed, false)?;
        let hold = ModelHold {
            id: placed.value.id.clone(),
            account: account_id.to_owned(),
            action: command.action.to_string(),
            amount,
            status: HoldStatus::Active,
            expires_at: now + command.ttl.duration(),
            created_at: now,
            closed_at: None,
            captured: None,
            balances_after: account.balances(),
        };
        same("placed hold", &placed.value, &hold.record())?;
        if self.holds.contains_key(&hold.id) {
            return Err(format!("hold id {} reused", hold.id));
        }
        self.keys.insert(
            key,
            ModelKey::Hold {
                action: hold.action.clone(),
                amount,
                ttl,
                placed: placed.value.clone(),
            },
        );
        self.holds.insert(hold.id.clone(), hold);
        Ok(())
    }

    fn capture(
        &mut self,
        hold_id: &str,
        quantity: Quantity,
        observed: &StoreResult<(HoldRecord, UsageRecord)>,
        now: Ts,
    ) -> Check {
        let Some(hold) = self.holds.get(hold_id).cloned() else {
            return expect_err(observed, not_found("hold", hold_id));
        };
        // The lazy expiry stays committed even when the capture is refused
        // because the hold is no longer active.
        let undo = self.expire_due(&hold.account, now);
        let status = self.holds[hold_id].status;
        if status != HoldStatus::Active {
            return expect_err(observed, StoreError::HoldNotActive(status));
        }
        let account = &self.accounts[&hold.account];
        let tier = self.tier(account);
        let (list, paid, source) = self
            .unit_price(account, &hold.action, tier)
            .expect("holds name known actions");
        let units = i64::try_from(quantity.get()).unwrap();
        let (Some(cost), Some(list_amount)) = (paid.checked_mul(units), list.checked_mul(units)) else {
            self.undo(undo);
            return expect_err(observed, StoreError::ChargeTooLarge);
        };
        if cost > hold.amount {
            self.undo(undo);
            return expect_err(
                observed,
                StoreError::CaptureExceedsHold {
                    held: Micros::new(hold.amount),
                    cost: Micros::new(cost),
                },
            );
        }
        self.accounts.get_mut(&hold.account).unwrap().append(
            TransactionKind::Usage,
            hold.amount - cost,
            -hold.amount,
            Some(hold_id),
        );
        self.record_spend(&hold.account, &hold.action, cost, list_amount, tier, now);
        let balances = self.accounts[&hold.account].balances();
        let model_hold = self.holds.get_mut(hold_id).unwrap();
        model_hold.status = HoldStatus::Captured;
        model_hold.closed_at = Some(now);
        model_hold.captured = Some(cost);
        model_hold.balances_after = balances;
        let (record, usage) = expect_ok(observed)?;
        same("captured hold", record, &model_hold.record())?;
        same(
            "capture usage account",
            usage.account.as_str(),
            hold.account.as_str(),
        )?;
        same(
            "capture usage action",
            usage.action.as_str(),
            hold.action.as_str(),
        )?;
        same("capture usage quantity", usage.quantity, quantity)?;
        same("capture unit price", usage.unit_price.get(), paid)?;
        same("capture unit list price", usage.unit_list_price.get(), list)?;
        same("capture amount", usage.amount.get(), cost)?;
        same("capture list amount", usage.list_amount.get(), list_amount)?;
        same("capture price source", usage.price_source, source)?;
        same("capture tier", usage.tier.as_str(), self.book.tiers[tier].id)?;
        same("capture balances after", usage.balances_after, balances)?;
        same("capture hold id", usage.hold_id.as_deref(), Some(hold_id))?;
        same("capture created_at", usage.created_at, now)?;
        Ok(())
    }

    fn void(&mut self, hold_id: &str, observed: &StoreResult<HoldRecord>, now: Ts) -> Check {
        let Some(hold) = self.holds.get(hold_id).cloned() else {
            return expect_err(observed, not_found("hold", hold_id));
        };
        let _committed = self.expire_due(&hold.account, now);
        let status = self.holds[hold_id].status;
        if status != HoldStatus::Active {
            return expect_err(observed, StoreError::HoldNotActive(status));
        }
        self.release(hold_id, HoldStatus::Voided, now);
        same("voided hold", expect_ok(observed)?, &self.holds[hold_id].record())
    }

    /// The first `limit` due holds by expiry (then id: ids are time-ordered).
    fn expire_holds(&mut self, limit: usize, observed: &StoreResult<usize>, now: Ts) -> Check {
        let mut due: Vec<(Ts, String)> = self
            .holds
            .values()
            .filter(|hold| hold.status == HoldStatus::Active && hold.expires_at <= now)
            .map(|hold| (hold.expires_at, hold.id.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        for (_, hold_id) in &due {
            self.release(hold_id, HoldStatus::Expired, now);
        }
        same("holds expired", *expect_ok(observed)?, due.len())
    }
}

// ===========================================================================
// Executing operations
// ===========================================================================

async fn execute(store: SharedStore, op: Op) -> Outcome {
    match op {
        Op::CreateAccount(id) => Outcome::Account(
            store
                .create_account(
                    NewAccount::new(
                        AccountId::parse(&id).unwrap(),
                        &format!("Account {id}"),
                        &format!("{id}@sim.test"),
                    )
                    .unwrap(),
                )
                .await,
        ),
        Op::Usage(command) => Outcome::Usage(store.charge_usage(command).await),
        Op::Batch(commands) => Outcome::Batch(store.charge_usage_batch(commands).await),
        Op::Grant(command) => Outcome::Grant(store.grant(command).await),
        Op::PlaceHold(command) => Outcome::Hold(store.place_hold(command).await),
        Op::Capture(hold_id, quantity) => Outcome::Capture(store.capture_hold(&hold_id, quantity).await),
        Op::Void(hold_id) => Outcome::Void(store.void_hold(&hold_id).await),
        Op::ExpireHolds(limit) => Outcome::Expired(store.expire_holds(limit).await),
        Op::Pay(op) => Outcome::Pay(payments::execute(store, op).await),
    }
}

fn error_label(error: &StoreError) -> &'static str {
    match error {
        StoreError::NotFound { .. } => "not_found",
        StoreError::AccountExists(_) => "account_exists",
        StoreError::InsufficientFunds(_) => "insufficient_funds",
        StoreError::IdempotencyConflict { .. } => "idempotency_conflict",
        StoreError::UnknownAction(_) => "unknown_action",
        StoreError::Overflow(_) => "overflow",
        StoreError::HoldNotActive(HoldStatus::Expired) => "hold_not_active(expired)",
        StoreError::HoldNotActive(_) => "hold_not_active",
        StoreError::CaptureExceedsHold { .. } => "capture_exceeds_hold",
        StoreError::Conflict(_) => "conflict",
        StoreError::InvalidRefund(_) => "invalid_refund",
        StoreError::NoPaymentMethod => "no_payment_method",
        StoreError::Database(_) => "database",
        _ => "other_error",
    }
}

fn result_label<T>(result: &StoreResult<T>, replayed: impl Fn(&T) -> bool) -> &'static str {
    match result {
        Ok(value) if replayed(value) => "replayed",
        Ok(_) => "ok",
        Err(error) => error_label(error),
    }
}

fn outcome_labels(outcome: &Outcome) -> Vec<&'static str> {
    match outcome {
        Outcome::Account(result) => vec![result_label(result, |_| false)],
        Outcome::Usage(result) => vec![result_label(result, |value| value.replayed)],
        Outcome::Batch(Ok(results)) => results
            .iter()
            .map(|result| result_label(result, |value| value.replayed))
            .collect(),
        Outcome::Batch(Err(error)) => vec![error_label(error)],
        Outcome::Grant(result) => vec![result_label(result, |value| value.replayed)],
        Outcome::Hold(result) => vec![result_label(result, |value| value.replayed)],
        Outcome::Capture(result) => vec![result_label(result, |_| false)],
        Outcome::Void(result) => vec![result_label(result, |_| false)],
        Outcome::Expired(result) => vec![result_label(result, |_| false)],
        Outcome::Pay(outcome) => payments::labels(outcome),
    }
}

// ===========================================================================
// The driver
// ===========================================================================

/// How the results of a concurrent group are checked against the model.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// Ops on distinct accounts commute: any order gives the same results.
    Independent,
    /// Identical charges on one account (distinct keys, or one key for a
    /// retry storm): successes come first in serial order, each leaving less
    /// available than the one before, an original before its replays.
    IdenticalCharges,
    /// Anything: some permutation must explain every result.
    AnySerial,
    /// Identical writes (one idempotency key, one account's recharge): the one that
    /// wrote first, then the others, which must find it.
    FreshFirst,
}

#[derive(Debug)]
enum Step {
    One(&'static str, Op),
    Advance(&'static str, Duration),
    /// Advance the clock to (just past) a hold's expiry, then capture or void it.
    LetExpire(String, Duration, bool),
    Restart,
    Group(&'static str, Order, Vec<Op>),
    /// Card money and Auto Top-Up steps that need the simulated processor (`payments.rs`).
    Pay(&'static str, payments::PayStep),
    /// What Sales may agree, written straight into the database (the store
    /// has no API for it yet but prices with it): personal discount, custom
    /// prices, invoice billing with a credit limit.
    SalesPlan {
        account: String,
        personal_discount: Option<u8>,
        custom_prices: BTreeMap<String, i64>,
        credit_limit: Option<i64>,
    },
}

/// Shares of the steps spent on card money and Auto Top-Up (`payments.rs`), taken from
/// the same step budget: each seed draws one (`TOLLGATE_SIM_PAYMENTS`, a percentage,
/// fixes it for every seed).
const PAYMENT_SHARES: [f64; 3] = [0.2, 0.35, 0.5];

struct Sim {
    seed: u64,
    rng: StdRng,
    clock: Arc<ManualClock>,
    price_book: Arc<PriceBook>,
    database: TestDatabase,
    store: Option<SharedStore>,
    model: Model,
    next_id: u64,
    /// Usage commands refused with 402: retried later, evaluated afresh.
    refused: Vec<UsageCommand>,
    /// The card processor's side of every payment (`payments.rs`).
    processor: payments::Processor,
    /// This seed's share of payment steps.
    payment_share: f64,
    /// Accounts whose payment state the current step may have changed; every account's
    /// is compared when `check_every_account` is set.
    touched: std::collections::BTreeSet<String>,
    check_every_account: bool,
    stats: BTreeMap<String, u64>,
    log: Vec<String>,
}

fn open_store(
    database: &TestDatabase,
    price_book: &Arc<PriceBook>,
    basis: TierBasis,
    clock: &Arc<ManualClock>,
) -> SharedStore {
    database.open(StoreRules {
        price_book: price_book.clone(),
        tier_basis: basis,
        clock: clock.clone(),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    })
}

fn random_start(rng: &mut StdRng) -> Ts {
    let year = rng.random_range(2025..=2030);
    let month = rng.random_range(1..=12_u8);
    // Favour the month's last days so 29th–31st anchors are common.
    let last = days_in_month(year, month);
    let day = if rng.random_bool(0.4) {
        rng.random_range(last.saturating_sub(3).max(1)..=last)
    } else {
        rng.random_range(1..=last)
    };
    let time = Time::from_hms_micro(
        rng.random_range(0..24),
        rng.random_range(0..60),
        rng.random_range(0..60),
        rng.random_range(0..1_000_000),
    )
    .unwrap();
    Date::from_calendar_date(year, Month::try_from(month).unwrap(), day)
        .unwrap()
        .with_time(time)
        .assume_utc()
}

impl Sim {
    fn new(seed: u64, directory: &Path) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let book: &'static ModelBook = if rng.random_bool(0.5) {
            &SMALL_BOOK
        } else {
            &PRODUCT_BOOK
        };
        let basis = if rng.random_bool(0.7) {
            TierBasis::Cycle
        } else {
            TierBasis::Lifetime
        };
        let clock = Arc::new(ManualClock::new(random_start(&mut rng)));
        let payment_share = match env_number("TOLLGATE_SIM_PAYMENTS") {
            Some(percent) => (percent.min(100) as f64) / 100.0,
            None => *PAYMENT_SHARES.choose(&mut rng).unwrap(),
        };
        let price_book = Arc::new(book.price_book());
        let database = match Backend::from_env() {
            Backend::Sqlite => TestDatabase::sqlite_in(directory),
            Backend::Postgres => TestDatabase::of(Backend::Postgres),
        };
        let store = open_store(&database, &price_book, basis, &clock);
        Sim {
            seed,
            rng,
            clock,
            database,
            store: Some(store),
            model: Model {
                book,
                basis,
                version: price_book.version().to_owned(),
                accounts: BTreeMap::new(),
                holds: BTreeMap::new(),
                keys: HashMap::new(),
                pay: payments::PayModel::default(),
                counters: BTreeMap::new(),
            },
            price_book,
            next_id: 0,
            refused: Vec::new(),
            processor: payments::Processor::default(),
            payment_share,
            touched: Default::default(),
            check_every_account: true,
            stats: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn store(&self) -> SharedStore {
        self.store.clone().expect("the store is open")
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn tally(&mut self, label: impl Into<String>) {
        *self.stats.entry(label.into()).or_default() += 1;
    }

    // ----- generation ------------------------------------------------------

    fn account_ids(&self) -> Vec<String> {
        self.model.accounts.keys().cloned().collect()
    }

    /// An existing account, or now and then one that does not exist.
    fn pick_account(&mut self) -> String {
        let ids = self.account_ids();
        if ids.is_empty() || self.rng.random_bool(0.04) {
            return "ghost".to_owned();
        }
        ids.choose(&mut self.rng).unwrap().clone()
    }

    fn pick_action(&mut self) -> String {
        if self.rng.random_bool(0.03) {
            return "teleport".to_owned();
        }
        self.model
            .book
            .actions
            .choose(&mut self.rng)
            .unwrap()
            .0
            .to_owned()
    }

    /// The model's current unit price of `action` for `account`, if known.
    fn unit_price(&self, account: &str, action: &str) -> Option<i64> {
        let model_account = self.model.accounts.get(account)?;
        let tier = self.model.tier(model_account);
        self.model
            .unit_price(model_account, action, tier)
            .map(|(_, paid, _)| paid)
    }

    /// What the account may spend now (holds due but not yet released aside).
    fn available(&self, account: &str) -> i64 {
        self.model
            .accounts
            .get(account)
            .map_or(0, ModelAccount::spendable)
    }

    fn sales_plan(&mut self) -> Step {
        let account = self.account_ids().choose(&mut self.rng).unwrap().clone();
        let current = &self.model.accounts[&account];
        let (mut personal_discount, mut custom_prices, mut credit_limit) = (
            current.personal_discount,
            current.custom_prices.clone(),
            current.credit_limit,
        );
        let available = current.available;
        if self.rng.random_bool(0.4) {
            personal_discount = self.rng.random_bool(0.7).then(|| self.rng.random_range(0..=100));
        }
        if self.rng.random_bool(0.4) {
            let (action, list) = *self.model.book.actions.choose(&mut self.rng).unwrap();
            if self.rng.random_bool(0.75) {
                // Anywhere from free to above list (savings then stay at zero).
                custom_prices.insert(action.to_owned(), self.rng.random_range(0..=list * 2 + 1_000));
            } else {
                custom_prices.remove(action);
            }
        }
        if self.rng.random_bool(0.3) {
            // The schema keeps available + credit limit ≥ 0: never cut below what is owed.
            let owed = (-available).max(0);
            credit_limit = match credit_limit {
                Some(_) if owed == 0 && self.rng.random_bool(0.4) => None,
                _ => Some(owed + self.rng.random_range(1..=500) * 1_000_000),
            };
        }
        Step::SalesPlan {
            account,
            personal_discount,
            custom_prices,
            credit_limit,
        }
    }

    async fn write_sales_plan(&mut self, step: &Step) -> Check {
        let Step::SalesPlan {
            account,
            personal_discount,
            custom_prices,
            credit_limit,
        } = step
        else {
            unreachable!()
        };
        if let Some(path) = self.database.sqlite_path() {
            write_sales_plan_sqlite(&path, account, *personal_discount, custom_prices, *credit_limit)?;
        } else {
            write_sales_plan_postgres(
                self.database.url(),
                account,
                *personal_discount,
                custom_prices,
                *credit_limit,
            )
            .await?;
        }
        let model = self.model.accounts.get_mut(account).unwrap();
        model.personal_discount = *personal_discount;
        model.custom_prices = custom_prices.clone();
        model.credit_limit = *credit_limit;
        if credit_limit.is_some() {
            self.model.count("invoice account (credit line)");
        }
        Ok(())
    }
}

/// Sales' plan written straight into the tables, as an operator's tool would.
fn write_sales_plan_sqlite(
    path: &Path,
    account: &str,
    personal_discount: Option<u8>,
    custom_prices: &BTreeMap<String, i64>,
    credit_limit: Option<i64>,
) -> Check {
    let mut connection = rusqlite::Connection::open(path).map_err(|error| error.to_string())?;
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|error| error.to_string())?;
    let transaction = connection.transaction().map_err(|error| error.to_string())?;
    transaction
        .execute(
            "UPDATE accounts SET personal_discount_percent = ?2, billing_mode = ?3, credit_limit_micros = ?4 \
                 WHERE id = ?1",
            rusqlite::params![
                account,
                personal_discount.map(i64::from),
                if credit_limit.is_some() {
                    "invoice"
                } else {
                    "prepaid"
                },
                credit_limit.unwrap_or(0)
            ],
        )
        .map_err(|error| format!("plan update: {error}"))?;
    transaction
        .execute("DELETE FROM account_prices WHERE account_id = ?1", [account])
        .map_err(|error| error.to_string())?;
    for (action, price) in custom_prices {
        transaction
            .execute(
                "INSERT INTO account_prices (account_id, action, price_micros) VALUES (?1, ?2, ?3)",
                rusqlite::params![account, action, price],
            )
            .map_err(|error| error.to_string())?;
    }
    transaction.commit().map_err(|error| error.to_string())?;
    Ok(())
}

/// The same plan written into PostgreSQL's tables.
async fn write_sales_plan_postgres(
    url: &str,
    account: &str,
    personal_discount: Option<u8>,
    custom_prices: &BTreeMap<String, i64>,
    credit_limit: Option<i64>,
) -> Check {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let transaction = client.transaction().await.map_err(|error| error.to_string())?;
    transaction
        .execute(
            "UPDATE accounts SET personal_discount_percent = $2, billing_mode = $3, credit_limit_micros = $4 \
             WHERE id = $1",
            &[
                &account,
                &personal_discount.map(i64::from),
                &if credit_limit.is_some() {
                    "invoice"
                } else {
                    "prepaid"
                },
                &credit_limit.unwrap_or(0),
            ],
        )
        .await
        .map_err(|error| format!("plan update: {error}"))?;
    transaction
        .execute("DELETE FROM account_prices WHERE account_id = $1", &[&account])
        .await
        .map_err(|error| error.to_string())?;
    for (action, price) in custom_prices {
        transaction
            .execute(
                "INSERT INTO account_prices (account_id, action, price_micros) VALUES ($1, $2, $3)",
                &[&account, action, price],
            )
            .await
            .map_err(|error| error.to_string())?;
    }
    transaction.commit().await.map_err(|error| error.to_string())?;
    Ok(())
}

impl Sim {
    fn quantity_for(&mut self, account: &str, action: &str, budget: i64) -> u64 {
        let unit = self.unit_price(account, action).unwrap_or(0);
        let roll = self.rng.random_range(0..100);
        let quantity = match roll {
            0..55 => self.rng.random_range(1..=20),
            55..75 => self.rng.random_range(1..=5_000),
            // Around what fits: exactly, one more, two more.
            75..88 if unit > 0 => u64::try_from(budget.max(0) / unit).unwrap() + self.rng.random_range(0..=2),
            75..88 => self.rng.random_range(1..=100),
            88..97 => self.rng.random_range(10_000..=5_000_000),
            _ => tollgate_core::ids::MAX_QUANTITY,
        };
        quantity.clamp(1, tollgate_core::ids::MAX_QUANTITY)
    }

    fn usage_command(&mut self, account: &str) -> UsageCommand {
        let action = self.pick_action();
        let budget = self.available(account);
        let quantity = self.quantity_for(account, &action, budget);
        let key = self.fresh("k");
        usage_command(account, &action, quantity, &key)
    }

    fn grant_command(&mut self, account: &str, negative: bool) -> GrantCommand {
        let amount = if negative {
            let available = self.available(account).max(0);
            -self
                .rng
                .random_range(1..=available.max(1) + available / 3 + 1)
                .min(MAX_OPERATION_AMOUNT.get())
        } else {
            match self.rng.random_range(0..10) {
                0 => self.rng.random_range(1..=10_000),
                1..=5 => self.rng.random_range(1..=50) * 1_000_000 + self.rng.random_range(0..1_000_000),
                6..=8 => self.rng.random_range(50..=3_000) * 1_000_000,
                _ => self.rng.random_range(3_000..=200_000) * 1_000_000,
            }
        };
        let key = self.rng.random_bool(0.6).then(|| self.fresh("g"));
        let reason = (*["goodwill", "migration credit", "correction"]
            .choose(&mut self.rng)
            .unwrap())
        .to_owned();
        grant_command(account, amount, reason, key.as_deref())
    }

    fn hold_command(&mut self, account: &str) -> HoldCommand {
        let action = if self.rng.random_bool(0.03) {
            "teleport".to_owned()
        } else {
            self.model
                .book
                .actions
                .choose(&mut self.rng)
                .unwrap()
                .0
                .to_owned()
        };
        let available = self.available(account);
        let amount = match self.rng.random_range(0..10) {
            0..=5 => self.rng.random_range(1..=available.max(1)),
            6..=7 => self.rng.random_range(1..=1_000_000),
            _ => available + self.rng.random_range(1..=1_000_000),
        }
        .clamp(1, MAX_OPERATION_AMOUNT.get());
        let ttl = if self.rng.random_bool(0.8) {
            self.rng.random_range(1..=900)
        } else {
            self.rng.random_range(900..=86_400)
        };
        let key = self.fresh("h");
        hold_command(account, &action, amount, ttl, &key)
    }

    fn pick_hold(&mut self, account: Option<&str>) -> Option<String> {
        let holds: Vec<&ModelHold> = self
            .model
            .holds
            .values()
            .filter(|hold| account.is_none_or(|account| hold.account == account))
            .collect();
        let active: Vec<&ModelHold> = holds
            .iter()
            .copied()
            .filter(|h| h.status == HoldStatus::Active)
            .collect();
        let pool = if !active.is_empty() && self.rng.random_bool(0.8) {
            active
        } else {
            holds
        };
        pool.choose(&mut self.rng).map(|hold| hold.id.clone())
    }

    fn capture_or_void(&mut self, account: Option<&str>) -> Option<Op> {
        if account.is_none() && self.rng.random_bool(0.04) {
            return Some(Op::Void("hold_missing".to_owned()));
        }
        let hold_id = self.pick_hold(account)?;
        if self.rng.random_bool(0.35) {
            return Some(Op::Void(hold_id));
        }
        let hold = &self.model.holds[&hold_id];
        let (account, action, amount) = (hold.account.clone(), hold.action.clone(), hold.amount);
        let unit = self.unit_price(&account, &action).unwrap_or(0);
        let quantity = if unit > 0 && self.rng.random_bool(0.8) {
            let fits = u64::try_from(amount / unit).unwrap();
            match self.rng.random_range(0..4) {
                0 => fits + 1,
                1 => fits,
                _ => self.rng.random_range(1..=fits.max(1)),
            }
        } else {
            self.quantity_for(&account, &action, amount)
        };
        Some(Op::Capture(hold_id, quantity_of(quantity)))
    }

    /// The same key again, with the same body or a different one.
    fn replay(&mut self, same_body: bool) -> Option<Op> {
        let mut keys: Vec<&(String, String)> = self.model.keys.keys().collect();
        keys.sort();
        let (account, key) = (*keys.choose(&mut self.rng)?).clone();
        let first = self.model.keys[&(account.clone(), key.clone())].clone();
        Some(match (first, same_body) {
            (ModelKey::Usage { action, quantity, .. }, true) => {
                Op::Usage(usage_command(&account, &action, quantity, &key))
            }
            (ModelKey::Usage { action, quantity, .. }, false) => {
                if self.rng.random_bool(0.3) {
                    // Another kind of request under the same key.
                    Op::Grant(grant_command(
                        &account,
                        1_000_000,
                        "goodwill".to_owned(),
                        Some(&key),
                    ))
                } else {
                    let other = if quantity == 1 { 2 } else { quantity - 1 };
                    Op::Usage(usage_command(&account, &action, other, &key))
                }
            }
            (ModelKey::Grant { amount, reason, .. }, true) => {
                Op::Grant(grant_command(&account, amount, reason, Some(&key)))
            }
            (ModelKey::Grant { amount, reason, .. }, false) => {
                // Another valid amount: non-zero and within the operation bound.
                let other = if amount == -1 || amount == MAX_OPERATION_AMOUNT.get() {
                    amount - 1
                } else {
                    amount + 1
                };
                Op::Grant(grant_command(&account, other, reason, Some(&key)))
            }
            (
                ModelKey::Hold {
                    action, amount, ttl, ..
                },
                true,
            ) => Op::PlaceHold(hold_command(&account, &action, amount, ttl, &key)),
            (
                ModelKey::Hold {
                    action, amount, ttl, ..
                },
                false,
            ) => {
                if self.rng.random_bool(0.3) {
                    Op::Usage(usage_command(&account, &action, 1, &key))
                } else {
                    Op::PlaceHold(hold_command(&account, &action, amount, ttl + 1, &key))
                }
            }
        })
    }

    fn batch(&mut self) -> Op {
        let count = self.rng.random_range(2..=8);
        let mut events: Vec<UsageCommand> = Vec::with_capacity(count);
        for _ in 0..count {
            let event = if !events.is_empty() && self.rng.random_bool(0.15) {
                // A key repeated inside the batch: same body (replay) or not (conflict).
                let earlier = events.choose(&mut self.rng).unwrap().clone();
                if self.rng.random_bool(0.5) {
                    earlier
                } else {
                    let quantity = earlier.quantity.get() % tollgate_core::ids::MAX_QUANTITY + 1;
                    UsageCommand {
                        quantity: Quantity::new(quantity).unwrap(),
                        ..earlier
                    }
                }
            } else {
                let account = self.pick_account();
                self.usage_command(&account)
            };
            events.push(event);
        }
        Op::Batch(events)
    }

    fn advance(&mut self) -> Step {
        let roll = self.rng.random_range(0..100);
        let seconds = Duration::seconds;
        match roll {
            0..35 => Step::Advance("advance_seconds", seconds(self.rng.random_range(1..=120))),
            35..60 => Step::Advance("advance_hours", seconds(self.rng.random_range(120..=6 * 3_600))),
            60..85 => Step::Advance(
                "advance_days",
                seconds(self.rng.random_range(86_400..=40 * 86_400))
                    + Duration::microseconds(self.rng.random_range(0..1_000_000)),
            ),
            _ => {
                // To a cycle boundary of some account: 1 µs before, on it, or just after.
                let now = self.clock.now();
                let Some(account) = self.account_ids().choose(&mut self.rng).cloned() else {
                    return Step::Advance("advance_seconds", seconds(1));
                };
                let created = self.model.accounts[&account].created_at;
                let mut index = 0;
                while cycle_start(created, index) <= now {
                    index += 1;
                }
                let boundary = cycle_start(created, index);
                let offset = [
                    Duration::microseconds(-1),
                    Duration::ZERO,
                    Duration::microseconds(1),
                ]
                .choose(&mut self.rng)
                .copied()
                .unwrap();
                let target = (boundary + offset).max(now);
                Step::Advance("advance_to_cycle_boundary", target - now)
            }
        }
    }

    fn generate(&mut self) -> Step {
        let accounts = self.model.accounts.len();
        if accounts < 2 || (accounts < 8 && self.rng.random_bool(0.03)) {
            let id = self.fresh("acct");
            return Step::One("create_account", Op::CreateAccount(id));
        }
        if self.rng.random_bool(self.payment_share) {
            return self.payment_step();
        }
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..10 => {
                let id = self.account_ids().choose(&mut self.rng).unwrap().clone();
                Step::One("create_duplicate", Op::CreateAccount(id))
            }
            10..260 => {
                let account = self.pick_account();
                let command = self.usage_command(&account);
                Step::One("usage", Op::Usage(command))
            }
            260..290 if !self.refused.is_empty() => {
                let index = self.rng.random_range(0..self.refused.len());
                let command = self.refused.swap_remove(index);
                Step::One("usage_retry_after_402", Op::Usage(command))
            }
            260..340 => Step::One("usage_batch", self.batch()),
            340..400 => match self.replay(true) {
                Some(op) => Step::One("replay_same_body", op),
                None => self.advance(),
            },
            400..422 => match self.replay(false) {
                Some(op) => Step::One("replay_different_body", op),
                None => self.advance(),
            },
            422..430 => {
                // Keys are scoped per account: the same key on another
                // account is a new request, not a replay.
                let mut keys: Vec<&(String, String)> = self.model.keys.keys().collect();
                keys.sort();
                match keys.choose(&mut self.rng).map(|key| (*key).clone()) {
                    Some((owner, key)) => {
                        let others: Vec<String> =
                            self.account_ids().into_iter().filter(|id| *id != owner).collect();
                        let other = others.choose(&mut self.rng).unwrap().clone();
                        let mut command = self.usage_command(&other);
                        command.idempotency_key = IdempotencyKey::parse(&key).unwrap();
                        Step::One("same_key_other_account", Op::Usage(command))
                    }
                    None => self.advance(),
                }
            }
            430..500 => {
                let account = self.pick_account();
                Step::One("grant", Op::Grant(self.grant_command(&account, false)))
            }
            500..530 => {
                let account = self.pick_account();
                Step::One("grant_negative", Op::Grant(self.grant_command(&account, true)))
            }
            530..610 => {
                let account = self.pick_account();
                Step::One("hold_place", Op::PlaceHold(self.hold_command(&account)))
            }
            610..680 => match self.capture_or_void(None) {
                Some(op @ Op::Void(_)) => Step::One("hold_void", op),
                Some(op) => Step::One("hold_capture", op),
                None => Step::One(
                    "hold_place",
                    Op::PlaceHold(self.hold_command(&self.account_ids()[0].clone())),
                ),
            },
            680..700 => {
                let active: Vec<&ModelHold> = self
                    .model
                    .holds
                    .values()
                    .filter(|hold| hold.status == HoldStatus::Active)
                    .collect();
                match active.choose(&mut self.rng) {
                    Some(hold) => {
                        let now = self.clock.now();
                        let past = hold.expires_at - now
                            + Duration::microseconds(self.rng.random_range(0..3_000_000));
                        let (id, void) = (hold.id.clone(), self.rng.random_bool(0.5));
                        Step::LetExpire(id, past.max(Duration::ZERO), void)
                    }
                    None => self.advance(),
                }
            }
            700..730 => {
                let limit = *[1_usize, 2, 1_000].choose(&mut self.rng).unwrap();
                Step::One("expire_holds", Op::ExpireHolds(limit))
            }
            730..860 => self.advance(),
            860..880 => self.sales_plan(),
            880..900 => Step::Restart,
            900..935 => self.distinct_group(),
            935..955 => self.identical_charges(),
            955..965 => {
                // A retry storm: one request sent several times at once must
                // charge exactly once; the others are replays of it.
                let account = self.account_ids().choose(&mut self.rng).unwrap().clone();
                let command = self.usage_command(&account);
                let copies = self.rng.random_range(2..=8);
                Step::Group(
                    "concurrent_same_key",
                    Order::IdenticalCharges,
                    vec![Op::Usage(command); copies],
                )
            }
            _ => self.any_order_group(),
        }
    }

    fn distinct_group(&mut self) -> Step {
        let mut ids = self.account_ids();
        let count = self.rng.random_range(2..=4).min(ids.len());
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let account = ids.swap_remove(self.rng.random_range(0..ids.len()));
            let op = match self.rng.random_range(0..5) {
                0 | 1 => Op::Usage(self.usage_command(&account)),
                2 => {
                    let negative = self.rng.random_bool(0.3);
                    Op::Grant(self.grant_command(&account, negative))
                }
                3 => Op::PlaceHold(self.hold_command(&account)),
                _ => self
                    .capture_or_void(Some(&account))
                    .unwrap_or_else(|| Op::Usage(self.usage_command(&account))),
            };
            ops.push(op);
        }
        Step::Group("concurrent_distinct_accounts", Order::Independent, ops)
    }

    fn identical_charges(&mut self) -> Step {
        let account = self.account_ids().choose(&mut self.rng).unwrap().clone();
        let count = self.rng.random_range(3..=12_u64);
        let priced: Vec<&str> = self
            .model
            .book
            .actions
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| self.unit_price(&account, id).unwrap_or(0) > 0)
            .collect();
        let action = priced
            .choose(&mut self.rng)
            .copied()
            .unwrap_or("ui_search")
            .to_owned();
        let unit = self.unit_price(&account, &action).unwrap_or(0).max(1);
        // About half of them fit.
        let quantity = (u64::try_from(self.available(&account).max(0)).unwrap()
            / (unit as u64 * (count / 2).max(1)))
        .max(1);
        let ops = (0..count)
            .map(|_| {
                let key = self.fresh("c");
                Op::Usage(usage_command(
                    &account,
                    &action,
                    quantity.min(tollgate_core::ids::MAX_QUANTITY),
                    &key,
                ))
            })
            .collect();
        Step::Group("concurrent_identical_charges", Order::IdenticalCharges, ops)
    }

    fn any_order_group(&mut self) -> Step {
        let ids = self.account_ids();
        let pair: Vec<String> = (0..2)
            .map(|_| ids.choose(&mut self.rng).unwrap().clone())
            .collect();
        let count = self.rng.random_range(2..=5);
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let account = pair.choose(&mut self.rng).unwrap().clone();
            let op = match self.rng.random_range(0..8) {
                0 | 1 => Op::Usage(self.usage_command(&account)),
                7 => self.batch(),
                2 => {
                    let negative = self.rng.random_bool(0.4);
                    Op::Grant(self.grant_command(&account, negative))
                }
                3 => Op::PlaceHold(self.hold_command(&account)),
                4 => self
                    .replay(true)
                    .unwrap_or_else(|| Op::Usage(self.usage_command(&account))),
                _ => self
                    .capture_or_void(Some(&account))
                    .unwrap_or_else(|| Op::Usage(self.usage_command(&account))),
            };
            ops.push(op);
        }
        Step::Group("concurrent_any_order", Order::AnySerial, ops)
    }

    // ----- running ---------------------------------------------------------

    async fn run_one(&mut self, op: Op) -> Check {
        self.touch(&op);
        let now = self.clock.now();
        let outcome = execute(self.store(), op.clone()).await;
        for label in outcome_labels(&outcome) {
            self.tally(format!("  result: {label}"));
        }
        if let (Op::Usage(command), Outcome::Usage(Err(StoreError::InsufficientFunds(_)))) = (&op, &outcome) {
            self.refused.push(command.clone());
        }
        self.model.apply(&op, &outcome, now)
    }

    async fn run_group(&mut self, order: Order, ops: Vec<Op>) -> Check {
        for op in &ops {
            self.touch(op);
        }
        let now = self.clock.now();
        let store = self.store();
        let tasks: Vec<_> = ops
            .iter()
            .cloned()
            .map(|op| tokio::spawn(execute(store.clone(), op)))
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(
                task.await
                    .map_err(|error| format!("a concurrent task failed: {error}"))?,
            );
        }
        for outcome in &outcomes {
            for label in outcome_labels(outcome) {
                self.tally(format!("  result: {label}"));
            }
        }
        match order {
            Order::Independent => {
                for (op, outcome) in ops.iter().zip(&outcomes) {
                    self.model.apply(op, outcome, now)?;
                }
                Ok(())
            }
            Order::IdenticalCharges => {
                // Successes in order of decreasing balance after (originals
                // before replays of them), then refusals.
                let mut order: Vec<usize> = (0..ops.len()).collect();
                order.sort_by_key(|index| match &outcomes[*index] {
                    // Among equal balances after, the paid charge came first:
                    // the free ones after it cannot have moved the balance.
                    Outcome::Usage(Ok(charged)) => (
                        0,
                        -charged.value.balances_after.available.get(),
                        charged.replayed,
                        -charged.value.amount.get(),
                    ),
                    _ => (1, 0, false, 0),
                });
                let successes = outcomes
                    .iter()
                    .filter(|outcome| matches!(outcome, Outcome::Usage(Ok(_))))
                    .count();
                self.tally(format!("  identical charges: {successes} of {} fit", ops.len()));
                let mut candidate = self.model.clone();
                let sorted = order.iter().try_for_each(|index| {
                    candidate
                        .apply(&ops[*index], &outcomes[*index], now)
                        .map_err(|problem| {
                            format!("charge {index} of the group ({successes} succeeded): {problem}")
                        })
                });
                let Err(problem) = sorted else {
                    self.model = candidate;
                    return Ok(());
                };
                // A last resort for small groups, in case the sort cannot
                // tell an order apart (concurrent writers on PostgreSQL do
                // not run in submission order); large groups report the problem.
                if ops.len() > 6 {
                    return Err(problem);
                }
                for permutation in permutations(ops.len()) {
                    let mut candidate = self.model.clone();
                    if permutation
                        .iter()
                        .try_for_each(|index| candidate.apply(&ops[*index], &outcomes[*index], now))
                        .is_ok()
                    {
                        self.model = candidate;
                        return Ok(());
                    }
                }
                Err(problem)
            }
            Order::FreshFirst => {
                let mut order: Vec<usize> = (0..ops.len()).collect();
                order.sort_by_key(|index| match &outcomes[*index] {
                    Outcome::Pay(outcome) if payments::is_fresh(outcome) => 0,
                    _ => 1,
                });
                let fresh = order
                    .iter()
                    .filter(|index| matches!(&outcomes[**index], Outcome::Pay(outcome) if payments::is_fresh(outcome)))
                    .count();
                self.tally(format!("  fresh-first group: {fresh} of {} wrote", ops.len()));
                let mut candidate = self.model.clone();
                for index in order {
                    candidate
                        .apply(&ops[index], &outcomes[index], now)
                        .map_err(|problem| format!("op {index} of the group: {problem}"))?;
                }
                self.model = candidate;
                Ok(())
            }
            Order::AnySerial => {
                let mut first_problem = None;
                let mut explaining = Vec::new();
                for permutation in permutations(ops.len()) {
                    let mut candidate = self.model.clone();
                    let result = permutation
                        .iter()
                        .try_for_each(|index| candidate.apply(&ops[*index], &outcomes[*index], now));
                    match result {
                        Ok(()) => explaining.push(candidate),
                        Err(problem) => {
                            first_problem.get_or_insert(problem);
                        }
                    }
                }
                if explaining.len() > 1 {
                    // Orders that give every answer alike may still end apart (concurrent
                    // writers on PostgreSQL do not run in submission order): the store's
                    // end state says which one it took.
                    for index in 0..explaining.len() {
                        if explaining[index].pay_state_matches(&store, &self.touched).await {
                            self.model = explaining.swap_remove(index);
                            return Ok(());
                        }
                    }
                }
                match explaining.into_iter().next() {
                    Some(candidate) => {
                        self.model = candidate;
                        Ok(())
                    }
                    None => Err(format!(
                        "no serial order explains the results {outcomes:#?}; in submission order: {}",
                        first_problem.unwrap_or_default()
                    )),
                }
            }
        }
    }

    async fn restart(&mut self) -> Check {
        let store = self.store.take().expect("open");
        // Every task has finished, so this is the last handle: dropping it
        // stops the writer and closes every connection.
        if Arc::strong_count(&store) != 1 {
            return Err("the store is still shared".into());
        }
        drop(store);
        let reopened = open_store(&self.database, &self.price_book, self.model.basis, &self.clock);
        self.store = Some(reopened);
        Ok(())
    }

    async fn run_step(&mut self, step: &Step) -> Check {
        match step {
            Step::One(_, op) => self.run_one(op.clone()).await,
            Step::Advance(_, by) => {
                self.clock.advance(*by);
                Ok(())
            }
            Step::LetExpire(hold_id, by, void) => {
                self.clock.advance(*by);
                let now = self.clock.now();
                let op = if *void {
                    Op::Void(hold_id.clone())
                } else {
                    Op::Capture(hold_id.clone(), Quantity::ONE)
                };
                let outcome = execute(self.store(), op.clone()).await;
                // The hold's time ran out: it must be refused as expired.
                let refused_as_expired = match &outcome {
                    Outcome::Void(result) => {
                        matches!(result, Err(StoreError::HoldNotActive(HoldStatus::Expired)))
                    }
                    Outcome::Capture(result) => {
                        matches!(result, Err(StoreError::HoldNotActive(HoldStatus::Expired)))
                    }
                    _ => false,
                };
                if !refused_as_expired {
                    return Err(format!("{op:?} after the expiry answered {outcome:?}"));
                }
                let hold = self
                    .store()
                    .hold(hold_id)
                    .await
                    .map_err(|error| error.to_string())?;
                same("status of the expired hold", hold.status, HoldStatus::Expired)?;
                self.model.apply(&op, &outcome, now)
            }
            Step::Restart => self.restart().await,
            Step::Group(_, order, ops) => self.run_group(*order, ops.clone()).await,
            Step::SalesPlan { .. } => self.write_sales_plan(step).await,
            Step::Pay(_, step) => self.run_pay_step(step).await,
        }
    }

    /// Everything the store says equals the model, and the ledger verifies.
    async fn check_all(&mut self) -> Check {
        let store = self.store();
        let now = self.clock.now();
        self.model.roll_all(now);
        // Reading an account (below) releases its holds whose time ran out,
        // through the writer, exactly as a write would.
        let ids: Vec<String> = self.model.accounts.keys().cloned().collect();
        for id in &ids {
            let _ = self.model.expire_due(id, now);
        }
        let report = store
            .verify_ledger()
            .await
            .map_err(|error| format!("verify_ledger: {error}"))?;
        if !report.is_clean() {
            return Err(format!("verify_ledger found problems: {:#?}", report.problems));
        }
        same(
            "accounts verified",
            report.accounts_checked,
            self.model.accounts.len() as u64,
        )?;
        for (id, model) in &self.model.accounts {
            let account_id = AccountId::parse(id).unwrap();
            let record = store
                .account(&account_id)
                .await
                .map_err(|error| format!("account {id}: {error}"))?;
            let what = |field: &str| format!("account {id} {field}");
            same(&what("balances"), record.balances, model.balances())?;
            // Prepaid never below zero; invoice never below its credit line.
            // Below it only when money taken back (a refund, a lost dispute) was spent already.
            let floor = -model.credit_limit.unwrap_or(0);
            let below = record.balances.available.get() < floor && !self.model.pay.flagged(id);
            if below || record.balances.held.is_negative() {
                return Err(format!(
                    "account {id} is below its floor {floor}: {:?}",
                    record.balances
                ));
            }
            let mode = match model.credit_limit {
                None => BillingMode::Prepaid,
                Some(limit) => BillingMode::Invoice {
                    credit_limit: Micros::new(limit),
                },
            };
            same(&what("billing mode"), record.mode, mode)?;
            let spend = &record.spend;
            same(
                &what("cycle start"),
                spend.cycle_start,
                cycle_start(model.created_at, model.cycle_index),
            )?;
            same(&what("cycle spend"), spend.cycle_spend.get(), model.cycle_spend)?;
            same(
                &what("previous cycle spend"),
                spend.previous_cycle_spend.get(),
                model.previous_spend,
            )?;
            same(
                &what("lifetime spend"),
                spend.lifetime_spend.get(),
                model.lifetime_spend,
            )?;
            same(
                &what("cycle savings"),
                spend.cycle_savings.get(),
                model.cycle_savings,
            )?;
            same(
                &what("lifetime savings"),
                spend.lifetime_savings.get(),
                model.lifetime_savings,
            )?;
            let tier = spend.current_tier(&self.price_book, self.model.basis);
            same(
                &what("current tier"),
                self.price_book.tier(tier).id.as_str(),
                self.model.book.tiers[self.model.tier(model)].id,
            )?;
            let last = store
                .transactions(&account_id, PageRequest::new(1, None))
                .await
                .map_err(|error| format!("transactions of {id}: {error}"))?;
            match (last.data.first(), model.journal.last()) {
                (None, None) => {}
                (Some(line), Some(expected)) => {
                    same(&what("journal length"), line.sequence, model.sequence())?;
                    same(&what("last journal line"), journal_line(line), expected.clone())?;
                }
                (line, _) => {
                    return Err(format!(
                        "account {id}: last journal line {line:?}, model has {}",
                        model.journal.len()
                    ));
                }
            }
        }
        for (id, model) in &self.model.holds {
            let record = store
                .hold(id)
                .await
                .map_err(|error| format!("hold {id}: {error}"))?;
            same(&format!("hold {id}"), &record, &model.record())?;
        }
        self.check_payments().await
    }

    /// Slower checks, run after restarts and at the end of a seed: every
    /// journal line of every account (paging through it), the spend chart
    /// data, and the account list.
    async fn deep_check(&mut self) -> Check {
        let store = self.store();
        for (id, model) in &self.model.accounts {
            let account_id = AccountId::parse(id).unwrap();
            let limit = self.rng.random_range(1..=12);
            let mut lines = Vec::new();
            let mut cursor = None;
            loop {
                let page = store
                    .transactions(&account_id, PageRequest::new(limit, cursor.take()))
                    .await
                    .map_err(|error| format!("transactions of {id}: {error}"))?;
                let more = page.has_more;
                cursor = page.data.last().map(|line| line.id.clone());
                lines.extend(page.data);
                if !more {
                    break;
                }
                if cursor.is_none() {
                    return Err(format!("account {id}: an empty page says it has more"));
                }
            }
            lines.reverse();
            let sequences: Vec<i64> = lines.iter().map(|line| line.sequence).collect();
            same(
                &format!("account {id} journal sequences"),
                sequences,
                (1..=model.sequence()).collect(),
            )?;
            let got: Vec<JournalLine> = lines.iter().map(journal_line).collect();
            for (index, (got, want)) in got.iter().zip(&model.journal).enumerate() {
                same(&format!("account {id} journal line {}", index + 1), got, want)?;
            }
            // Spend chart: usage per UTC day and action since a random instant.
            let since = if self.rng.random_bool(0.5) {
                model.created_at
            } else {
                let span = (self.clock.now() - model.created_at).whole_seconds().max(1);
                model.created_at + Duration::seconds(self.rng.random_range(0..span))
            };
            let mut expected: BTreeMap<(Date, String), i64> = BTreeMap::new();
            for (at, action, amount) in &model.usage {
                if *at >= since {
                    *expected.entry((at.date(), action.clone())).or_default() += amount;
                }
            }
            let got: BTreeMap<(Date, String), i64> = store
                .daily_usage(&account_id, since)
                .await
                .map_err(|error| format!("daily usage of {id}: {error}"))?
                .into_iter()
                .map(|(day, action, amount)| ((day, action), amount.get()))
                .collect();
            same(&format!("account {id} daily usage since {since}"), got, expected)?;
        }
        let listed = store
            .list_accounts(PageRequest::new(100, None))
            .await
            .map_err(|error| format!("list_accounts: {error}"))?;
        let ids: Vec<String> = listed.data.iter().map(|account| account.id.to_string()).collect();
        same(
            "listed accounts",
            ids,
            self.model.accounts.keys().cloned().collect(),
        )?;
        Ok(())
    }

    async fn run(&mut self, steps: usize) -> Result<(), String> {
        // The generated steps, then (when card money moved) the drain, after which the
        // store must hold exactly what the processor charged, refunded and lost.
        for index in 0..=steps {
            let drain = index == steps;
            if drain && !self.payments_active() {
                break;
            }
            let step = if drain {
                Step::Pay("payment_drain", payments::PayStep::Drain)
            } else {
                self.generate()
            };
            let kind = match &step {
                Step::One(kind, _)
                | Step::Advance(kind, _)
                | Step::Group(kind, _, _)
                | Step::Pay(kind, _) => *kind,
                Step::LetExpire(..) => "hold_let_expire",
                Step::Restart => "restart",
                Step::SalesPlan { .. } => "sales_plan",
            };
            self.tally(kind);
            self.log
                .push(format!("step {index} at {}: {step:?}", self.clock.now()));
            CURRENT_STEP.with(|current| *current.borrow_mut() = format!("step {index} ({kind}): {step:#?}"));
            // Payment state is compared for the accounts a step names, and for every
            // account regularly and whenever time moved or the store restarted.
            self.check_every_account = drain
                || index % 8 == 0
                || matches!(step, Step::Restart | Step::Advance(..) | Step::LetExpire(..));
            let mut result = self.run_step(&step).await;
            self.processor.sync(&self.model);
            if result.is_ok() {
                result = self.check_all().await;
            }
            if result.is_ok() && (matches!(step, Step::Restart) || index + 1 >= steps) {
                result = self.deep_check().await;
            }
            if result.is_ok() && drain {
                result = self.settled_invariants();
            }
            if let Err(problem) = result {
                let keep = env_number("TOLLGATE_SIM_LOG_LINES").unwrap_or(30) as usize;
                let recent: Vec<&String> = self.log.iter().rev().take(keep).rev().collect();
                return Err(format!(
                    "seed {seed} failed at step {index} ({kind}): {problem}\n\
                     op: {step:#?}\n\
                     recent steps:\n{recent}\n\
                     replay: TOLLGATE_SIM_SEED={seed} cargo test -p tollgate-store --test simulation -- --nocapture",
                    seed = self.seed,
                    recent = recent
                        .iter()
                        .map(|line| format!("  {line}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ));
            }
        }
        Ok(())
    }
}

fn journal_line(line: &TransactionLine) -> JournalLine {
    JournalLine {
        kind: line.kind,
        amount: line.amount.get(),
        available_amount: line.available_amount.get(),
        balances_after: line.balances_after,
        reference: line.reference.clone(),
    }
}

/// A valid quantity: generated counts are clamped into 1..=MAX_QUANTITY.
fn quantity_of(count: u64) -> Quantity {
    Quantity::new(count.clamp(1, tollgate_core::ids::MAX_QUANTITY)).unwrap()
}

fn usage_command(account: &str, action: &str, quantity: u64, key: &str) -> UsageCommand {
    UsageCommand {
        account: AccountId::parse(account).unwrap(),
        action: ActionId::parse(action).unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    }
}

fn grant_command(account: &str, amount: i64, reason: String, key: Option<&str>) -> GrantCommand {
    GrantCommand::new(
        AccountId::parse(account).unwrap(),
        Micros::new(amount),
        &reason,
        key.map(|key| IdempotencyKey::parse(key).unwrap()),
        Actor::System,
    )
    .unwrap()
}

fn hold_command(account: &str, action: &str, amount: i64, ttl: i64, key: &str) -> HoldCommand {
    HoldCommand::new(
        AccountId::parse(account).unwrap(),
        ActionId::parse(action).unwrap(),
        Micros::new(amount),
        HoldTtl::from_seconds(ttl).unwrap(),
        IdempotencyKey::parse(key).unwrap(),
    )
    .unwrap()
}

/// Every ordering of `0..count`, submission order first.
fn permutations(count: usize) -> Vec<Vec<usize>> {
    fn extend(prefix: &mut Vec<usize>, count: usize, all: &mut Vec<Vec<usize>>) {
        if prefix.len() == count {
            all.push(prefix.clone());
            return;
        }
        for next in 0..count {
            if !prefix.contains(&next) {
                prefix.push(next);
                extend(prefix, count, all);
                prefix.pop();
            }
        }
    }
    let mut all = Vec::new();
    extend(&mut Vec::with_capacity(count), count, &mut all);
    all
}

// ===========================================================================
// Entry point
// ===========================================================================

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| {
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}"))
    })
}

/// Where databases go: RAM when available. The simulation checks logic;
/// durability (fsync) is tested in `durability.rs`.
fn scratch_directory() -> tempfile::TempDir {
    if let Ok(directory) = std::env::var("TOLLGATE_SIM_DIR") {
        return tempfile::Builder::new()
            .prefix("tollgate-sim-")
            .tempdir_in(directory)
            .unwrap();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(directory) = tempfile::Builder::new().prefix("tollgate-sim-").tempdir_in(shm)
    {
        return directory;
    }
    tempfile::Builder::new()
        .prefix("tollgate-sim-")
        .tempdir()
        .unwrap()
}

struct SeedResult {
    steps: u64,
    stats: BTreeMap<String, u64>,
    failure: Option<String>,
}

fn run_seed(seed: u64, steps: usize, directory: &Path) -> SeedResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, directory);
        let result = runtime.block_on(sim.run(steps));
        let mut stats = std::mem::take(&mut sim.stats);
        for (what, count) in &sim.model.counters {
            stats.insert(format!("  model: {what}"), *count);
        }
        drop(sim);
        (result, stats)
    }));
    match outcome {
        Ok((result, stats)) => SeedResult {
            steps: stats
                .iter()
                .filter(|(kind, _)| !kind.starts_with(' '))
                .map(|(_, n)| n)
                .sum(),
            stats,
            failure: result.err(),
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_default();
            SeedResult {
                steps: 0,
                stats: BTreeMap::new(),
                failure: Some(format!(
                    "seed {seed} panicked: {message}\n\
                     at {step}\n\
                     replay: TOLLGATE_SIM_SEED={seed} cargo test -p tollgate-store --test simulation -- --nocapture",
                    step = CURRENT_STEP.with(|current| current.borrow().clone()),
                )),
            }
        }
    }
}

#[test]
fn simulation_matches_the_reference_model() {
    let steps = env_number("TOLLGATE_SIM_STEPS").unwrap_or(100) as usize;
    let seeds: Vec<u64> = match env_number("TOLLGATE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_number("TOLLGATE_SIM_FIRST_SEED").unwrap_or(0);
            // PostgreSQL round trips make a seed ~10× slower: fewer by default.
            let default = match Backend::from_env() {
                Backend::Sqlite => 300,
                Backend::Postgres => 40,
            };
            let count = env_number("TOLLGATE_SIM_SEEDS").unwrap_or(default);
            (first..first + count).collect()
        }
    };
    let threads = env_number("TOLLGATE_SIM_THREADS")
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, seeds.len().max(1));
    let keep_going = env_number("TOLLGATE_SIM_KEEP_GOING").is_some_and(|flag| flag != 0);
    let directory = scratch_directory();
    let started = Instant::now();
    let queue = Mutex::new(seeds.clone().into_iter());
    let totals = Mutex::new((0_u64, BTreeMap::<String, u64>::new(), Vec::<String>::new()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let Some(seed) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let result = run_seed(seed, steps, directory.path());
                    let mut totals = totals.lock().unwrap();
                    totals.0 += result.steps;
                    for (kind, count) in result.stats {
                        *totals.1.entry(kind).or_default() += count;
                    }
                    if let Some(failure) = result.failure {
                        totals.2.push(failure);
                        // Stop early: the first failure is what matters.
                        if !keep_going {
                            queue.lock().unwrap().by_ref().for_each(drop);
                        }
                    }
                }
            });
        }
    });
    let (total_steps, stats, failures) = totals.into_inner().unwrap();
    println!(
        "simulation: {} seeds, {total_steps} steps, {threads} threads, {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    for (kind, count) in &stats {
        println!("  {kind:<40} {count:>8}");
    }
    if keep_going {
        for failure in &failures {
            println!("FAILED {}", failure.lines().next().unwrap_or_default());
        }
    }
    if let Some(first) = failures.first() {
        panic!("{} seed(s) failed; first:\n{first}", failures.len());
    }
}
